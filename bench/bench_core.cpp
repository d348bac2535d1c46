// Throughput of the tensor core's hot kernels at the shapes DreamLLM runs: LLaMA-7B linear layers and attention
// (decode M=1 and prefill M=512), and the SD 2.1 UNet at 64x64 latents. GEMMs also run through OpenBLAS sgemm
// directly, the baseline our panel-splitting must not lose to.
//
// Names are "<impl>/<case>/t:<threads>" with impl "ours" or "openblas"; <case> is the name bench/torch_peer.py
// prints, so scripts/bench.sh can join the three. FLOP counts are the useful work of the op (causal attention
// counts half the score matrix), identical across implementations, so GFLOP/s ratios are time ratios.
#include <benchmark/benchmark.h>
#include <cblas.h>

#include <cctype>
#include <cstdint>
#include <map>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "core/ops.h"
#include "core/tensor.h"
#include "core/thread_pool.h"

namespace {

// Values in [-1, 1): zeros could let a kernel skip work and denormals would slow one down; neither is typical.
dl::Tensor random_tensor(const dl::Shape& shape, uint64_t seed) {
  dl::Tensor t = dl::Tensor::empty(shape);
  float* p = t.f32();
  uint64_t s = seed * 0x9E3779B97F4A7C15ull + 1;
  for (int64_t i = 0, n = t.numel(); i < n; ++i) {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    p[i] = float(int32_t(s >> 32)) * (1.f / 2147483648.f);
  }
  return t;
}

void report_flops(benchmark::State& state, double flops) {
  state.counters["GFLOP/s"] =
      benchmark::Counter(flops, benchmark::Counter::kIsIterationInvariantRate, benchmark::Counter::kIs1000);
}

// Every case times wall-clock: the default per-thread CPU time would miss the work done on pool threads.
// One untimed call before the loop takes first-touch page faults and thread start-up out of the numbers.
benchmark::internal::Benchmark* common(benchmark::internal::Benchmark* b, double min_time) {
  return b->ArgName("t")->Arg(1)->Arg(2)->UseRealTime()->Unit(benchmark::kMillisecond)->MinTime(min_time);
}

struct GemmShape {
  int64_t M, K, N;
  double min_time;
};

std::string gemm_case(const char* kind, const GemmShape& s) {
  return std::string(kind) + "/M" + std::to_string(s.M) + "_K" + std::to_string(s.K) + "_N" + std::to_string(s.N);
}

void register_gemm(const GemmShape& s, bool with_bf16) {
  const double flops = 2.0 * double(s.M) * double(s.N) * double(s.K);
  common(benchmark::RegisterBenchmark(("ours/" + gemm_case("gemm_f32", s)).c_str(),
                                      [s, flops](benchmark::State& state) {
                                        dl::set_num_threads(int(state.range(0)));
                                        dl::Tensor x = random_tensor({s.M, s.K}, 1);
                                        dl::Tensor w = random_tensor({s.N, s.K}, 2);
                                        benchmark::DoNotOptimize(dl::ops::linear(x, w).raw());
                                        for (auto _ : state) benchmark::DoNotOptimize(dl::ops::linear(x, w).raw());
                                        report_flops(state, flops);
                                      }),
         s.min_time);
  // The peer gets the same freshly allocated output per call that linear() pays for, so only the GEMM differs.
  common(benchmark::RegisterBenchmark(
             ("openblas/" + gemm_case("gemm_f32", s)).c_str(),
             [s, flops](benchmark::State& state) {
               dl::set_num_threads(1);
               openblas_set_num_threads(int(state.range(0)));
               dl::Tensor x = random_tensor({s.M, s.K}, 1);
               dl::Tensor w = random_tensor({s.N, s.K}, 2);
               auto run = [&] {
                 dl::Tensor c = dl::Tensor::empty({s.M, s.N});
                 cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(s.M), int(s.N), int(s.K), 1.f, x.f32(),
                             int(s.K), w.f32(), int(s.K), 0.f, c.f32(), int(s.N));
                 benchmark::DoNotOptimize(c.raw());
               };
               run();
               for (auto _ : state) run();
               // The engine's gemm runs OpenBLAS single-threaded under its own pool; leave it as we found it.
               openblas_set_num_threads(1);
               report_flops(state, flops);
             }),
         s.min_time);
  if (!with_bf16) return;
  common(benchmark::RegisterBenchmark(("ours/" + gemm_case("gemm_bf16w", s)).c_str(),
                                      [s, flops](benchmark::State& state) {
                                        dl::set_num_threads(int(state.range(0)));
                                        dl::Tensor x = random_tensor({s.M, s.K}, 1);
                                        dl::Tensor w = random_tensor({s.N, s.K}, 2).to(dl::DType::BF16);
                                        benchmark::DoNotOptimize(dl::ops::linear(x, w).raw());
                                        for (auto _ : state) benchmark::DoNotOptimize(dl::ops::linear(x, w).raw());
                                        report_flops(state, flops);
                                      }),
         s.min_time);
}

