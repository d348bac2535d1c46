#include "train/loss.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>

#include "core/error.h"
#include "nn/functional.h"

namespace dl::train {

using nn::Var;

namespace {

int64_t int_at(const Tensor& t, int64_t i) {
  return t.dtype() == DType::I64 ? t.data<int64_t>()[i] : int64_t(t.data<int32_t>()[i]);
}

Tensor integer_matrix(const Tensor& t, const char* name) {
  DL_CHECK(t.defined() && t.dim() == 2 && (t.dtype() == DType::I32 || t.dtype() == DType::I64), name,
           " must be an integer [B, T] tensor, got ", t.defined() ? t.describe() : std::string("nothing"));
  return t.contiguous();
}

}  // namespace

Tensor shifted_targets(const Tensor& labels_in) {
  const Tensor labels = integer_matrix(labels_in, "labels");
  const int64_t B = labels.size(0), T = labels.size(1);
  std::vector<int64_t> out;
  out.reserve(size_t(B * std::max<int64_t>(T - 1, 0)));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t + 1 < T; ++t) out.push_back(int_at(labels, b * T + t + 1));
  return Tensor::from_vector_i64(out, {int64_t(out.size())});
}

DiffusionTerm::DiffusionTerm(const io::SchedulerConfig& scheduler)
    : noise_schedule_(diffusion::make_scheduler("ddpm", scheduler)),
      v_prediction_(scheduler.prediction_type == "v_prediction") {}

void DiffusionTerm::check_batch(const Batch& batch, int64_t M) {
  DL_CHECK(batch.dm_latents.dim() == 4, "dm_latents must be [M, C, h, w], got ", batch.dm_latents.describe());
  DL_CHECK(batch.noise.defined() && batch.noise.shape() == batch.dm_latents.shape(), "noise ",
           batch.noise.defined() ? batch.noise.describe() : std::string("(missing)"), " does not match dm_latents ",
           batch.dm_latents.describe());
  DL_CHECK(int64_t(batch.timesteps.size()) == M, "timesteps has ", batch.timesteps.size(), " value(s) for ", M,
           " diffusion target(s)");
  DL_CHECK(batch.drop_condition.empty() || int64_t(batch.drop_condition.size()) == M, "drop_condition has ",
           batch.drop_condition.size(), " flag(s) for ", M, " diffusion target(s)");
}

Var DiffusionTerm::operator()(const models::UNet& unet, const Batch& batch, const Var& cond, float snr_gamma) const {
  const int64_t M = batch.dm_latents.size(0);
  // The DDPM forward process at integer timesteps (diffusers' add_noise, which also checks the range).
  const Tensor noisy = noise_schedule_->add_noise(batch.dm_latents, batch.noise, batch.timesteps);
  Tensor target = batch.noise.to(DType::F32).contiguous();
  const std::vector<float>& alphas = noise_schedule_->alphas_cumprod();
  if (v_prediction_) {  // diffusers' get_velocity: v = sqrt(a_t) eps - sqrt(1 - a_t) x0
    const Tensor x0 = batch.dm_latents.to(DType::F32).contiguous();
    std::vector<float> v(size_t(target.numel()));
    const int64_t n = target.numel() / M;
    for (int64_t m = 0; m < M; ++m) {
      const float a = alphas[size_t(batch.timesteps[size_t(m)])];
      const float sa = std::sqrt(a), s1a = std::sqrt(1.f - a);
      for (int64_t i = m * n; i < (m + 1) * n; ++i) v[size_t(i)] = sa * target.f32()[i] - s1a * x0.f32()[i];
    }
    target = Tensor::from_vector(v, target.shape());
  }
  std::vector<float> tf(batch.timesteps.begin(), batch.timesteps.end());
  Var pred = unet.forward(Var(noisy), Tensor::from_vector(tf, {M}), cond);
  Var goal(target);
  if (snr_gamma > 0.f) {
    // mean(w_m (pred - target)^2) as mse(sqrt(w_m) pred, sqrt(w_m) target): every target has the same size, so
    // this is the batch mean of each target's weighted mean, as diffusers computes it.
    std::vector<float> root(static_cast<size_t>(M));
    for (int64_t m = 0; m < M; ++m) {
      const double a = alphas[size_t(batch.timesteps[size_t(m)])], snr = a / (1.0 - a);
      const double weight = std::min(snr, double(snr_gamma)) / (v_prediction_ ? snr + 1.0 : snr);
      root[size_t(m)] = float(std::sqrt(weight));
    }
    const Var r(Tensor::from_vector(root, {M, 1, 1, 1}));
    pred = nn::mul(pred, r);
    goal = nn::mul(goal, r);
  }
  return nn::mse(pred, goal);
}

