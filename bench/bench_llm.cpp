// End-to-end LLM speed: dreamllm's LLaMA on a model in the Hugging Face layout (make_llama.py writes one: Vicuna-7B's
// widths, random F16 weights), with the cases bench/llm_peer/llama_cpp_peer.mjs measures llama.cpp on:
//   ours/llm_prefill/P<n>/t:<threads>  the first n prompt ids into an empty KV cache, and the last position's logits
//   ours/llm_decode/N<n>/t:<threads>   after a 64-id prompt (untimed), n greedy steps: argmax, one-token forward,
//                                       logits; the time is per token
// --check=FILE writes what the peer's check writes (the 8 most likely next tokens after the first 16 prompt ids,
// and 16 greedy tokens), so scripts/bench_llm.sh can tell whether both engines compute the same model.
//   dl_bench_llm --model=PATH --prompt=prompt.json [--prefill=64,512] [--decode=32] [--check=FILE] [benchmark flags]
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <memory>
#include <numeric>
#include <sstream>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/tensor.h"
#include "core/kernels/vec.h"
#include "core/thread_pool.h"
#include "io/config.h"
#include "io/model_dir.h"
#include "models/llama.h"
#include "nn/autograd.h"

namespace {

struct LoadedLlama {
  dl::models::ParameterSet params;
  std::unique_ptr<dl::models::Llama> llm;
};

// Any model the commands open: a Hugging Face LLaMA directory, a DreamLLM directory or a GGUF file (a llama.cpp
// one included), its LLM weights in their stored types (quantized ones stay quantized).
LoadedLlama load(const std::string& path) {
  LoadedLlama m;
  const dl::io::ModelDir dir = dl::io::ModelDir::open(path);
  m.params.adopt(dir.load(dl::io::kLLM), "");
  m.llm = std::make_unique<dl::models::Llama>(dir.config().llm, m.params);
  return m;
}

std::vector<int64_t> parse_ids(const std::string& path) {
  std::ifstream f(path);
  DL_CHECK(f, "cannot open prompt file '", path, "'");
  std::stringstream text;
  text << f.rdbuf();
  std::string s = text.str();
  std::replace_if(s.begin(), s.end(), [](char c) { return c == '[' || c == ']' || c == ','; }, ' ');
  std::istringstream in(s);
  std::vector<int64_t> ids;
  for (int64_t id; in >> id;) ids.push_back(id);
  DL_CHECK(in.eof(), "prompt file '", path, "' is not a JSON array of token ids");
  return ids;
}

// Positive counts, comma-separated ("64,512").
std::vector<int64_t> parse_counts(const std::string& flag, const std::string& s) {
  std::vector<int64_t> out;
  std::istringstream in(s);
  for (std::string item; std::getline(in, item, ',');) {
    size_t used = 0;
    int64_t v = 0;
    try {
      v = std::stoll(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    DL_CHECK(used == item.size() && v > 0, flag, ": '", item, "' is not a positive count");
    out.push_back(v);
  }
  DL_CHECK(!out.empty(), flag, ": no count given");
  return out;
}

dl::Tensor ids_tensor(const std::vector<int64_t>& ids, size_t begin, size_t end) {
  return dl::Tensor::from_vector_i64(std::vector<int64_t>(ids.begin() + begin, ids.begin() + end),
                                     {1, int64_t(end - begin)});
}

// Logits [V] of the last position of hidden states [1, T, D].
std::vector<float> last_logits(const dl::models::Llama& llm, const dl::nn::Var& hidden) {
  const int64_t T = hidden.value().shape()[1];
  return llm.logits(dl::nn::Var(hidden.value().slice(1, T - 1, T).contiguous())).value().to_vector();
}

int64_t argmax(const std::vector<float>& v) { return std::max_element(v.begin(), v.end()) - v.begin(); }

// One greedy decoding step: the most likely token of `logits` goes through the model; returns the next logits.
std::vector<float> greedy_step(const dl::models::Llama& llm, const std::vector<float>& logits,
                               dl::models::KVCache& cache) {
  const dl::Tensor next = dl::Tensor::from_vector_i64({argmax(logits)}, {1, 1});
  return last_logits(llm, llm.forward(llm.embed(next), dl::Tensor(), &cache));
}

struct Bench {
  LoadedLlama model;
  std::vector<int64_t> prompt;
};
Bench* g_bench = nullptr;

void prefill(benchmark::State& state, int64_t P) {
  dl::set_num_threads(int(state.range(0)));
  dl::nn::NoGradGuard no_grad;
  const dl::models::Llama& llm = *g_bench->model.llm;
  const dl::Tensor ids = ids_tensor(g_bench->prompt, 0, size_t(P));
  for (auto _ : state) {
    dl::models::KVCache cache;
    benchmark::DoNotOptimize(last_logits(llm, llm.forward(llm.embed(ids), dl::Tensor(), &cache)));
  }
  state.counters["tokens/s"] = benchmark::Counter(double(P), benchmark::Counter::kIsIterationInvariantRate);
}

void decode(benchmark::State& state, int64_t N) {
  dl::set_num_threads(int(state.range(0)));
  dl::nn::NoGradGuard no_grad;
  const dl::models::Llama& llm = *g_bench->model.llm;
  const dl::Tensor start = ids_tensor(g_bench->prompt, 0, 64);
  for (auto _ : state) {
    state.PauseTiming();
    dl::models::KVCache cache;
    std::vector<float> logits = last_logits(llm, llm.forward(llm.embed(start), dl::Tensor(), &cache));
    state.ResumeTiming();
    for (int64_t i = 0; i < N; ++i) logits = greedy_step(llm, logits, cache);
    benchmark::DoNotOptimize(logits);
  }
  state.counters["tokens/s"] = benchmark::Counter(double(N), benchmark::Counter::kIsIterationInvariantRate);
}

// Memory read bandwidth, the bound of decoding (each weight is read once per token): a 1 GiB buffer read through
// the engine's dot product (several independent vector accumulators, so the adds never bound the reads), split over
// the threads as the kernels split their rows.
void memory_read(benchmark::State& state) {
  dl::set_num_threads(int(state.range(0)));
  static const std::vector<float> buffer(size_t(1) << 28, 1.f);
  const int64_t chunk = int64_t(1) << 16;
  const int64_t chunks = int64_t(buffer.size()) / chunk;
  std::vector<float> partial(static_cast<size_t>(chunks));
  for (auto _ : state) {
    dl::parallel_for(chunks, 16, [&](int64_t c0, int64_t c1) {
      for (int64_t c = c0; c < c1; ++c) {
        const float* p = buffer.data() + c * chunk;
        partial[size_t(c)] = dl::vec::dot(p, p, chunk);  // the same lines twice: one read from memory
      }
    });
    benchmark::DoNotOptimize(partial.data());
  }
  state.counters["GB/s"] = benchmark::Counter(double(buffer.size() * sizeof(float)) / 1e9,
                                              benchmark::Counter::kIsIterationInvariantRate);
}

void write_check(const std::string& path) {
  dl::nn::NoGradGuard no_grad;
  const dl::models::Llama& llm = *g_bench->model.llm;
  dl::models::KVCache cache;
  std::vector<float> logits =
      last_logits(llm, llm.forward(llm.embed(ids_tensor(g_bench->prompt, 0, 16)), dl::Tensor(), &cache));
  const float top = *std::max_element(logits.begin(), logits.end());
  double sum = 0;
  for (float l : logits) sum += std::exp(double(l) - top);
  std::vector<int64_t> order(logits.size());
  std::iota(order.begin(), order.end(), 0);
  std::partial_sort(order.begin(), order.begin() + 8, order.end(),
                    [&](int64_t a, int64_t b) { return logits[a] > logits[b]; });
  std::ofstream f(path);
  DL_CHECK(f, "cannot write '", path, "'");
  f << "{\"top\":[";
  for (int i = 0; i < 8; ++i)
    f << (i ? "," : "") << "[" << order[i] << "," << std::exp(double(logits[order[i]]) - top) / sum << "]";
  f << "],\"greedy\":[";
  for (int i = 0; i < 16; ++i) {
    f << (i ? "," : "") << argmax(logits);
    logits = greedy_step(llm, logits, cache);
  }
  f << "]}\n";
}

}  // namespace

int main(int argc, char** argv) {
  std::string model, prompt, check, prefill_list = "64,512", decode_count = "32";
  std::vector<char*> rest{argv[0]};
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&](const char* flag) { return a.rfind(flag, 0) == 0 ? a.substr(std::string(flag).size()) : ""; };
    if (auto v = value("--model="); !v.empty()) model = v;
    else if (auto v = value("--prompt="); !v.empty()) prompt = v;
    else if (auto v = value("--check="); !v.empty()) check = v;
    else if (auto v = value("--prefill="); !v.empty()) prefill_list = v;
    else if (auto v = value("--decode="); !v.empty()) decode_count = v;
    else rest.push_back(argv[i]);
  }
  if (model.empty() || prompt.empty()) {
    std::fprintf(stderr, "usage: dl_bench_llm --model=PATH --prompt=prompt.json [--prefill=64,512] [--decode=32] "
                         "[--check=FILE] [benchmark flags]\n");
    return 2;
  }
  try {
    static Bench bench{load(model), parse_ids(prompt)};
    g_bench = &bench;
    const std::vector<int64_t> lengths = parse_counts("--prefill", prefill_list);
    const std::vector<int64_t> decode_tokens = parse_counts("--decode", decode_count);
    DL_CHECK(decode_tokens.size() == 1, "--decode: one count, not ", decode_count);
    const int64_t needed = std::max<int64_t>(64, *std::max_element(lengths.begin(), lengths.end()));
    DL_CHECK(int64_t(bench.prompt.size()) >= needed, "prompt file '", prompt, "' holds ", bench.prompt.size(),
             " ids; the cases need ", needed);
    if (!check.empty()) write_check(check);
    for (int64_t P : lengths)
      benchmark::RegisterBenchmark(("ours/llm_prefill/P" + std::to_string(P)).c_str(), prefill, P)
          ->ArgName("t")->Arg(1)->Arg(2)->UseRealTime()->Unit(benchmark::kMillisecond)->MinTime(2.0);
    benchmark::RegisterBenchmark(("ours/llm_decode/N" + std::to_string(decode_tokens[0])).c_str(), decode,
                                 decode_tokens[0])
        ->ArgName("t")->Arg(1)->Arg(2)->UseRealTime()->Unit(benchmark::kMillisecond)->MinTime(2.0);
    benchmark::RegisterBenchmark("ours/memory_read/1GiB", memory_read)
        ->ArgName("t")->Arg(1)->Arg(2)->UseRealTime()->Unit(benchmark::kMillisecond)->MinTime(1.0);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "dl_bench_llm: %s\n", e.what());
    return 1;
  }
  int n = int(rest.size());
  benchmark::Initialize(&n, rest.data());
  if (benchmark::ReportUnrecognizedArguments(n, rest.data())) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
