#include "text/tokenizer.h"

#include <sentencepiece_processor.h>

#include <algorithm>
#include <charconv>
#include <cstring>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <unordered_map>
#include <unordered_set>

#include "core/error.h"
#include "core/file.h"
#include "io/gguf.h"
#include "io/gguf_model.h"

namespace dl::text {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr std::string_view kUnderline = "\xE2\x96\x81";  // U+2581, SentencePiece's whitespace mark

bool starts_with(std::string_view s, std::string_view p) { return s.substr(0, p.size()) == p; }

std::string replace_all(std::string_view s, std::string_view from, std::string_view to) {
  std::string out;
  size_t pos = 0;
  while (true) {
    size_t hit = s.find(from, pos);
    if (hit == std::string_view::npos) break;
    out.append(s.substr(pos, hit - pos)).append(to);
    pos = hit + from.size();
  }
  out.append(s.substr(pos));
  return out;
}

// Code points with their byte offsets (off has one extra entry, the end). transformers works on Python str, so
// matching and whitespace stripping are done per code point. Bytes that are not valid UTF-8 (Python could not hold
// them) become lone surrogates, which no added token can contain.
struct CodePoints {
  std::vector<char32_t> cp;
  std::vector<size_t> off;
};

CodePoints decode_utf8(std::string_view s) {
  CodePoints r;
  r.cp.reserve(s.size());
  r.off.reserve(s.size() + 1);
  size_t i = 0;
  auto byte = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
  while (i < s.size()) {
    const unsigned char b = byte(i);
    size_t len = 0;
    char32_t c = 0, lo = 0x80;
    unsigned char first_min = 0x80, first_max = 0xBF;
    if (b < 0x80) {
      len = 1, c = b;
    } else if (b >= 0xC2 && b <= 0xDF) {
      len = 2, c = b & 0x1F;
    } else if (b >= 0xE0 && b <= 0xEF) {
      len = 3, c = b & 0x0F, lo = 0x800;
      if (b == 0xE0) first_min = 0xA0;
      if (b == 0xED) first_max = 0x9F;  // no UTF-16 surrogates
    } else if (b >= 0xF0 && b <= 0xF4) {
      len = 4, c = b & 0x07, lo = 0x10000;
      if (b == 0xF0) first_min = 0x90;
      if (b == 0xF4) first_max = 0x8F;
    }
    bool ok = len > 0 && i + len <= s.size();
    for (size_t k = 1; ok && k < len; ++k) {
      const unsigned char t = byte(i + k);
      const unsigned char tmin = k == 1 ? first_min : 0x80, tmax = k == 1 ? first_max : 0xBF;
      if (t < tmin || t > tmax) ok = false;
      c = (c << 6) | (t & 0x3F);
    }
    if (!ok || (len > 1 && c < lo)) {
      len = 1, c = 0xDC00 | b;
    }
    r.cp.push_back(c);
    r.off.push_back(i);
    i += len;
  }
  r.off.push_back(s.size());
  return r;
}

// Python's str.isspace().
bool is_py_space(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

std::string py_lstrip(const std::string& s) {
  const CodePoints c = decode_utf8(s);
  size_t i = 0;
  while (i < c.cp.size() && is_py_space(c.cp[i])) ++i;
  return s.substr(c.off[i]);
}

std::string py_rstrip(const std::string& s) {
  const CodePoints c = decode_utf8(s);
  size_t n = c.cp.size();
  while (n > 0 && is_py_space(c.cp[n - 1])) --n;
  return s.substr(0, c.off[n]);
}

// transformers' tokenization_utils.Trie: split() cuts the text around every added token it finds. A match is taken
// when the scan passes its end; the lookahead then prefers the longest match among the partial matches that began
// no later than it, and scanning resumes after the cut. Reproduced step by step (including which stale partial
// matches the lookahead consults) because overlapping tokens make simpler leftmost-longest rules differ.
class Trie {
 public:
  void add(std::string_view word) {
    const CodePoints c = decode_utf8(word);
    if (c.cp.empty()) return;
    int node = 0;
    for (char32_t ch : c.cp) {
      auto it = nodes_[node].next.find(ch);
      if (it == nodes_[node].next.end()) {
        nodes_.emplace_back();
        it = nodes_[node].next.emplace(ch, int(nodes_.size() - 1)).first;
      }
      node = it->second;
    }
    nodes_[node].terminal = true;
  }

  std::vector<std::string> split(std::string_view text) const {
    const CodePoints c = decode_utf8(text);
    const size_t n = c.cp.size();
    std::vector<std::pair<size_t, int>> states;  // (start, node), in order of start
    std::vector<size_t> offsets{0};
    std::vector<size_t> dead;
    size_t skip = 0;
    for (size_t cur = 0; cur < n; ++cur) {
      if (skip && cur < skip) continue;
      dead.clear();
      bool reset = false;
      for (auto& state : states) {
        size_t start = state.first;
        if (nodes_[state.second].terminal) {
          size_t end = 0;
          for (const auto& [lookstart, look_node] : states) {
            if (lookstart > start) break;
            // Earlier partial matches have already consumed the current character.
            size_t pos = lookstart < start ? cur + 1 : cur;
            end = pos;
            int look = look_node;
            if (nodes_[look].terminal) start = lookstart, end = pos, skip = pos;
            while (pos < n) {
              auto it = nodes_[look].next.find(c.cp[pos]);
              if (it == nodes_[look].next.end()) break;
              look = it->second;
              ++pos;
              if (nodes_[look].terminal) start = lookstart, end = pos, skip = pos;
            }
          }
          offsets.push_back(start);
          offsets.push_back(end);
          reset = true;
          break;
        }
        auto it = nodes_[state.second].next.find(c.cp[cur]);
        if (it != nodes_[state.second].next.end()) {
          state.second = it->second;
        } else {
          dead.push_back(start);
        }
      }
      if (reset) {
        states.clear();
      } else if (!dead.empty()) {
        std::erase_if(states, [&](const auto& s) { return std::find(dead.begin(), dead.end(), s.first) != dead.end(); });
      }
      if (cur >= skip) {
        auto it = nodes_[0].next.find(c.cp[cur]);
        if (it != nodes_[0].next.end()) states.emplace_back(cur, it->second);
      }
    }
    for (const auto& [start, node] : states) {
      if (nodes_[node].terminal) {
        offsets.push_back(start);
        offsets.push_back(n);
        break;
      }
    }
    offsets.push_back(n);
    std::vector<std::string> out;
    size_t prev = 0;
    for (size_t end : offsets) {
      if (end <= prev) continue;  // zero-width cuts; Trie.cut_text also drops backwards ones
      out.emplace_back(text.substr(c.off[prev], c.off[end] - c.off[prev]));
      prev = end;
    }
    return out;
  }

 private:
  struct Node {
    std::map<char32_t, int> next;
    bool terminal = false;
  };
  std::vector<Node> nodes_{Node{}};
};

// The contents of a tokenizer file; std::nullopt when it does not exist. A FIFO or a device in its place is an
// error, not a wait (dl::read_file_if_exists). The bound is far above real files: side files are a few kB and
// tokenizer.model a few hundred kB.
std::optional<std::string> read_optional(const fs::path& path) {
  try {
    return read_file_if_exists(path.string(), size_t(1) << 30);
  } catch (const Error& e) {
    fail("tokenizer: ", e.what());
  }
}

std::optional<json> parse_json(const std::optional<std::string>& text, const fs::path& path) {
  if (!text) return std::nullopt;
  try {
    return json::parse(*text);
  } catch (const json::exception& e) {
    fail("tokenizer: ", path.string(), " is not valid JSON (", e.what(), ")");
  }
}

// A special-token entry is either "text" or {"content": "text", ...} (AddedToken serialisation).
std::string token_text(const json& v, const fs::path& file, const std::string& key) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v["content"].is_string()) return v["content"].get<std::string>();
  fail("tokenizer: ", file.string(), ": '", key, "' is neither a string nor an object with a string \"content\"");
}

