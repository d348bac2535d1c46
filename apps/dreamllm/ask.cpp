// `dreamllm ask`: image(s) + question -> answer, streamed, with the vicuna v1.1 template of the original VQA
// evaluation (omni/eval/vqa: " <system> USER: <system prompt><image span>...<question> ASSISTANT:"), or with
// --template train the training conversations' layout ("<system> USER: <image span>\n<question> ASSISTANT:").
// --caption: the model's caption of one picture, as the image-text pairs of stage I trained it: BOS, the image span,
// and the caption after it, no template and no question.
#include <cstdio>

#include "cli_common.h"
#include "core/error.h"
#include "core/thread_pool.h"
#include "pipelines/comprehend.h"
#include "pipelines/text_stream.h"
#include "text/chat_template.h"
#include "world/prompt_check.h"

namespace dl::app {

int ask_main(int argc, char** argv) {
  CLI::App app("Answer a question about images (or plain text) with DreamLLM.", "ask");
  std::string model, question, system_prompt, post_prompt, layout = "eval";
  std::vector<std::string> images;
  int threads = 0;
  TextOptions text;
  bool caption = false, force = false;
  app.add_option("-m,--model", model, "model directory (official DreamLLM release layout)")->required();
  app.add_option("-i,--image", images, "image file (PNG, JPEG, BMP, ...); repeat for several")->check(CLI::ExistingFile);
  app.add_option("-p,--prompt", question, "the question (required unless --caption)");
  app.add_flag("--caption", caption, "caption the picture (one -i) as the model was trained to, instead of answering");
  app.add_flag("--force", force, "run a prompt outside the prompt language the model declares (a warning instead of an error)");
  app.add_option("--system", system_prompt, "text before the images in the user turn (the benchmarks' system prompt)");
  app.add_option("--post-prompt", post_prompt, "text the answer starts with (e.g. \"The image depicts\")");
  app.add_option("--template", layout,
                 "eval: the original VQA evaluation's template (leading space, the question right after the images); "
                 "train: the training conversations' (as omni/conversation renders them, the question on a new line "
                 "after the images), for models that only saw that one, such as the shapes world's")
      ->check(CLI::IsMember({"eval", "train"}))
      ->capture_default_str();
  app.add_option("-t,--threads", threads, "threads (default: all cores)")->check(kNonNegativeNumber);
  text.add_to(app);
  add_image_limit_option(app);
  if (auto code = parse_or_exit(app, argc, argv)) return *code;
  if (caption ? (images.size() != 1 || !question.empty()) : question.empty()) {
    std::fprintf(stderr, "dreamllm ask: %s\nRun 'dreamllm ask --help' for the options.\n",
                 caption ? "--caption takes one picture (-i) and no question (-p)" : "-p/--prompt is required");
    return 2;
  }
  set_num_threads(threads);
  if (!caption) {
    if (const std::string w = world::require_prompt_language(model, world::PromptUse::Question, question, force);
        !w.empty())
      std::fprintf(stderr, "dreamllm ask: warning: %s\n", w.c_str());
  }

  // A text-only model refuses images before its weights are read.
  if (!images.empty() && !open_model_dir(model).has(io::kClip)) models::fail_no_vision(model, "-i " + images[0]);
  const Model m(model, false);
  const Tensor pixels = load_pixels(m, images);
  const bool train_layout = layout == "train";
  // The training layout puts "<image>\n" before a question that names no image position (LLaVA's data format).
  const bool placed = question.find(text::kImageToken) != std::string::npos;
  const std::string asked = train_layout && !placed && !images.empty() ? "\n" + question : question;
  std::string user = system_prompt + place_images(m, asked, images.size());
  text::Conversation conv(train_layout ? text::VicunaVariant::Train : text::VicunaVariant::Eval);
  conv.append_user(user);
  // An empty message is an open turn in the evaluation template but content in the training one ("ASSISTANT: ").
  if (post_prompt.empty())
    conv.append_assistant(std::nullopt);
  else
    conv.append_assistant(post_prompt);
  // A caption continues BOS + image span directly (the pairs' layout); the tokenizer adds the BOS.
  const std::vector<int32_t> ids =
      m.tokenizer.encode(caption ? place_images(m, "", 1) : conv.generation_prompt());
  const int64_t limit = m.dir.config().llm.max_position_embeddings;
  DL_CHECK(int64_t(ids.size()) < limit, "the prompt has ", ids.size(), " tokens; the model supports ", limit);
  pipelines::GenerationConfig gc = text.config(m.tokenizer.eos_id());
  gc.max_new_tokens = std::min<int64_t>(gc.max_new_tokens, limit - int64_t(ids.size()));

  pipelines::TextStream stream(m.tokenizer, [](const std::string& piece) {
    std::fwrite(piece.data(), 1, piece.size(), stdout);
    std::fflush(stdout);
  });
  pipelines::GenerationCallbacks cb;
  cb.decode = [&](const std::vector<int32_t>& t) { return m.tokenizer.decode(t); };
  cb.on_token = [&](int64_t, int32_t tok) { stream.push(tok); };
  const auto r = pipelines::generate_text(m.llm, {ids}, pixels, gc, cb);
  if (gc.num_beams > 1) std::fputs(r.texts[0].c_str(), stdout);  // beam search settles only at the end
  std::fputs("\n", stdout);
  return 0;
}

}  // namespace dl::app
