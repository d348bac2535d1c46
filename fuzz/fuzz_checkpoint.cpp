#include <unistd.h>

#include "fuzz_targets.h"

// fuzz_targets.h describes the input; the optimizer file goes through a per-process scratch directory.
extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string dir = [] {
    const std::string d = "/tmp/dl_fuzz_checkpoint_" + std::to_string(getpid());
    std::filesystem::create_directories(d);
    return d;
  }();
  return dl::fuzz::run([&] { dl::fuzz::checkpoint_input(data, size, dir); });
}
