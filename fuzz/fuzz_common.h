// Shared glue for the libFuzzer targets: every input either parses or raises dl::Error; anything else (a crash,
// an ASan report, another exception type, a hang) is a bug.
#pragma once
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/storage.h"

namespace dl::fuzz {

inline std::shared_ptr<Storage> bytes_storage(const uint8_t* data, size_t size) {
  auto s = Storage::allocate(size);
  if (size) std::memcpy(s->data(), data, size);
  return s;
}

// Targets that take several files cut the input at the first n - 1 NUL bytes: n parts, the last one the rest of
// the input (so a binary file goes last; JSON text never holds a raw NUL). Missing parts are empty.
inline std::vector<std::string> split_parts(const uint8_t* data, size_t size, size_t n) {
  std::vector<std::string> parts;
  const char* p = reinterpret_cast<const char*>(data);
  const char* end = p + size;
  while (parts.size() + 1 < n) {
    const char* nul = static_cast<const char*>(std::memchr(p, 0, size_t(end - p)));
    if (!nul) break;
    parts.emplace_back(p, nul);
    p = nul + 1;
  }
  parts.emplace_back(p, end);
  parts.resize(n);
  return parts;
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
