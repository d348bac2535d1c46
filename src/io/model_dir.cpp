#include "io/model_dir.h"

#include <sys/stat.h>

#include <cerrno>
#include <cstring>

#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "core/error.h"
#include "io/gguf_model.h"
#include "io/safetensors.h"

namespace dl::io {

namespace {

// Whether anything is at p. Not only regular files: a FIFO, a directory or a symbolic-link loop in a file's place
// is then read and refused by name ("'x' is a FIFO, not a regular file") instead of being taken for absent.
bool file_exists(const std::string& p) {
  struct stat st {};
  return ::stat(p.c_str(), &st) == 0 || (errno != ENOENT && errno != ENOTDIR);
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

std::string dirname_of(const std::string& p) {
  const auto slash = p.rfind('/');
  return slash == std::string::npos ? "." : p.substr(0, slash);
}

// First existing file among the candidates; empty when none.
std::string find_first(const std::string& dir, std::initializer_list<const char*> names) {
  for (const char* n : names) {
    const std::string p = dir + "/" + n;
    if (file_exists(p)) return p;
  }
  return "";
}

StateDict read_sharded(const std::string& index_path) {
  const auto by_shard = parse_weight_index(read_text_file(index_path), "'" + index_path + "'");
  const std::string dir = dirname_of(index_path);
  StateDict out;
  for (const auto& [shard, names] : by_shard) {
    StateDict part = read_weights(dir + "/" + shard);
    for (const std::string& n : names) {
      auto it = part.find(n);
      DL_CHECK(it != part.end(), "'", index_path, "' maps '", n, "' to '", shard, "', which does not contain it");
      out.emplace(n, it->second);
    }
  }
  return out;
}

void add_prefixed(StateDict& dst, const StateDict& src, const std::string& prefix) {
  for (const auto& [k, v] : src) dst.emplace(prefix + k, v);
}

}  // namespace

std::map<std::string, std::vector<std::string>> parse_weight_index(const std::string& text, const std::string& what) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    fail(what, ": invalid JSON (", e.what(), ")");
  }
  DL_CHECK(j.is_object() && j.contains("weight_map") && j["weight_map"].is_object(), what, ": no weight_map object");
  std::map<std::string, std::vector<std::string>> by_shard;
  for (const auto& [name, shard] : j["weight_map"].items()) {
    DL_CHECK(shard.is_string(), what, ": shard of '", name, "' is not a file name");
    const std::string s = shard.get<std::string>();
    DL_CHECK(s.find('/') == std::string::npos && (ends_with(s, ".safetensors") || ends_with(s, ".bin")), what,
             ": shard name '", s, "' must be a .safetensors or .bin file in the same directory");
    by_shard[s].push_back(name);
  }
  return by_shard;
}

StateDict read_weights(const std::string& path) {
  if (ends_with(path, ".index.json")) return read_sharded(path);
  if (ends_with(path, ".safetensors")) return read_safetensors(path).tensors;
  if (ends_with(path, ".bin") || ends_with(path, ".pt") || ends_with(path, ".pth")) return read_torch_bin(path);
  fail("'", path, "': unknown weight file type (expected .bin, .safetensors or .index.json)");
}

void check_against_layout(StateDict& tensors, const Layout& expected, const std::vector<std::string>& ignored_suffixes,
                          const std::string& what) {
  std::vector<std::string> missing, wrong, unexpected;
  std::set<std::string> seen;
  for (const auto& [name, shape] : expected) {
    seen.insert(name);
    auto it = tensors.find(name);
    if (it == tensors.end()) {
      missing.push_back(name);
      continue;
    }
    Tensor& t = it->second;
    if (!dtype_info(t.dtype()).is_float) {
      wrong.push_back(name + " has dtype " + std::string(dtype_name(t.dtype())));
      continue;
    }
    if (t.shape() != shape) {
      // Legacy checkpoints store some linear weights as 1x1 convolutions.
      const bool conv_as_linear = shape.size() == 2 && t.dim() == 4 && t.size(0) == shape[0] && t.size(1) == shape[1] &&
                                  t.size(2) == 1 && t.size(3) == 1;
      if (conv_as_linear) {
        t = t.reshape(shape);
      } else {
        wrong.push_back(name + " is " + shape_str(t.shape()) + ", expected " + shape_str(shape));
      }
    }
  }
  for (auto it = tensors.begin(); it != tensors.end();) {
    if (seen.count(it->first)) {
      ++it;
      continue;
    }
    bool ignore = false;
    for (const auto& s : ignored_suffixes) ignore = ignore || ends_with(it->first, s);
    if (!ignore) unexpected.push_back(it->first);
    it = tensors.erase(it);
  }
  if (missing.empty() && wrong.empty() && unexpected.empty()) return;
  std::ostringstream os;
  os << what << " does not match the configured model:";
  auto list = [&](const char* title, const std::vector<std::string>& v) {
    if (v.empty()) return;
    os << "\n  " << v.size() << " " << title << ":";
    for (size_t i = 0; i < v.size() && i < 20; ++i) os << "\n    " << v[i];
    if (v.size() > 20) os << "\n    ... and " << v.size() - 20 << " more";
  };
  list("missing", missing);
  list("with the wrong shape or dtype", wrong);
  list("unexpected", unexpected);
  throw Error(os.str());
}

