#include "core/kernels/quant_dot.h"

// GCC 12's AVX-512 intrinsic headers pass _mm512_undefined_*() as masked-off sources and warn about them
// (a known false positive); the warnings concern the headers, not this file.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#if defined(__x86_64__)
#include <cpuid.h>
#include <immintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>

#include "core/error.h"
#include "core/kernels/vec.h"

namespace dl::quant {

namespace {

using vec::nearest_int;  // activations scaled to +-127 are well inside its range

// The eight 6-bit scales and mins of a Q4_K block, four bytes at a time (the layout q4_k_scale_min reads).
inline void unpack_q4_k_scales(const uint8_t* packed, uint8_t* sc, uint8_t* mn) {
  uint32_t u[3];
  std::memcpy(u, packed, 12);
  const uint32_t sc_lo = u[0] & 0x3f3f3f3fu, mn_lo = u[1] & 0x3f3f3f3fu;
  const uint32_t sc_hi = (u[2] & 0x0f0f0f0fu) | (((u[0] >> 6) & 0x03030303u) << 4);
  const uint32_t mn_hi = ((u[2] >> 4) & 0x0f0f0f0fu) | (((u[1] >> 6) & 0x03030303u) << 4);
  std::memcpy(sc, &sc_lo, 4);
  std::memcpy(sc + 4, &sc_hi, 4);
  std::memcpy(mn, &mn_lo, 4);
  std::memcpy(mn + 4, &mn_hi, 4);
}

// sum_j min_j * (sum of the activation codes of sub-block j).
inline int q4_k_min_sum(const uint8_t* mn, const BlockQ8_K& a) {
  int s = 0;
  for (int j = 0; j < 8; ++j) s += int(mn[j]) * (int(a.bsums[2 * j]) + int(a.bsums[2 * j + 1]));
  return s;
}

// value = d * sum(scale_j * q . x) - dmin * sum(min_j * sum x), both sums exact integers, times the activation
// scale (the SIMD levels scale their integer lanes the same way before one final horizontal sum).
inline float q4_k_tail(float acc, float d, float dmin, float ad, int sumi, int summ) {
  acc += (d * ad) * float(sumi);
  acc -= (dmin * ad) * float(summ);
  return acc;
}
inline float q6_k_tail(float acc, float d, float ad, int sumi) { return acc + (d * ad) * float(sumi); }

// For Q4_K: byte indices that spread int16 lane j of a 128-bit vector over all sixteen lanes of a 256-bit one.
alignas(32) constexpr uint8_t kBroadcastW[8][32] = {
    {0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1},
    {2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3},
    {4, 5, 4, 5, 4, 5, 4, 5, 4, 5, 4, 5, 4, 5, 4, 5, 4, 5, 4, 5, 4, 5, 4, 5, 4, 5, 4, 5, 4, 5, 4, 5},
    {6, 7, 6, 7, 6, 7, 6, 7, 6, 7, 6, 7, 6, 7, 6, 7, 6, 7, 6, 7, 6, 7, 6, 7, 6, 7, 6, 7, 6, 7, 6, 7},
    {8, 9, 8, 9, 8, 9, 8, 9, 8, 9, 8, 9, 8, 9, 8, 9, 8, 9, 8, 9, 8, 9, 8, 9, 8, 9, 8, 9, 8, 9, 8, 9},
    {10, 11, 10, 11, 10, 11, 10, 11, 10, 11, 10, 11, 10, 11, 10, 11,
     10, 11, 10, 11, 10, 11, 10, 11, 10, 11, 10, 11, 10, 11, 10, 11},
    {12, 13, 12, 13, 12, 13, 12, 13, 12, 13, 12, 13, 12, 13, 12, 13,
     12, 13, 12, 13, 12, 13, 12, 13, 12, 13, 12, 13, 12, 13, 12, 13},
    {14, 15, 14, 15, 14, 15, 14, 15, 14, 15, 14, 15, 14, 15, 14, 15,
     14, 15, 14, 15, 14, 15, 14, 15, 14, 15, 14, 15, 14, 15, 14, 15}};
// Byte indices that turn bytes 8..15 (a Q4_K block's mins m0..m7) into m0 m0 m1 m1 ... m7 m7.
alignas(16) constexpr uint8_t kDupMins[16] = {8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13, 14, 14, 15, 15};

// For Q6_K: byte indices that spread scale 2k over eight int16 lanes and scale 2k+1 over the next eight.
alignas(16) constexpr uint8_t kScalePairs[8][16] = {
    {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1},         {2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3},
    {4, 4, 4, 4, 4, 4, 4, 4, 5, 5, 5, 5, 5, 5, 5, 5},         {6, 6, 6, 6, 6, 6, 6, 6, 7, 7, 7, 7, 7, 7, 7, 7},
    {8, 8, 8, 8, 8, 8, 8, 8, 9, 9, 9, 9, 9, 9, 9, 9},         {10, 10, 10, 10, 10, 10, 10, 10, 11, 11, 11, 11, 11, 11, 11, 11},
    {12, 12, 12, 12, 12, 12, 12, 12, 13, 13, 13, 13, 13, 13, 13, 13},
    {14, 14, 14, 14, 14, 14, 14, 14, 15, 15, 15, 15, 15, 15, 15, 15}};

// ---- scalar kernels (also the reference the SIMD levels are tested against) ----

float dot_q8_0_scalar(const void* wv, const void* av, int64_t nb) {
  const auto* w = static_cast<const BlockQ8_0*>(wv);
  const auto* a = static_cast<const ActQ8_0*>(av);
  float acc = 0.f;
  for (int64_t b = 0; b < nb; ++b) {
    int s = 0;
    for (int i = 0; i < kQK8_0; ++i) s += int(w[b].q[i]) * int(a[b].q[i]);
    acc += (f16_to_f32(w[b].scale) * a[b].d) * float(s);
  }
  return acc;
}

float dot_q4_0_scalar(const void* wv, const void* av, int64_t nb) {
  const auto* w = static_cast<const BlockQ4_0*>(wv);
  const auto* a = static_cast<const ActQ4_0Pair*>(av);
  float acc = 0.f;
  for (int64_t b = 0; b < nb; ++b) {
    const ActQ4_0Pair& pair = a[b / 2];
    const int h = int(b % 2);
    int s = pair.init[4 * h];
    for (int i = 0; i < kQK4_0 / 2; ++i)
      s += int(w[b].q[i] & 0x0f) * int(pair.q[16 * h + i]) + int(w[b].q[i] >> 4) * int(pair.q[32 + 16 * h + i]);
    acc += (f16_to_f32(w[b].scale) * pair.d[h]) * float(s);
  }
  return acc;
}

float dot_q4_k_scalar(const void* wv, const void* av, int64_t nb) {
  const auto* w = static_cast<const BlockQ4_K*>(wv);
  const auto* a = static_cast<const BlockQ8_K*>(av);
  float acc = 0.f;
  for (int64_t b = 0; b < nb; ++b) {
    uint8_t sc[8], mn[8];
    unpack_q4_k_scales(w[b].scales, sc, mn);
    int sumi = 0;
    for (int c = 0; c < 4; ++c) {
      const uint8_t* q = w[b].qs + 32 * c;
      const int8_t* x = a[b].qs + 64 * c;
      int lo = 0, hi = 0;
      for (int l = 0; l < 32; ++l) {
        lo += int(q[l] & 0x0f) * int(x[l]);
        hi += int(q[l] >> 4) * int(x[32 + l]);
      }
      sumi += int(sc[2 * c]) * lo + int(sc[2 * c + 1]) * hi;
    }
    acc = q4_k_tail(acc, f16_to_f32(w[b].d), f16_to_f32(w[b].dmin), a[b].d, sumi, q4_k_min_sum(mn, a[b]));
  }
  return acc;
}

float dot_q6_k_scalar(const void* wv, const void* av, int64_t nb) {
  const auto* w = static_cast<const BlockQ6_K*>(wv);
  const auto* a = static_cast<const BlockQ8_K*>(av);
  float acc = 0.f;
  for (int64_t b = 0; b < nb; ++b) {
    int code[kQK_K];  // 0..63, the value plus 32
    for (int h = 0; h < 2; ++h) {
      const uint8_t* ql = w[b].ql + 64 * h;
      const uint8_t* qh = w[b].qh + 32 * h;
      int* c = code + 128 * h;
      for (int l = 0; l < 32; ++l) {
        c[l] = (ql[l] & 0x0f) | (((qh[l] >> 0) & 3) << 4);
        c[l + 32] = (ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4);
        c[l + 64] = (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4);
        c[l + 96] = (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4);
      }
    }
    int sumi = 0;
    for (int g = 0; g < kQK_K / 16; ++g) {
      int s = 0;
      for (int i = 0; i < 16; ++i) s += code[16 * g + i] * int(a[b].qs[16 * g + i]);
      sumi += int(w[b].scales[g]) * (s - 32 * int(a[b].bsums[g]));
    }
    acc = q6_k_tail(acc, f16_to_f32(w[b].d), a[b].d, sumi);
  }
  return acc;
}

}  // namespace

#if defined(__x86_64__)
#define QD_TARGET __attribute__((target("avx2,fma,f16c")))
#define QD_NAME(name) name##_avx2
#define QD_MADD(acc, p, s) _mm256_add_epi32(acc, _mm256_madd_epi16(p, s))
#define QD_UBS(acc, u, s) _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)))
#include "core/kernels/quant_dot_simd.inc"
#undef QD_TARGET
#undef QD_NAME
#undef QD_MADD
#undef QD_UBS

#define QD_TARGET __attribute__((target("avx2,fma,f16c,avxvnni")))
#define QD_NAME(name) name##_avxvnni
#define QD_MADD(acc, p, s) _mm256_dpwssd_avx_epi32(acc, p, s)
#define QD_UBS(acc, u, s) _mm256_dpbusd_avx_epi32(acc, u, s)
#include "core/kernels/quant_dot_simd.inc"
#undef QD_TARGET
#undef QD_NAME
#undef QD_MADD
#undef QD_UBS

#define QD_TARGET __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")))
#define QD_NAME(name) name##_vnni
#define QD_MADD(acc, p, s) _mm256_dpwssd_epi32(acc, p, s)
#define QD_UBS(acc, u, s) _mm256_dpbusd_epi32(acc, u, s)
#define QD_SKIP_K_TYPES
#include "core/kernels/quant_dot_simd.inc"
#undef QD_SKIP_K_TYPES
#undef QD_TARGET
#undef QD_NAME
#undef QD_MADD
#undef QD_UBS

namespace {

// ---- 512-bit VNNI kernels for the K types: the nibbles (or 6-bit codes) of 64 consecutive elements in one zmm,
// which lines up with 64 contiguous activation bytes, so each 64 elements cost one maddubs and one vpdpwssd. ----
#define QZ_TARGET __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")))

// Byte indices into four copies of the eight int16 scales: 128-bit lanes 0-1 get scale 2c, lanes 2-3 scale 2c+1.
alignas(64) constexpr uint8_t kPairW512[4][64] = {
#define DL_W(j) uint8_t(2 * (j)), uint8_t(2 * (j) + 1)
#define DL_LANE(j) DL_W(j), DL_W(j), DL_W(j), DL_W(j), DL_W(j), DL_W(j), DL_W(j), DL_W(j)
    {DL_LANE(0), DL_LANE(0), DL_LANE(1), DL_LANE(1)},
    {DL_LANE(2), DL_LANE(2), DL_LANE(3), DL_LANE(3)},
    {DL_LANE(4), DL_LANE(4), DL_LANE(5), DL_LANE(5)},
    {DL_LANE(6), DL_LANE(6), DL_LANE(7), DL_LANE(7)},
#undef DL_LANE
#undef DL_W
};

QZ_TARGET float dot_q4_k_vnni512(const void* wv, const void* av, int64_t nb) {
  const auto* w = static_cast<const BlockQ4_K*>(wv);
  const auto* a = static_cast<const BlockQ8_K*>(av);
  const __m512i m4 = _mm512_set1_epi8(0x0f);
  __m256 facc = _mm256_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    const __m128i sm = q4_k_scales_mins_vnni(w[b].scales);
    const __m512i scales = _mm512_broadcast_i32x4(_mm_cvtepu8_epi16(sm));
    const __m256i mins =
        _mm256_cvtepu8_epi16(_mm_shuffle_epi8(sm, _mm_load_si128(reinterpret_cast<const __m128i*>(kDupMins))));
    const __m256i msum = _mm256_madd_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(a[b].bsums)), mins);
    __m512i s = _mm512_setzero_si512();
    for (int c = 0; c < 4; ++c) {
      const __m256i q = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w[b].qs + 32 * c));
      const __m512i nib =
          _mm512_and_si512(_mm512_inserti64x4(_mm512_castsi256_si512(q), _mm256_srli_epi16(q, 4), 1), m4);
      const __m512i x = _mm512_loadu_si512(a[b].qs + 64 * c);
      const __m512i sv = _mm512_shuffle_epi8(scales, _mm512_load_si512(kPairW512[c]));
      s = _mm512_dpwssd_epi32(s, _mm512_maddubs_epi16(nib, x), sv);
    }
    const __m256i s8 = _mm256_add_epi32(_mm512_castsi512_si256(s), _mm512_extracti64x4_epi64(s, 1));
    const __m128 dd = k_scales_vnni(&w[b].d, a[b].d);
    facc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s8), _mm256_broadcastss_ps(dd), facc);
    facc = _mm256_fnmadd_ps(_mm256_cvtepi32_ps(msum), _mm256_broadcastss_ps(_mm_movehdup_ps(dd)), facc);
  }
  return hsum_ps_vnni(facc);
}