void register_attention(int64_t B, int64_t H, int64_t T, int64_t D, bool causal, double min_time) {
  const std::string name = std::string(causal ? "attn_causal" : "attn_full") + "/B" + std::to_string(B) + "_H" +
                           std::to_string(H) + "_T" + std::to_string(T) + "_D" + std::to_string(D);
  const double flops = 4.0 * double(B * H) * double(T) * double(T) * double(D) * (causal ? 0.5 : 1.0);
  common(benchmark::RegisterBenchmark(("ours/" + name).c_str(),
                                      [=](benchmark::State& state) {
                                        dl::set_num_threads(int(state.range(0)));
                                        dl::Tensor q = random_tensor({B, H, T, D}, 3);
                                        dl::Tensor k = random_tensor({B, H, T, D}, 4);
                                        dl::Tensor v = random_tensor({B, H, T, D}, 5);
                                        dl::ops::AttentionMask mask;
                                        mask.causal = causal;
                                        benchmark::DoNotOptimize(dl::ops::attention(q, k, v, mask).raw());
                                        for (auto _ : state)
                                          benchmark::DoNotOptimize(dl::ops::attention(q, k, v, mask).raw());
                                        report_flops(state, flops);
                                      }),
         min_time);
}

void register_conv(int64_t C, int64_t O, int64_t HW, int64_t ksize, double min_time) {
  const std::string name = "conv" + std::to_string(ksize) + "x" + std::to_string(ksize) + "/N1_C" +
                           std::to_string(C) + "_O" + std::to_string(O) + "_" + std::to_string(HW) + "x" +
                           std::to_string(HW);
  // Stride 1 with "same" padding keeps Ho = H, Wo = W.
  const double flops = 2.0 * double(O) * double(HW * HW) * double(C) * double(ksize * ksize);
  const int pad = int(ksize / 2);
  common(benchmark::RegisterBenchmark(("ours/" + name).c_str(),
                                      [=](benchmark::State& state) {
                                        dl::set_num_threads(int(state.range(0)));
                                        dl::Tensor x = random_tensor({1, C, HW, HW}, 6);
                                        dl::Tensor w = random_tensor({O, C, ksize, ksize}, 7);
                                        benchmark::DoNotOptimize(dl::ops::conv2d(x, w, nullptr, 1, pad).raw());
                                        for (auto _ : state)
                                          benchmark::DoNotOptimize(dl::ops::conv2d(x, w, nullptr, 1, pad).raw());
                                        report_flops(state, flops);
                                      }),
         min_time);
}

