// Tensor core: views, dtype conversion against PyTorch's rounding, block quantisation, storage, thread pool,
// and the error messages of bad shapes.
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <bit>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/kernels/vec.h"
#include "core/ops.h"
#include "core/thread_pool.h"
#include "test_util.h"

namespace dl {
namespace {

using test::fx;

Tensor iota(const Shape& s) {
  Tensor t = Tensor::empty(s);
  for (int64_t i = 0; i < t.numel(); ++i) t.f32()[i] = float(i);
  return t;
}

// Both allocators refuse absurd sizes by name before asking the system; the zeroing one clears the whole 64-byte
// block, padding included, and a zero-byte request still gets a block.
TEST(Storage, AllocationsAreBoundedAndZeroedWhenAsked) {
  for (auto* allocate : {&Storage::allocate, &Storage::allocate_uninitialized})
    EXPECT_NE(test::error_of([&] { allocate(size_t(1) << 50); }).find("larger than the 64 TiB limit"),
              std::string::npos);
  const auto s = Storage::allocate(5);
  EXPECT_EQ(s->size(), 5u);
  const auto* bytes = static_cast<const unsigned char*>(s->data());
  for (int i = 0; i < 64; ++i) EXPECT_EQ(bytes[i], 0) << i;
  EXPECT_NE(Storage::allocate_uninitialized(0)->data(), nullptr);
  EXPECT_EQ(Tensor::uninitialized({3, 4}).shape(), Shape({3, 4}));
}

TEST(Tensor, ContiguousBasics) {
  Tensor t = iota({2, 3, 4});
  EXPECT_EQ(t.numel(), 24);
  EXPECT_EQ(t.strides(), Shape({12, 4, 1}));
  EXPECT_TRUE(t.is_contiguous());
  EXPECT_EQ(t.at({1, 2, 3}), 23.f);
  EXPECT_EQ(t.describe(), "F32[2, 3, 4]");
}

TEST(Tensor, ViewsShareStorage) {
  Tensor t = iota({2, 3, 4});
  Tensor tr = t.transpose(0, 2);  // [4, 3, 2]
  EXPECT_EQ(tr.storage(), t.storage());
  EXPECT_FALSE(tr.is_contiguous());
  EXPECT_EQ(tr.at({3, 1, 0}), t.at({0, 1, 3}));
  Tensor p = t.permute({1, 2, 0});  // [3, 4, 2]
  EXPECT_EQ(p.at({2, 1, 1}), t.at({1, 2, 1}));
  Tensor s = t.slice(1, 1, 3);  // [2, 2, 4]
  EXPECT_EQ(s.storage(), t.storage());
  EXPECT_EQ(s.at({1, 0, 2}), t.at({1, 1, 2}));
  Tensor r = t.reshape({6, 4});  // contiguous: a view
  EXPECT_EQ(r.storage(), t.storage());
  Tensor rc = tr.reshape({24});  // non-contiguous: a copy, in row-major order of the view
  EXPECT_NE(rc.storage(), t.storage());
  EXPECT_EQ(rc.at({1}), tr.at({0, 0, 1}));
  Tensor sel = t.select(2, 3);  // [2, 3]
  EXPECT_EQ(sel.at({1, 2}), 23.f);
  Tensor u = sel.unsqueeze(0).squeeze(0);
  EXPECT_EQ(u.shape(), sel.shape());
  // Writing through a view changes the base.
  Tensor v = t.slice(0, 1, 2);
  v.fill(-1.f);
  EXPECT_EQ(t.at({1, 0, 0}), -1.f);
  EXPECT_EQ(t.at({0, 0, 0}), 0.f);
}

TEST(Tensor, HostileStridesCannotWrapTheBoundsCheck) {
  auto st = Storage::allocate(16);
  const int64_t big = (int64_t(1) << 62) - (int64_t(1) << 40);
  EXPECT_THROW(Tensor(st, 0, DType::F32, {2, 2}, {big, (int64_t(1) << 40) + 2}), Error);
  EXPECT_THROW(Tensor(st, 0, DType::F32, {2}, {INT64_MAX}), Error);
  EXPECT_THROW(Tensor(st, 20, DType::F32, {0}, {1}), Error);  // offset past the end
  EXPECT_NO_THROW(Tensor(st, 0, DType::F32, {2, 2}, {2, 1}));
}

TEST(Tensor, ExpandAndContiguousCopy) {
  Tensor b = Tensor::from_vector({1, 2, 3}, {3, 1});
  Tensor e = b.expand({2, 3, 4});
  EXPECT_EQ(e.strides(), Shape({0, 1, 0}));
  Tensor c = e.contiguous();
  EXPECT_EQ(c.at({1, 2, 3}), 3.f);
  EXPECT_EQ(c.at({0, 0, 1}), 1.f);
}

// Strided copies merge dimensions and split rows across threads: every element must land where at() says, for
// permuted, sliced and broadcast sources, strided destinations, both element sizes, large copies (threaded) and
// copies between overlapping views of one storage.
TEST(Tensor, StridedCopiesPutEveryElementWhereIndexingSays) {
  auto expect_same = [](const Tensor& got, const Tensor& want) {
    ASSERT_EQ(got.shape(), want.shape());
    std::vector<float> g = got.to_vector(), w = want.to_vector();
    for (size_t i = 0; i < g.size(); ++i) ASSERT_EQ(g[i], w[i]) << "element " << i;
  };
  auto by_index = [](const Tensor& src) {  // element by element through at(), the reference
    Tensor out = Tensor::empty(src.shape());
    Shape idx(src.shape().size(), 0);
    for (int64_t i = 0; i < src.numel(); ++i) {
      int64_t rest = i;
      for (size_t d = idx.size(); d-- > 0;) {
        idx[d] = rest % src.shape()[d];
        rest /= src.shape()[d];
      }
      out.f32()[i] = src.at(idx);
    }
    return out;
  };
  for (int64_t big : {1, 40}) {  // 40: about 400k elements, enough to be split across the pool
    SCOPED_TRACE("big " + std::to_string(big));
    Tensor t = iota({3 * big, 5, 7, 4});
    expect_same(t.permute({2, 0, 3, 1}).contiguous(), by_index(t.permute({2, 0, 3, 1})));
    SCOPED_TRACE("slices");
    expect_same(t.transpose(1, 2).slice(3, 1, 3).contiguous(), by_index(t.transpose(1, 2).slice(3, 1, 3)));
    expect_same(t.slice(2, 2, 6).contiguous(), by_index(t.slice(2, 2, 6)));
    SCOPED_TRACE("broadcast");
    Tensor row = Tensor::from_vector({1, 2, 3, 4}, {1, 1, 1, 4});
    expect_same(row.expand({3 * big, 5, 7, 4}).contiguous(), by_index(row.expand({3 * big, 5, 7, 4})));
    SCOPED_TRACE("strided destination");
    Tensor dst = Tensor::zeros({7, 3 * big, 4, 5});
    dst.permute({1, 3, 0, 2}).copy_from(t);
    expect_same(dst.permute({1, 3, 0, 2}), t);
    SCOPED_TRACE("two bytes per element");
    Tensor h = t.to(DType::F16);
    expect_same(h.permute({3, 2, 1, 0}).contiguous().to(DType::F32), by_index(h.permute({3, 2, 1, 0})));
  }
  // Overlapping views of one storage: a shift by one along the last axis, as if through a copy first.
  Tensor a = iota({4, 6});
  Tensor want = by_index(a.slice(1, 0, 5));
  a.slice(1, 1, 6).copy_from(a.slice(1, 0, 5));
  expect_same(a.slice(1, 1, 6).contiguous(), want);
}

TEST(Tensor, ViewErrorsNameShapes) {
  Tensor t = iota({2, 3});
  try {
    (void)t.view({4, 2});
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("[4, 2]"), std::string::npos) << e.what();
  }
  EXPECT_THROW((void)t.transpose(0, 1).view({6}), Error);  // non-contiguous
  EXPECT_THROW((void)t.slice(1, 2, 5), Error);
  EXPECT_THROW((void)t.permute({0, 0}), Error);
  EXPECT_THROW((void)t.at({2, 0}), Error);
  EXPECT_THROW((void)Tensor::empty({-1, 3}), Error);
}

TEST(Tensor, OpErrorsNameOpAndShapes) {
  Tensor a = iota({2, 3}), b = iota({4, 5});
  auto message = [](auto&& fn) {
    try {
      fn();
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  std::string m = message([&] { (void)ops::matmul(a, b); });
  EXPECT_NE(m.find("matmul"), std::string::npos) << m;
  EXPECT_NE(m.find("[2, 3]"), std::string::npos) << m;
  EXPECT_NE(m.find("[4, 5]"), std::string::npos) << m;
  m = message([&] { (void)ops::add(a, b); });
  EXPECT_NE(m.find("add"), std::string::npos) << m;
  EXPECT_NE(m.find("[4, 5]"), std::string::npos) << m;
  m = message([&] { (void)ops::linear(a, b); });
  EXPECT_NE(m.find("linear"), std::string::npos) << m;
  m = message([&] { (void)ops::conv2d(iota({1, 3, 4, 4}), iota({2, 4, 3, 3}), nullptr, 1, 1); });
  EXPECT_NE(m.find("conv2d"), std::string::npos) << m;
  m = message([&] { (void)ops::group_norm(iota({1, 6, 2, 2}), 4, nullptr, nullptr, 1e-5f); });
  EXPECT_NE(m.find("group_norm"), std::string::npos) << m;
  m = message([&] { (void)ops::attention(iota({1, 3, 4, 8}), iota({1, 2, 4, 8}), iota({1, 2, 4, 8}), {}); });
  EXPECT_NE(m.find("attention"), std::string::npos) << m;
  m = message([&] { (void)ops::matmul(a.to(DType::I32), a.transpose(0, 1)); });
  EXPECT_NE(m.find("I32"), std::string::npos) << m;
  EXPECT_THROW((void)ops::embedding(iota({4, 2}), Tensor::from_vector_i64({0, 4}, {2})), Error);
  EXPECT_THROW((void)ops::cross_entropy(iota({2, 3}), Tensor::from_vector_i64({0, 3}, {2})), Error);
}

TEST(DType, F16AndBF16RoundLikePyTorch) {
  Tensor f32 = fx("convert", "f32");
  Tensor f16 = fx("convert", "f16"), bf16 = fx("convert", "bf16");
  ASSERT_EQ(f16.dtype(), DType::F16);
  ASSERT_EQ(bf16.dtype(), DType::BF16);
  Tensor ours16 = f32.to(DType::F16), oursbf = f32.to(DType::BF16);
  const auto* a = static_cast<const uint16_t*>(ours16.raw());
  const auto* b = static_cast<const uint16_t*>(f16.raw());
  const auto* c = static_cast<const uint16_t*>(oursbf.raw());
  const auto* d = static_cast<const uint16_t*>(bf16.raw());
  for (int64_t i = 0; i < f32.numel(); ++i) {
    EXPECT_EQ(a[i], b[i]) << "f16 of " << f32.f32()[i];
    EXPECT_EQ(c[i], d[i]) << "bf16 of " << f32.f32()[i];
  }
  // And back: widening is exact.
  EXPECT_TRUE(test::bit_equal(f16.to(DType::F32), ours16.to(DType::F32)));
}

TEST(DType, F16RoundTripAllFiniteValues) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    float f = f16_to_f32(uint16_t(h));
    if (std::isnan(f)) continue;
    ASSERT_EQ(f32_to_f16(f), h) << "half bits " << h;
  }
}

// The vector widening (F16C) that weights of half-precision models go through on every call, the scalar
// reference, and the tensor conversions built on it agree on every half (NaN stays NaN).
TEST(DType, F16WideningAgreesWithTheScalarConversionOnEveryHalf) {
  std::vector<uint16_t> halves(0x10000 + 5);  // a tail after the last full vector of eight
  for (size_t i = 0; i < halves.size(); ++i) halves[i] = uint16_t(i * 40503u);  // odd multiplier: every value
  std::vector<float> wide(halves.size());
  f16_row_to_f32(halves.data(), wide.data(), int64_t(halves.size()));
  Tensor t = Tensor::empty({int64_t(halves.size())}, DType::F16);
  std::memcpy(t.raw(), halves.data(), halves.size() * 2);
  const Tensor through_tensor = t.to(DType::F32);
  // A strided view goes through the general gather path.
  const Tensor pairs = t.slice(0, 0, 0x10000).reshape({0x8000, 2}).transpose(0, 1).to(DType::F32);
  for (size_t i = 0; i < halves.size(); ++i) {
    const float expected = f16_to_f32(halves[i]);
    const float via_tensor = through_tensor.f32()[i];
    if (std::isnan(expected)) {
      ASSERT_TRUE(std::isnan(wide[i]) && std::isnan(via_tensor)) << "half bits " << halves[i];
      continue;
    }
    ASSERT_EQ(std::bit_cast<uint32_t>(wide[i]), std::bit_cast<uint32_t>(expected)) << "half bits " << halves[i];
    ASSERT_EQ(std::bit_cast<uint32_t>(via_tensor), std::bit_cast<uint32_t>(expected)) << "half bits " << halves[i];
    if (i < 0x10000) {
      ASSERT_EQ(std::bit_cast<uint32_t>(pairs.at({int64_t(i % 2), int64_t(i / 2)})), std::bit_cast<uint32_t>(expected));
    }
  }
  // Narrowing a contiguous F32 tensor is the scalar rounding too.
  const Tensor back = through_tensor.to(DType::F16);
  for (size_t i = 0; i < halves.size(); ++i) {
    if (!std::isnan(through_tensor.f32()[i])) {
      ASSERT_EQ(static_cast<const uint16_t*>(back.raw())[i], halves[i]) << "half bits " << halves[i];
    }
  }
}

TEST(DType, QuantizedBlocks) {
  Tensor w = test::randn({4, 64}, 7);
  for (DType q : {DType::Q8_0, DType::Q4_0}) {
    Tensor wq = w.to(q);
    EXPECT_EQ(wq.nbytes(), size_t(4 * 2) * dtype_info(q).block_bytes);
    auto back = wq.to(DType::F32).to_vector();
    auto orig = w.to_vector();
    // Error bound per block: half a quantisation step of the block's scale.
    for (int64_t b = 0; b < 8; ++b) {
      float amax = 0;
      for (int i = 0; i < 32; ++i) amax = std::max(amax, std::fabs(orig[size_t(b * 32 + i)]));
      // Q4_0 maps the signed extreme to -8, so the opposite side may clamp at +7: a full step of error.
      const float bound = q == DType::Q8_0 ? 0.5f * amax / 127.f : amax / 8.f;
      for (int i = 0; i < 32; ++i)
        EXPECT_LE(std::fabs(back[size_t(b * 32 + i)] - orig[size_t(b * 32 + i)]), bound + 1e-3f * amax);
    }
  }
  EXPECT_THROW((void)Tensor::empty({3, 40}, DType::Q8_0), Error);  // not whole blocks
  EXPECT_THROW((void)w.to(DType::Q4_0).transpose(0, 1), Error);
}

TEST(DType, ParseNames) {
  EXPECT_EQ(parse_dtype("bf16"), DType::BF16);
  EXPECT_EQ(parse_dtype("Q8_0"), DType::Q8_0);
  EXPECT_THROW(parse_dtype("F8"), Error);
}

TEST(Storage, MappedFileIsZeroCopyAndReadOnly) {
  char path[] = "/tmp/dl_storage_XXXXXX";
  int fd = mkstemp(path);
  ASSERT_GE(fd, 0);
  std::vector<float> data{1.5f, -2.f, 3.25f, 4.f};
  ASSERT_EQ(write(fd, data.data(), 16), 16);
  close(fd);
  auto st = Storage::map_file(path);
  EXPECT_TRUE(st->is_mapped());
  Tensor t(st, 4, DType::F32, {3}, {1});
  EXPECT_EQ(t.raw(), static_cast<char*>(st->data()) + 4);
  EXPECT_EQ(t.to_vector(), std::vector<float>({-2.f, 3.25f, 4.f}));
  EXPECT_THROW(t.fill(0.f), Error);
  EXPECT_THROW(Tensor(st, 8, DType::F32, {3}, {1}), Error);  // runs past the end
  std::remove(path);
  EXPECT_THROW(Storage::map_file("/nonexistent/file.bin"), Error);
  EXPECT_THROW(Storage::map_file("/tmp"), Error);
}

// VmHWM (peak resident set) of this process in bytes.
size_t peak_resident_bytes() {
  std::ifstream status("/proc/self/status");
  for (std::string line; std::getline(status, line);)
    if (line.rfind("VmHWM:", 0) == 0) return size_t(std::stoull(line.substr(6))) * 1024;
  return 0;
}

TEST(Storage, CopyingAWeightFileHoldsItAboutOnceAtThePeak) {
  char path[] = "/tmp/dl_weights_XXXXXX";
  int fd = mkstemp(path);
  ASSERT_GE(fd, 0);
  const size_t size = size_t(160) << 20;
  std::vector<uint8_t> bytes(size);
  for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = uint8_t((i * 2654435761u) >> 13);
  ASSERT_EQ(write(fd, bytes.data(), bytes.size()), ssize_t(bytes.size()));
  close(fd);
  bytes = {};
  // In a child, whose peak can be reset (clear_refs 5) without the rest of the suite's allocations in it.
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    unsetenv("DREAMLLM_MMAP");
    std::ofstream("/proc/self/clear_refs") << "5";
    const size_t before = peak_resident_bytes();
    auto copied = Storage::read_weights_file(path);
    const size_t grown = peak_resident_bytes() - before;
    // Copied (the machine has the memory) and held about once: the copy plus one chunk of the mapping, where a
    // plain copy of the whole mapping holds the file twice.
    _exit(copied->is_mapped() ? 2 : grown < size + size / 2 ? 0 : 1);
  }
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  std::remove(path);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0) << "2: not copied; 1: the peak grew by 1.5 times the file or more";
}