// Four activation rows against one weight row (prefill): the weight's unpacking and scales are done once and
// reused from registers for each row.
QZ_TARGET void dot4_q4_k_vnni512(const void* wv, const void* const* av, int64_t nb, float* out) {
  const auto* w = static_cast<const BlockQ4_K*>(wv);
  const BlockQ8_K* a[4];
  for (int m = 0; m < 4; ++m) a[m] = static_cast<const BlockQ8_K*>(av[m]);
  const __m512i m4 = _mm512_set1_epi8(0x0f);
  __m256 facc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
  for (int64_t b = 0; b < nb; ++b) {
    const __m128i sm = q4_k_scales_mins_vnni(w[b].scales);
    const __m512i scales = _mm512_broadcast_i32x4(_mm_cvtepu8_epi16(sm));
    const __m256i mins =
        _mm256_cvtepu8_epi16(_mm_shuffle_epi8(sm, _mm_load_si128(reinterpret_cast<const __m128i*>(kDupMins))));
    __m512i nib[4], sv[4];
    for (int c = 0; c < 4; ++c) {
      const __m256i q = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w[b].qs + 32 * c));
      nib[c] = _mm512_and_si512(_mm512_inserti64x4(_mm512_castsi256_si512(q), _mm256_srli_epi16(q, 4), 1), m4);
      sv[c] = _mm512_shuffle_epi8(scales, _mm512_load_si512(kPairW512[c]));
    }
    int32_t both;
    std::memcpy(&both, &w[b].d, 4);
    const __m128 dw = _mm_cvtph_ps(_mm_cvtsi32_si128(both));
    for (int m = 0; m < 4; ++m) {
      const BlockQ8_K& x = a[m][b];
      __m512i s = _mm512_setzero_si512();
      for (int c = 0; c < 4; ++c) s = _mm512_dpwssd_epi32(s, _mm512_maddubs_epi16(nib[c], _mm512_loadu_si512(x.qs + 64 * c)), sv[c]);
      const __m256i msum = _mm256_madd_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.bsums)), mins);
      const __m256i s8 = _mm256_add_epi32(_mm512_castsi512_si256(s), _mm512_extracti64x4_epi64(s, 1));
      const __m128 dd = _mm_mul_ps(dw, _mm_set1_ps(x.d));
      facc[m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s8), _mm256_broadcastss_ps(dd), facc[m]);
      facc[m] = _mm256_fnmadd_ps(_mm256_cvtepi32_ps(msum), _mm256_broadcastss_ps(_mm_movehdup_ps(dd)), facc[m]);
    }
  }
  for (int m = 0; m < 4; ++m) out[m] = hsum_ps_vnni(facc[m]);
}

