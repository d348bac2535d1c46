// What the user-facing commands share: option sets (CLI11), model loading with clear errors, image input,
// prompt building, progress bars, and the exit-code convention (0 success, 1 error in inputs/files/models,
// 2 bad usage, 3 internal error).
#pragma once
#include <CLI/CLI.hpp>

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "io/image.h"
#include "io/model_dir.h"
#include "models/dreamllm.h"
#include "pipelines/create.h"
#include "pipelines/generate.h"
#include "text/tokenizer.h"

namespace dl::app {

// Parses argv with `app`; returns the exit code to stop with (0 after --help, 2 on bad usage), or nullopt to go on.
// Every numeric option is parsed strictly: NaN, infinities, integers past 64 bits and negative values for unsigned
// options are bad usage, as is a thread count far beyond the machine's cores.
std::optional<int> parse_or_exit(CLI::App& app, int argc, char** argv);

// An earlier spelling of an option, still accepted but not shown by --help (CLI11 hides the group "").
template <typename T>
CLI::Option* hidden_alias(CLI::App& app, const std::string& name, T& variable) {
  return app.add_option(name, variable)->group("");
}

// The most threads a command accepts: four per core, at least 64 (threads beyond a few per core only add
// switching, and tens of thousands fail to start).
int64_t max_threads();

// Sign checks for numeric options, with plain messages.
extern const CLI::Validator kPositiveNumber, kNonNegativeNumber;

// A model directory opened for the commands: configs, tokenizer and the LLM side; the diffusion head on demand.
struct Model {
  explicit Model(const std::string& path, bool with_diffusion);
  io::ModelDir dir;
  text::Tokenizer tokenizer;
  models::DreamLLM llm;
  std::unique_ptr<pipelines::DiffusionHead> head;  // null unless requested
  io::ClipPreprocessConfig clip_preprocess;
};

// Throws the error of a model that cannot create images (a text-only one); `what` says what asked for it.
void require_creation(const io::ModelDir& dir, const std::string& what);

struct TextOptions {
  int64_t max_tokens = 256;
  double temperature = 0.0;  // 0: greedy
  int64_t top_k = 50;
  double top_p = 1.0;
  double repeat_penalty = 1.0;
  int64_t beams = 1;
  int64_t seed = 0;
  void add_to(CLI::App& app);
  pipelines::GenerationConfig config(int32_t eos) const;
};

// --cache-type-k / --cache-type-v (llama.cpp's names): the KV cache's storage types, set process-wide as parsed.
void add_kv_cache_options(CLI::App& app);

// Starts from pipelines::SamplingOptions' defaults, so that the drawing commands and the server share one definition.
struct DrawOptions {
  int64_t steps = pipelines::SamplingOptions().steps;
  float cfg_scale = pipelines::SamplingOptions().guidance_scale;
  float guidance_rescale = pipelines::SamplingOptions().guidance_rescale;
  std::string sampler = pipelines::SamplingOptions().scheduler;
  float eta = 0.f;
  bool karras = false;
  int64_t width = 0, height = 0;  // 0: the model's native size
  int64_t seed = 42;
  std::string negative;
  bool tiled = false;
  int64_t deep_cache = 0;
  void add_to(CLI::App& app);
  pipelines::SamplingOptions sampling() const;
  // Latent height and width for the model, after checking everything about the drawing that can fail late: the
  // pixel sizes (multiples of the VAE factor, at most kMaxImageSide per side, an estimated peak memory within this
  // machine's) and --steps against what the sampler can take. Needs only the configs, so commands call it before
  // the weights are read.
  std::pair<int64_t, int64_t> latent_size(const io::ModelDir& dir) const;
  std::pair<int64_t, int64_t> latent_size(const Model& m) const { return latent_size(m.dir); }
};

// The largest image side drawn: far past the sizes SD-style models are trained at (512-768), and self-attention's
// work grows with the square of the pixel count.
constexpr int64_t kMaxImageSide = 4096;

// Estimated peak bytes of drawing one image at latent size lh x lw: UNet sampling (`guided` doubles its batch), then
// the VAE decoder (`tiled` or whole). The activations, not the weights.
struct DrawMemory {
  double unet = 0, vae = 0;
  double peak() const { return unet > vae ? unet : vae; }
};
DrawMemory estimate_draw_memory(const io::UNetConfig& unet, const io::VaeConfig& vae, int64_t lh, int64_t lw,
                                bool guided, bool tiled);

// MemAvailable of /proc/meminfo in bytes (the physical memory where that cannot be read, 0 when neither can).
double available_memory_bytes();
// Throws, before any work, when `need` exceeds the memory available now: the message names the drawing (`what`), the
// estimate and the available figure, and suggests --tiled where the VAE decoder is the larger part and untiled.
void check_draw_memory(const DrawMemory& need, const std::string& what, bool tiled);

// Self-attention query-key scores of drawing one image: per denoising step of the UNet (both guidance branches) and
// for the VAE decoder's mid-block attention. Attention work grows with the square of the pixel count: this is what
// makes a large image on a small-latent model (VAE factor 2) run for days.
struct DrawWork {
  double unet_step = 0, vae = 0;
};
DrawWork estimate_attention_work(const io::UNetConfig& unet, const io::VaeConfig& vae, int64_t lh, int64_t lw,
                                 bool guided, bool tiled);

// The most self-attention scores one image may take, steps and decoding together: about 14 hours on two cores of
// this project's machines (measured: the tiny test model at 512 px, 5.7e10 scores, ran 283 s a step). SD at 1024 px
// with 50 steps is under a tenth of it; the tiny model at 1024 px with 50 steps, four times it.
constexpr double kMaxAttentionScores = 1e13;

// A model directory's configs, with the messages the commands give for a missing path or a file.
io::ModelDir open_model_dir(const std::string& path);

// --max-image-pixels N for a command that reads pictures: the largest decoded size (width x height) accepted, set
// process-wide (io::set_max_image_pixels) while the options are parsed.
void add_image_limit_option(CLI::App& app);

// Loads images and preprocesses them for CLIP: [N, 3, S, S] (undefined when `paths` is empty).
Tensor load_pixels(const Model& m, const std::vector<std::string>& paths);

// Replaces each "<image>" in `text` with an image span, or, when the text has none, puts one span per image in
// front of it. Throws when the placeholders and images disagree in number.
std::string place_images(const Model& m, const std::string& text, size_t images);

// A progress bar on stderr: redrawn in place on a terminal; elsewhere (a log, a pipe) a line per tenth of the work
// (per item when there are fewer than ten) and one at the end.
class Progress {
 public:
  Progress(std::string label, size_t total);
  void update(size_t done);
  void finish();

 private:
  std::string label_;
  size_t total_;
  bool tty_, done_ = false;
  size_t next_line_ = 1;
  std::chrono::steady_clock::time_point start_;
};

// The non-empty items of a comma-separated list ("a,,b" -> a, b).
std::vector<std::string> split_list(const std::string& list);

// "name.ext" -> "name_<i>.ext" (i from 1) when there are several outputs; the path itself for one.
std::string numbered_path(const std::string& path, size_t index, size_t count);

}  // namespace dl::app
