#include "chat_session.h"

#include <algorithm>

#include <filesystem>

#include "core/error.h"
#include "io/image_file.h"

namespace dl::app {

namespace {

const char* kChatHelp =
    "  /image PATH   attach an image to your next message (placed where the message says <image>, else first)\n"
    "  /reset        start a new conversation\n"
    "  /quit         leave (or end the input)\n";

}  // namespace

bool read_chat_line(std::istream& in, std::string& line, size_t max_bytes, bool& too_long) {
  line.clear();
  too_long = false;
  std::streambuf* sb = in.rdbuf();
  bool any = false;
  for (;;) {
    const auto c = sb->sbumpc();
    if (c == std::char_traits<char>::eof()) {
      in.setstate(std::ios::eofbit);
      break;
    }
    any = true;
    if (c == '\n') break;
    if (line.size() < max_bytes)
      line.push_back(char(c));
    else
      too_long = true;
  }
  if (too_long) line.clear();
  return any;
}

namespace {

pipelines::ChatOptions text_only(std::string system_prompt, pipelines::GenerationConfig generation) {
  pipelines::ChatOptions o;
  o.system_prompt = std::move(system_prompt);
  o.answer.text = std::move(generation);
  o.answer.max_images = 0;
  return o;
}

}  // namespace

ChatSession::ChatSession(const Model& m, std::string system_prompt, pipelines::GenerationConfig generation,
                         ChatEvents events)
    : ChatSession(m, text_only(std::move(system_prompt), std::move(generation)), std::move(events), ChatPictures{}) {}

ChatSession::ChatSession(const Model& m, pipelines::ChatOptions options, ChatEvents events, ChatPictures pictures)
    : m_(m),
      ev_(std::move(events)),
      pictures_(std::move(pictures)),
      session_(m.llm, options.answer.max_images > 0 ? m.head.get() : nullptr, m.tokenizer, m.clip_preprocess,
               std::move(options)) {}

bool ChatSession::handle(const std::string& line) {
  if (line == "/quit" || line == "/exit") return false;
  if (line == "/help") {
    ev_.text(kChatHelp);
    return true;
  }
  if (line == "/reset") {
    session_.reset();
    pending_.clear();
    ev_.confirm("(new conversation: the model no longer sees the earlier turns)\n");
    return true;
  }
  if (line.rfind("/image ", 0) == 0) {
    const std::string path = line.substr(7);
    m_.llm.require_vision("/image " + path);
    pending_.push_back(io::read_image(path));  // fail now, not at the next message
    ev_.note("(image attached: " + path + ")\n");
    return true;
  }
  if (line.empty()) return true;
  if (line[0] == '/') fail("unknown command '", line, "'\n", kChatHelp);

  pipelines::WriteEvents we;
  bool begun = false;
  auto begin = [&] {
    if (!begun) ev_.answer_begins();
    begun = true;
  };
  we.on_text = [&](const std::string& piece) {
    begin();
    ev_.text(piece);
  };
  we.on_diffusion_step = [&](size_t step, size_t steps) { ev_.drawing(step, steps); };
  we.on_image = [&](size_t, const io::Image& picture) {
    // Saved as it is drawn, and shown by its path where it stands in the answer.
    begin();
    const std::string path =
        (std::filesystem::path(pictures_.dir) / (pictures_.prefix + "_" + std::to_string(saved_ + 1) + ".png")).string();
    io::write_png(path, picture);
    ++saved_;
    ev_.text("[picture: " + path + "]");
  };
  session_.turn(line, pending_, we);
  begin();
  pending_.clear();
  ev_.text("\n");
  return true;
}

}  // namespace dl::app
