#include "models/vae.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "core/ops.h"
#include "nn/functional.h"

namespace dl::models {

using nn::Var;

namespace {
constexpr float kEps = 1e-6f;  // every VAE norm
}

Vae::MidBlock Vae::mid_block(const ParameterSet& p, const std::string& n) const {
  const int64_t G = config_.norm_num_groups;
  MidBlock m;
  m.resnets.emplace_back(p, n + "resnets.0", G, kEps, false);
  m.resnets.emplace_back(p, n + "resnets.1", G, kEps, false);
  const std::string a = n + "attentions.0.";
  m.attn_norm = sd::GroupNorm(p, a + "group_norm", G, kEps);
  m.to_q = sd::Linear(p, a + "to_q");
  m.to_k = sd::Linear(p, a + "to_k");
  m.to_v = sd::Linear(p, a + "to_v");
  m.to_out = sd::Linear(p, a + "to_out.0");
  return m;
}

Var Vae::MidBlock::operator()(const Var& x) const {
  Var h = resnets[0](x, nullptr);
  const int64_t B = h.shape()[0], C = h.shape()[1], H = h.shape()[2], W = h.shape()[3];
  Var t = nn::transpose(nn::reshape(attn_norm(h), {B, C, H * W}), 1, 2);  // pixels as tokens
  Var a = to_out(sd::multi_head_attention(to_q(t), to_k(t), to_v(t), 1));
  h = nn::add(nn::reshape(nn::transpose(a, 1, 2), {B, C, H, W}), h);
  return resnets[1](h, nullptr);
}

Vae::Vae(const io::VaeConfig& c, const ParameterSet& p, const std::string& prefix) : config_(c) {
  const size_t n = c.block_out_channels.size();
  DL_CHECK(n >= 1, "vae: block_out_channels is empty");
  const int64_t G = c.norm_num_groups;
  enc_conv_in_ = sd::Conv2d(p, prefix + "encoder.conv_in", 1, 1);
  for (size_t i = 0; i < n; ++i) {
    const std::string b = prefix + "encoder.down_blocks." + std::to_string(i) + ".";
    Block blk;
    for (int64_t j = 0; j < c.layers_per_block; ++j)
      blk.resnets.emplace_back(p, b + "resnets." + std::to_string(j), G, kEps, false);
    if (i + 1 < n) blk.downsampler.emplace(p, b + "downsamplers.0", 0);
    down_.push_back(std::move(blk));
  }
  mids_.push_back(mid_block(p, prefix + "encoder.mid_block."));
  enc_norm_out_ = sd::GroupNorm(p, prefix + "encoder.conv_norm_out", G, kEps);
  enc_conv_out_ = sd::Conv2d(p, prefix + "encoder.conv_out", 1, 1);
  quant_conv_ = sd::Conv2d(p, prefix + "quant_conv", 1, 0);
  post_quant_conv_ = sd::Conv2d(p, prefix + "post_quant_conv", 1, 0);
  dec_conv_in_ = sd::Conv2d(p, prefix + "decoder.conv_in", 1, 1);
  mids_.push_back(mid_block(p, prefix + "decoder.mid_block."));
  for (size_t i = 0; i < n; ++i) {
    const std::string b = prefix + "decoder.up_blocks." + std::to_string(i) + ".";
    Block blk;
    for (int64_t j = 0; j < c.layers_per_block + 1; ++j)
      blk.resnets.emplace_back(p, b + "resnets." + std::to_string(j), G, kEps, false);
    if (i + 1 < n) blk.upsampler.emplace(p, b + "upsamplers.0");
    up_.push_back(std::move(blk));
  }
  dec_norm_out_ = sd::GroupNorm(p, prefix + "decoder.conv_norm_out", G, kEps);
  dec_conv_out_ = sd::Conv2d(p, prefix + "decoder.conv_out", 1, 1);
}

Vae::Posterior Vae::encode(const Var& image) const {
  const Tensor& x = image.value();
  DL_CHECK(x.dim() == 4 && x.size(0) > 0 && x.size(1) == config_.in_channels && x.size(2) > 0 && x.size(3) > 0,
           "vae: image ", x.describe(), " is not [B, ", config_.in_channels, ", H, W]");
  Var h = enc_conv_in_(image);
  for (const Block& blk : down_) {
    for (const auto& r : blk.resnets) h = r(h, nullptr);
    if (blk.downsampler) h = (*blk.downsampler)(h);
  }
  h = mids_[0](h);
  h = quant_conv_(enc_conv_out_(nn::silu(enc_norm_out_(h))));
  const int64_t L = config_.latent_channels;
  Posterior post;
  post.mean = nn::slice(h, 1, 0, L);
  post.logvar_raw = nn::slice(h, 1, L, 2 * L);
  Tensor logvar = post.logvar_raw.value().contiguous().clone();
  float* lv = logvar.f32();
  for (int64_t i = 0; i < logvar.numel(); ++i) lv[i] = std::clamp(lv[i], -30.f, 20.f);
  post.logvar = Var(logvar);
  return post;
}

Var Vae::decode(const Var& latents) const {
  const Tensor& z = latents.value();
  DL_CHECK(z.dim() == 4 && z.size(0) > 0 && z.size(1) == config_.latent_channels && z.size(2) > 0 && z.size(3) > 0,
           "vae: latents ", z.describe(), " are not [B, ", config_.latent_channels, ", h, w]");
  Var h = dec_conv_in_(post_quant_conv_(latents));
  h = mids_[1](h);
  for (const Block& blk : up_) {
    for (const auto& r : blk.resnets) h = r(h, nullptr);
    if (blk.upsampler) h = (*blk.upsampler)(h);
  }
  return dec_conv_out_(nn::silu(dec_norm_out_(h)));
}

namespace {

// b[.., y, :] = a[.., end - extent + y, :] * (1 - y / extent) + b[.., y, :] * (y / extent) for the first rows of b
// (vertical) or the same along columns (horizontal), as diffusers' blend_v / blend_h.
void blend(const Tensor& a, Tensor& b, int64_t extent, bool vertical) {
  const int64_t ad = vertical ? a.size(2) : a.size(3), bd = vertical ? b.size(2) : b.size(3);
  extent = std::min({ad, bd, extent});
  const int64_t planes = b.size(0) * b.size(1), AH = a.size(2), AW = a.size(3), BH = b.size(2), BW = b.size(3);
  for (int64_t p = 0; p < planes; ++p)
    for (int64_t y = 0; y < extent; ++y) {
      // Python computes the weights in double; PyTorch then multiplies by them as f32 scalars.
      const double r = double(y) / double(extent);
      const float wb = float(r), wa = float(1.0 - r);
      if (vertical) {
        const float* ar = a.f32() + (p * AH + AH - extent + y) * AW;
        float* br = b.f32() + (p * BH + y) * BW;
        for (int64_t x = 0; x < std::min(AW, BW); ++x) br[x] = ar[x] * wa + br[x] * wb;
      } else {
        for (int64_t r = 0; r < std::min(AH, BH); ++r) {
          const float av = a.f32()[(p * AH + r) * AW + AW - extent + y];
          float& bv = b.f32()[(p * BH + r) * BW + y];
          bv = av * wa + bv * wb;
        }
      }
    }
}

}  // namespace

Tensor Vae::decode_tiled(const Tensor& latents, int64_t tile, float overlap) const {
  const int64_t f = config_.scale_factor();
  if (tile <= 0) tile = config_.sample_size / f;
  DL_CHECK(tile > 0 && overlap >= 0.f && overlap < 1.f, "vae: tiled decoding needs a positive tile (got ", tile,
           ") and an overlap in [0, 1) (got ", overlap, ")");
  const Tensor& z = latents;
  DL_CHECK(z.dim() == 4 && z.size(0) > 0 && z.size(1) == config_.latent_channels && z.size(2) > 0 && z.size(3) > 0,
           "vae: latents ", z.describe(), " are not [B, ", config_.latent_channels, ", h, w]");
  nn::NoGradGuard inference;
  if (z.size(2) <= tile && z.size(3) <= tile) return decode(Var(z)).value();
  const int64_t stride = std::max<int64_t>(1, int64_t(float(tile) * (1.f - overlap)));
  const int64_t sample_tile = tile * f;
  const int64_t extent = int64_t(float(sample_tile) * overlap), keep = sample_tile - extent;
  std::vector<Tensor> prev_row, rows;
  for (int64_t i = 0; i < z.size(2); i += stride) {
    std::vector<Tensor> row;
    for (int64_t j = 0; j < z.size(3); j += stride) {
      const Tensor piece =
          z.slice(2, i, std::min(i + tile, z.size(2))).slice(3, j, std::min(j + tile, z.size(3))).contiguous();
      Tensor t = decode(Var(piece)).value().contiguous();
      if (!prev_row.empty()) blend(prev_row[row.size()], t, extent, true);
      if (!row.empty()) blend(row.back(), t, extent, false);
      row.push_back(std::move(t));
    }
    std::vector<Tensor> cropped;
    for (const Tensor& t : row)
      cropped.push_back(t.slice(2, 0, std::min(keep, t.size(2))).slice(3, 0, std::min(keep, t.size(3))).contiguous());
    rows.push_back(ops::concat(cropped, 3));
    prev_row = std::move(row);
  }
  return ops::concat(rows, 2);
}

}  // namespace dl::models
