#include "fuzz_common.h"
#include "io/torch_bin.h"

// The input is a bare pickle stream, with no archive to resolve storages from.
extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  return dl::fuzz::run([&] { dl::io::unpickle_state_dict(data, size, nullptr, "archive", "fuzz input"); });
}
