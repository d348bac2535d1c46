// Forward and backward of every op against PyTorch (fixtures from tools/fixtures/make_core_fixtures.py).
// Each test runs the op through the autograd layer, seeds backward with the fixture's gy and compares the
// output and every input gradient.
#include <functional>

#include "core/ops.h"
#include "nn/functional.h"
#include "test_util.h"

namespace dl {
namespace {

using nn::Var;
using test::close_rel;
using test::fx;

Var leaf(const std::string& c, const std::string& n) { return Var(fx(c, n).clone(), true); }

// Runs backward from y with the fixture's gy.
void backprop(const Var& y, const std::string& c) { y.backward(fx(c, "gy")); }

TEST(OpsParity, Matmul) {
  for (const char* c : {"matmul", "matmul_big"}) {
    SCOPED_TRACE(c);
    Var a = leaf(c, "a"), b = leaf(c, "b");
    Var y = nn::matmul(a, b);
    EXPECT_TRUE(close_rel(y.value(), fx(c, "y")));
    backprop(y, c);
    EXPECT_TRUE(close_rel(a.grad(), fx(c, "ga")));
    EXPECT_TRUE(close_rel(b.grad(), fx(c, "gb")));
  }
}

TEST(OpsParity, MatmulBothTransposed) {
  Var a = leaf("matmul_tt", "a"), b = leaf("matmul_tt", "b");
  Var y = nn::matmul(a, b, /*ta=*/true, /*tb=*/true);
  EXPECT_TRUE(close_rel(y.value(), fx("matmul_tt", "y")));
  backprop(y, "matmul_tt");
  EXPECT_TRUE(close_rel(a.grad(), fx("matmul_tt", "ga")));
  EXPECT_TRUE(close_rel(b.grad(), fx("matmul_tt", "gb")));
}

TEST(OpsParity, MatmulTransposeViewsEqualFlags) {
  // A transposed view fed with ta=false must equal the same data with ta=true.
  Tensor a = fx("matmul_tt", "a"), b = fx("matmul_tt", "b");
  Tensor via_views = ops::matmul(a.transpose(-1, -2), b.transpose(-1, -2));
  EXPECT_TRUE(close_rel(via_views, fx("matmul_tt", "y")));
}

TEST(OpsParity, Linear) {
  for (const char* c : {"linear", "linear_big", "linear_gemv"}) {
    SCOPED_TRACE(c);
    Var x = leaf(c, "x"), w = leaf(c, "w"), b = leaf(c, "b");
    Var y = nn::linear(x, w, &b);
    EXPECT_TRUE(close_rel(y.value(), fx(c, "y")));
    backprop(y, c);
    EXPECT_TRUE(close_rel(x.grad(), fx(c, "gx")));
    EXPECT_TRUE(close_rel(w.grad(), fx(c, "gw")));
    EXPECT_TRUE(close_rel(b.grad(), fx(c, "gb")));
  }
}

TEST(OpsParity, LinearLowPrecisionWeights) {
  for (const char* c : {"linear_bf16_2", "linear_bf16_9", "linear_f16_2", "linear_f16_9"}) {
    SCOPED_TRACE(c);
    Tensor w = fx(c, "w");
    ASSERT_NE(w.dtype(), DType::F32);
    EXPECT_TRUE(close_rel(ops::linear(fx(c, "x"), w), fx(c, "y")));
  }
}

TEST(OpsParity, LinearQuantizedWeightsApproximate) {
  // Q8_0 / Q4_0 weights: the integer kernels quantize the activations to 8 bits per 32-element block, so the
  // product stays within that rounding of the product with the dequantised weights (the exact per-element bound is
  // tested in test_quant.cpp; here 5% of the largest output), and near the F32 product within the format's error.
  Tensor x = fx("linear_bf16_9", "x"), w = fx("linear_bf16_9", "w").to(DType::F32);
  Tensor exact = ops::linear(x, w);
  for (DType q : {DType::Q8_0, DType::Q4_0}) {
    SCOPED_TRACE(dtype_name(q));
    Tensor wq = w.to(q);
    EXPECT_TRUE(close_rel(ops::linear(x, wq), ops::linear(x, wq.to(DType::F32)), 0.05f));
    EXPECT_TRUE(close_rel(ops::linear(x, wq), exact, q == DType::Q8_0 ? 0.02f : 0.15f));
  }
}

TEST(OpsParity, Conv2d) {
  for (const char* c : {"conv3x3", "conv3x3_s2", "conv1x1", "conv4x4_s4"}) {
    SCOPED_TRACE(c);
    const int stride = int(fx(c, "stride").item()), pad = int(fx(c, "pad").item());
    Var x = leaf(c, "x"), w = leaf(c, "w"), b = leaf(c, "b");
    Var y = nn::conv2d(x, w, &b, stride, pad);
    EXPECT_TRUE(close_rel(y.value(), fx(c, "y")));
    backprop(y, c);
    EXPECT_TRUE(close_rel(x.grad(), fx(c, "gx")));
    EXPECT_TRUE(close_rel(w.grad(), fx(c, "gw")));
    EXPECT_TRUE(close_rel(b.grad(), fx(c, "gb")));
  }
}

TEST(OpsParity, GroupNorm) {
  const std::string c = "group_norm";
  Var x = leaf(c, "x"), g = leaf(c, "gamma"), b = leaf(c, "beta");
  Var y = nn::group_norm(x, 4, &g, &b, 1e-6f);
  EXPECT_TRUE(close_rel(y.value(), fx(c, "y")));
  backprop(y, c);
  EXPECT_TRUE(close_rel(x.grad(), fx(c, "gx")));
  EXPECT_TRUE(close_rel(g.grad(), fx(c, "ggamma")));
  EXPECT_TRUE(close_rel(b.grad(), fx(c, "gbeta")));
}

TEST(OpsParity, LayerNorm) {
  const std::string c = "layer_norm";
  Var x = leaf(c, "x"), g = leaf(c, "gamma"), b = leaf(c, "beta");
  Var y = nn::layer_norm(x, &g, &b, 1e-5f);
  EXPECT_TRUE(close_rel(y.value(), fx(c, "y")));
  backprop(y, c);
  EXPECT_TRUE(close_rel(x.grad(), fx(c, "gx")));
  EXPECT_TRUE(close_rel(g.grad(), fx(c, "ggamma")));
  EXPECT_TRUE(close_rel(b.grad(), fx(c, "gbeta")));
}

TEST(OpsParity, RmsNorm) {
  const std::string c = "rms_norm";
  Var x = leaf(c, "x"), w = leaf(c, "w");
  Var y = nn::rms_norm(x, w, 1e-6f);
  EXPECT_TRUE(close_rel(y.value(), fx(c, "y")));
  backprop(y, c);
  EXPECT_TRUE(close_rel(x.grad(), fx(c, "gx")));
  EXPECT_TRUE(close_rel(w.grad(), fx(c, "gw")));
}

TEST(OpsParity, Softmax) {
  Var x = leaf("softmax", "x");
  Var y = nn::softmax(x);
  EXPECT_TRUE(close_rel(y.value(), fx("softmax", "y")));
  backprop(y, "softmax");
  EXPECT_TRUE(close_rel(x.grad(), fx("softmax", "gx")));
}

TEST(OpsParity, SoftmaxCausalAndPadding) {
  const std::string c = "softmax_masked";
  Var x = leaf(c, "x");
  nn::Mask m;
  m.causal = true;
  m.key_keep = fx(c, "keep");
  Var y = nn::softmax(x, m);
  EXPECT_TRUE(close_rel(y.value(), fx(c, "y")));
  backprop(y, c);
  EXPECT_TRUE(close_rel(x.grad(), fx(c, "gx")));
}

void check_attention(const std::string& c, const nn::Mask& m, float scale) {
  Var q = leaf(c, "q"), k = leaf(c, "k"), v = leaf(c, "v");
  Var y = nn::attention(q, k, v, m, scale);
  EXPECT_TRUE(close_rel(y.value(), fx(c, "y")));
  backprop(y, c);
  EXPECT_TRUE(close_rel(q.grad(), fx(c, "gq")));
  EXPECT_TRUE(close_rel(k.grad(), fx(c, "gk")));
  EXPECT_TRUE(close_rel(v.grad(), fx(c, "gv")));
}

TEST(OpsParity, AttentionGroupedCausalAdditiveMask) {
  nn::Mask m;
  m.causal = true;
  m.additive = fx("attention_gqa", "add");
  check_attention("attention_gqa", m, 0.f);
}

TEST(OpsParity, AttentionLongWithKeyPadding) {
  nn::Mask m;
  m.key_keep = fx("attention_long", "keep");
  check_attention("attention_long", m, 0.3f);
}

TEST(OpsParity, AttentionUnmaskedTiles) {
  // No mask: the register-tiled forward, with partial query and key tiles and grouped heads; the backward then
  // runs on its saved log-sum-exp.
  check_attention("attention_full", nn::Mask{}, 0.f);
}

TEST(OpsParity, AttentionCausalSelf) {
  nn::Mask m;
  m.causal = true;
  check_attention("attention_causal", m, 0.f);
}

TEST(OpsParity, AttentionEqualsExplicitSoftmax) {
  // The streaming kernel against softmax(QK^T) V composed from the other ops (same engine, other code path).
  Tensor q = fx("attention_causal", "q"), k = fx("attention_causal", "k"), v = fx("attention_causal", "v");
  ops::AttentionMask m;
  m.causal = true;
  Tensor s = ops::scale(ops::matmul(q, k, false, true), 1.f / std::sqrt(32.f));
  Tensor ref = ops::matmul(ops::softmax(s, m), v);
  EXPECT_TRUE(close_rel(ops::attention(q, k, v, m), ref));
}

TEST(OpsParity, Rope) {
  const std::string c = "rope";
  Var x = leaf(c, "x");
  Var y = nn::rope(x, fx(c, "pos"), 10000.f);
  EXPECT_TRUE(close_rel(y.value(), fx(c, "y")));
  backprop(y, c);
  EXPECT_TRUE(close_rel(x.grad(), fx(c, "gx")));
  // Head dim 128 at positions up to 2047: float32 angle rounding as in HF.
  EXPECT_TRUE(close_rel(ops::rope(fx("rope_llama", "x"), fx("rope_llama", "pos"), 10000.f), fx("rope_llama", "y"),
                        2e-4f));
}

TEST(OpsParity, RopePerBatchPositions) {
  Tensor x = fx("rope", "x");  // [2,3,5,8]
  Tensor pos1 = fx("rope", "pos");
  std::vector<int64_t> p2(pos1.data<int64_t>(), pos1.data<int64_t>() + 5);
  p2.insert(p2.end(), p2.begin(), p2.end());
  Tensor pos2 = Tensor::from_vector_i64(p2, {2, 5});
  EXPECT_TRUE(test::bit_equal(ops::rope(x, pos2, 10000.f), ops::rope(x, pos1, 10000.f)));
}

TEST(OpsParity, Embedding) {
  const std::string c = "embedding";
  Var w = leaf(c, "w");
  Var y = nn::embedding(w, fx(c, "ids"));
  EXPECT_TRUE(close_rel(y.value(), fx(c, "y")));
  backprop(y, c);
  EXPECT_TRUE(close_rel(w.grad(), fx(c, "gw")));
  // I32 ids and BF16 tables work too.
  Tensor ids32 = fx(c, "ids").to(DType::I32);
  EXPECT_TRUE(close_rel(ops::embedding(fx(c, "w").to(DType::BF16), ids32), fx(c, "y"), 1e-2f));
}

TEST(OpsParity, Activations) {
  const std::pair<const char*, ops::Act> acts[] = {{"act_silu", ops::Act::SiLU},
                                                   {"act_gelu", ops::Act::GeluErf},
                                                   {"act_gelu_tanh", ops::Act::GeluTanh},
                                                   {"act_quick_gelu", ops::Act::QuickGelu}};
  for (const auto& [c, act] : acts) {
    SCOPED_TRACE(c);
    Var x = leaf(c, "x");
    Var y = nn::activation(act, x);
    EXPECT_TRUE(close_rel(y.value(), fx(c, "y")));
    backprop(y, c);
    EXPECT_TRUE(close_rel(x.grad(), fx(c, "gx")));
  }
}

TEST(OpsParity, Geglu) {
  Var x = leaf("geglu", "x");
  Var y = nn::geglu(x);
  EXPECT_TRUE(close_rel(y.value(), fx("geglu", "y")));
  backprop(y, "geglu");
  EXPECT_TRUE(close_rel(x.grad(), fx("geglu", "gx")));
}

TEST(OpsParity, Swiglu) {
  Var g = leaf("swiglu", "gate"), u = leaf("swiglu", "up");
  Var y = nn::swiglu(g, u);
  EXPECT_TRUE(close_rel(y.value(), fx("swiglu", "y")));
  backprop(y, "swiglu");
  EXPECT_TRUE(close_rel(g.grad(), fx("swiglu", "ggate")));
  EXPECT_TRUE(close_rel(u.grad(), fx("swiglu", "gup")));
}

TEST(OpsParity, UpsampleNearest) {
  Var x = leaf("upsample", "x");
  Var y = nn::upsample_nearest2x(x);
  EXPECT_TRUE(close_rel(y.value(), fx("upsample", "y")));
  backprop(y, "upsample");
  EXPECT_TRUE(close_rel(x.grad(), fx("upsample", "gx")));
}

TEST(OpsParity, BroadcastingBinaryOps) {
  const std::pair<const char*, std::function<Var(const Var&, const Var&)>> cases[] = {
      {"bcast_add", nn::add}, {"bcast_mul", nn::mul}, {"bcast_sub", nn::sub}};
  for (const auto& [c, fn] : cases) {
    SCOPED_TRACE(c);
    Var a = leaf(c, "a"), b = leaf(c, "b");
    Var y = fn(a, b);
    EXPECT_TRUE(close_rel(y.value(), fx(c, "y")));
    backprop(y, c);
    EXPECT_TRUE(close_rel(a.grad(), fx(c, "ga")));
    EXPECT_TRUE(close_rel(b.grad(), fx(c, "gb")));
  }
}

TEST(OpsParity, ConcatAndSplit) {
  Var a = leaf("concat", "a"), b = leaf("concat", "b");
  Var y = nn::concat({a, b}, 1);
  EXPECT_TRUE(close_rel(y.value(), fx("concat", "y")));
  backprop(y, "concat");
  EXPECT_TRUE(close_rel(a.grad(), fx("concat", "ga")));
  EXPECT_TRUE(close_rel(b.grad(), fx("concat", "gb")));
  auto parts = ops::split(fx("concat", "y"), {3, 5}, -1);
  EXPECT_TRUE(test::bit_equal(parts[0], fx("concat", "a")));
  EXPECT_TRUE(test::bit_equal(parts[1], fx("concat", "b")));
}

TEST(OpsParity, SumAndMean) {
  Var x = leaf("sum", "x");
  Var y = nn::sum(x, 1);
  EXPECT_TRUE(close_rel(y.value(), fx("sum", "y")));
  backprop(y, "sum");
  EXPECT_TRUE(close_rel(x.grad(), fx("sum", "gx")));
  Var x2 = leaf("mean", "x");
  Var y2 = nn::mean(x2, -1, /*keepdim=*/true);
  EXPECT_TRUE(close_rel(y2.value(), fx("mean", "y")));
  backprop(y2, "mean");
  EXPECT_TRUE(close_rel(x2.grad(), fx("mean", "gx")));
}

TEST(OpsParity, CrossEntropyIgnoreIndex) {
  Var logits = leaf("cross_entropy", "logits");
  Var loss = nn::cross_entropy(logits, fx("cross_entropy", "targets"));
  EXPECT_TRUE(close_rel(loss.value(), fx("cross_entropy", "loss")));
  loss.backward();
  EXPECT_TRUE(close_rel(logits.grad(), fx("cross_entropy", "glogits")));
}

TEST(OpsParity, CrossEntropyAllIgnoredIsZero) {
  // DreamLLM's convention (text-to-image samples carry no LM targets): zero loss, zero gradient, no NaN.
  Var logits(fx("cross_entropy", "logits").clone(), true);
  Tensor targets = Tensor::from_vector_i64(std::vector<int64_t>(10, -100), {10});
  Var loss = nn::cross_entropy(logits, targets);
  EXPECT_EQ(loss.value().item(), 0.f);
  loss.backward();
  for (float g : logits.grad().to_vector()) EXPECT_EQ(g, 0.f);
}

TEST(OpsParity, Mse) {
  Var a = leaf("mse", "a"), b = leaf("mse", "b");
  Var loss = nn::mse(a, b);
  EXPECT_TRUE(close_rel(loss.value(), fx("mse", "loss")));
  loss.backward();
  EXPECT_TRUE(close_rel(a.grad(), fx("mse", "ga")));
  EXPECT_TRUE(close_rel(b.grad(), fx("mse", "gb")));
}

}  // namespace
}  // namespace dl