// For Q6_K: 32 bytes of scale indices, 2p and 2p+1 (8 each) in the low 128-bit lane, 2p+2 and 2p+3 in the high one.
alignas(32) constexpr uint8_t kQuadScales[4][32] = {
#define DL_Q(j) uint8_t(j), uint8_t(j), uint8_t(j), uint8_t(j), uint8_t(j), uint8_t(j), uint8_t(j), uint8_t(j)
    {DL_Q(0), DL_Q(1), DL_Q(2), DL_Q(3)},
    {DL_Q(4), DL_Q(5), DL_Q(6), DL_Q(7)},
    {DL_Q(8), DL_Q(9), DL_Q(10), DL_Q(11)},
    {DL_Q(12), DL_Q(13), DL_Q(14), DL_Q(15)},
#undef DL_Q
};

QZ_TARGET float dot_q6_k_vnni512(const void* wv, const void* av, int64_t nb) {
  const auto* w = static_cast<const BlockQ6_K*>(wv);
  const auto* a = static_cast<const BlockQ8_K*>(av);
  const __m512i m4 = _mm512_set1_epi8(0x0f), m30 = _mm512_set1_epi8(0x30);
  // Shift counts that move qh's bit pairs 0-1 (low half) and 2-3 (high half) to bits 4-5, and 4-5 (low) and 6-7
  // (high) likewise.
  const __m512i shl = _mm512_inserti64x4(_mm512_set1_epi16(4), _mm256_set1_epi16(2), 1);
  const __m512i shr = _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_set1_epi16(2), 1);
  __m256 facc = _mm256_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    const __m128i sc8 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w[b].scales));
    const __m256i sc8x2 = _mm256_broadcastsi128_si256(sc8);
    const __m256i bs = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a[b].bsums));
    const __m256i corr = _mm256_slli_epi32(_mm256_madd_epi16(bs, _mm256_cvtepi8_epi16(sc8)), 5);
    __m512i s = _mm512_setzero_si512();
    for (int h = 0; h < 2; ++h) {
      const __m512i ql = _mm512_loadu_si512(w[b].ql + 64 * h);
      const __m512i qh = _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w[b].qh + 32 * h)));
      // Elements 128h + 0..63 (codes q1 | q2) and 128h + 64..127 (q3 | q4).
      const __m512i c01 = _mm512_or_si512(_mm512_and_si512(ql, m4), _mm512_and_si512(_mm512_sllv_epi16(qh, shl), m30));
      const __m512i c23 = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(ql, 4), m4),
                                          _mm512_and_si512(_mm512_srlv_epi16(qh, shr), m30));
      const __m512i x01 = _mm512_loadu_si512(a[b].qs + 128 * h);
      const __m512i x23 = _mm512_loadu_si512(a[b].qs + 128 * h + 64);
      const __m512i s01 = _mm512_cvtepi8_epi16(
          _mm256_shuffle_epi8(sc8x2, _mm256_load_si256(reinterpret_cast<const __m256i*>(kQuadScales[2 * h]))));
      const __m512i s23 = _mm512_cvtepi8_epi16(
          _mm256_shuffle_epi8(sc8x2, _mm256_load_si256(reinterpret_cast<const __m256i*>(kQuadScales[2 * h + 1]))));
      s = _mm512_dpwssd_epi32(s, _mm512_maddubs_epi16(c01, x01), s01);
      s = _mm512_dpwssd_epi32(s, _mm512_maddubs_epi16(c23, x23), s23);
    }
    const __m256i s8 =
        _mm256_sub_epi32(_mm256_add_epi32(_mm512_castsi512_si256(s), _mm512_extracti64x4_epi64(s, 1)), corr);
    facc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s8), _mm256_set1_ps(_cvtsh_ss(w[b].d) * a[b].d), facc);
  }
  return hsum_ps_vnni(facc);
}
QZ_TARGET void dot4_q6_k_vnni512(const void* wv, const void* const* av, int64_t nb, float* out) {
  const auto* w = static_cast<const BlockQ6_K*>(wv);
  const BlockQ8_K* a[4];
  for (int m = 0; m < 4; ++m) a[m] = static_cast<const BlockQ8_K*>(av[m]);
  const __m512i m4 = _mm512_set1_epi8(0x0f), m30 = _mm512_set1_epi8(0x30);
  const __m512i shl = _mm512_inserti64x4(_mm512_set1_epi16(4), _mm256_set1_epi16(2), 1);
  const __m512i shr = _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_set1_epi16(2), 1);
  __m256 facc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
  for (int64_t b = 0; b < nb; ++b) {
    const __m128i sc8 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w[b].scales));
    const __m256i sc8x2 = _mm256_broadcastsi128_si256(sc8);
    const __m256i sc16 = _mm256_cvtepi8_epi16(sc8);
    __m512i codes[4], sv[4];
    for (int h = 0; h < 2; ++h) {
      const __m512i ql = _mm512_loadu_si512(w[b].ql + 64 * h);
      const __m512i qh = _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w[b].qh + 32 * h)));
      codes[2 * h] = _mm512_or_si512(_mm512_and_si512(ql, m4), _mm512_and_si512(_mm512_sllv_epi16(qh, shl), m30));
      codes[2 * h + 1] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(ql, 4), m4),
                                         _mm512_and_si512(_mm512_srlv_epi16(qh, shr), m30));
      for (int k = 0; k < 2; ++k)
        sv[2 * h + k] = _mm512_cvtepi8_epi16(_mm256_shuffle_epi8(
            sc8x2, _mm256_load_si256(reinterpret_cast<const __m256i*>(kQuadScales[2 * h + k]))));
    }
    const float dw = _cvtsh_ss(w[b].d);
    for (int m = 0; m < 4; ++m) {
      const BlockQ8_K& x = a[m][b];
      __m512i s = _mm512_setzero_si512();
      for (int j = 0; j < 4; ++j) s = _mm512_dpwssd_epi32(s, _mm512_maddubs_epi16(codes[j], _mm512_loadu_si512(x.qs + 64 * j)), sv[j]);
      const __m256i corr =
          _mm256_slli_epi32(_mm256_madd_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.bsums)), sc16), 5);
      const __m256i s8 =
          _mm256_sub_epi32(_mm256_add_epi32(_mm512_castsi512_si256(s), _mm512_extracti64x4_epi64(s, 1)), corr);
      facc[m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s8), _mm256_set1_ps(dw * x.d), facc[m]);
    }
  }
  for (int m = 0; m < 4; ++m) out[m] = hsum_ps_vnni(facc[m]);
}

