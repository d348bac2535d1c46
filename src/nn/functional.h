// Differentiable ops on Vars: each forwards to core/ops.h and records the matching backward kernel.
#pragma once
#include <vector>

#include "core/ops.h"
#include "nn/autograd.h"

namespace dl::nn {

// Masks for attention/softmax on Vars; the mask tensors themselves are constants.
struct Mask {
  bool causal = false;
  Tensor additive;  // broadcastable to [B, H, Tq, Tk], or undefined
  Tensor key_keep;  // [B, Tk] 1 keep / 0 mask, or undefined
  ops::AttentionMask view() const {
    return {causal, additive.defined() ? &additive : nullptr, key_keep.defined() ? &key_keep : nullptr};
  }
};

Var matmul(const Var& a, const Var& b, bool ta = false, bool tb = false);
Var linear(const Var& x, const Var& weight, const Var* bias = nullptr);
Var conv2d(const Var& x, const Var& weight, const Var* bias, int stride, int padding);
Var group_norm(const Var& x, int groups, const Var* gamma, const Var* beta, float eps);
Var layer_norm(const Var& x, const Var* gamma, const Var* beta, float eps);
Var rms_norm(const Var& x, const Var& weight, float eps);
Var softmax(const Var& x, const Mask& mask = {});
Var attention(const Var& q, const Var& k, const Var& v, const Mask& mask = {}, float scale = 0.f);
Var rope(const Var& x, const Tensor& positions, float theta);
Var embedding(const Var& weight, const Tensor& ids);
Var activation(ops::Act act, const Var& x);
inline Var silu(const Var& x) { return activation(ops::Act::SiLU, x); }
inline Var gelu(const Var& x) { return activation(ops::Act::GeluErf, x); }
inline Var gelu_tanh(const Var& x) { return activation(ops::Act::GeluTanh, x); }
inline Var quick_gelu(const Var& x) { return activation(ops::Act::QuickGelu, x); }
Var geglu(const Var& x);
Var swiglu(const Var& gate, const Var& up);
Var upsample_nearest2x(const Var& x);
Var upsample_nearest(const Var& x, int64_t out_h, int64_t out_w);  // ops::upsample_nearest
Var add(const Var& a, const Var& b);
Var sub(const Var& a, const Var& b);
Var mul(const Var& a, const Var& b);
Var scale(const Var& a, float s);
Var concat(const std::vector<Var>& xs, int64_t dim);
std::vector<Var> split(const Var& x, const std::vector<int64_t>& sizes, int64_t dim);
Var sum(const Var& x, int64_t dim, bool keepdim = false);
Var mean(const Var& x, int64_t dim, bool keepdim = false);
Var sum_all(const Var& x);  // [1]

// Views (backward maps the gradient back through the view).
Var reshape(const Var& x, const Shape& shape);
Var transpose(const Var& x, int64_t a, int64_t b);
Var permute(const Var& x, const std::vector<int64_t>& dims);
Var slice(const Var& x, int64_t dim, int64_t start, int64_t end);

// Losses, returned as [1] tensors.
Var cross_entropy(const Var& logits, const Tensor& targets, int64_t ignore_index = -100);
Var mse(const Var& a, const Var& b);
// The VAE posterior: a reparameterised sample (eps a constant standard-normal draw) and the KL to N(0, I).
Var gaussian_sample(const Var& mean, const Var& logvar, const Tensor& eps);
Var gaussian_kl(const Var& mean, const Var& logvar);

}  // namespace dl::nn
