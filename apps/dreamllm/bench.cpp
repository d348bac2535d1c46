// `dreamllm bench llm|clip|unet|vae`: speed of one part of a model on its real weights with random inputs (fixed
// seed), in the spirit of llama.cpp's llama-bench. Plain output is a Markdown table like llama-bench's; --json prints
// an array of records in llama-bench's JSON shape (its field names and types, samples_ns / samples_ts per
// repetition) so tools written for llama-bench read them, plus load_ms, peak_rss_bytes and (llm prompt tests)
// first_token_ms.
//   llm:  pp<P>: P prompt tokens into an empty KV cache (one forward, the last position's logits), as llama-bench's
//         prompt test; tg<N> @ d<P>: N one-token steps after that prompt (each with its logits), as llama-bench's
//         generation test at depth P. tokens/s = tokens / time.
//   clip: images/s through the vision tower and projector (batch -b).
//   unet: one denoising step (a UNet forward of -b images, each twice with --cfg, as guided sampling runs), steps/s
//         and s/step.
//   vae:  images/s decoding -b latents of -W x -H pixels at once (--tiled: the tiled decoder).
//   create: images/s of the whole `dreamllm create` pipeline (prompt conditions, sampling, decoding), s/image.
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <numeric>
#include <random>
#include <thread>

#include "cli_common.h"
#include "core/error.h"
#include "core/random.h"
#include "core/thread_pool.h"
#include "io/gguf_model.h"
#include "models/clip_vision.h"
#include "models/llama.h"
#include "nn/autograd.h"
#include "nn/functional.h"
#include "pipelines/create.h"

#ifndef DL_BUILD_COMMIT
#define DL_BUILD_COMMIT "unknown"
#endif

namespace dl::app {

namespace {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

uint64_t peak_rss_bytes() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return uint64_t(u.ru_maxrss) * 1024;  // Linux reports kilobytes
}

std::string cpu_info() {
  std::ifstream f("/proc/cpuinfo");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("model name", 0) != 0) continue;
    const auto colon = line.find(':');
    if (colon != std::string::npos) return line.substr(line.find_first_not_of(' ', colon + 1));
  }
  return "unknown";
}

