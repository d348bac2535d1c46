// Read-only ZIP archive access over a memory-mapped file, enough for PyTorch's torch.save format: stored and
// deflated entries, ZIP64 sizes and offsets. Stored entries are returned as zero-copy views of the mapping.
#pragma once
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/storage.h"

namespace dl::io {

class ZipArchive {
 public:
  // Parses the central directory; throws dl::Error naming `what` and the problem.
  ZipArchive(std::shared_ptr<Storage> file, std::string what);
  static ZipArchive open(const std::string& path);

  bool contains(const std::string& name) const { return entries_.count(name) != 0; }
  // Entry names in archive order of their names (sorted).
  std::vector<std::string> names() const;
  // The entry's bytes: a view of the mapping for stored entries, an inflated copy for deflated ones.
  std::shared_ptr<Storage> read(const std::string& name) const;
  const std::string& what() const { return what_; }

 private:
  struct Entry {
    uint16_t method;
    uint64_t compressed, uncompressed, local_offset;
  };
  std::shared_ptr<Storage> file_;
  std::string what_;
  std::map<std::string, Entry> entries_;
};

}  // namespace dl::io
