// The closed set of tensor ops dreamllm.cpp is built from: forward kernels and, beside each, the backward kernel
// that autograd (src/nn) calls. Compute is F32; weights of linear/matmul may also be F16, BF16, Q8_0 or Q4_0.
// Inputs may be strided views (they are made contiguous as needed); outputs are fresh contiguous tensors.
//
// Determinism: every op partitions its output over threads, and each output element is computed by the same
// sequence of float operations whatever the thread count, so results are bit-identical across thread counts.
// The one exception is a GEMM shape that OpenBLAS itself blocks differently by sub-problem size; see gemm().
#pragma once
#include <optional>
#include <vector>

#include "core/tensor.h"

namespace dl::ops {

// ---- matrix products ----
// C[M,N] = alpha * op(A) op(B) + beta * C, row-major, op = transpose when ta/tb. Runs on the process pool: the
// output is split into row or column panels, each multiplied by single-threaded OpenBLAS sgemm (own kernels
// for M <= 4, the memory-bound decode case).
void gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
          const float* B, int64_t ldb, float beta, float* C, int64_t ldc);
// The same product on the calling thread only, for callers that run several independent products in parallel.
void gemm_serial(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
                 const float* B, int64_t ldb, float beta, float* C, int64_t ldc);
// The OpenBLAS kernel family in use ("SkylakeX", "Haswell", ...): OPENBLAS_CORETYPE when set, else the one this
// CPU's features call for (OpenBLAS is loaded at first use, see kernels/gemm.cpp).
const char* blas_kernels();
// Eigen-decomposition of a symmetric n x n matrix a (row-major, double; LAPACK's dsyev through OpenBLAS):
// eigenvalues ascending into values[n], eigenvector k (unit length) into row k of vectors[n * n]. Refuses a
// matrix that is not exactly symmetric.
void symmetric_eigen(int64_t n, const double* a, double* values, double* vectors);
// a [..., M, K] @ b [..., K, N] (with ta/tb: a is [..., K, M], b is [..., N, K]); batch dims broadcast.
Tensor matmul(const Tensor& a, const Tensor& b, bool ta = false, bool tb = false);
// x [..., in] times weight [out, in] (F32/F16/BF16/Q8_0/Q4_0) plus optional bias [out].
Tensor linear(const Tensor& x, const Tensor& weight, const Tensor* bias = nullptr);
// Gradients of linear: gx = gy W; gw = gy^T x (F32 weights only); gb = sum of gy over rows.
Tensor linear_backward_input(const Tensor& gy, const Tensor& weight);
Tensor linear_backward_weight(const Tensor& gy, const Tensor& x);
Tensor sum_rows(const Tensor& gy);  // [..., n] -> [n]

// ---- convolution ----
// x [N,C,H,W], weight [O,C,kh,kw], bias [O]; zero padding on both sides.
Tensor conv2d(const Tensor& x, const Tensor& weight, const Tensor* bias, int stride, int padding);
// 3x3 stride-1 convolutions with padding 1 and at least 16 channels in and out on 8x8 or larger outputs run as
// Winograd F(2x2, 3x3) (1.5-1.8x the speed of im2col + sgemm, a few float roundings apart); everything else, and
// everything when DREAMLLM_CONV=im2col is set at start-up or after set_conv_winograd(false), by im2col + sgemm.
void set_conv_winograd(bool enabled);
void conv2d_backward(const Tensor& x, const Tensor& weight, const Tensor& gy, int stride, int padding, Tensor* gx,
                     Tensor* gw, Tensor* gb);

// ---- normalisation ----
// Each returns the normalised output and fills mean/rstd (statistics saved for backward) when asked.
Tensor group_norm(const Tensor& x, int groups, const Tensor* gamma, const Tensor* beta, float eps,
                  Tensor* mean = nullptr, Tensor* rstd = nullptr);
void group_norm_backward(const Tensor& x, int groups, const Tensor* gamma, const Tensor& mean, const Tensor& rstd,
                         const Tensor& gy, Tensor* gx, Tensor* ggamma, Tensor* gbeta);
Tensor layer_norm(const Tensor& x, const Tensor* gamma, const Tensor* beta, float eps, Tensor* mean = nullptr,
                  Tensor* rstd = nullptr);
void layer_norm_backward(const Tensor& x, const Tensor* gamma, const Tensor& mean, const Tensor& rstd,
                         const Tensor& gy, Tensor* gx, Tensor* ggamma, Tensor* gbeta);
// Hugging Face LlamaRMSNorm: weight * (x * rsqrt(mean(x^2) + eps)).
Tensor rms_norm(const Tensor& x, const Tensor& weight, float eps, Tensor* rstd = nullptr);
void rms_norm_backward(const Tensor& x, const Tensor& weight, const Tensor& rstd, const Tensor& gy, Tensor* gx,
                       Tensor* gw);

// ---- softmax and attention ----
struct AttentionMask {
  bool causal = false;  // query i (of Tq, the last Tq positions of Tk) sees keys j <= i + Tk - Tq
  // Optional additive mask broadcastable to [B, H, Tq, Tk] (dims of size 1 broadcast), e.g. 0 / -inf padding.
  const Tensor* additive = nullptr;
  // Optional key padding mask [B, Tk]: nonzero keeps, zero masks out.
  const Tensor* key_keep = nullptr;
};
// Softmax over the last dim of x [B, H, Tq, Tk] (or any rank; masks need rank 4) with the masks applied.
// Fully masked rows give zeros.
Tensor softmax(const Tensor& x, const AttentionMask& mask = {});
Tensor softmax_backward(const Tensor& y, const Tensor& gy);
// q [B,Hq,Tq,D], k [B,Hkv,Tk,D], v [B,Hkv,Tk,Dv]; Hq a multiple of Hkv (grouped KV heads). Streams over key
// blocks with an online softmax, never materialising Tq x Tk scores. lse (optional out) [B,Hq,Tq] is saved for
// backward. scale <= 0 means 1/sqrt(D).
Tensor attention(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionMask& mask, float scale = 0.f,
                 Tensor* lse = nullptr);