std::string lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = char(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

// What a record says about the model: llama-bench's model_type ("llama 7B Q4_0": architecture, size class, the type
// holding most of the weight bytes), size and parameter count.
struct ModelFacts {
  std::string filename, type;
  uint64_t size = 0, n_params = 0;
};

ModelFacts facts_of(const std::string& path, const std::string& arch, const io::StateDict& weights) {
  ModelFacts f;
  f.filename = path;
  std::map<std::string, uint64_t> bytes_by_type;
  for (const auto& [name, t] : weights) {
    f.size += t.nbytes();
    f.n_params += uint64_t(t.numel());
    if (t.dim() >= 2) bytes_by_type[std::string(dtype_name(t.dtype()))] += t.nbytes();
  }
  std::string main_type = "F32";
  uint64_t most = 0;
  for (const auto& [type, b] : bytes_by_type)
    if (b > most) most = b, main_type = type;
  char size_class[32];
  const double n = double(f.n_params);
  if (n >= 1e9)
    std::snprintf(size_class, sizeof size_class, "%.0fB", n / 1e9);
  else if (n >= 1e6)
    std::snprintf(size_class, sizeof size_class, "%.0fM", n / 1e6);
  else
    std::snprintf(size_class, sizeof size_class, "%.0fK", n / 1e3);
  f.type = arch + " " + size_class + " " + main_type;
  return f;
}

// One llama-bench record: a test's settings and its per-repetition times.
struct Record {
  ModelFacts model;
  int threads = 0;
  int64_t n_prompt = 0, n_gen = 0, n_depth = 0, n_batch = 0;
  int64_t items = 0;  // what a repetition produces: tokens (llm), images (clip, vae) or steps (unet)
  std::string test, unit, test_time;
  std::vector<uint64_t> samples_ns;
  double load_ms = 0;
  json extra = json::object();

  std::vector<double> samples_ts() const {
    std::vector<double> ts;
    for (uint64_t ns : samples_ns) ts.push_back(1e9 * double(items) / double(ns));
    return ts;
  }
};

template <typename T>
double mean(const std::vector<T>& v) {
  return v.empty() ? 0.0 : std::accumulate(v.begin(), v.end(), 0.0) / double(v.size());
}

// The sample standard deviation, as llama-bench computes it (0 for fewer than two samples).
template <typename T>
double stddev(const std::vector<T>& v) {
  if (v.size() <= 1) return 0.0;
  const double m = mean(v);
  double s = 0;
  for (T x : v) s += (double(x) - m) * (double(x) - m);
  return std::sqrt(s / double(v.size() - 1));
}

json to_json(const Record& r) {
  const models::KVCacheTypes kv = models::default_kv_cache_types();
  const std::vector<double> ts = r.samples_ts();
  // Field order and types follow llama-bench's test::get_fields / get_field_type.
  json j = json::object();
  j["build_commit"] = std::string(DL_BUILD_COMMIT).empty() ? "unknown" : DL_BUILD_COMMIT;
  j["build_number"] = 0;
  j["cpu_info"] = cpu_info();
  j["gpu_info"] = "";
  j["backends"] = "CPU";
  j["model_filename"] = r.model.filename;
  j["model_type"] = r.model.type;
  j["model_size"] = r.model.size;
  j["model_n_params"] = r.model.n_params;
  j["n_batch"] = r.n_batch;
  j["n_ubatch"] = r.n_batch;
  j["n_threads"] = r.threads;
  j["cpu_mask"] = "0x0";
  j["cpu_strict"] = false;
  j["poll"] = 0;
  j["type_k"] = lower(dtype_name(kv.key));
  j["type_v"] = lower(dtype_name(kv.value));
  j["n_gpu_layers"] = 0;
  j["n_cpu_moe"] = 0;
  j["split_mode"] = "none";
  j["main_gpu"] = 0;
  j["no_kv_offload"] = false;
  j["flash_attn"] = 0;
  j["devices"] = "none";
  j["tensor_split"] = "0.00";
  j["tensor_buft_overrides"] = "none";
  j["use_mmap"] = io::is_gguf_model_path(r.model.filename);
  j["embeddings"] = false;
  j["no_op_offload"] = 0;
  j["no_host"] = false;
  j["fit_target"] = 0;
  j["fit_min_ctx"] = 0;
  j["n_prompt"] = r.n_prompt;
  j["n_gen"] = r.n_gen;
  j["n_depth"] = r.n_depth;
  j["test_time"] = r.test_time;
  j["avg_ns"] = uint64_t(std::llround(mean(r.samples_ns)));
  j["stddev_ns"] = uint64_t(std::llround(stddev(r.samples_ns)));
  j["avg_ts"] = mean(ts);
  j["stddev_ts"] = stddev(ts);
  j["samples_ns"] = r.samples_ns;
  j["samples_ts"] = ts;
  // Beyond llama-bench's fields (its readers ignore unknown keys).
  j["test"] = r.test;
  j["unit"] = r.unit;
  j["load_ms"] = r.load_ms;
  j["peak_rss_bytes"] = peak_rss_bytes();
  for (const auto& [k, v] : r.extra.items()) j[k] = v;
  return j;
}

std::string human_bytes(double b) {
  char buf[32];
  std::snprintf(buf, sizeof buf, b >= double(1 << 30) ? "%.2f GiB" : "%.2f MiB",
                b / (b >= double(1 << 30) ? double(1 << 30) : double(1 << 20)));
  return buf;
}

std::string human_params(double n) {
  char buf[32];
  if (n >= 1e9)
    std::snprintf(buf, sizeof buf, "%.2f B", n / 1e9);
  else if (n >= 1e6)
    std::snprintf(buf, sizeof buf, "%.2f M", n / 1e6);
  else
    std::snprintf(buf, sizeof buf, "%.2f K", n / 1e3);
  return buf;
}

void print_markdown(const std::vector<Record>& records, const std::string& value_title) {
  std::printf("| %-30s | %10s | %10s | %-7s | %7s | %15s | %20s |\n", "model", "size", "params", "backend", "threads",
              "test", value_title.c_str());
  std::printf("| %s | %s: | %s: | %s | %s: | %s: | %s: |\n", std::string(30, '-').c_str(), std::string(9, '-').c_str(),
              std::string(9, '-').c_str(), std::string(7, '-').c_str(), std::string(6, '-').c_str(),
              std::string(14, '-').c_str(), std::string(19, '-').c_str());
  for (const Record& r : records) {
    const std::vector<double> ts = r.samples_ts();
    char value[64];
    if (r.unit == "steps/s" || r.test.rfind("create", 0) == 0)  // seconds each: the time reads better than the rate
      std::snprintf(value, sizeof value, "%.3f ± %.3f", mean(r.samples_ns) / 1e9 / double(r.items),
                    stddev(r.samples_ns) / 1e9 / double(r.items));
    else
      std::snprintf(value, sizeof value, "%.2f ± %.2f", mean(ts), stddev(ts));
    std::printf("| %-30s | %10s | %10s | %-7s | %7d | %15s | %20s |\n", r.model.type.c_str(),
                human_bytes(double(r.model.size)).c_str(), human_params(double(r.model.n_params)).c_str(), "CPU",
                r.threads, r.test.c_str(), value);
  }
  if (records.empty()) return;
  std::printf("\nload %.2f s", records.front().load_ms / 1000.0);
  if (records.front().extra.contains("first_token_ms"))
    std::printf(", first prompt's logits %.2f s after opening the model",
                records.front().extra["first_token_ms"].get<double>() / 1000.0);
  std::printf(", peak RSS %s, CPU: %s\n", human_bytes(double(peak_rss_bytes())).c_str(), cpu_info().c_str());
}

std::string now_rfc3339() {
  char buf[32];
  const std::time_t t = std::time(nullptr);
  std::strftime(buf, sizeof buf, "%FT%TZ", std::gmtime(&t));
  return buf;
}

// A record of `facts` at `threads` threads, stamped now, with the model's load time; the caller sets the test.
Record record_of(const ModelFacts& facts, int threads, double load_ms) {
  Record r;
  r.model = facts;
  r.threads = threads;
  r.test_time = now_rfc3339();
  r.load_ms = load_ms;
  return r;
}

// Options every bench shares.
struct Common {
  std::string model;
  std::vector<int> threads;
  int64_t reps = 5;
  int64_t seed = 42;
  bool json = false;
  void add_to(CLI::App& app, bool with_seed = true) {
    app.add_option("-m,--model", model, "model directory or converted .gguf")->required();
    app.add_option("-t,--threads", threads, "thread counts to run, comma-separated (default: all cores)")
        ->delimiter(',')
        ->check(CLI::Range(1, 1 << 16));
    app.add_option("-r,--repetitions", reps, "timed repetitions per test")
        ->check(CLI::Range(int64_t(1), int64_t(1000)))
        ->capture_default_str();
    if (with_seed)
      app.add_option("--seed", seed, "seed of the random inputs")->check(CLI::Range(int64_t(0), INT64_MAX))
          ->capture_default_str();
    app.add_flag("--json", json, "print llama-bench JSON records instead of a table");
  }
  std::vector<int> thread_list() const {
    return threads.empty() ? std::vector<int>{int(std::max(1u, std::thread::hardware_concurrency()))} : threads;
  }
};

// Runs `once` reps times after one untimed warm-up, returning each repetition's nanoseconds.
template <typename F>
std::vector<uint64_t> time_reps(int64_t reps, F once) {
  once();  // warm-up: first-touch of the weights, the kernels' buffers, the thread pool
  std::vector<uint64_t> ns;
  for (int64_t i = 0; i < reps; ++i) ns.push_back(once());
  return ns;
}

template <typename F>
uint64_t timed(F body) {
  const auto t0 = Clock::now();
  body();
  return uint64_t(std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - t0).count());
}

