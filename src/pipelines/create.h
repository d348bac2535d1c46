// Creation: DreamLLM writes the diffusion conditions, Stable Diffusion draws (architecture doc sections 1.6, 1.7,
// 4.1). The conditions of a prompt are the projected final-norm LLM states at the Q dream-query positions of
// [prompt, <dream_start>, queries, <dream_end>]; classifier-free guidance takes its negative branch from the same
// LLM path run on the negative prompt (the empty prompt is just [BOS]); both branches go through one batched UNet
// call, unconditional first, and eps = eps_u + s * (eps_c - eps_u), optionally rescaled.
#pragma once
#include <functional>
#include <string>
#include <vector>

#include "diffusion/schedulers.h"
#include "io/image.h"
#include "io/model_dir.h"
#include "models/dreamllm.h"
#include "models/unet.h"
#include "models/vae.h"

namespace dl::pipelines {

// The drawing half of a DreamLLM directory: UNet, VAE and the scheduler configuration (the condition projector
// lives with the LLM, in models::DreamLLM).
struct DiffusionHead {
  explicit DiffusionHead(const io::ModelDir& dir);
  // Gives back the resident pages of UNet weights mapped from the model file (release_mapped_pages), for the time
  // between one picture's sampling and the next: decoding and reading the picture back do not need them, and the
  // 7B system's peak memory is then sampling's, not sampling's plus decoding's. The next step reads them again
  // from the page cache.
  void release_unet_pages() const;
  models::ParameterSet params;
  models::UNet unet;
  models::Vae vae;
  io::SchedulerConfig scheduler;
};

// Conditions [B, Q, C] of prompts ids [B, T] (right padding with keep [B, T] = 0 where padded; undefined keep: no
// padding). pixel_values [N, 3, S, S] feed the prompts' <im_start> spans in order (image-conditioned creation).
// The dream span follows the padded length and positions are arange over the whole row, as the original does.
Tensor prompt_conditions(const models::DreamLLM& model, const Tensor& ids, const Tensor& keep,
                         const Tensor& pixel_values = Tensor());

// These defaults are those of every drawing command (create, write, chat, serve: DrawOptions starts from them).
// 25 Euler steps draw the shapes world's held-out scenes as well as the original's DDPM schedule at 50, at CFG 3 and
// at 7.5, in half the UNet calls; DPM-Solver++(2M) matched it at CFG 3 but fell behind at 7.5 (docs/benchmarks.md,
// "Fast sampling on the shapes world"). steps 50 with "ddpm" is the original-like setting.
struct SamplingOptions {
  int64_t steps = 25;
  float guidance_scale = 7.5f;   // > 1 enables classifier-free guidance; exactly 1 skips the negative branch
  float guidance_rescale = 0.f;  // diffusers' rescale_noise_cfg mix (0: off)
  std::string scheduler = "euler";
  diffusion::SchedulerOptions scheduler_options;
  // Deep-feature reuse (models::UNet::forward_cached): 0 or 1 computes the whole UNet every step; k > 1 refreshes
  // the deep features every k-th step (the first included) and reuses them in between. Off by default.
  int64_t deep_cache_interval = 0;
};

// Standard-normal draw shaped like the latents for stochastic step `step`.
using StepNoise = std::function<Tensor(size_t step)>;
using StepCallback = std::function<void(size_t step, size_t steps)>;

// Runs the sampler from standard-normal `noise` [B, 4, h, w] (scaled by init_noise_sigma here) with conditions
// `cond` [B, Q, C] and, when guidance_scale > 1, `uncond` [B, Q', C]. Returns the final latents (scaled space).
Tensor sample_latents(const models::UNet& unet, const io::SchedulerConfig& scheduler_config, const Tensor& cond,
                      const Tensor& uncond, const Tensor& noise, const SamplingOptions& options,
                      const StepNoise& step_noise, const StepCallback& on_step = {});

// The VAE decoder's output [B, 3, H, W] for sampler latents (divided by the scaling factor here), not clamped.
// Latents larger than the VAE's tile are decoded in tiles when `tiled` (bounded memory; blended seams as diffusers).
Tensor decode_latents_unclamped(const models::Vae& vae, const Tensor& latents, bool tiled = false);
// The same as images in [0, 1]: clamp(x / 2 + 0.5, 0, 1), as diffusers' postprocess.
Tensor decode_latents(const models::Vae& vae, const Tensor& latents, bool tiled = false);

// What `dreamllm create` does after reading its options, shared with the server so that both give the same pictures
// for the same seed: the conditions of `prompt_ids` (whose image spans take `pixel_values`), the negative branch
// from `negative_ids` when guided, then image k from the noise of Rng(seed + k), sampled and decoded.
// `on_step(k, step, steps)` follows the sampler; `on_image(k, picture)` hands over each picture as it is done (none is kept: -n 1000 would hold them all).
// Either callback may throw to stop the work (a cancelled request).
struct CreateRequest {
  std::vector<int32_t> prompt_ids;
  Tensor pixel_values;
  std::vector<int32_t> negative_ids;
  SamplingOptions sampling;
  int64_t latent_height = 0, latent_width = 0;
  uint64_t seed = 42;
  int64_t count = 1;
  bool tiled_decode = false;
};
struct CreateEvents {
  std::function<void(size_t image, size_t step, size_t steps)> on_step;
  std::function<void(size_t image, const io::Image& picture)> on_image;
};
void create_images(const models::DreamLLM& model, const DiffusionHead& head, const CreateRequest& request,
                   const CreateEvents& events);

// Images [B, 3, H, W] in [0, 1] -> 8-bit RGB HWC buffers (round(x * 255), as diffusers' postprocess).
std::vector<std::vector<uint8_t>> to_rgb8(const Tensor& images);

}  // namespace dl::pipelines
