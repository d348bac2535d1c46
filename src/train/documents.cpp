#include "train/documents.h"

#include <algorithm>
#include <numeric>
#include <string_view>
#include <type_traits>
#include <utility>
#include <variant>

#include "core/error.h"
#include "text/chat_template.h"

namespace dl::train {

namespace {

// Python's str.isspace() code points, which str.strip() removes (MMC4 sentences carry non-breaking spaces).
bool is_python_space(uint32_t cp) {
  return (cp >= 0x09 && cp <= 0x0D) || (cp >= 0x1C && cp <= 0x20) || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
         (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F ||
         cp == 0x3000;
}

// Decodes the UTF-8 code point at s[i], setting `len` to its byte count (1 for a stray byte, never 0).
uint32_t decode_utf8(std::string_view s, size_t i, size_t& len) {
  const auto b = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
  const unsigned char c = b(i);
  size_t n = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 1;
  if (i + n > s.size()) n = 1;
  len = n;
  if (n == 1) return c;
  uint32_t cp = c & (0xFF >> (n + 1));
  for (size_t k = 1; k < n; ++k) cp = (cp << 6) | (b(i + k) & 0x3F);
  return cp;
}

// Python's text.strip().
std::string python_strip(std::string_view s) {
  size_t begin = 0, len = 0;
  while (begin < s.size() && is_python_space(decode_utf8(s, begin, len))) begin += len;
  size_t end = s.size();
  while (end > begin) {
    size_t start = end - 1;
    while (start > begin && (static_cast<unsigned char>(s[start]) & 0xC0) == 0x80) --start;
    if (!is_python_space(decode_utf8(s, start, len)) || start + len != end) break;
    end = start;
  }
  return std::string(s.substr(begin, end - begin));
}

// Python's s.split(sep) for a non-empty separator.
std::vector<std::string> python_split(std::string_view s, std::string_view sep) {
  std::vector<std::string> parts;
  size_t from = 0;
  while (true) {
    const size_t at = s.find(sep, from);
    if (at == std::string_view::npos) {
      parts.emplace_back(s.substr(from));
      return parts;
    }
    parts.emplace_back(s.substr(from, at - from));
    from = at + sep.size();
  }
}

void append(std::vector<int32_t>& to, const std::vector<int32_t>& from) { to.insert(to.end(), from.begin(), from.end()); }

}  // namespace

DocumentBuilder::DocumentBuilder(const text::Tokenizer& tokenizer, DocumentOptions options)
    : tok_(tokenizer), options_(options) {
  DL_CHECK(options_.comprehension || options_.creation,
           "document builder: comprehension and creation are both off; at least one mode is needed");
  DL_CHECK(options_.image_tokens > 0, "document builder: image_tokens must be positive, got ", options_.image_tokens);
  DL_CHECK(options_.dream_queries > 0, "document builder: dream_queries must be positive, got ",
           options_.dream_queries);
  // A pair must fit <s>, one span, at least one caption token and </s>; below that, HF's truncation gives up
  // and returns the caption untruncated, which no caller wants.
  const int longest_span = std::max(options_.image_tokens, options_.dream_queries) + 2;
  DL_CHECK(options_.max_length >= longest_span + 3, "document builder: max_length ", options_.max_length,
           " is too small for one ", longest_span, "-token span plus <s>, a text token and </s>");
  bos_ = tok_.bos_id();
  eos_ = tok_.eos_id();
  image_id_ = tok_.token_id(text::kImageToken);
  dream_id_ = tok_.token_id(text::kDreamToken);
  patch_id_ = tok_.token_id(text::kImagePatchToken);
  im_start_id_ = tok_.token_id(text::kImageStartToken);
  im_end_id_ = tok_.token_id(text::kImageEndToken);
  dream_start_id_ = tok_.token_id(text::kDreamStartToken);
  dream_end_id_ = tok_.token_id(text::kDreamEndToken);
  image_span_ = text::image_span_ids(tok_, options_.image_tokens);
  dream_span_ = text::dream_span_ids(tok_, options_.dream_queries);
}

std::vector<int32_t> DocumentBuilder::encode(const std::string& text) const {
  // The builder sets add_eos_token=False and relies on add_bos_token (LLaMA's default, and the release's): every
  // tokenizer(text).input_ids it takes is [<s>] + these, and it strips or counts that <s> itself.
  return tok_.encode(text, /*add_special_tokens=*/false);
}

bool DocumentBuilder::is_unlearned_span_token(int32_t id) const {
  return id == patch_id_ || id == im_start_id_ || id == im_end_id_ || id == dream_end_id_;
}

// ---------------------------------------------------------------------------------------------------------------
// Image-text pairs (DatasetType.ImageTextPair)
// ---------------------------------------------------------------------------------------------------------------
std::vector<int32_t> DocumentBuilder::pair_caption(const std::string& text, size_t span) const {
  // tokenizer(text, max_length=model_max_length - len(span) - 1, truncation=True): <s> counts against the limit,
  // the caption is cut from the right.
  std::vector<int32_t> caption = encode(text);
  const size_t limit = size_t(options_.max_length) - span - 1;
  if (caption.size() + 1 > limit) caption.resize(limit - 1);
  return caption;
}

Sample DocumentBuilder::image_to_text(const PairRecord& pair) const {
  const std::vector<int32_t> caption = pair_caption(pair.caption, image_span_.size());

  Sample s;
  s.input_ids.push_back(bos_);
  append(s.input_ids, image_span_);
  append(s.input_ids, caption);
  s.input_ids.push_back(eos_);
  // labels: every id but the image span's (<s> keeps its label; the shifted loss never uses position 0's label).
  s.labels = s.input_ids;
  for (int32_t& l : s.labels) {
    if (l == patch_id_ || l == im_start_id_ || l == im_end_id_) l = kIgnoreIndex;
  }
  s.images.push_back(ImageRef{0, pair.image});
  return s;
}

Sample DocumentBuilder::text_to_image(const PairRecord& pair) const {
  const std::vector<int32_t> caption = pair_caption(pair.caption, dream_span_.size());

  Sample s;
  s.input_ids.push_back(bos_);
  append(s.input_ids, caption);
  append(s.input_ids, dream_span_);
  s.input_ids.push_back(eos_);
  s.labels.assign(s.input_ids.size(), kIgnoreIndex);  // creation pairs carry no LM loss at all
  s.dream_images.push_back(ImageRef{0, pair.image, pair.condition_labels});
  return s;
}

Sample DocumentBuilder::pair(const PairRecord& pair, double uniform) const {
  if (!options_.creation) return image_to_text(pair);
  if (!options_.comprehension) return text_to_image(pair);
  return uniform >= 0.5 ? image_to_text(pair) : text_to_image(pair);
}

Sample DocumentBuilder::pair(const PairRecord& pair, Rng& rng) const {
  const double uniform = rng.uniform();
  return this->pair(pair, uniform);
}

// ---------------------------------------------------------------------------------------------------------------
// Interleaved documents (DatasetType.InterleavedImageText / InstructInterleavedImageText)
// ---------------------------------------------------------------------------------------------------------------
Sample DocumentBuilder::interleaved(const InterleavedRecord& doc) const {
  Sample s = interleaved_body(doc, {});
  s.input_ids.insert(s.input_ids.begin(), bos_);
  s.labels.insert(s.labels.begin(), bos_);  // the original labels <s> too (harmless: the shift drops it)
  return s;
}

Sample DocumentBuilder::instruct_interleaved(const InterleavedRecord& doc) const {
  DL_CHECK(doc.instruction.has_value(), "instruction-interleaved record has no \"instruction\"");
  // conversation_it_interleaved_dataset.py: dialog = [USER: instruction, ASSISTANT: None] with the vicuna_v1.1
  // training template -> "<system> USER: <instruction> ASSISTANT:".
  text::Conversation conv(text::VicunaVariant::Train);
  conv.append_user(*doc.instruction);
  conv.append_assistant(std::nullopt);
  std::vector<int32_t> prompt{bos_};
  append(prompt, encode(conv.prompt()));
  const size_t prompt_len = prompt.size();
  Sample s = interleaved_body(doc, std::move(prompt));
  std::fill(s.labels.begin(), s.labels.begin() + std::ptrdiff_t(prompt_len), kIgnoreIndex);
  return s;
}

Sample DocumentBuilder::interleaved_body(const InterleavedRecord& doc, std::vector<int32_t> prefix) const {
  // Images in matched_text_index order; ties keep file order (Python sorts (index, position, ...) tuples).
  std::vector<size_t> order(doc.images.size());
  std::iota(order.begin(), order.end(), size_t(0));
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return doc.images[a].matched_text_index < doc.images[b].matched_text_index;
  });

