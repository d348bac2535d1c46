// The tiles are written with GCC vector types of 16 floats: one AVX-512 register in the x86-64-v4 clone, two AVX2
// registers in the v3 clone, four SSE registers in the baseline. Each accumulates every output element in a fixed
// order (d or j ascending), so the result does not depend on how callers split work over threads.
#include "core/kernels/attention_tiles.h"

#include <algorithm>
#include <limits>

#include "core/kernels/vec.h"
#include "core/simd.h"

// The helpers below pass 64-byte vectors by value; they are always inlined, so no call ever uses the ABI GCC warns
// about for the baseline clone.
#pragma GCC diagnostic ignored "-Wpsabi"

namespace dl::attn_tiles {

namespace {

typedef float v16 __attribute__((vector_size(64)));
typedef float v16u __attribute__((vector_size(64), aligned(4)));

[[gnu::always_inline]] inline v16 load(const float* p) { return *reinterpret_cast<const v16u*>(p); }
[[gnu::always_inline]] inline void store(float* p, v16 x) { *reinterpret_cast<v16u*>(p) = x; }
[[gnu::always_inline]] inline v16 splat(float x) { return v16{} + x; }

}  // namespace

DL_SIMD_CLONES void scores(const float* q, int64_t ldq, const float* kt, int64_t ldkt, int64_t nq, int64_t nk,
                           int64_t d, float scale, float* s, int64_t lds) {
  for (int64_t i0 = 0; i0 < nq; i0 += kRows)
    for (int64_t j0 = 0; j0 < nk; j0 += kCols) {
      v16 a[kRows][2] = {};
      const float* k = kt + j0;
      for (int64_t c = 0; c < d; ++c, k += ldkt) {
        const v16 k0 = load(k), k1 = load(k + 16);
        for (int64_t r = 0; r < kRows; ++r) {
          const v16 qv = splat(q[(i0 + r) * ldq + c]);
          a[r][0] += qv * k0;
          a[r][1] += qv * k1;
        }
      }
      for (int64_t r = 0; r < kRows; ++r) {
        store(s + (i0 + r) * lds + j0, a[r][0] * scale);
        store(s + (i0 + r) * lds + j0 + 16, a[r][1] * scale);
      }
    }
}

DL_SIMD_CLONES void accumulate_pv(const float* p, int64_t ldp, const float* v, int64_t ldv, int64_t nq, int64_t nk,
                                  int64_t dv, float* o, int64_t ldo) {
  constexpr int64_t R = 4;
  for (int64_t i0 = 0; i0 < nq; i0 += R) {
    int64_t c0 = 0;
    for (; c0 + 64 <= dv; c0 += 64) {
      v16 a[R][4];
      for (int64_t r = 0; r < R; ++r)
        for (int64_t u = 0; u < 4; ++u) a[r][u] = load(o + (i0 + r) * ldo + c0 + 16 * u);
      const float* vr = v + c0;
      for (int64_t j = 0; j < nk; ++j, vr += ldv) {
        const v16 v0 = load(vr), v1 = load(vr + 16), v2 = load(vr + 32), v3 = load(vr + 48);
        for (int64_t r = 0; r < R; ++r) {
          const v16 pv = splat(p[(i0 + r) * ldp + j]);
          a[r][0] += pv * v0;
          a[r][1] += pv * v1;
          a[r][2] += pv * v2;
          a[r][3] += pv * v3;
        }
      }
      for (int64_t r = 0; r < R; ++r)
        for (int64_t u = 0; u < 4; ++u) store(o + (i0 + r) * ldo + c0 + 16 * u, a[r][u]);
    }
    for (; c0 < dv; c0 += 16) {
      v16 a[R];
      for (int64_t r = 0; r < R; ++r) a[r] = load(o + (i0 + r) * ldo + c0);
      const float* vr = v + c0;
      for (int64_t j = 0; j < nk; ++j, vr += ldv) {
        const v16 v0 = load(vr);
        for (int64_t r = 0; r < R; ++r) a[r] += splat(p[(i0 + r) * ldp + j]) * v0;
      }
      for (int64_t r = 0; r < R; ++r) store(o + (i0 + r) * ldo + c0, a[r]);
    }
  }
}

DL_SIMD_CLONES void online_softmax(float* s, int64_t lds, int64_t nq, int64_t nk, float* m, float* l, float* o,
                                   int64_t ldo, int64_t dv) {
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  for (int64_t i = 0; i < nq; ++i) {
    float* row = s + i * lds;
    float mx = kNegInf;
#pragma omp simd reduction(max : mx)
    for (int64_t j = 0; j < nk; ++j) mx = row[j] > mx ? row[j] : mx;
    const float mnew = std::max(m[i], mx);
    if (mnew == kNegInf) {  // nothing finite seen yet (infinite inputs only)
      std::fill_n(row, nk, 0.f);
      continue;
    }
    const float corr = vec::exp_approx(m[i] - mnew);
    float sum = 0.f;
#pragma omp simd reduction(+ : sum)
    for (int64_t j = 0; j < nk; ++j) {
      row[j] = vec::exp_approx(row[j] - mnew);
      sum += row[j];
    }
    if (corr != 1.f) {
      float* orow = o + i * ldo;
#pragma omp simd
      for (int64_t c = 0; c < dv; ++c) orow[c] *= corr;
    }
    l[i] = l[i] * corr + sum;
    m[i] = mnew;
  }
}

}  // namespace dl::attn_tiles
