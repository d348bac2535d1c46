// Block-quantized weight formats (Q8_0, Q4_0, Q4_K, Q6_K) against the numpy reference of ggml's formulas
// (tools/fixtures/make_quant_fixtures.py), and the integer dot-product kernels against a double-precision
// reference at every dispatch level this CPU has.
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/kernels/quant_dot.h"
#include "core/ops.h"
#include "core/thread_pool.h"
#include "io/gguf.h"
#include "test_util.h"

namespace dl {
namespace {

const io::SafetensorsFile& quant_fixtures() {
  static const io::SafetensorsFile f = io::read_safetensors(std::string(DL_FIXTURE_DIR) + "/quant_blocks.safetensors");
  return f;
}
Tensor qfx(const std::string& name) {
  const auto& t = quant_fixtures().tensors;
  auto it = t.find(name);
  if (it == t.end()) throw Error("quant fixture has no tensor " + name);
  return it->second;
}

// A [rows, k] tensor of type dt holding the raw block bytes of a U8 [rows, row_bytes] tensor.
Tensor from_bytes(const Tensor& bytes, DType dt, int64_t k) {
  Tensor t = Tensor::empty({bytes.size(0), k}, dt);
  EXPECT_EQ(t.nbytes(), size_t(bytes.numel()));
  std::memcpy(t.raw(), bytes.raw(), t.nbytes());
  return t;
}

std::vector<quant::Isa> levels() {
  std::vector<quant::Isa> v{quant::Isa::Scalar};
  // Every level this CPU runs (AVX-512 VNNI CPUs may lack the VEX-encoded AVX-VNNI, and the reverse).
  for (quant::Isa level : {quant::Isa::Avx2, quant::Isa::AvxVnni, quant::Isa::Avx512Vnni})
    if (quant::isa_supported(level)) v.push_back(level);
  return v;
}

// Restores the process's dispatch level when a test ends, failed or not.
struct IsaGuard {
  quant::Isa saved = quant::isa();
  ~IsaGuard() { quant::set_isa(saved); }
};

const std::pair<const char*, DType> kTypes[] = {
    {"q8_0", DType::Q8_0}, {"q4_0", DType::Q4_0}, {"q4_k", DType::Q4_K}, {"q6_k", DType::Q6_K}};

TEST(QuantFormats, DequantizationMatchesNumpyReferenceBitForBit) {
  IsaGuard guard;
  for (const auto& [name, dt] : kTypes) {
    SCOPED_TRACE(name);
    const Tensor expected = qfx(std::string(name) + "/values");
    const int64_t k = expected.size(1);
    const Tensor q = from_bytes(qfx(std::string(name) + "/bytes"), dt, k);
    EXPECT_TRUE(test::bit_equal(q.to(DType::F32), expected));
    // The vectorised dequantizers that feed prefill panels round every value the same way.
    for (quant::Isa level : levels()) {
      SCOPED_TRACE(quant::isa_name(level));
      quant::set_isa(level);
      Tensor got = Tensor::empty(expected.shape());
      for (int64_t r = 0; r < q.size(0); ++r)
        quant::dequantize_row(dt, static_cast<const char*>(q.raw()) + r * dtype_bytes(dt, k), got.f32() + r * k, k);
      EXPECT_TRUE(test::bit_equal(got, expected));
    }
  }
}

TEST(QuantFormats, Q8_0AndQ4_0QuantizationMatchNumpyReferenceBytes) {
  for (const auto& [name, dt] : {std::pair{"q8_0", DType::Q8_0}, std::pair{"q4_0", DType::Q4_0}}) {
    SCOPED_TRACE(name);
    const Tensor x = qfx(std::string(name) + "/input"), expected = qfx(std::string(name) + "/quant");
    const Tensor q = x.to(dt);
    ASSERT_EQ(q.nbytes(), size_t(expected.numel()));
    const auto* got = static_cast<const uint8_t*>(q.raw());
    const auto* want = static_cast<const uint8_t*>(expected.raw());
    for (size_t i = 0; i < q.nbytes(); ++i) ASSERT_EQ(int(got[i]), int(want[i])) << "byte " << i;
  }
}

// Bytes and values written by ggml itself (libggml-base.so of the llama.cpp peer, through
// tools/fixtures/make_ggml_quant_fixture.py): our quantizers must produce ggml's bytes, our dequantizers its floats.
TEST(QuantFormats, QuantizersWriteGgmlsBytesAndDequantizersItsValues) {
  static const io::SafetensorsFile f =
      io::read_safetensors(std::string(DL_FIXTURE_DIR) + "/quant_ggml.safetensors");
  IsaGuard guard;
  for (const auto& [name, dt] : kTypes) {
    SCOPED_TRACE(name);
    const Tensor x = f.tensors.at(std::string(name) + "/input");
    const Tensor want = f.tensors.at(std::string(name) + "/bytes");
    const Tensor values = f.tensors.at(std::string(name) + "/values");
    const Tensor q = x.to(dt);
    ASSERT_EQ(q.nbytes(), size_t(want.numel()));
    const auto* got = static_cast<const uint8_t*>(q.raw());
    const auto* exp = static_cast<const uint8_t*>(want.raw());
    const size_t row_bytes = dtype_bytes(dt, x.size(1));
    size_t first = q.nbytes(), count = 0;
    for (size_t i = 0; i < q.nbytes(); ++i)
      if (got[i] != exp[i]) {
        first = std::min(first, i);
        ++count;
      }
    EXPECT_EQ(count, 0u) << "first differing byte " << first << " (row " << first / row_bytes << ", byte "
                         << first % row_bytes << ")";
    const Tensor ours = from_bytes(want, dt, x.size(1)).to(DType::F32);
    EXPECT_TRUE(test::bit_equal(ours, values));
    for (quant::Isa level : levels()) {
      quant::set_isa(level);
      Tensor fast = Tensor::empty(values.shape());
      for (int64_t r = 0; r < x.size(0); ++r)
        quant::dequantize_row(dt, exp + r * row_bytes, fast.f32() + r * x.size(1), x.size(1));
      EXPECT_TRUE(test::bit_equal(fast, values)) << quant::isa_name(level);
    }
  }
}

double rms(const std::vector<float>& a, const std::vector<float>& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += double(a[i] - b[i]) * double(a[i] - b[i]);
  return std::sqrt(s / double(a.size()));
}

TEST(QuantFormats, KQuantErrorBoundsAndStableRoundTrips) {
  // Gaussian rows of unit variance at a model's width. rms error / rms value measured here: Q4_K 0.0716,
  // Q6_K 0.0179, Q8_0 0.0054, Q4_0 0.0863; the bounds leave about 20% on top.
  const Tensor x = test::randn({16, 4096}, 99);
  const std::vector<float> xv = x.to_vector();
  for (const auto& [dt, bound] : {std::pair{DType::Q4_K, 0.086}, std::pair{DType::Q6_K, 0.0215},
                                  std::pair{DType::Q8_0, 0.0065}, std::pair{DType::Q4_0, 0.104}}) {
    SCOPED_TRACE(dtype_name(dt));
    const Tensor x1 = x.to(dt).to(DType::F32);
    const double err = rms(x1.to_vector(), xv);
    EXPECT_LT(err, bound);
    EXPECT_GT(err, bound / 20);  // a format that stored F32 by mistake would pass the upper bound alone
    // Values that are already on the grid come back unchanged: a second quantization is the identity, so
    // converting a converted model again loses nothing (equal values; a zero code may flip the sign of 0).
    EXPECT_TRUE(x1.to(dt).to(DType::F32).to_vector() == x1.to_vector());
  }
}

TEST(QuantFormats, KQuantTensorsSliceConvertAndRefuseRaggedRows) {
  const Tensor x = test::randn({3, 512}, 5);
  for (DType dt : {DType::Q4_K, DType::Q6_K}) {
    SCOPED_TRACE(dtype_name(dt));
    const Tensor q = x.to(dt);
    EXPECT_EQ(q.nbytes(), size_t(3 * 2) * dtype_info(dt).block_bytes);
    EXPECT_EQ(parse_dtype(dtype_name(dt)), dt);
    // Row 1 of the quantized tensor is the quantization of row 1 alone.
    const Tensor row = q.slice(0, 1, 2);
    const Tensor alone = x.slice(0, 1, 2).contiguous().to(dt);
    ASSERT_EQ(row.nbytes(), alone.nbytes());
    EXPECT_EQ(std::memcmp(row.contiguous().raw(), alone.raw(), row.nbytes()), 0);
    EXPECT_THROW((void)q.slice(1, 0, 256), Error);
    EXPECT_NE(test::error_of([&] { (void)test::randn({2, 300}, 1).to(dt); }).find("256"), std::string::npos);
    // Q8_0 -> Q4_K goes through F32 row by row.
    const Tensor via = x.to(DType::Q8_0).to(dt).to(DType::F32);
    EXPECT_LT(rms(via.to_vector(), x.to_vector()), 0.12);
  }
}

TEST(QuantFormats, GgufTypeIdsAndFileRoundTrip) {
  EXPECT_EQ(io::dtype_from_ggml_type(12), DType::Q4_K);
  EXPECT_EQ(io::dtype_from_ggml_type(14), DType::Q6_K);
  EXPECT_EQ(io::ggml_type_from_dtype(DType::Q4_K), 12u);
  EXPECT_EQ(io::ggml_type_from_dtype(DType::Q6_K), 14u);
  EXPECT_FALSE(io::dtype_from_ggml_type(13).has_value());  // Q5_K is not supported
  const std::string path = "/tmp/dl_test_quant_" + std::to_string(getpid()) + ".gguf";
  const Tensor x = test::randn({2, 768}, 3);
  const Tensor a = x.to(DType::Q4_K), b = x.to(DType::Q6_K);
  io::write_gguf(path, {}, {{"a", a}, {"b", b}});
  const io::GgufFile f = io::read_gguf(path);
  for (const auto& [name, t] : {std::pair{"a", a}, std::pair{"b", b}}) {
    const Tensor& back = f.tensors.at(name);
    EXPECT_EQ(back.dtype(), t.dtype());
    EXPECT_EQ(back.shape(), t.shape());
    EXPECT_EQ(std::memcmp(back.raw(), t.raw(), t.nbytes()), 0);
  }
  std::remove(path.c_str());
}

// Random weight rows straight from random bytes (every code, every scale byte), with finite f16 scales.
Tensor random_weight_bytes(DType dt, int64_t rows, int64_t k, uint64_t seed) {
  std::mt19937_64 gen(seed);
  Tensor w = Tensor::empty({rows, k}, dt);
  auto* p = static_cast<uint8_t*>(w.raw());
  for (size_t i = 0; i < w.nbytes(); ++i) p[i] = uint8_t(gen());
  std::normal_distribution<float> nd(0.f, 0.01f);
  const size_t bb = dtype_info(dt).block_bytes;
  for (size_t b = 0; b < w.nbytes() / bb; ++b) {
    uint8_t* blk = p + b * bb;
    auto put = [&](size_t off) {
      const uint16_t h = f32_to_f16(nd(gen));
      std::memcpy(blk + off, &h, 2);
    };
    if (dt == DType::Q6_K) {
      put(208);
    } else {
      put(0);
      if (dt == DType::Q4_K) put(2);
    }
  }
  return w;
}

TEST(QuantKernels, DotMatchesDoubleReferenceAtEveryLevel) {
  IsaGuard guard;
  std::mt19937_64 gen(11);
  for (const auto& [name, dt] : kTypes) {
    const bool kq = dt == DType::Q4_K || dt == DType::Q6_K;
    const std::vector<int64_t> widths = kq ? std::vector<int64_t>{256, 768, 4864} : std::vector<int64_t>{32, 96, 4128};
    for (int64_t k : widths) {
      SCOPED_TRACE(std::string(name) + " k=" + std::to_string(k));
      const int64_t rows = 7;
      const Tensor w = random_weight_bytes(dt, rows, k, gen());
      const std::vector<float> wf = w.to(DType::F32).to_vector();
      // Activations with outliers, as real hidden states have; one at +-max makes a full-range code.
      Tensor x = test::randn({k}, gen(), 2.f);
      x.f32()[k / 3] = 40.f;
      x.f32()[k - 1] = -40.f;
      std::vector<char> act(quant::act_row_bytes(dt, k) + 8);
      quant::quantize_act_row(dt, x.f32(), k, act.data());
      std::vector<float> av(static_cast<size_t>(k));
      quant::dequantize_act_row(dt, act.data(), k, av.data());
      for (quant::Isa level : levels()) {
        SCOPED_TRACE(quant::isa_name(level));
        quant::set_isa(level);
        std::vector<float> out(static_cast<size_t>(rows));
        quant::dot_rows(dt, w.raw(), rows, k, act.data(), out.data());
        // The same rows through the multi-row entry (five copies of the activation row: one group of four and a
        // single row) must meet the same bound.
        std::vector<float> multi(static_cast<size_t>(5 * rows));
        quant::dot_rows_multi(dt, w.raw(), rows, k, act.data(), 0, 5, multi.data(), rows);
        for (int64_t r = 0; r < rows; ++r) {
          double ref = 0, mag = 0;
          for (int64_t i = 0; i < k; ++i) {
            ref += double(wf[size_t(r * k + i)]) * double(av[size_t(i)]);
            mag += std::fabs(double(wf[size_t(r * k + i)]) * double(av[size_t(i)]));
          }
          // Integer sums are exact; only the per-block float products and their sum round: a few float ulps of
          // the sum of magnitudes.
          EXPECT_NEAR(out[size_t(r)], ref, 1e-6 * mag + 1e-30) << "row " << r;
          for (int64_t m = 0; m < 5; ++m) EXPECT_NEAR(multi[size_t(m * rows + r)], ref, 1e-6 * mag + 1e-30) << m;
        }
      }
    }
  }
}

TEST(QuantKernels, LinearWithinActivationQuantizationErrorOfDequantizedProduct) {
  // Decode rows (R <= 4) quantize the activations to 8 bits per block: element i moves by at most half a step,
  // amax(block of i) / 254. So |linear(x, Wq) - linear(x, dequant(Wq))|_n <= sum_i |W_ni| * amax(block i) / 254,
  // plus float rounding of both sides (1e-5 of sum_i |W_ni x_i|). Prefill rows (R > 4) multiply dequantized panels:
  // the dequantized product to float rounding.
  IsaGuard guard;
  const int64_t N = 150, K = 1024;
  const Tensor wf32 = test::randn({N, K}, 21, 0.05f);
  for (const auto& [name, dt] : kTypes) {
    const Tensor wq = wf32.to(dt), wd = wq.to(DType::F32);
    const int64_t blk = (dt == DType::Q4_K || dt == DType::Q6_K) ? 256 : 32;
    for (int64_t R : {1, 3, 4, 9, 70}) {
      SCOPED_TRACE(std::string(name) + " R=" + std::to_string(R));
      const Tensor x = test::randn({R, K}, 100 + uint64_t(R));
      for (quant::Isa level : levels()) {
        SCOPED_TRACE(quant::isa_name(level));
        quant::set_isa(level);
        const Tensor y = ops::linear(x, wq), yd = ops::linear(x, wd);
        const float* xp = x.f32();
        const float* wp = wd.f32();
        for (int64_t m = 0; m < R; ++m) {
          std::vector<float> amax(size_t(K / blk), 0.f);
          for (int64_t i = 0; i < K; ++i)
            amax[size_t(i / blk)] = std::max(amax[size_t(i / blk)], std::fabs(xp[m * K + i]));
          for (int64_t n = 0; n < N; ++n) {
            double bound = 0, mag = 0;
            for (int64_t i = 0; i < K; ++i) {
              bound += std::fabs(double(wp[n * K + i])) * amax[size_t(i / blk)] / 254.0;
              mag += std::fabs(double(wp[n * K + i]) * xp[m * K + i]);
            }
            // Prefill through dequantized panels is exact up to float rounding; the multi-row integer kernels
            // (AVX2 and VNNI levels) quantize activations as decoding does.
            const bool int_rows = R <= 4 || quant::has_multi_row(dt);
            const double tol = (int_rows ? bound : 0.0) + 1e-5 * mag;
            ASSERT_NEAR(y.f32()[m * N + n], yd.f32()[m * N + n], tol) << "row " << m << " col " << n;
          }
        }
      }
    }
  }
}

TEST(QuantKernels, NonFiniteActivationsStayNonFinite) {
  // A NaN in the input must not be laundered into finite outputs by the 8-bit rounding of activations.
  const Tensor w = test::randn({40, 512}, 4, 0.05f);
  for (DType dt : {DType::Q8_0, DType::Q4_0, DType::Q4_K, DType::Q6_K}) {
    SCOPED_TRACE(dtype_name(dt));
    const Tensor wq = w.to(dt);
    for (int64_t R : {1, 6}) {
      Tensor x = test::randn({R, 512}, 5);
      x.f32()[(R - 1) * 512 + 300] = NAN;
      const Tensor y = ops::linear(x, wq);
      for (int64_t n = 0; n < 40; ++n) {
        EXPECT_TRUE(std::isnan(y.f32()[(R - 1) * 40 + n])) << "R " << R << " col " << n;
        if (R > 1) {
          EXPECT_TRUE(std::isfinite(y.f32()[n])) << "R " << R << " col " << n;
        }
      }
    }
  }
}

TEST(QuantKernels, LinearIndependentOfThreadCount) {
  const Tensor x = test::randn({2, 2048}, 8);
  const Tensor w = test::randn({333, 2048}, 9, 0.05f);
  const int saved = num_threads();
  for (DType dt : {DType::Q8_0, DType::Q4_0, DType::Q4_K, DType::Q6_K}) {
    SCOPED_TRACE(dtype_name(dt));
    const Tensor wq = w.to(dt);
    set_num_threads(1);
    // Quantizing spreads blocks over the pool: the bytes must not depend on it.
    EXPECT_EQ(std::memcmp(w.to(dt).raw(), wq.raw(), wq.nbytes()), 0);
    const Tensor one = ops::linear(x, wq);
    set_num_threads(2);
    const Tensor two = ops::linear(x, wq);
    set_num_threads(3);
    const Tensor three = ops::linear(x, wq);
    EXPECT_TRUE(test::bit_equal(one, two));
    EXPECT_TRUE(test::bit_equal(one, three));
  }
  set_num_threads(saved);
}

}  // namespace
}  // namespace dl