// --- llm -----------------------------------------------------------------------------------------------------

std::vector<Record> bench_llm(const Common& c, int64_t P, int64_t N) {
  nn::NoGradGuard inference;
  const auto t0 = Clock::now();
  const io::ModelDir dir = open_model_dir(c.model);
  const io::LlamaConfig& lc = dir.config().llm;
  DL_CHECK(P + N <= lc.max_position_embeddings, "-p ", P, " + -n ", N, " = ", P + N,
           " positions; the model supports ", lc.max_position_embeddings);
  const io::StateDict weights = dir.load(io::kLLM);
  models::ParameterSet params;
  params.adopt(weights, "");
  const models::Llama llm(lc, params);
  const double load_ms = seconds_since(t0) * 1000;
  const ModelFacts facts = facts_of(c.model, "llama", weights);

  Rng rng(uint64_t(c.seed));
  std::vector<int64_t> prompt(static_cast<size_t>(std::max<int64_t>(P, 1))), gen(static_cast<size_t>(N));
  for (auto& id : prompt) id = int64_t(rng.below(uint64_t(lc.vocab_size)));
  for (auto& id : gen) id = int64_t(rng.below(uint64_t(lc.vocab_size)));
  const Tensor prompt_ids = Tensor::from_vector_i64(prompt, {1, int64_t(prompt.size())});
  auto last_logits = [&](const nn::Var& hidden) {
    const int64_t T = hidden.value().size(1);
    return llm.logits(nn::Var(hidden.value().slice(1, T - 1, T).contiguous())).value();
  };

  // From opening the model to the first prompt's logits (the first test's warm-up run): what a user waits for
  // before the first generated token, page faults of mapped weights included.
  double first_token_ms = -1;
  std::vector<Record> out;
  for (int threads : c.thread_list()) {
    set_num_threads(threads);
    auto record = [&](const std::string& test, int64_t np, int64_t ng, int64_t depth) {
      Record r = record_of(facts, threads, load_ms);
      r.n_prompt = np;
      r.n_gen = ng;
      r.n_depth = depth;
      r.n_batch = P;
      r.items = np + ng;
      r.test = test;
      r.unit = "tokens/s";
      return r;
    };
    if (P > 0) {
      Record r = record("pp" + std::to_string(P), P, 0, 0);
      r.samples_ns = time_reps(c.reps, [&] {
        models::KVCache cache;
        const uint64_t ns = timed([&] { last_logits(llm.forward(llm.embed(prompt_ids), Tensor(), &cache)); });
        if (first_token_ms < 0) first_token_ms = seconds_since(t0) * 1000;
        return ns;
      });
      r.extra["first_token_ms"] = first_token_ms;
      out.push_back(std::move(r));
    }
    if (N > 0) {
      Record r = record("tg" + std::to_string(N) + (P > 0 ? " @ d" + std::to_string(P) : ""), 0, N, P);
      r.samples_ns = time_reps(c.reps, [&] {
        models::KVCache cache;
        if (P > 0) last_logits(llm.forward(llm.embed(prompt_ids), Tensor(), &cache));  // untimed: the depth
        return timed([&] {
          for (int64_t i = 0; i < N; ++i) {
            const Tensor id = Tensor::from_vector_i64({gen[size_t(i)]}, {1, 1});
            last_logits(llm.forward(llm.embed(id), Tensor(), &cache));
          }
        });
      });
      out.push_back(std::move(r));
    }
  }
  return out;
}

