#include "pipelines/create.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "core/ops.h"
#include "core/random.h"
#include "nn/functional.h"

namespace dl::pipelines {

namespace {

const std::string kHead = "stable_diffusion_head.";

models::ParameterSet head_parameters(const io::ModelDir& dir) {
  models::ParameterSet p;
  p.adopt(dir.load(io::kDiffusion), kHead);
  return p;
}

int64_t id_at(const Tensor& ids, int64_t i) {
  return ids.dtype() == DType::I64 ? ids.data<int64_t>()[i] : int64_t(ids.data<int32_t>()[i]);
}

// diffusers' rescale_noise_cfg: mix the guided prediction with a copy rescaled to the text branch's per-sample
// standard deviation (unbiased, over all non-batch dimensions).
void rescale_guidance(Tensor& guided, const Tensor& text, float rescale) {
  const int64_t B = guided.size(0), n = guided.numel() / B;
  auto stddev = [n](const float* p) {
    double mean = 0;
    for (int64_t i = 0; i < n; ++i) mean += p[i];
    mean /= double(n);
    double ss = 0;
    for (int64_t i = 0; i < n; ++i) ss += (p[i] - mean) * (p[i] - mean);
    return float(std::sqrt(ss / double(std::max<int64_t>(n - 1, 1))));
  };
  for (int64_t b = 0; b < B; ++b) {
    float* g = guided.f32() + b * n;
    const float ratio = stddev(text.f32() + b * n) / stddev(g);
    for (int64_t i = 0; i < n; ++i) g[i] = rescale * (g[i] * ratio) + (1.f - rescale) * g[i];
  }
}

}  // namespace

DiffusionHead::DiffusionHead(const io::ModelDir& dir)
    : params(head_parameters(dir)),
      unet(dir.unet_config(), params, kHead + "unet."),
      vae(dir.vae_config(), params, kHead + "vae."),
      scheduler(dir.scheduler_config()) {}

Tensor prompt_conditions(const models::DreamLLM& model, const Tensor& ids_in, const Tensor& keep_in,
                         const Tensor& pixel_values) {
  DL_CHECK(ids_in.dim() == 2 && ids_in.size(0) > 0 && ids_in.size(1) > 0 &&
               (ids_in.dtype() == DType::I32 || ids_in.dtype() == DType::I64),
           "prompt ids must be non-empty integer [B, T], got ", ids_in.describe());
  const Tensor ids = ids_in.contiguous();
  const int64_t B = ids.size(0), T = ids.size(1), Q = model.dream_queries();
  DL_CHECK(!keep_in.defined() || keep_in.shape() == ids.shape(), "prompt attention mask ", keep_in.describe(),
           " does not match the ids ", ids.describe());
  const int64_t max_len = model.llm().config().max_position_embeddings;
  DL_CHECK(T + Q + 2 <= max_len, "the prompt has ", T, " tokens; with the ", Q + 2, "-token dream span it exceeds the ",
           max_len, " positions the model supports");
  const auto& cfg = model.config();
  const int64_t dream_start = cfg.token_id("<dream_start>"), dream_end = cfg.token_id("<dream_end>"),
                im_patch = cfg.token_id("<im_patch>");
  // [prompt, <dream_start>, Q placeholders (replaced by the queries), <dream_end>] per row.
  const int64_t L = T + Q + 2;
  std::vector<int64_t> full(size_t(B * L));
  std::vector<float> keep(size_t(B * L), 1.f);
  const Tensor keep_f = keep_in.defined() ? keep_in.to(DType::F32).contiguous() : Tensor();
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t t = 0; t < T; ++t) {
      full[size_t(b * L + t)] = id_at(ids, b * T + t);
      if (keep_f.defined()) keep[size_t(b * L + t)] = keep_f.f32()[b * T + t] != 0.f ? 1.f : 0.f;
    }
    full[size_t(b * L + T)] = dream_start;
    for (int64_t q = 0; q < Q; ++q) full[size_t(b * L + T + 1 + q)] = im_patch;
    full[size_t(b * L + T + 1 + Q)] = dream_end;
  }
  const Tensor full_ids = Tensor::from_vector_i64(full, {B, L});
  nn::NoGradGuard inference;
  nn::Var images;
  if (pixel_values.defined()) images = model.image_embeds(nn::Var(pixel_values.to(DType::F32)));
  const nn::Var hidden = model.llm().forward(model.embed(full_ids, images), Tensor::from_vector(keep, {B, L}));
  // The queries of the span appended to each row (a prompt may hold dream spans of its own before it).
  std::vector<nn::Var> rows;
  for (int64_t b = 0; b < B; ++b) rows.push_back(nn::slice(nn::slice(hidden, 0, b, b + 1), 1, T + 1, T + 1 + Q));
  return model.conditions(nn::concat(rows, 0)).value();
}

