#include <vector>

#include "fuzz_common.h"
#include "train/webdataset.h"

// The input is a whole tar shard: the header parser (checksums, octal and base-256 sizes, ustar prefixes, GNU long
// names, pax records), member reads, and the webdataset sample grouping with its JSON parsing.
extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::vector<uint8_t> bytes(data, data + size);
  dl::fuzz::run([&] {
    dl::train::TarReader tar("fuzz input", bytes);
    while (auto member = tar.next()) {
      if (member->size <= (uint64_t(1) << 16)) (void)tar.read(*member);
    }
  });
  return dl::fuzz::run([&] {
    dl::train::WebDatasetReader reader(dl::train::TarReader("fuzz input", bytes));
    while (reader.next()) {
    }
  });
}
