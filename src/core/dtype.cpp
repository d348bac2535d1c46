#include "core/dtype.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cctype>
#include <cmath>
#include <string>

#include "core/error.h"

namespace dl {

namespace {
const DTypeInfo kInfos[] = {
    {"F32", 1, 4, true, false},  {"F16", 1, 2, true, false},   {"BF16", 1, 2, true, false},
    {"I32", 1, 4, false, false}, {"I64", 1, 8, false, false},  {"I8", 1, 1, false, false},
    {"U8", 1, 1, false, false},  {"BOOL", 1, 1, false, false}, {"Q8_0", 32, 34, true, true},
    {"Q4_0", 32, 18, true, true},
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
    for (int i = 0; i < kQK8_0; ++i) y[b].q[i] = int8_t(std::lrintf(xb[i] * id));
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
  }
  fail("convert_from_f32: unsupported dtype ", int(to));
}

}  // namespace dl