ModelDir ModelDir::open(const std::string& dir) {
  struct stat st {};
  if (::stat(dir.c_str(), &st) != 0) {
    DL_CHECK(errno != ENOENT, "model path '", dir, "' does not exist");
    fail("model path '", dir, "': ", std::strerror(errno));  // e.g. a symbolic-link loop, no permission
  }
  if (!S_ISDIR(st.st_mode) && is_gguf_model_path(dir)) return open_gguf(dir);
  DL_CHECK(S_ISDIR(st.st_mode), "model path '", dir, "' is not a directory");
  const std::string cfg = dir + "/config.json";
  DL_CHECK(file_exists(cfg), "model directory '", dir, "' has no config.json");
  ConfigTexts texts;
  texts.config = read_text_file(cfg);
  auto optional_text = [&](const char* rel) -> std::optional<std::string> {
    const std::string p = dir + "/" + rel;
    if (!file_exists(p)) return std::nullopt;
    return read_text_file(p);
  };
  texts.clip_vision = optional_text("clip_vision/config.json");
  texts.unet = optional_text("unet/config.json");
  texts.vae = optional_text("vae/config.json");
  texts.scheduler = optional_text("scheduler/scheduler_config.json");
  ModelDir m = from_configs(dir, texts);
  // The plugins are optional: a Hugging Face LLaMA directory is the LLM alone.
  m.present_ = 0;
  if (!find_first(dir, {"model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                        "pytorch_model.bin.index.json"}).empty())
    m.present_ |= kLLM;
  if (!find_first(dir, {"clip_vision_embedding.safetensors", "clip_vision_embedding.bin"}).empty())
    m.present_ |= kClip;
  if (!find_first(dir, {"dream_embedding.safetensors", "dream_embedding.bin"}).empty()) m.present_ |= kDream;
  if (!find_first(dir, {"stable_diffusion_head.safetensors", "stable_diffusion_head.bin"}).empty())
    m.present_ |= kDiffusion | kConditionProjector;
  return m;
}

ModelDir ModelDir::from_configs(const std::string& dir, const ConfigTexts& texts) {
  ModelDir m;
  m.dir_ = dir;
  m.config_ = parse_dreamllm_config(texts.config, "'" + dir + "/config.json'");
  auto optional_config = [&](const char* rel, const std::optional<std::string>& text, auto parse, auto& dst) {
    if (text) dst = parse(*text, "'" + dir + "/" + rel + "'");
  };
  optional_config("clip_vision/config.json", texts.clip_vision, parse_clip_vision_config, m.clip_);
  optional_config("unet/config.json", texts.unet, parse_unet_config, m.unet_);
  optional_config("vae/config.json", texts.vae, parse_vae_config, m.vae_);
  optional_config("scheduler/scheduler_config.json", texts.scheduler, parse_scheduler_config, m.scheduler_);
  DL_CHECK(size_t(m.unet_.in_channels) == size_t(m.vae_.latent_channels), "model directory '", dir, "': the UNet takes ",
           m.unet_.in_channels, " channels but the VAE makes ", m.vae_.latent_channels, "-channel latents");
  return m;
}

Layout ModelDir::expected(Component c) const {
  const int64_t D = config_.llm.hidden_size;
  Layout out;
  auto add = [&](const std::string& prefix, const Layout& l) {
    for (const auto& [n, s] : l) out.emplace_back(prefix + n, s);
  };
  switch (c) {
    case kLLM: add("", llama_layout(config_.llm)); break;
    case kClip:
      add("model.clip_vision_embedding.clip_vision_model.", clip_vision_layout(clip_));
      out.emplace_back("model.clip_vision_embedding.projector.projector.weight", Shape{D, clip_.hidden_size});
      out.emplace_back("model.clip_vision_embedding.projector.projector.bias", Shape{D});
      break;
    case kDream: out.emplace_back("model.dream_embedding.dream_queries", Shape{1, config_.num_dream_queries, D}); break;
    case kDiffusion:
      add("stable_diffusion_head.unet.", unet_layout(unet_));
      add("stable_diffusion_head.vae.", vae_layout(vae_));
      out.emplace_back("stable_diffusion_head.projector.projector.weight", Shape{unet_.cross_attention_dim, D});
      break;
    case kConditionProjector:
      out.emplace_back("stable_diffusion_head.projector.projector.weight", Shape{unet_.cross_attention_dim, D});
      break;
    default: fail("unknown component ", unsigned(c));
  }
  return out;
}

std::vector<std::string> ModelDir::weight_files(Component c) const {
  if (gguf_) return gguf_weight_files(*gguf_, c);
  std::string f;
  switch (c) {
    case kLLM:
      f = find_first(dir_, {"model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                            "pytorch_model.bin.index.json"});
      break;
    case kClip: f = find_first(dir_, {"clip_vision_embedding.safetensors", "clip_vision_embedding.bin"}); break;
    case kDream: f = find_first(dir_, {"dream_embedding.safetensors", "dream_embedding.bin"}); break;
    case kDiffusion:
    case kConditionProjector:
      f = find_first(dir_, {"stable_diffusion_head.safetensors", "stable_diffusion_head.bin"});
      break;
    default: fail("weight_files: pass a single component");
  }
  DL_CHECK(!f.empty(), "model directory '", dir_, "' has no weight file for component ", unsigned(c));
  std::vector<std::string> files{f};
  if (ends_with(f, ".index.json")) {
    // The same checks as loading, so a shard named outside the directory is never linked or copied from.
    for (const auto& [shard, names] : parse_weight_index(read_text_file(f), "'" + f + "'"))
      files.push_back(dir_ + "/" + shard);
  }
  return files;
}

ClipPreprocessConfig clip_preprocess_config(const ModelDir& dir) {
  if (dir.gguf()) {
    if (auto text = dir.gguf()->embedded("preprocessor_config.json"))
      return parse_clip_preprocess_config(*text, "'" + dir.gguf()->companion_path + "' preprocessor_config.json");
  }
  const std::string path = dir.path() + "/preprocessor_config.json";
  if (!dir.gguf() && file_exists(path)) return read_clip_preprocess_config(path);
  ClipPreprocessConfig cfg;
  const int64_t s = dir.clip_config().image_size;
  cfg.shortest_edge = s;
  cfg.crop_height = cfg.crop_width = s;
  return cfg;
}

StateDict ModelDir::load(unsigned mask) const {
  if (gguf_) return load_gguf(mask);
  StateDict all;
  auto need = [&](const std::string& file, const char* component) {
    DL_CHECK(!file.empty(), "model directory '", dir_, "' has no ", component, " weights");
    return file;
  };
  if (mask & kLLM) {
    StateDict sd = read_weights(need(find_first(dir_, {"model.safetensors", "model.safetensors.index.json",
                                                        "pytorch_model.bin", "pytorch_model.bin.index.json"}),
                                     "LLM (pytorch_model.bin / model.safetensors)"));
    check_against_layout(sd, expected(kLLM), {".rotary_emb.inv_freq"}, "the LLM weights of '" + dir_ + "'");
    add_prefixed(all, sd, "");
  }
  // Plugin files hold their names without the component prefix.
  auto load_plugin = [&](const char* stem, const char* what, const std::string& prefix, Component c,
                         const std::vector<std::string>& ignored) {
    const std::string s = stem;
    StateDict sd;
    add_prefixed(sd, read_weights(need(find_first(dir_, {(s + ".safetensors").c_str(), (s + ".bin").c_str()}), what)),
                 prefix);
    check_against_layout(sd, expected(c), ignored, "'" + dir_ + "/" + s + "'");
    add_prefixed(all, sd, "");
  };
  if (mask & kClip)
    load_plugin("clip_vision_embedding", "vision tower (clip_vision_embedding.bin)", "model.clip_vision_embedding.",
                kClip, {".embeddings.position_ids"});
  if (mask & kDream)
    load_plugin("dream_embedding", "dream queries (dream_embedding.bin)", "model.dream_embedding.", kDream, {});
  if (mask & (kDiffusion | kConditionProjector)) {
    StateDict raw = read_weights(need(find_first(dir_, {"stable_diffusion_head.safetensors", "stable_diffusion_head.bin"}),
                                      "diffusion head (stable_diffusion_head.bin)"));
    StateDict sd;
    const bool whole = mask & kDiffusion;
    for (const auto& [k, v] : raw) {
      if (!whole && k != "projector.projector.weight") continue;
      sd.emplace("stable_diffusion_head." + (k.rfind("vae.", 0) == 0 ? modernize_vae_name(k) : k), v);
    }
    check_against_layout(sd, expected(whole ? kDiffusion : kConditionProjector), {},
                         "'" + dir_ + "/stable_diffusion_head'");
    add_prefixed(all, sd, "");
  }
  return all;
}

}  // namespace dl::io
