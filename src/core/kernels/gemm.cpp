// Matrix products. Large products go to OpenBLAS sgemm (single-threaded, one call per output panel on the
// process pool, so the whole program has one thread pool); the memory-bound few-row case and low-precision
// weights use own kernels that convert weights on the fly.
#include <cblas.h>
#include <dlfcn.h>
#include <immintrin.h>

#include <cstdlib>
#include <string>

#include <algorithm>
#include <bit>
#include <thread>
#include <vector>

#include "core/error.h"
#include "core/kernels/vec.h"
#include "core/kernels/quant_dot.h"
#include "core/ops.h"
#include "core/simd.h"
#include "core/thread_pool.h"

namespace dl::ops {

namespace {

// OpenBLAS is loaded at first use rather than linked: its DYNAMIC_ARCH build picks its kernels in a library
// constructor from OPENBLAS_CORETYPE or its own CPU table, and 0.3.21's table does not know newer Xeons (Sapphire
// Rapids reads as "Intel(R) Xeon(R) Processor") and falls back to the SSE3 Prescott kernels, 3x slower. Loading
// later lets us name the kernel family from the CPU's features first; a user's OPENBLAS_CORETYPE always wins.
struct Blas {
  decltype(&cblas_sgemm) sgemm = nullptr;
  decltype(&openblas_get_num_threads) get_num_threads = nullptr;
  decltype(&openblas_set_num_threads) set_num_threads = nullptr;
  decltype(&openblas_get_corename) corename = nullptr;
  // LAPACK's dsyev, which OpenBLAS carries (Fortran ABI: arguments by pointer, then the hidden lengths of the two
  // character arguments).
  using Dsyev = void (*)(const char* jobz, const char* uplo, const int* n, double* a, const int* lda, double* w,
                         double* work, const int* lwork, int* info, size_t jobz_len, size_t uplo_len);
  Dsyev dsyev = nullptr;
};

const char* kernel_family_for_this_cpu() {
#if defined(__x86_64__)
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
    return "SkylakeX";
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return "Haswell";
#endif
  return nullptr;  // let OpenBLAS decide
}

Blas load_blas() {
  if (std::getenv("OPENBLAS_CORETYPE") == nullptr)
    if (const char* family = kernel_family_for_this_cpu()) setenv("OPENBLAS_CORETYPE", family, 0);
  void* lib = nullptr;
  std::string tried;
  for (const char* name : {DL_OPENBLAS_LIBRARY, "libopenblas.so.0", "libopenblas.so"}) {
    if ((lib = dlopen(name, RTLD_NOW | RTLD_LOCAL)) != nullptr) break;
    tried += std::string(tried.empty() ? "" : ", ") + name;
  }
  DL_CHECK(lib != nullptr, "cannot load OpenBLAS (tried ", tried, "): install libopenblas0 (scripts/setup.sh)");
  Blas b;
  b.sgemm = reinterpret_cast<decltype(b.sgemm)>(dlsym(lib, "cblas_sgemm"));
  b.get_num_threads = reinterpret_cast<decltype(b.get_num_threads)>(dlsym(lib, "openblas_get_num_threads"));
  b.set_num_threads = reinterpret_cast<decltype(b.set_num_threads)>(dlsym(lib, "openblas_set_num_threads"));
  b.corename = reinterpret_cast<decltype(b.corename)>(dlsym(lib, "openblas_get_corename"));
  b.dsyev = reinterpret_cast<Blas::Dsyev>(dlsym(lib, "dsyev_"));  // optional: only symmetric_eigen needs it
  DL_CHECK(b.sgemm && b.get_num_threads && b.set_num_threads && b.corename,
           "the loaded BLAS library is not OpenBLAS (cblas_sgemm / openblas_* missing)");
  return b;
}

const Blas& blas() {
  static const Blas b = load_blas();
  return b;
}

// Our pool does the threading, so OpenBLAS must run single-threaded; re-asserted per call because other code in
// the process (a benchmark's peer measurement, a host application) may change the global setting.
void blas_single_threaded() {
  const Blas& b = blas();
  if (b.get_num_threads() != 1) b.set_num_threads(1);
}

float dot_f32(const float* a, const float* b, int64_t n) { return vec::dot(a, b, n); }
DL_SIMD_CLONES void bf16_row_to_f32(const uint16_t* src, float* dst, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    dst[i] = std::bit_cast<float>(uint32_t(src[i]) << 16);
  }
}

// Converts `rows` rows of `k` elements of a weight matrix of dtype dt, starting at row r0, into dst (F32).
void weight_rows_to_f32(DType dt, const void* w, int64_t r0, int64_t rows, int64_t k, float* dst) {
  size_t row_bytes = dtype_bytes(dt, k);
  const char* base = static_cast<const char*>(w) + size_t(r0) * row_bytes;
  for (int64_t r = 0; r < rows; ++r) {
    const void* src = base + size_t(r) * row_bytes;
    float* d = dst + r * k;
    if (dt == DType::BF16) {
      bf16_row_to_f32(static_cast<const uint16_t*>(src), d, k);
    } else if (quant::has_int_dot(dt)) {
      quant::dequantize_row(dt, src, d, k);
    } else {
      convert_to_f32(dt, src, d, k);
    }
  }
}

// Single-threaded sgemm on one panel (C row-major).
void sgemm_serial(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
                  const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  blas().sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, int(M), int(N), int(K),
              alpha, A, int(lda), B, int(ldb), beta, C, int(ldc));
}

