#include "models/unet.h"

#include <cmath>

#include "core/error.h"
#include "nn/functional.h"

namespace dl::models {

using nn::Var;

namespace sd {

Linear::Linear(const ParameterSet& p, const std::string& name, bool has_bias) : weight(p.at(name + ".weight")) {
  if (has_bias) bias = p.at(name + ".bias");
}

Var Linear::operator()(const Var& x) const { return nn::linear(x, weight, bias.defined() ? &bias : nullptr); }

Conv2d::Conv2d(const ParameterSet& p, const std::string& name, int stride_, int padding_)
    : weight(p.at(name + ".weight")), bias(p.at(name + ".bias")), stride(stride_), padding(padding_) {}

Var Conv2d::operator()(const Var& x) const { return nn::conv2d(x, weight, &bias, stride, padding); }

GroupNorm::GroupNorm(const ParameterSet& p, const std::string& name, int64_t groups_, float eps_)
    : weight(p.at(name + ".weight")), bias(p.at(name + ".bias")), groups(int(groups_)), eps(eps_) {}

Var GroupNorm::operator()(const Var& x) const { return nn::group_norm(x, groups, &weight, &bias, eps); }

ResnetBlock2D::ResnetBlock2D(const ParameterSet& p, const std::string& n, int64_t groups, float eps, bool has_temb)
    : norm1(p, n + ".norm1", groups, eps),
      norm2(p, n + ".norm2", groups, eps),
      conv1(p, n + ".conv1", 1, 1),
      conv2(p, n + ".conv2", 1, 1) {
  if (has_temb) time_emb_proj.emplace(p, n + ".time_emb_proj");
  // diffusers adds the 1x1 shortcut exactly when the channel count changes, so its presence is the signal.
  if (p.contains(n + ".conv_shortcut.weight")) conv_shortcut.emplace(p, n + ".conv_shortcut", 1, 0);
}

Var ResnetBlock2D::operator()(const Var& x, const Var* temb_act) const {
  Var h = conv1(nn::silu(norm1(x)));
  if (time_emb_proj && temb_act) {
    Var t = (*time_emb_proj)(*temb_act);  // [B, C]
    h = nn::add(h, nn::reshape(t, {t.shape()[0], t.shape()[1], 1, 1}));
  }
  h = conv2(nn::silu(norm2(h)));
  const Var shortcut = conv_shortcut ? (*conv_shortcut)(x) : x;
  DL_CHECK(shortcut.shape() == h.shape(), "resnet block: input ", x.value().describe(), " does not match its ",
           h.shape()[1], "-channel output and has no shortcut convolution");
  return nn::add(shortcut, h);
}

Downsample2D::Downsample2D(const ParameterSet& p, const std::string& name, int padding)
    : conv(p, name + ".conv", 2, padding), pad_asymmetric(padding == 0) {}

Var Downsample2D::operator()(const Var& x) const {
  if (!pad_asymmetric) return conv(x);
  const Shape& s = x.shape();
  Var right(Tensor::zeros({s[0], s[1], s[2], 1}));
  Var padded = nn::concat({x, right}, 3);
  Var bottom(Tensor::zeros({s[0], s[1], 1, s[3] + 1}));
  return conv(nn::concat({padded, bottom}, 2));
}

Upsample2D::Upsample2D(const ParameterSet& p, const std::string& name) : conv(p, name + ".conv", 1, 1) {}

Var Upsample2D::operator()(const Var& x, int64_t out_h, int64_t out_w) const {
  if (out_h <= 0) return conv(nn::upsample_nearest2x(x));
  return conv(nn::upsample_nearest(x, out_h, out_w));
}

Var multi_head_attention(const Var& q, const Var& k, const Var& v, int64_t heads) {
  const int64_t B = q.shape()[0], Tq = q.shape()[1], C = q.shape()[2], Tk = k.shape()[1], hd = C / heads;
  auto split = [&](const Var& t, int64_t T) { return nn::transpose(nn::reshape(t, {B, T, heads, hd}), 1, 2); };
  Var a = nn::attention(split(q, Tq), split(k, Tk), split(v, Tk), {}, 1.f / std::sqrt(float(hd)));
  return nn::reshape(nn::transpose(a, 1, 2), {B, Tq, C});
}

BasicTransformerBlock::BasicTransformerBlock(const ParameterSet& p, const std::string& n)
    : norm1_w(p.at(n + ".norm1.weight")),
      norm1_b(p.at(n + ".norm1.bias")),
      norm2_w(p.at(n + ".norm2.weight")),
      norm2_b(p.at(n + ".norm2.bias")),
      norm3_w(p.at(n + ".norm3.weight")),
      norm3_b(p.at(n + ".norm3.bias")),
      q1(p, n + ".attn1.to_q", false),
      k1(p, n + ".attn1.to_k", false),
      v1(p, n + ".attn1.to_v", false),
      out1(p, n + ".attn1.to_out.0"),
      q2(p, n + ".attn2.to_q", false),
      k2(p, n + ".attn2.to_k", false),
      v2(p, n + ".attn2.to_v", false),
      out2(p, n + ".attn2.to_out.0"),
      ff_proj(p, n + ".ff.net.0.proj"),
      ff_out(p, n + ".ff.net.2") {}

Var BasicTransformerBlock::operator()(const Var& x, const Var& context, int64_t heads) const {
  constexpr float kEps = 1e-5f;  // BasicTransformerBlock's LayerNorm default
  Var y = nn::layer_norm(x, &norm1_w, &norm1_b, kEps);
  Var h = nn::add(x, out1(multi_head_attention(q1(y), k1(y), v1(y), heads)));
  y = nn::layer_norm(h, &norm2_w, &norm2_b, kEps);
  h = nn::add(h, out2(multi_head_attention(q2(y), k2(context), v2(context), heads)));
  y = nn::layer_norm(h, &norm3_w, &norm3_b, kEps);
  return nn::add(h, ff_out(nn::geglu(ff_proj(y))));
}

Transformer2D::Transformer2D(const ParameterSet& p, const std::string& n, int64_t groups, int64_t layers,
                             bool linear, int64_t heads_)
    : norm(p, n + ".norm", groups, 1e-6f), linear_projection(linear), heads(heads_) {
  if (linear) {
    proj_in_linear = Linear(p, n + ".proj_in");
    proj_out_linear = Linear(p, n + ".proj_out");
  } else {
    proj_in_conv = Conv2d(p, n + ".proj_in", 1, 0);
    proj_out_conv = Conv2d(p, n + ".proj_out", 1, 0);
  }
  for (int64_t l = 0; l < layers; ++l) blocks.emplace_back(p, n + ".transformer_blocks." + std::to_string(l));
}

Var Transformer2D::operator()(const Var& x, const Var& context) const {
  const int64_t B = x.shape()[0], C = x.shape()[1], H = x.shape()[2], W = x.shape()[3];
  auto to_tokens = [&](const Var& t) { return nn::reshape(nn::permute(t, {0, 2, 3, 1}), {B, H * W, C}); };
  auto to_map = [&](const Var& t) { return nn::permute(nn::reshape(t, {B, H, W, C}), {0, 3, 1, 2}); };
  Var h = norm(x);
  h = linear_projection ? proj_in_linear(to_tokens(h)) : to_tokens(proj_in_conv(h));
  for (const auto& b : blocks) h = b(h, context, heads);
  h = linear_projection ? to_map(proj_out_linear(h)) : proj_out_conv(to_map(h));
  return nn::add(h, x);
}

TextTimeEmbedding::TextTimeEmbedding(const ParameterSet& p, const std::string& n, int64_t heads_)
    : norm1_w(p.at(n + ".norm1.weight")),
      norm1_b(p.at(n + ".norm1.bias")),
      position(p.at(n + ".pool.positional_embedding")),
      norm2_w(p.at(n + ".norm2.weight")),
      norm2_b(p.at(n + ".norm2.bias")),
      k(p, n + ".pool.k_proj"),
      q(p, n + ".pool.q_proj"),
      v(p, n + ".pool.v_proj"),
      proj(p, n + ".proj"),
      heads(heads_) {}

Var TextTimeEmbedding::operator()(const Var& context) const {
  constexpr float kEps = 1e-5f;  // nn.LayerNorm's default
  const Var x = nn::layer_norm(context, &norm1_w, &norm1_b, kEps);
  const Var cls = nn::add(nn::mean(x, 1, true), position);  // [B, 1, D]
  const Var tokens = nn::concat({cls, x}, 1);
  // diffusers scales q and k by head_dim^-1/4 each, which is the usual head_dim^-1/2 on their product.
  const Var pooled = multi_head_attention(q(cls), k(tokens), v(tokens), heads);  // [B, 1, D]
  const Var t = proj(nn::reshape(pooled, {pooled.shape()[0], pooled.shape()[2]}));
  return nn::layer_norm(t, &norm2_w, &norm2_b, kEps);
}

}  // namespace sd

UNet::UNet(const io::UNetConfig& c, const ParameterSet& p, const std::string& prefix) : config_(c) {
  const size_t n = c.block_out_channels.size();
  DL_CHECK(n >= 1 && c.down_block_types.size() == n && c.up_block_types.size() == n && c.layers_per_block.size() == n &&
               c.num_attention_heads.size() == n && c.transformer_layers_per_block.size() == n,
           "unet: the per-block config lists do not all have ", n, " entries");
  const int64_t G = c.norm_num_groups;
  const float eps = c.norm_eps;
  conv_in_ = sd::Conv2d(p, prefix + "conv_in", 1, 1);
  time_1_ = sd::Linear(p, prefix + "time_embedding.linear_1");
  time_2_ = sd::Linear(p, prefix + "time_embedding.linear_2");
  if (c.addition_embed_type == "text")
    add_embedding_.emplace(p, prefix + "add_embedding", c.addition_embed_type_num_heads);
  auto transformer = [&](const std::string& name, int64_t layers, int64_t heads) {
    return sd::Transformer2D(p, name, G, layers, c.use_linear_projection, heads);
  };
  for (size_t i = 0; i < n; ++i) {
    const std::string b = prefix + "down_blocks." + std::to_string(i) + ".";
    Block blk;
    for (int64_t j = 0; j < c.layers_per_block[i]; ++j) {
      blk.resnets.emplace_back(p, b + "resnets." + std::to_string(j), G, eps, true);
      if (c.down_block_types[i] == "CrossAttnDownBlock2D")
        blk.attentions.push_back(transformer(b + "attentions." + std::to_string(j), c.transformer_layers_per_block[i],
                                             c.num_attention_heads[i]));
    }
    if (i + 1 < n) blk.downsampler.emplace(p, b + "downsamplers.0", int(c.downsample_padding));
    down_.push_back(std::move(blk));
  }
  const std::string m = prefix + "mid_block.";
  mid_.resnets.emplace_back(p, m + "resnets.0", G, eps, true);
  mid_.attentions.push_back(
      transformer(m + "attentions.0", c.transformer_layers_per_block[n - 1], c.num_attention_heads[n - 1]));
  mid_.resnets.emplace_back(p, m + "resnets.1", G, eps, true);
  for (size_t i = 0; i < n; ++i) {
    const size_t r = n - 1 - i;  // up block i mirrors down block r
    const std::string b = prefix + "up_blocks." + std::to_string(i) + ".";
    Block blk;
    for (int64_t j = 0; j < c.layers_per_block[r] + 1; ++j) {
      blk.resnets.emplace_back(p, b + "resnets." + std::to_string(j), G, eps, true);
      if (c.up_block_types[i] == "CrossAttnUpBlock2D")
        blk.attentions.push_back(transformer(b + "attentions." + std::to_string(j), c.transformer_layers_per_block[r],
                                             c.num_attention_heads[r]));
    }
    if (i + 1 < n) blk.upsampler.emplace(p, b + "upsamplers.0");
    up_.push_back(std::move(blk));
  }
  norm_out_ = sd::GroupNorm(p, prefix + "conv_norm_out", G, eps);
  conv_out_ = sd::Conv2d(p, prefix + "conv_out", 1, 1);
}

Tensor UNet::timestep_features(const Tensor& timesteps, int64_t batch) const {
  DL_CHECK(timesteps.dim() == 1 && (timesteps.size(0) == batch || timesteps.size(0) == 1), "unet: timesteps ",
           timesteps.describe(), " are not [", batch, "] or [1]");
  const std::vector<float> t = timesteps.to_vector();
  const int64_t dim = config_.block_out_channels[0], half = dim / 2;
  // Every step in f32 as diffusers computes it; the exponent divides by (half - freq_shift).
  const float log_period = float(-std::log(10000.0));
  std::vector<float> freq(static_cast<size_t>(half));
  for (int64_t i = 0; i < half; ++i)
    freq[size_t(i)] = std::exp(log_period * float(i) / float(half - config_.freq_shift));
  std::vector<float> out(size_t(batch * dim), 0.f);
  for (int64_t b = 0; b < batch; ++b) {
    const float tb = t[t.size() == 1 ? 0 : size_t(b)];
    float* row = out.data() + b * dim;
    const int64_t sin_at = config_.flip_sin_to_cos ? half : 0, cos_at = config_.flip_sin_to_cos ? 0 : half;
    for (int64_t i = 0; i < half; ++i) {
      const float a = tb * freq[size_t(i)];
      row[sin_at + i] = std::sin(a);
      row[cos_at + i] = std::cos(a);
    }
    // An odd dim leaves the last feature zero (diffusers pads it).
  }
  return Tensor::from_vector(out, {batch, dim});
}

Var UNet::forward(const Var& sample, const Tensor& timesteps, const Var& encoder_hidden_states) const {
  return run(sample, timesteps, encoder_hidden_states, nullptr, true);
}

Var UNet::forward_cached(const Var& sample, const Tensor& timesteps, const Var& encoder_hidden_states,
                         DeepCache& cache, bool refresh) const {
  DL_CHECK(!nn::grad_enabled(), "unet: deep-feature reuse is for inference only");
  DL_CHECK(down_.size() >= 2, "unet: deep-feature reuse needs at least two resolution levels, the model has ",
           down_.size());
  if (!refresh)
    DL_CHECK(cache.deep.defined(), "unet: no deep features stored yet (the first step must refresh)");
  return run(sample, timesteps, encoder_hidden_states, &cache, refresh);
}

Var UNet::run(const Var& sample, const Tensor& timesteps, const Var& encoder_hidden_states, DeepCache* cache,
              bool refresh) const {
  const auto& c = config_;
  const Tensor& x = sample.value();
  DL_CHECK(x.dim() == 4 && x.size(1) == c.in_channels, "unet: sample ", x.describe(), " is not [B, ", c.in_channels,
           ", h, w]");
  const int64_t B = x.size(0);
  DL_CHECK(B > 0 && x.size(2) > 0 && x.size(3) > 0, "unet: sample ", x.describe(), " is empty");
  const Tensor& ctx = encoder_hidden_states.value();
  DL_CHECK(ctx.dim() == 3 && ctx.size(0) == B && ctx.size(1) > 0 && ctx.size(2) == c.cross_attention_dim,
           "unet: encoder_hidden_states ", ctx.describe(), " are not [", B, ", S, ", c.cross_attention_dim, "]");

  Var temb = time_2_(nn::silu(time_1_(Var(timestep_features(timesteps, B)))));
  if (add_embedding_) temb = nn::add(temb, (*add_embedding_)(encoder_hidden_states));
  const Var temb_act = nn::silu(temb);  // every resnet projects SiLU(temb)

  Var h = conv_in_(sample);
  std::vector<Var> skips{h};
  const bool reuse = cache && !refresh;
  for (size_t b = 0; b < down_.size(); ++b) {
    const Block& blk = down_[b];
    for (size_t j = 0; j < blk.resnets.size(); ++j) {
      h = blk.resnets[j](h, &temb_act);
      if (!blk.attentions.empty()) h = blk.attentions[j](h, encoder_hidden_states);
      skips.push_back(h);
    }
    if (reuse) break;  // the last up block's skips are all in: conv_in's and the first down block's
    if (blk.downsampler) {
      h = (*blk.downsampler)(h);
      skips.push_back(h);
    }
  }
  if (!reuse) {
    h = mid_.resnets[0](h, &temb_act);
    h = mid_.attentions[0](h, encoder_hidden_states);
    h = mid_.resnets[1](h, &temb_act);
  }
  for (size_t b = reuse ? up_.size() - 1 : 0; b < up_.size(); ++b) {
    const Block& blk = up_[b];
    if (cache && b + 1 == up_.size()) {
      if (reuse) {
        DL_CHECK(cache->deep.dim() == 4 && cache->deep.size(0) == h.shape()[0] &&
                     cache->deep.size(2) == h.shape()[2] && cache->deep.size(3) == h.shape()[3],
                 "unet: stored deep features ", cache->deep.describe(), " do not fit this sample ",
                 sample.value().describe());
        h = Var(cache->deep);
      } else {
        cache->deep = h.value();
      }
    }
    for (size_t j = 0; j < blk.resnets.size(); ++j) {
      h = nn::concat({h, skips.back()}, 1);
      skips.pop_back();
      h = blk.resnets[j](h, &temb_act);
      if (!blk.attentions.empty()) h = blk.attentions[j](h, encoder_hidden_states);
    }
    // The next skip's size is 2x exactly when the side was even at this depth; otherwise meet it.
    if (blk.upsampler) h = (*blk.upsampler)(h, skips.back().shape()[2], skips.back().shape()[3]);
  }
  return conv_out_(nn::silu(norm_out_(h)));
}

}  // namespace dl::models
