// Group, layer and RMS normalisation with their backward passes. Statistics are accumulated in double so that
// results do not drift with the reduction length; each row/group is reduced by one thread in a fixed order.
#include <cmath>

#include "core/error.h"
#include "core/ops.h"
#include "core/thread_pool.h"

namespace dl::ops {

namespace {

void check_affine(const char* op, const Tensor* t, int64_t n, const Tensor& x) {
  if (!t) return;
  DL_CHECK(t->dim() == 1 && t->size(0) == n, op, ": affine parameter ", t->describe(), " does not match input ",
           x.describe());
}

const float* f32_or_null(const Tensor* t, Tensor& holder) {
  if (!t) return nullptr;
  holder = t->to(DType::F32);
  return holder.f32();
}

}  // namespace

Tensor layer_norm(const Tensor& x_in, const Tensor* gamma, const Tensor* beta, float eps, Tensor* mean_out,
                  Tensor* rstd_out) {
  DL_CHECK(x_in.dim() >= 1, "layer_norm: input must have rank >= 1");
  const int64_t D = x_in.size(-1), R = x_in.numel() / std::max<int64_t>(D, 1);
  check_affine("layer_norm", gamma, D, x_in);
  check_affine("layer_norm", beta, D, x_in);
  Tensor x = x_in.to(DType::F32), gh, bh;
  const float* gp = f32_or_null(gamma, gh);
  const float* bp = f32_or_null(beta, bh);
  Tensor y = Tensor::uninitialized(x.shape());
  Tensor mean = Tensor::empty({R}), rstd = Tensor::empty({R});
  const float* xp = x.f32();
  float* yp = y.f32();
  parallel_for(R, 8, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* xr = xp + r * D;
      double s = 0, ss = 0;
      for (int64_t i = 0; i < D; ++i) s += xr[i];
      double m = s / double(D);
      for (int64_t i = 0; i < D; ++i) ss += (xr[i] - m) * (xr[i] - m);
      float mf = float(m), rs = float(1.0 / std::sqrt(ss / double(D) + eps));
      mean.f32()[r] = mf;
      rstd.f32()[r] = rs;
      float* yr = yp + r * D;
      for (int64_t i = 0; i < D; ++i) {
        float v = (xr[i] - mf) * rs;
        if (gp) v *= gp[i];
        if (bp) v += bp[i];
        yr[i] = v;
      }
    }
  });
  if (mean_out) *mean_out = mean;
  if (rstd_out) *rstd_out = rstd;
  return y;
}

void layer_norm_backward(const Tensor& x_in, const Tensor* gamma, const Tensor& mean, const Tensor& rstd,
                         const Tensor& gy_in, Tensor* gx, Tensor* ggamma, Tensor* gbeta) {
  const int64_t D = x_in.size(-1), R = x_in.numel() / std::max<int64_t>(D, 1);
  DL_CHECK(gy_in.shape() == x_in.shape(), "layer_norm backward: gradient ", gy_in.describe(), " vs input ",
           x_in.describe());
  Tensor x = x_in.to(DType::F32), gy = gy_in.contiguous(), gh;
  const float* gp = f32_or_null(gamma, gh);
  const float *xp = x.f32(), *gyp = gy.f32(), *mp = mean.f32(), *rp = rstd.f32();
  if (gx) {
    *gx = Tensor::uninitialized(x.shape());
    float* gxp = gx->f32();
    parallel_for(R, 8, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const float *xr = xp + r * D, *gr = gyp + r * D;
        double a = 0, b = 0;  // mean(dxhat), mean(dxhat * xhat)
        for (int64_t i = 0; i < D; ++i) {
          float xh = (xr[i] - mp[r]) * rp[r];
          float dxh = gp ? gr[i] * gp[i] : gr[i];
          a += dxh;
          b += double(dxh) * xh;
        }
        float ma = float(a / double(D)), mb = float(b / double(D));
        float* o = gxp + r * D;
        for (int64_t i = 0; i < D; ++i) {
          float xh = (xr[i] - mp[r]) * rp[r];
          float dxh = gp ? gr[i] * gp[i] : gr[i];
          o[i] = rp[r] * (dxh - ma - xh * mb);
        }
      }
    });
  }
  if (ggamma || gbeta) {
    if (ggamma) *ggamma = Tensor::empty({D});
    if (gbeta) *gbeta = Tensor::empty({D});
    parallel_for(D, 64, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        double sg = 0, sb = 0;
        for (int64_t r = 0; r < R; ++r) {
          float g = gyp[r * D + i];
          sg += double(g) * ((xp[r * D + i] - mp[r]) * rp[r]);
          sb += g;
        }
        if (ggamma) ggamma->f32()[i] = float(sg);
        if (gbeta) gbeta->f32()[i] = float(sb);
      }
    });
  }
}