bool bool_field(const json& cfg, const char* key, bool fallback, const fs::path& file) {
  if (!cfg.contains(key) || cfg[key].is_null()) return fallback;
  DL_CHECK(cfg[key].is_boolean(), "tokenizer: ", file.string(), ": '", key, "' is not a boolean");
  return cfg[key].get<bool>();
}

// Specials in transformers' order: bos, eos, unk, pad, then additional_special_tokens.
struct SpecialTokens {
  std::string bos = "<s>", eos = "</s>", unk = "<unk>";
  std::optional<std::string> pad;
  std::vector<std::string> additional;
};

}  // namespace

struct Tokenizer::Impl {
  std::unique_ptr<sentencepiece::SentencePieceProcessor> sp;
  int32_t sp_size = 0;
  bool legacy = true, add_bos = true, add_eos = false, clean_up_spaces = false;
  SpecialTokens specials;
  std::map<int32_t, AddedToken> decoder;  // transformers' _added_tokens_decoder
  std::unordered_map<std::string, int32_t> encoder;
  std::vector<AddedToken> appended;  // decoder entries past the SentencePiece vocabulary
  std::unordered_set<std::string> all_special;
  std::unordered_set<int32_t> all_special_ids;
  std::unordered_set<std::string> legacy_added;  // added tokens that _decode keeps out of convert_tokens_to_string
  Trie trie;
  size_t unk_token_length = 0;
  int32_t bos = 1, eos = 2, unk = 0, pad = -1;

