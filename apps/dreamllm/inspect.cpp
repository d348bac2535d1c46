// `dreamllm inspect -m MODEL [--ctx N] [--json]`: what a model holds and what running it would take, from the
// files' headers alone: the weight files are mapped and only their headers are parsed (safetensors' JSON header, the
// pickle of a torch.save archive, GGUF's tensor infos), so no weight page is read and the 15 GB release inspects in
// moments. Per component: files, dtypes, parameters, bytes, the config used (file or built-in default). Per weight
// type: the memory the whole system would need at run time and whether this machine has it.
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "cli_common.h"
#include "core/error.h"
#include "core/storage.h"
#include "io/gguf_model.h"
#include "io/gguf.h"
#include "io/safetensors.h"
#include "io/torch_bin.h"
#include "io/zip.h"
#include "models/llama.h"

namespace dl::app {

namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

struct TensorInfo {
  std::string name;
  DType dtype;
  Shape shape;
  uint64_t bytes;
};

// The tensors of one weight file, from its header. Files are mapped (Storage::map_file), never copied: the tensors
// the parsers return are views whose pages are never touched here. (A torch.save entry that is deflated or
// misaligned for its dtype would be read; torch.save writes neither.)
std::vector<TensorInfo> header_tensors(const std::string& path) {
  std::vector<TensorInfo> out;
  auto add = [&](const std::string& name, const Tensor& t) {
    out.push_back({name, t.dtype(), t.shape(), uint64_t(t.nbytes())});
  };
  if (ends_with(path, ".safetensors")) {
    for (const auto& [n, t] : io::parse_safetensors(Storage::map_file(path), "'" + path + "'").tensors) add(n, t);
  } else if (ends_with(path, ".gguf")) {
    const io::GgufFile g = io::parse_gguf(Storage::map_file(path), "'" + path + "'");
    for (const auto& info : g.tensor_infos) add(info.name, g.tensors.at(info.name));
  } else if (ends_with(path, ".bin") || ends_with(path, ".pt") || ends_with(path, ".pth")) {
    for (const auto& [n, t] : io::read_torch_bin(io::ZipArchive::open(path))) add(n, t);
  } else if (ends_with(path, ".index.json")) {
    // The shards are listed by weight_files() after the index; the index itself holds no tensor.
  } else {
    fail("'", path, "': unknown weight file type (expected .bin, .safetensors, .gguf or .index.json)");
  }
  return out;
}

// Buffers saved with the weights that are no parameters (recomputed or constant).
bool is_buffer(const std::string& name) {
  return ends_with(name, ".rotary_emb.inv_freq") || ends_with(name, ".embeddings.position_ids");
}

struct Part {
  std::string key, title;  // "llm", "LLM"
  std::set<std::string> files;
  int64_t tensors = 0, params = 0;
  uint64_t bytes = 0;
  std::map<std::string, int64_t> params_by_dtype;
  std::vector<TensorInfo> weights;  // parameters only, for the memory estimate
  std::string config;               // where its config came from
};

struct Report {
  std::string path, kind;
  std::vector<Part> parts;
  std::map<std::string, uint64_t> file_bytes;
  json tokenizer;
  std::vector<std::pair<std::string, std::string>> other_configs;  // scheduler etc.
};

std::string config_source(const io::ModelDir& dir, const std::string& rel, const std::string& builtin) {
  if (dir.gguf()) {
    if (dir.gguf()->embedded(rel)) return rel + " embedded in " + dir.gguf()->companion_path;
  } else if (fs::exists(dir.path() + "/" + rel)) {
    return rel;
  }
  return "built-in default: " + builtin;
}

// Which part of the system a tensor of component `c` belongs to, by its name as the file stores it (plugin files
// without the component prefix; a converted model's companion with it). Empty: not this component's.
std::string part_of(io::Component c, std::string name, bool prefixed) {
  auto strip = [&](const std::string& prefix) {
    if (name.rfind(prefix, 0) != 0) return false;
    name = name.substr(prefix.size());
    return true;
  };
  switch (c) {
    case io::kLLM: return "llm";
    case io::kClip:
      if (prefixed && !strip("model.clip_vision_embedding.")) return "";
      return name.rfind("projector.", 0) == 0 ? "vision_projector" : "vision_tower";
    case io::kDream:
      if (prefixed && !strip("model.dream_embedding.")) return "";
      return "dream_queries";
    case io::kDiffusion:
      if (prefixed && !strip("stable_diffusion_head.")) return "";
      if (name.rfind("unet.", 0) == 0) return "unet";
      if (name.rfind("vae.", 0) == 0) return "vae";
      return "condition_projector";
    default: return "";
  }
}

Report inspect_model(const std::string& path) {
  const io::ModelDir dir = open_model_dir(path);
  Report r;
  r.path = path;
  const bool text_only = !dir.has(io::kClip) && !dir.has(io::kDream) && !dir.has(io::kDiffusion);
  const bool gguf = dir.gguf() != nullptr;
  r.kind = std::string(gguf ? "converted (GGUF) " : "directory, ") +
           (text_only ? "text-only LLaMA model" : "DreamLLM model");
  const std::string clip_default = "CLIP ViT-L/14 vision tower (224 px, patch 14, 24 layers, width 1024)";
  const std::string sd_default = "Stable Diffusion 2.1-base";
  struct Spec {
    const char* key;
    const char* title;
    io::Component c;
    std::string config;
  };
  const std::vector<Spec> specs = {
      {"llm", "LLM", io::kLLM, gguf ? "llama.* metadata of the GGUF" : "config.json"},
      {"vision_tower", "vision tower", io::kClip, config_source(dir, "clip_vision/config.json", clip_default)},
      {"vision_projector", "vision projector", io::kClip, "config.json (hidden_size) and the vision config"},
      {"dream_queries", "dream queries", io::kDream, "config.json (num_dream_queries)"},
      {"unet", "UNet", io::kDiffusion, config_source(dir, "unet/config.json", sd_default + " UNet")},
      {"vae", "VAE", io::kDiffusion, config_source(dir, "vae/config.json", sd_default + " VAE")},
      {"condition_projector", "condition projector", io::kDiffusion, "config.json and the UNet config"},
  };
  std::map<std::string, Part> parts;
  for (const Spec& s : specs) parts[s.key] = Part{s.key, s.title, {}, 0, 0, 0, {}, {}, s.config};
  std::map<std::string, std::vector<TensorInfo>> cache;  // a companion holds several components
  for (io::Component c : {io::kLLM, io::kClip, io::kDream, io::kDiffusion}) {
    if (!dir.has(c)) continue;
    for (const std::string& f : dir.weight_files(c)) {
      r.file_bytes[f] = uint64_t(fs::file_size(f));
      if (!cache.count(f)) cache[f] = header_tensors(f);
      const bool prefixed = ends_with(f, ".gguf") && c != io::kLLM;
      for (const TensorInfo& t : cache[f]) {
        const std::string key = part_of(c, t.name, prefixed);
        if (key.empty()) continue;
        Part& p = parts.at(key);
        p.files.insert(f);
        ++p.tensors;
        p.bytes += t.bytes;
        if (is_buffer(t.name)) continue;
        p.params += shape_numel(t.shape);
        p.params_by_dtype[std::string(dtype_name(t.dtype))] += shape_numel(t.shape);
        p.weights.push_back(t);
      }
    }
  }
  for (const Spec& s : specs)
    if (!parts.at(s.key).files.empty()) r.parts.push_back(parts.at(s.key));
  if (dir.has(io::kDiffusion))
    r.other_configs.emplace_back(
        "scheduler", config_source(dir, "scheduler/scheduler_config.json", sd_default + " scheduler") +
                         " -> " + dir.scheduler_config().class_name + ", " +
                         std::to_string(dir.scheduler_config().num_train_timesteps) + " training timesteps");
  // The tokenizer is small (kilobytes to a megabyte): reading it costs nothing next to the weights.
  json tok = json::object();
  if (!gguf) {
    json files = json::object();
    for (const char* f : {"tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json"})
      if (fs::exists(dir.path() + "/" + f)) files[f] = uint64_t(fs::file_size(dir.path() + "/" + f));
    tok["files"] = files;
  }
  try {
    const text::Tokenizer t = text::Tokenizer::load(path);
    tok["vocab_size"] = t.vocab_size();
    tok["sentencepiece_pieces"] = t.sp_vocab_size();
    tok["added_tokens"] = t.added_tokens().size();
  } catch (const Error& e) {
    tok["error"] = e.what();
  }
  r.tokenizer = tok;
  return r;
}

// --- memory estimate ------------------------------------------------------------------------------------------

// Bytes per element of ggml's block formats (the published layouts: Q8_0 32 values in 34 bytes, Q4_0 32 in 18,
// Q4_K 256 in 144, Q6_K 256 in 210).
struct Format {
  const char* name;
  int64_t block;
  double bytes_per_block;
};
const Format kF32{"F32", 1, 4}, kF16{"F16", 1, 2}, kBF16{"BF16", 1, 2}, kQ8_0{"Q8_0", 32, 34}, kQ4_0{"Q4_0", 32, 18},
    kQ4_K{"Q4_K", 256, 144}, kQ6_K{"Q6_K", 256, 210};

const std::vector<std::string> kTypes = {"f32", "f16", "bf16", "q8_0", "q4_0", "q4_k", "q6_k", "q4_k_m"};

// llama.cpp's layer choice for the more precise tensors of its _M mixes (use_more_bits in llama-quant.cpp): the first
// and last eighth of the layers and every third in between.
bool use_more_bits(int64_t i, int64_t n) { return i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2; }

// The layer index of an LLM weight name (HF "model.layers.N." or llama.cpp "blk.N."), -1 for none.
int64_t layer_of(const std::string& name) {
  for (const char* prefix : {"model.layers.", "blk."}) {
    const std::string p = prefix;
    if (name.rfind(p, 0) == 0) return std::strtoll(name.c_str() + p.size(), nullptr, 10);
  }
  return -1;
}

// The format an LLM matrix gets under `type`, as llama-quantize picks it (llama_tensor_get_type): the output head
// at Q6_K in every 4- and 6-bit type, and in q4_k_m also attn_v and ffn_down of the use_more_bits layers; rows that
// are not a whole number of blocks fall back to Q8_0 (or F16 when not even that fits).
Format llm_format(const std::string& type, const std::string& name, int64_t row, int64_t layers) {
  Format f = type == "f32" ? kF32 : type == "f16" ? kF16 : type == "bf16" ? kBF16 : type == "q8_0" ? kQ8_0
           : type == "q4_0" ? kQ4_0 : type == "q6_k" ? kQ6_K : kQ4_K;
  const bool four_or_six_bits = f.block > 1 && type != "q8_0";
  if (four_or_six_bits && (name == "lm_head.weight" || name == "output.weight")) f = kQ6_K;
  if (type == "q4_k_m") {
    const bool v = name.find("v_proj") != std::string::npos || name.find("attn_v") != std::string::npos;
    const bool down = name.find("down_proj") != std::string::npos || name.find("ffn_down") != std::string::npos;
    if ((v || down) && use_more_bits(layer_of(name), layers)) f = kQ6_K;
  }
  if (row % f.block != 0) f = row % kQ8_0.block == 0 ? kQ8_0 : kF16;
  return f;
}

struct Estimate {
  std::string type;
  double llm_weights = 0, other_weights = 0, kv_cache = 0, activations = 0;
  double total() const { return llm_weights + other_weights + kv_cache + activations; }
};

double kv_bytes_per_element(DType t) {
  if (t == DType::F32) return 4;
  if (t == DType::Q8_0) return 34.0 / 32.0;
  return 2;
}

Estimate estimate(const Report& r, const io::ModelDir& dir, const std::string& type, int64_t ctx) {
  Estimate e;
  e.type = type;
  const io::LlamaConfig& lc = dir.config().llm;
  for (const Part& p : r.parts) {
    for (const TensorInfo& t : p.weights) {
      const double n = double(shape_numel(t.shape));
      // Norms, biases and other vectors stay F32 in every type (llama.cpp keeps 1-D tensors F32).
      if (t.shape.size() < 2) {
        (p.key == "llm" ? e.llm_weights : e.other_weights) += 4 * n;
        continue;
      }
      if (p.key == "llm") {
        const Format f = llm_format(type, t.name, t.shape.back(), lc.num_hidden_layers);
        e.llm_weights += n / double(f.block) * f.bytes_per_block;
      } else {
        // The vision tower, UNet, VAE and projectors stay F16 in the quantized types (convert's default).
        e.other_weights += n * (type == "f32" ? 4 : 2);
      }
    }
  }
  const models::KVCacheTypes kv = models::default_kv_cache_types();
  e.kv_cache = double(2 * lc.num_hidden_layers * lc.num_key_value_heads * lc.head_dim() * ctx) * 0.5 *
               (kv_bytes_per_element(kv.key) + kv_bytes_per_element(kv.value));
  // The LLM's working set for a prompt of ctx tokens read at once: per token the residual, its norm, q/k/v and
  // the attention output (6 D) and the MLP's gate, up and product (3 I), in F32; attention streams over key blocks,
  // so no ctx x ctx matrix; logits only for the last position.
  double act = 4.0 * double(ctx) * double(6 * lc.hidden_size + 3 * lc.intermediate_size) + 4.0 * double(lc.vocab_size);
  if (dir.has(io::kClip)) {
    const io::ClipVisionConfig& cc = dir.clip_config();
    act = std::max(act, 4.0 * double(cc.num_patches() + 1) * double(6 * cc.hidden_size + cc.intermediate_size));
  }
  if (dir.has(io::kDiffusion)) {
    const io::UNetConfig& uc = dir.unet_config();
    const DrawMemory d = estimate_draw_memory(uc, dir.vae_config(), uc.sample_size, uc.sample_size, true, false);
    act = std::max(act, d.peak());
  }
  e.activations = act;
  return e;
}

struct Machine {
  double total = 0, available = 0;
};

Machine machine_memory() {
  Machine m;
  std::ifstream f("/proc/meminfo");
  std::string key;
  double kb = 0;
  std::string unit;
  while (f >> key >> kb) {
    std::getline(f, unit);
    if (key == "MemTotal:") m.total = kb * 1024;
    if (key == "MemAvailable:") m.available = kb * 1024;
  }
  return m;
}

std::string fits(double need, const Machine& m) {
  if (m.total <= 0) return "unknown";
  if (need <= m.available) return "yes";
  if (need <= m.total) return "only if other programs free memory";
  return "no";
}

std::string human(double bytes) {
  char buf[48];
  const double k = 1024;
  if (bytes >= k * k * k)
    std::snprintf(buf, sizeof buf, "%.2f GiB", bytes / (k * k * k));
  else if (bytes >= k * k)
    std::snprintf(buf, sizeof buf, "%.1f MiB", bytes / (k * k));
  else if (bytes >= k)
    std::snprintf(buf, sizeof buf, "%.1f KiB", bytes / k);
  else
    std::snprintf(buf, sizeof buf, "%.0f B", bytes);
  return buf;
}

std::string with_commas(int64_t v) {
  std::string s = std::to_string(v), out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (i && (s.size() - i) % 3 == 0) out += ',';
    out += s[i];
  }
  return out;
}