void DiffusionHead::release_unet_pages() const {
  for (const auto& [name, var] : params.all())
    if (name.rfind("unet.", 0) == 0) release_mapped_pages(var.value());
}

Tensor sample_latents(const models::UNet& unet, const io::SchedulerConfig& scheduler_config, const Tensor& cond,
                      const Tensor& uncond, const Tensor& noise, const SamplingOptions& options,
                      const StepNoise& step_noise, const StepCallback& on_step) {
  const auto& uc = unet.config();
  DL_CHECK(noise.dim() == 4 && noise.size(0) > 0 && noise.size(1) == uc.in_channels && noise.size(2) > 0 &&
               noise.size(3) > 0,
           "initial noise ", noise.describe(), " is not [B, ", uc.in_channels, ", h, w]");
  const int64_t B = noise.size(0);
  DL_CHECK(cond.dim() == 3 && cond.size(0) == B && cond.size(2) == uc.cross_attention_dim, "conditions ",
           cond.describe(), " are not [", B, ", Q, ", uc.cross_attention_dim, "]");
  DL_CHECK(std::isfinite(options.guidance_scale) && options.guidance_scale >= 0.f, "guidance scale ",
           options.guidance_scale, " is not a finite non-negative number");
  DL_CHECK(std::isfinite(options.guidance_rescale) && options.guidance_rescale >= 0.f &&
               options.guidance_rescale <= 1.f,
           "guidance rescale ", options.guidance_rescale, " is not in [0, 1]");
  const bool guided = options.guidance_scale > 1.f;
  if (guided)
    DL_CHECK(uncond.defined() && uncond.shape() == cond.shape(), "negative conditions ", uncond.describe(),
             " do not match the conditions ", cond.describe());
  auto scheduler = diffusion::make_scheduler(options.scheduler, scheduler_config, options.scheduler_options);
  scheduler->set_timesteps(options.steps);
  const size_t steps = scheduler->timesteps().size();

  nn::NoGradGuard inference;
  Tensor x = ops::scale(noise.to(DType::F32), scheduler->init_noise_sigma());
  const nn::Var context(guided ? ops::concat({uncond.to(DType::F32), cond.to(DType::F32)}, 0) : cond.to(DType::F32));
  const float s = options.guidance_scale;
  DL_CHECK(options.deep_cache_interval >= 0, "deep-feature reuse interval ", options.deep_cache_interval,
           " is negative");
  const int64_t reuse_every = options.deep_cache_interval;
  models::UNet::DeepCache deep;
  for (size_t i = 0; i < steps; ++i) {
    const Tensor input = scheduler->scale_model_input(guided ? ops::concat({x, x}, 0) : x, i);
    const Tensor t = Tensor::from_vector(std::vector<float>{scheduler->timesteps()[i]}, {1});
    Tensor eps = (reuse_every > 1 ? unet.forward_cached(nn::Var(input), t, context, deep, i % size_t(reuse_every) == 0)
                                  : unet.forward(nn::Var(input), t, context))
                     .value()
                     .contiguous();
    if (guided) {
      const Tensor u = eps.slice(0, 0, B).contiguous(), c = eps.slice(0, B, 2 * B).contiguous();
      Tensor g = Tensor::empty(u.shape());
      const float *pu = u.f32(), *pc = c.f32();
      float* pg = g.f32();
      for (int64_t k = 0; k < g.numel(); ++k) pg[k] = pu[k] + s * (pc[k] - pu[k]);
      if (options.guidance_rescale > 0.f) rescale_guidance(g, c, options.guidance_rescale);
      eps = std::move(g);
    }
    Tensor z;
    if (scheduler->stochastic()) {
      DL_CHECK(step_noise != nullptr, "the ", scheduler->name(), " sampler is stochastic and needs step noise");
      z = step_noise(i);
    }
    x = scheduler->step(eps, i, x, z.defined() ? &z : nullptr);
    if (on_step) on_step(i + 1, steps);
  }
  return x;
}