// y[m, n] = alpha * dot(x[m, :], w[n, :]) + beta * y[m, n] for few rows m: memory bound on w.
void small_m_gemm_nt(int64_t M, int64_t N, int64_t K, float alpha, const float* x, int64_t ldx, const float* w,
                     int64_t ldw, float beta, float* y, int64_t ldy) {
  parallel_for(N, 64, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n)
      for (int64_t m = 0; m < M; ++m) {
        float d = alpha * dot_f32(x + m * ldx, w + n * ldw, K);
        y[m * ldy + n] = beta == 0.f ? d : d + beta * y[m * ldy + n];
      }
  });
}

// Checks a product's dimensions against the 32-bit BLAS interface and does the products that need no BLAS: none
// when M or N is 0, C = beta * C when K is 0. True when nothing is left to do.
bool gemm_is_trivial(int64_t M, int64_t N, int64_t K, float beta, float* C, int64_t ldc) {
  if (M <= 0 || N <= 0) return true;
  DL_CHECK(M < (int64_t(1) << 31) && N < (int64_t(1) << 31) && K < (int64_t(1) << 31),
           "gemm: dimensions ", M, "x", N, "x", K, " exceed the 32-bit BLAS interface");
  if (K > 0) return false;
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) C[m * ldc + n] = beta == 0.f ? 0.f : beta * C[m * ldc + n];
  return true;
}

}  // namespace

const char* blas_kernels() { return blas().corename(); }

void gemm_serial(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
                 const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  if (gemm_is_trivial(M, N, K, beta, C, ldc)) return;
  blas_single_threaded();
  sgemm_serial(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

void symmetric_eigen(int64_t n, const double* a, double* values, double* vectors) {
  DL_CHECK(n >= 1 && n <= 46340, "symmetric_eigen: matrix side ", n, " is outside [1, 46340]");
  const Blas& b = blas();
  DL_CHECK(b.dsyev != nullptr, "the loaded OpenBLAS has no LAPACK (dsyev_ missing)");
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < i; ++j)
      DL_CHECK(a[i * n + j] == a[j * n + i], "symmetric_eigen: the matrix is not symmetric at (", i, ", ", j, ")");
  // Column-major or row-major is the same symmetric matrix; on return column k (row k here) is eigenvector k.
  std::copy(a, a + n * n, vectors);
  const int N = int(n);
  int info = 0, lwork = -1;
  double query = 0;
  b.dsyev("V", "U", &N, vectors, &N, values, &query, &lwork, &info, 1, 1);
  DL_CHECK(info == 0, "dsyev workspace query failed (info ", info, ")");
  lwork = std::max(1, int(query));
  std::vector<double> work(static_cast<size_t>(lwork));
  b.dsyev("V", "U", &N, vectors, &N, values, work.data(), &lwork, &info, 1, 1);
  DL_CHECK(info == 0, info < 0 ? "dsyev: bad argument " : "dsyev did not converge: off-diagonal elements left ",
           info < 0 ? -info : info);
}

void gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
          const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  if (gemm_is_trivial(M, N, K, beta, C, ldc)) return;
  blas_single_threaded();
  if (M <= 4 && !ta && tb) return small_m_gemm_nt(M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
  double flops = 2.0 * double(M) * double(N) * double(K);
  if (flops < 2.0 * 64 * 64 * 64) return sgemm_serial(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
  // Split the larger output dimension into panels, a multiple of 16 wide. The split depends on the shape and the
  // machine's core count only, so any thread count (or a call nested in another parallel loop) makes the same
  // sgemm calls and the same bits.
  static const int64_t max_panels = std::max<int64_t>(8, 2 * int64_t(std::thread::hardware_concurrency()));
  const bool split_rows = M >= N;
  const int64_t extent = split_rows ? M : N;
  int64_t panels = std::clamp<int64_t>(extent / 64, 1, max_panels);
  int64_t width = (extent + panels - 1) / panels;
  width = (width + 15) / 16 * 16;
  panels = (extent + width - 1) / width;
  parallel_for(panels, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      int64_t s = p * width, e = std::min(extent, s + width);
      if (split_rows) {
        const float* a = ta ? A + s : A + s * lda;
        sgemm_serial(ta, tb, e - s, N, K, alpha, a, lda, B, ldb, beta, C + s * ldc, ldc);
      } else {
        const float* b = tb ? B + s * ldb : B + s;
        sgemm_serial(ta, tb, M, e - s, K, alpha, A, lda, b, ldb, beta, C + s, ldc);
      }
    }
  });
}

