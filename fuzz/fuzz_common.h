// Shared glue for the libFuzzer targets: every input either parses or raises dl::Error; anything else (a crash,
// an ASan report, another exception type, a hang) is a bug.
#pragma once
#include <cstdint>
#include <cstring>
#include <memory>

#include "core/error.h"
#include "core/storage.h"

namespace dl::fuzz {

inline std::shared_ptr<Storage> bytes_storage(const uint8_t* data, size_t size) {
  auto s = Storage::allocate(size);
  if (size) std::memcpy(s->data(), data, size);
  return s;
}

template <typename Fn>
int run(Fn&& fn) {
  try {
    fn();
  } catch (const Error&) {
  }
  return 0;
}

}  // namespace dl::fuzz