Tensor rms_norm(const Tensor& x_in, const Tensor& weight, float eps, Tensor* rstd_out) {
  DL_CHECK(x_in.dim() >= 1, "rms_norm: input must have rank >= 1");
  const int64_t D = x_in.size(-1), R = x_in.numel() / std::max<int64_t>(D, 1);
  check_affine("rms_norm", &weight, D, x_in);
  Tensor x = x_in.to(DType::F32), w = weight.to(DType::F32);
  Tensor y = Tensor::uninitialized(x.shape()), rstd = Tensor::empty({R});
  const float *xp = x.f32(), *wp = w.f32();
  float* yp = y.f32();
  parallel_for(R, 8, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* xr = xp + r * D;
      double ss = 0;
      for (int64_t i = 0; i < D; ++i) ss += double(xr[i]) * xr[i];
      float rs = float(1.0 / std::sqrt(ss / double(D) + eps));
      rstd.f32()[r] = rs;
      float* yr = yp + r * D;
      for (int64_t i = 0; i < D; ++i) yr[i] = wp[i] * (xr[i] * rs);
    }
  });
  if (rstd_out) *rstd_out = rstd;
  return y;
}

void rms_norm_backward(const Tensor& x_in, const Tensor& weight, const Tensor& rstd, const Tensor& gy_in, Tensor* gx,
                       Tensor* gw) {
  const int64_t D = x_in.size(-1), R = x_in.numel() / std::max<int64_t>(D, 1);
  DL_CHECK(gy_in.shape() == x_in.shape(), "rms_norm backward: gradient ", gy_in.describe(), " vs input ",
           x_in.describe());
  Tensor x = x_in.to(DType::F32), w = weight.to(DType::F32), gy = gy_in.contiguous();
  const float *xp = x.f32(), *wp = w.f32(), *gyp = gy.f32(), *rp = rstd.f32();
  if (gx) {
    *gx = Tensor::uninitialized(x.shape());
    float* gxp = gx->f32();
    parallel_for(R, 8, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const float *xr = xp + r * D, *gr = gyp + r * D;
        double b = 0;  // mean(dxhat * xhat)
        for (int64_t i = 0; i < D; ++i) b += double(gr[i] * wp[i]) * (xr[i] * rp[r]);
        float mb = float(b / double(D));
        float* o = gxp + r * D;
        for (int64_t i = 0; i < D; ++i) o[i] = rp[r] * (gr[i] * wp[i] - xr[i] * rp[r] * mb);
      }
    });
  }
  if (gw) {
    *gw = Tensor::empty({D});
    parallel_for(D, 64, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        double s = 0;
        for (int64_t r = 0; r < R; ++r) s += double(gyp[r * D + i]) * (xp[r * D + i] * rp[r]);
        gw->f32()[i] = float(s);
      }
    });
  }
}

