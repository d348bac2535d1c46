// Stable Diffusion's image autoencoder, diffusers 0.24 AutoencoderKL (DownEncoderBlock2D / UpDecoderBlock2D,
// GroupNorm eps 1e-6 throughout, single-head mid-block attention).
#pragma once
#include <optional>
#include <string>
#include <vector>

#include "io/config.h"
#include "models/unet.h"

namespace dl::models {

class Vae {
 public:
  // Weights named <prefix><diffusers name> with the current attention names (to_q/to_k/to_v/to_out.0), e.g.
  // prefix "stable_diffusion_head.vae.".
  Vae(const io::VaeConfig& config, const ParameterSet& params, const std::string& prefix);

  const io::VaeConfig& config() const { return config_; }

  struct Posterior {
    nn::Var mean, logvar;  // [B, latent, H/f, W/f]; logvar clamped to [-30, 20] (a constant: no gradient)
    // The encoder's logvar before the clamp, differentiable: what nn::gaussian_sample / gaussian_kl take (they
    // clamp it themselves) when the VAE trains.
    nn::Var logvar_raw;
  };
  // image [B, in_channels, H, W] in [-1, 1], H and W multiples of 2^(blocks-1) -> the latent distribution.
  Posterior encode(const nn::Var& image) const;
  // latents [B, latent, h, w] (unscaled: divide by scaling_factor first) -> image [B, out_channels, h*f, w*f],
  // not clamped.
  nn::Var decode(const nn::Var& latents) const;

  // diffusers' tiled decoding (AutoencoderKL.tiled_decode), for images whose activations would not fit at once:
  // latent tiles of `tile` (default sample_size / scale_factor) every tile * (1 - overlap) positions are decoded
  // separately, each blended linearly into its upper and left neighbours over sample-tile * overlap pixels, and
  // cropped. Memory is bounded by one tile's activations plus the output. Inference only (no gradient); where the
  // latents fit in one tile this is exactly decode().
  Tensor decode_tiled(const Tensor& latents, int64_t tile = 0, float overlap = 0.25f) const;

 private:
  // UNetMidBlock2D: resnet, single-head self-attention over the pixels, resnet.
  struct MidBlock {
    std::vector<sd::ResnetBlock2D> resnets;
    sd::GroupNorm attn_norm;
    sd::Linear to_q, to_k, to_v, to_out;
    nn::Var operator()(const nn::Var& x) const;
  };
  struct Block {
    std::vector<sd::ResnetBlock2D> resnets;
    std::optional<sd::Downsample2D> downsampler;
    std::optional<sd::Upsample2D> upsampler;
  };
  MidBlock mid_block(const ParameterSet& p, const std::string& name) const;

  io::VaeConfig config_;
  sd::Conv2d enc_conv_in_, enc_conv_out_, quant_conv_, post_quant_conv_, dec_conv_in_, dec_conv_out_;
  sd::GroupNorm enc_norm_out_, dec_norm_out_;
  std::vector<Block> down_, up_;
  std::vector<MidBlock> mids_;  // encoder's, decoder's
};

}  // namespace dl::models
