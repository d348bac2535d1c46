#include "core/storage.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <new>

#include "core/error.h"
#include "core/file.h"

#if defined(__has_feature)
#define DL_HAS_ADDRESS_SANITIZER __has_feature(address_sanitizer)
#else
#define DL_HAS_ADDRESS_SANITIZER 0
#endif

namespace dl {

namespace {

// The 64-byte multiple actually allocated for `bytes` (at least one block), after refusing absurd sizes before
// asking the allocator (a corrupt header must not trigger a giant allocation that "succeeds" lazily and then fails
// on first touch).
size_t allocated_bytes(size_t bytes) {
  constexpr size_t kMaxBytes = size_t(1) << 46;
  DL_CHECK(bytes <= kMaxBytes, "allocation of ", bytes, " bytes is larger than the 64 TiB limit");
  return std::max<size_t>(64, (bytes + 63) / 64 * 64);
}

// Freed activation-sized blocks kept for reuse. A forward pass allocates the same few sizes over and over (a UNet
// step allocates gigabytes of short-lived tensors of a few megabytes each); handed back to glibc each block of that
// size is unmapped and, allocated again, faulted in and zeroed by the kernel page by page, which cost 10-15% of a
// UNet step. Blocks are matched best-fit within 1/8 slack, and the pool holds at most limit_ bytes (512 MiB, DREAMLLM_POOL_MB),
// releasing its oldest blocks beyond that, so the process's resident memory grows by at most that figure.
class BlockPool {
 public:
  static constexpr size_t kMinBytes = size_t(256) << 10;  // glibc keeps smaller blocks in its own arenas
  static constexpr size_t kMaxBytes = size_t(256) << 20;  // weights and caches of this size are not churned

  static BlockPool& instance() {
    static BlockPool pool;
    return pool;
  }

  // A free block of at least `bytes` (and at most 1/8 more), or null.
  void* take(size_t bytes, size_t* block_bytes) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = by_size_.lower_bound(bytes);
    if (it == by_size_.end() || it->first > bytes + bytes / 8) return nullptr;
    void* p = it->second.data;
    *block_bytes = it->first;
    cached_ -= it->first;
    by_size_.erase(it);
    return p;
  }

  // Keeps `p` for reuse, or frees it when it does not fit the pool.
  void give(void* p, size_t block_bytes) {
    if (block_bytes < kMinBytes || block_bytes > kMaxBytes || limit_ == 0) {
      std::free(p);
      return;
    }
    std::lock_guard<std::mutex> lock(mutex_);
    by_size_.emplace(block_bytes, Entry{p, ++clock_});
    cached_ += block_bytes;
    while (cached_ > limit_) {
      auto oldest = by_size_.begin();
      for (auto it = by_size_.begin(); it != by_size_.end(); ++it)
        if (it->second.age < oldest->second.age) oldest = it;
      cached_ -= oldest->first;
      std::free(oldest->second.data);
      by_size_.erase(oldest);
    }
  }

  ~BlockPool() {
    for (auto& [size, e] : by_size_) std::free(e.data);
  }

 private:
  struct Entry {
    void* data;
    uint64_t age;
  };
  BlockPool() {
    // DREAMLLM_POOL_MB=0 turns the pool off (every block straight back to glibc).
    if (const char* mb = std::getenv("DREAMLLM_POOL_MB")) limit_ = size_t(std::strtoull(mb, nullptr, 10)) << 20;
  }
  std::mutex mutex_;
  std::multimap<size_t, Entry> by_size_;
  size_t cached_ = 0;
#if defined(__SANITIZE_ADDRESS__) || DL_HAS_ADDRESS_SANITIZER
  size_t limit_ = 0;  // AddressSanitizer must see every free to catch a use after it
#else
  size_t limit_ = size_t(512) << 20;
#endif
  uint64_t clock_ = 0;
};

// The block for an owned storage of `bytes`: from the pool when one fits, else fresh. *block_bytes is its real size.
void* owned_block(size_t bytes, size_t* block_bytes) {
  const size_t rounded = allocated_bytes(bytes);
  if (rounded >= BlockPool::kMinBytes && rounded <= BlockPool::kMaxBytes) {
    if (void* p = BlockPool::instance().take(rounded, block_bytes)) return p;
  }
  void* p = std::aligned_alloc(64, rounded);
  if (!p) fail("out of memory allocating ", bytes, " bytes");
  *block_bytes = rounded;
  return p;
}

}  // namespace

