#include "train/scratch.h"

#include <cmath>
#include <filesystem>
#include <map>

#include "core/error.h"
#include "core/random.h"
#include "io/atomic_file.h"
#include "io/checkpoint_layout.h"
#include "io/safetensors.h"
#include "text/tokenizer_trainer.h"
#include "train/data.h"

namespace dl::train {

namespace fs = std::filesystem;

namespace {

Tensor normal(const Shape& shape, double std, Rng& rng) {
  Tensor t = Tensor::empty(shape);
  for (int64_t i = 0; i < t.numel(); ++i) t.f32()[i] = float(std * rng.normal());
  return t;
}
Tensor uniform(const Shape& shape, double bound, Rng& rng) {
  Tensor t = Tensor::empty(shape);
  for (int64_t i = 0; i < t.numel(); ++i) t.f32()[i] = float((2.0 * rng.uniform() - 1.0) * bound);
  return t;
}
Tensor constant(const Shape& shape, float v) { return Tensor::full(shape, v); }

int64_t fan_in(const Shape& weight) {
  int64_t f = 1;
  for (size_t i = 1; i < weight.size(); ++i) f *= weight[i];
  return f;
}

// PyTorch's defaults for every module of a diffusers model: 1-D weights are norms.
std::map<std::string, Tensor> pytorch_default(const io::Layout& layout, const std::string& prefix, Rng& rng) {
  std::map<std::string, Shape> shapes(layout.begin(), layout.end());
  std::map<std::string, Tensor> out;
  for (const auto& [name, shape] : layout) {
    if (name.ends_with(".weight") && shape.size() >= 2) {
      out[prefix + name] = uniform(shape, 1.0 / std::sqrt(double(fan_in(shape))), rng);
    } else if (name.ends_with(".weight")) {
      out[prefix + name] = constant(shape, 1.f);
    } else if (name.ends_with(".bias")) {
      const std::string w = name.substr(0, name.size() - 5) + ".weight";
      auto it = shapes.find(w);
      if (it != shapes.end() && it->second.size() >= 2)
        out[prefix + name] = uniform(shape, 1.0 / std::sqrt(double(fan_in(it->second))), rng);
      else
        out[prefix + name] = constant(shape, 0.f);
    } else if (name.ends_with(".positional_embedding")) {  // AttentionPooling: randn / sqrt(width)
      out[prefix + name] = normal(shape, 1.0 / std::sqrt(double(shape.back())), rng);
    } else {
      fail("no initialisation rule for '", name, "'");
    }
  }
  return out;
}

std::map<std::string, Tensor> llama_init(const io::LlamaConfig& c, Rng& rng) {
  std::map<std::string, Tensor> out;
  for (const auto& [name, shape] : io::llama_layout(c))
    out[name] = shape.size() >= 2 ? normal(shape, 0.02, rng) : constant(shape, 1.f);
  return out;
}

std::map<std::string, Tensor> clip_init(const io::ClipVisionConfig& c, double position_std, Rng& rng) {
  const double D = double(c.hidden_size), L = double(c.num_hidden_layers);
  const double in_proj = std::pow(D, -0.5) * std::pow(2.0 * L, -0.5), out_proj = std::pow(D, -0.5),
               fc1 = std::pow(2.0 * D, -0.5);
  std::map<std::string, Tensor> out;
  for (const auto& [name, shape] : io::clip_vision_layout(c)) {
    const std::string n = "clip_vision_model." + name;
    Tensor t;
    if (name.ends_with("class_embedding")) {
      t = normal(shape, std::pow(D, -0.5), rng);
    } else if (name.ends_with("patch_embedding.weight")) {
      t = normal(shape, 0.02, rng);
    } else if (name.ends_with("position_embedding.weight")) {
      t = normal(shape, position_std, rng);
    } else if (name.ends_with(".bias")) {
      t = constant(shape, 0.f);
    } else if (shape.size() == 1) {
      t = constant(shape, 1.f);  // LayerNorm
    } else if (name.ends_with("q_proj.weight") || name.ends_with("k_proj.weight") ||
               name.ends_with("v_proj.weight") || name.ends_with("fc2.weight")) {
      t = normal(shape, in_proj, rng);
    } else if (name.ends_with("out_proj.weight")) {
      t = normal(shape, out_proj, rng);
    } else if (name.ends_with("fc1.weight")) {
      t = normal(shape, fc1, rng);
    } else {
      fail("no initialisation rule for CLIP tensor '", name, "'");
    }
    out[n] = t;
  }
  return out;
}

void write_text(const std::string& path, const std::string& text) {
  io::write_file_atomically(path, [&](std::ostream& f) { f << text; });
}

}  // namespace

void create_model_dir(const std::string& dir, ScratchSpec spec, const std::string& sp_model, uint64_t seed) {
  fs::create_directories(dir);
  const auto ids = text::write_tokenizer_files(dir, sp_model, spec.llm.max_position_embeddings);
  io::DreamLLMConfig cfg;
  cfg.llm = spec.llm;
  cfg.llm.vocab_size = ids.at("[PAD]") + 8;  // the SentencePiece pieces, then the eight added tokens
  if (cfg.llm.num_key_value_heads == 0) cfg.llm.num_key_value_heads = cfg.llm.num_attention_heads;
  cfg.special_tokens = ids;
  cfg.num_dream_queries = spec.dream_queries;
  cfg.clip_select_layer = spec.clip_select_layer;
  cfg.loss_weight_lm = spec.loss_weight_lm;
  cfg.loss_weight_vm = spec.loss_weight_vm;
  DL_CHECK(spec.unet.in_channels == spec.vae.latent_channels, "scratch model: the UNet's ", spec.unet.in_channels,
           " input channels differ from the VAE's ", spec.vae.latent_channels, " latent channels");
  // Every config goes through its own parser before anything is written, so an inconsistent spec fails early.
  io::parse_dreamllm_config(io::to_json(cfg), "the scratch config");
  io::parse_clip_vision_config(io::to_json(spec.clip), "the scratch CLIP config");
  io::parse_unet_config(io::to_json(spec.unet), "the scratch UNet config");
  io::parse_vae_config(io::to_json(spec.vae), "the scratch VAE config");
  io::parse_scheduler_config(io::to_json(spec.scheduler), "the scratch scheduler config");
  write_text(dir + "/config.json", io::to_json(cfg));
  for (const char* sub : {"clip_vision", "unet", "vae", "scheduler"}) fs::create_directories(dir + "/" + sub);
  write_text(dir + "/clip_vision/config.json", io::to_json(spec.clip));
  write_text(dir + "/unet/config.json", io::to_json(spec.unet));
  write_text(dir + "/vae/config.json", io::to_json(spec.vae));
  write_text(dir + "/scheduler/scheduler_config.json", io::to_json(spec.scheduler));

  // One generator per component, so a change to one component's size leaves the others' draws alone.
  Rng llm_rng(derive_seed(seed, 1)), clip_rng(derive_seed(seed, 2)), dream_rng(derive_seed(seed, 3)),
      unet_rng(derive_seed(seed, 4)), vae_rng(derive_seed(seed, 5)), proj_rng(derive_seed(seed, 6));
  io::write_safetensors(dir + "/model.safetensors", llama_init(cfg.llm, llm_rng), {{"format", "pt"}});
  const int64_t D = cfg.llm.hidden_size, Dv = spec.clip.hidden_size, C = spec.unet.cross_attention_dim;
  auto clip = clip_init(spec.clip, spec.clip_position_std, clip_rng);
  clip["projector.projector.weight"] = uniform({D, Dv}, 1.0 / std::sqrt(double(Dv)), proj_rng);
  clip["projector.projector.bias"] = uniform({D}, 1.0 / std::sqrt(double(Dv)), proj_rng);
  io::write_safetensors(dir + "/clip_vision_embedding.safetensors", clip, {{"format", "pt"}});
  io::write_safetensors(dir + "/dream_embedding.safetensors",
                        {{"dream_queries", normal({1, spec.dream_queries, D}, 0.02, dream_rng)}}, {{"format", "pt"}});
  auto head = pytorch_default(io::unet_layout(spec.unet), "unet.", unet_rng);
  for (auto& [k, v] : pytorch_default(io::vae_layout(spec.vae), "vae.", vae_rng)) head[k] = v;
  head["projector.projector.weight"] = uniform({C, D}, 1.0 / std::sqrt(double(D)), proj_rng);
  io::write_safetensors(dir + "/stable_diffusion_head.safetensors", head, {{"format", "pt"}});
}

}  // namespace dl::train
