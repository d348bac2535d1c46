// 2-D convolution as GEMM: a 1x1 stride-1 convolution is one GEMM per image; anything else unfolds the input
// (im2col) in bands of output rows so the unfolded buffer stays bounded (~16 MB) for large images.
#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "core/error.h"
#include "core/ops.h"
#include "core/thread_pool.h"

namespace dl::ops {

namespace {

struct ConvGeom {
  int64_t N, C, H, W, O, kh, kw, Ho, Wo;
  int stride, pad;
  int64_t ckk() const { return C * kh * kw; }
  bool pointwise() const { return kh == 1 && kw == 1 && stride == 1 && pad == 0; }
  // Output rows per band so that ckk * rows * Wo floats stay under the budget.
  int64_t band_rows() const {
    const int64_t budget = int64_t(4) << 20;
    return std::clamp<int64_t>(budget / std::max<int64_t>(ckk() * Wo, 1), 1, Ho);
  }
};

ConvGeom geometry(const Tensor& x, const Tensor& w, int stride, int padding) {
  DL_CHECK(x.dim() == 4, "conv2d: input must be [N,C,H,W], got ", x.describe());
  DL_CHECK(w.dim() == 4, "conv2d: weight must be [O,C,kh,kw], got ", w.describe());
  DL_CHECK(x.size(1) == w.size(1), "conv2d: input ", x.describe(), " has ", x.size(1), " channels but weight ",
           w.describe(), " expects ", w.size(1));
  DL_CHECK(stride >= 1 && padding >= 0, "conv2d: invalid stride ", stride, " or padding ", padding);
  ConvGeom g{x.size(0), x.size(1), x.size(2), x.size(3), w.size(0), w.size(2), w.size(3), 0, 0, stride, padding};
  DL_CHECK(g.H + 2 * padding >= g.kh && g.W + 2 * padding >= g.kw, "conv2d: kernel ", w.describe(),
           " larger than padded input ", x.describe());
  g.Ho = (g.H + 2 * padding - g.kh) / stride + 1;
  g.Wo = (g.W + 2 * padding - g.kw) / stride + 1;
  return g;
}

// cols[(c*kh + i)*kw + j][r*Wo + ox] = x[c][oy*s - p + i][ox*s - p + j] for output rows oy in [y0, y0 + rows).
// Small images (the unfolded image fits in 4 MB) are spread over the threads whole, one image per task: their
// per-image products are too small to split. The choice depends on the shapes only, never on the thread count.
bool images_in_parallel(const ConvGeom& g) {
  return g.N > 1 && g.ckk() * g.Ho * g.Wo <= (int64_t(1) << 20);
}

// Output columns [lo, hi) whose input column ox * stride - pad + j lies inside the row; the rest read padding.
void valid_columns(const ConvGeom& g, int64_t j, int64_t& lo, int64_t& hi) {
  const int64_t first = g.pad - j;  // ox * stride >= first
  lo = first <= 0 ? 0 : (first + g.stride - 1) / g.stride;
  const int64_t last = g.W - 1 + g.pad - j;  // ox * stride <= last
  hi = last < 0 ? 0 : std::min<int64_t>(g.Wo, last / g.stride + 1);
  lo = std::min(lo, hi);
}

// Row r of the unfolded band starts at cols + r * ld (ld >= rows * Wo: several images' bands side by side).
void im2col(const ConvGeom& g, const float* x, int64_t y0, int64_t rows, float* cols, int64_t ld) {
  const int64_t L = ld;
  parallel_for(g.ckk(), 4, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      int64_t c = r / (g.kh * g.kw), i = (r / g.kw) % g.kh, j = r % g.kw;
      const float* xc = x + c * g.H * g.W;
      float* dst = cols + r * L;
      int64_t lo, hi;
      valid_columns(g, j, lo, hi);
      for (int64_t oy = 0; oy < rows; ++oy) {
        int64_t iy = (y0 + oy) * g.stride - g.pad + i;
        float* d = dst + oy * g.Wo;
        if (iy < 0 || iy >= g.H) {
          std::fill_n(d, g.Wo, 0.f);
          continue;
        }
        const float* row = xc + iy * g.W;
        const int64_t shift = j - g.pad;  // output column ox reads input column ox * stride + shift
        std::fill_n(d, lo, 0.f);
        if (g.stride == 1) {
          if (hi > lo) std::copy(row + (lo + shift), row + (hi + shift), d + lo);
        } else {
          for (int64_t ox = lo; ox < hi; ++ox) d[ox] = row[ox * g.stride + shift];
        }
        std::fill(d + hi, d + g.Wo, 0.f);
      }
    }
  });
}

