// The DreamLLM trainer: one loop for every stage. Per optimizer step it draws `grad_accum` micro-batches of
// `micro_batch` samples from the mixed data stream, computes the joint objective (loss / grad_accum, as HF
// Trainer), back-propagates, clips the global gradient norm, and takes an AdamW step at the cosine warm-up
// schedule's learning rate. Checkpoints are written every `save_every` steps and at the end; a resumed run restores
// weights, optimizer moments, schedule position and data position, and continues bit-identically for the same
// thread count.
#pragma once
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "train/data.h"
#include "nn/optim.h"
#include "train/stages.h"

namespace dl::train {

struct TrainOptions {
  std::string model;  // model directory to start from (release layout)
  std::string out;    // output directory: checkpoint-N/, the final model, metrics.jsonl
  std::vector<DatasetSpec> data;
  StagePreset stage = stage_preset("II");
  float learning_rate = 0.f;  // 0: the stage's
  float weight_decay = 0.f;   // HF default; biases and norm weights never decay
  std::vector<std::pair<Group, float>> lr_scale;  // groups whose learning rate is the peak one times a factor
  float warmup_ratio = 0.003f;
  float max_grad_norm = 1.f;  // <= 0: no clipping
  int64_t micro_batch = 1, grad_accum = 1;
  int64_t max_steps = 0;  // 0: epochs over the mixture's declared size
  double epochs = 1.0;
  int64_t max_length = 2048;
  int64_t shuffle_buffer = 1000;
  uint64_t seed = 42;
  int64_t save_every = 0;  // 0: only at the end
  int save_total_limit = 2;
  float condition_dropout = 0.f;  // probability of training a dream span on the unconditional condition
  bool gradient_checkpointing = false;  // recompute each LLM layer during backward (less memory)
  // The diffusion target: the VAE posterior's mean (latent_dist.mode()) instead of a sample (the original's
  // latent_dist.sample()). A VAE whose decoder ignores most of its latent pixels (the world's at 2x downsampling:
  // posterior std above the latents' own spread) otherwise hands the UNet targets that are mostly noise.
  bool posterior_mode = false;
  // Memory for the frozen VAE's posterior of each dream picture, kept after its first encoding (0: encode every
  // time). Results are bit-identical either way.
  size_t posterior_cache_bytes = size_t(1) << 30;
  // Whitening of the condition projector before the first step (fresh runs only): the conditions of the first N
  // pair captions of the data, read as creation prompts, get identity covariance (ZCA, whitening_matrix) by
  // P <- S P. A fresh UNet learns first what the condition separates most strongly; whitening gives every
  // direction the LLM's query states vary in the same strength from the start. 0: off, the original.
  int64_t whiten_condition = 0;
  // The label-conditioned UNet stage (Objective::kLabelConditioned): the label vocabulary's size (ids 0..N-1 in the
  // records' condition_labels). Its embedding table is written beside the weights as label_encoder.safetensors.
  int64_t condition_labels = 0;
  bool resume = false;            // continue from the newest checkpoint under `out`
  bool overwrite = false;         // a fresh run may replace an earlier run's files in `out`
  bool write_final = true;        // write the final model into `out` itself
};

struct StepReport {
  int64_t step = 0, total_steps = 0;  // step is 1-based after the update
  float loss = 0.f, lm_loss = 0.f, vm_loss = 0.f, rec_loss = 0.f, kl_loss = 0.f, grad_norm = 0.f, lr = 0.f;
  int64_t tokens = 0, lm_tokens = 0, images = 0, dream_images = 0, samples = 0;
  int64_t skipped_samples = 0, skipped_records = 0;  // totals so far
  double seconds = 0.0;  // this step's wall time
};

struct TrainEvents {
  std::function<void(const StepReport&)> on_step;
  std::function<void(const std::string& message)> on_warning;  // skipped records / samples
  std::function<void(const std::string& path)> on_checkpoint;
};

class Trainer {
 public:
  explicit Trainer(TrainOptions options, TrainEvents events = {});
  ~Trainer();
  Trainer(const Trainer&) = delete;
  Trainer& operator=(const Trainer&) = delete;

  int64_t total_steps() const;
  int64_t start_step() const;  // > 0 when resumed
  // Names of the trainable parameters, in optimizer order.
  std::vector<std::string> trainable() const;
  // Runs steps [start_step, min(total_steps, stop_after)) and writes the checkpoints; returns the last report.
  StepReport run(int64_t stop_after = -1);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// One optimizer step over the micro-batches of a step: each micro-batch's loss / count is back-propagated
// (HF Trainer's accumulation), the global gradient norm clipped to max_grad_norm (<= 0: not clipped; the
// pre-clip norm is reported), then AdamW at `lr`. The reported lm/vm losses are the means over the micro-batches
// that have the term.
struct StepLosses {
  float loss = 0.f, lm_loss = 0.f, vm_loss = 0.f, rec_loss = 0.f, kl_loss = 0.f, grad_norm = 0.f;
  int64_t lm_tokens = 0;
};
using LossFunction = std::function<LossTerms(const Batch&)>;
StepLosses optimizer_step(const LossFunction& loss, const std::vector<Batch>& micro_batches, nn::AdamW& optimizer,
                          float lr, float max_grad_norm);
StepLosses optimizer_step(const DreamLLMObjective& objective, const std::vector<Batch>& micro_batches,
                          const LossWeights& weights, nn::AdamW& optimizer, float lr, float max_grad_norm);

// AdamW over named parameters with HF Trainer's decay split: biases and normalisation weights get no decay.
std::unique_ptr<nn::AdamW> make_optimizer(const std::vector<nn::Var>& params, const std::vector<std::string>& names,
                                          float lr, float weight_decay);

// ZCA whitening of rows x[N, C] (row-major): S = U diag(1 / sqrt(l + eps_ratio * l_max)) U^T from the rows' covariance
// (around their mean, divided by N - 1, as numpy.cov) = U diag(l) U^T, so that S x has identity covariance in
// every direction whose variance is above eps_ratio of the largest. Returns S [C, C] (F32); needs N >= 2.
Tensor whitening_matrix(const std::vector<double>& rows, int64_t C, double eps_ratio = 1e-6);

// Applies a stage's fresh initialisations to the loaded weights (deterministic in seed).
void reinitialise(const std::vector<Reinit>& what, const models::ParameterSet& params,
                  const io::DreamLLMConfig& config, uint64_t seed);

}  // namespace dl::train
