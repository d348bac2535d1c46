#include "pipelines/chat.h"

#include <algorithm>

#include "core/error.h"
#include "core/ops.h"

namespace dl::pipelines {

namespace {

text::Conversation fresh_conversation(const ChatOptions& o) {
  text::Conversation c(o.layout);
  if (!o.system_prompt.empty()) c.set_system(o.system_prompt);
  return c;
}

int64_t count_spans(const std::vector<int32_t>& ids, int32_t im_start, size_t n) {
  int64_t c = 0;
  for (size_t i = 0; i < n; ++i) c += ids[i] == im_start;
  return c;
}

}  // namespace

std::string place_image_spans(const std::string& text, size_t images, int64_t patches) {
  const std::string placeholder(text::kImageToken);
  const std::string span = text::image_span_text(int(patches));
  size_t found = 0;
  for (size_t at = text.find(placeholder); at != std::string::npos; at = text.find(placeholder, at + 1)) ++found;
  if (found == 0) {
    std::string out;
    for (size_t i = 0; i < images; ++i) out += span;
    return out + text;
  }
  DL_CHECK(found == images, "the prompt has ", found, " <image> placeholder(s) but ", images, " image(s) were given");
  std::string out;
  size_t from = 0;
  for (size_t at = text.find(placeholder); at != std::string::npos; at = text.find(placeholder, from)) {
    out += text.substr(from, at - from) + span;
    from = at + placeholder.size();
  }
  return out + text.substr(from);
}

ChatSession::ChatSession(const models::DreamLLM& model, const DiffusionHead* head, const text::Tokenizer& tokenizer,
                         const io::ClipPreprocessConfig& clip_preprocess, ChatOptions options)
    : model_(model),
      head_(head),
      tokenizer_(tokenizer),
      clip_(clip_preprocess),
      options_(std::move(options)),
      // A plain LLaMA tokenizer has no <im_start>; -1 is never an id.
      im_start_(tokenizer.has_token(text::kImageStartToken) ? tokenizer.token_id(text::kImageStartToken) : -1),
      limit_(model.llm().config().max_position_embeddings),
      conv_(fresh_conversation(options_)),
      decoder_(model) {}

void ChatSession::reset() {
  conv_ = fresh_conversation(options_);
  pixels_.clear();
  seen_.clear();
  turns_ = 0;
}

ChatReply ChatSession::turn(const std::string& message, const std::vector<io::Image>& images,
                            const WriteEvents& events) {
  const bool placed = message.find(text::kImageToken) != std::string::npos;
  if (placed || !images.empty()) model_.require_vision(placed ? "an <image> placeholder" : "a picture in the message");
  // The training conversations (LLaVA's format) put "<image>\n" before a question that names no image position.
  const bool newline = options_.layout == text::VicunaVariant::Train && !placed && !images.empty();
  const std::string user =
      place_image_spans(newline ? "\n" + message : message, images.size(), model_.image_tokens());
  // The message alone must fit, whatever came before it: a new conversation would not help.
  const size_t own = tokenizer_.encode(user).size();
  DL_CHECK(int64_t(own) < limit_, "the message has ", own, " tokens; the model's context holds ", limit_,
           " (write a shorter message)");

  // Everything a turn changes, to put back when it fails. The decoder's cache cannot be put back once fed;
  // forgetting what it has seen makes the next turn read the conversation again.
  const text::Conversation conv = conv_;
  const std::vector<Tensor> pixels = pixels_;
  const std::vector<int32_t> seen = seen_;
  const size_t drawn = drawn_;
  bool fed = false;
  try {
    ChatReply r = answer(user, images, events, fed);
    ++turns_;
    return r;
  } catch (...) {
    conv_ = conv;
    pixels_ = pixels;
    seen_ = seen;
    drawn_ = drawn;
    if (fed) seen_.clear();
    throw;
  }
}

ChatReply ChatSession::answer(const std::string& user, const std::vector<io::Image>& images,
                              const WriteEvents& events, bool& fed) {
  std::vector<Tensor> new_px;
  for (const io::Image& img : images) {
    const Tensor t = io::clip_preprocess(img, clip_);
    new_px.push_back(t.reshape({1, t.size(0), t.size(1), t.size(2)}));
  }
  conv_.append_user(user);
  conv_.append_assistant(std::nullopt);
  const std::vector<int32_t> ids = tokenizer_.encode(conv_.generation_prompt());
  DL_CHECK(int64_t(ids.size()) < limit_, "the conversation would have ", ids.size(),
           " tokens; the model's context holds ", limit_, " (start a new conversation)");
  pixels_.insert(pixels_.end(), new_px.begin(), new_px.end());

  WriteOptions o = options_.answer;
  o.text.max_new_tokens = std::min<int64_t>(o.text.max_new_tokens, limit_ - int64_t(ids.size()));
  o.seed = options_.answer.seed + drawn_;
  if (head_ == nullptr || o.text.num_beams > 1) o.max_images = 0;

  const Tensor all_px = pixels_.empty() ? Tensor() : ops::concat(pixels_, 0);
  const bool reuse = o.text.num_beams == 1 && !seen_.empty() && seen_.size() < ids.size() &&
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

  ChatReply reply;
  std::string assistant;  // the answer as the conversation keeps it: text, dream span and image span per picture
  if (o.text.num_beams > 1) {
    // Beam search settles only at the end: nothing streams, and the reshaped cache is read again next turn.
    const GenerationResult r = generate(decoder_, logits, {ids}, o.text);
    reply.text = assistant = tokenizer_.decode(r.tokens[0]);
    reply.finish = r.finish_reasons[0];
    if (events.on_text) events.on_text(reply.text);
    Document::Block b;
    b.text = reply.text;
    reply.blocks.push_back(std::move(b));
    seen_.clear();
  } else {
    Document doc;
    doc.ids = ids;
    doc.prompt_length = ids.size();
    std::vector<Tensor> drawn_px;
    continue_document(model_, head_, tokenizer_, clip_, decoder_, logits, doc, drawn_px, uncond_, o, events);
    for (const Document::Block& b : doc.blocks) {
      if (b.is_image) {
        reply.pictures.push_back(b.image);
        assistant += text::dream_span_text(int(model_.dream_queries())) +
                     text::image_span_text(int(model_.image_tokens()));
      } else {
        reply.text += b.text;
        assistant += b.text;
      }
    }
    reply.blocks = std::move(doc.blocks);
    reply.finish = doc.finish;
    pixels_.insert(pixels_.end(), drawn_px.begin(), drawn_px.end());
    drawn_ += reply.pictures.size();
    seen_ = std::move(doc.ids);
    seen_.resize(size_t(decoder_.consumed()));  // the last token is not fed when it ended the answer
  }
  // The answer becomes the assistant turn; the template closes it with "</s>".
  conv_.set_last_message(assistant);
  return reply;
}

}  // namespace dl::pipelines