Tensor matmul(const Tensor& a, const Tensor& b, bool ta, bool tb) {
  DL_CHECK(a.dim() >= 2 && b.dim() >= 2, "matmul: operands need rank >= 2, got ", a.describe(), " and ",
           b.describe());
  DL_CHECK(a.dtype() == DType::F32 && b.dtype() == DType::F32, "matmul: F32 operands expected, got ",
           a.describe(), " and ", b.describe());
  const int64_t M = ta ? a.size(-1) : a.size(-2);
  const int64_t Ka = ta ? a.size(-2) : a.size(-1);
  const int64_t Kb = tb ? b.size(-1) : b.size(-2);
  const int64_t N = tb ? b.size(-2) : b.size(-1);
  DL_CHECK(Ka == Kb, "matmul: inner dimensions differ: ", a.describe(), (ta ? "^T" : ""), " @ ", b.describe(),
           (tb ? "^T" : ""));
  Shape a_batch(a.shape().begin(), a.shape().end() - 2), b_batch(b.shape().begin(), b.shape().end() - 2);
  Shape batch = broadcast_shapes(a_batch, b_batch, "matmul");
  Shape out_shape = batch;
  out_shape.push_back(M);
  out_shape.push_back(N);
  Tensor out = Tensor::uninitialized(out_shape);
  const int64_t nb = shape_numel(batch);
  if (nb == 0 || M == 0 || N == 0) return out;

  Tensor ac = a.contiguous(), bc = b.contiguous();
  // Batch offsets honour broadcasting: expanded dims contribute stride 0.
  auto batch_strides = [&](const Shape& own) {
    Shape full(batch.size(), 1);
    std::copy(own.begin(), own.end(), full.begin() + int64_t(batch.size() - own.size()));
    Shape st(batch.size(), 0);
    int64_t acc = 1;
    for (size_t i = batch.size(); i-- > 0;) {
      st[i] = full[i] == 1 ? 0 : acc;
      acc *= full[i];
    }
    return st;
  };
  Shape sa = batch_strides(a_batch), sb = batch_strides(b_batch);
  const int64_t a_mat = a.size(-1) * a.size(-2), b_mat = b.size(-1) * b.size(-2);
  const int64_t lda = a.size(-1), ldb = b.size(-1);
  auto run_batch = [&](int64_t i) {
    int64_t rem = i, ia = 0, ib = 0;
    for (size_t d = batch.size(); d-- > 0;) {
      int64_t idx = rem % batch[d];
      rem /= batch[d];
      ia += idx * sa[d];
      ib += idx * sb[d];
    }
    gemm(ta, tb, M, N, Ka, 1.f, ac.f32() + ia * a_mat, lda, bc.f32() + ib * b_mat, ldb, 0.f,
         out.f32() + i * M * N, N);
  };
  double per = 2.0 * double(M) * double(N) * double(Ka);
  if (nb >= num_threads() && per < 2.0 * 256 * 256 * 256) {
    parallel_for(nb, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t i = b0; i < b1; ++i) run_batch(i);
    });
  } else {
    for (int64_t i = 0; i < nb; ++i) run_batch(i);
  }
  return out;
}

