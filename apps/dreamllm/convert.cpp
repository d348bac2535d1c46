// `dreamllm convert`: a model directory in the release layout -> NAME.gguf (the LLM as a llama.cpp LLaMA file) and
// NAME.mmproj.gguf (everything else, configs and tokenizer files included). docs/gguf.md describes both files.

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>

#include "cli_common.h"
#include "core/error.h"
#include "core/thread_pool.h"
#include "io/gguf.h"
#include "io/gguf_model.h"
#include "output_check.h"

namespace dl::app {

namespace {

// Converts a tensor to `to` over the thread pool, row by row through F32 (the block formats quantize rows).
Tensor convert_tensor(const Tensor& src_in, DType to) {
  const Tensor src = src_in.contiguous();
  if (src.dtype() == to) return src;
  Tensor out = Tensor::uninitialized(src.shape(), to);
  const int64_t row = src.dim() == 0 ? 1 : src.size(-1);
  const int64_t rows = row ? src.numel() / row : 0;
  const DType from = src.dtype();
  const char* s = static_cast<const char*>(src.raw());
  char* d = static_cast<char*>(out.raw());
  parallel_for(rows, 8, [&](int64_t r0, int64_t r1) {
    std::vector<float> tmp(static_cast<size_t>(row));
    for (int64_t r = r0; r < r1; ++r) {
      convert_to_f32(from, s + dtype_bytes(from, r * row), tmp.data(), row);
      convert_from_f32(to, tmp.data(), d + dtype_bytes(to, r * row), row);
    }
  });
  return out;
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// Drops the pages of a mapped source tensor once it is converted: each is read once, and without this the whole
// model would stay resident (as reclaimable page cache, but counted in the process's memory) until the end.
void release_source(const Tensor& t) { release_mapped_pages(t); }

std::string base_name(const std::string& path) {
  std::filesystem::path p(path);
  if (!p.has_filename()) p = p.parent_path();  // "dir/"
  return p.filename().string();
}

// The LLM file's metadata: llama.cpp's keys (gguf-py constants.py) for a LLaMA model and its SentencePiece vocabulary.
io::GgufMetadata llm_metadata(const io::ModelDir& dir, const text::Tokenizer& tok, const std::string& type,
                              const std::string& name) {
  const io::LlamaConfig& c = dir.config().llm;
  const int64_t kv = c.num_key_value_heads ? c.num_key_value_heads : c.num_attention_heads;
  io::GgufMetadata m;
  m.add("general.architecture", "llama");
  m.add("general.name", name);
  m.add("general.file_type", io::llama_file_type(type));
  if (type != "f32" && type != "f16" && type != "bf16") m.add("general.quantization_version", uint32_t(2));
  m.add("llama.vocab_size", uint32_t(c.vocab_size));
  m.add("llama.context_length", uint32_t(c.max_position_embeddings));
  m.add("llama.embedding_length", uint32_t(c.hidden_size));
  m.add("llama.block_count", uint32_t(c.num_hidden_layers));
  m.add("llama.feed_forward_length", uint32_t(c.intermediate_size));
  m.add("llama.attention.head_count", uint32_t(c.num_attention_heads));
  m.add("llama.attention.head_count_kv", uint32_t(kv));
  m.add("llama.attention.layer_norm_rms_epsilon", c.rms_norm_eps);
  m.add("llama.rope.freq_base", c.rope_theta);
  m.add("llama.rope.dimension_count", uint32_t(c.head_dim()));

  // Vocabulary as convert_hf_to_gguf.py writes a SentencePiece one: the pieces with their scores and types, then
  // the added tokens (control when transformers counts them special, user-defined otherwise, score -1000), then
  // unused [PAD<i>] rows up to the embedding's size.
  std::vector<std::string> tokens;
  std::vector<float> scores;
  std::vector<int32_t> types;
  for (const auto& p : tok.sp_pieces()) {
    tokens.push_back(p.text);
    scores.push_back(p.score);
    types.push_back(p.type);
  }
  for (const text::AddedToken& a : tok.added_tokens()) {
    DL_CHECK(a.id == int32_t(tokens.size()), "added token '", a.content, "' has id ", a.id, ", expected ",
             tokens.size());
    tokens.push_back(a.content);
    scores.push_back(-1000.f);
    types.push_back(a.special ? 3 : 4);
  }
  DL_CHECK(int64_t(tokens.size()) <= c.vocab_size, "the tokenizer has ", tokens.size(),
           " tokens but the model's vocabulary only ", c.vocab_size);
  while (int64_t(tokens.size()) < c.vocab_size) {
    tokens.push_back("[PAD" + std::to_string(tokens.size()) + "]");
    scores.push_back(-1000.f);
    types.push_back(5);
  }
  m.add("tokenizer.ggml.model", "llama");
  m.add("tokenizer.ggml.tokens", std::move(tokens));
  m.add("tokenizer.ggml.scores", std::move(scores));
  m.add("tokenizer.ggml.token_type", std::move(types));
  m.add("tokenizer.ggml.bos_token_id", uint32_t(tok.bos_id()));
  m.add("tokenizer.ggml.eos_token_id", uint32_t(tok.eos_id()));
  m.add("tokenizer.ggml.unknown_token_id", uint32_t(tok.unk_id()));
  if (tok.pad_id() >= 0) m.add("tokenizer.ggml.padding_token_id", uint32_t(tok.pad_id()));
  // Whether encoding adds BOS/EOS, read off the tokenizer itself (an empty text encodes to just those).
  const std::vector<int32_t> empty = tok.encode("", true);
  m.add("tokenizer.ggml.add_bos_token", !empty.empty() && empty.front() == tok.bos_id());
  m.add("tokenizer.ggml.add_eos_token", !empty.empty() && empty.back() == tok.eos_id() &&
                                            (empty.size() == 2 || tok.bos_id() != tok.eos_id()));
  m.add("tokenizer.ggml.add_space_prefix", true);
  return m;
}

}  // namespace

int convert_main(int argc, char** argv) {
  CLI::App app("Convert a DreamLLM model directory to GGUF: NAME.gguf holds the LLM as a llama.cpp LLaMA model, "
               "NAME.mmproj.gguf beside it the vision tower, dream queries, diffusion head, configs and tokenizer "
               "files. -m NAME.gguf then runs every command.",
               "convert");
  std::string model, out, type = "f16", diffusion_type;
  int threads = 0;
  app.add_option("-m,--model", model, "model directory (official DreamLLM release layout)")->required();
  app.add_option("-o,--output", out, "the LLM file to write, NAME.gguf (the companion is NAME.mmproj.gguf)")
      ->required();
  app.add_option("--type", type, "LLM weight type: f32, f16, bf16, q8_0, q4_0, q4_k, q6_k, q4_k_m, q8_mix")
      ->check(CLI::IsMember(io::llm_type_names()));
  app.add_option("--diffusion-type", diffusion_type,
                 "type of the companion's matrices and convolutions: f32, f16, bf16 (default f16; f32 with --type "
                 "f32)")
      ->check(CLI::IsMember({"f32", "f16", "bf16"}));
  app.add_option("-t,--threads", threads, "threads (default: all cores)")->check(kNonNegativeNumber);
  if (auto code = parse_or_exit(app, argc, argv)) return *code;
  if (!io::is_gguf_model_path(out)) {
    std::fprintf(stderr, "dreamllm convert: the output '%s' must end in .gguf\n", out.c_str());
    return 2;
  }
  set_num_threads(threads);
  // A file-size limit is a full disk for the writer: a failed write and a message, not death by SIGXFSZ.
  std::signal(SIGXFSZ, SIG_IGN);
  const std::string companion = io::companion_path(out);
  if (diffusion_type.empty()) diffusion_type = type == "f32" ? "f32" : "f16";
  const DType companion_type = parse_dtype(diffusion_type);

  InputFiles inputs;
  inputs.add_tree(model);
  inputs.check_outputs({out, companion});
  const io::ModelDir dir = open_model_dir(model);
  DL_CHECK(!dir.gguf(), "'", model, "' is already a converted model; convert reads a model directory");
  DL_CHECK(dir.has(io::kLLM), "'", model, "' has no LLM weights to convert");
  // Every source tensor is read once: map the files instead of copying large ones into memory first.
  ::setenv("DREAMLLM_MMAP", "1", 1);
  const text::Tokenizer tok = text::Tokenizer::load(model);
  const io::LlamaConfig& c = dir.config().llm;
  const int64_t kv = c.num_key_value_heads ? c.num_key_value_heads : c.num_attention_heads;

  // Type policy for every tensor first, so a missing block format fails before anything is written.
  const io::StateDict llm = dir.load(io::kLLM);
  std::vector<io::GgufTensorPlan> plan;
  std::vector<std::string> sources;
  for (const auto& [name, shape] : dir.expected(io::kLLM)) {
    const std::optional<std::string> gg = io::llama_cpp_tensor_name(name);
    DL_CHECK(gg, "no llama.cpp name for tensor '", name, "'");
    const io::TensorTypeChoice t = io::llm_tensor_type(type, *gg, shape, c.num_hidden_layers);
    if (!t.note.empty()) std::printf("note: %s\n", t.note.c_str());
    plan.push_back({*gg, t.dtype, shape});
    sources.push_back(name);
  }
  const std::string name = base_name(model);

  // The companion: every other component present, under its state-dict name, plus the files that make the
  // directory's configs and tokenizer exactly.
  io::GgufMetadata m;
  m.add("general.architecture", io::kCompanionArchitecture);
  m.add("general.name", name);
  m.add("general.description", std::string("DreamLLM vision tower, dream queries and diffusion head; the LLM is ") +
                                   std::filesystem::path(out).filename().string());
  for (const char* rel : {"config.json", "clip_vision/config.json", "unet/config.json", "vae/config.json",
                          "scheduler/scheduler_config.json", "preprocessor_config.json", "added_tokens.json",
                          "special_tokens_map.json", "tokenizer_config.json"}) {
    const std::string p = model + "/" + rel;
    std::error_code ec;
    if (std::filesystem::exists(p, ec)) m.add(std::string(io::kEmbeddedFilePrefix) + rel, io::read_text_file(p));
  }
  {
    const std::string bytes = io::read_text_file(model + "/tokenizer.model");
    m.add(std::string(io::kEmbeddedFilePrefix) + "tokenizer.model", std::vector<uint8_t>(bytes.begin(), bytes.end()));
  }
  unsigned mask = 0;
  for (io::Component k : {io::kClip, io::kDream, io::kDiffusion})
    if (dir.has(k)) mask |= k;
  if (!(mask & io::kDiffusion) && dir.has(io::kConditionProjector)) mask |= io::kConditionProjector;
  const io::StateDict rest = mask ? dir.load(mask) : io::StateDict();
  std::vector<io::GgufTensorPlan> cplan;
  for (io::Component k : {io::kClip, io::kDream, io::kDiffusion, io::kConditionProjector}) {
    if (!(mask & k)) continue;
    for (const auto& [tname, shape] : dir.expected(k))
      cplan.push_back({tname, shape.size() < 2 ? DType::F32 : companion_type, shape});
  }
  std::printf("writing %s (%zu tensors, %s)\n", companion.c_str(), cplan.size(), diffusion_type.c_str());
  std::fflush(stdout);
  io::write_gguf_streaming(companion, m, cplan,
                           [&](size_t i) {
                             // The previous tensor has been written by now.
                             if (i > 0) release_source(rest.at(cplan[i - 1].name));
                             return convert_tensor(rest.at(cplan[i].name), cplan[i].dtype);
                           });

  std::printf("writing %s (%zu tensors, %s)\n", out.c_str(), plan.size(), type.c_str());
  std::fflush(stdout);
  // The LLM file last: should it fail (a full disk), the companion just written goes too, so no half pair is left.
  try {
    io::write_gguf_streaming(out, llm_metadata(dir, tok, type, name), plan, [&](size_t i) {
      if (i > 0) release_source(llm.at(sources[i - 1]));  // written by now
      Tensor t = llm.at(sources[i]);
      const std::string& gg = plan[i].name;
      if (ends_with(gg, ".attn_q.weight")) t = io::permute_qk_rows(t, c.num_attention_heads, true);
      if (ends_with(gg, ".attn_k.weight")) t = io::permute_qk_rows(t, kv, true);
      return convert_tensor(t, plan[i].dtype);
    });
  } catch (...) {
    std::error_code ec;
    std::filesystem::remove(companion, ec);
    throw;
  }
  return 0;
}

}  // namespace dl::app
