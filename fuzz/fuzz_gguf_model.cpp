#include "fuzz_targets.h"

// fuzz_targets.h describes the input.
extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  return dl::fuzz::run([&] { dl::fuzz::gguf_model_input(data, size); });
}