const char* kEstimateIncludes =
    "weights (the LLM at the type as llama-quantize assigns it, norms F32; vision tower, UNet, VAE, projectors and "
    "dream queries F16, F32 for f32), the KV cache at the context length in the cache type, and the largest "
    "activation working set of one stage (LLM prefill of the whole context, one CLIP image, UNet sampling with "
    "guidance at the native size, VAE decoding); not the tokenizer, program code or the allocator's slack";

}  // namespace

int inspect_main(int argc, char** argv) {
  CLI::App app("Show what a model holds and the memory each weight type would need, from the file headers only.",
               "inspect");
  std::string model;
  int64_t ctx = 0;
  bool as_json = false;
  app.add_option("-m,--model", model, "model directory or converted .gguf")->required();
  app.add_option("-c,--ctx", ctx, "context length for the KV cache estimate (default: the model's maximum)")
      ->check(CLI::Range(int64_t(1), int64_t(1) << 24));
  app.add_flag("--json", as_json, "print JSON instead of text");
  add_kv_cache_options(app);
  if (auto code = parse_or_exit(app, argc, argv)) return *code;

  const io::ModelDir dir = open_model_dir(model);
  const Report r = inspect_model(model);
  if (ctx == 0) ctx = dir.config().llm.max_position_embeddings;
  const Machine mach = machine_memory();
  std::vector<Estimate> est;
  for (const std::string& t : kTypes) est.push_back(estimate(r, dir, t, ctx));
  const models::KVCacheTypes kv = models::default_kv_cache_types();
  const std::string kv_text = std::string(dtype_name(kv.key)) + "/" + std::string(dtype_name(kv.value));

  if (as_json) {
    json j;
    j["model"] = r.path;
    j["kind"] = r.kind;
    json comps = json::array();
    for (const Part& p : r.parts) {
      json c;
      c["name"] = p.key;
      c["title"] = p.title;
      c["files"] = std::vector<std::string>(p.files.begin(), p.files.end());
      c["tensors"] = p.tensors;
      c["params"] = p.params;
      c["bytes"] = p.bytes;
      c["params_by_dtype"] = p.params_by_dtype;
      c["config"] = p.config;
      comps.push_back(c);
    }
    j["components"] = comps;
    j["files"] = r.file_bytes;
    json other = json::object();
    for (const auto& [k, v] : r.other_configs) other[k] = v;
    j["other_configs"] = other;
    j["tokenizer"] = r.tokenizer;
    j["context"] = ctx;
    j["kv_cache_type"] = kv_text;
    j["memory_estimate_includes"] = kEstimateIncludes;
    json mem = json::array();
    for (const Estimate& e : est)
      mem.push_back({{"type", e.type},
                     {"llm_weights", uint64_t(e.llm_weights)},
                     {"other_weights", uint64_t(e.other_weights)},
                     {"kv_cache", uint64_t(e.kv_cache)},
                     {"activations", uint64_t(e.activations)},
                     {"total", uint64_t(e.total())},
                     {"fits", fits(e.total(), mach)}});
    j["memory"] = mem;
    j["machine"] = {{"mem_total", uint64_t(mach.total)}, {"mem_available", uint64_t(mach.available)}};
    std::printf("%s\n", j.dump(1).c_str());
    return 0;
  }

  std::printf("model: %s (%s)\n\ncomponents:\n", r.path.c_str(), r.kind.c_str());
  std::printf("  %-20s %8s %15s %12s  %s\n", "component", "tensors", "parameters", "bytes", "dtypes (parameters)");
  int64_t total_params = 0;
  uint64_t total_bytes = 0;
  for (const Part& p : r.parts) {
    std::string dt;
    for (const auto& [d, n] : p.params_by_dtype) dt += (dt.empty() ? "" : ", ") + d + " " + with_commas(n);
    std::printf("  %-20s %8" PRId64 " %15s %12s  %s\n", p.title.c_str(), p.tensors, with_commas(p.params).c_str(),
                human(double(p.bytes)).c_str(), dt.c_str());
    total_params += p.params;
    total_bytes += p.bytes;
  }
  std::printf("  %-20s %8s %15s %12s\n", "total", "", with_commas(total_params).c_str(),
              human(double(total_bytes)).c_str());
  std::printf("\nconfigs:\n");
  for (const Part& p : r.parts) std::printf("  %-20s %s\n", p.title.c_str(), p.config.c_str());
  for (const auto& [k, v] : r.other_configs) std::printf("  %-20s %s\n", k.c_str(), v.c_str());
  std::printf("\nfiles:\n");
  for (const auto& [f, b] : r.file_bytes) std::printf("  %-60s %12s\n", f.c_str(), human(double(b)).c_str());
  std::printf("\ntokenizer: ");
  if (r.tokenizer.contains("error"))
    std::printf("cannot be read: %s\n", r.tokenizer["error"].get<std::string>().c_str());
  else
    std::printf("%d tokens (%d SentencePiece pieces + %zu added)\n", r.tokenizer["vocab_size"].get<int>(),
                r.tokenizer["sentencepiece_pieces"].get<int>(), r.tokenizer["added_tokens"].get<size_t>());
  std::printf("\nmemory at run time, context %" PRId64 " tokens, KV cache %s (estimate: %s):\n", ctx, kv_text.c_str(),
              kEstimateIncludes);
  std::printf("  %-7s %12s %12s %12s %12s %12s  %s\n", "--type", "LLM", "other", "KV cache", "activations", "total",
              "fits");
  for (const Estimate& e : est)
    std::printf("  %-7s %12s %12s %12s %12s %12s  %s\n", e.type.c_str(), human(e.llm_weights).c_str(),
                human(e.other_weights).c_str(), human(e.kv_cache).c_str(), human(e.activations).c_str(),
                human(e.total()).c_str(), fits(e.total(), mach).c_str());
  std::printf("\nthis machine: %s total, %s available\n", human(mach.total).c_str(), human(mach.available).c_str());
  return 0;
}

}  // namespace dl::app
