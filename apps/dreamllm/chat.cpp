// `dreamllm chat`: an interactive conversation (vicuna v1.1, as `ask`), images attached inline with /image.
// Each turn feeds only what is new to the KV cache when the re-tokenized conversation still starts with what the
// model has seen; otherwise it re-reads the conversation.
#include <cstdio>
#include <iostream>

#include "cli_common.h"
#include "core/error.h"
#include "core/ops.h"
#include "core/thread_pool.h"
#include "io/image_file.h"
#include "pipelines/comprehend.h"
#include "pipelines/text_stream.h"
#include "text/chat_template.h"

namespace dl::app {

namespace {

const char* kChatHelp =
    "  /image PATH   attach an image to your next message (placed where the message says <image>, else first)\n"
    "  /reset        start a new conversation\n"
    "  /quit         leave (or end the input)\n";

int64_t count_spans(const std::vector<int32_t>& ids, int32_t im_start, size_t n) {
  int64_t c = 0;
  for (size_t i = 0; i < n; ++i) c += ids[i] == im_start;
  return c;
}

}  // namespace

int chat_main(int argc, char** argv) {
  CLI::App app("Chat with DreamLLM; attach images with /image PATH.", "chat");
  std::string model, system_prompt;
  int threads = 0;
  bool quiet = false;
  TextOptions text;
  text.max_tokens = 512;
  app.add_option("-m,--model", model, "model directory (official DreamLLM release layout)")->required();
  app.add_option("--system", system_prompt, "replace the vicuna system prompt");
  app.add_option("-t,--threads", threads, "threads (default: all cores)")->check(CLI::NonNegativeNumber);
  app.add_flag("-q,--quiet", quiet, "no banner and prompts (for scripts)");
  text.add_to(app);
  add_image_limit_option(app);
  if (auto code = parse_or_exit(app, argc, argv)) return *code;
  set_num_threads(threads);

  const Model m(model, false);
  const int32_t im_start = m.tokenizer.token_id(text::kImageStartToken);
  const int64_t limit = m.dir.config().llm.max_position_embeddings;
  if (!quiet) std::fprintf(stderr, "dreamllm chat: type a message, or /help.\n");

  auto fresh_conversation = [&] {
    text::Conversation c(text::VicunaVariant::Eval);
    if (!system_prompt.empty()) c.set_system(system_prompt);
    return c;
  };
  text::Conversation conv = fresh_conversation();
  std::vector<Tensor> pixels;         // every attached image, in conversation order
  std::vector<std::string> pending;   // images for the next message
  pipelines::DreamLLMDecoder decoder(m.llm);
  std::vector<int32_t> seen;          // what the decoder has consumed
  std::string line;
  while (true) {
    if (!quiet) std::fprintf(stdout, "USER: "), std::fflush(stdout);
    if (!std::getline(std::cin, line)) break;
    if (line == "/quit" || line == "/exit") break;
    if (line == "/help") {
      std::fputs(kChatHelp, stdout);
      continue;
    }
    if (line == "/reset") {
      conv = fresh_conversation();
      pixels.clear();
      pending.clear();
      seen.clear();
      continue;
    }
    if (line.rfind("/image ", 0) == 0) {
      const std::string path = line.substr(7);
      try {
        io::read_image(path);  // fail now, not at the next message
        pending.push_back(path);
        if (!quiet) std::fprintf(stderr, "(image attached: %s)\n", path.c_str());
      } catch (const Error& e) {
        std::fprintf(stderr, "dreamllm chat: error: %s\n", e.what());
      }
      continue;
    }
    if (line.empty()) continue;
    if (line[0] == '/') {
      std::fprintf(stderr, "dreamllm chat: unknown command '%s'\n%s", line.c_str(), kChatHelp);
      continue;
    }
    const std::string user = place_images(m, line, pending.size());
    const Tensor new_px = load_pixels(m, pending);
    pending.clear();
    if (new_px.defined()) pixels.push_back(new_px);
    conv.append_user(user);
    conv.append_assistant(std::nullopt);
    std::vector<int32_t> ids = m.tokenizer.encode(conv.generation_prompt());
    DL_CHECK(int64_t(ids.size()) < limit, "the conversation has ", ids.size(), " tokens; the model supports ", limit,
             " (use /reset)");
    pipelines::GenerationConfig gc = text.config(m.tokenizer.eos_id());
    gc.max_new_tokens = std::min<int64_t>(gc.max_new_tokens, limit - int64_t(ids.size()));

    const Tensor all_px = pixels.empty() ? Tensor() : ops::concat(pixels, 0);
    Tensor logits;
    const bool reuse = gc.num_beams == 1 && !seen.empty() && seen.size() < ids.size() &&
                       std::equal(seen.begin(), seen.end(), ids.begin());
    if (reuse) {
      const std::vector<int32_t> suffix(ids.begin() + int64_t(seen.size()), ids.end());
      const int64_t before = count_spans(ids, im_start, seen.size()), total = count_spans(ids, im_start, ids.size());
      const Tensor px = total > before ? all_px.slice(0, before, total).contiguous() : Tensor();
      logits = decoder.feed(suffix, px);
    } else {
      logits = decoder.prefill({ids}, all_px);
    }
    if (!quiet) std::fputs("ASSISTANT: ", stdout);
    pipelines::TextStream stream(m.tokenizer, [](const std::string& piece) {
      std::fwrite(piece.data(), 1, piece.size(), stdout);
      std::fflush(stdout);
    });
    pipelines::GenerationCallbacks cb;
    cb.on_token = [&](int64_t, int32_t tok) { stream.push(tok); };
    const auto r = pipelines::generate(decoder, logits, {ids}, gc, cb);
    const std::vector<int32_t>& answer = r.tokens[0];
    if (gc.num_beams > 1) {
      std::fputs(m.tokenizer.decode(answer).c_str(), stdout);  // beam search streams nothing
      seen.clear();  // beam search reshaped the session: the next turn re-reads
    } else {
      seen = ids;
      seen.insert(seen.end(), answer.begin(), answer.end());
      seen.resize(size_t(decoder.consumed()));  // the last token is not fed when the length limit stopped the row
    }
    std::fputs("\n", stdout);
    std::fflush(stdout);
    // The answer becomes the assistant turn; the template closes it with "</s>".
    conv.set_last_message(m.tokenizer.decode(answer));
  }
  return 0;
}

}  // namespace dl::app
