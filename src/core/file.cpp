#include "core/file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <limits>
#include <utility>

#include "core/error.h"

namespace dl {

const char* file_kind(mode_t mode) {
  if (S_ISFIFO(mode)) return "a FIFO";
  if (S_ISDIR(mode)) return "a directory";
  if (S_ISCHR(mode)) return "a character device";
  if (S_ISBLK(mode)) return "a block device";
  if (S_ISSOCK(mode)) return "a socket";
  if (S_ISREG(mode)) return "";
  return "a special file";
}

namespace {

[[noreturn]] void fail_not_regular(const std::string& path, mode_t mode) {
  fail("'", path, "' is ", file_kind(mode), ", not a regular file");
}

}  // namespace

std::string special_file_kind(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return "";
  return file_kind(st.st_mode);
}

InputFile::InputFile(const std::string& path) : path_(path) {
  // O_NONBLOCK: opening a FIFO for reading returns at once instead of waiting for a writer. O_NOCTTY: a terminal
  // given as input must not become our controlling terminal.
  fd_ = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
  if (fd_ < 0) {
    const int e = errno;
    // A socket cannot be open()ed at all (ENXIO); say what it is rather than "No such device or address".
    const std::string kind = special_file_kind(path);
    if (!kind.empty()) fail("'", path, "' is ", kind, ", not a regular file");
    fail("cannot open '", path, "': ", std::strerror(e));
  }
  struct stat st {};
  if (::fstat(fd_, &st) != 0) {
    const int e = errno;
    ::close(fd_);
    fd_ = -1;
    fail("cannot stat '", path, "': ", std::strerror(e));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd_);
    fd_ = -1;
    fail_not_regular(path, st.st_mode);
  }
  // Reads of a regular file never return EAGAIN, but clearing the flag keeps the descriptor ordinary for whatever
  // it is handed to.
  const int flags = ::fcntl(fd_, F_GETFL);
  if (flags >= 0) ::fcntl(fd_, F_SETFL, flags & ~O_NONBLOCK);
  size_ = uint64_t(st.st_size);
}

InputFile::~InputFile() {
  if (fd_ >= 0) ::close(fd_);
}

InputFile::InputFile(InputFile&& other) noexcept
    : fd_(std::exchange(other.fd_, -1)), path_(std::move(other.path_)), size_(other.size_) {}

InputFile& InputFile::operator=(InputFile&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = std::exchange(other.fd_, -1);
    path_ = std::move(other.path_);
    size_ = other.size_;
  }
  return *this;
}

size_t InputFile::read(void* out, size_t n) {
  DL_CHECK(fd_ >= 0, "read from a closed file");
  while (true) {
    const ssize_t got = ::read(fd_, out, n);
    if (got >= 0) return size_t(got);
    if (errno != EINTR) fail("cannot read '", path_, "': ", std::strerror(errno));
  }
}

void InputFile::read_at(uint64_t offset, void* out, size_t n) {
  DL_CHECK(fd_ >= 0, "read from a closed file");
  auto* p = static_cast<char*>(out);
  size_t done = 0;
  while (done < n) {
    const ssize_t got = ::pread(fd_, p + done, n - done, off_t(offset + done));
    if (got < 0 && errno == EINTR) continue;
    if (got < 0) fail("cannot read '", path_, "' at byte ", offset + done, ": ", std::strerror(errno));
    DL_CHECK(got > 0, "'", path_, "': byte ", offset, ": read error (", n,
             " bytes wanted; was the file changed while being read?)");
    done += size_t(got);
  }
}

void InputFile::skip(uint64_t n) {
  DL_CHECK(fd_ >= 0, "read from a closed file");
  DL_CHECK(n <= uint64_t(std::numeric_limits<off_t>::max()), "'", path_, "': cannot skip ", n, " bytes");
  if (::lseek(fd_, off_t(n), SEEK_CUR) < 0) fail("cannot seek in '", path_, "': ", std::strerror(errno));
}

std::string InputFile::read_all(size_t max_bytes) {
  DL_CHECK(size_ <= max_bytes, "'", path_, "' is ", size_, " bytes, larger than the ", max_bytes, "-byte limit");
  std::string s(size_t(size_), '\0');
  size_t done = 0;
  while (done < s.size()) {
    const size_t got = read(s.data() + done, s.size() - done);
    if (got == 0) break;  // the file shrank since it was opened: keep what there is
    done += got;
  }
  s.resize(done);
  // A file that grew since it was opened is read to its size at opening: what came later is no part of it.
  return s;
}

std::string read_file(const std::string& path, size_t max_bytes) { return InputFile(path).read_all(max_bytes); }

std::optional<std::string> read_file_if_exists(const std::string& path, size_t max_bytes) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0 && errno == ENOENT) return std::nullopt;
  return read_file(path, max_bytes);
}

}  // namespace dl
