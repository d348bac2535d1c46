// DreamLLM tokenizer: the HF *slow* LlamaTokenizer of transformers 4.35 (SentencePiece + added tokens), which every
// DreamLLM script uses. Token ids must match it exactly, so its quirks are reproduced, not cleaned up:
//  - the text is cut on added tokens (and on "<s>", "</s>", "<unk>", which 4.35 also registers as added tokens)
//    with transformers' Trie; each remaining chunk is SentencePiece-encoded on its own, so with legacy=true (the
//    default) every chunk gets SentencePiece's dummy-prefix "▁", also right after a special token;
//  - spaces next to an added token stay in the neighbouring chunk unless that token has lstrip/rstrip;
//  - legacy=false (tokenizer_config.json "legacy": false) follows 4.35's non-legacy path instead;
//  - decode() follows 4.35's slow _decode, including the spaces it puts around added tokens.
#pragma once
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace dl::io {
class GgufMetadata;
}

namespace dl::text {

// Strings of the tokens that DreamLLM adds to the LLaMA vocabulary (omni/constants.py).
inline constexpr std::string_view kPadToken = "[PAD]";
inline constexpr std::string_view kImageToken = "<image>";  // conversation-JSON placeholder only
inline constexpr std::string_view kImageStartToken = "<im_start>";
inline constexpr std::string_view kImageEndToken = "<im_end>";
inline constexpr std::string_view kImagePatchToken = "<im_patch>";  // fills both image and dream spans
inline constexpr std::string_view kDreamToken = "<dream>";          // conversation-JSON placeholder only
inline constexpr std::string_view kDreamStartToken = "<dream_start>";
inline constexpr std::string_view kDreamEndToken = "<dream_end>";

struct AddedToken {
  std::string content;
  int32_t id = 0;
  bool lstrip = false;  // swallows the whitespace before it (transformers AddedToken.lstrip)
  bool rstrip = false;  // swallows the whitespace after it
  bool special = false;
};

class Tokenizer {
 public:
  // Reads <dir>/tokenizer.model and, when present, added_tokens.json, tokenizer_config.json and
  // special_tokens_map.json, resolved the way transformers 4.35 from_pretrained does. Throws dl::Error naming the
  // file and the problem.
  // `model_dir` may also be a converted model's NAME.gguf: the tokenizer files embedded in its companion
  // (NAME.mmproj.gguf) are read, or, for a llama.cpp GGUF without one, the vocabulary in tokenizer.ggml.*.
  static Tokenizer load(const std::string& model_dir);
  // The same from file contents already in memory (the fuzzer's entry point): the tokenizer.model bytes and each
  // side file's text, std::nullopt for an absent one. `model_dir` only names the files in errors.
  struct Files {
    std::string model;
    std::optional<std::string> added_tokens, tokenizer_config, special_tokens_map;
  };
  static Tokenizer from_files(const Files& files, const std::string& model_dir);
  // The files of a llama.cpp SentencePiece vocabulary (tokenizer.ggml.model "llama": tokens, scores, token_type,
  // special ids): a SentencePiece model written from the pieces before the first added token, the tokens after it
  // as added tokens (control ones special), the special ids as tokenizer_config.json. `metadata_of` looks a key
  // `what` names the file in errors.
  static Files files_from_llama_cpp_vocab(const io::GgufMetadata& metadata, const std::string& what);

  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;
  ~Tokenizer();

  // tokenizer(text).input_ids: with add_special_tokens, BOS first when add_bos_token (default true) and EOS last
  // when add_eos_token (default false).
  std::vector<int32_t> encode(std::string_view text, bool add_special_tokens = true) const;
  // tokenizer.tokenize(text): SentencePiece pieces and added-token strings, without BOS/EOS.
  std::vector<std::string> tokenize(std::string_view text) const;
  // tokenizer.decode(ids, skip_special_tokens=...). Ids outside the vocabulary throw.
  std::string decode(std::span<const int32_t> ids, bool skip_special_tokens = true) const;

  int32_t bos_id() const;
  int32_t eos_id() const;
  int32_t unk_id() const;
  int32_t pad_id() const;  // -1 when no pad token is configured
  int32_t vocab_size() const;     // SentencePiece pieces + added tokens, len(tokenizer) (32008 for the release)
  int32_t sp_vocab_size() const;  // SentencePiece pieces only (32000)
  bool legacy() const;

  // Id of an added token or SentencePiece piece; throws naming the token when the vocabulary lacks it.
  int32_t token_id(std::string_view token) const;
  bool has_token(std::string_view token) const;
  // Piece or added-token string of an id; throws when out of range.
  std::string id_to_piece(int32_t id) const;
  // Whether transformers counts the id among all_special_ids (dropped by skip_special_tokens).
  bool is_special(int32_t id) const;
  // The tokens appended after the SentencePiece vocabulary, by id.
  const std::vector<AddedToken>& added_tokens() const;
  // The SentencePiece pieces with their scores and types as llama.cpp's token_type numbers them (1 normal,
  // 2 unknown, 3 control, 5 unused, 6 byte; SentencePiece's own enum has the same values).
  struct Piece {
    std::string text;
    float score = 0;
    int32_t type = 1;
  };
  std::vector<Piece> sp_pieces() const;

 private:
  struct Impl;
  explicit Tokenizer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace dl::text
