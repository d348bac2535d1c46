// Elementwise ops with broadcasting, activations, layout ops, lookups, reductions and losses.
#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <vector>

#include "core/error.h"
#include "core/kernels/vec.h"
#include "core/ops.h"
#include "core/thread_pool.h"

namespace dl::ops {

namespace {

constexpr int64_t kGrain = 1 << 14;

// Applies out = f(a, b) over the broadcast shape. Inner loop along the last dim with per-operand strides.
template <typename F>
Tensor binary(const Tensor& a_in, const Tensor& b_in, const char* op, F f) {
  DL_CHECK(a_in.dtype() == DType::F32 && b_in.dtype() == DType::F32, op, ": F32 operands expected, got ",
           a_in.describe(), " and ", b_in.describe());
  Shape shape = broadcast_shapes(a_in.shape(), b_in.shape(), op);
  Tensor out = Tensor::uninitialized(shape);
  const int64_t n = out.numel();
  if (n == 0) return out;
  float* o = out.f32();
  if (a_in.shape() == shape && b_in.shape() == shape && a_in.is_contiguous() && b_in.is_contiguous()) {
    const float *a = a_in.f32(), *b = b_in.f32();
    parallel_for(n, kGrain, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) o[i] = f(a[i], b[i]);
    });
    return out;
  }
  if (shape.empty()) {
    o[0] = f(a_in.item(), b_in.item());
    return out;
  }
  Tensor a = a_in.expand(shape), b = b_in.expand(shape);
  const int64_t inner = shape.back(), rows = n / inner;
  const int64_t sa = a.strides().back(), sb = b.strides().back();
  const size_t r = shape.size();
  parallel_for(rows, std::max<int64_t>(1, kGrain / inner), [&](int64_t r0, int64_t r1) {
    for (int64_t row = r0; row < r1; ++row) {
      int64_t rem = row, oa = 0, ob = 0;
      for (size_t d = r - 1; d-- > 0;) {
        int64_t idx = rem % shape[d];
        rem /= shape[d];
        oa += idx * a.strides()[d];
        ob += idx * b.strides()[d];
      }
      const float *ap = a.f32() + oa, *bp = b.f32() + ob;
      float* op_ = o + row * inner;
      for (int64_t i = 0; i < inner; ++i) op_[i] = f(ap[i * sa], bp[i * sb]);
    }
  });
  return out;
}

template <typename F>
Tensor unary(const Tensor& x_in, F f) {
  Tensor x = x_in.to(DType::F32);
  Tensor y = Tensor::uninitialized(x.shape());
  const float* xp = x.f32();
  float* yp = y.f32();
  parallel_for(x.numel(), kGrain, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) yp[i] = f(xp[i]);
  });
  return y;
}

constexpr float kSqrt1_2 = 0.70710678118654752f;
constexpr float kSqrt2OverPi = 0.79788456080286536f;
constexpr float kInvSqrt2Pi = 0.39894228040143268f;

inline float gelu_erf(float x) { return 0.5f * x * (1.f + std::erf(x * kSqrt1_2)); }
inline float gelu_erf_grad(float x) {
  return 0.5f * (1.f + std::erf(x * kSqrt1_2)) + x * kInvSqrt2Pi * std::exp(-0.5f * x * x);
}

// SiLU (a = 1) and quick-GELU (a = 1.702) are x * sigmoid(a x): their gates are computed a block at a time by the
// vectorised logistic function, then combined (activation, activation_backward). The GELUs go element by element.
constexpr int64_t kGateBlock = 512;
std::optional<float> gate_slope(Act act) {
  if (act == Act::SiLU) return 1.f;
  if (act == Act::QuickGelu) return 1.702f;
  return std::nullopt;
}

float gelu_forward(Act act, float x) {
  if (act == Act::GeluErf) return gelu_erf(x);
  return 0.5f * x * (1.f + std::tanh(kSqrt2OverPi * (x + 0.044715f * x * x * x)));
}

