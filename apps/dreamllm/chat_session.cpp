#include "chat_session.h"

#include <algorithm>

#include "core/error.h"
#include "core/ops.h"
#include "io/image_file.h"
#include "pipelines/text_stream.h"

namespace dl::app {

namespace {

const char* kChatHelp =
    "  /image PATH   attach an image to your next message (placed where the message says <image>, else first)\n"
    "  /reset        start a new conversation\n"
    "  /quit         leave (or end the input)\n";

int64_t count_spans(const std::vector<int32_t>& ids, int32_t im_start, size_t n) {
  int64_t c = 0;
  for (size_t i = 0; i < n; ++i) c += ids[i] == im_start;
  return c;
}

text::Conversation fresh_conversation(const std::string& system_prompt) {
  text::Conversation c(text::VicunaVariant::Eval);
  if (!system_prompt.empty()) c.set_system(system_prompt);
  return c;
}

}  // namespace

bool read_chat_line(std::istream& in, std::string& line, size_t max_bytes, bool& too_long) {
  line.clear();
  too_long = false;
  std::streambuf* sb = in.rdbuf();
  bool any = false;
  for (;;) {
    const auto c = sb->sbumpc();
    if (c == std::char_traits<char>::eof()) {
      in.setstate(std::ios::eofbit);
      break;
    }
    any = true;
    if (c == '\n') break;
    if (line.size() < max_bytes)
      line.push_back(char(c));
    else
      too_long = true;
  }
  if (too_long) line.clear();
  return any;
}

ChatSession::ChatSession(const Model& m, std::string system_prompt, pipelines::GenerationConfig generation,
                         ChatEvents events)
    : m_(m),
      system_prompt_(std::move(system_prompt)),
      generation_(std::move(generation)),
      ev_(std::move(events)),
      // A plain LLaMA tokenizer has no <im_start>; -1 is never an id.
      im_start_(m.tokenizer.has_token(text::kImageStartToken) ? m.tokenizer.token_id(text::kImageStartToken) : -1),
      limit_(m.dir.config().llm.max_position_embeddings),
      conv_(fresh_conversation(system_prompt_)),
      decoder_(m.llm) {}

void ChatSession::reset() {
  conv_ = fresh_conversation(system_prompt_);
  pixels_.clear();
  pending_.clear();
  seen_.clear();
}

bool ChatSession::handle(const std::string& line) {
  if (line == "/quit" || line == "/exit") return false;
  if (line == "/help") {
    ev_.text(kChatHelp);
    return true;
  }
  if (line == "/reset") {
    reset();
    return true;
  }
  if (line.rfind("/image ", 0) == 0) {
    const std::string path = line.substr(7);
    m_.llm.require_vision("/image " + path);
    io::read_image(path);  // fail now, not at the next message
    pending_.push_back(path);
    ev_.note("(image attached: " + path + ")\n");
    return true;
  }
  if (line.empty()) return true;
  if (line[0] == '/') fail("unknown command '", line, "'\n", kChatHelp);

  // Everything a message changes, to put back when it fails. The decoder's cache cannot be put back once fed;
  // forgetting what it has seen makes the next message read the conversation again.
  const text::Conversation conv = conv_;
  const std::vector<Tensor> pixels = pixels_;
  const std::vector<std::string> pending = pending_;
  const std::vector<int32_t> seen = seen_;
  bool fed = false;
  try {
    message(line, fed);
  } catch (...) {
    conv_ = conv;
    pixels_ = pixels;
    pending_ = pending;
    seen_ = seen;
    if (fed) seen_.clear();
    throw;
  }
  return true;
}

void ChatSession::message(const std::string& line, bool& fed) {
  const std::string user = place_images(m_, line, pending_.size());
  // The message alone must fit, whatever came before it: /reset would not help.
  const size_t own = m_.tokenizer.encode(user).size();
  DL_CHECK(int64_t(own) < limit_, "the message has ", own, " tokens; the model's context holds ", limit_,
           " (write a shorter message)");
  const Tensor new_px = load_pixels(m_, pending_);
  conv_.append_user(user);
  conv_.append_assistant(std::nullopt);
  const std::vector<int32_t> ids = m_.tokenizer.encode(conv_.generation_prompt());
  DL_CHECK(int64_t(ids.size()) < limit_, "the conversation would have ", ids.size(),
           " tokens; the model's context holds ", limit_, " (use /reset to start a new conversation)");
  pending_.clear();
  if (new_px.defined()) pixels_.push_back(new_px);
  pipelines::GenerationConfig gc = generation_;
  gc.max_new_tokens = std::min<int64_t>(gc.max_new_tokens, limit_ - int64_t(ids.size()));

  const Tensor all_px = pixels_.empty() ? Tensor() : ops::concat(pixels_, 0);
  const bool reuse = gc.num_beams == 1 && !seen_.empty() && seen_.size() < ids.size() &&
                     std::equal(seen_.begin(), seen_.end(), ids.begin());
  fed = true;
  Tensor logits;
  if (reuse) {
    const std::vector<int32_t> suffix(ids.begin() + int64_t(seen_.size()), ids.end());
    const int64_t before = count_spans(ids, im_start_, seen_.size()), total = count_spans(ids, im_start_, ids.size());
    const Tensor px = total > before ? all_px.slice(0, before, total).contiguous() : Tensor();
    logits = decoder_.feed(suffix, px);
  } else {
    logits = decoder_.prefill({ids}, all_px);
  }
  ev_.answer_begins();
  pipelines::TextStream stream(m_.tokenizer, ev_.text);
  pipelines::GenerationCallbacks cb;
  cb.on_token = [&](int64_t, int32_t tok) { stream.push(tok); };
  const auto r = pipelines::generate(decoder_, logits, {ids}, gc, cb);
  const std::vector<int32_t>& answer = r.tokens[0];
  if (gc.num_beams > 1) {
    ev_.text(m_.tokenizer.decode(answer));  // beam search streams nothing
    seen_.clear();                          // beam search reshaped the session: the next turn re-reads
  } else {
    seen_ = ids;
    seen_.insert(seen_.end(), answer.begin(), answer.end());
    seen_.resize(size_t(decoder_.consumed()));  // the last token is not fed when the length limit stopped the row
  }
  ev_.text("\n");
  // The answer becomes the assistant turn; the template closes it with "</s>".
  conv_.set_last_message(m_.tokenizer.decode(answer));
}

}  // namespace dl::app