Tensor linear(const Tensor& x, const Tensor& weight, const Tensor* bias) {
  DL_CHECK(weight.dim() == 2, "linear: weight must be 2-D, got ", weight.describe());
  DL_CHECK(x.dim() >= 1 && x.size(-1) == weight.size(1), "linear: input ", x.describe(),
           " does not match weight ", weight.describe());
  DL_CHECK(x.dtype() == DType::F32, "linear: input must be F32, got ", x.describe());
  DL_CHECK(dtype_info(weight.dtype()).is_float, "linear: weight dtype ", dtype_name(weight.dtype()),
           " is not a float type");
  const int64_t K = weight.size(1), N = weight.size(0);
  if (bias) {
    DL_CHECK(bias->dim() == 1 && bias->size(0) == N, "linear: bias ", bias->describe(), " does not match weight ",
             weight.describe());
  }
  Shape out_shape = x.shape();
  out_shape.back() = N;
  // With K = 0 nothing below writes the output: it stays zero.
  Tensor out = K > 0 ? Tensor::uninitialized(out_shape) : Tensor::zeros(out_shape);
  const int64_t R = x.numel() / std::max<int64_t>(K, 1);
  if (R == 0 || N == 0) return out;
  Tensor xc = x.contiguous();
  Tensor wc = weight.contiguous();
  const float* xp = xc.f32();
  float* yp = out.f32();
  if (wc.dtype() == DType::F32) {
    gemm(false, true, R, N, K, 1.f, xp, K, wc.f32(), K, 0.f, yp, N);
  } else {
    blas_single_threaded();
    const bool direct16 = R <= 4 && (wc.dtype() == DType::BF16 || wc.dtype() == DType::F16);
    if (R <= 4 && quant::has_int_dot(wc.dtype())) {
      // Decoding on block-quantized weights: each activation row is quantized to 8 bits once, then every weight
      // row is one integer dot product, reading the weights in their stored size. Rows are split over threads,
      // each output computed whole by one thread, so the thread count never changes a bit.
      const DType dt = wc.dtype();
      const size_t act_bytes = quant::act_row_bytes(dt, K), row_bytes = dtype_bytes(dt, K);
      std::vector<uint64_t> act((R * act_bytes + 7) / 8);  // 8-byte aligned for the blocks' floats
      auto* ab = reinterpret_cast<char*>(act.data());
      for (int64_t m = 0; m < R; ++m) quant::quantize_act_row(dt, xp + m * K, K, ab + m * act_bytes);
      const char* wb = static_cast<const char*>(wc.raw());
      parallel_for(N, 64, [&](int64_t n0, int64_t n1) {
        // A few rows at a time, so that a second activation row finds them in cache.
        for (int64_t t0 = n0; t0 < n1; t0 += 16) {
          const int64_t t1 = std::min(n1, t0 + 16);
          for (int64_t m = 0; m < R; ++m)
            quant::dot_rows(dt, wb + size_t(t0) * row_bytes, t1 - t0, K, ab + m * act_bytes, yp + m * N + t0);
        }
      });
    } else if (quant::has_multi_row(wc.dtype())) {
      // Prefill on weights with a multi-row integer kernel: all activation rows quantized once, then tiles of
      // 16 weight rows (kept in cache) against blocks of 64 activation rows, four at a time in registers.
      const DType dt = wc.dtype();
      const size_t act_bytes = quant::act_row_bytes(dt, K), row_bytes = dtype_bytes(dt, K);
      std::vector<uint64_t> act((size_t(R) * act_bytes + 7) / 8);
      auto* ab = reinterpret_cast<char*>(act.data());
      parallel_for(R, 4, [&](int64_t m0, int64_t m1) {
        for (int64_t m = m0; m < m1; ++m) quant::quantize_act_row(dt, xp + m * K, K, ab + m * act_bytes);
      });
      const char* wb = static_cast<const char*>(wc.raw());
      parallel_for(N, 16, [&](int64_t n0, int64_t n1) {
        for (int64_t t0 = n0; t0 < n1; t0 += 16) {
          const int64_t t1 = std::min(n1, t0 + 16);
          for (int64_t m0 = 0; m0 < R; m0 += 64)
            quant::dot_rows_multi(dt, wb + size_t(t0) * row_bytes, t1 - t0, K, ab + size_t(m0) * act_bytes, act_bytes,
                                  std::min<int64_t>(64, R - m0), yp + m0 * N + t0, N);
        }
      });
    } else if (direct16) {
      // Decoding: memory bound on the weights, so read each 16-bit row once and widen it inside the dot product.
      const auto* w16 = static_cast<const uint16_t*>(wc.raw());
      const bool bf16 = wc.dtype() == DType::BF16;
      parallel_for(N, 64, [&](int64_t n0, int64_t n1) {
        for (int64_t n = n0; n < n1; ++n)
          for (int64_t m = 0; m < R; ++m)
            yp[m * N + n] = bf16 ? vec::dot_bf16(xp + m * K, w16 + n * K, K) : vec::dot_f16(xp + m * K, w16 + n * K, K);
      });
    } else if (R >= 64) {
      // Many rows (a UNet or CLIP token map, a prefill): the weight is widened to F32 once and multiplied by the
      // panel-split gemm. Widening it panel by panel would let sgemm re-pack all R input rows for every 64-row panel
      // of the weight, which cost more than the conversion.
      Tensor w32 = Tensor::uninitialized({N, K});
      parallel_for(N, 16, [&](int64_t n0, int64_t n1) {
        weight_rows_to_f32(wc.dtype(), wc.raw(), n0, n1 - n0, K, w32.f32() + n0 * K);
      });
      gemm(false, true, R, N, K, 1.f, xp, K, w32.f32(), K, 0.f, yp, N);
    } else {
      // Convert panels of weight rows to F32 on the fly, each thread its own panel, then multiply.
      const int64_t panel = R <= 4 ? 16 : 64;
      const int64_t panels = (N + panel - 1) / panel;
      parallel_for(panels, 1, [&](int64_t p0, int64_t p1) {
        std::vector<float> buf(size_t(panel * K));
        for (int64_t p = p0; p < p1; ++p) {
          int64_t n0 = p * panel, n1 = std::min(N, n0 + panel);
          weight_rows_to_f32(wc.dtype(), wc.raw(), n0, n1 - n0, K, buf.data());
          if (R <= 4) {
            for (int64_t n = n0; n < n1; ++n)
              for (int64_t m = 0; m < R; ++m) yp[m * N + n] = dot_f32(xp + m * K, buf.data() + (n - n0) * K, K);
          } else {
            sgemm_serial(false, true, R, n1 - n0, K, 1.f, xp, K, buf.data(), K, 0.f, yp + n0, N);
          }
        }
      });
    }
  }
  if (bias) {
    Tensor bc = bias->to(DType::F32);
    const float* bp = bc.f32();
    parallel_for(R, 16, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r)
        for (int64_t n = 0; n < N; ++n) yp[r * N + n] += bp[n];
    });
  }
  return out;
}