DreamLLMObjective::DreamLLMObjective(const models::DreamLLM& model, const models::UNet& unet,
                                     const io::SchedulerConfig& scheduler)
    : model_(model),
      unet_(unet),
      diffusion_(scheduler) {}

Var DreamLLMObjective::unconditional_conditions() const {
  const auto& cfg = model_.config();
  std::vector<int64_t> ids{cfg.token_id("<s>"), cfg.token_id("<dream_start>")};
  ids.insert(ids.end(), size_t(model_.dream_queries()), cfg.token_id("<im_patch>"));
  ids.push_back(cfg.token_id("<dream_end>"));
  const int64_t T = int64_t(ids.size());
  return model_.forward(Tensor::from_vector_i64(ids, {1, T}), Tensor(), Tensor()).conditions;
}

LossTerms DreamLLMObjective::operator()(const Batch& batch, const LossWeights& w, bool compute_all) const {
  const Tensor ids = integer_matrix(batch.input_ids, "input_ids");
  const Tensor labels = integer_matrix(batch.labels, "labels");
  const int64_t B = ids.size(0), T = ids.size(1);
  DL_CHECK(labels.shape() == ids.shape(), "labels ", labels.describe(), " do not match input_ids ", ids.describe());
  Tensor keep;
  if (batch.attention_mask.defined()) {
    DL_CHECK(batch.attention_mask.shape() == ids.shape(), "attention_mask ", batch.attention_mask.describe(),
             " does not match input_ids ", ids.describe());
    keep = batch.attention_mask.to(DType::F32).contiguous();
  }
  const int64_t M = batch.dm_latents.defined() ? batch.dm_latents.size(0) : 0;
  const auto dream_spans = models::DreamLLM::spans(ids, model_.dream_start_id());
  if (M > 0) {
    DiffusionTerm::check_batch(batch, M);
    DL_CHECK(int64_t(dream_spans.size()) >= M, "the batch has ", dream_spans.size(), " <dream_start> span(s) but ", M,
             " diffusion target(s)");
  }

  const Var images = batch.pixel_values.defined() ? model_.image_embeds(Var(batch.pixel_values.to(DType::F32)))
                                                  : Var();
  const Var hidden = model_.llm().forward(model_.embed(ids, images), keep);  // [B, T, D]
  const int64_t D = hidden.shape()[2];

  LossTerms out;
  out.dream_images = M;
  Var lm, vm;
  // LM term: only the rows whose next label counts reach the lm_head; the mean is the same as over full logits.
  if (compute_all || w.lm != 0.f) {
    const Tensor targets = shifted_targets(labels);
    const int64_t* tg = targets.data<int64_t>();
    const Var flat = nn::reshape(hidden, {B * T, D});
    std::vector<Var> runs;
    std::vector<int64_t> kept;
    for (int64_t b = 0; b < B; ++b) {
      int64_t t = 0;
      while (t + 1 < T) {
        if (tg[b * (T - 1) + t] == -100) {
          ++t;
          continue;
        }
        const int64_t start = t;
        while (t + 1 < T && tg[b * (T - 1) + t] != -100) kept.push_back(tg[b * (T - 1) + t++]);
        runs.push_back(nn::slice(flat, 0, b * T + start, b * T + t));
      }
    }
    out.lm_tokens = int64_t(kept.size());
    if (kept.empty()) {
      out.lm_loss = 0.f;
    } else {
      const int64_t V = model_.llm().config().vocab_size;
      for (int64_t id : kept)
        DL_CHECK(id >= 0 && id < V, "label ", id, " is outside the vocabulary of ", V, " (use -100 to ignore)");
      const Var rows = runs.size() == 1 ? runs[0] : nn::concat(runs, 0);
      lm = nn::cross_entropy(model_.llm().logits(rows), Tensor::from_vector_i64(kept, {int64_t(kept.size())}));
      out.lm_loss = lm.value().f32()[0];
    }
  } else {
    out.lm_loss = std::numeric_limits<float>::quiet_NaN();
  }

  // Diffusion term: the first M dream spans condition the UNet on their noised targets.
  if (M > 0 && (compute_all || w.vm != 0.f)) {
    const int64_t Q = model_.dream_queries();
    std::vector<Var> query_rows;
    for (int64_t m = 0; m < M; ++m) {
      const auto [b, t] = dream_spans[size_t(m)];
      query_rows.push_back(nn::slice(nn::slice(hidden, 0, b, b + 1), 1, t + 1, t + 1 + Q));
    }
    Var cond = model_.conditions(nn::concat(query_rows, 0));  // [M, Q, C]
    bool any_drop = false;
    for (bool d : batch.drop_condition) any_drop = any_drop || d;
    if (any_drop) {
      const Var uncond = unconditional_conditions();
      std::vector<Var> rows;
      for (int64_t m = 0; m < M; ++m) rows.push_back(batch.drop_condition[size_t(m)] ? uncond : nn::slice(cond, 0, m, m + 1));
      cond = nn::concat(rows, 0);
    }
    vm = diffusion_(unet_, batch, cond, w.snr_gamma);
    out.vm_loss = vm.value().f32()[0];
  }

  // The original's NaN guards: a NaN term is dropped when the other one exists.
  const bool lm_ok = lm.defined() && !std::isnan(out.lm_loss), vm_ok = vm.defined() && !std::isnan(out.vm_loss);
  Var total;
  if (lm.defined() && w.lm != 0.f && (lm_ok || !vm_ok)) total = nn::scale(lm, w.lm);
  if (vm.defined() && w.vm != 0.f && (vm_ok || !lm_ok)) {
    Var term = nn::scale(vm, w.vm);
    total = total.defined() ? nn::add(total, term) : term;
  }
  out.loss = total.defined() ? total : Var(Tensor::zeros({1}));
  return out;
}

