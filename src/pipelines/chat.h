// A conversation with DreamLLM that draws: each turn reads the user's message (with its pictures) and writes the
// answer; when the model emits <dream_start> in an answer, the picture is drawn from the dream queries' states,
// read back through CLIP and the answer goes on, exactly as free-form writing does (interleave.h). The answer turn
// then holds the dream and image spans, so the next turns see the picture as the training conversations lay it out
// (architecture doc: "<dream>" in a conversation is a dream span followed by the image it made).
//
// The KV cache is kept between turns: a turn feeds only what is new when the re-tokenized conversation still starts
// with what the model has consumed, and reads the whole conversation again otherwise. A turn that fails (a message
// that does not fit the context, a picture count that disagrees with its "<image>" placeholders) leaves the session
// as it was before it.
#pragma once
#include <string>
#include <vector>

#include "io/image.h"
#include "pipelines/comprehend.h"
#include "pipelines/create.h"
#include "pipelines/interleave.h"
#include "text/chat_template.h"
#include "text/tokenizer.h"

namespace dl::pipelines {

struct ChatOptions {
  std::string system_prompt;                               // empty: the vicuna v1.1 default
  text::VicunaVariant layout = text::VicunaVariant::Eval;  // Train for models that saw only the training layout
  // Text generation (greedy, sampling or beam search; beams never draw) and drawing: max_images is the most
  // pictures per answer (0: the model is never let to draw), seed the first picture's seed (picture k of the whole
  // conversation draws from seed + k).
  WriteOptions answer;
};

struct ChatReply {
  std::string text;                  // the answer's text (pictures left out)
  std::vector<io::Image> pictures;   // drawn in this answer, in order
  std::vector<Document::Block> blocks;  // text and pictures in reading order
  FinishReason finish = FinishReason::kLength;
};

class ChatSession {
 public:
  // `head` may be null (a model without a diffusion head, or drawing not wanted): answers never draw.
  ChatSession(const models::DreamLLM& model, const DiffusionHead* head, const text::Tokenizer& tokenizer,
              const io::ClipPreprocessConfig& clip_preprocess, ChatOptions options);

  // One turn: `message`, its "<image>" placeholders taking `images` in order (without placeholders the pictures go
  // in front of it), then the answer, streamed through `events`. Throws dl::Error, leaving the session as it was.
  ChatReply turn(const std::string& message, const std::vector<io::Image>& images = {},
                 const WriteEvents& events = {});

  // Starts a new conversation (same options; pictures keep counting seeds on).
  void reset();
  size_t turns() const { return turns_; }
  size_t pictures_drawn() const { return drawn_; }
  // The conversation as the template renders it (each drawn picture as a dream span and an image span), and the ids
  // the model has consumed of it (a prefix of its tokens when the next turn can go on from the cache).
  std::string conversation() const { return conv_.prompt(); }
  const std::vector<int32_t>& consumed() const { return seen_; }

 private:
  ChatReply answer(const std::string& user, const std::vector<io::Image>& images, const WriteEvents& events,
                   bool& fed);

  const models::DreamLLM& model_;
  const DiffusionHead* head_;
  const text::Tokenizer& tokenizer_;
  io::ClipPreprocessConfig clip_;
  ChatOptions options_;
  int32_t im_start_;
  int64_t limit_;
  text::Conversation conv_;
  std::vector<Tensor> pixels_;  // CLIP inputs of every image span of the conversation, in order
  DreamLLMDecoder decoder_;
  std::vector<int32_t> seen_;  // what the decoder has consumed
  Tensor uncond_;              // the negative branch's conditions, made once
  size_t turns_ = 0, drawn_ = 0;
};

// Replaces each "<image>" of `text` with an image span of `patches` positions, or, when the text has none, puts one
// span per picture in front of it. Throws when placeholders and pictures disagree in number.
std::string place_image_spans(const std::string& text, size_t images, int64_t patches);

}  // namespace dl::pipelines
