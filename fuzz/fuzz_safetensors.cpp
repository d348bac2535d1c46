#include "fuzz_common.h"
#include "io/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  return dl::fuzz::run([&] {
    auto f = dl::io::parse_safetensors(dl::fuzz::bytes_storage(data, size), "fuzz input");
    for (const auto& [name, t] : f.tensors) (void)t.to_vector();  // touch every byte the header claims
  });
}
