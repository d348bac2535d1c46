// `dreamllm write`: free-form interleaved documents. The model writes, decides itself where an image goes, draws
// it, reads it back and goes on (pipelines/interleave.h). Output: one self-contained HTML file (images inline),
// a Markdown twin next to it with the images as PNG files.
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "cli_common.h"
#include "core/error.h"
#include "core/thread_pool.h"
#include "io/atomic_file.h"
#include "io/image_file.h"
#include "output_check.h"
#include "pipelines/interleave.h"
#include "serve_api.h"
#include "text/chat_template.h"
#include "world/prompt_check.h"

namespace dl::app {

namespace {

std::string html_escape(const std::string& s) {
  std::string o;
  for (char c : s) {
    switch (c) {
      case '&': o += "&amp;"; break;
      case '<': o += "&lt;"; break;
      case '>': o += "&gt;"; break;
      case '"': o += "&quot;"; break;
      case '\n': o += "<br>\n"; break;
      default: o += c;
    }
  }
  return o;
}

std::string trim(const std::string& s) {
  const size_t a = s.find_first_not_of(" \t\n"), b = s.find_last_not_of(" \t\n");
  return a == std::string::npos ? std::string() : s.substr(a, b - a + 1);
}

void write_text(const std::string& path, const std::string& content) {
  io::write_file_atomically(path, [&](std::ostream& o) { o << content; });
}

}  // namespace

int write_main(int argc, char** argv) {
  CLI::App app("Write a free-form document with text and images; the model decides where images go.", "write");
  std::string model, instruction, out = "document.html", system_prompt;
  std::vector<std::string> images;
  int threads = 0;
  bool raw = false, force = false;
  int64_t max_images = 4;
  float image_bias = 0.f;
  TextOptions text;
  text.max_tokens = 512;
  DrawOptions draw;
  app.add_option("-m,--model", model, "model directory (official DreamLLM release layout)")->required();
  app.add_option("-p,--prompt", instruction, "the instruction (or, with --raw, the start of the document)")->required();
  app.add_option("-i,--image", images, "image(s) for the instruction, placed at <image> or before it")
      ->check(CLI::ExistingFile);
  app.add_option("-o,--output", out, "HTML file to write; the Markdown twin and PNGs go next to it");
  app.add_option("--system", system_prompt, "replace the vicuna system prompt");
  app.add_flag("--raw", raw, "no chat template: the model continues the prompt as a document");
  app.add_option("--max-images", max_images, "most images to draw")->check(CLI::Range(0, 64));
  app.add_option("--image-bias", image_bias, "added to the logit of <dream_start>: > 0 draws more, < 0 fewer");
  app.add_option("-t,--threads", threads, "threads (default: all cores)")->check(kNonNegativeNumber);
  app.add_flag("--force", force, "run a prompt outside the prompt language the model declares (a warning instead of an error)");
  text.add_to(app);
  draw.add_to(app);
  add_image_limit_option(app);
  if (auto code = parse_or_exit(app, argc, argv)) return *code;
  DL_CHECK(text.beams == 1, "write decodes greedily or by sampling; --beams is not supported");
  set_num_threads(threads);
  const world::PromptUse use = raw ? world::PromptUse::Document : world::PromptUse::Write;
  if (const std::string w = world::require_prompt_language(model, use, instruction, force); !w.empty())
    std::fprintf(stderr, "dreamllm write: warning: %s\n", w.c_str());

  // The HTML file, its Markdown twin and every picture the document may get, checked before the model is read:
  // none may replace an input (the model's files, an -i image such as an earlier document's doc_1.png), a device,
  // or another of them (-o doc.md would be overwritten by its own twin).
  const std::filesystem::path html_path(out);
  const std::string stem = html_path.stem().string();
  const std::filesystem::path dir = html_path.parent_path();
  const std::string md_path = (dir / (stem + ".md")).string();
  auto png_name = [&](size_t i) { return stem + "_" + std::to_string(i) + ".png"; };
  {
    InputFiles inputs;
    for (const auto& i : images) inputs.add(i);
    inputs.add_tree(model);
    std::vector<std::string> outputs = {out, md_path};
    for (int64_t i = 1; i <= max_images; ++i) outputs.push_back((dir / png_name(size_t(i))).string());
    inputs.check_outputs(outputs);
  }
  const auto [lh, lw] = draw.latent_size(open_model_dir(model));  // sizes and steps, before the weights are read

  const Model m(model, true);
  const Tensor pixels = load_pixels(m, images);
  std::string prompt_text = images.empty() ? instruction : place_images(m, instruction, images.size());
  if (!raw) {
    // The SFT data's template (omni/conversation vicuna_v1.1): "<system> USER: <instruction> ASSISTANT:".
    text::Conversation conv(text::VicunaVariant::Train);
    if (!system_prompt.empty()) conv.set_system(system_prompt);
    conv.append_user(prompt_text);
    conv.append_assistant(std::nullopt);
    prompt_text = conv.generation_prompt();
  }
  const std::vector<int32_t> prompt = m.tokenizer.encode(prompt_text);

  pipelines::WriteOptions o;
  o.text = text.config(m.tokenizer.eos_id());
  if (image_bias != 0.f) o.text.logit_bias.emplace_back(m.tokenizer.token_id(text::kDreamStartToken), image_bias);
  o.drawing = draw.sampling();
  o.latent_height = lh;
  o.latent_width = lw;
  o.max_images = max_images;
  o.negative_ids = m.tokenizer.encode(draw.negative);
  o.seed = uint64_t(draw.seed);
  o.tiled_decode = draw.tiled;

  std::unique_ptr<Progress> progress;
  pipelines::WriteEvents ev;
  ev.on_text = [](const std::string& t) {
    std::fwrite(t.data(), 1, t.size(), stdout);
    std::fflush(stdout);
  };
  ev.on_image_begin = [&](size_t i) {
    std::fprintf(stdout, "\n[image %zu]\n", i + 1);
    std::fflush(stdout);
    progress.reset();
  };
  ev.on_diffusion_step = [&](size_t s, size_t n) {
    if (!progress) progress = std::make_unique<Progress>("drawing", n);
    progress->update(s);
  };
  const pipelines::Document doc = pipelines::write_document(m.llm, *m.head, m.tokenizer, m.clip_preprocess, prompt,
                                                            pixels, o, ev);
  std::fputs("\n", stdout);

  // HTML (self-contained) and Markdown (+ PNG files).
  std::string html =
      "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>" + html_escape(instruction) +
      "</title>\n<style>\nbody{max-width:44em;margin:2em auto;padding:0 1em;font:1.05em/1.6 Georgia,serif;"
      "color:#222}\n.prompt{color:#666;font-style:italic;border-left:3px solid #ccc;padding-left:1em}\n"
      "figure{margin:1.5em 0;text-align:center}\nfigure img{image-rendering:pixelated;max-width:100%}\n"
      "figcaption{color:#888;font-size:.85em}\n</style>\n</head>\n<body>\n<p class=\"prompt\">" +
      html_escape(instruction) + "</p>\n";
  std::string md = "> " + instruction + "\n\n";
  size_t image_index = 0;
  for (const auto& b : doc.blocks) {
    if (!b.is_image) {
      const std::string t = trim(b.text);
      if (t.empty()) continue;
      html += "<p>" + html_escape(t) + "</p>\n";
      md += t + "\n\n";
      continue;
    }
    ++image_index;
    const std::string png = png_name(image_index);
    io::write_png((dir / png).string(), b.image);
    const int64_t shown = std::max<int64_t>(b.image.width, 256);
    const std::string data = serve::base64_encode(io::encode_png(b.image));
    html += "<figure><img src=\"data:image/png;base64," + data + "\" width=\"" + std::to_string(shown) +
            "\" alt=\"image " + std::to_string(image_index) + "\"><figcaption>image " + std::to_string(image_index) +
            "</figcaption></figure>\n";
    md += "![image " + std::to_string(image_index) + "](" + png + ")\n\n";
  }
  html += "</body>\n</html>\n";
  write_text(out, html);
  write_text(md_path, md);
  std::fprintf(stderr, "write: %s (%zu image%s, %s), Markdown %s\n", out.c_str(), image_index,
               image_index == 1 ? "" : "s", pipelines::finish_reason_name(doc.finish),
               md_path.c_str());
  return 0;
}

}  // namespace dl::app
