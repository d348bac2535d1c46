// The KV cache: attention over cached keys/values of every storage type against a naive double-precision attention,
// in-place growth and row selection, decoding through the cache against the full forward, and the error each
// reduced-precision cache type costs.
#include <cmath>
#include <limits>
#include <vector>

#include "core/error.h"
#include "core/ops.h"
#include "io/model_dir.h"
#include "models/dreamllm.h"
#include "models/llama.h"
#include "nn/autograd.h"
#include "test_util.h"

namespace dl {
namespace {

// softmax(q k^T / sqrt(D) + masks) v in double, q [B,Hq,Tq,D], k/v [B,Hkv,Tk,D] F32, causal over the last Tq of Tk,
// keys with keep[b][j] == 0 masked.
std::vector<double> naive_attention(const Tensor& q, const Tensor& k, const Tensor& v,
                                    const std::vector<std::vector<float>>& keep) {
  const int64_t B = q.size(0), Hq = q.size(1), Tq = q.size(2), D = q.size(3), Hkv = k.size(1), Tk = k.size(2);
  const std::vector<float> qv = q.to_vector(), kv = k.to_vector(), vv = v.to_vector();
  std::vector<double> out(size_t(B * Hq * Tq * D), 0.0);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < Hq; ++h) {
      const int64_t hk = h / (Hq / Hkv);
      for (int64_t i = 0; i < Tq; ++i) {
        std::vector<double> s(size_t(Tk), -std::numeric_limits<double>::infinity());
        double m = -std::numeric_limits<double>::infinity();
        for (int64_t j = 0; j < Tk; ++j) {
          if (j > i + Tk - Tq || keep[size_t(b)][size_t(j)] == 0.f) continue;
          double d = 0;
          for (int64_t e = 0; e < D; ++e)
            d += double(qv[size_t(((b * Hq + h) * Tq + i) * D + e)]) * kv[size_t(((b * Hkv + hk) * Tk + j) * D + e)];
          s[size_t(j)] = d / std::sqrt(double(D));
          m = std::max(m, s[size_t(j)]);
        }
        double z = 0;
        for (double& x : s) z += (x = std::exp(x - m));
        for (int64_t j = 0; j < Tk; ++j)
          for (int64_t e = 0; e < D; ++e)
            out[size_t(((b * Hq + h) * Tq + i) * D + e)] +=
                s[size_t(j)] / z * vv[size_t(((b * Hkv + hk) * Tk + j) * D + e)];
      }
    }
  return out;
}

double max_abs_diff(const Tensor& a, const std::vector<double>& b) {
  const std::vector<float> av = a.to_vector();
  double m = 0;
  for (size_t i = 0; i < av.size(); ++i) m = std::max(m, std::abs(double(av[i]) - b[i]));
  return m;
}

// A cache tensor [B, H, capacity, D] of `type` whose first Tk positions per head hold `k` [B, H, Tk, D] (F32) and the
// rest garbage that attention must not read.
Tensor as_cache(const Tensor& k, int64_t capacity, DType type) {
  const int64_t B = k.size(0), H = k.size(1), Tk = k.size(2), D = k.size(3);
  Tensor full = test::randn({B, H, capacity, D}, 99, 1e6f);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h)
      full.select(0, b).select(0, h).slice(0, 0, Tk).copy_from(k.select(0, b).select(0, h));
  return full.to(type);
}

TEST(AttentionCached, MatchesNaiveAttentionForEveryStorageType) {
  const int64_t B = 2, Hq = 4, Hkv = 2, Tq = 3, Tk = 37, D = 64, capacity = 50;
  const Tensor q = test::randn({B, Hq, Tq, D}, 1), k = test::randn({B, Hkv, Tk, D}, 2), v = test::randn({B, Hkv, Tk, D}, 3);
  std::vector<std::vector<float>> keep(size_t(B), std::vector<float>(size_t(Tk), 1.f));
  keep[1][0] = keep[1][1] = 0.f;  // row 1 left-padded by two
  std::vector<float> keep_flat;
  for (const auto& r : keep) keep_flat.insert(keep_flat.end(), r.begin(), r.end());
  const Tensor keep_t = Tensor::from_vector(keep_flat, {B, Tk});
  ops::AttentionMask mask;
  mask.causal = true;
  mask.key_keep = &keep_t;
  const std::vector<double> exact = naive_attention(q, k, v, keep);
  // Per type: the kernel against the naive attention on the values the cache really holds (plumbing and
  // arithmetic), and against exact F32 keys/values (what the storage type costs here, N(0, 1) data, D = 64).
  struct Case {
    DType type;
    double vs_exact;
  };
  for (const Case c : {Case{DType::F32, 1e-5}, Case{DType::F16, 2e-3}, Case{DType::BF16, 2e-2}, Case{DType::Q8_0, 3e-2}}) {
    SCOPED_TRACE(std::string(dtype_name(c.type)));
    const Tensor kc = as_cache(k, capacity, c.type), vc = as_cache(v, capacity, c.type);
    const Tensor out = ops::attention_cached(q, kc, vc, Tk, mask);
    const Tensor k_held = kc.to(DType::F32).slice(2, 0, Tk).contiguous();
    const Tensor v_held = vc.to(DType::F32).slice(2, 0, Tk).contiguous();
    EXPECT_LT(max_abs_diff(out, naive_attention(q, k_held, v_held, keep)), 1e-5);
    EXPECT_LT(max_abs_diff(out, exact), c.vs_exact);
  }
}

