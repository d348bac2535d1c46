// AdamW (decoupled weight decay, PyTorch semantics) over a list of parameter Vars.
#pragma once
#include <vector>

#include "nn/autograd.h"

namespace dl::nn {

struct AdamWConfig {
  float lr = 1e-3f, beta1 = 0.9f, beta2 = 0.999f, eps = 1e-8f, weight_decay = 0.f;
};

class AdamW {
 public:
  AdamW(std::vector<Var> params, AdamWConfig cfg);
  // One update from the accumulated gradients (parameters without a gradient are skipped), then zero_grad.
  void step(float lr);
  void step() { step(cfg_.lr); }
  void zero_grad();
  int64_t steps() const { return t_; }  // step() calls so far
  // Updates applied to parameter i: like PyTorch, bias correction counts only the steps a parameter took part
  // in, so a parameter without a gradient in some steps (dream queries on text-only batches) stays exact.
  int64_t parameter_steps(size_t i) const { return steps_.at(i); }
  const std::vector<Tensor>& exp_avg() const { return m_; }
  const std::vector<Tensor>& exp_avg_sq() const { return v_; }
  const std::vector<Var>& params() const { return params_; }
  // Per-parameter weight decay (HF Trainer exempts biases and normalisation weights); defaults to cfg.weight_decay.
  void set_weight_decay(size_t i, float weight_decay) { decay_.at(i) = weight_decay; }
  float weight_decay(size_t i) const { return decay_.at(i); }
  // Per-parameter learning-rate multiplier (LLaVA-style separate rates for a vision tower or projector); 1 default.
  void set_lr_scale(size_t i, float scale) { lr_scale_.at(i) = scale; }
  float lr_scale(size_t i) const { return lr_scale_.at(i); }
  // Restores the state of a saved run: moments of parameter i, its own step count, and the step() call count.
  void load_state(size_t i, const Tensor& exp_avg, const Tensor& exp_avg_sq, int64_t steps);
  void set_steps(int64_t t) { t_ = t; }

 private:
  std::vector<Var> params_;
  AdamWConfig cfg_;
  std::vector<Tensor> m_, v_;
  std::vector<int64_t> steps_;
  std::vector<float> decay_, lr_scale_;
  int64_t t_ = 0;
};

// Scales all gradients so that their global L2 norm is at most max_norm; returns the norm before clipping.
float clip_grad_norm(const std::vector<Var>& params, float max_norm);

}  // namespace dl::nn
