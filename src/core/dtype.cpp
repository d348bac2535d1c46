#include "core/dtype.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cctype>
#include <cmath>
#include <string>

#include "core/error.h"
#include "core/kernels/vec.h"
#include "core/thread_pool.h"

namespace dl {

namespace {
const DTypeInfo kInfos[] = {
    {"F32", 1, 4, true, false},  {"F16", 1, 2, true, false},   {"BF16", 1, 2, true, false},
    {"I32", 1, 4, false, false}, {"I64", 1, 8, false, false},  {"I8", 1, 1, false, false},
    {"U8", 1, 1, false, false},  {"BOOL", 1, 1, false, false}, {"Q8_0", 32, 34, true, true},
    {"Q4_0", 32, 18, true, true},  {"Q4_K", 256, 144, true, true}, {"Q6_K", 256, 210, true, true},
};
}  // namespace

const DTypeInfo& dtype_info(DType t) {
  auto i = size_t(t);
  DL_CHECK(i < std::size(kInfos), "invalid dtype code ", int(i));
  return kInfos[i];
}

size_t dtype_bytes(DType t, int64_t n) {
  const auto& info = dtype_info(t);
  DL_CHECK(n >= 0, "negative element count ", n);
  DL_CHECK(uint64_t(n) % info.block_elems == 0, dtype_name(t), ": ", n, " elements is not a whole number of ",
           info.block_elems, "-element blocks");
  return size_t(n) / info.block_elems * info.block_bytes;
}

DType parse_dtype(std::string_view name) {
  std::string up(name);
  std::transform(up.begin(), up.end(), up.begin(), [](unsigned char c) { return char(std::toupper(c)); });
  for (size_t i = 0; i < std::size(kInfos); ++i)
    if (kInfos[i].name == up) return DType(i);
  fail("unknown dtype '", name, "'");
}

float f16_to_f32(uint16_t h) {
  uint32_t sign = uint32_t(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t man = h & 0x3ffu;
  uint32_t u;
  if (exp == 0) {
    if (man == 0) {
      u = sign;
    } else {  // subnormal: normalise
      int e = -1;
      do {
        ++e;
        man <<= 1;
      } while ((man & 0x400u) == 0);
      u = sign | (uint32_t(127 - 15 - e) << 23) | ((man & 0x3ffu) << 13);
    }
  } else if (exp == 31) {
    u = sign | 0x7f800000u | (man << 13);
  } else {
    u = sign | ((exp + 112) << 23) | (man << 13);
  }
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

uint16_t f32_to_f16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  uint32_t sign = (u >> 16) & 0x8000u;
  uint32_t abs = u & 0x7fffffffu;
  if (abs > 0x7f800000u) return uint16_t(sign | 0x7e00u);  // NaN
  if (abs >= 0x477ff000u) return uint16_t(sign | 0x7c00u);  // overflow to inf (incl. rounding)
  if (abs < 0x38800000u) {                                   // result is subnormal or zero
    if (abs < 0x33000000u) return uint16_t(sign);            // below half the smallest subnormal
    uint32_t e = abs >> 23;
    uint32_t man = (abs & 0x7fffffu) | 0x800000u;
    uint32_t shift = 126 - e;  // 14 + (113 - e) - 1 ... gives the subnormal position
    uint32_t half = man >> shift;
    uint32_t rem = man & ((1u << shift) - 1);
    uint32_t mid = 1u << (shift - 1);
    if (rem > mid || (rem == mid && (half & 1u))) ++half;
    return uint16_t(sign | half);
  }
  uint32_t h = ((abs >> 13) - (112u << 10));
  uint32_t rem = abs & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;
  return uint16_t(sign | h);
}

void quantize_row_q8_0(const float* x, BlockQ8_0* y, int64_t n) {
  DL_CHECK(n % kQK8_0 == 0, "quantize_row_q8_0: row length ", n, " is not a multiple of ", kQK8_0);
  for (int64_t b = 0; b < n / kQK8_0; ++b) {
    const float* xb = x + b * kQK8_0;
    float amax = 0.f;
    for (int i = 0; i < kQK8_0; ++i) amax = std::max(amax, std::fabs(xb[i]));
    float d = amax / 127.f;
    float id = d != 0.f ? 1.f / d : 0.f;
    y[b].scale = f32_to_f16(d);
    // roundf (halves away from zero), as ggml's reference: lrintf's ties-to-even differs at exact halves.
    for (int i = 0; i < kQK8_0; ++i) y[b].q[i] = int8_t(std::roundf(xb[i] * id));
  }
}

void dequantize_row_q8_0(const BlockQ8_0* x, float* y, int64_t n) {
  for (int64_t b = 0; b < n / kQK8_0; ++b) {
    float d = f16_to_f32(x[b].scale);
    for (int i = 0; i < kQK8_0; ++i) y[b * kQK8_0 + i] = d * float(x[b].q[i]);
  }
}

void quantize_row_q4_0(const float* x, BlockQ4_0* y, int64_t n) {
  DL_CHECK(n % kQK4_0 == 0, "quantize_row_q4_0: row length ", n, " is not a multiple of ", kQK4_0);
  for (int64_t b = 0; b < n / kQK4_0; ++b) {
    const float* xb = x + b * kQK4_0;
    float amax = 0.f, maxv = 0.f;
    for (int i = 0; i < kQK4_0; ++i)
      if (std::fabs(xb[i]) > amax) {
        amax = std::fabs(xb[i]);
        maxv = xb[i];
      }
    // The signed extreme maps to -8 so that the full 4-bit range is used.
    float d = maxv / -8.f;
    float id = d != 0.f ? 1.f / d : 0.f;
    y[b].scale = f32_to_f16(d);
    for (int i = 0; i < kQK4_0 / 2; ++i) {
      int lo = std::min(15, int(xb[i] * id + 8.5f));
      int hi = std::min(15, int(xb[i + kQK4_0 / 2] * id + 8.5f));
      y[b].q[i] = uint8_t(lo | (hi << 4));
    }
  }
}

void dequantize_row_q4_0(const BlockQ4_0* x, float* y, int64_t n) {
  for (int64_t b = 0; b < n / kQK4_0; ++b) {
    float d = f16_to_f32(x[b].scale);
    for (int i = 0; i < kQK4_0 / 2; ++i) {
      y[b * kQK4_0 + i] = d * float((x[b].q[i] & 0x0f) - 8);
      y[b * kQK4_0 + i + kQK4_0 / 2] = d * float((x[b].q[i] >> 4) - 8);
    }
  }
}

namespace {

using vec::nearest_int;

// Scale and min for n values with levels 0..nmax (value ~ scale * l - min), minimising the weighted squared
// error over a sweep of nstep+1 trial scales around nmax / (max - min); each trial refits scale and min by
// weighted least squares on its levels (ggml's make_qkx2_quants, which Q4_K's reference quantizer uses).
float fit_scale_min(int n, int nmax, const float* x, const float* w, uint8_t* L, float* neg_min, uint8_t* Laux,
                    float rmin, float rdelta, int nstep) {
  float lo = x[0], hi = x[0];
  float sum_w = w[0];
  float sum_x = sum_w * x[0];
  for (int i = 1; i < n; ++i) {
    if (x[i] < lo) lo = x[i];
    if (x[i] > hi) hi = x[i];
    sum_w += w[i];
    sum_x += w[i] * x[i];
  }
  if (lo > 0) lo = 0;
  if (hi == lo) {
    for (int i = 0; i < n; ++i) L[i] = 0;
    *neg_min = -lo;
    return 0.f;
  }
  float iscale = float(nmax) / (hi - lo);
  float scale = 1 / iscale;
  float best_error = 0;
  for (int i = 0; i < n; ++i) {
    int l = nearest_int(iscale * (x[i] - lo));
    L[i] = uint8_t(std::max(0, std::min(nmax, l)));
    float diff = scale * float(L[i]) + lo - x[i];
    best_error += w[i] * (diff * diff);
  }
  for (int is = 0; is <= nstep; ++is) {
    iscale = (rmin + rdelta * float(is) + float(nmax)) / (hi - lo);
    float sum_l = 0, sum_l2 = 0, sum_xl = 0;
    for (int i = 0; i < n; ++i) {
      int l = std::max(0, std::min(nmax, nearest_int(iscale * (x[i] - lo))));
      Laux[i] = uint8_t(l);
      const float fl = float(l);
      sum_l += w[i] * fl;
      sum_l2 += w[i] * fl * fl;
      sum_xl += w[i] * fl * x[i];
    }
    float D = sum_w * sum_l2 - sum_l * sum_l;
    if (D > 0) {
      float this_scale = (sum_w * sum_xl - sum_x * sum_l) / D;
      float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D;
      if (this_min > 0) {
        this_min = 0;
        this_scale = sum_xl / sum_l2;
      }
      float err = 0;
      for (int i = 0; i < n; ++i) {
        float diff = this_scale * float(Laux[i]) + this_min - x[i];
        err += w[i] * (diff * diff);
      }
      if (err < best_error) {
        for (int i = 0; i < n; ++i) L[i] = Laux[i];
        best_error = err;
        scale = this_scale;
        lo = this_min;
      }
    }
  }
  *neg_min = -lo;
  return scale;
}

// Symmetric scale for n values with levels -nmax..nmax-1 (stored offset by nmax in L), weighting each value by
// its square and trying 18 scales around nmax / max|x| for the best weighted least-squares fit (ggml's
// make_qx_quants with rmse_type 1, Q6_K's reference quantizer).
float fit_scale_symmetric(int n, int nmax, const float* x, int8_t* L) {
  float amax = 0, mx = 0;
  for (int i = 0; i < n; ++i) {
    float ax = std::fabs(x[i]);
    if (ax > amax) {
      amax = ax;
      mx = x[i];
    }
  }
  if (amax < 1e-15f) {  // all zero
    for (int i = 0; i < n; ++i) L[i] = 0;
    return 0.f;
  }
  auto level = [&](float iscale, int i) { return std::max(-nmax, std::min(nmax - 1, nearest_int(iscale * x[i]))); };
  float iscale = float(-nmax) / mx;
  float sumlx = 0, suml2 = 0;
  for (int i = 0; i < n; ++i) {
    const int l = level(iscale, i);
    L[i] = int8_t(l + nmax);
    const float w = x[i] * x[i], fl = float(l);
    sumlx += w * x[i] * fl;
    suml2 += w * fl * fl;
  }
  float scale = suml2 != 0 ? sumlx / suml2 : 0.f;
  float best = scale * sumlx;
  for (int is = -9; is <= 9; ++is) {
    if (is == 0) continue;
    iscale = -(float(nmax) + 0.1f * float(is)) / mx;
    sumlx = suml2 = 0;
    for (int i = 0; i < n; ++i) {
      const float w = x[i] * x[i], fl = float(level(iscale, i));
      sumlx += w * x[i] * fl;
      suml2 += w * fl * fl;
    }
    if (suml2 > 0 && sumlx * sumlx > best * suml2) {
      for (int i = 0; i < n; ++i) L[i] = int8_t(level(iscale, i) + nmax);
      scale = sumlx / suml2;
      best = scale * sumlx;
    }
  }
  return scale;
}

}  // namespace

void quantize_row_q4_k(const float* x, BlockQ4_K* y, int64_t n) {
  DL_CHECK(n % kQK_K == 0, "quantize_row_q4_k: row length ", n, " is not a multiple of ", kQK_K);
  uint8_t L[kQK_K], Laux[32];
  float w[32], mins[8], scales[8];
  for (int64_t b = 0; b < n / kQK_K; ++b, x += kQK_K) {
    BlockQ4_K& blk = y[b];
    float max_scale = 0, max_min = 0;
    for (int j = 0; j < 8; ++j) {
      const float* xs = x + 32 * j;
      float sum_x2 = 0;
      for (int l = 0; l < 32; ++l) sum_x2 += xs[l] * xs[l];
      const float av_x = std::sqrt(sum_x2 / 32);
      for (int l = 0; l < 32; ++l) w[l] = av_x + std::fabs(xs[l]);
      scales[j] = fit_scale_min(32, 15, xs, w, L + 32 * j, &mins[j], Laux, -1.f, 0.1f, 20);
      max_scale = std::max(max_scale, scales[j]);
      max_min = std::max(max_min, mins[j]);
    }
    const float inv_scale = max_scale > 0 ? 63.f / max_scale : 0.f;
    const float inv_min = max_min > 0 ? 63.f / max_min : 0.f;
    std::memset(blk.scales, 0, sizeof blk.scales);
    for (int j = 0; j < 8; ++j) {
      // Through uint8_t first, as the reference does, so that a (never expected) negative level wraps the same.
      const uint8_t ls = std::min<uint8_t>(63, uint8_t(nearest_int(inv_scale * scales[j])));
      const uint8_t lm = std::min<uint8_t>(63, uint8_t(nearest_int(inv_min * mins[j])));
      if (j < 4) {
        blk.scales[j] = ls;
        blk.scales[j + 4] = lm;
      } else {
        blk.scales[j + 4] = uint8_t((ls & 0x0f) | ((lm & 0x0f) << 4));
        blk.scales[j - 4] |= uint8_t((ls >> 4) << 6);
        blk.scales[j] |= uint8_t((lm >> 4) << 6);
      }
    }
    blk.d = f32_to_f16(max_scale / 63.f);
    blk.dmin = f32_to_f16(max_min / 63.f);
    // Requantize against the stored (rounded) scales; a zero scale keeps the search's levels.
    const float d_all = f16_to_f32(blk.d), m_all = f16_to_f32(blk.dmin);
    for (int j = 0; j < 8; ++j) {
      uint8_t sc, mn;
      q4_k_scale_min(j, blk.scales, &sc, &mn);
      const float d = d_all * float(sc);
      if (d == 0.f) continue;
      const float dm = m_all * float(mn);
      for (int i = 0; i < 32; ++i)
        L[32 * j + i] = uint8_t(std::max(0, std::min(15, nearest_int((x[32 * j + i] + dm) / d))));
    }
    for (int c = 0; c < 4; ++c)
      for (int l = 0; l < 32; ++l) blk.qs[32 * c + l] = uint8_t(L[64 * c + l] | (L[64 * c + 32 + l] << 4));
  }
}

void dequantize_row_q4_k(const BlockQ4_K* x, float* y, int64_t n) {
  for (int64_t b = 0; b < n / kQK_K; ++b) {
    const float d = f16_to_f32(x[b].d), dmin = f16_to_f32(x[b].dmin);
    for (int c = 0; c < 4; ++c) {
      uint8_t sc, mn;
      q4_k_scale_min(2 * c, x[b].scales, &sc, &mn);
      const float d1 = d * float(sc), m1 = dmin * float(mn);
      q4_k_scale_min(2 * c + 1, x[b].scales, &sc, &mn);
      const float d2 = d * float(sc), m2 = dmin * float(mn);
      const uint8_t* q = x[b].qs + 32 * c;
      float* out = y + b * kQK_K + 64 * c;
      for (int l = 0; l < 32; ++l) out[l] = d1 * float(q[l] & 0x0f) - m1;
      for (int l = 0; l < 32; ++l) out[32 + l] = d2 * float(q[l] >> 4) - m2;
    }
  }
}

void quantize_row_q6_k(const float* x, BlockQ6_K* y, int64_t n) {
  DL_CHECK(n % kQK_K == 0, "quantize_row_q6_k: row length ", n, " is not a multiple of ", kQK_K);
  int8_t L[kQK_K];
  float scales[16];
  for (int64_t b = 0; b < n / kQK_K; ++b, x += kQK_K) {
    BlockQ6_K& blk = y[b];
    float max_scale = 0, max_abs_scale = 0;
    for (int g = 0; g < 16; ++g) {
      scales[g] = fit_scale_symmetric(16, 32, x + 16 * g, L + 16 * g);
      if (std::fabs(scales[g]) > max_abs_scale) {
        max_abs_scale = std::fabs(scales[g]);
        max_scale = scales[g];
      }
    }
    if (max_abs_scale < 1e-15f) {
      std::memset(&blk, 0, sizeof blk);
      continue;
    }
    const float iscale = -128.f / max_scale;
    blk.d = f32_to_f16(1 / iscale);
    for (int g = 0; g < 16; ++g) blk.scales[g] = int8_t(std::min(127, nearest_int(iscale * scales[g])));
    const float d_all = f16_to_f32(blk.d);
    for (int g = 0; g < 16; ++g) {
      const float d = d_all * float(blk.scales[g]);
      if (d == 0.f) continue;
      for (int i = 0; i < 16; ++i)
        L[16 * g + i] = int8_t(std::max(-32, std::min(31, nearest_int(x[16 * g + i] / d))) + 32);
    }
    // Per 128 elements: ql holds the low nibbles of elements l and l+64 (byte l) and of l+32 and l+96 (byte
    // l+32); qh byte l holds the high two bits of l, l+32, l+64, l+96.
    for (int h = 0; h < 2; ++h) {
      const int8_t* Lh = L + 128 * h;
      uint8_t* ql = blk.ql + 64 * h;
      uint8_t* qh = blk.qh + 32 * h;
      for (int l = 0; l < 32; ++l) {
        ql[l] = uint8_t((Lh[l] & 0x0f) | ((Lh[l + 64] & 0x0f) << 4));
        ql[l + 32] = uint8_t((Lh[l + 32] & 0x0f) | ((Lh[l + 96] & 0x0f) << 4));
        qh[l] = uint8_t((Lh[l] >> 4) | ((Lh[l + 32] >> 4) << 2) | ((Lh[l + 64] >> 4) << 4) | ((Lh[l + 96] >> 4) << 6));
      }
    }
  }
}

void dequantize_row_q6_k(const BlockQ6_K* x, float* y, int64_t n) {
  for (int64_t b = 0; b < n / kQK_K; ++b) {
    const float d = f16_to_f32(x[b].d);
    for (int h = 0; h < 2; ++h) {
      const uint8_t* ql = x[b].ql + 64 * h;
      const uint8_t* qh = x[b].qh + 32 * h;
      const int8_t* sc = x[b].scales + 8 * h;
      float* out = y + b * kQK_K + 128 * h;
      for (int l = 0; l < 32; ++l) {
        const int is = l / 16;
        const int q1 = ((ql[l] & 0x0f) | (((qh[l] >> 0) & 3) << 4)) - 32;
        const int q2 = ((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4)) - 32;
        const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
        const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
        out[l] = d * float(sc[is]) * float(q1);
        out[l + 32] = d * float(sc[is + 2]) * float(q2);
        out[l + 64] = d * float(sc[is + 4]) * float(q3);
        out[l + 96] = d * float(sc[is + 6]) * float(q4);
      }
    }
  }
}

void quantize_row_q8_k(const float* x, BlockQ8_K* y, int64_t n) {
  DL_CHECK(n % kQK_K == 0, "quantize_row_q8_k: row length ", n, " is not a multiple of ", kQK_K);
  for (int64_t b = 0; b < n / kQK_K; ++b, x += kQK_K) {
    float amax = 0, mx = 0, probe = 0;  // x * 0 is NaN exactly for NaN and infinite x
    for (int i = 0; i < kQK_K; ++i) {
      probe += x[i] * 0.f;
      if (std::fabs(x[i]) > amax) {
        amax = std::fabs(x[i]);
        mx = x[i];
      }
    }
    if (amax == 0.f || probe != 0.f) {
      // All zero, or non-finite values: then a NaN scale keeps products with the block NaN, as in F32.
      std::memset(&y[b], 0, sizeof y[b]);
      if (probe != 0.f) y[b].d = NAN;
      continue;
    }
    // The signed extreme maps to -127 (not -128), so negating a level never overflows.
    const float iscale = -127.f / mx;
    for (int i = 0; i < kQK_K; ++i) y[b].qs[i] = int8_t(std::min(127, nearest_int(iscale * x[i])));
    for (int g = 0; g < kQK_K / 16; ++g) {
      int s = 0;
      for (int i = 0; i < 16; ++i) s += y[b].qs[16 * g + i];
      y[b].bsums[g] = int16_t(s);
    }
    y[b].d = 1 / iscale;
  }
}

void dequantize_row_q8_k(const BlockQ8_K* x, float* y, int64_t n) {
  for (int64_t b = 0; b < n / kQK_K; ++b)
    for (int i = 0; i < kQK_K; ++i) y[b * kQK_K + i] = x[b].d * float(x[b].qs[i]);
}

#if defined(__x86_64__)
namespace {
__attribute__((target("avx2,f16c"))) void f16_row_to_f32_f16c(const uint16_t* src, float* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i))));
  for (; i < n; ++i) dst[i] = f16_to_f32(src[i]);
}
}  // namespace
#endif

