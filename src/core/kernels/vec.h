// Small vector primitives shared by kernels (internal to src/core). The dot products pick AVX-512, AVX2+FMA or
// a scalar loop once per process, by CPU; each keeps several independent accumulators so that the FMA latency
// does not bound in-cache throughput.
#pragma once
#include <bit>
#include <cmath>
#include <cstdint>

namespace dl::vec {
// Round to nearest, ties to even, for |v| < 2^22: adding 1.5 * 2^23 leaves the integer in the low mantissa bits.
// ggml's quantizers round this way; lrintf would agree but is a library call in the inner loops.
inline int nearest_int(float v) {
  const int32_t i = std::bit_cast<int32_t>(v + 12582912.f);
  return (i & 0x007fffff) - 0x00400000;
}

float dot(const float* a, const float* b, int64_t n);
// x (F32) . w where w holds bfloat16 / IEEE half values, widened on the fly (no temporary buffer).
float dot_bf16(const float* x, const uint16_t* w, int64_t n);
float dot_f16(const float* x, const uint16_t* w, int64_t n);
void axpy(float a, const float* x, float* y, int64_t n);  // y += a * x
void scale(float a, float* y, int64_t n);                 // y *= a

// e^x within 2 ulp of the exact value on [-87.3, 88]: Cody-Waite reduction by ln 2 split in two (Cephes'
// constants) and Cephes' degree-7 polynomial, all in fused multiply-adds. Below the range it gives 0 (exp(-inf) = 0
// for masked scores), above it +inf (e^88 is within 2x of FLT_MAX), NaN stays NaN. Pure arithmetic, so loops over
// it vectorise, and a vector lane and the scalar version compute identical bits (what keeps results independent of
// how work is split over threads).
inline float exp_approx(float x) {
  // Clamped with comparisons, not std::fmin/fmax: their NaN rules keep GCC from vectorising the loop.
  const float lo = x < -87.33654f ? -87.33654f : x, xc = lo > 88.f ? 88.f : lo;
  const float n = std::fma(xc, 1.44269504088896341f, 12582912.f) - 12582912.f;  // round to nearest by 1.5 * 2^23
  float r = std::fma(n, -0.693359375f, xc);
  r = std::fma(n, 2.12194440e-4f, r);
  float p = 1.9875691500e-4f;
  p = std::fma(p, r, 1.3981999507e-3f);
  p = std::fma(p, r, 8.3334519073e-3f);
  p = std::fma(p, r, 4.1665795894e-2f);
  p = std::fma(p, r, 1.6666665459e-1f);
  p = std::fma(p, r, 5.0000001201e-1f);
  p = std::fma(p, r * r, r) + 1.f;
  const float scale = std::bit_cast<float>((int32_t(n) + 127) << 23);
  const float y = p * scale;
  return x < -87.33654f ? 0.f : (x > 88.f ? INFINITY : (x != x ? x : y));
}
// y[i] = exp_approx(x[i] - shift) (y may be x); returns nothing, so the loop vectorises without reassociation.
void exp_shifted(const float* x, float shift, float* y, int64_t n);
// y[i] = 1 / (1 + exp_approx(-a * x[i])): the logistic function of a * x (SiLU, swish and quick-GELU gates).
void sigmoid(const float* x, float a, float* y, int64_t n);
}  // namespace dl::vec
