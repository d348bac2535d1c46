// What each weight type costs in accuracy, in the spirit of llama-perplexity --kl-divergence: the LLM of a model is
// run once with its weights in F32 (the reference) and once per weight type with every matrix quantized the way
// `dreamllm convert` stores it, over the same token sequences; per position the KL divergence of the next-token
// distribution from the reference's and whether the most likely token is the same are collected.
//
//   dl_quant_accuracy --model=PATH (--text=FILE | --random=N) [--types=q8_0,q4_0,q4_k,q6_k,q4_k_m,q8_mix]
//                     [--context=128] [--positions=512] [--mode=decode|prefill] [--threads=N]
//
// --text: a UTF-8 file whose lines are documents (tokenized with the model's tokenizer, cut into --context-token
// chunks); --random=N: N sequences of random ids (for random-weight models, which have no meaningful text).
// --mode=decode feeds one token at a time through an F32 KV cache (ops::linear's single-row kernels: what a user
// generating text runs); prefill runs each chunk in one forward (the multi-row kernels). Types are assigned as
// `dreamllm convert` assigns them (docs/gguf.md): every matrix at the type, norms F32; q4_k_m puts lm_head, and
// v_proj/down_proj in llama.cpp's "more bits" layers, in Q6_K; q8_mix keeps the embeddings and lm_head F16; a
// matrix whose rows are not a whole number of the type's blocks falls back to Q8_0 (K types, when the rows fit
// 32-blocks) or F16, counted in the table.
// Prints a Markdown table: type, bits per weight of the matrices, fallbacks, positions, mean/p99/max KLD, top-1 agreement.
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
#include "core/random.h"
#include "core/tensor.h"
#include "core/thread_pool.h"
#include "io/model_dir.h"
#include "models/llama.h"
#include "nn/autograd.h"
#include "text/tokenizer.h"

namespace {

using dl::DType;
using dl::Tensor;

struct Options {
  std::string model, text, types = "q8_0,q4_0,q4_k,q6_k,q4_k_m,q8_mix", mode = "decode";
  int64_t random = 0, context = 128, positions = 512, threads = 0;
};

bool ends_with(const std::string& s, const std::string& tail) {
  return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
}

// llama.cpp's use_more_bits: the first and last eighth of the layers and every third one between.
bool more_bits_layer(int64_t i, int64_t n) { return i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2; }

int64_t layer_of(const std::string& name) {
  const std::string p = "model.layers.";
  if (name.rfind(p, 0) != 0) return -1;
  return std::stoll(name.substr(p.size()));
}

// The storage type of one LLM tensor under `type` (F32 when it stays unquantized).
DType type_for(const std::string& name, const Tensor& t, const std::string& type, int64_t layers) {
  if (t.dim() != 2) return DType::F32;
  if (type == "q8_mix")
    return name == "lm_head.weight" || name.find("embed_tokens") != std::string::npos ? DType::F16 : DType::Q8_0;
  if (type == "q4_k_m") {
    const int64_t l = layer_of(name);
    const bool bump = name == "lm_head.weight" || ((ends_with(name, "v_proj.weight") ||
                                                    ends_with(name, "down_proj.weight")) &&
                                                   more_bits_layer(l, layers));
    return bump ? DType::Q6_K : DType::Q4_K;
  }
  return dl::parse_dtype(type);
}

struct Quantized {
  dl::io::StateDict weights;
  int64_t fallbacks = 0;
  double quantized_bytes = 0, quantized_params = 0;
};

Quantized quantize(const dl::io::StateDict& ref, const std::string& type, int64_t layers) {
  Quantized q;
  for (const auto& [name, t] : ref) {
    DType dt = type_for(name, t, type, layers);
    if (dt != DType::F32 && t.size(1) % int64_t(dl::dtype_info(dt).block_elems) != 0) {
      dt = dl::dtype_info(dt).block_elems > 32 && t.size(1) % 32 == 0 ? DType::Q8_0 : DType::F16;
      ++q.fallbacks;
    }
    q.weights[name] = dt == DType::F32 ? t : t.to(dt);
    if (t.dim() == 2 && dt != DType::F32) {
      q.quantized_bytes += double(q.weights[name].nbytes());
      q.quantized_params += double(t.numel());
    }
  }
  return q;
}

// Log-probabilities [positions, V] of the next token after each position of every sequence.
std::vector<std::vector<float>> next_token_logprobs(const dl::io::LlamaConfig& config, const dl::io::StateDict& w,
                                                    const std::vector<std::vector<int64_t>>& sequences,
                                                    const std::string& mode, int64_t max_positions) {
  dl::models::ParameterSet params;
  params.adopt(w, "");
  const dl::models::Llama llm(config, params);
  dl::nn::NoGradGuard no_grad;
  std::vector<std::vector<float>> out;
  auto collect = [&](const Tensor& logits) {  // [T, V]
    const int64_t T = logits.size(0), V = logits.size(1);
    const std::vector<float> l = logits.contiguous().to_vector();
    for (int64_t t = 0; t < T && int64_t(out.size()) < max_positions; ++t) {
      const float* row = l.data() + t * V;
      const float m = *std::max_element(row, row + V);
      double z = 0;
      for (int64_t v = 0; v < V; ++v) z += std::exp(double(row[v]) - m);
      const float lz = float(std::log(z)) + m;
      std::vector<float> lp(static_cast<size_t>(V));
      for (int64_t v = 0; v < V; ++v) lp[size_t(v)] = row[v] - lz;
      out.push_back(std::move(lp));
    }
  };
  for (const auto& seq : sequences) {
    if (int64_t(out.size()) >= max_positions) break;
    const int64_t T = int64_t(seq.size());
    if (mode == "prefill") {
      const Tensor ids = Tensor::from_vector_i64(seq, {1, T});
      collect(llm.logits(llm.forward(llm.embed(ids), Tensor())).value().select(0, 0));
    } else {
      dl::models::KVCache cache;
      cache.types = {DType::F32, DType::F32};  // the weights' error alone
      for (int64_t t = 0; t < T && int64_t(out.size()) < max_positions; ++t) {
        const Tensor id = Tensor::from_vector_i64({seq[size_t(t)]}, {1, 1});
        collect(llm.logits(llm.forward(llm.embed(id), Tensor(), &cache)).value().select(0, 0));
      }
    }
  }
  return out;
}

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  std::istringstream in(s);
  for (std::string item; std::getline(in, item, sep);)
    if (!item.empty()) out.push_back(item);
  return out;
}