// gx[c][...] += cols gradient, the transpose of im2col. Parallel over channels: each channel owns its rows.
void col2im_add(const ConvGeom& g, const float* cols, int64_t y0, int64_t rows, float* gx) {
  const int64_t L = rows * g.Wo;
  parallel_for(g.C, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      float* gxc = gx + c * g.H * g.W;
      for (int64_t i = 0; i < g.kh; ++i)
        for (int64_t j = 0; j < g.kw; ++j) {
          const float* src = cols + ((c * g.kh + i) * g.kw + j) * L;
          int64_t lo, hi;
          valid_columns(g, j, lo, hi);
          for (int64_t oy = 0; oy < rows; ++oy) {
            int64_t iy = (y0 + oy) * g.stride - g.pad + i;
            if (iy < 0 || iy >= g.H) continue;
            float* row = gxc + iy * g.W;
            const int64_t shift = j - g.pad;  // output column ox came from input column ox * stride + shift
            const float* s = src + oy * g.Wo;
            if (g.stride == 1) {
              float* d = row + (lo + shift);
              for (int64_t ox = lo; ox < hi; ++ox) d[ox - lo] += s[ox];
            } else {
              for (int64_t ox = lo; ox < hi; ++ox) row[ox * g.stride + shift] += s[ox];
            }
          }
        }
    }
  });
}

// ---- Winograd F(2x2, 3x3) ----
// A 3x3 stride-1 convolution with padding 1 computes each 2x2 output tile from a 4x4 input tile with 16
// multiplications per (input, output) channel pair instead of 36: V = B^T d B (input), U = G g G^T (weights),
// M = U . V summed over input channels (16 independent products O x C times C x tiles, run by sgemm), Y = A^T M A.
// The transforms only add, subtract and halve, so the result differs from the direct sum by rounding alone
// (docs/benchmarks.md states the measured error). Tiles are processed in bands of tile rows so the transformed
// input stays near kWinogradBand bytes whatever the image size.

constexpr int64_t kWinogradBand = int64_t(32) << 20;

std::atomic<bool>& winograd_enabled() {
  static std::atomic<bool> enabled{[] {
    const char* e = std::getenv("DREAMLLM_CONV");
    return !(e && std::strcmp(e, "im2col") == 0);
  }()};
  return enabled;
}

bool winograd_applies(const ConvGeom& g) {
  // Below these sizes the transforms' passes over memory cost more than the multiplications they save.
  return winograd_enabled().load(std::memory_order_relaxed) && g.kh == 3 && g.kw == 3 && g.stride == 1 &&
         g.pad == 1 && g.C >= 16 && g.O >= 16 && g.Ho >= 8 && g.Wo >= 8;
}

// Each transform works on blocks of kTileBlock elements in a local [16][kTileBlock] buffer and moves whole rows of
// it to or from the 16 planes: the planes lie a multiple of 4 KiB apart, so touching all 16 element by element
// maps every access to the same cache sets and ran the weight transform at a fifth of its speed.
constexpr int64_t kTileBlock = 64;

// U[xi][o][c] for xi = 4 * i + j, the 16 entries of G g G^T.
void winograd_weights(const ConvGeom& g, const float* w, float* u) {
  const int64_t plane = g.O * g.C;
  parallel_for(g.O, 4, [&](int64_t o0, int64_t o1) {
    float buf[16][kTileBlock];
    for (int64_t o = o0; o < o1; ++o)
      for (int64_t c0 = 0; c0 < g.C; c0 += kTileBlock) {
        const int64_t nc = std::min(kTileBlock, g.C - c0);
        for (int64_t e = 0; e < nc; ++e) {
          const float* k = w + (o * g.C + c0 + e) * 9;
          float t[4][3];
          for (int j = 0; j < 3; ++j) {
            t[0][j] = k[j];
            t[1][j] = 0.5f * (k[j] + k[3 + j] + k[6 + j]);
            t[2][j] = 0.5f * (k[j] - k[3 + j] + k[6 + j]);
            t[3][j] = k[6 + j];
          }
          for (int i = 0; i < 4; ++i) {
            buf[4 * i + 0][e] = t[i][0];
            buf[4 * i + 1][e] = 0.5f * (t[i][0] + t[i][1] + t[i][2]);
            buf[4 * i + 2][e] = 0.5f * (t[i][0] - t[i][1] + t[i][2]);
            buf[4 * i + 3][e] = t[i][2];
          }
        }
        for (int xi = 0; xi < 16; ++xi) std::copy_n(buf[xi], nc, u + xi * plane + o * g.C + c0);
      }
  });
}