// --- clip ----------------------------------------------------------------------------------------------------

std::vector<Record> bench_clip(const Common& c, int64_t batch) {
  nn::NoGradGuard inference;
  const auto t0 = Clock::now();
  const io::ModelDir dir = open_model_dir(c.model);
  if (!dir.has(io::kClip)) models::fail_no_vision(c.model, "bench clip");
  const io::StateDict weights = dir.load(io::kClip);
  models::ParameterSet params;
  params.adopt(weights, "");
  const models::ClipVision vision(dir.clip_config(), params, "model.clip_vision_embedding.clip_vision_model.");
  const nn::Var& w = params.at("model.clip_vision_embedding.projector.projector.weight");
  const nn::Var& b = params.at("model.clip_vision_embedding.projector.projector.bias");
  const double load_ms = seconds_since(t0) * 1000;
  const io::ClipVisionConfig& cc = dir.clip_config();
  ModelFacts facts = facts_of(c.model, "clip", weights);
  Rng rng(uint64_t(c.seed));
  const nn::Var pixels(rng.randn({batch, cc.num_channels, cc.image_size, cc.image_size}));
  std::vector<Record> out;
  for (int threads : c.thread_list()) {
    set_num_threads(threads);
    Record r = record_of(facts, threads, load_ms);
    r.n_batch = batch;
    r.items = batch;
    r.test = "clip " + std::to_string(cc.image_size) + "px b" + std::to_string(batch);
    r.unit = "images/s";
    r.extra = {{"image_size", cc.image_size}, {"batch", batch}};
    r.samples_ns = time_reps(c.reps, [&] {
      return timed([&] { nn::linear(vision.features(pixels, dir.config().clip_select_layer), w, &b); });
    });
    out.push_back(std::move(r));
  }
  return out;
}