  // _merge_text_list on the stripped sentences: chunk k ends at image k's sentence, joined with " "; two images on
  // one sentence give an empty chunk between them; sentences after the last image form a final chunk.
  std::vector<std::string> sentences;
  sentences.reserve(doc.text_list.size());
  for (const std::string& t : doc.text_list) sentences.push_back(python_strip(t));
  std::vector<std::string> chunks;
  size_t prev = 0;
  const auto join = [&](size_t from, size_t to) {
    std::string out;
    for (size_t i = from; i < to; ++i) {
      if (i > from) out += ' ';
      out += sentences[i];
    }
    return out;
  };
  for (size_t k : order) {
    const size_t end = std::max(prev, size_t(doc.images[k].matched_text_index) + 1);
    chunks.push_back(join(prev, end));
    prev = end;
  }
  if (prev != sentences.size()) chunks.push_back(join(prev, sentences.size()));

  Sample s;
  std::vector<int32_t>& ids = prefix;
  const size_t max_length = size_t(options_.max_length);
  for (size_t idx = 0; idx < chunks.size(); ++idx) {
    // "+ 2" reserves <s> and </s> (also in the instruct case, where <s> is already in the prefix: one spare slot).
    const std::vector<int32_t> text = encode(chunks[idx]);
    if (ids.size() + text.size() + 2 > max_length) break;
    append(ids, text);
    if (idx >= order.size()) continue;

    std::vector<int32_t> spans;
    if (options_.creation) append(spans, dream_span_);
    if (options_.comprehension) append(spans, image_span_);
    if (ids.size() + spans.size() + 2 > max_length) break;  // the image and everything after it are dropped
    append(ids, spans);
    const InterleavedRecord::Image& image = doc.images[order[idx]];
    const ImageRef ref{int32_t(order[idx]), image.path};
    if (options_.creation) s.dream_images.push_back(ref);
    if (options_.comprehension) s.images.push_back(ref);
  }
  ids.push_back(eos_);