float gelu_grad(Act act, float x) {
  if (act == Act::GeluErf) return gelu_erf_grad(x);
  const float t = std::tanh(kSqrt2OverPi * (x + 0.044715f * x * x * x));
  return 0.5f * (1.f + t) + 0.5f * x * (1.f - t * t) * kSqrt2OverPi * (1.f + 3.f * 0.044715f * x * x);
}

// Sum of n values in fixed 4096-element chunks, chunks combined in order: independent of the thread count.
template <typename Get>
double chunked_sum(int64_t n, Get get) {
  constexpr int64_t kChunk = 4096;
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  std::vector<double> part(size_t(chunks), 0.0);
  parallel_for(chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      double s = 0;
      for (int64_t i = c * kChunk; i < std::min(n, (c + 1) * kChunk); ++i) s += get(i);
      part[size_t(c)] = s;
    }
  });
  double s = 0;
  for (double p : part) s += p;
  return s;
}

int64_t id_at(const Tensor& ids, int64_t i) {
  return ids.dtype() == DType::I64 ? ids.data<int64_t>()[i] : int64_t(ids.data<int32_t>()[i]);
}

void check_ids(const char* op, const Tensor& ids) {
  DL_CHECK(ids.dtype() == DType::I32 || ids.dtype() == DType::I64, op, ": ids must be I32 or I64, got ",
           ids.describe());
}

}  // namespace

Tensor add(const Tensor& a, const Tensor& b) { return binary(a, b, "add", [](float x, float y) { return x + y; }); }
Tensor sub(const Tensor& a, const Tensor& b) { return binary(a, b, "sub", [](float x, float y) { return x - y; }); }
Tensor mul(const Tensor& a, const Tensor& b) { return binary(a, b, "mul", [](float x, float y) { return x * y; }); }
Tensor scale(const Tensor& a, float s) {
  return unary(a, [s](float x) { return x * s; });
}
Tensor add_scalar(const Tensor& a, float s) {
  return unary(a, [s](float x) { return x + s; });
}

void add_inplace(Tensor& dst, const Tensor& src_in) {
  DL_CHECK(dst.shape() == src_in.shape(), "add_inplace: ", dst.describe(), " += ", src_in.describe());
  DL_CHECK(dst.dtype() == DType::F32 && dst.is_contiguous(), "add_inplace: destination ", dst.describe(),
           " must be contiguous F32");
  Tensor src = src_in.to(DType::F32);
  float* d = dst.f32();
  const float* s = src.f32();
  parallel_for(dst.numel(), kGrain, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) d[i] += s[i];
  });
}

Tensor reduce_to_shape(const Tensor& g, const Shape& shape) {
  if (g.shape() == shape) return g;
  DL_CHECK(g.dim() >= int64_t(shape.size()), "reduce_to_shape: cannot reduce ", g.describe(), " to ",
           shape_str(shape));
  Tensor r = g;
  const size_t lead = g.shape().size() - shape.size();
  for (size_t d = 0; d < g.shape().size(); ++d) {
    const int64_t want = d < lead ? 1 : shape[d - lead];
    if (r.shape()[d] != want) {
      DL_CHECK(want == 1, "reduce_to_shape: cannot reduce ", g.describe(), " to ", shape_str(shape));
      r = sum(r, int64_t(d), /*keepdim=*/true);
    }
  }
  return r.reshape(shape);
}

Tensor activation(Act act, const Tensor& x_in) {
  const std::optional<float> a = gate_slope(act);
  if (!a) return unary(x_in, [act](float v) { return gelu_forward(act, v); });
  Tensor x = x_in.to(DType::F32);
  Tensor y = Tensor::uninitialized(x.shape());
  const float* xp = x.f32();
  float* yp = y.f32();
  parallel_for(x.numel(), kGrain, [&](int64_t i0, int64_t i1) {
    for (int64_t b = i0; b < i1; b += kGateBlock) {
      const int64_t n = std::min(kGateBlock, i1 - b);
      vec::sigmoid(xp + b, *a, yp + b, n);
      for (int64_t i = b; i < b + n; ++i) yp[i] *= xp[i];
    }
  });
  return y;
}