int run(const Options& o) {
  if (o.threads > 0) dl::set_num_threads(int(o.threads));
  const dl::io::ModelDir dir = dl::io::ModelDir::open(o.model);
  const dl::io::LlamaConfig& config = dir.config().llm;
  dl::io::StateDict ref = dir.load(dl::io::kLLM);
  for (auto& [name, t] : ref) t = t.to(DType::F32);

  std::vector<std::vector<int64_t>> sequences;
  if (!o.text.empty()) {
    const dl::text::Tokenizer tok = dl::text::Tokenizer::load(o.model);
    std::ifstream f(o.text);
    DL_CHECK(f, "cannot open '", o.text, "'");
    std::vector<int64_t> all;
    for (std::string line; std::getline(f, line);) {
      if (line.empty()) continue;
      for (int32_t id : tok.encode(line)) all.push_back(id);
    }
    for (size_t i = 0; i + 1 < all.size(); i += size_t(o.context))
      sequences.emplace_back(all.begin() + i, all.begin() + std::min(all.size(), i + size_t(o.context)));
  } else {
    dl::Rng rng(1234);
    for (int64_t s = 0; s < o.random; ++s) {
      std::vector<int64_t> seq{1};
      while (int64_t(seq.size()) < o.context) seq.push_back(3 + int64_t(rng.below(uint64_t(config.vocab_size - 3))));
      sequences.push_back(seq);
    }
  }
  DL_CHECK(!sequences.empty(), "no token sequences (give --text with some lines or --random N)");

  const auto reference = next_token_logprobs(config, ref, sequences, o.mode, o.positions);
  std::printf("model: %s (%lld layers, hidden %lld, vocabulary %lld); %zu positions, %s mode; reference: F32\n\n",
              o.model.c_str(), (long long)config.num_hidden_layers, (long long)config.hidden_size,
              (long long)config.vocab_size, reference.size(), o.mode.c_str());
  std::printf("| type | bits/weight | fallbacks | mean KLD | p99 KLD | max KLD | top-1 agreement |\n");
  std::printf("|---|---:|---:|---:|---:|---:|---:|\n");
  for (const std::string& type : split(o.types, ',')) {
    const Quantized q = quantize(ref, type, config.num_hidden_layers);
    const auto got = next_token_logprobs(config, q.weights, sequences, o.mode, o.positions);
    std::vector<double> kld;
    int64_t same = 0;
    for (size_t p = 0; p < reference.size(); ++p) {
      const auto& r = reference[p];
      const auto& g = got[p];
      double d = 0;
      for (size_t v = 0; v < r.size(); ++v) d += std::exp(double(r[v])) * (double(r[v]) - double(g[v]));
      kld.push_back(std::max(d, 0.0));
      same += std::max_element(r.begin(), r.end()) - r.begin() == std::max_element(g.begin(), g.end()) - g.begin();
    }
    std::vector<double> sorted = kld;
    std::sort(sorted.begin(), sorted.end());
    const double mean = std::accumulate(kld.begin(), kld.end(), 0.0) / double(kld.size());
    const double p99 = sorted[std::min(sorted.size() - 1, size_t(0.99 * double(sorted.size())))];
    std::printf("| %s | %.2f | %lld | %.6f | %.6f | %.6f | %.2f%% |\n", type.c_str(),
                q.quantized_params > 0 ? 8 * q.quantized_bytes / q.quantized_params : 0.0, (long long)q.fallbacks,
                mean, p99, sorted.back(), 100.0 * double(same) / double(kld.size()));
    std::fflush(stdout);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&](const char* flag, std::string& out) {
      if (a.rfind(flag, 0) != 0) return false;
      out = a.substr(std::string(flag).size());
      return true;
    };
    std::string v;
    try {
      if (value("--model=", o.model) || value("--text=", o.text) || value("--types=", o.types) ||
          value("--mode=", o.mode))
        continue;
      if (value("--random=", v)) o.random = std::stoll(v);
      else if (value("--context=", v)) o.context = std::stoll(v);
      else if (value("--positions=", v)) o.positions = std::stoll(v);
      else if (value("--threads=", v)) o.threads = std::stoll(v);
      else throw std::invalid_argument(a);
    } catch (const std::exception&) {
      std::fprintf(stderr, "dl_quant_accuracy: bad argument '%s'\n", a.c_str());
      return 2;
    }
  }
  if (o.model.empty() || (o.text.empty() == (o.random <= 0)) || o.context < 2 || o.positions < 1 ||
      (o.mode != "decode" && o.mode != "prefill")) {
    std::fprintf(stderr, "usage: dl_quant_accuracy --model=PATH (--text=FILE | --random=N) [--types=q8_0,...] "
                         "[--context=128] [--positions=512] [--mode=decode|prefill] [--threads=N]\n");
    return 2;
  }
  try {
    return run(o);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "dl_quant_accuracy: %s\n", e.what());
    return 1;
  }
}