LabelConditionedObjective::LabelConditionedObjective(const models::UNet& unet, nn::Var label_embedding,
                                                     int64_t tokens, const io::SchedulerConfig& scheduler)
    : unet_(unet), embedding_(std::move(label_embedding)), tokens_(tokens), diffusion_(scheduler) {
  DL_CHECK(embedding_.defined() && embedding_.shape().size() == 2, "the label embedding must be a [labels, C] table");
  DL_CHECK(tokens_ >= 1, "the label condition needs at least one token, got ", tokens_);
}

Var LabelConditionedObjective::conditions(const Tensor& labels_in, const std::vector<bool>& drop) const {
  DL_CHECK(labels_in.defined() && labels_in.dim() == 3 &&
               (labels_in.dtype() == DType::I32 || labels_in.dtype() == DType::I64),
           "condition labels must be an integer [M, S, K] tensor, got ",
           labels_in.defined() ? labels_in.describe() : std::string("nothing"));
  const Tensor labels = labels_in.contiguous();
  const int64_t M = labels.size(0), S = labels.size(1), K = labels.size(2);
  const int64_t V = embedding_.shape()[0], C = embedding_.shape()[1];
  DL_CHECK(S <= tokens_, "a condition has ", S, " label tokens, more than the ", tokens_, " the UNet reads");
  DL_CHECK(drop.empty() || int64_t(drop.size()) == M, "drop has ", drop.size(), " flag(s) for ", M, " condition(s)");
  // Each token is a row of label counts times the table: the sum of its labels' embeddings, and of none (a zero
  // token) for padding and dropped conditions.
  std::vector<float> counts(size_t(M * tokens_ * V), 0.f);
  for (int64_t m = 0; m < M; ++m) {
    if (!drop.empty() && drop[size_t(m)]) continue;
    for (int64_t s = 0; s < S; ++s)
      for (int64_t k = 0; k < K; ++k) {
        const int64_t id = int_at(labels, (m * S + s) * K + k);
        if (id < 0) continue;
        DL_CHECK(id < V, "condition label ", id, " is outside the label vocabulary of ", V);
        counts[size_t((m * tokens_ + s) * V + id)] += 1.f;
      }
  }
  const Var rows = nn::matmul(Var(Tensor::from_vector(counts, {M * tokens_, V})), embedding_);
  return nn::reshape(rows, {M, tokens_, C});
}

