// Small vector primitives shared by kernels (internal to src/core).
#pragma once
#include <cstdint>

namespace dl::vec {
float dot(const float* a, const float* b, int64_t n);
void axpy(float a, const float* x, float* y, int64_t n);  // y += a * x
void scale(float a, float* y, int64_t n);                 // y *= a
}  // namespace dl::vec
