// DreamLLM's training objective (docs/dreamllm-architecture.md section 3.1): one forward of the LLM over a collated
// batch, then
//   L_lm = token-mean cross-entropy of logits[:, :-1] against labels[:, 1:] over every label != -100 in the whole
//          batch (0 when there is none);
//   L_vm = mean((UNet(x_t, t, projector(H at the Q rows after each <dream_start>)) - noise)^2), x_t the DDPM
//          forward process of the scaled VAE latents at integer t (the target is v instead of the noise when the
//          scheduler's prediction_type is v_prediction; optionally Min-SNR-weighted per target, see LossWeights);
//   loss = w_lm * L_lm + w_vm * L_vm.
// The diffusion term is differentiated through the frozen UNet into the condition projector, the dream queries and
// the LLM: the UNet's parameters are frozen leaves, so they get no gradient buffers while the chain rule passes them.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "diffusion/schedulers.h"
#include "io/config.h"
#include "models/dreamllm.h"
#include "models/unet.h"
#include "models/vae.h"

namespace dl::train {

// One micro-batch, right-padded, as the collator produces it.
struct Batch {
  Tensor input_ids;       // [B, T] I32/I64
  Tensor labels;          // [B, T] I32/I64, -100 where no LM loss
  Tensor attention_mask;  // [B, T] 1 keep / 0 padding; undefined: no padding
  Tensor pixel_values;    // [N, 3, S, S] CLIP inputs for the <im_start> spans in batch-major order; undefined: none
  Tensor dm_latents;      // [M, C, h, w] scaled x0 for the first M <dream_start> spans; undefined: no diffusion term
  Tensor noise;           // [M, C, h, w] standard-normal
  std::vector<int64_t> timesteps;  // M integer timesteps in [0, num_train_timesteps)
  // Optional classifier-free-guidance dropout: span m's condition is replaced by the unconditional one, computed
  // as inference computes the negative branch (the LLM on [<s>, <dream_start>, queries, <dream_end>]). Empty: none.
  std::vector<bool> drop_condition;
  // The label-conditioned objective's conditions: [M, S, K] I32 label ids of each target's S tokens, -1 where a
  // token has fewer than K labels or a target fewer than S tokens. Undefined for DreamLLM's objective.
  Tensor condition_labels;
  // The autoencoder objective's inputs: pictures [M, 3, R, R] in [-1, 1], the posterior draw [M, C, r, r] and
  // optionally a gain per latent pixel [M, 1, r, r] applied to the draw before decoding (undefined: none).
  Tensor dm_images, posterior_noise, latent_gain;
};

struct LossWeights {
  float lm = 1.f, vm = 10.f;
  // Min-SNR-gamma weighting of the diffusion term (Hang et al. 2023, diffusers' --snr_gamma): each target's mean
  // squared error is weighted by min(SNR_t, gamma) / SNR_t (epsilon) or / (SNR_t + 1) (v-prediction) before the
  // batch mean. 0: off, the original's plain mean.
  float snr_gamma = 0.f;
};

struct LossTerms {
  nn::Var loss;          // [1], differentiable
  float lm_loss = 0.f;   // NaN when not computed (weight 0 and not forced)
  float vm_loss = 0.f;   // 0 when the batch has no diffusion target
  int64_t lm_tokens = 0;  // labels that counted
  int64_t dream_images = 0;
  float rec_loss = 0.f, kl_loss = 0.f;  // the autoencoder objective's terms
};

// The diffusion term shared by the objectives: mean((UNet(x_t, t, cond) - target)^2) over the batch's M targets,
// x_t the DDPM forward process of batch.dm_latents at batch.timesteps, the target the noise (epsilon) or v.
class DiffusionTerm {
 public:
  explicit DiffusionTerm(const io::SchedulerConfig& scheduler);
  // Checks the batch's diffusion fields against M targets (throws naming the mismatch).
  static void check_batch(const Batch& batch, int64_t M);
  nn::Var operator()(const models::UNet& unet, const Batch& batch, const nn::Var& cond, float snr_gamma) const;

 private:
  std::unique_ptr<diffusion::Scheduler> noise_schedule_;  // DDPM, as the original trains
  bool v_prediction_ = false;  // the UNet predicts v = sqrt(a) eps - sqrt(1 - a) x0 instead of eps
};

class DreamLLMObjective {
 public:
  // Keeps references: the model, UNet and scheduler config must outlive the objective.
  DreamLLMObjective(const models::DreamLLM& model, const models::UNet& unet, const io::SchedulerConfig& scheduler);

  // Both terms are always computed when `compute_all`; otherwise a term whose weight is 0 is skipped (the trainer
  // saves the lm_head GEMM in creation-only stages).
  LossTerms operator()(const Batch& batch, const LossWeights& weights, bool compute_all = true) const;

  // Conditions [1, Q, C] of the unconditional prompt [<s>] (differentiable), as inference's negative branch.
  nn::Var unconditional_conditions() const;

 private:
  const models::DreamLLM& model_;
  const models::UNet& unet_;
  DiffusionTerm diffusion_;
};

// The UNet pretrained as Stable Diffusion's was, on the states of a frozen text encoder, for data that has no such
// encoder (the shapes world): a picture's condition is its labelled content (Batch::condition_labels), each token
// the sum of the learned embeddings of its labels, padded with zero tokens to `tokens` (the dream query count, so
// the UNet reads as many tokens as DreamLLM will give it). A dropped condition is all zeros. The loss is the
// diffusion term alone; the label embeddings and the UNet both learn from it.
class LabelConditionedObjective {
 public:
  // Keeps a reference to the UNet; `label_embedding` [labels, C] is a shared handle (it may train).
  LabelConditionedObjective(const models::UNet& unet, nn::Var label_embedding, int64_t tokens,
                            const io::SchedulerConfig& scheduler);
  // The conditions [M, tokens, C] of labels [M, S, K] (S <= tokens; -1: none), zero rows where `drop` says.
  nn::Var conditions(const Tensor& labels, const std::vector<bool>& drop = {}) const;
  LossTerms operator()(const Batch& batch, const LossWeights& weights) const;

 private:
  const models::UNet& unet_;
  nn::Var embedding_;
  int64_t tokens_;
  DiffusionTerm diffusion_;
};

// The VAE trained as Stable Diffusion's autoencoder was, less its perceptual and adversarial terms:
// loss = mean((decode(gain * (mean + exp(logvar / 2) * eps)) - x)^2) + kl_weight * KL(posterior || N(0, I)) (KL summed per
// image, averaged over the batch, as diffusers' DiagonalGaussianDistribution.kl).
class AutoencoderObjective {
 public:
  explicit AutoencoderObjective(const models::Vae& vae) : vae_(vae) {}
  LossTerms operator()(const Batch& batch, float kl_weight) const;

 private:
  const models::Vae& vae_;
};

// Shifted labels: targets[b, t] = labels[b, t + 1] for t < T - 1, flattened to [B * (T - 1)] I64.
Tensor shifted_targets(const Tensor& labels);

}  // namespace dl::train