  std::vector<std::string> sp_pieces(std::string_view text) const {
    std::vector<std::string> pieces;
    const auto st = sp->Encode(text, &pieces);
    DL_CHECK(st.ok(), "tokenizer: SentencePiece cannot encode the text (", st.ToString(), ")");
    return pieces;
  }

  std::string sp_decode(const std::vector<std::string>& pieces) const {
    std::string out;
    const auto st = sp->Decode(pieces, &out);
    DL_CHECK(st.ok(), "tokenizer: SentencePiece cannot decode the pieces (", st.ToString(), ")");
    return out;
  }

  // LlamaTokenizer._tokenize.
  void tokenize_chunk(const std::string& chunk, std::vector<std::string>& out) const {
    std::vector<std::string> pieces;
    if (legacy || !(starts_with(chunk, kUnderline) || starts_with(chunk, " "))) {
      pieces = sp_pieces(chunk);
    } else {
      // Without the dummy prefix SentencePiece would drop the leading "▁", so the chunk is encoded behind the
      // unk token's text and that text's pieces are cut off again.
      pieces = sp_pieces(specials.unk + chunk);
      if (pieces.size() >= unk_token_length) pieces.erase(pieces.begin(), pieces.begin() + ptrdiff_t(unk_token_length));
    }
    for (auto& p : pieces) out.push_back(std::move(p));
  }

  // PreTrainedTokenizer.tokenize.
  std::vector<std::string> base_tokenize(std::string_view text) const {
    std::vector<std::string> chunks = trie.split(text);
    for (size_t i = 0; i < chunks.size(); ++i) {
      auto it = encoder.find(chunks[i]);
      if (it == encoder.end()) continue;
      const AddedToken& tok = decoder.at(it->second);
      if (tok.rstrip && i + 1 < chunks.size() && !chunks[i + 1].empty()) chunks[i + 1] = py_lstrip(chunks[i + 1]);
      if (tok.lstrip && i > 0 && !chunks[i - 1].empty()) chunks[i - 1] = py_rstrip(chunks[i - 1]);
    }
    std::vector<std::string> out;
    for (auto& chunk : chunks) {
      if (chunk.empty()) continue;
      if (encoder.count(chunk)) {
        out.push_back(std::move(chunk));
      } else {
        tokenize_chunk(chunk, out);
      }
    }
    return out;
  }

  // LlamaTokenizer.tokenize.
  std::vector<std::string> tokenize(std::string_view text) const {
    if (legacy || text.empty()) return base_tokenize(text);
    std::string prefixed(kUnderline);
    prefixed += replace_all(text, kUnderline, " ");
    std::vector<std::string> toks = base_tokenize(prefixed);
    if (toks.size() > 1 && toks[0] == kUnderline && all_special.count(toks[1])) toks.erase(toks.begin());
    return toks;
  }

  int32_t piece_id(const std::string& t) const {
    auto it = encoder.find(t);
    return it != encoder.end() ? it->second : int32_t(sp->PieceToId(t));
  }

  std::string id_to_token(int32_t id) const {
    auto it = decoder.find(id);
    if (it != decoder.end()) return it->second.content;
    DL_CHECK(id >= 0 && id < sp_size, "tokenizer: token id ", id, " is outside the vocabulary of ",
             sp_size + int32_t(appended.size()), " tokens");
    return sp->IdToPiece(id);
  }

  // LlamaTokenizer.convert_tokens_to_string.
  std::string tokens_to_string(std::vector<std::string> tokens) const {
    if (starts_with(tokens[0], kUnderline)) tokens[0].erase(0, kUnderline.size());
    std::string out;
    std::vector<std::string> sub;
    bool prev_special = false;
    for (size_t i = 0; i < tokens.size(); ++i) {
      if (all_special.count(tokens[i])) {
        if (!prev_special && i != 0 && legacy) out += ' ';
        out += sp_decode(sub);
        out += tokens[i];
        prev_special = true;
        sub.clear();
      } else {
        sub.push_back(std::move(tokens[i]));
        prev_special = false;
      }
    }
    return out + sp_decode(sub);
  }