Tensor conv2d_winograd(const ConvGeom& g, const Tensor& x, const Tensor& w, const Tensor* bias) {
  const int64_t th = (g.Ho + 1) / 2, tw = (g.Wo + 1) / 2, HWo = g.Ho * g.Wo;
  Tensor u = Tensor::uninitialized({16, g.O, g.C});
  winograd_weights(g, w.f32(), u.f32());
  Tensor b32 = bias ? bias->to(DType::F32) : Tensor();
  const float* bp = bias ? b32.f32() : nullptr;
  // Global tile rows run over all images (image n, tile row ty = r % th): small images share one band.
  const int64_t rows_total = g.N * th;
  const int64_t band_rows =
      std::clamp<int64_t>(kWinogradBand / (16 * int64_t(sizeof(float)) * std::max(g.C, g.O) * tw), 1, rows_total);
  Tensor v = Tensor::uninitialized({16, g.C, band_rows * tw}), m = Tensor::uninitialized({16, g.O, band_rows * tw});
  Tensor out = Tensor::uninitialized({g.N, g.O, g.Ho, g.Wo});
  for (int64_t r0 = 0; r0 < rows_total; r0 += band_rows) {
    const int64_t rows = std::min(band_rows, rows_total - r0), T = rows * tw;
    float* vp = v.f32();
    parallel_for(g.C, 4, [&](int64_t c0, int64_t c1) {
      float buf[16][kTileBlock];
      const int64_t plane = g.C * T;
      for (int64_t c = c0; c < c1; ++c)
        for (int64_t r = 0; r < rows; ++r) {
          const int64_t n = (r0 + r) / th, ty = (r0 + r) % th;
          const float* xc = x.f32() + (n * g.C + c) * g.H * g.W;
          for (int64_t tx0 = 0; tx0 < tw; tx0 += kTileBlock) {
            const int64_t nt = std::min(kTileBlock, tw - tx0);
            for (int64_t e = 0; e < nt; ++e) {
              const int64_t tx = tx0 + e;
              float d[4][4];
              for (int a = 0; a < 4; ++a) {
                const int64_t iy = 2 * ty - 1 + a;
                for (int b = 0; b < 4; ++b) {
                  const int64_t ix = 2 * tx - 1 + b;
                  d[a][b] = iy >= 0 && iy < g.H && ix >= 0 && ix < g.W ? xc[iy * g.W + ix] : 0.f;
                }
              }
              float f[4][4];  // B^T d
              for (int b = 0; b < 4; ++b) {
                f[0][b] = d[0][b] - d[2][b];
                f[1][b] = d[1][b] + d[2][b];
                f[2][b] = d[2][b] - d[1][b];
                f[3][b] = d[1][b] - d[3][b];
              }
              for (int a = 0; a < 4; ++a) {  // (B^T d) B
                buf[4 * a + 0][e] = f[a][0] - f[a][2];
                buf[4 * a + 1][e] = f[a][1] + f[a][2];
                buf[4 * a + 2][e] = f[a][2] - f[a][1];
                buf[4 * a + 3][e] = f[a][1] - f[a][3];
              }
            }
            float* dst = vp + c * T + r * tw + tx0;
            for (int xi = 0; xi < 16; ++xi) std::copy_n(buf[xi], nt, dst + xi * plane);
          }
        }
    });
    // The 16 products, each computed whole by one sgemm call on one thread, so the split over threads never
    // changes a bit.
    parallel_for(16, 1, [&](int64_t x0, int64_t x1) {
      for (int64_t xi = x0; xi < x1; ++xi)
        gemm_serial(false, false, g.O, T, g.C, 1.f, u.f32() + xi * g.O * g.C, g.C, vp + xi * g.C * T, T, 0.f,
                    m.f32() + xi * g.O * T, T);
    });
    const float* mp = m.f32();
    parallel_for(g.O, 4, [&](int64_t o0, int64_t o1) {
      float buf[16][kTileBlock];
      const int64_t plane = g.O * T;
      for (int64_t o = o0; o < o1; ++o) {
        const float bv = bp ? bp[o] : 0.f;
        for (int64_t r = 0; r < rows; ++r) {
          const int64_t n = (r0 + r) / th, ty = (r0 + r) % th;
          float* on = out.f32() + (n * g.O + o) * HWo;
          for (int64_t tx0 = 0; tx0 < tw; tx0 += kTileBlock) {
            const int64_t nt = std::min(kTileBlock, tw - tx0);
            const float* src = mp + o * T + r * tw + tx0;
            for (int xi = 0; xi < 16; ++xi) std::copy_n(src + xi * plane, nt, buf[xi]);
            for (int64_t e = 0; e < nt; ++e) {
              float f[2][4];  // A^T M
              for (int b = 0; b < 4; ++b) {
                f[0][b] = buf[b][e] + buf[4 + b][e] + buf[8 + b][e];
                f[1][b] = buf[4 + b][e] - buf[8 + b][e] - buf[12 + b][e];
              }
              const int64_t ox = 2 * (tx0 + e);
              for (int a = 0; a < 2; ++a) {
                const int64_t oy = 2 * ty + a;
                if (oy >= g.Ho) break;
                on[oy * g.Wo + ox] = f[a][0] + f[a][1] + f[a][2] + bv;
                if (ox + 1 < g.Wo) on[oy * g.Wo + ox + 1] = f[a][1] - f[a][2] - f[a][3] + bv;
              }
            }
          }
        }
      }
    });
  }
  return out;
}

}  // namespace