Tensor activation_backward(Act act, const Tensor& x_in, const Tensor& gy_in) {
  DL_CHECK(x_in.shape() == gy_in.shape(), "activation backward: ", x_in.describe(), " vs ", gy_in.describe());
  Tensor x = x_in.to(DType::F32), gy = gy_in.contiguous();
  Tensor gx = Tensor::uninitialized(x.shape());
  const float *xp = x.f32(), *gp = gy.f32();
  float* op = gx.f32();
  const std::optional<float> a = gate_slope(act);
  parallel_for(x.numel(), kGrain, [&](int64_t i0, int64_t i1) {
    if (!a) {
      for (int64_t i = i0; i < i1; ++i) op[i] = gp[i] * gelu_grad(act, xp[i]);
      return;
    }
    float s[kGateBlock];
    for (int64_t b = i0; b < i1; b += kGateBlock) {
      const int64_t n = std::min(kGateBlock, i1 - b);
      vec::sigmoid(xp + b, *a, s, n);
      // d/dx x s(ax) = s + a x s (1 - s)
      for (int64_t i = 0; i < n; ++i) op[b + i] = gp[b + i] * (s[i] + *a * xp[b + i] * s[i] * (1.f - s[i]));
    }
  });
  return gx;
}

Tensor geglu(const Tensor& x_in) {
  DL_CHECK(x_in.dim() >= 1 && x_in.size(-1) % 2 == 0, "geglu: last dimension of ", x_in.describe(), " is odd");
  Tensor x = x_in.to(DType::F32);
  const int64_t F2 = x.size(-1), F = F2 / 2, R = x.numel() / std::max<int64_t>(F2, 1);
  Shape s = x.shape();
  s.back() = F;
  Tensor y = Tensor::uninitialized(s);
  parallel_for(R, std::max<int64_t>(1, kGrain / std::max<int64_t>(F, 1)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* xr = x.f32() + r * F2;
      float* yr = y.f32() + r * F;
      for (int64_t i = 0; i < F; ++i) yr[i] = xr[i] * gelu_erf(xr[F + i]);
    }
  });
  return y;
}

Tensor geglu_backward(const Tensor& x_in, const Tensor& gy_in) {
  Tensor x = x_in.to(DType::F32), gy = gy_in.contiguous();
  const int64_t F2 = x.size(-1), F = F2 / 2, R = x.numel() / std::max<int64_t>(F2, 1);
  DL_CHECK(gy.numel() == R * F, "geglu backward: gradient ", gy_in.describe(), " vs input ", x_in.describe());
  Tensor gx = Tensor::uninitialized(x.shape());
  parallel_for(R, std::max<int64_t>(1, kGrain / std::max<int64_t>(F, 1)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float *xr = x.f32() + r * F2, *gr = gy.f32() + r * F;
      float* o = gx.f32() + r * F2;
      for (int64_t i = 0; i < F; ++i) {
        o[i] = gr[i] * gelu_erf(xr[F + i]);
        o[F + i] = gr[i] * xr[i] * gelu_erf_grad(xr[F + i]);
      }
    }
  });
  return gx;
}

Tensor swiglu(const Tensor& gate_in, const Tensor& up_in) {
  DL_CHECK(gate_in.shape() == up_in.shape(), "swiglu: gate ", gate_in.describe(), " and up ", up_in.describe(),
           " differ");
  DL_CHECK(gate_in.dtype() == DType::F32 && up_in.dtype() == DType::F32, "swiglu: F32 operands expected, got ",
           gate_in.describe(), " and ", up_in.describe());
  Tensor g = gate_in.contiguous(), u = up_in.contiguous();
  Tensor y = Tensor::uninitialized(g.shape());
  const float *gp = g.f32(), *up = u.f32();
  float* yp = y.f32();
  parallel_for(g.numel(), kGrain, [&](int64_t i0, int64_t i1) {
    for (int64_t b = i0; b < i1; b += kGateBlock) {
      const int64_t n = std::min(kGateBlock, i1 - b);
      vec::sigmoid(gp + b, 1.f, yp + b, n);
      for (int64_t i = b; i < b + n; ++i) yp[i] = gp[i] * yp[i] * up[i];
    }
  });
  return y;
}