  s.input_ids = std::move(ids);
  s.labels = s.input_ids;
  // "only keep dream_start_id to learn": every span token but <dream_start> is ignored.
  for (int32_t& l : s.labels) {
    if (is_unlearned_span_token(l)) l = kIgnoreIndex;
  }
  return s;
}

// ---------------------------------------------------------------------------------------------------------------
// Conversations (DatasetType.Conversation)
// ---------------------------------------------------------------------------------------------------------------
std::string conversation_prompt(const ConversationRecord& record) {
  // ConversationDataset: a conversation that does not open with the user loses its first message; roles are then
  // reassigned by position (Conversation.reset_dialog), whatever "from" said.
  std::vector<const ConversationRecord::Turn*> turns;
  for (const auto& t : record.turns) turns.push_back(&t);
  if (!turns.empty() && turns.front()->from != "human" && turns.front()->from != "user") turns.erase(turns.begin());
  text::Conversation conv(text::VicunaVariant::Train);
  for (size_t i = 0; i < turns.size(); ++i) {
    conv.append(i % 2 == 0 ? text::Conversation::user_role() : text::Conversation::assistant_role(),
                turns[i]->value);
  }
  return conv.prompt();
}

Sample DocumentBuilder::conversation(const ConversationRecord& record) const {
  const std::string prompt = conversation_prompt(record);

  std::vector<int32_t> ids{bos_};
  append(ids, encode(prompt));
  std::vector<int32_t> labels = ids;

  // Loss only on the assistant replies, located by re-tokenizing pieces of the prompt (LLaVA's preprocess_v1).
  // Each "</s>"-separated turn is "[system ]USER: ... ASSISTANT: reply"; the instruction part up to and including
  // " ASSISTANT: " is ignored, with "-2" for <s> and the trailing "▁" that merges into the reply's first token.
  const auto ignore = [&](size_t from, int64_t count) {
    // Python's labels[a:a+n] = [-100]*n; clamped so that a tokenizer mismatch cannot grow the list as it would there.
    for (int64_t k = 0; k < count && from + size_t(k) < labels.size(); ++k) labels[from + size_t(k)] = kIgnoreIndex;
  };
  std::string sep = " ";
  sep += text::Conversation::assistant_role();
  sep += ": ";
  const bool legacy = tok_.legacy();
  size_t cur_len = 1;
  ignore(0, 1);
  const std::vector<std::string> rounds = python_split(prompt, "</s>");
  for (size_t i = 0; i < rounds.size(); ++i) {
    const std::string& round = rounds[i];
    if (round.empty()) break;
    const int64_t round_len = int64_t(encode(round).size()) + 1;
    std::vector<std::string> parts = python_split(round, sep);
    if (parts.size() != 2) break;
    parts[0] += sep;
    int64_t instruction_len = int64_t(encode(parts[0]).size()) + 1 - 2;
    // Non-legacy tokenizers give "</s>USER" no "▁" before USER, one token less than the standalone round.
    if (i != 0 && !legacy) instruction_len -= 1;
    ignore(cur_len, instruction_len);
    cur_len += size_t(round_len);
    if (i != 0 && !legacy) cur_len -= 1;
  }
  // A length mismatch (cur_len != ids.size()) is only logged by DreamLLM, which keeps the labels as they are (LLaVA
  // would ignore the whole sample); we do the same as DreamLLM.

  // Which record image each placeholder stands for: one "image" serves every placeholder; a list gives one per
  // placeholder in order (the original builds one image per placeholder message, always the record's "image").
  size_t placeholders = 0;
  for (int32_t id : ids) placeholders += (id == image_id_ || id == dream_id_) ? 1 : 0;
  if (placeholders > 0) {
    DL_CHECK(!record.images.empty(), "conversation has ", placeholders,
             " <image>/<dream> placeholder(s) but no \"image\" field");
    DL_CHECK(record.images.size() == 1 || record.images.size() == placeholders, "conversation has ", placeholders,
             " <image>/<dream> placeholder(s) but ", record.images.size(), " images");
  }

  // truncate_and_replace: placeholders become spans with ignored labels, the sequence stops at max_length, and a
  // span that would cross it is dropped whole together with everything after it. (The original's slice in that
  // branch, new_input_ids[:-(pos - truncate)], keeps only the first truncate-pos tokens, and after a span that
  // ends exactly at max_length it keeps appending text; both contradict its own comments, and we implement what
  // the comments say.)
  const size_t max_length = size_t(options_.max_length);
  Sample s;
  size_t placeholder = 0;
  for (size_t i = 0; i < ids.size(); ++i) {
    const int32_t id = ids[i];
    if (id == image_id_ || id == dream_id_) {
      const size_t image_index = record.images.size() == 1 ? 0 : placeholder;
      ++placeholder;
      std::vector<int32_t> span;
      if (id == dream_id_) append(span, dream_span_);  // <dream>: the picture is the target, then the context
      append(span, image_span_);
      if (s.input_ids.size() + span.size() > max_length) break;
      append(s.input_ids, span);
      s.labels.insert(s.labels.end(), span.size(), kIgnoreIndex);
      const ImageRef ref{int32_t(image_index), record.images[image_index]};
      if (id == dream_id_) s.dream_images.push_back(ref);
      s.images.push_back(ref);
    } else {
      s.input_ids.push_back(id);
      s.labels.push_back(labels[i]);
    }
    if (s.input_ids.size() >= max_length) break;
  }
  return s;
}

Sample DocumentBuilder::build(const Record& record, Rng& rng) const {
  return std::visit(
      [&](const auto& r) -> Sample {
        using T = std::decay_t<decltype(r)>;
        if constexpr (std::is_same_v<T, PairRecord>) {
          return pair(r, rng);
        } else if constexpr (std::is_same_v<T, InterleavedRecord>) {
          return r.instruction ? instruct_interleaved(r) : interleaved(r);
        } else {
          return conversation(r);
        }
      },
      record);
}

}  // namespace dl::train