// --- unet / vae ----------------------------------------------------------------------------------------------

std::pair<int64_t, int64_t> latent_dims(const io::ModelDir& dir, int64_t width, int64_t height) {
  const int64_t f = dir.vae_config().scale_factor(), native = dir.unet_config().sample_size * f;
  const int64_t w = width > 0 ? width : native, h = height > 0 ? height : native;
  DL_CHECK(w % f == 0 && h % f == 0, "image size ", w, "x", h, " is not a multiple of ", f,
           " (the VAE's downsampling factor)");
  return {h / f, w / f};
}

std::vector<Record> bench_diffusion(const Common& c, bool unet, int64_t width, int64_t height, bool cfg, bool tiled,
                                    int64_t batch) {
  nn::NoGradGuard inference;
  const auto t0 = Clock::now();
  const io::ModelDir dir = open_model_dir(c.model);
  require_creation(dir, unet ? "bench unet" : "bench vae");
  // The size checks of drawing (memory, attention work), on the configs before the weights are read.
  DrawOptions draw;
  draw.width = width;
  draw.height = height;
  draw.cfg_scale = cfg ? 7.5f : 1.f;
  draw.tiled = tiled;
  draw.steps = 1;
  const auto [lh, lw] = latent_dims(dir, width, height);
  if (batch > 1) {  // the activations grow with the batch; latent_size below checks one image
    const DrawMemory one = estimate_draw_memory(dir.unet_config(), dir.vae_config(), lh, lw, cfg, tiled);
    const DrawMemory need{unet ? one.unet * double(batch) : 0.0, unet ? 0.0 : one.vae * double(batch)};
    const int64_t f = dir.vae_config().scale_factor();
    check_draw_memory(need, "a batch of " + std::to_string(batch) + " at " + std::to_string(lw * f) + "x" +
                                std::to_string(lh * f), tiled);
  }
  draw.latent_size(dir);
  const pipelines::DiffusionHead head(dir);
  const double load_ms = seconds_since(t0) * 1000;
  io::StateDict part;
  const std::string prefix = unet ? "stable_diffusion_head.unet." : "stable_diffusion_head.vae.";
  for (const auto& [n, v] : head.params.all())
    if (n.rfind(prefix, 0) == 0) part.emplace(n, v.value());
  const ModelFacts facts = facts_of(c.model, unet ? "unet" : "vae", part);
  const io::UNetConfig& uc = dir.unet_config();
  Rng rng(uint64_t(c.seed));
  const int64_t B = unet && cfg ? 2 * batch : batch;
  const int64_t latent_ch = dir.vae_config().latent_channels;
  const nn::Var sample(rng.randn({B, uc.in_channels, lh, lw}));
  const nn::Var context(rng.randn({B, dir.config().num_dream_queries, uc.cross_attention_dim}));
  const Tensor timesteps = Tensor::full({B}, 500.f);
  const Tensor latents = rng.randn({batch, latent_ch, lh, lw});
  const int64_t f = dir.vae_config().scale_factor();
  std::vector<Record> out;
  for (int threads : c.thread_list()) {
    set_num_threads(threads);
    Record r = record_of(facts, threads, load_ms);
    r.n_batch = B;
    r.items = unet ? 1 : batch;
    r.test = (unet ? "unet " : "vae ") + std::to_string(lw * f) + "x" + std::to_string(lh * f) +
             (unet && cfg ? " cfg" : "") + (!unet && tiled ? " tiled" : "") +
             (batch > 1 ? " b" + std::to_string(batch) : "");
    r.unit = unet ? "steps/s" : "images/s";
    r.extra = {{"width", lw * f}, {"height", lh * f}, {"batch", B}, {"images", batch}};
    if (unet) r.extra["cfg"] = cfg;
    else r.extra["tiled"] = tiled;
    r.samples_ns = time_reps(c.reps, [&] {
      return timed([&] {
        if (unet)
          head.unet.forward(sample, timesteps, context);
        else
          pipelines::decode_latents(head.vae, latents, tiled);
      });
    });
    r.extra["avg_seconds"] = mean(r.samples_ns) / 1e9;
    out.push_back(std::move(r));
  }
  return out;
}

