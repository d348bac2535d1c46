#include "core/random.h"

#include <cmath>
#include <numbers>

#include "core/error.h"

namespace dl {

uint64_t Rng::below(uint64_t n) {
  DL_CHECK(n >= 1, "Rng::below: empty range");
  const uint64_t limit = UINT64_MAX - UINT64_MAX % n;  // draws at or above this would bias the low residues
  uint64_t x = engine_();
  while (x >= limit) x = engine_();
  return x % n;
}

float Rng::normal() {
  if (has_spare_) {
    has_spare_ = false;
    return float(spare_);
  }
  // u1 in (0, 1] keeps the logarithm finite.
  const double u1 = double((engine_() >> 11) + 1) * 0x1p-53, u2 = uniform();
  const double r = std::sqrt(-2.0 * std::log(u1)), a = 2.0 * std::numbers::pi * u2;
  spare_ = r * std::sin(a);
  has_spare_ = true;
  return float(r * std::cos(a));
}

Tensor Rng::randn(const Shape& shape) {
  Tensor t = Tensor::empty(shape);
  float* p = t.f32();
  for (int64_t i = 0; i < t.numel(); ++i) p[i] = normal();
  return t;
}

}  // namespace dl
