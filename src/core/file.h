// Input files, opened one way everywhere: read-only and without blocking. A plain open() of a FIFO waits for a
// writer forever, and a device or a directory "opens" and then reads endlessly or fails obscurely; so every input
// is opened with O_NONBLOCK, checked with fstat to be a regular file (refused by name and kind otherwise: "'x' is a
// FIFO, not a regular file"), and only then read, blocking again as usual.
#pragma once
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>

#include <sys/types.h>

namespace dl {

class InputFile {
 public:
  // Throws dl::Error naming the path: missing, unreadable, a symbolic-link loop, or not a regular file.
  explicit InputFile(const std::string& path);
  ~InputFile();
  InputFile(InputFile&& other) noexcept;
  InputFile& operator=(InputFile&& other) noexcept;
  InputFile(const InputFile&) = delete;
  InputFile& operator=(const InputFile&) = delete;

  int fd() const { return fd_; }
  const std::string& path() const { return path_; }
  // The size when it was opened.
  uint64_t size() const { return size_; }

  // Up to n bytes from the current position; 0 only at the end of the file.
  size_t read(void* out, size_t n);
  // Exactly n bytes at `offset` (the position is unchanged); throws when the file has fewer.
  void read_at(uint64_t offset, void* out, size_t n);
  // Moves the current position forward by n bytes without reading them.
  void skip(uint64_t n);
  // The rest of the file; throws naming the file and the limit when it holds more than max_bytes.
  std::string read_all(size_t max_bytes);

 private:
  int fd_ = -1;
  std::string path_;
  uint64_t size_ = 0;
};

// The whole of a file (at most max_bytes, else an error naming the file and the limit).
std::string read_file(const std::string& path, size_t max_bytes);
// The same, or nullopt when nothing exists at `path` (a dangling symbolic link counts as nothing). Anything else
// that is there but cannot be read (a FIFO, a directory, no permission) is still an error.
std::optional<std::string> read_file_if_exists(const std::string& path, size_t max_bytes);

// What a file of this mode is, for messages: "a FIFO", "a directory", "a character device", ...; empty for a
// regular file.
const char* file_kind(mode_t mode);

// What a path is for messages when it is not a regular file: "a FIFO", "a directory", ...; empty when it is one
// or does not exist. Does not follow a symbolic-link loop into an exception (std::filesystem would throw).
std::string special_file_kind(const std::string& path);

}  // namespace dl
