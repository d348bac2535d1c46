// `dreamllm chat`: an interactive conversation (vicuna v1.1, as `ask`), images attached inline with /image.
// Each turn feeds only what is new to the KV cache when the re-tokenized conversation still starts with what the
// model has seen; otherwise it re-reads the conversation (chat_session.h). A bad message is reported and the
// conversation goes on as it was before it.
#include <cstdio>
#include <iostream>

#include "chat_session.h"
#include "cli_common.h"
#include "core/error.h"
#include "core/thread_pool.h"

namespace dl::app {

int chat_main(int argc, char** argv) {
  CLI::App app("Chat with DreamLLM; attach images with /image PATH.", "chat");
  std::string model, system_prompt;
  int threads = 0;
  bool quiet = false;
  TextOptions text;
  text.max_tokens = 512;
  app.add_option("-m,--model", model, "model directory (official DreamLLM release layout)")->required();
  app.add_option("--system", system_prompt, "replace the vicuna system prompt");
  app.add_option("-t,--threads", threads, "threads (default: all cores)")->check(kNonNegativeNumber);
  app.add_flag("-q,--quiet", quiet, "no banner and prompts (for scripts)");
  text.add_to(app);
  add_image_limit_option(app);
  if (auto code = parse_or_exit(app, argc, argv)) return *code;
  set_num_threads(threads);

  const Model m(model, false);
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
  ChatSession session(m, system_prompt, text.config(m.tokenizer.eos_id()), ev);
  std::string line;
  while (true) {
    if (!quiet) std::fprintf(stdout, "USER: "), std::fflush(stdout);
    bool too_long = false;
    if (!read_chat_line(std::cin, line, kMaxChatLine, too_long)) break;
    if (too_long) {
      std::fprintf(stderr, "dreamllm chat: error: the line is longer than %zu bytes; it was ignored\n", kMaxChatLine);
      continue;
    }
    try {
      if (!session.handle(line)) break;
    } catch (const Error& e) {
      // The session is as it was before the line: report and read the next one.
      std::fprintf(stderr, "dreamllm chat: error: %s\n", e.what());
    }
  }
  return 0;
}

}  // namespace dl::app