// --- create --------------------------------------------------------------------------------------------------

// Each repetition is what `dreamllm create` does after reading its options (pipelines::create_images: the prompt's
// conditions, the negative branch, sampling, decoding, the 8-bit picture), for `count` images. No warm-up run: a
// picture takes minutes, and the first one is what a user waits for (the weights are already read then).
std::vector<Record> bench_create(const Common& c, const DrawOptions& draw, const std::string& prompt, int64_t count) {
  nn::NoGradGuard inference;
  const auto t0 = Clock::now();
  const auto latent = draw.latent_size(open_model_dir(c.model));
  const Model m(c.model, true);
  const double load_ms = seconds_since(t0) * 1000;
  io::StateDict part;
  for (const auto& [n, v] : m.head->params.all()) part.emplace(n, v.value());
  const ModelFacts facts = facts_of(c.model, "sd-head", part);
  pipelines::CreateRequest request;
  request.prompt_ids = m.tokenizer.encode(prompt);
  if (draw.cfg_scale > 1.f) request.negative_ids = m.tokenizer.encode(draw.negative);
  request.sampling = draw.sampling();
  request.latent_height = latent.first;
  request.latent_width = latent.second;
  request.seed = uint64_t(draw.seed);
  request.count = count;
  request.tiled_decode = draw.tiled;
  const int64_t f = m.dir.vae_config().scale_factor();
  std::vector<Record> out;
  for (int threads : c.thread_list()) {
    set_num_threads(threads);
    Record r = record_of(facts, threads, load_ms);
    r.n_batch = count;
    r.items = count;
    r.test = "create " + std::to_string(latent.second * f) + "x" + std::to_string(latent.first * f) + " " +
             draw.sampler + " " + std::to_string(draw.steps) + (draw.cfg_scale > 1.f ? " cfg" : "");
    r.unit = "images/s";
    r.extra = {{"width", latent.second * f}, {"height", latent.first * f}, {"images", count},
               {"steps", draw.steps}, {"sampler", draw.sampler}, {"cfg_scale", draw.cfg_scale},
               {"tiled", draw.tiled}, {"warmup", false}};
    for (int64_t i = 0; i < c.reps; ++i)
      r.samples_ns.push_back(timed([&] { pipelines::create_images(m.llm, *m.head, request, {}); }));
    r.extra["avg_seconds"] = mean(r.samples_ns) / 1e9;
    r.extra["seconds_per_image"] = mean(r.samples_ns) / 1e9 / double(count);
    out.push_back(std::move(r));
  }
  return out;
}

}  // namespace

