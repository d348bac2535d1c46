#include "fuzz_common.h"
#include "io/torch_bin.h"
#include "io/zip.h"

// The input is a whole torch.save archive: zip parsing, inflate, the unpickler and tensor rebuilds.
extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  return dl::fuzz::run([&] {
    dl::io::ZipArchive zip(dl::fuzz::bytes_storage(data, size), "fuzz input");
    for (const auto& [name, t] : dl::io::read_torch_bin(zip)) (void)t.to_vector();
  });
}