TEST(Storage, LargeWeightFilesAreCopiedSmallOnesAndDreamllmMmapStayMapped) {
  char path[] = "/tmp/dl_weights_XXXXXX";
  int fd = mkstemp(path);
  ASSERT_GE(fd, 0);
  // One byte past the threshold, with a pattern that catches a shifted or truncated copy.
  std::vector<uint8_t> bytes(Storage::kCopyAtLeast + 1);
  for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = uint8_t((i * 2654435761u) >> 13);
  ASSERT_EQ(write(fd, bytes.data(), bytes.size()), ssize_t(bytes.size()));
  close(fd);
  unsetenv("DREAMLLM_MMAP");
  auto copied = Storage::read_weights_file(path);
  EXPECT_FALSE(copied->is_mapped());
  EXPECT_TRUE(copied->is_writable());
  ASSERT_EQ(copied->size(), bytes.size());
  EXPECT_EQ(std::memcmp(copied->data(), bytes.data(), bytes.size()), 0);
  setenv("DREAMLLM_MMAP", "1", 1);
  EXPECT_TRUE(Storage::read_weights_file(path)->is_mapped());
  unsetenv("DREAMLLM_MMAP");
  ASSERT_EQ(truncate(path, 1000), 0);
  EXPECT_TRUE(Storage::read_weights_file(path)->is_mapped());  // below the threshold
  std::remove(path);
  EXPECT_THROW(Storage::read_weights_file("/nonexistent/file.bin"), Error);
}

