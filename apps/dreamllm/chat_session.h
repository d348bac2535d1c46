// One `dreamllm chat` conversation, one input line at a time: commands (/image, /reset, /help, /quit) and messages.
// A bad line (an <image> without /image, a message that does not fit the context, an unreadable picture) throws
// dl::Error after the session is put back exactly as it was before the line, so the conversation goes on.
#pragma once
#include <functional>
#include <istream>
#include <string>
#include <vector>

#include "cli_common.h"
#include "pipelines/comprehend.h"
#include "text/chat_template.h"

namespace dl::app {

// Where a session's output goes: the answer as it streams (and the line end after it), the moment an answer
// begins (for an "ASSISTANT:" prompt), and remarks meant for a person (attached images, help).
struct ChatEvents {
  std::function<void(const std::string&)> text = [](const std::string&) {};
  std::function<void()> answer_begins = [] {};
  std::function<void(const std::string&)> note = [](const std::string&) {};
};

class ChatSession {
 public:
  ChatSession(const Model& m, std::string system_prompt, pipelines::GenerationConfig generation, ChatEvents events);

  // Handles one line; false when the user asked to leave. Throws dl::Error for a bad line, leaving the session as
  // it was before it.
  bool handle(const std::string& line);

 private:
  // `fed` turns true once the decoder's cache has changed.
  void message(const std::string& line, bool& fed);
  void reset();

  const Model& m_;
  std::string system_prompt_;
  pipelines::GenerationConfig generation_;
  ChatEvents ev_;
  int32_t im_start_;
  int64_t limit_;
  text::Conversation conv_;
  std::vector<Tensor> pixels_;         // every attached image, in conversation order
  std::vector<std::string> pending_;   // images for the next message
  pipelines::DreamLLMDecoder decoder_;
  std::vector<int32_t> seen_;          // what the decoder has consumed
};

// The longest input line chat reads: a longer one is a mistake (a pasted file), and tokenizing megabytes would
// keep the session busy for long.
constexpr size_t kMaxChatLine = size_t(1) << 20;

// Reads one line (without its newline) of at most `max_bytes`; a longer line is read to its end and dropped,
// with `too_long` set. False at the end of the input.
bool read_chat_line(std::istream& in, std::string& line, size_t max_bytes, bool& too_long);

}  // namespace dl::app
