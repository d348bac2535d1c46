#include "fuzz_targets.h"

// fuzz_targets.h describes the input.
extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  return dl::fuzz::run([&] { dl::fuzz::model_dir_input(data, size); });
}