  // PreTrainedTokenizer._decode with its defaults (spaces_between_special_tokens=True).
  std::string decode(std::span<const int32_t> ids, bool skip_special) const {
    std::vector<std::string> subs, cur;
    for (int32_t id : ids) {
      if (skip_special && all_special_ids.count(id)) continue;
      std::string tok = id_to_token(id);
      if (legacy_added.count(tok)) {
        if (!cur.empty()) {
          std::string s = tokens_to_string(std::move(cur));
          if (!s.empty()) subs.push_back(std::move(s));
          cur.clear();
        }
        subs.push_back(std::move(tok));
      } else {
        cur.push_back(std::move(tok));
      }
    }
    if (!cur.empty()) subs.push_back(tokens_to_string(std::move(cur)));
    std::string text;
    for (size_t i = 0; i < subs.size(); ++i) {
      if (i) text += ' ';
      text += subs[i];
    }
    if (clean_up_spaces) {
      static const std::pair<std::string_view, std::string_view> kRules[] = {
          {" .", "."}, {" ?", "?"}, {" !", "!"}, {" ,", ","}, {" ' ", "'"},
          {" n't", "n't"}, {" 'm", "'m"}, {" 's", "'s"}, {" 've", "'ve"}, {" 're", "'re"}};
      for (const auto& [from, to] : kRules) text = replace_all(text, from, to);
    }
    return text;
  }
};

Tokenizer::Tokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;
Tokenizer::~Tokenizer() = default;

namespace {

// Protocol-buffer wire format, enough to write a SentencePiece ModelProto.
void put_varint(std::string& out, uint64_t v) {
  while (v >= 0x80) {
    out.push_back(char(uint8_t(v) | 0x80));
    v >>= 7;
  }
  out.push_back(char(v));
}
void put_key(std::string& out, int field, int wire) { put_varint(out, uint64_t(field) << 3 | uint64_t(wire)); }
void put_bytes(std::string& out, int field, std::string_view b) {
  put_key(out, field, 2);
  put_varint(out, b.size());
  out.append(b);
}
void put_int(std::string& out, int field, int64_t v) {
  put_key(out, field, 0);
  put_varint(out, uint64_t(v));  // negative int32 values take ten bytes, as protobuf writes them
}
void put_float(std::string& out, int field, float v) {
  put_key(out, field, 5);
  char b[4];
  std::memcpy(b, &v, 4);
  out.append(b, 4);
}

// llama.cpp's token types (gguf-py constants.py TokenType).
constexpr int32_t kTypeNormal = 1, kTypeUnknown = 2, kTypeControl = 3, kTypeUnused = 5,
                  kTypeByte = 6;

Tokenizer load_gguf_tokenizer(const std::string& path) {
  const std::shared_ptr<const io::GgufModel> g = io::open_gguf_model(path);
  Tokenizer::Files files;
  if (std::optional<std::string> model = g->embedded("tokenizer.model")) {
    // Converted by dreamllm: the original files, so ids match the directory's exactly.
    files.model = std::move(*model);
    files.added_tokens = g->embedded("added_tokens.json");
    files.tokenizer_config = g->embedded("tokenizer_config.json");
    files.special_tokens_map = g->embedded("special_tokens_map.json");
    return Tokenizer::from_files(files, g->companion_path);
  }
  return Tokenizer::from_files(Tokenizer::files_from_llama_cpp_vocab(g->llm.metadata, "'" + path + "'"), path);
}

}  // namespace

