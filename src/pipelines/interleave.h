// Free-form interleaved writing (architecture doc sections 2.4 and 4.3): DreamLLM writes text and decides itself
// where an image goes by emitting <dream_start>. The host then feeds the Q dream queries and <dream_end>, reads
// the query states as diffusion conditions, draws the image, feeds it back as <im_start> + CLIP(image) +
// <im_end>, and lets the model go on writing. The sequence the model sees is therefore exactly the training layout
// of an interleaved document: text <dream_start> Q <dream_end> <im_start> P <im_end> text ...
// The original code ships no such loop; this is its first implementation.
#pragma once
#include <functional>
#include <string>
#include <vector>

#include "io/image.h"
#include "pipelines/comprehend.h"
#include "pipelines/create.h"
#include "text/tokenizer.h"

namespace dl::pipelines {

struct WriteOptions {
  GenerationConfig text;  // greedy or sampling; max_new_tokens is the text-token budget of the whole document
  SamplingOptions drawing;
  int64_t latent_height = 0, latent_width = 0;  // 0: the UNet's sample_size
  int64_t max_images = 4;                       // <dream_start> is banned once this many images were drawn
  std::vector<int32_t> negative_ids;            // negative prompt ids for guidance (default: [BOS])
  uint64_t seed = 0;                            // image i draws its noise from Rng(seed + i + 1)
  bool tiled_decode = false;
};

struct WriteEvents {
  std::function<void(const std::string& text)> on_text;  // streamed text, piece by piece
  std::function<void(size_t index)> on_image_begin;
  std::function<void(size_t step, size_t steps)> on_diffusion_step;
  std::function<void(size_t index, const io::Image& image)> on_image;
};

struct Document {
  struct Block {
    bool is_image = false;
    std::string text;  // text blocks
    io::Image image;   // image blocks
  };
  std::vector<Block> blocks;          // in reading order
  std::vector<int32_t> ids;           // everything the model consumed, prompt first (the training layout)
  size_t prompt_length = 0;           // ids[0, prompt_length) is the prompt
  Tensor pixel_values;                // [N, 3, S, S] CLIP inputs of every image span in ids, in order
  std::vector<Tensor> conditions;     // [1, Q, C] per drawn image
  FinishReason finish = FinishReason::kLength;
};

// The writing loop on a single-row `decoder` that has consumed `doc.ids` (`logits`: at its last position), as
// write_document runs it: appends the text and image blocks, ids and conditions to `doc`, the CLIP inputs of the
// pictures it draws to `pixels`, and keeps the negative branch's conditions in `uncond` (made on first use). Picture
// k of this call (from 0) draws from Rng(options.seed + k + 1); options.max_images counts this call's pictures.
// `head` may be null when options.max_images is 0 (<dream_start> is then never chosen). Used by write_document and
// by a chat turn (pipelines/chat.h).
void continue_document(const models::DreamLLM& model, const DiffusionHead* head, const text::Tokenizer& tokenizer,
                       const io::ClipPreprocessConfig& clip_preprocess, DreamLLMDecoder& decoder, Tensor logits,
                       Document& doc, std::vector<Tensor>& pixels, Tensor& uncond, const WriteOptions& options,
                       const WriteEvents& events = {});

// Writes one document from a prompt (ids, e.g. a vicuna-templated instruction; its own image spans take
// `prompt_pixels`). Stops at EOS, when the text budget is spent, or when the model's context is full.
Document write_document(const models::DreamLLM& model, const DiffusionHead& head, const text::Tokenizer& tokenizer,
                        const io::ClipPreprocessConfig& clip_preprocess, const std::vector<int32_t>& prompt,
                        const Tensor& prompt_pixels, const WriteOptions& options, const WriteEvents& events = {});

}  // namespace dl::pipelines