// Inference over a key/value cache: k [B,Hkv,C,D] and v [B,Hkv,C,Dv] hold C >= `valid` rows per head, of which
// the first `valid` are keys (the mask and causality see Tk = valid). Keys and values may be F32, F16, BF16 or Q8_0
// (head dims a multiple of 32): each block of keys is widened to F32 as it is used.
Tensor attention_cached(const Tensor& q, const Tensor& k, const Tensor& v, int64_t valid, const AttentionMask& mask,
                        float scale = 0.f);
void attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out, const Tensor& lse,
                        const Tensor& gout, const AttentionMask& mask, float scale, Tensor* gq, Tensor* gk,
                        Tensor* gv);
// Rotary embedding, rotate-half (GPT-NeoX / HF LLaMA) layout: x [B,H,T,D], positions [T] or [B,T] (I32/I64).
// inverse = true applies the transpose rotation (its backward).
Tensor rope(const Tensor& x, const Tensor& positions, float theta, bool inverse = false);

// ---- lookups ----
Tensor embedding(const Tensor& weight, const Tensor& ids);  // weight [V,D] any float dtype; ids I32/I64 [...]
Tensor embedding_backward(const Tensor& ids, const Tensor& gy, int64_t vocab);

// ---- activations ----
enum class Act { SiLU, GeluErf, GeluTanh, QuickGelu };
Tensor activation(Act act, const Tensor& x);
Tensor activation_backward(Act act, const Tensor& x, const Tensor& gy);
// GEGLU: x [..., 2F] -> first half * gelu_erf(second half) (diffusers GEGLU order).
Tensor geglu(const Tensor& x);
Tensor geglu_backward(const Tensor& x, const Tensor& gy);
// SwiGLU product silu(gate) * up, and its backward.
Tensor swiglu(const Tensor& gate, const Tensor& up);
void swiglu_backward(const Tensor& gate, const Tensor& up, const Tensor& gy, Tensor* ggate, Tensor* gup);

// ---- elementwise with broadcasting ----
Tensor add(const Tensor& a, const Tensor& b);
Tensor sub(const Tensor& a, const Tensor& b);
Tensor mul(const Tensor& a, const Tensor& b);
Tensor scale(const Tensor& a, float s);
Tensor add_scalar(const Tensor& a, float s);
// Sums g over the dimensions that broadcasting expanded, giving a tensor of `shape`.
Tensor reduce_to_shape(const Tensor& g, const Shape& shape);
void add_inplace(Tensor& dst, const Tensor& src);  // dst += src, same shape (accumulation)

// ---- layout ----
Tensor upsample_nearest2x(const Tensor& x);  // [N,C,H,W] -> [N,C,2H,2W]
Tensor upsample_nearest2x_backward(const Tensor& gy);
// Nearest resize [N,C,H,W] -> [N,C,OH,OW] with PyTorch's source index min(floor(o * (in / out)), in - 1) (what
// F.interpolate(size=..., mode="nearest") computes); the UNet uses it to meet an odd-sized skip tensor.
Tensor upsample_nearest(const Tensor& x, int64_t out_h, int64_t out_w);
Tensor upsample_nearest_backward(const Tensor& gy, int64_t in_h, int64_t in_w);
Tensor concat(const std::vector<Tensor>& xs, int64_t dim);
std::vector<Tensor> split(const Tensor& x, const std::vector<int64_t>& sizes, int64_t dim);

// ---- reductions ----
Tensor sum(const Tensor& x, int64_t dim, bool keepdim = false);
Tensor mean(const Tensor& x, int64_t dim, bool keepdim = false);
float sum_all(const Tensor& x);  // fixed-order (thread-count independent) sum

// ---- losses ----
// Token-mean cross-entropy of logits [N,V] against targets [N] (I32/I64), ignoring targets == ignore_index.
// Returns 0 when every target is ignored. Also returns the number of counted targets.
float cross_entropy(const Tensor& logits, const Tensor& targets, int64_t ignore_index = -100,
                    int64_t* counted = nullptr);
// Gradient of cross_entropy times gloss, given the divisor (number of counted targets).
Tensor cross_entropy_backward(const Tensor& logits, const Tensor& targets, float gloss, int64_t ignore_index,
                              int64_t divisor);
float mse(const Tensor& a, const Tensor& b);  // mean((a - b)^2)

// ---- the VAE's diagonal Gaussian posterior (diffusers DiagonalGaussianDistribution; logvar clamped to [-30, 20]) --
// sample: mean + exp(logvar / 2) * eps.
Tensor gaussian_sample(const Tensor& mean, const Tensor& logvar, const Tensor& eps);
void gaussian_sample_backward(const Tensor& logvar, const Tensor& eps, const Tensor& gz, Tensor* gmean,
                              Tensor* glogvar);
// KL to N(0, I), summed over all but the first dimension and averaged over it (the batch).
float gaussian_kl(const Tensor& mean, const Tensor& logvar);
void gaussian_kl_backward(const Tensor& mean, const Tensor& logvar, float gloss, Tensor* gmean, Tensor* glogvar);

}  // namespace dl::ops
