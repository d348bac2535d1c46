// Integer dot products of block-quantized weight rows (Q8_0, Q4_0, Q4_K, Q6_K) with activations quantized once per
// row to 8 bits (as llama.cpp does): 32-element blocks with an f32 scale and the block's sum for Q8_0/Q4_0 weights,
// Q8_K super-blocks for the K types. The products run in integers (AVX-512 VNNI, AVX2 maddubs/madd, or scalar,
// picked once per process by CPU) and each block's integer sum is scaled in float. Also vectorised dequantizers,
// for panels that feed the F32 GEMM. Internal to src/core.
#pragma once
#include <cstddef>
#include <cstdint>

#include "core/dtype.h"

namespace dl::quant {

// AvxVnni: the 256-bit VEX-encoded VNNI of CPUs without AVX-512 (Alder Lake and later).
enum class Isa { Scalar, Avx2, AvxVnni, Avx512Vnni };
const char* isa_name(Isa isa);
// The best level this CPU runs, and whether it runs a given one.
Isa best_isa();
bool isa_supported(Isa isa);
// The level in use: best_isa(), or DL_QUANT_ISA=scalar|avx2|avxvnni|avx512vnni from the environment at first use.
Isa isa();
// For tests and benchmarks: switch the level for the whole process (throws when the CPU lacks it). Not
// thread-safe against kernels running at the same time.
void set_isa(Isa isa);

// Weight types with an integer kernel.
bool has_int_dot(DType w);
// Bytes of one quantized activation row of k elements, for weights of type w (k a whole number of w's blocks).
size_t act_row_bytes(DType w, int64_t k);
// Quantizes x[0..k) into out (act_row_bytes(w, k) bytes, any alignment of 8 or more).
void quantize_act_row(DType w, const float* x, int64_t k, void* out);
// out[i] = dot(weight row i, activation row) for `rows` consecutive weight rows of k elements starting at w_rows.
void dot_rows(DType w, const void* w_rows, int64_t rows, int64_t k, const void* act, float* out);
// Whether dot_rows_multi has kernels that reuse each unpacked weight block for several activation rows at the
// level in use (otherwise prefill is faster through dequantized panels and the F32 GEMM).
bool has_multi_row(DType w);
// out[m * ldo + i] = dot(weight row i, activation row m) for `rows` weight rows and `nact` activation rows stored
// act_stride bytes apart.
void dot_rows_multi(DType w, const void* w_rows, int64_t rows, int64_t k, const void* act, size_t act_stride,
                    int64_t nact, float* out, int64_t ldo);
// The F32 values of one quantized row: the same bits as convert_to_f32, vectorised.
void dequantize_row(DType w, const void* src, float* dst, int64_t k);

// The activation values as the kernels see them (for tests): k floats from quantize_act_row's output.
void dequantize_act_row(DType w, const void* act, int64_t k, float* out);

// The activation block for Q8_0 weights.
struct ActQ8_0 {
  float d;
  int32_t sum;
  int8_t q[kQK8_0];
};
static_assert(sizeof(ActQ8_0) == 40);
// For Q4_0 weights, blocks go in pairs (A, B) with the bytes in the order one 256-bit load of the two weight blocks'
// nibbles produces (A's elements 0-15, B's 0-15, then A's 16-31, B's 16-31), so a pair costs two integer products
// and one scaling. An odd last block is paired with zeros.
struct ActQ4_0Pair {
  int8_t q[2 * kQK4_0];
  int32_t init[8];  // -8 * sum(A's q) in lane 0, -8 * sum(B's q) in lane 4, else 0: the nibbles' offset of 8
  float d[2];
};
static_assert(sizeof(ActQ4_0Pair) == 104);

}  // namespace dl::quant