TEST(ThreadPool, CoversRangeOnceAndPropagatesErrors) {
  for (int threads : {1, 2, 3}) {
    set_num_threads(threads);
    std::vector<std::atomic<int>> hits(1000);
    parallel_for(1000, 1, [&](int64_t a, int64_t b) {
      for (int64_t i = a; i < b; ++i) hits[size_t(i)]++;
    });
    for (auto& h : hits) ASSERT_EQ(h.load(), 1);
    EXPECT_THROW(parallel_for(100, 1,
                              [&](int64_t a, int64_t) {
                                if (a > 0 || threads == 1) fail("boom");
                              }),
                 Error);
    // Nested regions run inline instead of deadlocking.
    std::atomic<int> total{0};
    parallel_for(4, 1, [&](int64_t a, int64_t b) {
      parallel_for(10, 1, [&](int64_t c, int64_t d) { total += int((b - a) * (d - c)); });
    });
    EXPECT_EQ(total.load(), 40);
  }
  set_num_threads(0);
}

}  // namespace
}  // namespace dl

// OpenBLAS 0.3.21 reads CPUs it does not know (Sapphire Rapids among them) as a Prescott and runs SSE3 kernels;
// the loader names the family from the CPU's features instead, so a CPU with AVX2 never gets those.
TEST(Blas, KernelsMatchTheCpu) {
  std::vector<float> a(96 * 96, 1.f), b(96 * 96, 2.f), c(96 * 96, 0.f);
  dl::ops::gemm(false, false, 96, 96, 96, 1.f, a.data(), 96, b.data(), 96, 0.f, c.data(), 96);
  EXPECT_EQ(c[0], 192.f);
  const std::string kernels = dl::ops::blas_kernels();
  std::printf("OpenBLAS kernels: %s\n", kernels.c_str());
#if defined(__x86_64__)
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
    for (const char* old : {"Prescott", "Core2", "Penryn", "Dunnington", "Nehalem", "Sandybridge", "Atom"})
      EXPECT_NE(kernels, old) << "an AVX2 CPU runs OpenBLAS's " << old << " kernels";
  }