void swiglu_backward(const Tensor& gate_in, const Tensor& up_in, const Tensor& gy_in, Tensor* ggate, Tensor* gup) {
  Tensor g = gate_in.contiguous(), u = up_in.contiguous(), gy = gy_in.contiguous();
  DL_CHECK(g.shape() == gy.shape() && u.shape() == gy.shape(), "swiglu backward: shapes ", g.describe(), ", ",
           u.describe(), ", ", gy.describe());
  if (ggate) *ggate = Tensor::uninitialized(g.shape());
  if (gup) *gup = Tensor::uninitialized(g.shape());
  const float *gp = g.f32(), *up = u.f32(), *dy = gy.f32();
  float* dg = ggate ? ggate->f32() : nullptr;
  float* du = gup ? gup->f32() : nullptr;
  parallel_for(g.numel(), kGrain, [&](int64_t i0, int64_t i1) {
    float s[kGateBlock];
    for (int64_t b = i0; b < i1; b += kGateBlock) {
      const int64_t n = std::min(kGateBlock, i1 - b);
      vec::sigmoid(gp + b, 1.f, s, n);
      for (int64_t k = 0; k < n; ++k) {
        const int64_t i = b + k;
        const float x = gp[i];
        if (dg) dg[i] = dy[i] * up[i] * s[k] * (1.f + x * (1.f - s[k]));
        if (du) du[i] = dy[i] * x * s[k];
      }
    }
  });
}

Tensor upsample_nearest2x(const Tensor& x_in) {
  DL_CHECK(x_in.dim() == 4, "upsample_nearest2x: input must be [N,C,H,W], got ", x_in.describe());
  Tensor x = x_in.to(DType::F32);
  const int64_t NC = x.size(0) * x.size(1), H = x.size(2), W = x.size(3);
  Tensor y = Tensor::uninitialized({x.size(0), x.size(1), 2 * H, 2 * W});
  parallel_for(NC * H, 16, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* xr = x.f32() + r * W;
      float* y0 = y.f32() + (r / H) * 4 * H * W + (r % H) * 2 * (2 * W);
      float* y1 = y0 + 2 * W;
      for (int64_t i = 0; i < W; ++i) y0[2 * i] = y0[2 * i + 1] = y1[2 * i] = y1[2 * i + 1] = xr[i];
    }
  });
  return y;
}

Tensor upsample_nearest2x_backward(const Tensor& gy_in) {
  DL_CHECK(gy_in.dim() == 4 && gy_in.size(2) % 2 == 0 && gy_in.size(3) % 2 == 0,
           "upsample_nearest2x backward: gradient ", gy_in.describe(), " is not [N,C,2H,2W]");
  Tensor gy = gy_in.contiguous();
  const int64_t H = gy.size(2) / 2, W = gy.size(3) / 2, NC = gy.size(0) * gy.size(1);
  Tensor gx = Tensor::uninitialized({gy.size(0), gy.size(1), H, W});
  parallel_for(NC * H, 16, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* g0 = gy.f32() + (r / H) * 4 * H * W + (r % H) * 2 * (2 * W);
      const float* g1 = g0 + 2 * W;
      float* o = gx.f32() + r * W;
      for (int64_t i = 0; i < W; ++i) o[i] = (g0[2 * i] + g0[2 * i + 1]) + (g1[2 * i] + g1[2 * i + 1]);
    }
  });
  return gx;
}