Tensor decode_latents_unclamped(const models::Vae& vae, const Tensor& latents, bool tiled) {
  const auto& vc = vae.config();
  DL_CHECK(latents.dim() == 4 && latents.size(1) == vc.latent_channels, "latents ", latents.describe(),
           " are not [B, ", vc.latent_channels, ", h, w]");
  Tensor z = latents.to(DType::F32).contiguous().clone();
  const float sf = vc.scaling_factor;
  for (int64_t i = 0; i < z.numel(); ++i) z.f32()[i] = z.f32()[i] / sf;
  nn::NoGradGuard inference;
  return tiled ? vae.decode_tiled(z) : vae.decode(nn::Var(z)).value();
}

Tensor decode_latents(const models::Vae& vae, const Tensor& latents, bool tiled) {
  Tensor img = decode_latents_unclamped(vae, latents, tiled).contiguous().clone();
  for (int64_t i = 0; i < img.numel(); ++i) img.f32()[i] = std::clamp(img.f32()[i] / 2.f + 0.5f, 0.f, 1.f);
  return img;
}

std::vector<std::vector<uint8_t>> to_rgb8(const Tensor& images) {
  DL_CHECK(images.dim() == 4 && images.size(1) == 3, "images ", images.describe(), " are not [B, 3, H, W]");
  const Tensor x = images.to(DType::F32).contiguous();
  const int64_t B = x.size(0), H = x.size(2), W = x.size(3);
  std::vector<std::vector<uint8_t>> out(static_cast<size_t>(B));
  for (int64_t b = 0; b < B; ++b) {
    auto& o = out[size_t(b)];
    o.resize(size_t(H * W * 3));
    for (int64_t c = 0; c < 3; ++c)
      for (int64_t p = 0; p < H * W; ++p) {
        const float v = std::clamp(x.f32()[(b * 3 + c) * H * W + p], 0.f, 1.f) * 255.f;
        o[size_t(p * 3 + c)] = uint8_t(std::nearbyint(v));  // numpy's round: half to even
      }
  }
  return out;
}

void create_images(const models::DreamLLM& model, const DiffusionHead& head, const CreateRequest& request,
                   const CreateEvents& events) {
  const auto& ids = request.prompt_ids;
  DL_CHECK(!ids.empty(), "create: empty prompt (it needs at least the BOS token)");
  const Tensor cond = prompt_conditions(model, Tensor::from_vector_i32(ids, {1, int64_t(ids.size())}), Tensor(),
                                        request.pixel_values);
  Tensor uncond;
  if (request.sampling.guidance_scale > 1.f) {
    const auto& neg = request.negative_ids;
    uncond = prompt_conditions(model, Tensor::from_vector_i32(neg, {1, int64_t(neg.size())}), Tensor());
  }
  const auto& unet = head.unet;
  const int64_t lh = request.latent_height > 0 ? request.latent_height : unet.config().sample_size;
  const int64_t lw = request.latent_width > 0 ? request.latent_width : unet.config().sample_size;
  for (int64_t k = 0; k < request.count; ++k) {
    Rng rng(request.seed + uint64_t(k));  // image k's seed + k wraps, never overflows
    const Tensor noise = rng.randn({1, unet.config().in_channels, lh, lw});
    const Tensor latents = sample_latents(
        unet, head.scheduler, cond, uncond, noise, request.sampling,
        [&](size_t) { return rng.randn({1, unet.config().in_channels, lh, lw}); },
        [&](size_t step, size_t steps) {
          if (events.on_step) events.on_step(size_t(k), step, steps);
        });
    const Tensor image = decode_latents(head.vae, latents, request.tiled_decode);
    const io::Image picture(image.size(3), image.size(2), to_rgb8(image)[0]);
    if (events.on_image) events.on_image(size_t(k), picture);
  }
}

}  // namespace dl::pipelines
