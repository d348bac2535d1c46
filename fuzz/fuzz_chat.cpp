// A chat session on the tiny model of the tests driven by arbitrary lines (one answer token each): every bad line
// must be a dl::Error after which the session takes the next line, never a crash or a sanitizer report. "/image"
// lines attach the fixture picture, whatever path they name, so that the fuzzer opens no file of its choosing.
#include <algorithm>
#include <string>

#include "chat_session.h"
#include "fuzz_common.h"

namespace {

const dl::app::Model& tiny_model() {
  static const dl::app::Model m(DL_FIXTURE_DIR "/tiny_full", false);
  return m;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const dl::app::Model& m = tiny_model();
  dl::pipelines::GenerationConfig gc;
  gc.max_new_tokens = 1;
  gc.eos_token_id = m.tokenizer.eos_id();
  dl::app::ChatSession session(m, "", gc, {});
  const std::string text(reinterpret_cast<const char*>(data), size);
  for (size_t from = 0; from <= text.size();) {
    const size_t end = std::min(text.find('\n', from), text.size());
    std::string line = text.substr(from, end - from);
    from = end + 1;
    if (line.rfind("/image", 0) == 0) line = "/image " DL_FIXTURE_DIR "/images/files/photo.jpg";
    bool go_on = true;
    dl::fuzz::run([&] { go_on = session.handle(line); });
    if (!go_on) break;
  }
  return 0;
}