Tokenizer::Files Tokenizer::files_from_llama_cpp_vocab(const io::GgufMetadata& m, const std::string& what) {
  DL_CHECK(m.contains("tokenizer.ggml.model"), what, ": no tokenizer (metadata key 'tokenizer.ggml.model')");
  const std::string& kind = m.get_string("tokenizer.ggml.model");
  DL_CHECK(kind == "llama", what, ": tokenizer.ggml.model '", kind,
           "' is not supported (only SentencePiece vocabularies, \"llama\")");
  const std::vector<std::string>& tokens = m.get_string_array("tokenizer.ggml.tokens");
  const size_t n = tokens.size();
  DL_CHECK(n > 0, what, ": tokenizer.ggml.tokens is empty");
  std::vector<float> scores(n, 0.f);
  if (m.contains("tokenizer.ggml.scores")) {
    scores = m.get_f32_array("tokenizer.ggml.scores");
    DL_CHECK(scores.size() == n, what, ": ", scores.size(), " tokenizer.ggml.scores for ", n, " tokens");
  }
  std::vector<int32_t> types(n, kTypeNormal);
  if (m.contains("tokenizer.ggml.token_type")) {
    types = m.get_i32_array("tokenizer.ggml.token_type");
    DL_CHECK(types.size() == n, what, ": ", types.size(), " tokenizer.ggml.token_type entries for ", n, " tokens");
  }
  // The SentencePiece vocabulary ends after its last normal, unknown or byte piece; what follows was added on top.
  size_t sp = 0;
  bool has_bytes = false;
  for (size_t i = 0; i < n; ++i) {
    DL_CHECK(types[i] >= kTypeNormal && types[i] <= kTypeByte, what, ": token ", i, " has type ", types[i]);
    if (types[i] == kTypeNormal || types[i] == kTypeUnknown || types[i] == kTypeByte) sp = i + 1;
    has_bytes = has_bytes || types[i] == kTypeByte;
  }
  DL_CHECK(sp > 0, what, ": the vocabulary has no normal pieces");
  auto special_id = [&](const char* key, int64_t fallback) -> int64_t {
    const std::string k = std::string("tokenizer.ggml.") + key;
    if (!m.contains(k)) return fallback;
    const uint64_t id = m.get_uint(k);
    DL_CHECK(id < n, what, ": ", k, " ", id, " is outside the vocabulary of ", n);
    return int64_t(id);
  };
  const int64_t unk = special_id("unknown_token_id", 0), bos = special_id("bos_token_id", 1),
                eos = special_id("eos_token_id", 2), pad = special_id("padding_token_id", -1);

  std::string proto;
  for (size_t i = 0; i < sp; ++i) {
    std::string piece;
    put_bytes(piece, 1, tokens[i]);
    put_float(piece, 2, scores[i]);
    put_int(piece, 3, types[i]);
    put_bytes(proto, 1, piece);
  }
  std::string trainer;
  put_int(trainer, 3, 2);  // model_type BPE: llama.cpp's "llama" vocabularies are LLaMA's BPE SentencePiece models
  if (has_bytes) put_int(trainer, 35, 1);  // byte_fallback
  put_int(trainer, 40, unk < int64_t(sp) ? unk : 0);
  put_int(trainer, 41, bos < int64_t(sp) ? bos : -1);
  put_int(trainer, 42, eos < int64_t(sp) ? eos : -1);
  put_int(trainer, 43, pad >= 0 && pad < int64_t(sp) ? pad : -1);
  put_bytes(proto, 2, trainer);
  std::string normalizer;
  put_bytes(normalizer, 1, "identity");
  const bool dummy_prefix = !m.contains("tokenizer.ggml.add_space_prefix") || m.get_bool("tokenizer.ggml.add_space_prefix");
  put_int(normalizer, 3, dummy_prefix ? 1 : 0);
  const bool remove_ws =
      m.contains("tokenizer.ggml.remove_extra_whitespaces") && m.get_bool("tokenizer.ggml.remove_extra_whitespaces");
  put_int(normalizer, 4, remove_ws ? 1 : 0);
  put_bytes(proto, 3, normalizer);

  Files files;
  files.model = std::move(proto);
  json added = json::object(), config = json::object(), additional = json::array();
  // Padding rows llama.cpp's converter appends up to the embedding size ([PAD<n>], unused) are not tokens.
  for (size_t i = sp; i < n && types[i] != kTypeUnused; ++i) {
    added[tokens[i]] = int64_t(i);
    if (types[i] == kTypeControl) additional.push_back(tokens[i]);
  }
  auto token_at = [&](int64_t id) { return tokens[size_t(id)]; };
  config["unk_token"] = token_at(unk);
  config["bos_token"] = token_at(bos);
  config["eos_token"] = token_at(eos);
  if (pad >= 0 && (size_t(pad) < sp || added.contains(token_at(pad)))) config["pad_token"] = token_at(pad);
  if (m.contains("tokenizer.ggml.add_bos_token")) config["add_bos_token"] = m.get_bool("tokenizer.ggml.add_bos_token");
  if (m.contains("tokenizer.ggml.add_eos_token")) config["add_eos_token"] = m.get_bool("tokenizer.ggml.add_eos_token");
  if (!additional.empty()) config["additional_special_tokens"] = additional;
  // The side files are JSON, which holds only valid UTF-8 (as does a SentencePiece vocabulary).
  try {
    if (!added.empty()) files.added_tokens = added.dump();
    files.tokenizer_config = config.dump();
  } catch (const json::exception&) {
    fail(what, ": an added or special token of tokenizer.ggml.tokens is not valid UTF-8");
  }
  return files;
}