#endif
}

// LAPACK's dsyev through the loaded OpenBLAS, on the second-difference matrix (2 on the diagonal, -1 beside it),
// whose eigenvalues are known in closed form: 2 - 2 cos(k pi / (n + 1)), k = 1..n, with eigenvectors
// sin(i k pi / (n + 1)) up to sign.
TEST(Blas, SymmetricEigenOfTheSecondDifferenceMatrix) {
  const int64_t n = 10;
  std::vector<double> a(size_t(n * n), 0.0), values(static_cast<size_t>(n)), vectors(size_t(n * n));
  for (int64_t i = 0; i < n; ++i) {
    a[size_t(i * n + i)] = 2;
    if (i + 1 < n) a[size_t(i * n + i + 1)] = a[size_t((i + 1) * n + i)] = -1;
  }
  dl::ops::symmetric_eigen(n, a.data(), values.data(), vectors.data());
  const double pi = std::acos(-1.0);
  for (int64_t k = 0; k < n; ++k) {
    EXPECT_NEAR(values[size_t(k)], 2 - 2 * std::cos(double(k + 1) * pi / double(n + 1)), 1e-12);
    double norm = 0, dot = 0;
    for (int64_t i = 0; i < n; ++i) {
      const double expected = std::sin(double((i + 1) * (k + 1)) * pi / double(n + 1));
      norm += expected * expected;
      dot += expected * vectors[size_t(k * n + i)];
    }
    EXPECT_NEAR(std::fabs(dot) / std::sqrt(norm), 1.0, 1e-10) << "eigenvector " << k;
  }
  a[1] += 1e-3;  // no longer symmetric
  EXPECT_NE(dl::test::error_of([&] { dl::ops::symmetric_eigen(n, a.data(), values.data(), vectors.data()); })
                .find("not symmetric at (1, 0)"),
            std::string::npos);
}