namespace {
// PyTorch's nearest source index for an output size given without a scale factor (the scale is a float ratio).
std::vector<int64_t> nearest_sources(int64_t in, int64_t out) {
  const float scale = float(in) / float(out);
  std::vector<int64_t> src(static_cast<size_t>(out));
  for (int64_t o = 0; o < out; ++o) src[size_t(o)] = std::min(int64_t(std::floor(float(o) * scale)), in - 1);
  return src;
}
}  // namespace

Tensor upsample_nearest(const Tensor& x_in, int64_t out_h, int64_t out_w) {
  DL_CHECK(x_in.dim() == 4 && out_h > 0 && out_w > 0, "upsample_nearest: input ", x_in.describe(),
           " is not [N,C,H,W] or the output size ", out_h, "x", out_w, " is not positive");
  if (out_h == 2 * x_in.size(2) && out_w == 2 * x_in.size(3)) return upsample_nearest2x(x_in);
  Tensor x = x_in.to(DType::F32);
  const int64_t NC = x.size(0) * x.size(1), H = x.size(2), W = x.size(3);
  const std::vector<int64_t> sy = nearest_sources(H, out_h), sx = nearest_sources(W, out_w);
  Tensor y = Tensor::uninitialized({x.size(0), x.size(1), out_h, out_w});
  parallel_for(NC * out_h, 16, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* xr = x.f32() + (r / out_h) * H * W + sy[size_t(r % out_h)] * W;
      float* yr = y.f32() + r * out_w;
      for (int64_t i = 0; i < out_w; ++i) yr[i] = xr[sx[size_t(i)]];
    }
  });
  return y;
}

Tensor upsample_nearest_backward(const Tensor& gy_in, int64_t in_h, int64_t in_w) {
  DL_CHECK(gy_in.dim() == 4 && in_h > 0 && in_w > 0, "upsample_nearest backward: gradient ", gy_in.describe(),
           " is not [N,C,OH,OW]");
  const int64_t OH = gy_in.size(2), OW = gy_in.size(3);
  if (OH == 2 * in_h && OW == 2 * in_w) return upsample_nearest2x_backward(gy_in);
  Tensor gy = gy_in.contiguous();
  const std::vector<int64_t> sy = nearest_sources(in_h, OH), sx = nearest_sources(in_w, OW);
  const int64_t NC = gy.size(0) * gy.size(1);
  Tensor gx = Tensor::zeros({gy.size(0), gy.size(1), in_h, in_w});
  // One task per (n, c) plane: output rows of a plane scatter into shared input rows, so planes are the unit.
  parallel_for(NC, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p)
      for (int64_t oy = 0; oy < OH; ++oy) {
        const float* g = gy.f32() + (p * OH + oy) * OW;
        float* o = gx.f32() + (p * in_h + sy[size_t(oy)]) * in_w;
        for (int64_t ox = 0; ox < OW; ++ox) o[sx[size_t(ox)]] += g[ox];
      }
  });
  return gx;
}

Tensor concat(const std::vector<Tensor>& xs, int64_t dim) {
  DL_CHECK(!xs.empty(), "concat: no tensors");
  const Tensor& first = xs[0];
  const int64_t d = first.canon_dim(dim);
  Shape shape = first.shape();
  int64_t total = 0;
  for (const Tensor& t : xs) {
    DL_CHECK(t.dim() == first.dim() && t.dtype() == first.dtype(), "concat: ", t.describe(), " vs ",
             first.describe());
    for (int64_t i = 0; i < t.dim(); ++i)
      DL_CHECK(i == d || t.size(i) == first.size(i), "concat along dim ", d, ": ", t.describe(), " vs ",
               first.describe());
    total += t.size(d);
  }
  shape[size_t(d)] = total;
  Tensor out = Tensor::uninitialized(shape, first.dtype());
  int64_t at = 0;
  for (const Tensor& t : xs) {
    Tensor dst = out.slice(d, at, at + t.size(d));
    dst.copy_from(t);
    at += t.size(d);
  }
  return out;
}