// Linear layers on stored weight types at LLaMA-7B widths: decode (M=1) is bound by reading the weights once per
// call, so besides GFLOP/s each case reports GB/s of weight bytes streamed (the stored size: 2 bytes per weight for
// F16, 34/32 for Q8_0, 18/32 for Q4_0, 144/256 for Q4_K, 210/256 for Q6_K). A model's decode step streams gigabytes,
// while one 4096x4096 Q4_0 matrix (9.4 MB) would stay in a 32 MB L3 between calls: decode cases therefore rotate
// over copies of the weight totalling at least 128 MB, so every call reads from memory as in a model. Quantizing
// 45M weights takes seconds, so each weight is made once per process and copied.
const std::vector<dl::Tensor>& stored_weights(dl::DType dt, int64_t N, int64_t K, bool rotate) {
  static std::map<std::tuple<int, int64_t, int64_t, bool>, std::vector<dl::Tensor>> cache;
  auto key = std::make_tuple(int(dt), N, K, rotate);
  auto it = cache.find(key);
  if (it == cache.end()) {
    // Scaled like trained weights (std ~0.02) so quantizers see ordinary magnitudes.
    std::vector<dl::Tensor> ws{dl::ops::scale(random_tensor({N, K}, 2), 0.035f).to(dt)};
    const size_t bytes = ws[0].nbytes();
    while (rotate && ws.size() * bytes < (size_t(128) << 20)) ws.push_back(ws[0].clone());
    it = cache.emplace(key, std::move(ws)).first;
  }
  return it->second;
}

void register_typed_linear(dl::DType dt, int64_t M, int64_t K, int64_t N, double min_time) {
  const double flops = 2.0 * double(M) * double(N) * double(K);
  std::string type(dl::dtype_name(dt));
  for (char& c : type) c = char(std::tolower(static_cast<unsigned char>(c)));
  const std::string name = "ours/linear_" + type + "/M" + std::to_string(M) + "_K" + std::to_string(K) + "_N" +
                           std::to_string(N);
  common(benchmark::RegisterBenchmark(name.c_str(),
                                      [=](benchmark::State& state) {
                                        const std::vector<dl::Tensor>& ws = stored_weights(dt, N, K, M == 1);
                                        dl::set_num_threads(int(state.range(0)));
                                        dl::Tensor x = random_tensor({M, K}, 1);
                                        size_t i = 0;
                                        benchmark::DoNotOptimize(dl::ops::linear(x, ws[0]).raw());
                                        for (auto _ : state) {
                                          benchmark::DoNotOptimize(dl::ops::linear(x, ws[i]).raw());
                                          i = (i + 1) % ws.size();
                                        }
                                        report_flops(state, flops);
                                        state.counters["weights_GB"] = benchmark::Counter(
                                            double(ws[0].nbytes()) / 1e9, benchmark::Counter::kIsIterationInvariantRate);
                                      }),
         min_time);
}

void register_all() {
  // Stored weight types: decode and prefill at the three LLaMA-7B projection shapes (q/k/v/o 4096x4096, MLP
  // gate/up 11008x4096, MLP down 4096x11008).
  for (dl::DType dt : {dl::DType::F16, dl::DType::Q8_0, dl::DType::Q4_0, dl::DType::Q4_K, dl::DType::Q6_K})
    for (int64_t M : {1, 64, 512})
      for (auto [N, K] : {std::pair<int64_t, int64_t>{4096, 4096}, {11008, 4096}, {4096, 11008}})
        register_typed_linear(dt, M, K, N, M == 1 ? 0.3 : 0.5);

  // LLaMA-7B: attention/output projections (4096 -> 4096) and the MLP up/gate projections (4096 -> 11008).
  // Decode (M=1) streams the whole weight per call, hence the BF16-weight variant that halves the bytes.
  for (int64_t M : {1, 512})
    for (int64_t N : {4096, 11008}) register_gemm({M, 4096, N, 0.5}, M == 1);
  // SD 2.1 UNet at 64x64 latents: the 1x1 projections and attention projections of the three widths; the last is
  // the GEGLU input projection of the 1280-wide level (16x16 tokens).
  register_gemm({4096, 320, 320, 0.5}, false);
  register_gemm({1024, 640, 640, 0.5}, false);
  register_gemm({256, 1280, 5120, 0.5}, false);

  register_attention(1, 32, 512, 128, true, 0.5);
  register_attention(1, 32, 2048, 128, true, 1.0);
  // UNet self-attention over 4096 tokens: the slowest case (~1 s per call on one core), so few timed calls.
  register_attention(1, 5, 4096, 64, false, 1.0);

  register_conv(320, 320, 64, 3, 0.5);
  register_conv(640, 640, 32, 3, 0.5);
  register_conv(640, 320, 64, 1, 0.5);
}

}  // namespace

int main(int argc, char** argv) {
  register_all();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