Tensor linear_backward_input(const Tensor& gy, const Tensor& weight) {
  const int64_t K = weight.size(1), N = weight.size(0);
  DL_CHECK(gy.size(-1) == N, "linear backward: gradient ", gy.describe(), " does not match weight ",
           weight.describe());
  Tensor w = weight.to(DType::F32);
  Tensor g = gy.contiguous();
  Shape out_shape = gy.shape();
  out_shape.back() = K;
  Tensor gx = Tensor::uninitialized(out_shape);
  const int64_t R = g.numel() / std::max<int64_t>(N, 1);
  gemm(false, false, R, K, N, 1.f, g.f32(), N, w.f32(), K, 0.f, gx.f32(), K);
  return gx;
}

Tensor linear_backward_weight(const Tensor& gy, const Tensor& x) {
  const int64_t K = x.size(-1), N = gy.size(-1);
  Tensor g = gy.contiguous(), xc = x.contiguous();
  const int64_t R = g.numel() / std::max<int64_t>(N, 1);
  DL_CHECK(xc.numel() == R * K, "linear backward: input ", x.describe(), " does not match gradient ",
           gy.describe());
  Tensor gw = Tensor::uninitialized({N, K});
  gemm(true, false, N, K, R, 1.f, g.f32(), N, xc.f32(), K, 0.f, gw.f32(), K);
  return gw;
}

Tensor sum_rows(const Tensor& gy) {
  Tensor g = gy.contiguous();
  const int64_t N = g.size(-1);
  const int64_t R = g.numel() / std::max<int64_t>(N, 1);
  Tensor out = Tensor::zeros({N});
  const float* gp = g.f32();
  float* op = out.f32();
  parallel_for(N, 256, [&](int64_t n0, int64_t n1) {
    for (int64_t r = 0; r < R; ++r)
      for (int64_t n = n0; n < n1; ++n) op[n] += gp[r * N + n];
  });
  return out;
}

}  // namespace dl::ops