#undef QZ_TARGET

// ---- vectorised dequantizers (AVX2; each value rounds exactly as the scalar code in dtype.cpp) ----
#define DQ_TARGET __attribute__((target("avx2,fma,f16c")))

// out[0..8) = float(bytes 0..7 of b, signed) * m
DQ_TARGET inline void put8_mul(float* out, __m128i b, __m256 m) {
  _mm256_storeu_ps(out, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b)), m));
}
// out[0..32) = float(v's signed bytes) * m
DQ_TARGET inline void put32_mul(float* out, __m256i v, __m256 m) {
  const __m128i lo = _mm256_castsi256_si128(v), hi = _mm256_extracti128_si256(v, 1);
  put8_mul(out, lo, m);
  put8_mul(out + 8, _mm_srli_si128(lo, 8), m);
  put8_mul(out + 16, hi, m);
  put8_mul(out + 24, _mm_srli_si128(hi, 8), m);
}
// out[0..32) = float(v's unsigned bytes) * m - s (two roundings, as d1 * q - m1)
DQ_TARGET inline void put32_mul_sub(float* out, __m256i v, __m256 m, __m256 s) {
  const __m128i lo = _mm256_castsi256_si128(v), hi = _mm256_extracti128_si256(v, 1);
  const __m128i parts[4] = {lo, _mm_srli_si128(lo, 8), hi, _mm_srli_si128(hi, 8)};
  for (int i = 0; i < 4; ++i)
    _mm256_storeu_ps(out + 8 * i,
                     _mm256_sub_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(parts[i])), m), s));
}