void set_conv_winograd(bool enabled) { winograd_enabled().store(enabled); }

Tensor conv2d(const Tensor& x_in, const Tensor& w_in, const Tensor* bias, int stride, int padding) {
  ConvGeom g = geometry(x_in, w_in, stride, padding);
  DL_CHECK(x_in.dtype() == DType::F32, "conv2d: input must be F32, got ", x_in.describe());
  if (bias)
    DL_CHECK(bias->dim() == 1 && bias->size(0) == g.O, "conv2d: bias ", bias->describe(), " does not match ",
             g.O, " output channels");
  Tensor x = x_in.contiguous(), w = w_in.to(DType::F32);
  if (g.N > 0 && winograd_applies(g)) return conv2d_winograd(g, x, w, bias);
  Tensor out = Tensor::uninitialized({g.N, g.O, g.Ho, g.Wo});
  const int64_t HWo = g.Ho * g.Wo, K = g.ckk();
  if (out.numel() == 0) return out;
  const size_t cols_size = g.pointwise() ? 0 : size_t(K * g.band_rows() * g.Wo);
  auto one_image = [&](int64_t n, std::vector<float>& cols) {
    const float* xn = x.f32() + n * g.C * g.H * g.W;
    float* on = out.f32() + n * g.O * HWo;
    if (g.pointwise()) {
      gemm(false, false, g.O, HWo, g.C, 1.f, w.f32(), g.C, xn, HWo, 0.f, on, HWo);
      return;
    }
    for (int64_t y0 = 0; y0 < g.Ho; y0 += g.band_rows()) {
      int64_t rows = std::min(g.band_rows(), g.Ho - y0);
      im2col(g, xn, y0, rows, cols.data(), rows * g.Wo);
      gemm(false, false, g.O, rows * g.Wo, K, 1.f, w.f32(), K, cols.data(), rows * g.Wo, 0.f, on + y0 * g.Wo, HWo);
    }
  };
  if (!g.pointwise() && g.N > 1 && K * g.N * HWo <= (int64_t(4) << 20)) {
    // Small images (the UNet's deep levels, 8x8 latents and below): all images unfolded side by side and multiplied
    // in one product, so the weight is read and packed once per call, not once per image; at these sizes the
    // weight, not the arithmetic, is what costs.
    const int64_t cols_n = g.N * HWo;
    Tensor cols = Tensor::uninitialized({K, cols_n}), prod = Tensor::uninitialized({g.O, cols_n});
    for (int64_t n = 0; n < g.N; ++n) im2col(g, x.f32() + n * g.C * g.H * g.W, 0, g.Ho, cols.f32() + n * HWo, cols_n);
    gemm(false, false, g.O, cols_n, K, 1.f, w.f32(), K, cols.f32(), cols_n, 0.f, prod.f32(), cols_n);
    parallel_for(g.N * g.O, 4, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t n = i / g.O, o = i % g.O;
        std::copy_n(prod.f32() + o * cols_n + n * HWo, HWo, out.f32() + i * HWo);
      }
    });
  } else if (images_in_parallel(g)) {
    parallel_for(g.N, 1, [&](int64_t n0, int64_t n1) {
      std::vector<float> cols(cols_size);
      for (int64_t n = n0; n < n1; ++n) one_image(n, cols);
    });
  } else {
    std::vector<float> cols(cols_size);
    for (int64_t n = 0; n < g.N; ++n) one_image(n, cols);
  }
  if (bias) {
    Tensor b = bias->to(DType::F32);
    const float* bp = b.f32();
    float* op = out.f32();
    parallel_for(g.N * g.O, 1, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        float bv = bp[i % g.O];
        float* row = op + i * HWo;
        for (int64_t p = 0; p < HWo; ++p) row[p] += bv;
      }
    });
  }
  return out;
}

