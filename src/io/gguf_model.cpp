#include "io/gguf_model.h"

#include <sys/stat.h>

#include <cctype>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <set>

#include "core/error.h"
#include "io/image.h"
#include "io/model_dir.h"

namespace dl::io {

namespace {

bool starts_with(const std::string& s, const std::string& prefix) { return s.rfind(prefix, 0) == 0; }

// Per-layer tensors: Hugging Face suffix after "model.layers.N." and llama.cpp's after "blk.N.".
struct LayerName {
  const char* hf;
  const char* gguf;
};
constexpr LayerName kLayerNames[] = {
    {"input_layernorm.weight", "attn_norm.weight"},
    {"self_attn.q_proj.weight", "attn_q.weight"},
    {"self_attn.k_proj.weight", "attn_k.weight"},
    {"self_attn.v_proj.weight", "attn_v.weight"},
    {"self_attn.o_proj.weight", "attn_output.weight"},
    {"post_attention_layernorm.weight", "ffn_norm.weight"},
    {"mlp.gate_proj.weight", "ffn_gate.weight"},
    {"mlp.up_proj.weight", "ffn_up.weight"},
    {"mlp.down_proj.weight", "ffn_down.weight"},
};
constexpr std::pair<const char*, const char*> kGlobalNames[] = {
    {"model.embed_tokens.weight", "token_embd.weight"},
    {"model.norm.weight", "output_norm.weight"},
    {"lm_head.weight", "output.weight"},
};

// "<prefix><digits>.<rest>" -> (layer, rest).
std::optional<std::pair<std::string, std::string>> split_layer(const std::string& name, const std::string& prefix) {
  if (!starts_with(name, prefix)) return std::nullopt;
  size_t i = prefix.size(), j = i;
  while (j < name.size() && std::isdigit(static_cast<unsigned char>(name[j]))) ++j;
  if (j == i || j >= name.size() || name[j] != '.' || (name[i] == '0' && j - i > 1)) return std::nullopt;
  return std::make_pair(name.substr(i, j - i), name.substr(j + 1));
}

uint64_t require_uint(const GgufMetadata& m, const std::string& key, const std::string& what) {
  DL_CHECK(m.contains(key), what, ": metadata key '", key, "' is missing (a llama.cpp LLaMA file has it)");
  return m.get_uint(key);
}

float require_f32(const GgufMetadata& m, const std::string& key, const std::string& what, float fallback) {
  if (!m.contains(key)) return fallback;
  const GgufValue& v = m.at(key);
  if (const float* f = v.get_if<float>()) return *f;
  if (const double* d = v.get_if<double>()) return float(*d);
  fail(what, ": metadata key '", key, "' is ", v.type_name(), ", expected f32");
}

std::string architecture_of(const GgufFile& f, const std::string& what) {
  DL_CHECK(f.metadata.contains("general.architecture"), what, ": no general.architecture in the metadata");
  const GgufValue& v = f.metadata.at("general.architecture");
  const std::string* s = v.get_if<std::string>();
  DL_CHECK(s, what, ": general.architecture is ", v.type_name(), ", not a string");
  return *s;
}

bool file_exists(const std::string& p) {
  struct stat st {};
  return ::stat(p.c_str(), &st) == 0 || (errno != ENOENT && errno != ENOTDIR);
}

// Model tensors must be floating point (quantized included): an integer tensor where a weight belongs is a damaged
// or foreign file, refused by name before any model reads it.
void check_float(const GgufFile& f, const std::string& what) {
  for (const GgufTensorInfo& info : f.tensor_infos)
    DL_CHECK(dtype_info(info.dtype).is_float, what, ": tensor '", info.name, "' has type ",
             ggml_type_name(info.ggml_type), ", not a weight type");
}

}  // namespace

bool is_gguf_model_path(const std::string& path) {
  if (path.size() < 5) return false;
  std::string tail = path.substr(path.size() - 5);
  for (char& c : tail) c = char(std::tolower(static_cast<unsigned char>(c)));
  return tail == ".gguf";
}

std::string companion_path(const std::string& llm_path) {
  std::string stem = llm_path;
  if (is_gguf_model_path(stem)) stem.resize(stem.size() - 5);
  stem.append(".mmproj.gguf");
  return stem;
}

std::optional<std::string> llama_cpp_tensor_name(const std::string& hf_name) {
  for (const auto& [hf, gg] : kGlobalNames)
    if (hf_name == hf) return std::string(gg);
  if (auto l = split_layer(hf_name, "model.layers.")) {
    for (const LayerName& n : kLayerNames)
      if (l->second == n.hf) return "blk." + l->first + "." + n.gguf;
  }
  return std::nullopt;
}

std::optional<std::string> hf_tensor_name(const std::string& llama_cpp_name) {
  for (const auto& [hf, gg] : kGlobalNames)
    if (llama_cpp_name == gg) return std::string(hf);
  if (auto l = split_layer(llama_cpp_name, "blk.")) {
    for (const LayerName& n : kLayerNames)
      if (l->second == n.gguf) return "model.layers." + l->first + "." + n.hf;
  }
  return std::nullopt;
}

Tensor permute_qk_rows(const Tensor& w_in, int64_t heads, bool to_gguf) {
  DL_CHECK(w_in.dim() == 2, "q/k row permutation: weight must be 2-D, got ", w_in.describe());
  const int64_t rows = w_in.size(0), cols = w_in.size(1);
  DL_CHECK(heads > 0 && rows % heads == 0 && (rows / heads) % 2 == 0, "q/k row permutation: ", rows,
           " rows do not split into ", heads, " heads of even size");
  const Tensor w = w_in.contiguous();
  const int64_t d = rows / heads, half = d / 2;
  const size_t row_bytes = dtype_bytes(w.dtype(), cols);
  Tensor out = Tensor::uninitialized(w.shape(), w.dtype());
  const char* src = static_cast<const char*>(w.raw());
  char* dst = static_cast<char*>(out.raw());
  for (int64_t h = 0; h < heads; ++h)
    for (int64_t i = 0; i < half; ++i)
      for (int64_t j = 0; j < 2; ++j) {
        const int64_t g = h * d + 2 * i + j, f = h * d + j * half + i;  // GGUF row g holds HF row f
        const int64_t from = to_gguf ? f : g, to = to_gguf ? g : f;
        std::memcpy(dst + size_t(to) * row_bytes, src + size_t(from) * row_bytes, row_bytes);
      }
  return out;
}

std::optional<std::string> GgufModel::embedded(const std::string& rel) const {
  if (!companion) return std::nullopt;
  const GgufValue* v = companion->metadata.find(kEmbeddedFilePrefix + rel);
  if (!v) return std::nullopt;
  if (const std::string* s = v->get_if<std::string>()) return *s;
  if (const auto* b = v->get_if<std::vector<uint8_t>>()) return std::string(b->begin(), b->end());
  fail("'", companion_path, "': embedded file '", rel, "' is ", v->type_name(), ", expected a string or bytes");
}

std::vector<std::string> GgufModel::embedded_files() const {
  std::vector<std::string> out;
  if (!companion) return out;
  const std::string prefix = kEmbeddedFilePrefix;
  for (const auto& [key, v] : companion->metadata.entries())
    if (starts_with(key, prefix) && key.size() > prefix.size()) out.push_back(key.substr(prefix.size()));
  return out;
}

bool GgufModel::companion_has(const std::string& prefix) const {
  if (!companion) return false;
  for (const GgufTensorInfo& info : companion->tensor_infos)
    if (starts_with(info.name, prefix)) return true;
  return false;
}

std::shared_ptr<const GgufModel> gguf_model_from(GgufFile llm, std::optional<GgufFile> companion,
                                                 const std::string& path, const std::string& cpath) {
  auto m = std::make_shared<GgufModel>();
  m->path = path;
  const std::string what = "'" + path + "'";
  m->llm = std::move(llm);
  const std::string arch = architecture_of(m->llm, what);
  DL_CHECK(arch == "llama", what, ": architecture '", arch, "' is not supported (this engine runs LLaMA models: ",
           "general.architecture must be \"llama\")");
  check_float(m->llm, what);
  if (companion) {
    const std::string cwhat = "'" + cpath + "'";
    m->companion_path = cpath;
    m->companion = std::move(companion);
    const std::string carch = architecture_of(*m->companion, cwhat);
    DL_CHECK(carch == kCompanionArchitecture, cwhat, ": architecture '", carch, "' is not '", kCompanionArchitecture,
             "' (the companion of ", what, " must come from dreamllm convert)");
    check_float(*m->companion, cwhat);
    DL_CHECK(m->embedded("config.json"), cwhat, ": no embedded config.json (metadata key '", kEmbeddedFilePrefix,
             "config.json')");
  }
  return m;
}

namespace {

// Mapped by default: the tensors are used where they lie in the page cache (an instant start, memory shared with
// other processes reading the model, and pages a command never touches, such as the vision tower during text chat,
// never read). DREAMLLM_MMAP=0 copies a large file into huge-page memory instead, as model directories' weight
// files are (Storage::read_weights_file); docs/benchmarks.md compares the two for decoding.
std::shared_ptr<Storage> gguf_storage(const std::string& path) {
  const char* mode = std::getenv("DREAMLLM_MMAP");
  return mode && std::strcmp(mode, "0") == 0 ? Storage::read_weights_file(path) : Storage::map_file(path);
}

}  // namespace

std::shared_ptr<const GgufModel> open_gguf_model(const std::string& path) {
  GgufFile llm = parse_gguf(gguf_storage(path), "'" + path + "'");
  const std::string cpath = companion_path(path);
  std::optional<GgufFile> companion;
  if (file_exists(cpath)) companion = parse_gguf(gguf_storage(cpath), "'" + cpath + "'");
  return gguf_model_from(std::move(llm), std::move(companion), path, cpath);
}

LlamaConfig llama_config_from_gguf(const GgufFile& f, const std::string& what) {
  const GgufMetadata& m = f.metadata;
  LlamaConfig c;
  c.hidden_size = int64_t(require_uint(m, "llama.embedding_length", what));
  c.intermediate_size = int64_t(require_uint(m, "llama.feed_forward_length", what));
  c.num_hidden_layers = int64_t(require_uint(m, "llama.block_count", what));
  c.num_attention_heads = int64_t(require_uint(m, "llama.attention.head_count", what));
  c.num_key_value_heads = int64_t(m.get_uint("llama.attention.head_count_kv", uint64_t(c.num_attention_heads)));
  c.max_position_embeddings = int64_t(m.get_uint("llama.context_length", 2048));
  c.rms_norm_eps = require_f32(m, "llama.attention.layer_norm_rms_epsilon", what, 1e-6f);
  c.rope_theta = require_f32(m, "llama.rope.freq_base", what, 10000.f);
  auto it = f.tensors.find("token_embd.weight");
  DL_CHECK(it != f.tensors.end(), what, ": no tensor 'token_embd.weight'");
  DL_CHECK(it->second.dim() == 2, what, ": tensor 'token_embd.weight' is ", it->second.describe(), ", not 2-D");
  c.vocab_size = it->second.size(0);
  c.tie_word_embeddings = f.tensors.count("output.weight") == 0;
  DL_CHECK(c.num_attention_heads > 0 && c.num_key_value_heads > 0 && c.hidden_size % c.num_attention_heads == 0 &&
               c.num_attention_heads % c.num_key_value_heads == 0,
           what, ": ", c.num_attention_heads, " heads (", c.num_key_value_heads, " for keys and values) do not divide ",
           "the width ", c.hidden_size);
  if (m.contains("llama.rope.dimension_count")) {
    const uint64_t rd = m.get_uint("llama.rope.dimension_count");
    DL_CHECK(int64_t(rd) == c.head_dim(), what, ": llama.rope.dimension_count ", rd, " is not the head size ",
             c.head_dim(), " (partial rotary embeddings are not supported)");
  }
  return c;
}

// ---- type policy ----

const std::vector<std::string>& llm_type_names() {
  static const std::vector<std::string> names = {"f32", "f16", "bf16", "q8_0", "q4_0", "q4_k", "q6_k", "q4_k_m",
                                                 "q8_mix"};
  return names;
}

uint32_t llama_file_type(const std::string& type) {
  // llama.h enum llama_ftype.
  if (type == "f32") return 0;
  if (type == "f16") return 1;
  if (type == "q4_0") return 2;
  if (type == "q8_0" || type == "q8_mix") return 7;
  if (type == "q4_k") return 14;  // MOSTLY_Q4_K_S: Q4_K throughout
  if (type == "q4_k_m") return 15;
  if (type == "q6_k") return 18;
  if (type == "bf16") return 32;
  fail("unknown model type '", type, "'");
}

namespace {

// Block types by name at run time, so a build whose dtype table lacks one names it instead of failing to compile.
DType block_type(const char* name, const std::string& asked) {
  try {
    return parse_dtype(name);
  } catch (const Error&) {
    fail("--type ", asked, " needs the ", name, " block format, which this build does not have");
  }
}

// llama.cpp's use_more_bits: the first and last eighth of the layers and every third one between get more bits.
bool use_more_bits(int64_t i, int64_t n) { return i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2; }

}  // namespace

TensorTypeChoice llm_tensor_type(const std::string& type, const std::string& name, const Shape& shape,
                                 int64_t n_layers) {
  TensorTypeChoice c;
  if (shape.size() < 2) return c;  // norms (and any other vector): F32, as llama-quantize keeps them
  DType want;
  if (type == "f32") want = DType::F32;
  else if (type == "f16") want = DType::F16;
  else if (type == "bf16") want = DType::BF16;
  else if (type == "q8_0") want = DType::Q8_0;
  else if (type == "q4_0") want = DType::Q4_0;
  else if (type == "q4_k") want = block_type("Q4_K", type);
  else if (type == "q6_k") want = block_type("Q6_K", type);
  else if (type == "q8_mix") want = (name == "token_embd.weight" || name == "output.weight") ? DType::F16 : DType::Q8_0;
  else if (type == "q4_k_m") {
    want = block_type("Q4_K", type);
    const auto layer = split_layer(name, "blk.");
    const bool bumped = name == "output.weight" ||
                        (layer && (layer->second == "attn_v.weight" || layer->second == "ffn_down.weight") &&
                         use_more_bits(std::stoll(layer->first), n_layers));
    if (bumped) want = block_type("Q6_K", type);
  } else {
    fail("unknown model type '", type, "'");
  }
  const int64_t row = shape.back();
  c.dtype = want;
  auto fits = [row](DType t) { return row % int64_t(dtype_info(t).block_elems) == 0; };
  if (fits(want)) return c;
  const DType fallback = dtype_info(want).block_elems > 32 && fits(DType::Q8_0) ? DType::Q8_0 : DType::F16;
  c.dtype = fallback;
  c.note = detail::concat(name, ": rows of ", row, " are not a multiple of ", dtype_name(want), "'s ",
                          dtype_info(want).block_elems, "-element block; stored as ", dtype_name(fallback));
  return c;
}

// ---- ModelDir over a GGUF pair ----

ModelDir ModelDir::open_gguf(const std::string& path) { return from_gguf(open_gguf_model(path)); }

ModelDir ModelDir::from_gguf(std::shared_ptr<const GgufModel> g) {
  const std::string& path = g->path;
  const std::string what = "'" + path + "'";
  const LlamaConfig from_llm = llama_config_from_gguf(g->llm, what);
  ConfigTexts texts;
  std::string origin = path;
  if (g->companion) {
    origin = g->companion_path;
    texts.config = *g->embedded("config.json");
    texts.clip_vision = g->embedded("clip_vision/config.json");
    texts.unet = g->embedded("unet/config.json");
    texts.vae = g->embedded("vae/config.json");
    texts.scheduler = g->embedded("scheduler/scheduler_config.json");
  } else {
    DreamLLMConfig c;
    c.llm = from_llm;
    texts.config = to_json(c);
  }
  ModelDir m = from_configs(origin, texts);
  m.dir_ = path;
  m.gguf_ = g;
  // The embedded config and the LLM file must describe the same network.
  const LlamaConfig& l = m.config_.llm;
  const int64_t kv = l.num_key_value_heads ? l.num_key_value_heads : l.num_attention_heads;
  DL_CHECK(l.hidden_size == from_llm.hidden_size && l.intermediate_size == from_llm.intermediate_size &&
               l.num_hidden_layers == from_llm.num_hidden_layers &&
               l.num_attention_heads == from_llm.num_attention_heads && kv == from_llm.num_key_value_heads &&
               l.vocab_size == from_llm.vocab_size,
           what, ": its llama.* hyperparameters (width ", from_llm.hidden_size, ", ", from_llm.num_hidden_layers,
           " layers, ", from_llm.num_attention_heads, "/", from_llm.num_key_value_heads, " heads, feed-forward ",
           from_llm.intermediate_size, ", vocabulary ", from_llm.vocab_size, ") disagree with the config.json of '",
           g->companion_path, "'");
  m.present_ = kLLM;
  if (g->companion_has("model.clip_vision_embedding.")) m.present_ |= kClip;
  if (g->companion_has("model.dream_embedding.")) m.present_ |= kDream;
  if (g->companion_has("stable_diffusion_head.unet.")) m.present_ |= kDiffusion;
  if (g->companion_has("stable_diffusion_head.projector.")) m.present_ |= kConditionProjector;
  return m;
}

StateDict ModelDir::load_gguf(unsigned mask) const {
  const GgufModel& g = *gguf_;
  StateDict all;
  if (mask & kLLM) {
    const std::string what = "'" + g.path + "'";
    const Layout layout = expected(kLLM);
    std::map<std::string, Shape> shapes(layout.begin(), layout.end());
    StateDict sd;
    for (const GgufTensorInfo& info : g.llm.tensor_infos) {
      const std::optional<std::string> hf = hf_tensor_name(info.name);
      DL_CHECK(hf, what, ": tensor '", info.name, "' is not part of a LLaMA model");
      auto s = shapes.find(*hf);
      DL_CHECK(s != shapes.end(), what, ": tensor '", info.name, "' is not part of this model's configuration");
      DL_CHECK(info.shape == s->second, what, ": tensor '", info.name, "' is ", shape_str(info.shape),
               " but the configuration makes it ", shape_str(s->second));
      sd.emplace(*hf, g.llm.tensors.at(info.name));
    }
    check_against_layout(sd, layout, {}, "the LLM weights of " + what);
    const LlamaConfig& c = config_.llm;
    const int64_t kv = c.num_key_value_heads ? c.num_key_value_heads : c.num_attention_heads;
    // The file keeps llama.cpp's row order; the models rotate HF's halves, so q/k rows go back (a copy of these two
    // matrices per layer; every other tensor stays a view of the mapping).
    for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
      const std::string p = "model.layers." + std::to_string(l) + ".self_attn.";
      // The mapped originals are read once for the copies; their pages go back at once (0.56 GiB for the 7B).
      Tensor& q = sd.at(p + "q_proj.weight");
      const Tensor q_file = q;
      q = permute_qk_rows(q, c.num_attention_heads, false);
      release_mapped_pages(q_file);
      Tensor& k = sd.at(p + "k_proj.weight");
      const Tensor k_file = k;
      k = permute_qk_rows(k, kv, false);
      release_mapped_pages(k_file);
    }
    all.merge(sd);
  }
  const unsigned plugins = mask & (kClip | kDream | kDiffusion | kConditionProjector);
  if (plugins) {
    DL_CHECK(g.companion, "'", g.path, "' holds only the LLM (no companion '", companion_path(g.path),
             "' beside it), so it has no vision tower, dream queries or diffusion head");
    const std::string what = "'" + g.companion_path + "'";
    auto take = [&](Component c, const char* component) {
      const Layout layout = expected(c);
      StateDict sd;
      for (const auto& [name, shape] : layout) {
        auto it = g.companion->tensors.find(name);
        if (it != g.companion->tensors.end()) sd.emplace(name, it->second);
      }
      DL_CHECK(!sd.empty(), what, " has no ", component);
      check_against_layout(sd, layout, {}, what);
      all.merge(sd);
    };
    if (mask & kClip) take(kClip, "vision tower");
    if (mask & kDream) take(kDream, "dream queries");
    if (mask & kDiffusion)
      take(kDiffusion, "diffusion head");
    else if (mask & kConditionProjector)
      take(kConditionProjector, "condition projector");
  }
  return all;
}

std::vector<std::string> gguf_weight_files(const GgufModel& g, Component c) {
  if (c == kLLM) return {g.path};
  DL_CHECK(g.companion, "'", g.path, "' has no companion '", companion_path(g.path), "' holding component ",
           unsigned(c));
  return {g.companion_path};
}

}  // namespace dl::io
