#include "core/kernels/vec.h"

// GCC 12's AVX-512 intrinsic headers pass _mm512_undefined_*() as masked-off sources and warn about them
// (a known false positive); the warnings concern the headers, not this file.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>

#include "core/dtype.h"
#include "core/simd.h"

namespace dl::vec {

namespace {

// ---- scalar fallbacks ----
template <typename Load>
float dot_scalar(const float* x, const uint16_t* w, int64_t n, Load load) {
  float s[4] = {0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 4 <= n; i += 4)
    for (int k = 0; k < 4; ++k) s[k] += x[i + k] * load(w[i + k]);
  for (; i < n; ++i) s[0] += x[i] * load(w[i]);
  return (s[0] + s[1]) + (s[2] + s[3]);
}
float dot_f32_scalar(const float* a, const float* b, int64_t n) {
  float s[4] = {0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 4 <= n; i += 4)
    for (int k = 0; k < 4; ++k) s[k] += a[i + k] * b[i + k];
  for (; i < n; ++i) s[0] += a[i] * b[i];
  return (s[0] + s[1]) + (s[2] + s[3]);
}

#if defined(__x86_64__)
// ---- AVX2 + FMA (+ F16C, present on every AVX2 CPU) ----
__attribute__((target("avx2,fma"))) inline float hsum256(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
__attribute__((target("avx2,fma"))) inline __m256 load8_bf16(const uint16_t* p) {
  return _mm256_castsi256_ps(
      _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))), 16));
}
__attribute__((target("avx2,fma,f16c"))) inline __m256 load8_f16(const uint16_t* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
__attribute__((target("avx2,fma"))) inline __m256 load8_f32(const float* p) { return _mm256_loadu_ps(p); }

#define DL_DOT_AVX2(NAME, WTYPE, LOADW, TAIL)                                                     \
  __attribute__((target("avx2,fma,f16c"))) float NAME(const float* x, const WTYPE* w, int64_t n) { \
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;                                  \
    int64_t i = 0;                                                                                 \
    for (; i + 32 <= n; i += 32) {                                                                 \
      a0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i), LOADW(w + i), a0);                              \
      a1 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i + 8), LOADW(w + i + 8), a1);                      \
      a2 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i + 16), LOADW(w + i + 16), a2);                    \
      a3 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i + 24), LOADW(w + i + 24), a3);                    \
    }                                                                                              \
    for (; i + 8 <= n; i += 8) a0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i), LOADW(w + i), a0);     \
    float s = hsum256(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));                \
    for (; i < n; ++i) s += x[i] * TAIL(w[i]);                                                     \
    return s;                                                                                      \
  }

inline float same(float v) { return v; }
DL_DOT_AVX2(dot_f32_avx2, float, load8_f32, same)
DL_DOT_AVX2(dot_bf16_avx2, uint16_t, load8_bf16, bf16_to_f32)
DL_DOT_AVX2(dot_f16_avx2, uint16_t, load8_f16, f16_to_f32)

// ---- AVX-512F ----
__attribute__((target("avx512f"))) inline __m512 load16_bf16(const uint16_t* p) {
  return _mm512_castsi512_ps(
      _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))), 16));
}
__attribute__((target("avx512f"))) inline __m512 load16_f16(const uint16_t* p) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
__attribute__((target("avx512f"))) inline __m512 load16_f32(const float* p) { return _mm512_loadu_ps(p); }
// Own horizontal sum: GCC 12's _mm512_reduce_add_ps trips -Wuninitialized inside its header.
__attribute__((target("avx512f"))) inline float hsum512(__m512 v) {
  alignas(64) float t[16];
  _mm512_store_ps(t, v);
  float s[8];
  for (int k = 0; k < 8; ++k) s[k] = t[k] + t[k + 8];
  return ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7]));
}

#define DL_DOT_AVX512(NAME, WTYPE, LOADW, TAIL)                                                   \
  __attribute__((target("avx512f"))) float NAME(const float* x, const WTYPE* w, int64_t n) {       \
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;                                   \
    int64_t i = 0;                                                                                 \
    for (; i + 64 <= n; i += 64) {                                                                 \
      a0 = _mm512_fmadd_ps(_mm512_loadu_ps(x + i), LOADW(w + i), a0);                              \
      a1 = _mm512_fmadd_ps(_mm512_loadu_ps(x + i + 16), LOADW(w + i + 16), a1);                    \
      a2 = _mm512_fmadd_ps(_mm512_loadu_ps(x + i + 32), LOADW(w + i + 32), a2);                    \
      a3 = _mm512_fmadd_ps(_mm512_loadu_ps(x + i + 48), LOADW(w + i + 48), a3);                    \
    }                                                                                              \
    for (; i + 16 <= n; i += 16) a0 = _mm512_fmadd_ps(_mm512_loadu_ps(x + i), LOADW(w + i), a0);   \
    float s = hsum512(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));                \
    for (; i < n; ++i) s += x[i] * TAIL(w[i]);                                                     \
    return s;                                                                                      \
  }

DL_DOT_AVX512(dot_f32_avx512, float, load16_f32, same)
DL_DOT_AVX512(dot_bf16_avx512, uint16_t, load16_bf16, bf16_to_f32)
DL_DOT_AVX512(dot_f16_avx512, uint16_t, load16_f16, f16_to_f32)
#endif

enum class Isa { Scalar, Avx2, Avx512 };
Isa detect() {
#if defined(__x86_64__)
  if (__builtin_cpu_supports("avx512f")) return Isa::Avx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::Avx2;
#endif
  return Isa::Scalar;
}
const Isa kIsa = detect();

}  // namespace

float dot(const float* a, const float* b, int64_t n) {
#if defined(__x86_64__)
  if (kIsa == Isa::Avx512) return dot_f32_avx512(a, b, n);
  if (kIsa == Isa::Avx2) return dot_f32_avx2(a, b, n);
#endif
  return dot_f32_scalar(a, b, n);
}

float dot_bf16(const float* x, const uint16_t* w, int64_t n) {
#if defined(__x86_64__)
  if (kIsa == Isa::Avx512) return dot_bf16_avx512(x, w, n);
  if (kIsa == Isa::Avx2) return dot_bf16_avx2(x, w, n);
#endif
  return dot_scalar(x, w, n, bf16_to_f32);
}

float dot_f16(const float* x, const uint16_t* w, int64_t n) {
#if defined(__x86_64__)
  if (kIsa == Isa::Avx512) return dot_f16_avx512(x, w, n);
  if (kIsa == Isa::Avx2) return dot_f16_avx2(x, w, n);
#endif
  return dot_scalar(x, w, n, f16_to_f32);
}

DL_SIMD_CLONES void axpy(float a, const float* x, float* y, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}

DL_SIMD_CLONES void exp_shifted(const float* x, float shift, float* y, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] = exp_approx(x[i] - shift);
}

DL_SIMD_CLONES void sigmoid(const float* x, float a, float* y, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] = 1.f / (1.f + exp_approx(-a * x[i]));
}

DL_SIMD_CLONES void scale(float a, float* y, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] *= a;
}

}  // namespace dl::vec
