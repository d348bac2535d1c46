// Small vector primitives shared by kernels (internal to src/core). The dot products pick AVX-512, AVX2+FMA or
// a scalar loop once per process, by CPU; each keeps several independent accumulators so that the FMA latency
// does not bound in-cache throughput.
#pragma once
#include <cstdint>

namespace dl::vec {
float dot(const float* a, const float* b, int64_t n);
// x (F32) . w where w holds bfloat16 / IEEE half values, widened on the fly (no temporary buffer).
float dot_bf16(const float* x, const uint16_t* w, int64_t n);
float dot_f16(const float* x, const uint16_t* w, int64_t n);
void axpy(float a, const float* x, float* y, int64_t n);  // y += a * x
void scale(float a, float* y, int64_t n);                 // y *= a
}  // namespace dl::vec