DQ_TARGET void dequant_q8_0_avx2(const void* src, float* dst, int64_t nb) {
  const auto* x = static_cast<const BlockQ8_0*>(src);
  for (int64_t b = 0; b < nb; ++b)
    put32_mul(dst + 32 * b, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x[b].q)),
              _mm256_set1_ps(_cvtsh_ss(x[b].scale)));
}

DQ_TARGET void dequant_q4_0_avx2(const void* src, float* dst, int64_t nb) {
  const auto* x = static_cast<const BlockQ4_0*>(src);
  for (int64_t b = 0; b < nb; ++b) {
    const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(x[b].q));
    const __m256i nib = _mm256_and_si256(
        _mm256_inserti128_si256(_mm256_castsi128_si256(raw), _mm_srli_epi16(raw, 4), 1), _mm256_set1_epi8(0x0f));
    put32_mul(dst + 32 * b, _mm256_sub_epi8(nib, _mm256_set1_epi8(8)), _mm256_set1_ps(_cvtsh_ss(x[b].scale)));
  }
}

DQ_TARGET void dequant_q4_k_avx2(const void* src, float* dst, int64_t nb) {
  const auto* x = static_cast<const BlockQ4_K*>(src);
  const __m256i m4 = _mm256_set1_epi8(0x0f);
  for (int64_t b = 0; b < nb; ++b) {
    const float d = _cvtsh_ss(x[b].d), dmin = _cvtsh_ss(x[b].dmin);
    uint8_t sc[8], mn[8];
    unpack_q4_k_scales(x[b].scales, sc, mn);
    for (int c = 0; c < 4; ++c) {
      const __m256i q = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x[b].qs + 32 * c));
      float* out = dst + kQK_K * b + 64 * c;
      put32_mul_sub(out, _mm256_and_si256(q, m4), _mm256_set1_ps(d * float(sc[2 * c])),
                    _mm256_set1_ps(dmin * float(mn[2 * c])));
      put32_mul_sub(out + 32, _mm256_and_si256(_mm256_srli_epi16(q, 4), m4), _mm256_set1_ps(d * float(sc[2 * c + 1])),
                    _mm256_set1_ps(dmin * float(mn[2 * c + 1])));
    }
  }
}

