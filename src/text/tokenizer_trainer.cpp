#include "text/tokenizer_trainer.h"

#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include <nlohmann/json.hpp>
#include <unordered_map>

#include "core/error.h"
#include "io/atomic_file.h"

namespace dl::text {

namespace {

class LineIterator : public sentencepiece::SentenceIterator {
 public:
  explicit LineIterator(const std::vector<std::string>& lines) : lines_(lines) {}
  bool done() const override { return i_ >= lines_.size(); }
  void Next() override { ++i_; }
  const std::string& value() const override { return lines_[i_]; }
  sentencepiece::util::Status status() const override { return {}; }

 private:
  const std::vector<std::string>& lines_;
  size_t i_ = 0;
};

void write_json(const std::string& path, const nlohmann::json& j) {
  io::write_file_atomically(path, [&](std::ostream& f) { f << j.dump(1) << "\n"; });
}

}  // namespace

std::string train_sentencepiece(const std::vector<std::string>& lines, int vocab_size) {
  DL_CHECK(!lines.empty(), "tokenizer training: no text");
  DL_CHECK(vocab_size >= 260 && vocab_size <= 1000000, "tokenizer training: vocabulary size ", vocab_size,
           " must hold the 256 byte pieces and the specials (>= 260)");
  const std::unordered_map<std::string, std::string> args = {
      {"model_type", "bpe"},
      {"vocab_size", std::to_string(vocab_size)},
      {"byte_fallback", "true"},
      {"split_digits", "true"},
      {"allow_whitespace_only_pieces", "true"},
      {"remove_extra_whitespaces", "false"},
      {"add_dummy_prefix", "true"},
      {"normalization_rule_name", "identity"},
      {"character_coverage", "1.0"},
      {"max_sentencepiece_length", "16"},
      {"unk_id", "0"},
      {"bos_id", "1"},
      {"eos_id", "2"},
      {"pad_id", "-1"},
      {"num_threads", "1"},  // deterministic
      {"shuffle_input_sentence", "false"},
      {"minloglevel", "2"},
  };
  LineIterator it(lines);
  std::string model;
  const auto status = sentencepiece::SentencePieceTrainer::Train(args, &it, &model);
  DL_CHECK(status.ok(), "tokenizer training failed: ", status.ToString());
  return model;
}

std::map<std::string, int64_t> write_tokenizer_files(const std::string& dir, const std::string& model,
                                                     int64_t model_max_length) {
  sentencepiece::SentencePieceProcessor sp;
  const auto status = sp.LoadFromSerializedProto(model);
  DL_CHECK(status.ok(), "tokenizer: the SentencePiece model does not load: ", status.ToString());
  const int64_t base = sp.GetPieceSize();
  io::write_file_atomically(dir + "/tokenizer.model", [&](std::ostream& f) { f << model; });
  const std::vector<std::string> added = {"[PAD]",    "<im_start>", "<dream_end>", "<dream_start>",
                                          "<im_patch>", "<im_end>",   "<image>",     "<dream>"};
  std::map<std::string, int64_t> ids = {{"<unk>", 0}, {"<s>", 1}, {"</s>", 2}};
  nlohmann::json added_json = nlohmann::json::object(), decoder = nlohmann::json::object();
  auto token = [](const std::string& content) {
    return nlohmann::json{{"content", content}, {"lstrip", false}, {"normalized", false},
                          {"rstrip", false},    {"single_word", false}, {"special", true}};
  };
  for (const auto& [name, id] : ids) decoder[std::to_string(id)] = token(name);
  for (size_t i = 0; i < added.size(); ++i) {
    const int64_t id = base + int64_t(i);
    ids[added[i]] = id;
    added_json[added[i]] = id;
    decoder[std::to_string(id)] = token(added[i]);
  }
  const nlohmann::json additional = {"<image>", "<im_patch>", "<im_start>", "<im_end>",
                                     "<dream>", "<dream_start>", "<dream_end>"};
  write_json(dir + "/added_tokens.json", added_json);
  auto named = [](const char* s) {
    return nlohmann::json{{"content", s}, {"lstrip", false}, {"normalized", false}, {"rstrip", false},
                          {"single_word", false}};
  };
  write_json(dir + "/special_tokens_map.json", {{"additional_special_tokens", additional},
                                                {"bos_token", named("<s>")},
                                                {"eos_token", named("</s>")},
                                                {"pad_token", "[PAD]"},
                                                {"unk_token", named("<unk>")}});
  write_json(dir + "/tokenizer_config.json", {{"add_bos_token", true},
                                              {"add_eos_token", false},
                                              {"added_tokens_decoder", decoder},
                                              {"additional_special_tokens", additional},
                                              {"bos_token", "<s>"},
                                              {"clean_up_tokenization_spaces", false},
                                              {"eos_token", "</s>"},
                                              {"legacy", true},
                                              {"model_max_length", model_max_length},
                                              {"pad_token", "[PAD]"},
                                              {"padding_side", "right"},
                                              {"sp_model_kwargs", nlohmann::json::object()},
                                              {"tokenizer_class", "LlamaTokenizer"},
                                              {"unk_token", "<unk>"}});
  return ids;
}

}  // namespace dl::text