// The vectorised exponential against the correctly rounded one (double precision rounded to float): within 2 ulp
// over the whole finite range, exact limits outside it, and vector lanes bit-identical to the scalar version.
TEST(VecExp, WithinTwoUlpAndIdenticalInEveryLane) {
  std::vector<float> xs;
  for (float x = -87.3f; x <= 88.f; x += 0.0137f) xs.push_back(x);
  for (float x = -1.f; x <= 1.f; x += 1e-4f) xs.push_back(x);
  std::vector<float> ys(xs.size());
  dl::vec::exp_shifted(xs.data(), 0.f, ys.data(), int64_t(xs.size()));
  double worst = 0;
  for (size_t i = 0; i < xs.size(); ++i) {
    const float exact = float(std::exp(double(xs[i])));
    const double ulp = double(std::nextafter(exact, INFINITY)) - double(exact);
    worst = std::max(worst, std::abs(double(ys[i]) - double(exact)) / ulp);
    ASSERT_EQ(ys[i], dl::vec::exp_approx(xs[i])) << "lane and scalar differ at x = " << xs[i];
  }
  EXPECT_LE(worst, 2.0);
  EXPECT_EQ(dl::vec::exp_approx(-INFINITY), 0.f);
  EXPECT_EQ(dl::vec::exp_approx(-100.f), 0.f);
  EXPECT_EQ(dl::vec::exp_approx(0.f), 1.f);
  EXPECT_EQ(dl::vec::exp_approx(INFINITY), INFINITY);
  EXPECT_TRUE(std::isnan(dl::vec::exp_approx(NAN)));
  float s = 0;
  const float x = 3.f;
  dl::vec::sigmoid(&x, 1.702f, &s, 1);
  EXPECT_NEAR(s, 1.0 / (1.0 + std::exp(-1.702 * 3.0)), 1e-7);
}