std::vector<Tokenizer::Piece> Tokenizer::sp_pieces() const {
  std::vector<Piece> out(size_t(impl_->sp_size));
  for (int32_t i = 0; i < impl_->sp_size; ++i) {
    Piece& p = out[size_t(i)];
    p.text = impl_->sp->IdToPiece(i);
    p.score = impl_->sp->GetScore(i);
    p.type = impl_->sp->IsUnknown(i)   ? kTypeUnknown
             : impl_->sp->IsControl(i) ? kTypeControl
             : impl_->sp->IsUnused(i)  ? kTypeUnused
             : impl_->sp->IsByte(i)    ? kTypeByte
                                       : kTypeNormal;
  }
  return out;
}

Tokenizer Tokenizer::load(const std::string& model_dir) {
  const fs::path dir(model_dir);
  std::error_code ec;
  if (io::is_gguf_model_path(model_dir) && fs::is_regular_file(dir, ec)) return load_gguf_tokenizer(model_dir);
  DL_CHECK(fs::is_directory(dir, ec), "tokenizer: '", model_dir, "' is not a directory");
  const fs::path model_path = dir / "tokenizer.model";
  const fs::path added_path = dir / "added_tokens.json";
  const fs::path config_path = dir / "tokenizer_config.json";
  const fs::path map_path = dir / "special_tokens_map.json";
  Files files;
  std::optional<std::string> model = read_optional(model_path);
  DL_CHECK(model, "tokenizer: missing ", model_path.string());
  files.model = std::move(*model);
  files.added_tokens = read_optional(added_path);
  files.tokenizer_config = read_optional(config_path);
  files.special_tokens_map = read_optional(map_path);
  return from_files(files, model_dir);
}