int bench_main(int argc, char** argv) {
  CLI::App app("Measure the speed of a model's parts (llama-bench style; --json prints llama-bench records).", "bench");
  app.require_subcommand(1);
  Common llm_opts, clip_opts, unet_opts, vae_opts, create_opts;
  int64_t n_prompt = 512, n_gen = 128, batch = 1, width = 0, height = 0;
  bool cfg = false, tiled = false;
  CLI::App* llm = app.add_subcommand("llm", "prefill (pp) and decode (tg) tokens/s of the LLM");
  llm_opts.add_to(*llm);
  llm->add_option("-p,--n-prompt", n_prompt, "prompt tokens read into an empty KV cache (0: no prefill test)")
      ->check(CLI::Range(int64_t(0), int64_t(1) << 20))
      ->capture_default_str();
  llm->add_option("-n,--n-gen", n_gen, "tokens generated after the prompt (0: no decode test)")
      ->check(CLI::Range(int64_t(0), int64_t(1) << 20))
      ->capture_default_str();
  add_kv_cache_options(*llm);
  CLI::App* clip = app.add_subcommand("clip", "images/s through the vision tower and its projector");
  clip_opts.add_to(*clip);
  clip->add_option("-b,--batch", batch, "images per forward")->check(CLI::Range(int64_t(1), int64_t(256)))
      ->capture_default_str();
  CLI::App* unet = app.add_subcommand("unet", "seconds per denoising step (one UNet forward)");
  unet_opts.add_to(*unet);
  unet->add_option("-W,--width", width, "image width in pixels (default: the model's)")->check(kPositiveNumber);
  unet->add_option("-H,--height", height, "image height in pixels (default: the model's)")->check(kPositiveNumber);
  unet->add_flag("--cfg", cfg, "classifier-free guidance: batch 2 (prompt and negative), as guided sampling runs");
  unet->add_option("-b,--batch", batch, "images per UNet call (each twice with --cfg)")
      ->check(CLI::Range(int64_t(1), int64_t(64)))
      ->capture_default_str();
  CLI::App* vae = app.add_subcommand("vae", "images/s decoding latents with the VAE");
  vae_opts.add_to(*vae);
  vae->add_option("-W,--width", width, "image width in pixels (default: the model's)")->check(kPositiveNumber);
  vae->add_option("-H,--height", height, "image height in pixels (default: the model's)")->check(kPositiveNumber);
  vae->add_flag("--tiled", tiled, "the tiled decoder (bounded memory for large images)");
  vae->add_option("-b,--batch", batch, "latents decoded at once")->check(CLI::Range(int64_t(1), int64_t(64)))
      ->capture_default_str();
  CLI::App* create = app.add_subcommand("create", "seconds per image of the whole create pipeline");
  create_opts.reps = 1;
  create_opts.add_to(*create, false);  // --seed is the drawing's
  DrawOptions draw;
  std::string prompt = "a red circle on a white background";
  int64_t count = 1;
  draw.add_to(*create);
  create->add_option("-p,--prompt", prompt, "what to draw")->capture_default_str();
  create->add_option("-b,--batch-count", count, "images per repetition (image k uses seed + k), as create's -b")
      ->check(CLI::Range(int64_t(1), int64_t(1000)))
      ->capture_default_str();
  for (CLI::App* sub : {llm, clip, unet, vae, create}) sub->fallthrough(false);
  if (auto code = parse_or_exit(app, argc, argv)) return *code;
  if (llm->parsed() && n_prompt == 0 && n_gen == 0) {
    std::fprintf(stderr, "dreamllm bench: -p and -n are both 0: nothing to measure\n");
    return 2;
  }

  std::vector<Record> records;
  const Common* opts = nullptr;
  std::string title = "t/s";
  if (llm->parsed()) {
    opts = &llm_opts;
    records = bench_llm(llm_opts, n_prompt, n_gen);
  } else if (clip->parsed()) {
    opts = &clip_opts;
    title = "images/s";
    records = bench_clip(clip_opts, batch);
  } else if (unet->parsed()) {
    opts = &unet_opts;
    title = "s/step";
    records = bench_diffusion(unet_opts, true, width, height, cfg, false, batch);
  } else if (vae->parsed()) {
    opts = &vae_opts;
    title = "images/s";
    records = bench_diffusion(vae_opts, false, width, height, false, tiled, batch);
  } else {
    opts = &create_opts;
    title = "s/image";
    records = bench_create(create_opts, draw, prompt, count);
  }
  if (opts->json) {
    json arr = json::array();
    for (const Record& r : records) arr.push_back(to_json(r));
    std::printf("%s\n", arr.dump(2).c_str());
  } else {
    print_markdown(records, title);
  }
  return 0;
}

}  // namespace dl::app
