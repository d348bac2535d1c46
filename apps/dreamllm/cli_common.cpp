#include "cli_common.h"

#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <sstream>

#include "core/error.h"
#include "core/ops.h"
#include "io/image_file.h"
#include "pipelines/interleave.h"
#include "text/chat_template.h"

namespace dl::app {

std::optional<int> parse_or_exit(CLI::App& app, int argc, char** argv) {
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
  DL_CHECK(fs::is_directory(st), "model '", path,
           "' is a file; this build reads model directories in the official DreamLLM release layout");
  return io::ModelDir::open(path);
}
}  // namespace

Model::Model(const std::string& path, bool with_diffusion)
    : dir(open_model(path)),
      tokenizer(text::Tokenizer::load(path)),
      llm(models::DreamLLM::load(dir)),
      clip_preprocess(io::clip_preprocess_config(dir)) {
  DL_CHECK(tokenizer.vocab_size() <= dir.config().llm.vocab_size, "the tokenizer of '", path, "' has ",
           tokenizer.vocab_size(), " tokens but the model only ", dir.config().llm.vocab_size);
  if (with_diffusion) head = std::make_unique<pipelines::DiffusionHead>(dir);
}

void TextOptions::add_to(CLI::App& app) {
  app.add_option("-n,--max-tokens", max_tokens, "most tokens to generate")->check(CLI::Range(int64_t(0), int64_t(1) << 20));
  app.add_option("--temp", temperature, "sampling temperature; 0 decodes greedily")->check(CLI::Range(0.0, 100.0));
  app.add_option("--top-k", top_k, "sampling: keep the k most likely tokens (0: all)")->check(CLI::NonNegativeNumber);
  app.add_option("--top-p", top_p, "sampling: nucleus probability mass")->check(CLI::Range(1e-9, 1.0));
  app.add_option("--repeat-penalty", repeat_penalty, "repetition penalty (1: off)")->check(CLI::PositiveNumber);
  app.add_option("--beams", beams, "beam search width (1: off; the VQA benchmarks use 5)")
      ->check(CLI::Range(int64_t(1), int64_t(64)));
  app.add_option("--text-seed", seed, "seed of text sampling");
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
  app.add_option("-W,--width", width, "image width in pixels (default: the model's)")->check(CLI::PositiveNumber);
  app.add_option("-H,--height", height, "image height in pixels (default: the model's)")->check(CLI::PositiveNumber);
  app.add_option("--seed", seed, "seed of the initial noise (the same seed gives the same image)");
  app.add_option("--negative", negative, "negative prompt (default: empty, as the original)");
  app.add_flag("--tiled", tiled, "decode the VAE in tiles (bounded memory for large images)");
}

pipelines::SamplingOptions DrawOptions::sampling() const {
  pipelines::SamplingOptions s;
  s.steps = steps;
  s.guidance_scale = cfg_scale;
  s.guidance_rescale = guidance_rescale;
  s.scheduler = sampler;
  s.scheduler_options.eta = eta;
  s.scheduler_options.use_karras_sigmas = karras;
  return s;
}

std::pair<int64_t, int64_t> DrawOptions::latent_size(const Model& m) const {
  const int64_t f = m.head->vae.config().scale_factor(), native = m.head->unet.config().sample_size * f;
  const int64_t w = width > 0 ? width : native, h = height > 0 ? height : native;
  DL_CHECK(w % f == 0 && h % f == 0, "image size ", w, "x", h, " is not a multiple of ", f,
           " (the VAE's downsampling factor)");
  DL_CHECK(w <= 8192 && h <= 8192, "image size ", w, "x", h, " is larger than 8192 pixels per side");
  return {h / f, w / f};
}

void add_image_limit_option(CLI::App& app) {
  app.add_option_function<int64_t>(
         "--max-image-pixels", [](int64_t n) { io::set_max_image_pixels(n); },
         "refuse pictures larger than this many pixels (width x height), checked before decoding; the default is "
         "Pillow's decompression-bomb limit")
      ->default_str(std::to_string(io::kDefaultMaxImagePixels))
      ->check(CLI::PositiveNumber);
}

Tensor load_pixels(const Model& m, const std::vector<std::string>& paths) {
  if (paths.empty()) return Tensor();
  std::vector<Tensor> px;
  for (const auto& p : paths) {
    const Tensor t = io::clip_preprocess(io::read_image(p), m.clip_preprocess);
    px.push_back(t.reshape({1, t.size(0), t.size(1), t.size(2)}));
  }
  return ops::concat(px, 0);
}

std::string place_images(const Model& m, const std::string& text, size_t images) {
  const std::string placeholder(text::kImageToken);
  const std::string span = text::image_span_text(int(m.llm.image_tokens()));
  size_t found = 0;
  for (size_t at = text.find(placeholder); at != std::string::npos; at = text.find(placeholder, at + 1)) ++found;
  if (found == 0) {
    std::string out;
    for (size_t i = 0; i < images; ++i) out += span;
    return out + text;
  }
  DL_CHECK(found == images, "the prompt has ", found, " <image> placeholder(s) but ", images, " image(s) were given");
  std::string out;
  size_t from = 0;
  for (size_t at = text.find(placeholder); at != std::string::npos; at = text.find(placeholder, from)) {
    out += text.substr(from, at - from) + span;
    from = at + placeholder.size();
  }
  return out + text.substr(from);
}

Progress::Progress(std::string label, size_t total)
    : label_(std::move(label)), total_(total), tty_(isatty(2)), start_(std::chrono::steady_clock::now()) {}

void Progress::update(size_t done) {
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  if (tty_) {
    constexpr size_t kWidth = 30;
    const size_t filled = total_ ? done * kWidth / total_ : kWidth;
    std::fprintf(stderr, "\r%s [%s%s] %zu/%zu  %.2f s/it ", label_.c_str(), std::string(filled, '#').c_str(),
                 std::string(kWidth - filled, '.').c_str(), done, total_, done ? secs / double(done) : 0.0);
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
