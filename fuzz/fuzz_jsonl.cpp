#include <unistd.h>

#include <fstream>
#include <string>

#include "fuzz_common.h"
#include "train/jsonl.h"

// The input is a data file: the streaming JSONL / JSON-array reader and each record format's parser. The reader
// works on files, so each input is written to a per-process scratch file first.
extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string path = "/tmp/dl_fuzz_jsonl_" + std::to_string(getpid()) + ".jsonl";
  {
    std::ofstream f(path, std::ios::binary | std::ios::trunc);
    f.write(reinterpret_cast<const char*>(data), std::streamsize(size));
  }
  for (auto format : {dl::train::RecordFormat::Interleaved, dl::train::RecordFormat::Pair,
                      dl::train::RecordFormat::Conversation}) {
    dl::fuzz::run([&] {
      dl::train::RecordReader reader(path, format, {{}, true});
      while (reader.next()) {
      }
    });
  }
  return 0;
}