Tokenizer Tokenizer::from_files(const Files& files, const std::string& model_dir) {
  const fs::path dir(model_dir);
  const fs::path model_path = dir / "tokenizer.model";
  const fs::path added_path = dir / "added_tokens.json";
  const fs::path config_path = dir / "tokenizer_config.json";
  const fs::path map_path = dir / "special_tokens_map.json";
  auto impl = std::make_unique<Impl>();
  const std::optional<json> config_file = parse_json(files.tokenizer_config, config_path);
  const std::optional<json> map_file = parse_json(files.special_tokens_map, map_path);
  const std::optional<json> added_file = parse_json(files.added_tokens, added_path);
  const json config = config_file ? *config_file : json::object();
  DL_CHECK(config.is_object(), "tokenizer: ", config_path.string(), " is not a JSON object");
  DL_CHECK(!map_file || map_file->is_object(), "tokenizer: ", map_path.string(), " is not a JSON object");
  DL_CHECK(!added_file || added_file->is_object(), "tokenizer: ", added_path.string(),
           " is not a JSON object of token -> id");

  // LlamaTokenizer.__init__: legacy=None means True.
  impl->legacy = bool_field(config, "legacy", true, config_path);
  impl->add_bos = bool_field(config, "add_bos_token", true, config_path);
  impl->add_eos = bool_field(config, "add_eos_token", false, config_path);
  impl->clean_up_spaces = bool_field(config, "clean_up_tokenization_spaces", false, config_path);

  std::string model_bytes = files.model;
  DL_CHECK(!model_bytes.empty(), "tokenizer: ", model_path.string(), " is empty");
  if (!impl->legacy) {
    // get_spm_processor(): non-legacy loads the model with normalizer_spec.add_dummy_prefix=False, done there by
    // MergeFrom. Protobuf merges a repeated occurrence of a message field into the first, so appending
    // ModelProto.normalizer_spec (field 3) = {add_dummy_prefix (field 3) = 0} has the same effect.
    model_bytes += std::string("\x1A\x02\x18\x00", 4);
  }
  impl->sp = std::make_unique<sentencepiece::SentencePieceProcessor>();
  {
    const auto st = impl->sp->LoadFromSerializedProto(model_bytes);
    DL_CHECK(st.ok(), "tokenizer: cannot load SentencePiece model ", model_path.string(), " (", st.ToString(), ")");
  }
  impl->sp_size = impl->sp->GetPieceSize();
  DL_CHECK(impl->sp_size > 0, "tokenizer: SentencePiece model ", model_path.string(), " has no pieces");

  // _from_pretrained: specials come from tokenizer_config.json; special_tokens_map.json is merged over them only
  // when the config predates added_tokens_decoder (saved by transformers < 4.34).
  SpecialTokens& sp_tokens = impl->specials;
  const bool has_decoder = config.contains("added_tokens_decoder");
  auto take_specials = [&](const json& src, const fs::path& file, bool merge_additional) {
    for (const char* key : {"bos_token", "eos_token", "unk_token", "pad_token"}) {
      if (!src.contains(key) || src[key].is_null()) continue;
      const std::string v = token_text(src[key], file, key);
      if (std::string_view(key) == "bos_token") sp_tokens.bos = v;
      if (std::string_view(key) == "eos_token") sp_tokens.eos = v;
      if (std::string_view(key) == "unk_token") sp_tokens.unk = v;
      if (std::string_view(key) == "pad_token") sp_tokens.pad = v;
    }
    if (src.contains("additional_special_tokens") && !src["additional_special_tokens"].is_null()) {
      const json& list = src["additional_special_tokens"];
      DL_CHECK(list.is_array(), "tokenizer: ", file.string(), ": 'additional_special_tokens' is not a list");
      if (!merge_additional) sp_tokens.additional.clear();
      for (const auto& t : list) {
        std::string v = token_text(t, file, "additional_special_tokens");
        if (std::find(sp_tokens.additional.begin(), sp_tokens.additional.end(), v) == sp_tokens.additional.end())
          sp_tokens.additional.push_back(std::move(v));
      }
    }
  };
  take_specials(config, config_path, false);
  if (!has_decoder && map_file) take_specials(*map_file, map_path, true);

  std::vector<std::string> special_list = {sp_tokens.bos, sp_tokens.eos, sp_tokens.unk};
  if (sp_tokens.pad) special_list.push_back(*sp_tokens.pad);
  for (const auto& t : sp_tokens.additional) special_list.push_back(t);
  impl->all_special.insert(special_list.begin(), special_list.end());

  // Added tokens: tokenizer_config.json's added_tokens_decoder when present (transformers then ignores
  // added_tokens.json, which must agree with it here), otherwise added_tokens.json without stripping.
  auto& decoder = impl->decoder;
  const int32_t n = impl->sp_size;
  if (has_decoder) {
    const json& dec = config["added_tokens_decoder"];
    DL_CHECK(dec.is_object(), "tokenizer: ", config_path.string(), ": 'added_tokens_decoder' is not an object");
    for (auto it = dec.begin(); it != dec.end(); ++it) {
      const std::string& key = it.key();
      int32_t id = -1;
      auto [end, err] = std::from_chars(key.data(), key.data() + key.size(), id);
      DL_CHECK(err == std::errc() && end == key.data() + key.size() && id >= 0, "tokenizer: ",
               config_path.string(), ": added_tokens_decoder key '", key, "' is not a token id");
      const json& v = it.value();
      DL_CHECK(v.is_object() && v.contains("content") && v["content"].is_string(), "tokenizer: ",
               config_path.string(), ": added_tokens_decoder entry ", key, " has no string \"content\"");
      AddedToken tok;
      tok.content = v["content"].get<std::string>();
      tok.id = id;
      tok.lstrip = bool_field(v, "lstrip", false, config_path);
      tok.rstrip = bool_field(v, "rstrip", false, config_path);
      DL_CHECK(decoder.emplace(id, tok).second, "tokenizer: ", config_path.string(),
               ": added_tokens_decoder lists id ", id, " twice");
    }
  }
  if (added_file) {
    for (auto it = added_file->begin(); it != added_file->end(); ++it) {
      const std::string& content = it.key();
      DL_CHECK(it.value().is_number_integer(), "tokenizer: ", added_path.string(), ": the id of '", content,
               "' is not an integer");
      const int64_t id64 = it.value().get<int64_t>();
      DL_CHECK(id64 >= n && id64 <= INT32_MAX, "tokenizer: ", added_path.string(), ": id ", id64, " of '", content,
               "' collides with the SentencePiece vocabulary of ", n, " pieces (added ids start at ", n, ")");
      const auto id = int32_t(id64);
      if (has_decoder) {
        auto d = decoder.find(id);
        DL_CHECK(d != decoder.end() && d->second.content == content, "tokenizer: ", added_path.string(), " maps '",
                 content, "' to ", id, " but ", config_path.string(), " added_tokens_decoder ",
                 d == decoder.end() ? std::string("has no id ") + std::to_string(id)
                                    : "gives id " + std::to_string(id) + " to '" + d->second.content + "'");
      } else {
        AddedToken tok;
        tok.content = content;
        tok.id = id;
        DL_CHECK(decoder.emplace(id, tok).second, "tokenizer: ", added_path.string(), ": id ", id, " is used twice");
      }
    }
  }
  const std::string added_source = has_decoder ? config_path.string() + " added_tokens_decoder" : added_path.string();
  int32_t expect = n;
  for (const auto& [id, tok] : decoder) {
    DL_CHECK(!tok.content.empty(), "tokenizer: ", added_source, ": token ", id, " is empty");
    if (id < n) {
      // Saved tokenizers list <unk>, <s>, </s> here at their SentencePiece ids.
      DL_CHECK(impl->sp->IdToPiece(id) == tok.content, "tokenizer: ", added_source, ": id ", id, " is '",
               tok.content, "' but SentencePiece piece ", id, " is '", impl->sp->IdToPiece(id), "'");
      continue;
    }
    DL_CHECK(id == expect, "tokenizer: ", added_source, ": added ids must continue the SentencePiece vocabulary without gaps, but after ",
             expect - 1, " comes ", id, " ('", tok.content, "')");
    ++expect;
  }
  for (const auto& [id, tok] : decoder) {
    auto [it, inserted] = impl->encoder.emplace(tok.content, id);
    DL_CHECK(inserted, "tokenizer: ", added_source, ": token '", tok.content, "' has two ids, ", it->second, " and ", id);
  }
  // PreTrainedTokenizer.__init__ registers every special token as an added token too (at its SentencePiece id
  // when it has one), which is why "</s>" inside a prompt becomes id 2.
  for (const auto& t : special_list) {
    if (impl->encoder.count(t)) continue;
    const int id = impl->sp->PieceToId(t);
    DL_CHECK(id >= 0 && id < n && impl->sp->IdToPiece(id) == t, "tokenizer: special token '", t,
             "' is neither an added token nor a piece of ", model_path.string());
    AddedToken tok;
    tok.content = t;
    tok.id = id;
    decoder.emplace(id, tok);
    impl->encoder.emplace(t, id);
  }

  for (auto& [id, tok] : decoder) {
    tok.special = impl->all_special.count(tok.content) > 0;
    impl->trie.add(tok.content);
    if (id >= n) impl->appended.push_back(tok);
  }
  for (const auto& t : special_list) impl->all_special_ids.insert(impl->encoder.at(t));
  for (const auto& [content, id] : impl->encoder) {
    if (!impl->all_special.count(content)) impl->legacy_added.insert(content);
  }
  for (const auto& t : sp_tokens.additional) {
    if (impl->encoder.at(t) >= n) impl->legacy_added.insert(t);
  }
  impl->bos = impl->encoder.at(sp_tokens.bos);
  impl->eos = impl->encoder.at(sp_tokens.eos);
  impl->unk = impl->encoder.at(sp_tokens.unk);
  impl->pad = sp_tokens.pad ? impl->encoder.at(*sp_tokens.pad) : -1;
  impl->unk_token_length = impl->sp_pieces(sp_tokens.unk).size();
  return Tokenizer(std::move(impl));
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_special_tokens) const {
  std::vector<int32_t> ids;
  if (add_special_tokens && impl_->add_bos) ids.push_back(impl_->bos);
  for (const auto& t : impl_->tokenize(text)) ids.push_back(impl_->piece_id(t));
  if (add_special_tokens && impl_->add_eos) ids.push_back(impl_->eos);
  return ids;
}

