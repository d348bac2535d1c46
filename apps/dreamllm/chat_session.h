// One `dreamllm chat` conversation, one input line at a time: commands (/image, /reset, /help, /quit) and messages.
// The conversation itself, drawing included, is pipelines::ChatSession (pipelines/chat.h); this adds the commands,
// the pictures attached by path and the pictures drawn, saved as PNG files. A bad line (an <image> without /image,
// a message that does not fit the context, an unreadable picture) throws dl::Error after the session is put back
// exactly as it was before the line, so the conversation goes on.
#pragma once
#include <functional>
#include <istream>
#include <string>
#include <vector>

#include "cli_common.h"
#include "pipelines/chat.h"
#include "pipelines/comprehend.h"
#include "text/chat_template.h"

namespace dl::app {

// Where a session's output goes: the answer as it streams (and the line end after it), the moment an answer
// begins (for an "ASSISTANT:" prompt), and remarks meant for a person (attached images, help).
struct ChatEvents {
  std::function<void(const std::string&)> text = [](const std::string&) {};
  std::function<void()> answer_begins = [] {};
  std::function<void(const std::string&)> note = [](const std::string&) {};
  // Said whatever the verbosity: the answer to a command that changes the session (/reset).
  std::function<void(const std::string&)> confirm = [](const std::string&) {};
  // A drawing's progress (step of steps).
  std::function<void(size_t, size_t)> drawing = [](size_t, size_t) {};
};

// Where the pictures an answer draws go: DIR/PREFIX_N.png, N counting the conversation's pictures from 1.
struct ChatPictures {
  std::string dir = ".";
  std::string prefix = "chat";
};

class ChatSession {
 public:
  // A session that never draws, on the evaluation template.
  ChatSession(const Model& m, std::string system_prompt, pipelines::GenerationConfig generation, ChatEvents events);
  // options.answer.max_images > 0 draws (the model must have been opened with its diffusion head).
  ChatSession(const Model& m, pipelines::ChatOptions options, ChatEvents events, ChatPictures pictures);

  // Handles one line; false when the user asked to leave. Throws dl::Error for a bad line, leaving the session as
  // it was before it.
  bool handle(const std::string& line);

 private:
  const Model& m_;
  ChatEvents ev_;
  ChatPictures pictures_;
  pipelines::ChatSession session_;
  std::vector<io::Image> pending_;  // pictures for the next message
  size_t saved_ = 0;                // pictures written so far
};

// The longest input line chat reads: a longer one is a mistake (a pasted file), and tokenizing megabytes would
// keep the session busy for long.
constexpr size_t kMaxChatLine = size_t(1) << 20;

// Reads one line (without its newline) of at most `max_bytes`; a longer line is read to its end and dropped,
// with `too_long` set. False at the end of the input.
bool read_chat_line(std::istream& in, std::string& line, size_t max_bytes, bool& too_long);

}  // namespace dl::app
