// Element types. Plain types have one element per "block"; block-quantized weight types (Q8_0, Q4_0 and the
// 256-element "K" super-blocks Q4_K, Q6_K) pack block_elems elements into block_bytes bytes and are only stored,
// converted and multiplied, never viewed element-wise.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string_view>

namespace dl {

enum class DType : uint8_t { F32, F16, BF16, I32, I64, I8, U8, BOOL, Q8_0, Q4_0, Q4_K, Q6_K };

struct DTypeInfo {
  std::string_view name;
  size_t block_elems;  // elements per block (1 for plain types)
  size_t block_bytes;  // bytes per block
  bool is_float;
  bool is_quantized;
};

const DTypeInfo& dtype_info(DType t);
inline std::string_view dtype_name(DType t) { return dtype_info(t).name; }
// Bytes needed for n elements (n must be a whole number of blocks for quantized types).
size_t dtype_bytes(DType t, int64_t n);
// Parses names such as "F32", "f16", "bf16", "q8_0"; throws on an unknown name.
DType parse_dtype(std::string_view name);

template <typename T> constexpr DType dtype_of();
template <> constexpr DType dtype_of<float>() { return DType::F32; }
template <> constexpr DType dtype_of<int32_t>() { return DType::I32; }
template <> constexpr DType dtype_of<int64_t>() { return DType::I64; }
template <> constexpr DType dtype_of<int8_t>() { return DType::I8; }
template <> constexpr DType dtype_of<uint8_t>() { return DType::U8; }

// IEEE half and bfloat16 conversions (round to nearest even, NaN preserved).
inline float bf16_to_f32(uint16_t h) {
  uint32_t u = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline uint16_t f32_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return uint16_t(u >> 16);
}
float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);
// n halves to floats, eight at a time with F16C where the CPU has it (the same values as f16_to_f32).
void f16_row_to_f32(const uint16_t* src, float* dst, int64_t n);

// Block formats (the GGML layouts, so converted files interoperate).
constexpr int kQK8_0 = 32;
struct BlockQ8_0 {
  uint16_t scale;  // f16
  int8_t q[kQK8_0];
};
constexpr int kQK4_0 = 32;
struct BlockQ4_0 {
  uint16_t scale;           // f16
  uint8_t q[kQK4_0 / 2];    // element i in low nibble of q[i], element i+16 in high nibble, offset 8
};
static_assert(sizeof(BlockQ8_0) == 34);
static_assert(sizeof(BlockQ4_0) == 18);

// K-quants: super-blocks of 256 elements with per-sub-block scales (ggml's block_q4_K / block_q6_K byte layouts).
constexpr int kQK_K = 256;
struct BlockQ4_K {
  uint16_t d;           // f16 scale of the 6-bit sub-block scales
  uint16_t dmin;        // f16 scale of the 6-bit sub-block mins
  uint8_t scales[12];   // 8 (scale, min) pairs of 6 bits each, packed as ggml's get_scale_min_k4 reads them
  uint8_t qs[kQK_K / 2];  // per 64 elements: 32 bytes, elements 0..31 in low nibbles, 32..63 in high nibbles
};
struct BlockQ6_K {
  uint8_t ql[kQK_K / 2];  // low 4 bits
  uint8_t qh[kQK_K / 4];  // high 2 bits
  int8_t scales[kQK_K / 16];  // one signed scale per 16 elements
  uint16_t d;              // f16 super-block scale
};
// Activation-side block for dot products against K-quants (never stored in files): f32 scale, 256 int8 values and
// the sums of each 16 of them, which fold the weights' mins and offsets into one multiply per sub-block.
struct BlockQ8_K {
  float d;
  int8_t qs[kQK_K];
  int16_t bsums[kQK_K / 16];
};
static_assert(sizeof(BlockQ4_K) == 144);
static_assert(sizeof(BlockQ6_K) == 210);
static_assert(sizeof(BlockQ8_K) == 292);

// Quantizers follow ggml's reference ("_ref") algorithms, so files match what llama-quantize writes without an
// importance matrix; n must be a multiple of the block size (32, or kQK_K for the K types).
void quantize_row_q8_0(const float* x, BlockQ8_0* y, int64_t n);
void dequantize_row_q8_0(const BlockQ8_0* x, float* y, int64_t n);
void quantize_row_q4_0(const float* x, BlockQ4_0* y, int64_t n);
void dequantize_row_q4_0(const BlockQ4_0* x, float* y, int64_t n);
void quantize_row_q4_k(const float* x, BlockQ4_K* y, int64_t n);
void dequantize_row_q4_k(const BlockQ4_K* x, float* y, int64_t n);
void quantize_row_q6_k(const float* x, BlockQ6_K* y, int64_t n);
void dequantize_row_q6_k(const BlockQ6_K* x, float* y, int64_t n);
void quantize_row_q8_k(const float* x, BlockQ8_K* y, int64_t n);
void dequantize_row_q8_k(const BlockQ8_K* x, float* y, int64_t n);
// The (scale, min) pair j (0..7) of a Q4_K block's packed 12 bytes.
inline void q4_k_scale_min(int j, const uint8_t* s, uint8_t* sc, uint8_t* mn) {
  if (j < 4) {
    *sc = s[j] & 63;
    *mn = s[j + 4] & 63;
  } else {
    *sc = uint8_t((s[j + 4] & 0x0f) | ((s[j - 4] >> 6) << 4));
    *mn = uint8_t((s[j + 4] >> 4) | ((s[j] >> 6) << 4));
  }
}

// Converts n elements of type `from` at src into F32 at dst (any dtype, quantized included).
void convert_to_f32(DType from, const void* src, float* dst, int64_t n);
// Converts n F32 values into type `to` (any dtype; integers round to nearest).
void convert_from_f32(DType to, const float* src, void* dst, int64_t n);

}  // namespace dl