TEST(AttentionCached, RefusesWhatItCannotRead) {
  const Tensor q = test::randn({1, 2, 1, 8}, 1), k = test::randn({1, 2, 4, 8}, 2);
  EXPECT_NE(test::error_of([&] { ops::attention_cached(q, k, k, 5, {}); }).find("valid cache rows"), std::string::npos);
  EXPECT_NE(test::error_of([&] { ops::attention_cached(q, k.to(DType::I32), k, 2, {}); }).find("not supported"),
            std::string::npos);
  EXPECT_NE(test::error_of([&] { ops::attention_cached(q, k.transpose(2, 3), k, 2, {}); }).find("contiguous"),
            std::string::npos);
}

TEST(KVCache, GrowsInPlaceKeepingEveryPositionAndSelectsRows) {
  models::KVCache cache;
  cache.types = {DType::F32, DType::F32};
  const int64_t B = 2, H = 3, D = 8;
  std::vector<Tensor> ks, vs;
  std::vector<int64_t> capacities;
  for (int64_t chunk : {100, 1, 200, 1, 1, 300}) {
    const Tensor k = test::randn({B, H, chunk, D}, 10 + uint64_t(cache.length));
    const Tensor v = test::randn({B, H, chunk, D}, 20 + uint64_t(cache.length));
    for (size_t layer = 0; layer < 2; ++layer) cache.append(layer, k, v, 4096);
    cache.length += chunk;
    ks.push_back(k);
    vs.push_back(v);
    capacities.push_back(cache.capacity());
  }
  EXPECT_EQ(capacities, (std::vector<int64_t>{256, 256, 512, 512, 512, 1024}));  // doubling, at least 256
  const Tensor all_k = ops::concat(ks, 2), all_v = ops::concat(vs, 2);
  EXPECT_TRUE(test::close_rel(cache.keys[1].slice(2, 0, cache.length), all_k, 0.f));
  EXPECT_TRUE(test::close_rel(cache.values[0].slice(2, 0, cache.length), all_v, 0.f));
  cache.select_rows({1, 1, 0});
  EXPECT_EQ(cache.keys[0].size(0), 3);
  EXPECT_TRUE(test::close_rel(cache.keys[0].slice(0, 1, 2).slice(2, 0, cache.length), all_k.slice(0, 1, 2), 0.f));
  EXPECT_TRUE(test::close_rel(cache.values[1].slice(0, 2, 3).slice(2, 0, cache.length), all_v.slice(0, 0, 1), 0.f));
  EXPECT_NE(test::error_of([&] { cache.select_rows({3}); }).find("row 3 does not exist"), std::string::npos);
  // The context bound.
  const Tensor one = test::randn({3, H, 1, D}, 5);
  models::KVCache small;
  small.types = {DType::F32, DType::F32};
  small.append(0, test::randn({3, H, 10, D}, 6), test::randn({3, H, 10, D}, 7), 10);
  small.length = 10;
  EXPECT_EQ(small.capacity(), 10);  // never past the context
  EXPECT_NE(test::error_of([&] { small.append(0, one, one, 10); }).find("exceed the context of 10"), std::string::npos);
}

TEST(KVCache, Q8_0NeedsWholeBlocksPerHead) {
  models::KVCache cache;
  cache.types = {DType::Q8_0, DType::F16};
  const Tensor k = test::randn({1, 2, 3, 16}, 1);
  EXPECT_NE(test::error_of([&] { cache.append(0, k, k, 100); }).find("multiple of 32; this model's is 16"),
            std::string::npos);
}

// The tiny model decoded one token at a time through each cache type, against its full forward.
TEST(KVCache, DecodingEqualsFullForwardWithinEachTypesError) {
  nn::NoGradGuard ng;
  const io::ModelDir dir = io::ModelDir::open(std::string(DL_FIXTURE_DIR) + "/tiny_dreamllm/f32");
  const models::DreamLLM model = models::DreamLLM::load(dir);
  const models::Llama& llm = model.llm();
  const Tensor ids = Tensor::from_vector_i64({1, 5, 9, 17, 3, 22, 40, 2, 11, 6}, {1, 10});
  const Tensor full = llm.forward(llm.embed(ids), Tensor()).value();
  for (const auto& [type, tolerance] : {std::pair{DType::F32, 1e-5f}, std::pair{DType::F16, 2e-3f},
                                        std::pair{DType::BF16, 2e-2f}}) {
    SCOPED_TRACE(std::string(dtype_name(type)));
    models::KVCache cache;
    cache.types = {type, type};
    std::vector<Tensor> pieces{llm.forward(llm.embed(ids.slice(1, 0, 4).contiguous()), Tensor(), &cache).value()};
    for (int64_t t = 4; t < 10; ++t)
      pieces.push_back(llm.forward(llm.embed(ids.slice(1, t, t + 1).contiguous()), Tensor(), &cache).value());
    EXPECT_EQ(cache.length, 10);
    EXPECT_EQ(cache.keys[0].dtype(), type);
    EXPECT_TRUE(test::close_rel(ops::concat(pieces, 1), full, tolerance));
  }
}

TEST(KVCache, NewCachesTakeTheProcessDefault) {
  const models::KVCacheTypes saved = models::default_kv_cache_types();
  EXPECT_EQ(saved.key, DType::F16);
  EXPECT_EQ(saved.value, DType::F16);
  models::set_default_kv_cache_types({DType::Q8_0, DType::F32});
  models::KVCache cache;
  models::set_default_kv_cache_types(saved);
  EXPECT_EQ(cache.types.key, DType::Q8_0);
  EXPECT_EQ(cache.types.value, DType::F32);
}

}  // namespace
}  // namespace dl