void f16_row_to_f32(const uint16_t* src, float* dst, int64_t n) {
#if defined(__x86_64__)
  // Every AVX2 processor also has F16C (and clang's builtin cannot test for F16C directly).
  static const bool has_f16c = __builtin_cpu_supports("avx2");
  if (has_f16c) return f16_row_to_f32_f16c(src, dst, n);
#endif
  for (int64_t i = 0; i < n; ++i) dst[i] = f16_to_f32(src[i]);
}

void convert_to_f32(DType from, const void* src, float* dst, int64_t n) {
  if (n <= 0) return;  // empty tensors may have null buffers
  switch (from) {
    case DType::F32: std::memcpy(dst, src, size_t(n) * 4); return;
    case DType::F16: f16_row_to_f32(static_cast<const uint16_t*>(src), dst, n); return;
    case DType::BF16: {
      auto s = static_cast<const uint16_t*>(src);
      for (int64_t i = 0; i < n; ++i) dst[i] = bf16_to_f32(s[i]);
      return;
    }
    case DType::I32: {
      auto s = static_cast<const int32_t*>(src);
      for (int64_t i = 0; i < n; ++i) dst[i] = float(s[i]);
      return;
    }
    case DType::I64: {
      auto s = static_cast<const int64_t*>(src);
      for (int64_t i = 0; i < n; ++i) dst[i] = float(s[i]);
      return;
    }
    case DType::I8: {
      auto s = static_cast<const int8_t*>(src);
      for (int64_t i = 0; i < n; ++i) dst[i] = float(s[i]);
      return;
    }
    case DType::U8:
    case DType::BOOL: {
      auto s = static_cast<const uint8_t*>(src);
      for (int64_t i = 0; i < n; ++i) dst[i] = float(s[i]);
      return;
    }
    case DType::Q8_0:
      DL_CHECK(n % kQK8_0 == 0, "Q8_0 conversion of ", n, " elements");
      dequantize_row_q8_0(static_cast<const BlockQ8_0*>(src), dst, n);
      return;
    case DType::Q4_0:
      DL_CHECK(n % kQK4_0 == 0, "Q4_0 conversion of ", n, " elements");
      dequantize_row_q4_0(static_cast<const BlockQ4_0*>(src), dst, n);
      return;
    case DType::Q4_K:
      DL_CHECK(n % kQK_K == 0, "Q4_K conversion of ", n, " elements");
      dequantize_row_q4_k(static_cast<const BlockQ4_K*>(src), dst, n);
      return;
    case DType::Q6_K:
      DL_CHECK(n % kQK_K == 0, "Q6_K conversion of ", n, " elements");
      dequantize_row_q6_k(static_cast<const BlockQ6_K*>(src), dst, n);
      return;
  }
  fail("convert_to_f32: unsupported dtype ", int(from));
}