void conv2d_backward(const Tensor& x_in, const Tensor& w_in, const Tensor& gy_in, int stride, int padding, Tensor* gx,
                     Tensor* gw, Tensor* gb) {
  ConvGeom g = geometry(x_in, w_in, stride, padding);
  DL_CHECK(gy_in.shape() == Shape({g.N, g.O, g.Ho, g.Wo}), "conv2d backward: gradient ", gy_in.describe(),
           " does not match output [", g.N, ", ", g.O, ", ", g.Ho, ", ", g.Wo, "]");
  Tensor x = x_in.contiguous(), w = w_in.to(DType::F32), gy = gy_in.contiguous();
  const int64_t HWo = g.Ho * g.Wo, K = g.ckk();
  if (gx) *gx = Tensor::zeros(x.shape());
  if (gw) *gw = Tensor::zeros(w.shape());
  if (gb) *gb = Tensor::zeros({g.O});
  const int64_t band = g.pointwise() ? g.Ho : g.band_rows();
  const size_t cols_size = g.pointwise() ? 0 : size_t(K * band * g.Wo);
  // Image n's weight gradient goes to `gwn` with beta (0 for a fresh buffer, 1 to accumulate).
  auto one_image = [&](int64_t n, std::vector<float>& cols, std::vector<float>& gcols, float* gwn, float beta) {
    const float* xn = x.f32() + n * g.C * g.H * g.W;
    const float* gyn = gy.f32() + n * g.O * HWo;
    for (int64_t y0 = 0; y0 < g.Ho; y0 += band) {
      int64_t rows = std::min(band, g.Ho - y0);
      int64_t L = rows * g.Wo;
      const float* gyb = gyn + y0 * g.Wo;
      if (gw) {
        const float* c = xn;
        if (!g.pointwise()) {
          im2col(g, xn, y0, rows, cols.data(), L);
          c = cols.data();
        }
        gemm(false, true, g.O, K, L, 1.f, gyb, HWo, c, g.pointwise() ? HWo : L, y0 == 0 ? beta : 1.f, gwn, K);
      }
      if (gx) {
        float* gxn = gx->f32() + n * g.C * g.H * g.W;
        if (g.pointwise()) {
          gemm(true, false, g.C, HWo, g.O, 1.f, w.f32(), g.C, gyn, HWo, 0.f, gxn, HWo);
        } else {
          gemm(true, false, K, L, g.O, 1.f, w.f32(), K, gyb, HWo, 0.f, gcols.data(), L);
          col2im_add(g, gcols.data(), y0, rows, gxn);
        }
      }
    }
  };
  if (images_in_parallel(g)) {
    // Each image's weight gradient in its own buffer, summed in image order afterwards: the result does not
    // depend on which thread took which image.
    const int64_t wsize = g.O * K;
    std::vector<float> partial(gw ? size_t(g.N * wsize) : 0);
    parallel_for(g.N, 1, [&](int64_t n0, int64_t n1) {
      std::vector<float> cols(gw ? cols_size : 0), gcols(gx ? cols_size : 0);
      for (int64_t n = n0; n < n1; ++n) one_image(n, cols, gcols, gw ? partial.data() + n * wsize : nullptr, 0.f);
    });
    if (gw) {
      float* dst = gw->f32();
      parallel_for(wsize, 1 << 12, [&](int64_t i0, int64_t i1) {
        for (int64_t n = 0; n < g.N; ++n) {
          const float* p = partial.data() + n * wsize;
          for (int64_t i = i0; i < i1; ++i) dst[i] += p[i];
        }
      });
    }
  } else {
    std::vector<float> cols(gw ? cols_size : 0), gcols(gx ? cols_size : 0);
    for (int64_t n = 0; n < g.N; ++n) one_image(n, cols, gcols, gw ? gw->f32() : nullptr, 1.f);
  }
  if (gb) {
    float* gbp = gb->f32();
    const float* gp = gy.f32();
    parallel_for(g.O, 1, [&](int64_t o0, int64_t o1) {
      for (int64_t o = o0; o < o1; ++o) {
        double s = 0;
        for (int64_t n = 0; n < g.N; ++n) {
          const float* row = gp + (n * g.O + o) * HWo;
          for (int64_t p = 0; p < HWo; ++p) s += row[p];
        }
        gbp[o] = float(s);
      }
    });
  }
}

}  // namespace dl::ops