std::shared_ptr<Storage> Storage::allocate_uninitialized(size_t bytes) {
  size_t block = 0;
  void* p = owned_block(bytes, &block);
  return std::shared_ptr<Storage>(new Storage(p, bytes, Kind::Owned, block));
}

std::shared_ptr<Storage> Storage::allocate(size_t bytes) {
  size_t block = 0;
  void* p = owned_block(bytes, &block);
  std::memset(p, 0, allocated_bytes(bytes));
  return std::shared_ptr<Storage>(new Storage(p, bytes, Kind::Owned, block));
}

std::shared_ptr<Storage> Storage::map_file(const std::string& path) {
  const InputFile file(path);  // refuses FIFOs, devices and directories without blocking on them
  const size_t size = size_t(file.size());
  void* p = nullptr;
  if (size > 0) {
    p = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, file.fd(), 0);
    if (p == MAP_FAILED) fail("cannot map '", path, "': ", std::strerror(errno));
  }
  return std::shared_ptr<Storage>(new Storage(p, size, Kind::Mapped));
}

namespace {

// MemAvailable of /proc/meminfo in bytes, or 0 when it cannot be read.
size_t available_memory() {
  const int fd = ::open("/proc/meminfo", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  char buf[4096];
  const ssize_t n = ::read(fd, buf, sizeof buf - 1);
  ::close(fd);
  if (n <= 0) return 0;
  buf[n] = '\0';
  const char* line = std::strstr(buf, "MemAvailable:");
  if (!line) return 0;
  return size_t(std::strtoull(line + 13, nullptr, 10)) * 1024;
}

}  // namespace

std::shared_ptr<Storage> Storage::read_weights_file(const std::string& path) {
  std::shared_ptr<Storage> mapped = map_file(path);
  const char* keep_mapped = std::getenv("DREAMLLM_MMAP");
  if ((keep_mapped && std::strcmp(keep_mapped, "1") == 0) || mapped->size() < kCopyAtLeast) return mapped;
  constexpr size_t kHugePage = size_t(2) << 20;
  const size_t size = mapped->size(), rounded = (size + kHugePage - 1) / kHugePage * kHugePage;
  // A copy the machine cannot hold would only push the rest of the model (or the copy itself) into swap: then the
  // mapping, which the kernel pages in and out on its own, is the faster of the two.
  if (rounded + kCopyHeadroom > available_memory()) return mapped;
  void* p = std::aligned_alloc(kHugePage, rounded);
  if (p == nullptr) return mapped;  // no memory for a copy: the mapping still works, only slower
  ::madvise(p, rounded, MADV_HUGEPAGE);  // where transparent huge pages are opt-in ("madvise" mode)
  ::madvise(mapped->data(), size, MADV_SEQUENTIAL);
  // Chunk by chunk, each copied chunk of the mapping released at once: the process then holds the file about once
  // (the copy plus one chunk), not twice, at its peak. The page cache keeps the file, reclaimable, outside it.
  constexpr size_t kChunk = size_t(32) << 20;  // a multiple of every page size
  for (size_t off = 0; off < size; off += kChunk) {
    const size_t n = std::min(kChunk, size - off);
    std::memcpy(static_cast<char*>(p) + off, static_cast<const char*>(mapped->data()) + off, n);
    ::madvise(static_cast<char*>(mapped->data()) + off, n, MADV_DONTNEED);
  }
  return std::shared_ptr<Storage>(new Storage(p, size, Kind::Owned));
}

std::shared_ptr<Storage> Storage::view(std::shared_ptr<Storage> parent, size_t offset, size_t bytes) {
  DL_CHECK(parent, "storage view of a null storage");
  DL_CHECK(offset <= parent->size() && bytes <= parent->size() - offset, "storage view [", offset, ", +", bytes,
           ") outside a ", parent->size(), "-byte storage");
  auto s = std::shared_ptr<Storage>(new Storage(static_cast<char*>(parent->data()) + offset, bytes, Kind::View));
  s->parent_ = std::move(parent);
  return s;
}

Storage::~Storage() {
  switch (kind_) {
    case Kind::Owned:
      if (block_bytes_ > 0)
        BlockPool::instance().give(data_, block_bytes_);
      else
        std::free(data_);
      break;
    case Kind::Mapped:
      if (data_) ::munmap(data_, size_);
      break;
    case Kind::View: break;
  }
}

}  // namespace dl
