#include "text/chat_template.h"

#include "core/error.h"

namespace dl::text {

namespace {
constexpr std::string_view kSep = " ";
constexpr std::string_view kSep2 = "</s>";
}  // namespace

Conversation::Conversation(VicunaVariant variant)
    : variant_(variant), system_((variant == VicunaVariant::Eval ? " " : "") + std::string(kVicunaSystemPrompt)) {}

void Conversation::append(std::string_view role, std::optional<std::string_view> text) {
  Turn t;
  t.role = std::string(role);
  if (text) t.text = std::string(*text);
  turns_.push_back(std::move(t));
}

std::string Conversation::prompt() const {
  // SeparatorStyle.TWO / ADD_COLON_TWO: separators alternate by message index, whatever the roles.
  std::string ret = system_;
  ret += kSep;
  for (size_t i = 0; i < turns_.size(); ++i) {
    const Turn& t = turns_[i];
    const bool has_content = t.text && (variant_ == VicunaVariant::Train || !t.text->empty());
    if (has_content) {
      ret += t.role;
      ret += ": ";
      ret += *t.text;
      ret += i % 2 == 0 ? kSep : kSep2;
    } else {
      ret += t.role;
      ret += ":";
    }
  }
  return ret;
}

std::string Conversation::generation_prompt() const {
  std::string p = prompt();
  if (p.size() >= kSep2.size() && std::string_view(p).substr(p.size() - kSep2.size()) == kSep2) {
    p.resize(p.size() - kSep2.size());
  }
  return p;
}

namespace {

std::string span_text(std::string_view open, int n, std::string_view close, const char* what) {
  DL_CHECK(n >= 0, what, " span length must be non-negative, got ", n);
  std::string s(open);
  s.reserve(open.size() + size_t(n) * kImagePatchToken.size() + close.size());
  for (int i = 0; i < n; ++i) s += kImagePatchToken;
  s += close;
  return s;
}

std::vector<int32_t> span_ids(const Tokenizer& tok, std::string_view open, int n, std::string_view close,
                              const char* what) {
  DL_CHECK(n >= 0, what, " span length must be non-negative, got ", n);
  std::vector<int32_t> ids;
  ids.reserve(size_t(n) + 2);
  ids.push_back(tok.token_id(open));
  ids.insert(ids.end(), size_t(n), tok.token_id(kImagePatchToken));
  ids.push_back(tok.token_id(close));
  return ids;
}

}  // namespace

std::string image_span_text(int patches) { return span_text(kImageStartToken, patches, kImageEndToken, "image"); }
std::string dream_span_text(int queries) { return span_text(kDreamStartToken, queries, kDreamEndToken, "dream"); }

std::vector<int32_t> image_span_ids(const Tokenizer& tok, int patches) {
  return span_ids(tok, kImageStartToken, patches, kImageEndToken, "image");
}

std::vector<int32_t> dream_span_ids(const Tokenizer& tok, int queries) {
  return span_ids(tok, kDreamStartToken, queries, kDreamEndToken, "dream");
}

void Conversation::set_last_message(std::string_view text) {
  DL_CHECK(!turns_.empty(), "conversation: no turn to set");
  turns_.back().text = std::string(text);
}

std::string vqa_prompt(std::string_view system_prompt, std::string_view question, std::string_view prompt,
                       std::string_view post_prompt, int patches) {
  std::string qs(system_prompt);
  qs += image_span_text(patches);
  qs += question;
  qs += prompt;
  Conversation conv(VicunaVariant::Eval);
  conv.append_user(qs);
  conv.append_assistant(post_prompt);
  return conv.generation_prompt();
}

}  // namespace dl::text