LossTerms LabelConditionedObjective::operator()(const Batch& batch, const LossWeights& w) const {
  LossTerms out;
  out.lm_loss = std::numeric_limits<float>::quiet_NaN();
  const int64_t M = batch.dm_latents.defined() ? batch.dm_latents.size(0) : 0;
  out.dream_images = M;
  if (M == 0) {
    out.loss = Var(Tensor::zeros({1}));
    return out;
  }
  DiffusionTerm::check_batch(batch, M);
  DL_CHECK(batch.condition_labels.defined() && batch.condition_labels.dim() == 3 &&
               batch.condition_labels.size(0) == M,
           "the label-conditioned objective needs condition labels [", M, ", S, K] for its ", M,
           " target(s), got ", batch.condition_labels.defined() ? batch.condition_labels.describe() : "none");
  const Var vm = diffusion_(unet_, batch, conditions(batch.condition_labels, batch.drop_condition), w.snr_gamma);
  out.vm_loss = vm.value().f32()[0];
  out.loss = w.vm != 1.f ? nn::scale(vm, w.vm) : vm;
  return out;
}

LossTerms AutoencoderObjective::operator()(const Batch& batch, float kl_weight) const {
  LossTerms out;
  out.lm_loss = 0.f;
  if (!batch.dm_images.defined() || batch.dm_images.size(0) == 0) {
    out.loss = Var(Tensor::zeros({1}));
    return out;
  }
  const Tensor x = batch.dm_images.to(DType::F32).contiguous();
  const auto post = vae_.encode(Var(x));
  DL_CHECK(batch.posterior_noise.defined() && batch.posterior_noise.shape() == post.mean.shape(),
           "posterior noise ", batch.posterior_noise.defined() ? batch.posterior_noise.describe() : "(missing)",
           " does not match the latents ", post.mean.value().describe());
  Var z = nn::gaussian_sample(post.mean, post.logvar_raw, batch.posterior_noise);
  if (batch.latent_gain.defined()) {
    const Shape want{post.mean.value().size(0), 1, post.mean.value().size(2), post.mean.value().size(3)};
    DL_CHECK(batch.latent_gain.shape() == want, "latent gain ", batch.latent_gain.describe(), " does not match the latents ",
             post.mean.value().describe(), " (one gain per latent pixel)");
    z = nn::mul(z, Var(batch.latent_gain));
  }
  const Var rec = nn::mse(vae_.decode(z), Var(x));
  const Var kl = nn::gaussian_kl(post.mean, post.logvar_raw);
  out.rec_loss = rec.value().f32()[0];
  out.kl_loss = kl.value().f32()[0];
  out.dream_images = x.size(0);
  out.loss = kl_weight != 0.f ? nn::add(rec, nn::scale(kl, kl_weight)) : rec;
  return out;
}

}  // namespace dl::train