DQ_TARGET void dequant_q6_k_avx2(const void* src, float* dst, int64_t nb) {
  const auto* x = static_cast<const BlockQ6_K*>(src);
  const __m256i m4 = _mm256_set1_epi8(0x0f), m30 = _mm256_set1_epi8(0x30), off = _mm256_set1_epi8(32);
  for (int64_t b = 0; b < nb; ++b) {
    const float d = _cvtsh_ss(x[b].d);
    for (int h = 0; h < 2; ++h) {
      const __m256i ql0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x[b].ql + 64 * h));
      const __m256i ql1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x[b].ql + 64 * h + 32));
      const __m256i qh = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x[b].qh + 32 * h));
      const __m256i q[4] = {
          _mm256_or_si256(_mm256_and_si256(ql0, m4), _mm256_and_si256(_mm256_slli_epi16(qh, 4), m30)),
          _mm256_or_si256(_mm256_and_si256(ql1, m4), _mm256_and_si256(_mm256_slli_epi16(qh, 2), m30)),
          _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4), _mm256_and_si256(qh, m30)),
          _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4),
                          _mm256_and_si256(_mm256_srli_epi16(qh, 2), m30))};
      for (int k = 0; k < 4; ++k) {
        const __m256i v = _mm256_sub_epi8(q[k], off);
        const int8_t* sc = x[b].scales + 8 * h + 2 * k;
        float* out = dst + kQK_K * b + 128 * h + 32 * k;
        const __m256 m0 = _mm256_set1_ps(d * float(sc[0])), m1 = _mm256_set1_ps(d * float(sc[1]));
        const __m128i lo = _mm256_castsi256_si128(v), hi = _mm256_extracti128_si256(v, 1);
        put8_mul(out, lo, m0);
        put8_mul(out + 8, _mm_srli_si128(lo, 8), m0);
        put8_mul(out + 16, hi, m1);
        put8_mul(out + 24, _mm_srli_si128(hi, 8), m1);
      }
    }
  }
}
#undef DQ_TARGET

}  // namespace
#endif  // __x86_64__

