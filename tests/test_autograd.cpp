// Autograd semantics (frozen parameters, accumulation, recomputation, shared inputs), finite-difference checks
// of every differentiable op, and thread-count independence of the kernels.
#include <unistd.h>

#include <cstdio>
#include <functional>
#include <random>

#include "core/error.h"
#include "core/ops.h"
#include "core/thread_pool.h"
#include "nn/functional.h"
#include "nn/optim.h"
#include "test_util.h"

namespace dl {
namespace {

using nn::Var;
using test::close_rel;
using test::randn;

// Central-difference check of d/dx sum(f(x) * r) for every input, on up to `samples` elements per input.
void finite_difference_check(const std::function<Var(const std::vector<Var>&)>& f, std::vector<Tensor> inputs,
                             float h = 1e-2f, float tol = 2e-2f, int samples = 24) {
  std::vector<Var> vars;
  for (auto& t : inputs) vars.emplace_back(t, true);
  Var y = f(vars);
  Tensor r = randn(y.shape(), 99);
  y.backward(r);
  auto objective = [&](const std::vector<Var>& v) {
    nn::NoGradGuard ng;
    return double(ops::sum_all(ops::mul(f(v).value(), r)));
  };
  std::mt19937 rng(5);
  for (size_t k = 0; k < inputs.size(); ++k) {
    ASSERT_TRUE(vars[k].grad().defined()) << "input " << k << " got no gradient";
    const int64_t n = inputs[k].numel();
    for (int s = 0; s < std::min<int64_t>(samples, n); ++s) {
      const int64_t i = n <= samples ? s : int64_t(rng() % uint64_t(n));
      float* p = inputs[k].f32() + i;
      const float orig = *p;
      *p = orig + h;
      const double up = objective(vars);
      *p = orig - h;
      const double down = objective(vars);
      *p = orig;
      const double numeric = (up - down) / (2.0 * h);
      const double analytic = vars[k].grad().f32()[i];
      EXPECT_NEAR(analytic, numeric, tol * std::max(1.0, std::fabs(numeric)))
          << "input " << k << " element " << i;
    }
  }
}

TEST(FiniteDifference, VaePosteriorSampleAndKL) {
  const Tensor eps = randn({2, 3, 2, 2}, 17);
  finite_difference_check([&](auto& v) { return nn::gaussian_sample(v[0], v[1], eps); },
                          {randn({2, 3, 2, 2}, 1), randn({2, 3, 2, 2}, 2)});
  finite_difference_check([](auto& v) { return nn::gaussian_kl(v[0], v[1]); },
                          {randn({2, 3, 2, 2}, 3), randn({2, 3, 2, 2}, 4)}, 1e-2f, 2e-2f);
  // The clamp at [-30, 20] passes no gradient: a logvar of 25 gets none.
  Var m(Tensor::zeros({1, 1}), true), lv(Tensor::full({1, 1}, 25.f), true);
  nn::gaussian_kl(m, lv).backward();
  EXPECT_EQ(lv.grad().f32()[0], 0.f);
  // KL of N(0, I) to itself is 0; of N(1, I) it is 0.5 per element, averaged over the batch.
  EXPECT_NEAR(ops::gaussian_kl(Tensor::full({2, 4}, 1.f), Tensor::zeros({2, 4})), 2.0, 1e-6);
}

TEST(FiniteDifference, MatmulLinearConv) {
  finite_difference_check([](auto& v) { return nn::matmul(v[0], v[1]); }, {randn({2, 1, 3, 4}, 1), randn({3, 4, 5}, 2)});
  finite_difference_check([](auto& v) { return nn::matmul(v[0], v[1], true, true); }, {randn({4, 3}, 1), randn({5, 4}, 2)});
  finite_difference_check([](auto& v) { return nn::linear(v[0], v[1], &v[2]); },
                          {randn({3, 6}, 3), randn({4, 6}, 4), randn({4}, 5)});
  finite_difference_check([](auto& v) { return nn::conv2d(v[0], v[1], &v[2], 2, 1); },
                          {randn({2, 3, 7, 6}, 6), randn({4, 3, 3, 3}, 7, 0.3f), randn({4}, 8)});
  finite_difference_check([](auto& v) { return nn::conv2d(v[0], v[1], nullptr, 1, 0); },
                          {randn({1, 5, 4, 4}, 6), randn({3, 5, 1, 1}, 7)});
}

TEST(FiniteDifference, Norms) {
  finite_difference_check([](auto& v) { return nn::group_norm(v[0], 2, &v[1], &v[2], 1e-5f); },
                          {randn({2, 4, 3, 3}, 1), randn({4}, 2), randn({4}, 3)});
  finite_difference_check([](auto& v) { return nn::layer_norm(v[0], &v[1], &v[2], 1e-5f); },
                          {randn({3, 8}, 1), randn({8}, 2), randn({8}, 3)});
  finite_difference_check([](auto& v) { return nn::rms_norm(v[0], v[1], 1e-6f); }, {randn({3, 8}, 1), randn({8}, 2)});
}

TEST(FiniteDifference, SoftmaxAttentionRope) {
  nn::Mask causal;
  causal.causal = true;
  finite_difference_check([&](auto& v) { return nn::softmax(v[0], causal); }, {randn({1, 2, 3, 5}, 1)});
  nn::Mask pad;
  pad.key_keep = Tensor::from_vector({1, 1, 1, 0, 1, 1, 1, 1}, {2, 4});
  pad.causal = true;
  finite_difference_check([&](auto& v) { return nn::attention(v[0], v[1], v[2], pad); },
                          {randn({2, 4, 3, 6}, 1), randn({2, 2, 4, 6}, 2), randn({2, 2, 4, 5}, 3)});
  Tensor pos = Tensor::from_vector_i64({2, 3, 9}, {3});
  finite_difference_check([&](auto& v) { return nn::rope(v[0], pos, 10000.f); }, {randn({1, 2, 3, 8}, 1)});
}

TEST(FiniteDifference, ActivationsAndLayout) {
  for (ops::Act act : {ops::Act::SiLU, ops::Act::GeluErf, ops::Act::GeluTanh, ops::Act::QuickGelu})
    finite_difference_check([act](auto& v) { return nn::activation(act, v[0]); }, {randn({3, 7}, 1)});
  finite_difference_check([](auto& v) { return nn::geglu(v[0]); }, {randn({3, 8}, 1)});
  finite_difference_check([](auto& v) { return nn::swiglu(v[0], v[1]); }, {randn({3, 4}, 1), randn({3, 4}, 2)});
  finite_difference_check([](auto& v) { return nn::upsample_nearest2x(v[0]); }, {randn({1, 2, 3, 3}, 1)});
  finite_difference_check([](auto& v) { return nn::upsample_nearest(v[0], 5, 7); }, {randn({1, 2, 3, 4}, 2)});
  finite_difference_check([](auto& v) { return nn::mul(nn::add(v[0], v[1]), v[1]); }, {randn({2, 3}, 1), randn({3}, 2)});
  finite_difference_check([](auto& v) { return nn::concat({v[0], nn::scale(v[1], 3.f)}, 0); },
                          {randn({2, 3}, 1), randn({1, 3}, 2)});
  finite_difference_check([](auto& v) { return nn::sum(nn::permute(v[0], {2, 0, 1}), 1); }, {randn({2, 3, 4}, 1)});
  finite_difference_check([](auto& v) { return nn::slice(nn::transpose(v[0], 0, 1), 0, 1, 3); }, {randn({2, 4}, 1)});
  finite_difference_check([](auto& v) { return nn::mean(nn::reshape(v[0], {3, 4}), 0); }, {randn({2, 6}, 1)});
  Tensor ids = Tensor::from_vector_i64({1, 0, 1, 3}, {4});
  finite_difference_check([&](auto& v) { return nn::embedding(v[0], ids); }, {randn({4, 3}, 1)});
}

TEST(FiniteDifference, Losses) {
  Tensor targets = Tensor::from_vector_i64({2, -100, 0, 4}, {4});
  finite_difference_check([&](auto& v) { return nn::cross_entropy(v[0], targets); }, {randn({4, 5}, 1)});
  finite_difference_check([](auto& v) { return nn::mse(v[0], v[1]); }, {randn({3, 4}, 1), randn({3, 4}, 2)});
}

TEST(Autograd, FrozenParameterPassesGradientThrough) {
  // x -> frozen linear -> loss: x gets a gradient, the frozen weight gets none (no buffer at all).
  Var x(randn({3, 4}, 1), true);
  Var w(randn({5, 4}, 2), false);
  Var loss = nn::sum_all(nn::silu(nn::linear(x, w)));
  loss.backward();
  EXPECT_FALSE(w.grad().defined());
  ASSERT_TRUE(x.grad().defined());
  // Same gradient as with a trainable weight.
  Var x2(x.value(), true), w2(w.value(), true);
  nn::sum_all(nn::silu(nn::linear(x2, w2))).backward();
  EXPECT_TRUE(test::bit_equal(x.grad(), x2.grad()));
  // Freezing later drops the buffer.
  w2.set_requires_grad(false);
  EXPECT_FALSE(w2.grad().defined());
}

TEST(Autograd, EverythingFrozenIsAnError) {
  Var x(randn({2, 2}, 1), false);
  Var y = nn::sum_all(x);
  EXPECT_FALSE(y.requires_grad());
  EXPECT_THROW(y.backward(), Error);
}

TEST(Autograd, GradientsAccumulateAcrossMicroBatches) {
  Var w(randn({4, 3}, 1), true);
  Tensor xa = randn({2, 3}, 2), xb = randn({5, 3}, 3);
  nn::sum_all(nn::linear(Var(xa), w)).backward();
  nn::sum_all(nn::linear(Var(xb), w)).backward();
  Tensor accumulated = w.grad().clone();
  w.zero_grad();
  nn::sum_all(nn::linear(Var(ops::concat({xa, xb}, 0)), w)).backward();
  EXPECT_TRUE(close_rel(accumulated, w.grad(), 1e-6f));
}

TEST(Autograd, SharedInputsSumTheirGradients) {
  Var x(randn({3}, 1), true);
  Var h = nn::mul(x, x);               // used twice below
  Var y = nn::sum_all(nn::add(h, nn::scale(h, 2.f)));  // 3 x^2 -> 6 x
  y.backward();
  EXPECT_TRUE(close_rel(x.grad(), ops::scale(x.value(), 6.f), 1e-6f));
}

TEST(Autograd, CheckpointMatchesPlainBackward) {
  Tensor xv = randn({2, 6, 8}, 1);
  Var w1(randn({16, 8}, 2, 0.3f), true), w2(randn({8, 16}, 3, 0.3f), true), g(Tensor::full({8}, 1.f), true);
  auto block = [&](const std::vector<Var>& in) {
    return nn::add(in[0], nn::linear(nn::gelu(nn::linear(nn::rms_norm(in[0], g, 1e-6f), w1)), w2));
  };
  Var x(xv.clone(), true);
  nn::sum_all(nn::mul(block({block({x})}), block({x}))).backward();
  Tensor gx = x.grad().clone(), gw1 = w1.grad().clone(), gw2 = w2.grad().clone(), gg = g.grad().clone();
  w1.zero_grad();
  w2.zero_grad();
  g.zero_grad();
  Var xc(xv.clone(), true);
  Var inner = nn::checkpoint(block, {xc});
  nn::sum_all(nn::mul(nn::checkpoint(block, {inner}), inner)).backward();
  EXPECT_TRUE(close_rel(xc.grad(), gx, 1e-5f));
  EXPECT_TRUE(close_rel(w1.grad(), gw1, 1e-5f));
  EXPECT_TRUE(close_rel(w2.grad(), gw2, 1e-5f));
  EXPECT_TRUE(close_rel(g.grad(), gg, 1e-5f));
}

TEST(Autograd, NoGradRecordsNothing) {
  Var w(randn({2, 2}, 1), true);
  nn::NoGradGuard ng;
  Var y = nn::matmul(w, w);
  EXPECT_FALSE(y.requires_grad());
}

TEST(Optim, AdamWMatchesClosedFormFirstStep) {
  // After one step from zero moments, each weight moves by lr * g / (|g| + eps) (bias-corrected), after decay.
  Var w(Tensor::from_vector({1.f, -2.f, 0.5f}, {3}), true);
  nn::AdamW opt({w}, {.lr = 0.1f, .weight_decay = 0.01f});
  nn::sum_all(nn::mul(w, Var(Tensor::from_vector({3.f, -1.f, 0.f}, {3})))).backward();
  opt.step();
  const float d = 1.f - 0.1f * 0.01f;
  EXPECT_NEAR(w.value().f32()[0], 1.f * d - 0.1f * 3.f / (3.f + 1e-8f), 1e-6f);
  EXPECT_NEAR(w.value().f32()[1], -2.f * d + 0.1f, 1e-6f);
  EXPECT_NEAR(w.value().f32()[2], 0.5f * d, 1e-6f);
  EXPECT_FALSE(w.grad().defined());  // step zeroes gradients
}

// Every op yields identical bits with 1, 2 and 3 threads.
TEST(Determinism, ResultsIndependentOfThreadCount) {
  auto run_all = [] {
    std::vector<Tensor> outs;
    Tensor x = randn({3, 70, 96}, 1), w = randn({130, 96}, 2), b = randn({130}, 3);
    outs.push_back(ops::linear(x, w, &b));
    outs.push_back(ops::linear(x.slice(1, 0, 2), w.to(DType::BF16)));
    outs.push_back(ops::linear_backward_weight(randn({3, 70, 130}, 4), x));
    outs.push_back(ops::matmul(randn({4, 33, 40}, 5), randn({4, 40, 50}, 6)));
    Tensor img = randn({2, 8, 19, 17}, 7), k = randn({6, 8, 3, 3}, 8);
    outs.push_back(ops::conv2d(img, k, nullptr, 1, 1));
    Tensor gx, gw, gb;
    ops::conv2d_backward(img, k, randn({2, 6, 19, 17}, 9), 1, 1, &gx, &gw, &gb);
    outs.insert(outs.end(), {gx, gw, gb});
    // Five small images (spread over the threads whole) and one large one (each product split instead).
    for (const Shape& s : {Shape{5, 4, 9, 9}, Shape{1, 16, 150, 140}}) {
      Tensor im = randn(s, 15), kw = randn({3, s[1], 3, 3}, 16);
      outs.push_back(ops::conv2d(im, kw, nullptr, 2, 1));
      Tensor gx2, gw2;
      ops::conv2d_backward(im, kw, randn({s[0], 3, (s[2] + 1) / 2, (s[3] + 1) / 2}, 17), 2, 1, &gx2, &gw2, nullptr);
      outs.insert(outs.end(), {gx2, gw2});
    }
    outs.push_back(ops::group_norm(img, 4, nullptr, nullptr, 1e-6f));
    outs.push_back(ops::layer_norm(x, nullptr, nullptr, 1e-5f));
    Tensor q = randn({1, 4, 90, 16}, 10), kk = randn({1, 2, 90, 16}, 11), v = randn({1, 2, 90, 16}, 12);
    ops::AttentionMask m;
    m.causal = true;
    Tensor lse;
    Tensor o = ops::attention(q, kk, v, m, 0.f, &lse);
    outs.push_back(o);
    Tensor gq, gk, gv;
    ops::attention_backward(q, kk, v, o, lse, randn({1, 4, 90, 16}, 13), m, 0.f, &gq, &gk, &gv);
    outs.insert(outs.end(), {gq, gk, gv});
    outs.push_back(Tensor::scalar(ops::sum_all(x)));
    outs.push_back(ops::sum(x, 1));
    outs.push_back(ops::embedding_backward(Tensor::from_vector_i64({1, 1, 0, 2}, {4}), randn({4, 300}, 14), 3));
    return outs;
  };
  set_num_threads(1);
  auto ref = run_all();
  for (int t : {2, 3}) {
    set_num_threads(t);
    auto got = run_all();
    for (size_t i = 0; i < ref.size(); ++i) EXPECT_TRUE(test::bit_equal(got[i], ref[i])) << "output " << i << ", " << t << " threads";
  }
  set_num_threads(0);
}

// Winograd F(2x2, 3x3) (the default for this shape) and im2col + sgemm against the same double-precision sums, on
// odd sides (partial 2x2 tiles at the right and bottom edges) and two images sharing one band of tiles.
TEST(Conv2d, WinogradAndIm2colMatchADirectConvolution) {
  const int64_t N = 2, C = 24, H = 13, W = 11, O = 20;
  const Tensor x = test::randn({N, C, H, W}, 31), w = test::randn({O, C, 3, 3}, 32), b = test::randn({O}, 33);
  std::vector<double> y(size_t(N * O * H * W));
  for (int64_t n = 0; n < N; ++n)
    for (int64_t o = 0; o < O; ++o)
      for (int64_t i = 0; i < H; ++i)
        for (int64_t j = 0; j < W; ++j) {
          double s = b.f32()[o];
          for (int64_t c = 0; c < C; ++c)
            for (int64_t di = 0; di < 3; ++di)
              for (int64_t dj = 0; dj < 3; ++dj) {
                const int64_t yy = i + di - 1, xx = j + dj - 1;
                if (yy < 0 || yy >= H || xx < 0 || xx >= W) continue;
                s += double(w.f32()[(o * C + c) * 9 + di * 3 + dj]) * x.f32()[((n * C + c) * H + yy) * W + xx];
              }
          y[size_t(((n * O + o) * H + i) * W + j)] = s;
        }
  auto max_error = [&](const Tensor& got) {
    double e = 0;
    for (size_t i = 0; i < y.size(); ++i) e = std::max(e, std::fabs(got.f32()[i] - y[i]) / (1 + std::fabs(y[i])));
    return e;
  };
  const double winograd = max_error(ops::conv2d(x, w, &b, 1, 1));
  ops::set_conv_winograd(false);
  const double im2col = max_error(ops::conv2d(x, w, &b, 1, 1));
  ops::set_conv_winograd(true);
  RecordProperty("winograd_max_error", ::testing::PrintToString(winograd));
  RecordProperty("im2col_max_error", ::testing::PrintToString(im2col));
  // Sums of 216 unit-variance products (|y| ~ 15): float rounding alone leaves a few 1e-6 here (measured on the
  // reference machine: Winograd 6.6e-6, im2col 5.5e-6), and Winograd's transforms may not make it much worse.
  EXPECT_LT(winograd, 3e-5);
  EXPECT_LT(im2col, 3e-5);
  EXPECT_LT(winograd, 2.0 * im2col);
  EXPECT_GT(winograd, 0.0);  // the two paths really are different code (Winograd rounds its transforms)
}

}  // namespace
}  // namespace dl

