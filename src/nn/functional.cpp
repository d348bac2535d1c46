#include "nn/functional.h"

#include <numeric>

#include "core/error.h"

namespace dl::nn {

using GradFn = std::function<void(const Tensor&, const std::vector<bool>&, std::vector<Tensor>&)>;

Var matmul(const Var& a, const Var& b, bool ta, bool tb) {
  Tensor y = ops::matmul(a.value(), b.value(), ta, tb);
  Tensor av = a.value(), bv = b.value();
  return record("matmul", y, {a, b}, [av, bv, ta, tb](const Tensor& g, const std::vector<bool>& need, auto& gin) {
    // y = op(a) op(b): d op(a) = g op(b)^T, d op(b) = op(a)^T g; transposes fold into the GEMM flags.
    if (need[0]) {
      Tensor ga = ta ? ops::matmul(bv, g, tb, true) : ops::matmul(g, bv, false, !tb);
      gin[0] = ops::reduce_to_shape(ga, av.shape());
    }
    if (need[1]) {
      Tensor gb = tb ? ops::matmul(g, av, true, ta) : ops::matmul(av, g, !ta, false);
      gin[1] = ops::reduce_to_shape(gb, bv.shape());
    }
  });
}

Var linear(const Var& x, const Var& weight, const Var* bias) {
  Tensor bv = bias ? bias->value() : Tensor();
  Tensor y = ops::linear(x.value(), weight.value(), bias ? &bv : nullptr);
  std::vector<Var> in{x, weight};
  if (bias) in.push_back(*bias);
  Tensor xv = x.value(), wv = weight.value();
  return record("linear", y, in, [xv, wv](const Tensor& g, const std::vector<bool>& need, auto& gin) {
    if (need[0]) gin[0] = ops::linear_backward_input(g, wv);
    if (need[1]) {
      DL_CHECK(wv.dtype() == DType::F32, "linear: gradient for a ", dtype_name(wv.dtype()),
               " weight (train with F32 weights)");
      gin[1] = ops::linear_backward_weight(g, xv);
    }
    if (need.size() > 2 && need[2]) gin[2] = ops::sum_rows(g);
  });
}

Var conv2d(const Var& x, const Var& weight, const Var* bias, int stride, int padding) {
  Tensor bv = bias ? bias->value() : Tensor();
  Tensor y = ops::conv2d(x.value(), weight.value(), bias ? &bv : nullptr, stride, padding);
  std::vector<Var> in{x, weight};
  if (bias) in.push_back(*bias);
  Tensor xv = x.value(), wv = weight.value();
  return record("conv2d", y, in, [xv, wv, stride, padding](const Tensor& g, const std::vector<bool>& need, auto& gin) {
    const bool nb = need.size() > 2 && need[2];
    ops::conv2d_backward(xv, wv, g, stride, padding, need[0] ? &gin[0] : nullptr, need[1] ? &gin[1] : nullptr,
                         nb ? &gin[2] : nullptr);
  });
}

namespace {
// Builds the input list and affine-parameter tensors shared by the norms: x, then gamma and beta when present.
struct Affine {
  std::vector<Var> inputs;
  Tensor gamma, beta;
  int gi = -1, bi = -1;
  Affine(const Var& x, const Var* g, const Var* b) : inputs{x} {
    if (g) {
      gi = int(inputs.size());
      inputs.push_back(*g);
      gamma = g->value();
    }
    if (b) {
      bi = int(inputs.size());
      inputs.push_back(*b);
      beta = b->value();
    }
  }
  const Tensor* gp() const { return gamma.defined() ? &gamma : nullptr; }
  const Tensor* bp() const { return beta.defined() ? &beta : nullptr; }
  static Tensor* slot(std::vector<Tensor>& gin, const std::vector<bool>& need, int i) {
    return i >= 0 && need[size_t(i)] ? &gin[size_t(i)] : nullptr;
  }
};
}  // namespace

Var group_norm(const Var& x, int groups, const Var* gamma, const Var* beta, float eps) {
  Affine af(x, gamma, beta);
  Tensor mean, rstd;
  Tensor y = ops::group_norm(x.value(), groups, af.gp(), af.bp(), eps, &mean, &rstd);
  Tensor xv = x.value();
  return record("group_norm", y, af.inputs, [xv, groups, af, mean, rstd](const Tensor& g, const auto& need, auto& gin) {
    ops::group_norm_backward(xv, groups, af.gp(), mean, rstd, g, need[0] ? &gin[0] : nullptr,
                             Affine::slot(gin, need, af.gi), Affine::slot(gin, need, af.bi));
  });
}

Var layer_norm(const Var& x, const Var* gamma, const Var* beta, float eps) {
  Affine af(x, gamma, beta);
  Tensor mean, rstd;
  Tensor y = ops::layer_norm(x.value(), af.gp(), af.bp(), eps, &mean, &rstd);
  Tensor xv = x.value();
  return record("layer_norm", y, af.inputs, [xv, af, mean, rstd](const Tensor& g, const auto& need, auto& gin) {
    ops::layer_norm_backward(xv, af.gp(), mean, rstd, g, need[0] ? &gin[0] : nullptr, Affine::slot(gin, need, af.gi),
                             Affine::slot(gin, need, af.bi));
  });
}

Var rms_norm(const Var& x, const Var& weight, float eps) {
  Tensor rstd;
  Tensor y = ops::rms_norm(x.value(), weight.value(), eps, &rstd);
  Tensor xv = x.value(), wv = weight.value();
  return record("rms_norm", y, {x, weight}, [xv, wv, rstd](const Tensor& g, const auto& need, auto& gin) {
    ops::rms_norm_backward(xv, wv, rstd, g, need[0] ? &gin[0] : nullptr, need[1] ? &gin[1] : nullptr);
  });
}

Var softmax(const Var& x, const Mask& mask) {
  Tensor y = ops::softmax(x.value(), mask.view());
  return record("softmax", y, {x}, [y](const Tensor& g, const auto&, auto& gin) { gin[0] = ops::softmax_backward(y, g); });
}

Var attention(const Var& q, const Var& k, const Var& v, const Mask& mask, float scale) {
  Tensor lse;
  ops::AttentionMask mv = mask.view();
  Tensor y = ops::attention(q.value(), k.value(), v.value(), mv, scale, &lse);
  Tensor qv = q.value(), kv = k.value(), vv = v.value();
  return record("attention", y, {q, k, v}, [qv, kv, vv, y, lse, mask, scale](const Tensor& g, const auto& need, auto& gin) {
    ops::attention_backward(qv, kv, vv, y, lse, g, mask.view(), scale, need[0] ? &gin[0] : nullptr,
                            need[1] ? &gin[1] : nullptr, need[2] ? &gin[2] : nullptr);
  });
}

Var rope(const Var& x, const Tensor& positions, float theta) {
  Tensor y = ops::rope(x.value(), positions, theta);
  return record("rope", y, {x}, [positions, theta](const Tensor& g, const auto&, auto& gin) {
    gin[0] = ops::rope(g, positions, theta, /*inverse=*/true);
  });
}

Var embedding(const Var& weight, const Tensor& ids) {
  Tensor y = ops::embedding(weight.value(), ids);
  const int64_t vocab = weight.value().size(0);
  return record("embedding", y, {weight}, [ids, vocab](const Tensor& g, const auto&, auto& gin) {
    gin[0] = ops::embedding_backward(ids, g, vocab);
  });
}

Var activation(ops::Act act, const Var& x) {
  Tensor y = ops::activation(act, x.value());
  Tensor xv = x.value();
  return record("activation", y, {x}, [act, xv](const Tensor& g, const auto&, auto& gin) {
    gin[0] = ops::activation_backward(act, xv, g);
  });
}

Var geglu(const Var& x) {
  Tensor y = ops::geglu(x.value());
  Tensor xv = x.value();
  return record("geglu", y, {x}, [xv](const Tensor& g, const auto&, auto& gin) { gin[0] = ops::geglu_backward(xv, g); });
}

Var swiglu(const Var& gate, const Var& up) {
  Tensor y = ops::swiglu(gate.value(), up.value());
  Tensor gv = gate.value(), uv = up.value();
  return record("swiglu", y, {gate, up}, [gv, uv](const Tensor& g, const auto& need, auto& gin) {
    ops::swiglu_backward(gv, uv, g, need[0] ? &gin[0] : nullptr, need[1] ? &gin[1] : nullptr);
  });
}

Var upsample_nearest2x(const Var& x) {
  Tensor y = ops::upsample_nearest2x(x.value());
  return record("upsample_nearest2x", y, {x},
                [](const Tensor& g, const auto&, auto& gin) { gin[0] = ops::upsample_nearest2x_backward(g); });
}

Var upsample_nearest(const Var& x, int64_t out_h, int64_t out_w) {
  Tensor y = ops::upsample_nearest(x.value(), out_h, out_w);
  const int64_t h = x.shape()[2], w = x.shape()[3];
  return record("upsample_nearest", y, {x},
                [h, w](const Tensor& g, const auto&, auto& gin) { gin[0] = ops::upsample_nearest_backward(g, h, w); });
}

Var add(const Var& a, const Var& b) {
  Tensor y = ops::add(a.value(), b.value());
  Shape sa = a.shape(), sb = b.shape();
  return record("add", y, {a, b}, [sa, sb](const Tensor& g, const auto& need, auto& gin) {
    if (need[0]) gin[0] = ops::reduce_to_shape(g, sa);
    if (need[1]) gin[1] = ops::reduce_to_shape(g, sb);
  });
}

Var sub(const Var& a, const Var& b) {
  Tensor y = ops::sub(a.value(), b.value());
  Shape sa = a.shape(), sb = b.shape();
  return record("sub", y, {a, b}, [sa, sb](const Tensor& g, const auto& need, auto& gin) {
    if (need[0]) gin[0] = ops::reduce_to_shape(g, sa);
    if (need[1]) gin[1] = ops::reduce_to_shape(ops::scale(g, -1.f), sb);
  });
}

Var mul(const Var& a, const Var& b) {
  Tensor av = a.value(), bv = b.value();
  Tensor y = ops::mul(av, bv);
  return record("mul", y, {a, b}, [av, bv](const Tensor& g, const auto& need, auto& gin) {
    if (need[0]) gin[0] = ops::reduce_to_shape(ops::mul(g, bv), av.shape());
    if (need[1]) gin[1] = ops::reduce_to_shape(ops::mul(g, av), bv.shape());
  });
}

Var scale(const Var& a, float s) {
  Tensor y = ops::scale(a.value(), s);
  return record("scale", y, {a}, [s](const Tensor& g, const auto&, auto& gin) { gin[0] = ops::scale(g, s); });
}

Var concat(const std::vector<Var>& xs, int64_t dim) {
  std::vector<Tensor> vals;
  std::vector<int64_t> sizes;
  for (const Var& x : xs) vals.push_back(x.value());
  Tensor y = ops::concat(vals, dim);
  const int64_t d = y.canon_dim(dim);
  for (const Var& x : xs) sizes.push_back(x.value().size(d));
  return record("concat", y, xs, [sizes, d](const Tensor& g, const auto& need, auto& gin) {
    std::vector<Tensor> parts = ops::split(g, sizes, d);
    for (size_t i = 0; i < parts.size(); ++i)
      if (need[i]) gin[i] = parts[i].contiguous();
  });
}

std::vector<Var> split(const Var& x, const std::vector<int64_t>& sizes, int64_t dim) {
  const int64_t d = x.value().canon_dim(dim);
  std::vector<Var> out;
  int64_t at = 0;
  for (int64_t s : sizes) {
    out.push_back(slice(x, d, at, at + s));
    at += s;
  }
  DL_CHECK(at == x.value().size(d), "split: sizes sum to ", at, " but dimension ", d, " of ", x.value().describe(),
           " is ", x.value().size(d));
  return out;
}

Var sum(const Var& x, int64_t dim, bool keepdim) {
  Tensor y = ops::sum(x.value(), dim, keepdim);
  const int64_t d = x.value().canon_dim(dim);
  Shape sx = x.shape();
  return record("sum", y, {x}, [sx, d, keepdim](const Tensor& g, const auto&, auto& gin) {
    Tensor gk = keepdim ? g : g.unsqueeze(d);
    gin[0] = gk.expand(sx).contiguous();
  });
}

Var mean(const Var& x, int64_t dim, bool keepdim) {
  const int64_t n = x.value().size(dim);
  DL_CHECK(n > 0, "mean: empty dimension ", dim, " of ", x.value().describe());
  return scale(sum(x, dim, keepdim), 1.f / float(n));
}

Var sum_all(const Var& x) {
  Tensor y = Tensor::scalar(ops::sum_all(x.value()));
  Shape sx = x.shape();
  return record("sum_all", y, {x}, [sx](const Tensor& g, const auto&, auto& gin) {
    gin[0] = Tensor::full(sx, g.f32()[0]);
  });
}

Var reshape(const Var& x, const Shape& shape) {
  Tensor y = x.value().reshape(shape);
  Shape sx = x.shape();
  return record("reshape", y, {x}, [sx](const Tensor& g, const auto&, auto& gin) { gin[0] = g.reshape(sx); });
}

Var transpose(const Var& x, int64_t a, int64_t b) {
  Tensor y = x.value().transpose(a, b);
  return record("transpose", y, {x}, [a, b](const Tensor& g, const auto&, auto& gin) {
    gin[0] = g.transpose(a, b).contiguous();
  });
}

Var permute(const Var& x, const std::vector<int64_t>& dims) {
  Tensor y = x.value().permute(dims);
  std::vector<int64_t> inv(dims.size());
  for (size_t i = 0; i < dims.size(); ++i) inv[size_t(x.value().canon_dim(dims[i]))] = int64_t(i);
  return record("permute", y, {x}, [inv](const Tensor& g, const auto&, auto& gin) {
    gin[0] = g.permute(inv).contiguous();
  });
}

Var slice(const Var& x, int64_t dim, int64_t start, int64_t end) {
  Tensor y = x.value().slice(dim, start, end);
  Shape sx = x.shape();
  return record("slice", y, {x}, [sx, dim, start, end](const Tensor& g, const auto&, auto& gin) {
    Tensor full = Tensor::zeros(sx);
    Tensor part = full.slice(dim, start, end);
    part.copy_from(g);
    gin[0] = full;
  });
}

Var cross_entropy(const Var& logits, const Tensor& targets, int64_t ignore_index) {
  int64_t counted = 0;
  float loss = ops::cross_entropy(logits.value(), targets, ignore_index, &counted);
  Tensor lv = logits.value();
  return record("cross_entropy", Tensor::scalar(loss), {logits},
                [lv, targets, ignore_index, counted](const Tensor& g, const auto&, auto& gin) {
                  gin[0] = ops::cross_entropy_backward(lv, targets, g.f32()[0], ignore_index, counted);
                });
}

Var mse(const Var& a, const Var& b) {
  float loss = ops::mse(a.value(), b.value());
  Tensor av = a.value(), bv = b.value();
  return record("mse", Tensor::scalar(loss), {a, b}, [av, bv](const Tensor& g, const auto& need, auto& gin) {
    Tensor diff = ops::scale(ops::sub(av, bv), 2.f * g.f32()[0] / float(av.numel()));
    if (need[0]) gin[0] = diff;
    if (need[1]) gin[1] = ops::scale(diff, -1.f);
  });
}

Var gaussian_sample(const Var& mean, const Var& logvar, const Tensor& eps) {
  Tensor lv = logvar.value();
  return record("gaussian_sample", ops::gaussian_sample(mean.value(), lv, eps), {mean, logvar},
                [lv, eps](const Tensor& g, const auto& need, auto& gin) {
                  ops::gaussian_sample_backward(lv, eps, g, need[0] ? &gin[0] : nullptr, need[1] ? &gin[1] : nullptr);
                });
}

Var gaussian_kl(const Var& mean, const Var& logvar) {
  Tensor m = mean.value(), lv = logvar.value();
  return record("gaussian_kl", Tensor::scalar(ops::gaussian_kl(m, lv)), {mean, logvar},
                [m, lv](const Tensor& g, const auto& need, auto& gin) {
                  ops::gaussian_kl_backward(m, lv, g.f32()[0], need[0] ? &gin[0] : nullptr,
                                            need[1] ? &gin[1] : nullptr);
                });
}

}  // namespace dl::nn
