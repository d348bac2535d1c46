// `dreamllm chat`: a conversation (vicuna v1.1, as `ask`), images attached inline with /image. When the model
// answers with a picture (<dream_start>), the picture is drawn, saved in --output-dir, shown by its path and read
// back into the conversation (pipelines/chat.h). Each turn feeds only what is new to the KV cache when the
// re-tokenized conversation still starts with what the model has seen; otherwise it re-reads the conversation. A bad
// message is reported and the conversation goes on as it was before it. Turns come one per line of standard input,
// so a script can pipe them in (-q, or any input that is not a terminal, leaves out the banner and the prompts).
#include <unistd.h>

#include <cstdio>
#include <iostream>

#include "chat_session.h"
#include "cli_common.h"
#include "core/error.h"
#include "core/thread_pool.h"
#include "output_check.h"
#include "world/prompt_check.h"

namespace dl::app {

int chat_main(int argc, char** argv) {
  CLI::App app("Chat with DreamLLM; attach images with /image PATH. Pictures the model draws are saved as PNG files.",
               "chat");
  std::string model, system_prompt, first, layout = "eval", output_dir = ".";
  int threads = 0;
  bool quiet = false, force = false;
  int64_t max_images = 4;
  TextOptions text;
  text.max_tokens = 512;
  DrawOptions draw;
  app.add_option("-m,--model", model, "model directory (official DreamLLM release layout)")->required();
  app.add_option("-p,--prompt", first, "a first message, sent before the lines of standard input");
  app.add_option("--system", system_prompt, "replace the vicuna system prompt");
  app.add_option("--template", layout,
                 "eval: the original evaluation's template; train: the training conversations' (for models that "
                 "only saw that one, such as the shapes world's), as in ask")
      ->check(CLI::IsMember({"eval", "train"}));
  app.add_option("--output-dir", output_dir, "directory for the pictures the model draws (chat_1.png, chat_2.png, ...)");
  app.add_option("--max-images", max_images, "most pictures per answer (0: never draw)")->check(CLI::Range(0, 64));
  app.add_option("-t,--threads", threads, "threads (default: all cores)")->check(kNonNegativeNumber);
  app.add_flag("-q,--quiet", quiet, "no banner and prompts (for scripts; also when standard input is not a terminal)");
  app.add_flag("--force", force, "answer messages outside the prompt language the model declares (a warning instead "
                                 "of an error)");
  text.add_to(app);
  draw.add_to(app);
  add_image_limit_option(app);
  if (auto code = parse_or_exit(app, argc, argv)) return *code;
  set_num_threads(threads);
  quiet = quiet || !isatty(0);

  // Drawing needs the diffusion head; a model without one (text-only, or comprehension-only) chats without it.
  const io::ModelDir dir = open_model_dir(model);
  const bool can_draw = max_images > 0 && dir.has(io::kDream) && dir.has(io::kConditionProjector) &&
                        dir.has(io::kDiffusion);
  pipelines::ChatOptions options;
  options.system_prompt = system_prompt;
  options.layout = layout == "train" ? text::VicunaVariant::Train : text::VicunaVariant::Eval;
  options.answer.max_images = can_draw ? max_images : 0;
  if (can_draw) {
    check_output_directory((std::filesystem::path(output_dir) / "chat_1.png").string());
    const auto latent = draw.latent_size(dir);
    options.answer.latent_height = latent.first;
    options.answer.latent_width = latent.second;
    options.answer.drawing = draw.sampling();
    options.answer.seed = uint64_t(draw.seed);
    options.answer.tiled_decode = draw.tiled;
  }
  const Model m(model, can_draw);
  options.answer.text = text.config(m.tokenizer.eos_id());
  if (can_draw) options.answer.negative_ids = m.tokenizer.encode(draw.negative);
  if (!quiet) std::fprintf(stderr, "dreamllm chat: type a message, or /help.\n");
  ChatEvents ev;
  ev.text = [](const std::string& piece) {
    std::fwrite(piece.data(), 1, piece.size(), stdout);
    std::fflush(stdout);
  };
  ev.answer_begins = [quiet] {
    if (!quiet) std::fputs("ASSISTANT: ", stdout);
  };
  ev.note = [quiet](const std::string& note) {
    if (!quiet) std::fputs(note.c_str(), stderr);
  };
  ev.confirm = [](const std::string& note) { std::fputs(note.c_str(), stderr); };
  std::unique_ptr<Progress> progress;
  ev.drawing = [&](size_t step, size_t steps) {
    if (step <= 1 || !progress) progress = std::make_unique<Progress>("drawing", steps);
    progress->update(step);
  };
  ChatSession session(m, std::move(options), ev, ChatPictures{output_dir, "chat"});
  std::string line;
  bool pending_first = !first.empty();
  while (true) {
    bool too_long = false;
    if (pending_first) {
      line = first;
      pending_first = false;
    } else {
      if (!quiet) std::fprintf(stdout, "USER: "), std::fflush(stdout);
      if (!read_chat_line(std::cin, line, kMaxChatLine, too_long)) break;
    }
    if (too_long) {
      std::fprintf(stderr, "dreamllm chat: error: the line is longer than %zu bytes; it was ignored\n", kMaxChatLine);
      continue;
    }
    try {
      if (!line.empty() && line[0] != '/') {
        const std::string w = world::require_prompt_language(model, world::PromptUse::Chat, line, force);
        if (!w.empty()) std::fprintf(stderr, "dreamllm chat: warning: %s\n", w.c_str());
      }
      if (!session.handle(line)) break;
    } catch (const Error& e) {
      // The session is as it was before the line: report and read the next one.
      std::fprintf(stderr, "dreamllm chat: error: %s\n", e.what());
    }
  }
  return 0;
}

}  // namespace dl::app