std::vector<std::string> Tokenizer::tokenize(std::string_view text) const { return impl_->tokenize(text); }

std::string Tokenizer::decode(std::span<const int32_t> ids, bool skip_special_tokens) const {
  return impl_->decode(ids, skip_special_tokens);
}

int32_t Tokenizer::bos_id() const { return impl_->bos; }
int32_t Tokenizer::eos_id() const { return impl_->eos; }
int32_t Tokenizer::unk_id() const { return impl_->unk; }
int32_t Tokenizer::pad_id() const { return impl_->pad; }
int32_t Tokenizer::vocab_size() const { return impl_->sp_size + int32_t(impl_->appended.size()); }
int32_t Tokenizer::sp_vocab_size() const { return impl_->sp_size; }
bool Tokenizer::legacy() const { return impl_->legacy; }

bool Tokenizer::has_token(std::string_view token) const {
  const std::string t(token);
  if (impl_->encoder.count(t)) return true;
  const int id = impl_->sp->PieceToId(t);
  return id >= 0 && id < impl_->sp_size && impl_->sp->IdToPiece(id) == t;
}

int32_t Tokenizer::token_id(std::string_view token) const {
  DL_CHECK(has_token(token), "tokenizer: the vocabulary has no token '", token, "'");
  return impl_->piece_id(std::string(token));
}

std::string Tokenizer::id_to_piece(int32_t id) const { return impl_->id_to_token(id); }

bool Tokenizer::is_special(int32_t id) const { return impl_->all_special_ids.count(id) > 0; }

const std::vector<AddedToken>& Tokenizer::added_tokens() const { return impl_->appended; }

}  // namespace dl::text