std::vector<Tensor> split(const Tensor& x, const std::vector<int64_t>& sizes, int64_t dim) {
  const int64_t d = x.canon_dim(dim);
  int64_t total = 0;
  for (int64_t s : sizes) {
    DL_CHECK(s >= 0, "split: negative size ", s);
    total += s;
  }
  DL_CHECK(total == x.size(d), "split: sizes sum to ", total, " but dimension ", d, " of ", x.describe(), " is ",
           x.size(d));
  std::vector<Tensor> out;
  int64_t at = 0;
  for (int64_t s : sizes) {
    out.push_back(x.slice(d, at, at + s));
    at += s;
  }
  return out;
}

Tensor sum(const Tensor& x_in, int64_t dim, bool keepdim) {
  const int64_t d = x_in.canon_dim(dim);
  Tensor x = x_in.to(DType::F32);
  int64_t outer = 1, inner = 1;
  const int64_t n = x.size(d);
  for (int64_t i = 0; i < d; ++i) outer *= x.size(i);
  for (int64_t i = d + 1; i < x.dim(); ++i) inner *= x.size(i);
  Shape s = x.shape();
  if (keepdim)
    s[size_t(d)] = 1;
  else
    s.erase(s.begin() + d);
  Tensor y = Tensor::uninitialized(s);
  parallel_for(outer * inner, 256, [&](int64_t i0, int64_t i1) {
    for (int64_t oi = i0; oi < i1; ++oi) {
      const int64_t o = oi / inner, i = oi % inner;
      const float* xp = x.f32() + o * n * inner + i;
      double acc = 0;
      for (int64_t k = 0; k < n; ++k) acc += xp[k * inner];
      y.f32()[oi] = float(acc);
    }
  });
  return y;
}

Tensor mean(const Tensor& x, int64_t dim, bool keepdim) {
  const int64_t n = x.size(dim);
  DL_CHECK(n > 0, "mean: empty dimension ", dim, " of ", x.describe());
  return scale(sum(x, dim, keepdim), 1.f / float(n));
}

float sum_all(const Tensor& x_in) {
  Tensor x = x_in.to(DType::F32);
  const float* p = x.f32();
  return float(chunked_sum(x.numel(), [p](int64_t i) { return double(p[i]); }));
}

Tensor embedding(const Tensor& weight, const Tensor& ids_in) {
  DL_CHECK(weight.dim() == 2, "embedding: weight must be [V, D], got ", weight.describe());
  check_ids("embedding", ids_in);
  Tensor ids = ids_in.contiguous(), w = weight.contiguous();
  const int64_t V = w.size(0), D = w.size(1), n = ids.numel();
  for (int64_t i = 0; i < n; ++i) {
    const int64_t id = id_at(ids, i);
    DL_CHECK(id >= 0 && id < V, "embedding: id ", id, " at position ", i, " is outside the vocabulary of ", V);
  }
  Shape s = ids.shape();
  s.push_back(D);
  Tensor y = Tensor::uninitialized(s);
  const size_t row_bytes = dtype_bytes(w.dtype(), D);
  parallel_for(n, 16, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i)
      convert_to_f32(w.dtype(), static_cast<const char*>(w.raw()) + size_t(id_at(ids, i)) * row_bytes,
                     y.f32() + i * D, D);
  });
  return y;
}

