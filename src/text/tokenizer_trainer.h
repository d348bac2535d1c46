// Training a tokenizer for a model built from scratch: a SentencePiece BPE model with LLaMA's trainer settings
// (byte fallback, split digits, identity normalizer, dummy prefix, <unk>=0 <s>=1 </s>=2, no pad), then the HF
// tokenizer files with DreamLLM's eight added tokens after the SentencePiece vocabulary, in the original's order
// ([PAD], <im_start>, <dream_end>, <dream_start>, <im_patch>, <im_end>, <image>, <dream>).
#pragma once
#include <map>
#include <string>
#include <vector>

namespace dl::text {

// Trains on `lines` (each a sentence) and returns the serialized model (tokenizer.model bytes). The vocabulary
// must leave room for the 256 byte pieces and the three specials. Deterministic for the same lines.
std::string train_sentencepiece(const std::vector<std::string>& lines, int vocab_size);

// Writes tokenizer.model, added_tokens.json, special_tokens_map.json and tokenizer_config.json into `dir` and
// returns the ids of every special token ("<s>", "</s>", "<unk>", "[PAD]" and the seven additional ones), the
// LLM vocabulary being the SentencePiece size + 8.
std::map<std::string, int64_t> write_tokenizer_files(const std::string& dir, const std::string& sentencepiece_model,
                                                     int64_t model_max_length);

}  // namespace dl::text
