// The parameter names and shapes each component's checkpoint holds, derived from its config exactly as the
// original modules name them (transformers LLaMA / CLIPVisionModel, diffusers UNet2DConditionModel /
// AutoencoderKL). Loaders check files against these lists; the models read their weights by these names.
#pragma once
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"
#include "io/config.h"

namespace dl::io {

using Layout = std::vector<std::pair<std::string, Shape>>;

Layout llama_layout(const LlamaConfig& c);                  // model.*, lm_head.weight
Layout clip_vision_layout(const ClipVisionConfig& c);       // vision_model.* (CLIPVisionModel's own names)
Layout unet_layout(const UNetConfig& c);                    // diffusers names without the "unet." prefix
Layout vae_layout(const VaeConfig& c);                      // diffusers names without the "vae." prefix

// Rewrites legacy diffusers VAE attention names (query/key/value/proj_attn) to the current ones
// (to_q/to_k/to_v/to_out.0); other names pass through unchanged.
std::string modernize_vae_name(const std::string& name);

}  // namespace dl::io