namespace {

using DotFn = float (*)(const void*, const void*, int64_t);

bool cpu_has(Isa level) {
#if defined(__x86_64__)
  switch (level) {
    case Isa::Scalar: return true;
    // F16C comes with every AVX2 CPU (and clang 14 has no "f16c" for __builtin_cpu_supports).
    case Isa::Avx2: return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case Isa::AvxVnni: {
      // CPUID leaf 7, subleaf 1, EAX bit 4 (clang 14's __builtin_cpu_supports has no "avxvnni"); the OS's AVX
      // state support is what the AVX2 test already establishes.
      unsigned a = 0, b = 0, c = 0, d = 0;
      return cpu_has(Isa::Avx2) && __get_cpuid_count(7, 1, &a, &b, &c, &d) && ((a >> 4) & 1u);
    }
    case Isa::Avx512Vnni:
      return cpu_has(Isa::Avx2) && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
  }
  return false;
#else
  return level == Isa::Scalar;
#endif
}

Isa detect_best() {
  if (cpu_has(Isa::Avx512Vnni)) return Isa::Avx512Vnni;
  if (cpu_has(Isa::AvxVnni)) return Isa::AvxVnni;
  if (cpu_has(Isa::Avx2)) return Isa::Avx2;
  return Isa::Scalar;
}

Isa parse_isa(const std::string& name) {
  for (Isa level : {Isa::Scalar, Isa::Avx2, Isa::AvxVnni, Isa::Avx512Vnni})
    if (name == isa_name(level)) return level;
  fail("DL_QUANT_ISA='", name, "' is not one of scalar, avx2, avxvnni, avx512vnni");
}

Isa initial_isa() {
  const char* env = std::getenv("DL_QUANT_ISA");
  if (env == nullptr || *env == '\0') return detect_best();
  const Isa want = parse_isa(env);
  DL_CHECK(cpu_has(want), "DL_QUANT_ISA=", env, ": this CPU does not support it");
  return want;
}

Isa& current() {
  static Isa level = initial_isa();
  return level;
}

DotFn dot_fn(DType w, Isa level) {
#if defined(__x86_64__)
  if (level == Isa::Avx512Vnni) {
    switch (w) {
      case DType::Q8_0: return dot_q8_0_vnni;
      case DType::Q4_0: return dot_q4_0_vnni;
      case DType::Q4_K: return dot_q4_k_vnni512;
      case DType::Q6_K: return dot_q6_k_vnni512;
      default: break;
    }
  } else if (level == Isa::AvxVnni) {
    switch (w) {
      case DType::Q8_0: return dot_q8_0_avxvnni;
      case DType::Q4_0: return dot_q4_0_avxvnni;
      case DType::Q4_K: return dot_q4_k_avxvnni;
      case DType::Q6_K: return dot_q6_k_avxvnni;
      default: break;
    }
  } else if (level == Isa::Avx2) {
    switch (w) {
      case DType::Q8_0: return dot_q8_0_avx2;
      case DType::Q4_0: return dot_q4_0_avx2;
      case DType::Q4_K: return dot_q4_k_avx2;
      case DType::Q6_K: return dot_q6_k_avx2;
      default: break;
    }
  }
#endif
  switch (w) {
    case DType::Q8_0: return dot_q8_0_scalar;
    case DType::Q4_0: return dot_q4_0_scalar;
    case DType::Q4_K: return dot_q4_k_scalar;
    case DType::Q6_K: return dot_q6_k_scalar;
    default: fail("no integer dot product for weight type ", dtype_name(w));
  }
}

// Q8_0 quantization of one block of activations (f32 scale, round to nearest); returns the sum of the codes.
int quantize_act_block(const float* xb, int8_t* q, float* d_out) {
  float amax = 0.f;
  float probe = 0.f;  // x * 0 is NaN exactly for NaN and infinite x
  for (int i = 0; i < kQK8_0; ++i) {
    amax = std::max(amax, std::fabs(xb[i]));
    probe += xb[i] * 0.f;
  }
  // A non-finite input makes the block's scale NaN, so every product with it stays NaN as in the F32 path, instead
  // of turning into arbitrary integer codes.
  const float d = probe == 0.f ? amax / 127.f : NAN, id = probe == 0.f && d != 0.f ? 1.f / d : 0.f;
  int sum = 0;
  for (int i = 0; i < kQK8_0; ++i) {
    const int v = nearest_int(xb[i] * id);
    q[i] = int8_t(v);
    sum += v;
  }
  *d_out = d;
  return sum;
}

void quantize_act_q8_0(const float* x, int64_t k, ActQ8_0* out) {
  for (int64_t b = 0; b < k / kQK8_0; ++b) out[b].sum = quantize_act_block(x + b * kQK8_0, out[b].q, &out[b].d);
}

void quantize_act_q4_0(const float* x, int64_t k, ActQ4_0Pair* out) {
  const int64_t nb = k / kQK4_0;
  for (int64_t p = 0; p < (nb + 1) / 2; ++p) {
    ActQ4_0Pair& pair = out[p];
    std::memset(&pair, 0, sizeof pair);
    for (int h = 0; h < 2 && 2 * p + h < nb; ++h) {
      int8_t q[kQK4_0];
      const int sum = quantize_act_block(x + (2 * p + h) * kQK4_0, q, &pair.d[h]);
      std::memcpy(pair.q + 16 * h, q, 16);
      std::memcpy(pair.q + 32 + 16 * h, q + 16, 16);
      pair.init[4 * h] = -8 * sum;
    }
  }
}

}  // namespace

const char* isa_name(Isa level) {
  switch (level) {
    case Isa::Scalar: return "scalar";
    case Isa::Avx2: return "avx2";
    case Isa::AvxVnni: return "avxvnni";
    case Isa::Avx512Vnni: return "avx512vnni";
  }
  return "?";
}

Isa best_isa() {
  static const Isa best = detect_best();
  return best;
}

bool isa_supported(Isa level) { return cpu_has(level); }

Isa isa() { return current(); }

void set_isa(Isa level) {
  DL_CHECK(cpu_has(level), "quantized kernels: this CPU does not support ", isa_name(level));
  current() = level;
}

bool has_int_dot(DType w) {
  return w == DType::Q8_0 || w == DType::Q4_0 || w == DType::Q4_K || w == DType::Q6_K;
}

size_t act_row_bytes(DType w, int64_t k) {
  switch (w) {
    case DType::Q8_0: return size_t(k / kQK8_0) * sizeof(ActQ8_0);
    case DType::Q4_0: return size_t((k / kQK4_0 + 1) / 2) * sizeof(ActQ4_0Pair);
    case DType::Q4_K:
    case DType::Q6_K: return size_t(k / kQK_K) * sizeof(BlockQ8_K);
    default: fail("no integer dot product for weight type ", dtype_name(w));
  }
}

void quantize_act_row(DType w, const float* x, int64_t k, void* out) {
  DL_CHECK(k % int64_t(dtype_info(w).block_elems) == 0, "quantized activations: row of ", k,
           " is not a whole number of ", dtype_name(w), " blocks");
  switch (w) {
    case DType::Q8_0: return quantize_act_q8_0(x, k, static_cast<ActQ8_0*>(out));
    case DType::Q4_0: return quantize_act_q4_0(x, k, static_cast<ActQ4_0Pair*>(out));
    case DType::Q4_K:
    case DType::Q6_K: return quantize_row_q8_k(x, static_cast<BlockQ8_K*>(out), k);
    default: fail("no integer dot product for weight type ", dtype_name(w));
  }
}

