// DreamLLM prompt templates (vicuna v1.1) and the image / dream token spans.
//
// DreamLLM ships two vicuna v1.1 templates that differ by one character: the training one
// (omni/conversation/conversation.py "vicuna_v1.1", also the SFT data's) starts with the system prompt, the VQA
// evaluation one (omni/utils/conversation.py conv_vicuna_v1_1) with a space before it. Both produce
//   system + " " + ROLE0 + ": " + msg0 + " " + ROLE1 + ": " + msg1 + "</s>" + ROLE0 + ": " ...
// and an open turn (no message) renders as "ROLE:", so a prompt for generation ends with "ASSISTANT:".
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "text/tokenizer.h"

namespace dl::text {

inline constexpr std::string_view kVicunaSystemPrompt =
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions.";
inline constexpr int kImageSpanTokens = 256;  // CLIP ViT-L/14 @ 224: 16 x 16 patches
inline constexpr int kDreamSpanTokens = 64;   // learned dream queries

enum class VicunaVariant {
  Train,  // omni/conversation vicuna_v1.1: no leading space; a message "" still counts as content
  Eval,   // omni/utils conv_vicuna_v1_1: leading space; a message "" is an open turn (Python truthiness)
};

class Conversation {
 public:
  explicit Conversation(VicunaVariant variant);

  // Appends a turn. Without text (std::nullopt) the turn is open and renders as "ROLE:".
  void append(std::string_view role, std::optional<std::string_view> text);
  void append(std::string_view role) { append(role, std::nullopt); }
  void append_user(std::string_view text) { append(user_role(), text); }
  void append_assistant(std::optional<std::string_view> text) { append(assistant_role(), text); }
  // Sets the message of the last turn (e.g. the answer to an open assistant turn). Throws when there is none.
  void set_last_message(std::string_view text);

  // get_prompt(): the exact string of the original code.
  std::string prompt() const;
  // What omni/eval/vqa/vqa_inference.py generate() tokenizes: prompt() without a trailing "</s>".
  std::string generation_prompt() const;

  static constexpr std::string_view user_role() { return "USER"; }
  static constexpr std::string_view assistant_role() { return "ASSISTANT"; }
  VicunaVariant variant() const { return variant_; }
  std::string_view system() const { return system_; }
  void set_system(std::string system) { system_ = std::move(system); }
  size_t size() const { return turns_.size(); }

 private:
  struct Turn {
    std::string role;
    std::optional<std::string> text;
  };
  VicunaVariant variant_;
  std::string system_;
  std::vector<Turn> turns_;
};

// "<im_start>" + "<im_patch>" x patches + "<im_end>": the comprehension span of one input image.
std::string image_span_text(int patches = kImageSpanTokens);
// "<dream_start>" + "<im_patch>" x queries + "<dream_end>": the creation span whose query slots the dream queries
// overwrite.
std::string dream_span_text(int queries = kDreamSpanTokens);
// The same spans as ids of `tok` (built directly, without running the tokenizer).
std::vector<int32_t> image_span_ids(const Tokenizer& tok, int patches = kImageSpanTokens);
std::vector<int32_t> dream_span_ids(const Tokenizer& tok, int queries = kDreamSpanTokens);

// omni/eval/vqa/vqa_inference.py get_vqa_result/get_caption: the eval template with
//   USER: system_prompt + image span + question + prompt, ASSISTANT: post_prompt (open turn when empty),
// with the trailing "</s>" removed as generate() does.
std::string vqa_prompt(std::string_view system_prompt, std::string_view question, std::string_view prompt,
                       std::string_view post_prompt, int patches = kImageSpanTokens);

}  // namespace dl::text
