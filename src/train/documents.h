// The data builders: raw records -> DreamLLM training token layouts (input ids, labels, image order), exactly as
// omni/data/builders/builder_dreamllm.py DreamLLMDataset.__getitem__ builds them
// (docs/dreamllm-architecture.md section 2.3). With P = image_tokens and Q = dream_queries:
//   image span  = <im_start> <im_patch>xP <im_end>        (comprehension input, one CLIP image)
//   dream span  = <dream_start> <im_patch>xQ <dream_end>  (creation target, one diffusion image)
//   I2T pair    : <s> image-span caption </s>              labels: caption, </s> (and <s>, which the shift drops)
//   T2I pair    : <s> caption dream-span </s>              labels: all -100
//   interleaved : <s> chunk0 [dream-span image-span] chunk1 [...] ... </s>
//                 labels: everything but <im_start>, <im_end>, <im_patch>, <dream_end> (so <dream_start> is learned)
//   instruct    : vicuna "<system> USER: <instruction> ASSISTANT:" + the interleaved body + </s>, prompt labels -100
//   conversation: vicuna v1.1 training prompt, <image> -> image span, <dream> -> dream span + image span,
//                 loss on assistant replies only (LLaVA's "-2" offset)
// IGNORE_INDEX is -100 throughout.
//
// Images are not opened here. A Sample lists, for each span in order, which image of the record fills it.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/random.h"
#include "text/tokenizer.h"
#include "train/records.h"

namespace dl::train {

inline constexpr int32_t kIgnoreIndex = -100;

// Which image of the source record fills a span: `index` into the record's image list in file order
// (PairRecord: always 0; InterleavedRecord::images before sorting; ConversationRecord::images), and its resolved
// path, so a trainer can load it without going back to the record.
struct ImageRef {
  int32_t index = 0;
  std::string path;
  // A diffusion target's condition labels (PairRecord::condition_labels), for the label-conditioned UNet stage.
  std::vector<std::vector<int32_t>> condition_labels = {};
  bool operator==(const ImageRef&) const = default;
};

struct Sample {
  std::vector<int32_t> input_ids;
  std::vector<int32_t> labels;        // same length as input_ids; kIgnoreIndex where no LM loss
  std::vector<ImageRef> images;       // CLIP inputs, one per <im_start>, in span order
  std::vector<ImageRef> dream_images;  // diffusion targets, one per <dream_start>, in span order
};

struct DocumentOptions {
  int image_tokens = 256;  // P: CLIP patches per image span (clip_vision_embedding_len)
  int dream_queries = 64;  // Q: dream query slots per dream span (dream_embedding_len)
  int max_length = 2048;   // tokenizer.model_max_length
  // Both on: DreamLLM's default (random I2T/T2I per pair, dream + image spans in documents). One on:
  // comprehension_only / creation_only. Both off is refused.
  bool comprehension = true;
  bool creation = true;
};

// The vicuna v1.1 training text of a conversation as ConversationDataset renders it, before its <image> and
// <dream> placeholders become spans: a first message that is not the user's is dropped, and roles alternate from
// the user's whatever "from" says.
std::string conversation_prompt(const ConversationRecord& record);

class DocumentBuilder {
 public:
  // Keeps a reference to `tokenizer`, which must outlive the builder and have DreamLLM's added tokens.
  DocumentBuilder(const text::Tokenizer& tokenizer, DocumentOptions options);

  // Image-text pairs. pair() picks the format: comprehension-only -> I2T, creation-only -> T2I, both -> I2T when
  // `uniform` >= 0.5 else T2I (the original's `prob = np.random.rand(); prob >= 0.5`). The Rng overload draws
  // one uniform per call, in every mode, as the original draws `prob` before looking at the mode.
  Sample image_to_text(const PairRecord& pair) const;
  Sample text_to_image(const PairRecord& pair) const;
  Sample pair(const PairRecord& pair, double uniform) const;
  Sample pair(const PairRecord& pair, Rng& rng) const;

  // MMC4 documents. instruct_interleaved() needs record.instruction.
  Sample interleaved(const InterleavedRecord& doc) const;
  Sample instruct_interleaved(const InterleavedRecord& doc) const;

  // LLaVA-style conversations. The spans do not depend on the comprehension/creation options (the original's
  // Conversation branch ignores them).
  Sample conversation(const ConversationRecord& conv) const;

  // Any record: pairs via pair(rng), interleaved records with an instruction via instruct_interleaved().
  Sample build(const Record& record, Rng& rng) const;

  const DocumentOptions& options() const { return options_; }
  // The span ids: <im_start> <im_patch>xP <im_end> and <dream_start> <im_patch>xQ <dream_end>.
  const std::vector<int32_t>& image_span() const { return image_span_; }
  const std::vector<int32_t>& dream_span() const { return dream_span_; }

 private:
  // The interleaved body after `prefix` (already tokenized, counted by the length checks), then </s>.
  Sample interleaved_body(const InterleavedRecord& doc, std::vector<int32_t> prefix) const;
  // The ids of `text` without BOS, and SentencePiece's / the Trie's behaviour exactly as tokenizer(text) has it.
  std::vector<int32_t> encode(const std::string& text) const;
  // A pair's caption ids, cut from the right so that <s> + caption fit beside a span of `span` ids and </s>.
  std::vector<int32_t> pair_caption(const std::string& text, size_t span) const;
  bool is_unlearned_span_token(int32_t id) const;

  const text::Tokenizer& tok_;
  DocumentOptions options_;
  int32_t bos_, eos_;
  int32_t image_id_, dream_id_, patch_id_, im_start_id_, im_end_id_, dream_start_id_, dream_end_id_;
  std::vector<int32_t> image_span_, dream_span_;
};

}  // namespace dl::train