void dequantize_act_row(DType w, const void* act, int64_t k, float* out) {
  switch (w) {
    case DType::Q8_0: {
      const auto* a = static_cast<const ActQ8_0*>(act);
      for (int64_t i = 0; i < k; ++i) out[i] = a[i / 32].d * float(a[i / 32].q[i % 32]);
      return;
    }
    case DType::Q4_0: {
      const auto* a = static_cast<const ActQ4_0Pair*>(act);
      for (int64_t i = 0; i < k; ++i) {
        const ActQ4_0Pair& pair = a[i / 64];
        const int h = int(i / 32 % 2), j = int(i % 32);
        out[i] = pair.d[h] * float(pair.q[(j < 16 ? 16 * h + j : 32 + 16 * h + j - 16)]);
      }
      return;
    }
    case DType::Q4_K:
    case DType::Q6_K: return dequantize_row_q8_k(static_cast<const BlockQ8_K*>(act), out, k);
    default: fail("no integer dot product for weight type ", dtype_name(w));
  }
}

void dot_rows(DType w, const void* w_rows, int64_t rows, int64_t k, const void* act, float* out) {
  const DotFn fn = dot_fn(w, current());
  const int64_t nb = k / int64_t(dtype_info(w).block_elems);
  const size_t row_bytes = dtype_bytes(w, k);
  const char* p = static_cast<const char*>(w_rows);
  for (int64_t r = 0; r < rows; ++r) out[r] = fn(p + size_t(r) * row_bytes, act, nb);
}

bool has_multi_row(DType w) {
#if defined(__x86_64__)
  return current() != Isa::Scalar && has_int_dot(w);
#else
  return false;
#endif
}

void dot_rows_multi(DType w, const void* w_rows, int64_t rows, int64_t k, const void* act, size_t act_stride,
                    int64_t nact, float* out, int64_t ldo) {
  const int64_t nb = k / int64_t(dtype_info(w).block_elems);
  const size_t row_bytes = dtype_bytes(w, k);
  const char* wp = static_cast<const char*>(w_rows);
  const char* ap = static_cast<const char*>(act);
  using Dot4 = void (*)(const void*, const void* const*, int64_t, float*);
  Dot4 dot4 = nullptr;
#if defined(__x86_64__)
  if (current() == Isa::Avx512Vnni) {
    switch (w) {
      case DType::Q8_0: dot4 = dot4_q8_0_vnni; break;
      case DType::Q4_0: dot4 = dot4_q4_0_vnni; break;
      case DType::Q4_K: dot4 = dot4_q4_k_vnni512; break;
      case DType::Q6_K: dot4 = dot4_q6_k_vnni512; break;
      default: break;
    }
  } else if (current() == Isa::AvxVnni) {
    switch (w) {
      case DType::Q8_0: dot4 = dot4_q8_0_avxvnni; break;
      case DType::Q4_0: dot4 = dot4_q4_0_avxvnni; break;
      case DType::Q4_K: dot4 = dot4_q4_k_avxvnni; break;
      case DType::Q6_K: dot4 = dot4_q6_k_avxvnni; break;
      default: break;
    }
  } else if (current() == Isa::Avx2) {
    switch (w) {
      case DType::Q8_0: dot4 = dot4_q8_0_avx2; break;
      case DType::Q4_0: dot4 = dot4_q4_0_avx2; break;
      case DType::Q4_K: dot4 = dot4_q4_k_avx2; break;
      case DType::Q6_K: dot4 = dot4_q6_k_avx2; break;
      default: break;
    }
  }
#endif
  const DotFn one = dot_fn(w, current());
  for (int64_t r = 0; r < rows; ++r) {
    const char* wr = wp + size_t(r) * row_bytes;
    int64_t m = 0;
    if (dot4 != nullptr)
      for (; m + 4 <= nact; m += 4) {
        const void* rows4[4] = {ap + size_t(m) * act_stride, ap + size_t(m + 1) * act_stride,
                                ap + size_t(m + 2) * act_stride, ap + size_t(m + 3) * act_stride};
        float o[4];
        dot4(wr, rows4, nb, o);
        for (int i = 0; i < 4; ++i) out[(m + i) * ldo + r] = o[i];
      }
    for (; m < nact; ++m) out[m * ldo + r] = one(wr, ap + size_t(m) * act_stride, nb);
  }
}

void dequantize_row(DType w, const void* src, float* dst, int64_t k) {
#if defined(__x86_64__)
  if (current() != Isa::Scalar) {
    const int64_t nb = k / int64_t(dtype_info(w).block_elems);
    switch (w) {
      case DType::Q8_0: return dequant_q8_0_avx2(src, dst, nb);
      case DType::Q4_0: return dequant_q4_0_avx2(src, dst, nb);
      case DType::Q4_K: return dequant_q4_k_avx2(src, dst, nb);
      case DType::Q6_K: return dequant_q6_k_avx2(src, dst, nb);
      default: break;
    }
  }
#endif
  convert_to_f32(w, src, dst, k);
}

}  // namespace dl::quant