namespace dl {
namespace {

using nn::Var;
using test::randn;

TEST(Autograd, CheckpointReachesCapturedParametersOfConstantInputs) {
  // The segment's only explicit input needs no gradient, yet the weight it captures must get one, also when
  // backward() itself runs with recording switched off.
  Var w(randn({3, 4}, 1), true);
  Tensor x = randn({2, 4}, 2);
  auto seg = [&](const std::vector<Var>& in) { return nn::gelu(nn::linear(in[0], w)); };
  nn::sum_all(seg({Var(x)})).backward();
  Tensor plain = w.grad().clone();
  w.zero_grad();
  Var y = nn::sum_all(nn::checkpoint(seg, {Var(x)}));
  {
    nn::NoGradGuard ng;
    y.backward();
  }
  ASSERT_TRUE(w.grad().defined());
  EXPECT_TRUE(test::bit_equal(w.grad(), plain));
}

TEST(Optim, AdamWBiasCorrectionCountsEachParametersOwnSteps) {
  // A parameter whose first gradient arrives at global step 3 moves exactly like one on its first step (PyTorch
  // keeps a step count per parameter).
  Var a(Tensor::from_vector({1.f}, {1}), true), b(Tensor::from_vector({1.f}, {1}), true);
  nn::AdamW opt({a, b}, {.lr = 0.1f});
  for (int s = 0; s < 2; ++s) {
    nn::sum_all(nn::scale(a, 2.f)).backward();
    opt.step();
  }
  nn::sum_all(nn::add(nn::scale(a, 2.f), nn::scale(b, 2.f))).backward();
  opt.step();
  EXPECT_EQ(opt.parameter_steps(1), 1);
  EXPECT_NEAR(b.value().f32()[0], 1.f - 0.1f, 1e-6f);
}

TEST(Optim, AdamWRefusesReadOnlyParameters) {
  char path[] = "/tmp/dl_ro_XXXXXX";
  int fd = mkstemp(path);
  ASSERT_GE(fd, 0);
  float v[2] = {1.f, 2.f};
  ASSERT_EQ(write(fd, v, 8), 8);
  close(fd);
  Var p(Tensor(Storage::map_file(path), 0, DType::F32, {2}, {1}), true);
  EXPECT_THROW(nn::AdamW({p}, {}), Error);
  std::remove(path);
}

// A batch of small images (spread over the threads, one image per task, each unfolded whole): every output and
// gradient equals a direct convolution written out as the sums of its definition, padding included.
TEST(Conv2d, SmallImageBatchesMatchADirectConvolution) {
  const int64_t N = 9, C = 64, H = 32, W = 32, O = 3;
  const Tensor x = test::randn({N, C, H, W}, 21), w = test::randn({O, C, 3, 3}, 22), b = test::randn({O}, 23);
  const Tensor gy = test::randn({N, O, H, W}, 24);
  const float *xp = x.f32(), *wp = w.f32(), *gp = gy.f32();
  auto at = [&](int64_t n, int64_t c, int64_t yy, int64_t xx) {
    return yy < 0 || yy >= H || xx < 0 || xx >= W ? 0.0 : double(xp[((n * C + c) * H + yy) * W + xx]);
  };
  std::vector<double> y(N * O * H * W), gw(O * C * 9, 0.0), gx(N * C * H * W, 0.0);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t o = 0; o < O; ++o)
      for (int64_t i = 0; i < H; ++i)
        for (int64_t j = 0; j < W; ++j) {
          double s = b.f32()[o];
          const double g = gp[((n * O + o) * H + i) * W + j];
          for (int64_t c = 0; c < C; ++c)
            for (int64_t di = 0; di < 3; ++di)
              for (int64_t dj = 0; dj < 3; ++dj) {
                const int64_t k = (o * C + c) * 9 + di * 3 + dj;
                s += wp[k] * at(n, c, i + di - 1, j + dj - 1);
                gw[k] += g * at(n, c, i + di - 1, j + dj - 1);
                const int64_t yy = i + di - 1, xx = j + dj - 1;
                if (yy >= 0 && yy < H && xx >= 0 && xx < W) gx[((n * C + c) * H + yy) * W + xx] += g * wp[k];
              }
          y[((n * O + o) * H + i) * W + j] = s;
        }
  auto max_error = [](const Tensor& got, const std::vector<double>& want) {
    double e = 0;
    for (size_t i = 0; i < want.size(); ++i) e = std::max(e, std::fabs(got.f32()[i] - want[i]) / (1 + std::fabs(want[i])));
    return e;
  };
  EXPECT_LT(max_error(ops::conv2d(x, w, &b, 1, 1), y), 1e-4);
  Tensor ggx, ggw;
  ops::conv2d_backward(x, w, gy, 1, 1, &ggx, &ggw, nullptr);
  EXPECT_LT(max_error(ggw, gw), 1e-4);
  EXPECT_LT(max_error(ggx, gx), 1e-4);
}

}  // namespace
}  // namespace dl