void convert_from_f32(DType to, const float* src, void* dst, int64_t n) {
  if (n <= 0) return;
  switch (to) {
    case DType::F32: std::memcpy(dst, src, size_t(n) * 4); return;
    case DType::F16: {
      auto d = static_cast<uint16_t*>(dst);
      for (int64_t i = 0; i < n; ++i) d[i] = f32_to_f16(src[i]);
      return;
    }
    case DType::BF16: {
      auto d = static_cast<uint16_t*>(dst);
      for (int64_t i = 0; i < n; ++i) d[i] = f32_to_bf16(src[i]);
      return;
    }
    case DType::I32: {
      auto d = static_cast<int32_t*>(dst);
      for (int64_t i = 0; i < n; ++i) d[i] = int32_t(std::lrint(src[i]));
      return;
    }
    case DType::I64: {
      auto d = static_cast<int64_t*>(dst);
      for (int64_t i = 0; i < n; ++i) d[i] = int64_t(std::llrint(src[i]));
      return;
    }
    case DType::I8: {
      auto d = static_cast<int8_t*>(dst);
      for (int64_t i = 0; i < n; ++i) d[i] = int8_t(std::clamp<long>(std::lrint(src[i]), -128, 127));
      return;
    }
    case DType::U8: {
      auto d = static_cast<uint8_t*>(dst);
      for (int64_t i = 0; i < n; ++i) d[i] = uint8_t(std::clamp<long>(std::lrint(src[i]), 0, 255));
      return;
    }
    case DType::BOOL: {
      auto d = static_cast<uint8_t*>(dst);
      for (int64_t i = 0; i < n; ++i) d[i] = src[i] != 0.f;
      return;
    }
    case DType::Q8_0: quantize_row_q8_0(src, static_cast<BlockQ8_0*>(dst), n); return;
    case DType::Q4_0: quantize_row_q4_0(src, static_cast<BlockQ4_0*>(dst), n); return;
    // The K types' scale searches cost about 0.1 us a weight: spread the super-blocks over the pool (each block is
    // quantized alone, so the bytes do not depend on the split).
    case DType::Q4_K:
      DL_CHECK(n % kQK_K == 0, "quantize_row_q4_k: row length ", n, " is not a multiple of ", kQK_K);
      parallel_for(n / kQK_K, 16, [&](int64_t b0, int64_t b1) {
        quantize_row_q4_k(src + b0 * kQK_K, static_cast<BlockQ4_K*>(dst) + b0, (b1 - b0) * kQK_K);
      });
      return;
    case DType::Q6_K:
      DL_CHECK(n % kQK_K == 0, "quantize_row_q6_k: row length ", n, " is not a multiple of ", kQK_K);
      parallel_for(n / kQK_K, 16, [&](int64_t b0, int64_t b1) {
        quantize_row_q6_k(src + b0 * kQK_K, static_cast<BlockQ6_K*>(dst) + b0, (b1 - b0) * kQK_K);
      });
      return;
  }
  fail("convert_from_f32: unsupported dtype ", int(to));
}

}  // namespace dl
