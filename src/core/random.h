// The engine's random numbers: a seeded 64-bit Mersenne Twister and our own uniform/normal transforms, so a seed
// gives the same draws on every platform and standard library (std::normal_distribution is implementation-defined).
#pragma once
#include <cstdint>
#include <random>

#include "core/tensor.h"

namespace dl {

class Rng {
 public:
  explicit Rng(uint64_t seed = 0) : engine_(seed) {}
  uint64_t next() { return engine_(); }
  // Uniform in [0, 1) with 53 random bits.
  double uniform() { return double(engine_() >> 11) * 0x1p-53; }
  // Uniform integer in [0, n), n >= 1 (rejection sampling, no modulo bias).
  uint64_t below(uint64_t n);
  // Standard normal (Box-Muller; the second value of each pair is kept for the next call).
  float normal();
  // A tensor of standard-normal F32 draws, filled in row-major order.
  Tensor randn(const Shape& shape);

 private:
  std::mt19937_64 engine_;
  bool has_spare_ = false;
  double spare_ = 0.0;
};

}  // namespace dl
