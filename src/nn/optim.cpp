#include "nn/optim.h"

#include <cmath>

#include "core/error.h"
#include "core/ops.h"
#include "core/thread_pool.h"

namespace dl::nn {

AdamW::AdamW(std::vector<Var> params, AdamWConfig cfg) : params_(std::move(params)), cfg_(cfg) {
  for (const Var& p : params_) {
    DL_CHECK(p.is_leaf(), "AdamW: parameters must be leaves");
    DL_CHECK(p.value().dtype() == DType::F32 && p.value().is_contiguous(), "AdamW: parameter ",
             p.value().describe(), " must be contiguous F32");
    DL_CHECK(p.value().storage()->is_writable(), "AdamW: parameter ", p.name().empty() ? p.value().describe() : p.name(),
             " is read-only (memory-mapped from its file): copy it before training");
    m_.push_back(Tensor::zeros(p.shape()));
    v_.push_back(Tensor::zeros(p.shape()));
    steps_.push_back(0);
    decay_.push_back(cfg_.weight_decay);
    lr_scale_.push_back(1.f);
  }
}

void AdamW::load_state(size_t i, const Tensor& exp_avg, const Tensor& exp_avg_sq, int64_t steps) {
  DL_CHECK(i < params_.size(), "AdamW: no parameter ", i);
  DL_CHECK(exp_avg.shape() == m_[i].shape() && exp_avg_sq.shape() == v_[i].shape(), "AdamW: saved moments ",
           exp_avg.describe(), " / ", exp_avg_sq.describe(), " do not match parameter ", params_[i].name(), " ",
           params_[i].value().describe());
  DL_CHECK(steps >= 0, "AdamW: negative step count for ", params_[i].name());
  m_[i] = exp_avg.to(DType::F32).clone();
  v_[i] = exp_avg_sq.to(DType::F32).clone();
  steps_[i] = steps;
}

void AdamW::step(float base_lr) {
  ++t_;
  for (size_t i = 0; i < params_.size(); ++i) {
    const Var& p = params_[i];
    if (!p.grad().defined()) continue;
    const float lr = base_lr * lr_scale_[i];
    const int64_t t = ++steps_[i];
    const float bc1 = 1.f - std::pow(cfg_.beta1, float(t));
    const float bc2_sqrt = std::sqrt(1.f - std::pow(cfg_.beta2, float(t)));
    const float step_size = lr / bc1;
    float* w = p.value().f32();
    const Tensor grad = p.grad().contiguous();  // kept alive for the loop below
    const float* g = grad.f32();
    float* m = m_[i].f32();
    float* v = v_[i].f32();
    const float b1 = cfg_.beta1, b2 = cfg_.beta2, eps = cfg_.eps, decay = 1.f - lr * decay_[i];
    parallel_for(p.value().numel(), 1 << 14, [&](int64_t a, int64_t b) {
      for (int64_t j = a; j < b; ++j) {
        w[j] *= decay;
        m[j] = b1 * m[j] + (1.f - b1) * g[j];
        v[j] = b2 * v[j] + (1.f - b2) * g[j] * g[j];
        const float denom = std::sqrt(v[j]) / bc2_sqrt + eps;
        w[j] -= step_size * m[j] / denom;
      }
    });
  }
  zero_grad();
}

void AdamW::zero_grad() {
  for (Var& p : params_) p.zero_grad();
}

float clip_grad_norm(const std::vector<Var>& params, float max_norm) {
  double total = 0;
  for (const Var& p : params)
    if (p.grad().defined()) {
      Tensor g = p.grad();
      Tensor sq = ops::mul(g, g);
      total += ops::sum_all(sq);
    }
  const float norm = float(std::sqrt(total));
  if (norm > max_norm && norm > 0.f) {
    const float f = max_norm / (norm + 1e-6f);
    for (const Var& p : params)
      if (p.grad().defined()) {
        float* g = p.grad().f32();
        for (int64_t j = 0; j < p.grad().numel(); ++j) g[j] *= f;
      }
  }
  return norm;
}

}  // namespace dl::nn
