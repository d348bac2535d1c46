// Byte buffers that tensors view: owned (64-byte aligned heap memory) or a read-only memory-mapped file.
#pragma once
#include <cstddef>
#include <memory>
#include <string>

namespace dl {

class Storage {
 public:
  // Owned, 64-byte aligned, zero-initialised memory.
  static std::shared_ptr<Storage> allocate(size_t bytes);
  // The same without zeroing, for outputs whose every byte the caller writes before anything reads them.
  static std::shared_ptr<Storage> allocate_uninitialized(size_t bytes);
  // Maps a whole file read-only (copy-on-write private mapping). Throws naming the path on failure.
  static std::shared_ptr<Storage> map_file(const std::string& path);
  // A weight file's bytes for the life of a model. Files of kCopyAtLeast bytes or more are copied out of the page
  // cache into memory of 2 MiB pages: decoding streams every weight once per token, and through a mapping of
  // 4 KiB page-cache pages it ran about 1.3x slower than from such a copy (docs/benchmarks.md). DREAMLLM_MMAP=1
  // keeps every file mapped instead, as do smaller files and a file the machine's available memory (MemAvailable)
  // cannot hold with kCopyHeadroom to spare. The copy is made chunk by chunk, releasing each copied chunk of the
  // mapping, so the process holds the file about once at its peak, not twice.
  static std::shared_ptr<Storage> read_weights_file(const std::string& path);
  static constexpr size_t kCopyAtLeast = size_t(64) << 20;
  static constexpr size_t kCopyHeadroom = size_t(1) << 30;
  // A byte range of another storage (kept alive by the view), e.g. one entry of a mapped archive. Inherits the
  // parent's mapped/read-only nature.
  static std::shared_ptr<Storage> view(std::shared_ptr<Storage> parent, size_t offset, size_t bytes);

  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;

  void* data() const { return data_; }
  size_t size() const { return size_; }
  bool is_mapped() const { return kind_ == Kind::Mapped || (parent_ && parent_->is_mapped()); }
  bool is_writable() const { return kind_ == Kind::Owned || (parent_ && parent_->is_writable()); }

 private:
  enum class Kind { Owned, Mapped, View };
  Storage(void* data, size_t size, Kind kind, size_t block_bytes = 0)
      : data_(data), size_(size), kind_(kind), block_bytes_(block_bytes) {}
  void* data_;
  size_t size_;
  Kind kind_;
  size_t block_bytes_;  // owned blocks from owned_block(): their real size, so they can go back to the pool
  std::shared_ptr<Storage> parent_;
};

}  // namespace dl
