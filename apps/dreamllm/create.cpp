// `dreamllm create`: prompt (optionally with reference images) -> dream conditions -> diffusion -> PNG, as the
// original stable_diffusion_pipeline: the raw prompt with BOS and no template, the negative branch from the LLM.
#include <chrono>
#include <cstdio>

#include "cli_common.h"
#include "core/error.h"
#include "core/random.h"
#include "core/thread_pool.h"
#include "io/image_file.h"
#include "output_check.h"
#include "world/prompt_check.h"

namespace dl::app {

int create_main(int argc, char** argv) {
  CLI::App app("Draw images from a prompt with DreamLLM.", "create");
  std::string model, prompt, out = "dreamllm.png";
  std::vector<std::string> images;
  int threads = 0;
  int64_t count = 1;
  bool force = false;
  DrawOptions draw;
  app.add_option("-m,--model", model, "model directory (official DreamLLM release layout)")->required();
  app.add_option("-p,--prompt", prompt, "what to draw")->required();
  app.add_option("-i,--image", images, "reference image(s), placed at <image> in the prompt or before it")
      ->check(CLI::ExistingFile);
  app.add_option("-o,--output", out, "PNG file to write (numbered _1, _2, ... when -b > 1)");
  // -b/--batch-count as stable-diffusion.cpp names it; -n is the most tokens in every command that writes text.
  app.add_option("-b,--batch-count", count, "how many images (image k uses seed + k)")->check(CLI::Range(1, 1000));
  hidden_alias(app, "--count", count)->check(CLI::Range(1, 1000));
  app.add_option("-t,--threads", threads, "threads (default: all cores)")->check(kNonNegativeNumber);
  app.add_flag("--force", force, "run a prompt outside the prompt language the model declares (a warning instead of an error)");
  draw.add_to(app);
  add_image_limit_option(app);
  if (auto code = parse_or_exit(app, argc, argv)) return *code;
  set_num_threads(threads);

  // A prompt the model cannot read is refused before anything is read or written.
  if (const std::string w = world::require_prompt_language(model, world::PromptUse::Create, prompt, force); !w.empty())
    std::fprintf(stderr, "dreamllm create: warning: %s\n", w.c_str());
  // Before the model is read: an output in the way of an input (or of a device) is refused at once.
  InputFiles inputs;
  for (const auto& i : images) inputs.add(i);
  inputs.add_tree(model);
  std::vector<std::string> outputs;
  for (int64_t k = 0; k < count; ++k) outputs.push_back(numbered_path(out, size_t(k), size_t(count)));
  inputs.check_outputs(outputs);
  // Sizes and steps from the configs alone, before the weights are read. Plain variables: clang 14 cannot capture
  // structured bindings in lambdas.
  const auto latent = draw.latent_size(open_model_dir(model));
  const int64_t lh = latent.first, lw = latent.second;

  const Model m(model, true);
  const Tensor pixels = load_pixels(m, images);
  const std::string text = images.empty() ? prompt : place_images(m, prompt, images.size());
  pipelines::CreateRequest request;
  request.prompt_ids = m.tokenizer.encode(text);
  request.pixel_values = pixels;
  if (draw.cfg_scale > 1.f) request.negative_ids = m.tokenizer.encode(draw.negative);
  request.sampling = draw.sampling();
  request.latent_height = lh;
  request.latent_width = lw;
  request.seed = uint64_t(draw.seed);  // >= 0 (checked)
  request.count = count;
  request.tiled_decode = draw.tiled;
  std::unique_ptr<Progress> progress;  // made at an image's first step, when the sampler's step count is known
  pipelines::CreateEvents events;
  events.on_step = [&](size_t k, size_t step, size_t steps) {
    if (step <= 1 || !progress)
      progress = std::make_unique<Progress>("create " + std::to_string(k + 1) + "/" + std::to_string(count), steps);
    progress->update(step);
  };
  events.on_image = [&](size_t k, const io::Image& picture) {
    const std::string path = numbered_path(out, k, size_t(count));
    io::write_png(path, picture);
    std::printf("%s\n", path.c_str());
  };
  pipelines::create_images(m.llm, *m.head, request, events);
  return 0;
}

}  // namespace dl::app