Tensor group_norm(const Tensor& x_in, int groups, const Tensor* gamma, const Tensor* beta, float eps,
                  Tensor* mean_out, Tensor* rstd_out) {
  DL_CHECK(x_in.dim() >= 2, "group_norm: input must be [N, C, ...], got ", x_in.describe());
  const int64_t N = x_in.size(0), C = x_in.size(1);
  DL_CHECK(groups > 0 && C % groups == 0, "group_norm: ", C, " channels are not divisible into ", groups,
           " groups (input ", x_in.describe(), ")");
  check_affine("group_norm", gamma, C, x_in);
  check_affine("group_norm", beta, C, x_in);
  const int64_t S = x_in.numel() / std::max<int64_t>(N * C, 1), cpg = C / groups, len = cpg * S;
  Tensor x = x_in.to(DType::F32), gh, bh;
  const float* gp = f32_or_null(gamma, gh);
  const float* bp = f32_or_null(beta, bh);
  Tensor y = Tensor::uninitialized(x.shape()), mean = Tensor::empty({N, groups}), rstd = Tensor::empty({N, groups});
  const float* xp = x.f32();
  float* yp = y.f32();
  parallel_for(N * groups, 1, [&](int64_t i0, int64_t i1) {
    for (int64_t ng = i0; ng < i1; ++ng) {
      const float* xg = xp + ng * len;
      double s = 0, ss = 0;
      for (int64_t i = 0; i < len; ++i) s += xg[i];
      double m = s / double(len);
      for (int64_t i = 0; i < len; ++i) ss += (xg[i] - m) * (xg[i] - m);
      float mf = float(m), rs = float(1.0 / std::sqrt(ss / double(len) + eps));
      mean.f32()[ng] = mf;
      rstd.f32()[ng] = rs;
      int64_t c0 = (ng % groups) * cpg;
      float* yg = yp + ng * len;
      for (int64_t c = 0; c < cpg; ++c) {
        float ga = gp ? gp[c0 + c] : 1.f, be = bp ? bp[c0 + c] : 0.f;
        for (int64_t p = 0; p < S; ++p) yg[c * S + p] = (xg[c * S + p] - mf) * rs * ga + be;
      }
    }
  });
  if (mean_out) *mean_out = mean;
  if (rstd_out) *rstd_out = rstd;
  return y;
}

void group_norm_backward(const Tensor& x_in, int groups, const Tensor* gamma, const Tensor& mean, const Tensor& rstd,
                         const Tensor& gy_in, Tensor* gx, Tensor* ggamma, Tensor* gbeta) {
  const int64_t N = x_in.size(0), C = x_in.size(1);
  const int64_t S = x_in.numel() / std::max<int64_t>(N * C, 1), cpg = C / groups, len = cpg * S;
  DL_CHECK(gy_in.shape() == x_in.shape(), "group_norm backward: gradient ", gy_in.describe(), " vs input ",
           x_in.describe());
  Tensor x = x_in.to(DType::F32), gy = gy_in.contiguous(), gh;
  const float* gp = f32_or_null(gamma, gh);
  const float *xp = x.f32(), *gyp = gy.f32(), *mp = mean.f32(), *rp = rstd.f32();
  if (gx) {
    *gx = Tensor::uninitialized(x.shape());
    float* gxp = gx->f32();
    parallel_for(N * groups, 1, [&](int64_t i0, int64_t i1) {
      for (int64_t ng = i0; ng < i1; ++ng) {
        const float *xg = xp + ng * len, *gg = gyp + ng * len;
        const int64_t c0 = (ng % groups) * cpg;
        const float m = mp[ng], rs = rp[ng];
        double a = 0, b = 0;
        for (int64_t c = 0; c < cpg; ++c) {
          float ga = gp ? gp[c0 + c] : 1.f;
          for (int64_t p = 0; p < S; ++p) {
            float dxh = gg[c * S + p] * ga;
            a += dxh;
            b += double(dxh) * ((xg[c * S + p] - m) * rs);
          }
        }
        float ma = float(a / double(len)), mb = float(b / double(len));
        float* o = gxp + ng * len;
        for (int64_t c = 0; c < cpg; ++c) {
          float ga = gp ? gp[c0 + c] : 1.f;
          for (int64_t p = 0; p < S; ++p) {
            float xh = (xg[c * S + p] - m) * rs;
            o[c * S + p] = rs * (gg[c * S + p] * ga - ma - xh * mb);
          }
        }
      }
    });
  }
  if (ggamma || gbeta) {
    if (ggamma) *ggamma = Tensor::empty({C});
    if (gbeta) *gbeta = Tensor::empty({C});
    parallel_for(C, 1, [&](int64_t c0, int64_t c1) {
      for (int64_t c = c0; c < c1; ++c) {
        double sg = 0, sb = 0;
        for (int64_t n = 0; n < N; ++n) {
          int64_t ng = n * groups + c / cpg;
          const float *xr = xp + (n * C + c) * S, *gr = gyp + (n * C + c) * S;
          for (int64_t p = 0; p < S; ++p) {
            sg += double(gr[p]) * ((xr[p] - mp[ng]) * rp[ng]);
            sb += gr[p];
          }
        }
        if (ggamma) ggamma->f32()[c] = float(sg);
        if (gbeta) gbeta->f32()[c] = float(sb);
      }
    });
  }
}

}  // namespace dl::ops