Tensor embedding_backward(const Tensor& ids_in, const Tensor& gy_in, int64_t vocab) {
  check_ids("embedding backward", ids_in);
  Tensor ids = ids_in.contiguous(), gy = gy_in.contiguous();
  const int64_t n = ids.numel(), D = gy.size(-1);
  DL_CHECK(gy.numel() == n * D, "embedding backward: gradient ", gy_in.describe(), " vs ids ", ids_in.describe());
  Tensor gw = Tensor::zeros({vocab, D});
  // Columns split over threads; each thread walks all tokens in order, so repeated ids add up deterministically.
  parallel_for(D, 64, [&](int64_t c0, int64_t c1) {
    for (int64_t i = 0; i < n; ++i) {
      const int64_t id = id_at(ids, i);
      DL_CHECK(id >= 0 && id < vocab, "embedding backward: id ", id, " outside the vocabulary of ", vocab);
      float* dst = gw.f32() + id * D;
      const float* src = gy.f32() + i * D;
      for (int64_t c = c0; c < c1; ++c) dst[c] += src[c];
    }
  });
  return gw;
}

float cross_entropy(const Tensor& logits_in, const Tensor& targets_in, int64_t ignore_index, int64_t* counted) {
  DL_CHECK(logits_in.dim() == 2, "cross_entropy: logits must be [N, V], got ", logits_in.describe());
  check_ids("cross_entropy", targets_in);
  DL_CHECK(targets_in.numel() == logits_in.size(0), "cross_entropy: ", targets_in.describe(), " targets for logits ",
           logits_in.describe());
  Tensor logits = logits_in.to(DType::F32), targets = targets_in.contiguous();
  const int64_t N = logits.size(0), V = logits.size(1);
  int64_t count = 0;
  for (int64_t i = 0; i < N; ++i) {
    const int64_t t = id_at(targets, i);
    if (t == ignore_index) continue;
    DL_CHECK(t >= 0 && t < V, "cross_entropy: target ", t, " at row ", i, " is outside [0, ", V, ")");
    ++count;
  }
  if (counted) *counted = count;
  if (count == 0) return 0.f;
  std::vector<double> row_loss(size_t(N), 0.0);
  parallel_for(N, 4, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t t = id_at(targets, r);
      if (t == ignore_index) continue;
      const float* x = logits.f32() + r * V;
      const float m = *std::max_element(x, x + V);
      double s = 0;
      for (int64_t j = 0; j < V; ++j) s += std::exp(double(x[j] - m));
      row_loss[size_t(r)] = double(m) + std::log(s) - double(x[t]);
    }
  });
  double total = 0;
  for (double l : row_loss) total += l;
  return float(total / double(count));
}

Tensor cross_entropy_backward(const Tensor& logits_in, const Tensor& targets_in, float gloss, int64_t ignore_index,
                              int64_t divisor) {
  Tensor logits = logits_in.to(DType::F32), targets = targets_in.contiguous();
  const int64_t N = logits.size(0), V = logits.size(1);
  Tensor g = Tensor::zeros({N, V});
  if (divisor <= 0) return g;
  const float f = gloss / float(divisor);
  parallel_for(N, 4, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t t = id_at(targets, r);
      if (t == ignore_index) continue;
      const float* x = logits.f32() + r * V;
      float* o = g.f32() + r * V;
      const float m = *std::max_element(x, x + V);
      double s = 0;
      for (int64_t j = 0; j < V; ++j) s += std::exp(double(x[j] - m));
      const double inv = 1.0 / s;
      for (int64_t j = 0; j < V; ++j) o[j] = float(std::exp(double(x[j] - m)) * inv) * f;
      o[t] -= f;
    }
  });
  return g;
}

float mse(const Tensor& a_in, const Tensor& b_in) {
  DL_CHECK(a_in.shape() == b_in.shape(), "mse: shapes ", a_in.describe(), " and ", b_in.describe(), " differ");
  DL_CHECK(a_in.numel() > 0, "mse: empty input");
  Tensor a = a_in.to(DType::F32), b = b_in.to(DType::F32);
  const float *ap = a.f32(), *bp = b.f32();
  double s = chunked_sum(a.numel(), [&](int64_t i) {
    double d = double(ap[i]) - double(bp[i]);
    return d * d;
  });
  return float(s / double(a.numel()));
}

