#include "cli_common.h"

#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "core/error.h"
#include "core/ops.h"
#include "io/gguf_model.h"
#include "io/image_file.h"
#include "pipelines/chat.h"
#include "pipelines/interleave.h"
#include "text/chat_template.h"

namespace dl::app {

int64_t max_threads() { return std::max<int64_t>(64, 4 * int64_t(std::max(1u, std::thread::hardware_concurrency()))); }

namespace {

// CLI11 converts numbers with strtoll/strtoull/strtod and checks neither overflow nor finiteness: "1e999" and
// "nan" pass a Range check (every comparison with NaN is false), an unsigned option takes "-1" as 2^64 - 1, and a
// signed one clamps 2^70 to 2^63 - 1. These validators refuse such values before CLI11 converts them.
std::string check_signed(const std::string& text) {
  if (text.empty()) return "";  // CLI11 itself reports a missing value
  errno = 0;
  char* end = nullptr;
  std::strtoll(text.c_str(), &end, 0);
  if (errno == ERANGE) return "'" + text + "' is out of range (a 64-bit integer)";
  return "";
}

std::string check_unsigned(const std::string& text) {
  if (text.empty()) return "";
  if (text.find('-') != std::string::npos) return "'" + text + "' is negative; this option takes a value >= 0";
  errno = 0;
  char* end = nullptr;
  std::strtoull(text.c_str(), &end, 0);
  if (errno == ERANGE) return "'" + text + "' is out of range (a 64-bit unsigned integer)";
  return "";
}

std::string check_finite(const std::string& text) {
  if (text.empty()) return "";
  char* end = nullptr;
  const double v = std::strtod(text.c_str(), &end);
  if (end == text.c_str()) return "";  // not a number at all: CLI11's conversion error says so
  if (!std::isfinite(v)) return "'" + text + "' is not a finite number";
  return "";
}

// Threads beyond a few per core only add switching: a thread count far past the machine is a mistake (and tens of
// thousands of threads fail to start).
std::string check_threads(const std::string& text) {
  char* end = nullptr;
  errno = 0;
  const long long n = std::strtoll(text.c_str(), &end, 0);
  if (errno == 0 && end != text.c_str() && n > max_threads())
    return std::to_string(n) + " threads is more than this machine can use: it has " +
           std::to_string(std::max(1u, std::thread::hardware_concurrency())) + " cores (at most " +
           std::to_string(max_threads()) + " threads)";
  return "";
}

void add_strict_number_checks(CLI::App& app) {
  for (CLI::Option* o : app.get_options()) {
    // The type name is CLI11's ("INT", "UINT", "FLOAT"), followed by what other validators describe.
    const std::string type = o->get_type_name();
    if (type.starts_with("INT")) o->check(CLI::Validator(check_signed, "", "integer"));
    if (type.starts_with("UINT")) o->check(CLI::Validator(check_unsigned, "", "unsigned"));
    if (type.starts_with("FLOAT")) o->check(CLI::Validator(check_finite, "", "finite"));
    if (o->check_lname("threads")) o->check(CLI::Validator(check_threads, "", "threads"));
  }
  for (CLI::App* sub : app.get_subcommands({})) add_strict_number_checks(*sub);
}

// A number's sign, with a plain message: CLI11's PositiveNumber prints its upper bound as a 309-digit number.
CLI::Validator sign_check(bool zero_allowed) {
  return CLI::Validator(
      [zero_allowed](const std::string& text) -> std::string {
        char* end = nullptr;
        const double v = std::strtod(text.c_str(), &end);
        if (end == text.c_str()) return "";  // not a number: CLI11's conversion error says so
        if (!std::isfinite(v)) return check_finite(text);
        if (zero_allowed ? v >= 0 : v > 0) return "";
        return "'" + text + "' must be " + (zero_allowed ? ">= 0" : "> 0");
      },
      zero_allowed ? "NONNEGATIVE" : "POSITIVE");
}

}  // namespace

const CLI::Validator kPositiveNumber = sign_check(false);
const CLI::Validator kNonNegativeNumber = sign_check(true);

namespace {
// Every --help shows the defaults: an option's value before parsing is its default (empty ones show nothing).
void show_defaults(CLI::App& app) {
  for (CLI::Option* o : app.get_options())
    if (o->get_default_str().empty() && o->capture_default_str()->get_default_str() == "[]") o->default_str("");
  for (CLI::App* sub : app.get_subcommands({})) show_defaults(*sub);
}
}  // namespace

std::optional<int> parse_or_exit(CLI::App& app, int argc, char** argv) {
  add_strict_number_checks(app);
  show_defaults(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp&) {
    std::printf("%s", app.help().c_str());
    return 0;
  } catch (const CLI::ParseError& e) {
    std::fprintf(stderr, "dreamllm %s: %s\nRun 'dreamllm %s --help' for the options.\n", app.get_name().c_str(),
                 e.what(), app.get_name().c_str());
    return 2;
  }
  return std::nullopt;
}

namespace {
io::ModelDir open_model(const std::string& path) {
  namespace fs = std::filesystem;
  // The error_code overload: a symbolic-link loop or an unreadable parent is a message, not a filesystem_error.
  std::error_code ec;
  const fs::file_status st = fs::status(path, ec);
  DL_CHECK(st.type() != fs::file_type::not_found, "model '", path, "' does not exist");
  DL_CHECK(!ec, "model '", path, "': ", ec.message());
  DL_CHECK(fs::is_directory(st) || fs::is_regular_file(st), "model '", path,
           "' is neither a model directory (official DreamLLM release layout) nor a converted model (NAME.gguf)");
  DL_CHECK(fs::is_directory(st) || io::is_gguf_model_path(path), "model '", path,
           "' is a file but not a converted model (NAME.gguf); a model is that or a directory in the official "
           "DreamLLM release layout");
  return io::ModelDir::open(path);
}
}  // namespace

io::ModelDir open_model_dir(const std::string& path) { return open_model(path); }

Model::Model(const std::string& path, bool with_diffusion)
    : dir(open_model(path)),
      tokenizer(text::Tokenizer::load(path)),
      llm(models::DreamLLM::load(dir)),
      clip_preprocess(io::clip_preprocess_config(dir)) {
  DL_CHECK(tokenizer.vocab_size() <= dir.config().llm.vocab_size, "the tokenizer of '", path, "' has ",
           tokenizer.vocab_size(), " tokens but the model only ", dir.config().llm.vocab_size);
  if (with_diffusion) {
    require_creation(dir, "the command draws images");
    head = std::make_unique<pipelines::DiffusionHead>(dir);
  }
}

void require_creation(const io::ModelDir& dir, const std::string& what) {
  if (!dir.has(io::kDream) || !dir.has(io::kConditionProjector) || !dir.has(io::kDiffusion))
    models::fail_no_creation(dir.path(), what);
}

void TextOptions::add_to(CLI::App& app) {
  app.add_option("-n,--max-tokens", max_tokens, "most tokens to generate")->check(CLI::Range(int64_t(0), int64_t(1) << 20));
  app.add_option("--temp", temperature, "sampling temperature; 0 decodes greedily")->check(CLI::Range(0.0, 100.0));
  app.add_option("--top-k", top_k, "sampling: keep the k most likely tokens (0: all)")->check(kNonNegativeNumber);
  app.add_option("--top-p", top_p, "sampling: nucleus probability mass")->check(CLI::Range(1e-9, 1.0));
  app.add_option("--repeat-penalty", repeat_penalty, "repetition penalty (1: off)")->check(kPositiveNumber);
  app.add_option("--beams", beams, "beam search width (1: off; the VQA benchmarks use 5)")
      ->check(CLI::Range(int64_t(1), int64_t(64)));
  app.add_option("--text-seed", seed, "seed of text sampling")->check(CLI::Range(int64_t(0), INT64_MAX));
  add_kv_cache_options(app);
}

void add_kv_cache_options(CLI::App& app) {
  auto add = [&](const char* name, DType models::KVCacheTypes::*part, const char* help) {
    app.add_option_function<std::string>(
           name,
           [part](const std::string& type) {
             models::KVCacheTypes t = models::default_kv_cache_types();
             t.*part = parse_dtype(type);
             models::set_default_kv_cache_types(t);
           },
           help)
        ->check(CLI::IsMember({"f32", "f16", "bf16", "q8_0"}));
  };
  add("--cache-type-k", &models::KVCacheTypes::key,
      "storage type of the attention keys kept while generating: f16 (default), q8_0 (half of it), bf16, f32");
  add("--cache-type-v", &models::KVCacheTypes::value,
      "storage type of the attention values kept while generating (as --cache-type-k)");
}

pipelines::GenerationConfig TextOptions::config(int32_t eos) const {
  pipelines::GenerationConfig c;
  c.max_new_tokens = max_tokens;
  c.do_sample = temperature > 0 && beams == 1;
  c.temperature = temperature > 0 ? temperature : 1.0;
  c.top_k = top_k;
  c.top_p = top_p;
  c.repetition_penalty = repeat_penalty;
  c.num_beams = beams;
  c.eos_token_id = eos;
  c.seed = uint64_t(seed);
  return c;
}

void DrawOptions::add_to(CLI::App& app) {
  app.add_option("--steps", steps, "diffusion steps")->check(CLI::Range(int64_t(1), int64_t(1000)));
  app.add_option("--cfg-scale", cfg_scale, "classifier-free guidance scale (1: no negative branch)")
      ->check(CLI::Range(0.0f, 100.0f));
  app.add_option("--guidance-rescale", guidance_rescale, "guidance rescale in [0, 1]")->check(CLI::Range(0.0f, 1.0f));
  app.add_option("--sampler", sampler, "ddpm (the original's), ddim, pndm, dpmpp2m, euler, euler_a")
      ->check(CLI::IsMember({"ddpm", "ddim", "pndm", "dpmpp2m", "euler", "euler_a"}));
  app.add_option("--eta", eta, "DDIM eta")->check(CLI::Range(0.0f, 1.0f));
  app.add_flag("--karras", karras, "Karras sigmas (dpmpp2m)");
  app.add_option("-W,--width", width, "image width in pixels (default: the model's)")->check(kPositiveNumber);
  app.add_option("-H,--height", height, "image height in pixels (default: the model's)")->check(kPositiveNumber);
  app.add_option("--seed", seed, "seed of the initial noise (the same seed gives the same image)")
      ->check(CLI::Range(int64_t(0), INT64_MAX));
  app.add_option("--negative", negative, "negative prompt (default: empty, as the original)");
  app.add_flag("--tiled", tiled, "decode the VAE in tiles (bounded memory for large images)");
  app.add_option("--deep-cache", deep_cache,
                 "reuse the UNet's deep features: recompute them every N-th step only (0: off; faster, slightly "
                 "different pictures, see docs/benchmarks.md)")
      ->check(CLI::Range(int64_t(0), int64_t(1000)));
}

pipelines::SamplingOptions DrawOptions::sampling() const {
  pipelines::SamplingOptions s;
  s.steps = steps;
  s.guidance_scale = cfg_scale;
  s.guidance_rescale = guidance_rescale;
  s.scheduler = sampler;
  s.scheduler_options.eta = eta;
  s.scheduler_options.use_karras_sigmas = karras;
  s.deep_cache_interval = deep_cache;
  return s;
}

namespace {

std::string bytes_text(double bytes) {
  char buf[48];
  if (bytes >= double(int64_t(1) << 30))
    std::snprintf(buf, sizeof buf, "%.1f GiB", bytes / double(int64_t(1) << 30));
  else
    std::snprintf(buf, sizeof buf, "%.0f MiB", std::ceil(bytes / double(int64_t(1) << 20)));
  return buf;
}

}  // namespace

DrawMemory estimate_draw_memory(const io::UNetConfig& unet, const io::VaeConfig& vae, int64_t lh, int64_t lw,
                                bool guided, bool tiled) {
  // Attention streams over key blocks (core/kernels/attention.cpp) and convolutions unfold in bounded bands
  // (kernels/conv.cpp), so no [tokens x tokens] or im2col buffer grows with the image: what grows is the feature
  // maps. Counted in floats.
  auto pixels_at = [](int64_t h, int64_t w, int64_t level) {
    const int64_t d = int64_t(1) << level;
    return double((h + d - 1) / d) * double((w + d - 1) / d);
  };
  const size_t levels = unet.block_out_channels.size();
  // The down path's outputs, all kept for the skip connections of the up path.
  double skips = double(unet.block_out_channels.at(0)) * pixels_at(lh, lw, 0), working = 0;
  for (size_t l = 0; l < levels; ++l) {
    const double c = double(unet.block_out_channels[l]), n = pixels_at(lh, lw, int64_t(l));
    const int64_t layers = l < unet.layers_per_block.size() ? unet.layers_per_block[l] : 2;
    skips += double(layers) * c * n;
    if (l + 1 < levels) skips += c * pixels_at(lh, lw, int64_t(l) + 1);
    // A transformer block holds its input, the normalised copy, q/k/v and output (6 C) and the GEGLU feed-forward's
    // 8 C projection with its 4 C product; a resnet, the concatenated input and a few C-wide maps.
    const bool attention =
        l < unet.down_block_types.size() && unet.down_block_types[l].find("Attn") != std::string::npos;
    working = std::max(working, (attention ? 18.0 : 6.0) * c * n);
  }
  DrawMemory m;
  m.unet = 4.0 * (guided ? 2.0 : 1.0) * (skips + working);
  // The decoder runs from the latent size, doubling per up block; the widest map is an up block's upsampled
  // output (SD: 256 channels at the full image size), and a resnet there holds about four such maps. Tiled, only
  // one tile's maps exist at a time.
  const int64_t f = vae.scale_factor(), tile = std::max<int64_t>(1, vae.sample_size / f);
  const double th = double(tiled ? std::min(lh, tile) : lh), tw = double(tiled ? std::min(lw, tile) : lw);
  double widest = 0;
  const size_t vl = vae.block_out_channels.size();
  for (size_t i = 0; i < vl; ++i) {
    const double c = double(vae.block_out_channels[vl - 1 - i]), scale = double(int64_t(1) << i);
    widest = std::max(widest, c * th * tw * scale * scale);
    if (i + 1 < vl) widest = std::max(widest, c * th * tw * 4 * scale * scale);
  }
  // Plus the whole picture (tiled, also the blended copy of it).
  const double picture = 3.0 * double(lh * f) * double(lw * f) * (tiled ? 2.0 : 1.0);
  m.vae = 4.0 * (4.0 * widest + picture);
  return m;
}

DrawWork estimate_attention_work(const io::UNetConfig& unet, const io::VaeConfig& vae, int64_t lh, int64_t lw,
                                 bool guided, bool tiled) {
  auto tokens_at = [&](size_t level) {
    const int64_t d = int64_t(1) << level;
    return double((lh + d - 1) / d) * double((lw + d - 1) / d);
  };
  auto at = [](const std::vector<int64_t>& v, size_t i, int64_t fallback) { return i < v.size() ? v[i] : fallback; };
  const size_t levels = unet.block_out_channels.size();
  double per_step = 0;
  for (size_t l = 0; l < levels; ++l) {
    const double t = tokens_at(l), heads = double(at(unet.num_attention_heads, l, 8));
    const double depth = double(at(unet.transformer_layers_per_block, l, 1)), layers = double(at(unet.layers_per_block, l, 2));
    // Down block l and the up block that returns to level l (up blocks run in reverse, one layer more each).
    if (l < unet.down_block_types.size() && unet.down_block_types[l].find("Attn") != std::string::npos)
      per_step += layers * depth * heads * t * t;
    const size_t up = levels - 1 - l;
    if (up < unet.up_block_types.size() && unet.up_block_types[up].find("Attn") != std::string::npos)
      per_step += (layers + 1) * depth * heads * t * t;
  }
  if (unet.mid_block_type.find("Attn") != std::string::npos) {
    const double t = tokens_at(levels - 1);
    per_step += double(at(unet.transformer_layers_per_block, levels - 1, 1)) *
                double(at(unet.num_attention_heads, levels - 1, 8)) * t * t;
  }
  DrawWork w;
  w.unet_step = per_step * (guided ? 2.0 : 1.0);
  // The decoder's mid block attends over every latent pixel, one head; tiled, over one tile at a time.
  const int64_t tile = std::max<int64_t>(1, vae.sample_size / vae.scale_factor());
  if (tiled && (lh > tile || lw > tile)) {
    const double stride = std::max(1.0, double(tile) * 0.75);
    const double tiles = std::ceil(double(lh) / stride) * std::ceil(double(lw) / stride);
    w.vae = tiles * double(tile * tile) * double(tile * tile);
  } else {
    w.vae = double(lh * lw) * double(lh * lw);
  }
  return w;
}

double available_memory_bytes() {
  std::ifstream meminfo("/proc/meminfo");
  std::string key;
  double kb = 0;
  while (meminfo >> key >> kb) {
    if (key == "MemAvailable:") return kb * 1024;
    meminfo.ignore(256, '\n');
  }
  const double physical = double(sysconf(_SC_PHYS_PAGES)) * double(sysconf(_SC_PAGESIZE));
  return physical > 0 ? physical : 0;
}

void check_draw_memory(const DrawMemory& need, const std::string& what, bool tiled) {
  // Against what the machine can give now, not its physical size: a drawing that only fits by pushing the rest of
  // the system (or the weights just read) out would thrash for hours instead of failing here.
  const double available = available_memory_bytes();
  DL_CHECK(available <= 0 || need.peak() <= available, what, " needs an estimated ", bytes_text(need.peak()),
           " of memory (UNet sampling ", bytes_text(need.unet), ", VAE decoding ", bytes_text(need.vae),
           "), more than the ", bytes_text(available), " available now (MemAvailable); choose a smaller size",
           need.vae > need.unet && !tiled ? " or --tiled (the VAE decoder in tiles)" : "");
}

std::pair<int64_t, int64_t> DrawOptions::latent_size(const io::ModelDir& dir) const {
  require_creation(dir, "the command draws images");
  const io::UNetConfig& uc = dir.unet_config();
  const io::VaeConfig& vc = dir.vae_config();
  const int64_t f = vc.scale_factor(), native = uc.sample_size * f;
  const int64_t w = width > 0 ? width : native, h = height > 0 ? height : native;
  DL_CHECK(w % f == 0 && h % f == 0, "image size ", w, "x", h, " is not a multiple of ", f,
           " (the VAE's downsampling factor)");
  const DrawMemory need = estimate_draw_memory(uc, vc, h / f, w / f, cfg_scale > 1.f, tiled);
  const std::string estimate = "an estimated " + bytes_text(need.peak()) + " of memory (UNet sampling " +
                               bytes_text(need.unet) + ", VAE decoding " + bytes_text(need.vae) + ")";
  DL_CHECK(w <= kMaxImageSide && h <= kMaxImageSide, "image size ", w, "x", h, " is larger than ", kMaxImageSide,
           " pixels per side, the most this build draws: self-attention's work grows with the square of the pixel count "
           "(this size would need ", estimate, ")");
  check_draw_memory(need, "image size " + std::to_string(w) + "x" + std::to_string(h), tiled);
  const DrawWork work = estimate_attention_work(uc, vc, h / f, w / f, cfg_scale > 1.f, tiled);
  const double total = work.unet_step * double(steps) + work.vae;
  if (total > kMaxAttentionScores) {
    char figures[200];
    std::snprintf(figures, sizeof figures,
                  "%.2g query-key scores (%.2g per denoising step, %.2g in the VAE decoder), more than the %.0e",
                  total, work.unet_step, work.vae, kMaxAttentionScores);
    fail("image size ", w, "x", h, " with ", steps, steps == 1 ? " step" : " steps", ": self-attention would compute ",
         figures,
         " this build draws (many hours to days on a CPU); choose a smaller size or fewer steps");
  }
  // The sampler's own limits (ddpm, ddim and pndm reach a timestep the model lacks at --steps 1000 with "leading"
  // spacing): found now by building its timesteps, not after the prompt has been read.
  diffusion::make_scheduler(sampler, dir.scheduler_config(), sampling().scheduler_options)->set_timesteps(steps);
  return {h / f, w / f};
}

void add_image_limit_option(CLI::App& app) {
  app.add_option_function<int64_t>(
         "--max-image-pixels", [](int64_t n) { io::set_max_image_pixels(n); },
         "refuse pictures larger than this many pixels (width x height), checked before decoding; the default is "
         "Pillow's decompression-bomb limit")
      ->default_str(std::to_string(io::kDefaultMaxImagePixels))
      ->check(kPositiveNumber);
}

Tensor load_pixels(const Model& m, const std::vector<std::string>& paths) {
  if (paths.empty()) return Tensor();
  m.llm.require_vision("image '" + paths[0] + "'");
  std::vector<Tensor> px;
  for (const auto& p : paths) {
    const Tensor t = io::clip_preprocess(io::read_image(p), m.clip_preprocess);
    px.push_back(t.reshape({1, t.size(0), t.size(1), t.size(2)}));
  }
  return ops::concat(px, 0);
}

std::string place_images(const Model& m, const std::string& text, size_t images) {
  const bool placeholder = text.find(text::kImageToken) != std::string::npos;
  if (placeholder || images > 0)
    m.llm.require_vision(placeholder ? "the prompt has an <image> placeholder" : "an image was given");
  return pipelines::place_image_spans(text, images, m.llm.image_tokens());
}

Progress::Progress(std::string label, size_t total)
    : label_(std::move(label)), total_(total), tty_(isatty(2)), start_(std::chrono::steady_clock::now()) {}

void Progress::update(size_t done) {
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  if (tty_) {
    constexpr size_t kWidth = 30;
    const size_t filled = total_ ? std::min(done, total_) * kWidth / total_ : kWidth;
    std::fprintf(stderr, "\r%s [%s%s] %zu/%zu  %.2f s/it ", label_.c_str(), std::string(filled, '#').c_str(),
                 std::string(kWidth - filled, '.').c_str(), done, total_, done ? secs / double(done) : 0.0);
    std::fflush(stderr);
  } else if (done < total_ && done >= next_line_) {
    // Into a log or a pipe: one line per tenth of the work (per item when there are few), never redrawn.
    next_line_ = done + std::max<size_t>(1, total_ / 10);
    std::fprintf(stderr, "%s: %zu/%zu  %.2f s/it\n", label_.c_str(), done, total_, done ? secs / double(done) : 0.0);
    std::fflush(stderr);
  }
  if (done >= total_ && !done_) {
    done_ = true;
    if (tty_)
      std::fprintf(stderr, "\n");
    else
      std::fprintf(stderr, "%s: %zu/%zu in %.2f s\n", label_.c_str(), done, total_, secs);
  }
}

void Progress::finish() { update(total_); }

std::vector<std::string> split_list(const std::string& list) {
  std::vector<std::string> out;
  std::stringstream ss(list);
  std::string item;
  while (std::getline(ss, item, ','))
    if (!item.empty()) out.push_back(item);
  return out;
}

std::string numbered_path(const std::string& path, size_t index, size_t count) {
  if (count <= 1) return path;
  const std::filesystem::path p(path);
  return (p.parent_path() / (p.stem().string() + "_" + std::to_string(index + 1) + p.extension().string())).string();
}

}  // namespace dl::app
