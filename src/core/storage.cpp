#include "core/storage.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <new>

#include "core/error.h"
#include "core/file.h"

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

void* aligned_block(size_t bytes, size_t rounded) {
  void* p = std::aligned_alloc(64, rounded);
  if (!p) fail("out of memory allocating ", bytes, " bytes");
  return p;
}

}  // namespace

std::shared_ptr<Storage> Storage::allocate_uninitialized(size_t bytes) {
  return std::shared_ptr<Storage>(new Storage(aligned_block(bytes, allocated_bytes(bytes)), bytes, Kind::Owned));
}

std::shared_ptr<Storage> Storage::allocate(size_t bytes) {
  const size_t rounded = allocated_bytes(bytes);
  void* p = aligned_block(bytes, rounded);
  std::memset(p, 0, rounded);
  return std::shared_ptr<Storage>(new Storage(p, bytes, Kind::Owned));
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
    case Kind::Owned: std::free(data_); break;
    case Kind::Mapped:
      if (data_) ::munmap(data_, size_);
      break;
    case Kind::View: break;
  }
}

}  // namespace dl
