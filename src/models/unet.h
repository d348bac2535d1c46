// Stable Diffusion's denoiser, diffusers 0.24 UNet2DConditionModel, for the SD 1.x/2.x family that
// io::unet_layout describes (CrossAttn/plain down and up blocks, UNetMidBlock2DCrossAttn, GEGLU transformer
// blocks, linear or 1x1-conv projections, optionally the "text" addition embedding). The building blocks in `sd`
// are shared with the VAE.
#pragma once
#include <optional>
#include <string>
#include <vector>

#include "io/config.h"
#include "models/weights.h"

namespace dl::models {

namespace sd {

struct Linear {
  nn::Var weight, bias;  // bias undefined when the module has none
  Linear() = default;
  Linear(const ParameterSet& p, const std::string& name, bool has_bias = true);
  nn::Var operator()(const nn::Var& x) const;
};

struct Conv2d {
  nn::Var weight, bias;
  int stride = 1, padding = 0;
  Conv2d() = default;
  Conv2d(const ParameterSet& p, const std::string& name, int stride, int padding);
  nn::Var operator()(const nn::Var& x) const;
};

struct GroupNorm {
  nn::Var weight, bias;
  int groups = 1;
  float eps = 1e-6f;
  GroupNorm() = default;
  GroupNorm(const ParameterSet& p, const std::string& name, int64_t groups, float eps);
  nn::Var operator()(const nn::Var& x) const;
};

// ResnetBlock2D; `temb_act` is SiLU(time embedding) [B, T] or null where the block has no time projection (VAE).
struct ResnetBlock2D {
  GroupNorm norm1, norm2;
  Conv2d conv1, conv2;
  std::optional<Linear> time_emb_proj;
  std::optional<Conv2d> conv_shortcut;
  ResnetBlock2D(const ParameterSet& p, const std::string& name, int64_t groups, float eps, bool has_temb);
  nn::Var operator()(const nn::Var& x, const nn::Var* temb_act) const;
};

// Downsample2D: 3x3 stride-2 conv. padding 0 is diffusers' VAE form: zero pad right and bottom by one first.
struct Downsample2D {
  Conv2d conv;
  bool pad_asymmetric = false;
  Downsample2D(const ParameterSet& p, const std::string& name, int padding);
  nn::Var operator()(const nn::Var& x) const;
};

// Upsample2D: nearest x2 (or nearest to out_h x out_w when given, as the UNet does to meet an odd-sized skip
// tensor), then a 3x3 conv.
struct Upsample2D {
  Conv2d conv;
  Upsample2D(const ParameterSet& p, const std::string& name);
  nn::Var operator()(const nn::Var& x, int64_t out_h = 0, int64_t out_w = 0) const;
};

// Multi-head scaled dot-product attention over token-major tensors: q [B, Tq, C], k/v [B, Tk, C] -> [B, Tq, C],
// head dim C / heads, scale head_dim^-0.5.
nn::Var multi_head_attention(const nn::Var& q, const nn::Var& k, const nn::Var& v, int64_t heads);

struct BasicTransformerBlock {
  nn::Var norm1_w, norm1_b, norm2_w, norm2_b, norm3_w, norm3_b;
  Linear q1, k1, v1, out1, q2, k2, v2, out2, ff_proj, ff_out;
  BasicTransformerBlock(const ParameterSet& p, const std::string& name);
  nn::Var operator()(const nn::Var& x, const nn::Var& context, int64_t heads) const;
};

// Transformer2DModel on a feature map: GroupNorm (eps 1e-6) -> proj_in -> blocks -> proj_out -> + residual.
struct Transformer2D {
  GroupNorm norm;
  bool linear_projection = true;
  Linear proj_in_linear, proj_out_linear;
  Conv2d proj_in_conv, proj_out_conv;
  std::vector<BasicTransformerBlock> blocks;
  int64_t heads = 1;
  Transformer2D(const ParameterSet& p, const std::string& name, int64_t groups, int64_t layers, bool linear_projection,
                int64_t heads);
  nn::Var operator()(const nn::Var& x, const nn::Var& context) const;
};

// TextTimeEmbedding (diffusers addition_embed_type "text"): LayerNorm, AttentionPooling (a class token, the
// context's mean plus a learned position, attends over itself and the context; no output projection), a linear
// map to the time-embedding width and a LayerNorm. [B, S, D] -> [B, T].
struct TextTimeEmbedding {
  nn::Var norm1_w, norm1_b, position, norm2_w, norm2_b;
  Linear k, q, v, proj;
  int64_t heads = 1;
  TextTimeEmbedding(const ParameterSet& p, const std::string& name, int64_t heads);
  nn::Var operator()(const nn::Var& context) const;
};

}  // namespace sd

class UNet {
 public:
  // Weights named <prefix><diffusers name>, e.g. prefix "stable_diffusion_head.unet.".
  UNet(const io::UNetConfig& config, const ParameterSet& params, const std::string& prefix);

  const io::UNetConfig& config() const { return config_; }
  // sample [B, in_channels, h, w] (any positive h, w; odd sides are met as diffusers does, by upsampling to the
  // skip tensor's size), timesteps [B] or [1] (any real values),
  // encoder_hidden_states [B, S, cross_attention_dim] -> predicted noise [B, out_channels, h, w].
  nn::Var forward(const nn::Var& sample, const Tensor& timesteps, const nn::Var& encoder_hidden_states) const;

  // Reuse of deep features across neighbouring sampling steps (the DeepCache idea, Ma et al. 2023): the input of
  // the last (full-resolution) up block changes slowly from one step to the next, so a step may take it from an
  // earlier step and compute only conv_in, the first down block (whose outputs are the last up block's skips), the
  // last up block and the output head. `refresh` computes everything and stores that input in `cache`; otherwise
  // the stored one is used (the sample's batch and size must match the step that stored it). Inference only.
  struct DeepCache {
    Tensor deep;  // the last up block's input at the last refresh
  };
  nn::Var forward_cached(const nn::Var& sample, const Tensor& timesteps, const nn::Var& encoder_hidden_states,
                         DeepCache& cache, bool refresh) const;

  // The sinusoidal timestep features [B, block_out_channels[0]] in f32 (diffusers get_timestep_embedding).
  Tensor timestep_features(const Tensor& timesteps, int64_t batch) const;

 private:
  struct Block {
    std::vector<sd::ResnetBlock2D> resnets;
    std::vector<sd::Transformer2D> attentions;  // empty for plain blocks
    std::optional<sd::Downsample2D> downsampler;
    std::optional<sd::Upsample2D> upsampler;
  };
  io::UNetConfig config_;
  sd::Conv2d conv_in_, conv_out_;
  sd::Linear time_1_, time_2_;
  std::optional<sd::TextTimeEmbedding> add_embedding_;
  std::vector<Block> down_, up_;
  Block mid_;
  sd::GroupNorm norm_out_;

  nn::Var run(const nn::Var& sample, const Tensor& timesteps, const nn::Var& encoder_hidden_states, DeepCache* cache,
              bool refresh) const;
};

}  // namespace dl::models