namespace {
constexpr float kLogvarMin = -30.f, kLogvarMax = 20.f;
float clamp_logvar(float v) { return std::min(std::max(v, kLogvarMin), kLogvarMax); }
// The clamp passes no gradient where it is active.
float clamp_grad(float v) { return v > kLogvarMin && v < kLogvarMax ? 1.f : 0.f; }
void check_posterior(const Tensor& mean, const Tensor& logvar, const char* what) {
  DL_CHECK(mean.shape() == logvar.shape(), what, ": mean ", mean.describe(), " and logvar ", logvar.describe(),
           " differ in shape");
  DL_CHECK(mean.dim() >= 1 && mean.numel() > 0, what, ": empty posterior");
}
}  // namespace

Tensor gaussian_sample(const Tensor& mean_in, const Tensor& logvar_in, const Tensor& eps_in) {
  check_posterior(mean_in, logvar_in, "gaussian_sample");
  DL_CHECK(eps_in.shape() == mean_in.shape(), "gaussian_sample: noise ", eps_in.describe(), " does not match ",
           mean_in.describe());
  const Tensor m = mean_in.to(DType::F32).contiguous(), lv = logvar_in.to(DType::F32).contiguous(),
               e = eps_in.to(DType::F32).contiguous();
  Tensor z = Tensor::empty(m.shape());
  const float *mp = m.f32(), *lp = lv.f32(), *ep = e.f32();
  float* zp = z.f32();
  parallel_for(z.numel(), 1 << 14, [&](int64_t a, int64_t b) {
    for (int64_t i = a; i < b; ++i) zp[i] = mp[i] + std::exp(0.5f * clamp_logvar(lp[i])) * ep[i];
  });
  return z;
}

void gaussian_sample_backward(const Tensor& logvar_in, const Tensor& eps_in, const Tensor& gz_in, Tensor* gmean,
                              Tensor* glogvar) {
  const Tensor gz = gz_in.to(DType::F32).contiguous();
  if (gmean) *gmean = gz.clone();
  if (!glogvar) return;
  const Tensor lv = logvar_in.to(DType::F32).contiguous(), e = eps_in.to(DType::F32).contiguous();
  *glogvar = Tensor::empty(lv.shape());
  const float *lp = lv.f32(), *ep = e.f32(), *gp = gz.f32();
  float* out = glogvar->f32();
  parallel_for(lv.numel(), 1 << 14, [&](int64_t a, int64_t b) {
    for (int64_t i = a; i < b; ++i)
      out[i] = gp[i] * ep[i] * 0.5f * std::exp(0.5f * clamp_logvar(lp[i])) * clamp_grad(lp[i]);
  });
}

float gaussian_kl(const Tensor& mean_in, const Tensor& logvar_in) {
  check_posterior(mean_in, logvar_in, "gaussian_kl");
  const Tensor m = mean_in.to(DType::F32).contiguous(), lv = logvar_in.to(DType::F32).contiguous();
  const float *mp = m.f32(), *lp = lv.f32();
  const double s = chunked_sum(m.numel(), [&](int64_t i) {
    const double v = clamp_logvar(lp[i]);
    return 0.5 * (double(mp[i]) * mp[i] + std::exp(v) - 1.0 - v);
  });
  return float(s / double(m.size(0)));
}

void gaussian_kl_backward(const Tensor& mean_in, const Tensor& logvar_in, float gloss, Tensor* gmean,
                          Tensor* glogvar) {
  const Tensor m = mean_in.to(DType::F32).contiguous(), lv = logvar_in.to(DType::F32).contiguous();
  const float k = gloss / float(m.size(0));
  if (gmean) *gmean = ops::scale(m, k);
  if (!glogvar) return;
  *glogvar = Tensor::empty(lv.shape());
  const float* lp = lv.f32();
  float* out = glogvar->f32();
  for (int64_t i = 0; i < lv.numel(); ++i)
    out[i] = k * 0.5f * (std::exp(clamp_logvar(lp[i])) - 1.f) * clamp_grad(lp[i]);
}

}  // namespace dl::ops
