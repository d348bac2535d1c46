#include "io/atomic_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <streambuf>
#include <vector>

#include "core/error.h"
#include "core/file.h"

namespace dl::io {

namespace {

namespace fs = std::filesystem;

// An output buffer over a file descriptor that remembers the first write error (errno), so a full disk is reported
// as such instead of as a bare stream failure.
class FdBuf final : public std::streambuf {
 public:
  explicit FdBuf(int fd) : fd_(fd), buf_(size_t(1) << 16) { setp(buf_.data(), buf_.data() + buf_.size()); }
  int error() const { return err_; }

 protected:
  int_type overflow(int_type c) override {
    if (!drain()) return traits_type::eof();
    if (!traits_type::eq_int_type(c, traits_type::eof())) {
      *pptr() = traits_type::to_char_type(c);
      pbump(1);
    }
    return traits_type::not_eof(c);
  }
  std::streamsize xsputn(const char* s, std::streamsize n) override {
    // Large blocks (tensor data) skip the copy into the buffer.
    if (n < std::streamsize(buf_.size())) return std::streambuf::xsputn(s, n);
    return drain() && write_all(s, size_t(n)) ? n : 0;
  }
  int sync() override { return drain() ? 0 : -1; }

 private:
  bool drain() {
    const size_t n = size_t(pptr() - pbase());
    setp(buf_.data(), buf_.data() + buf_.size());
    return write_all(buf_.data(), n);
  }
  bool write_all(const char* p, size_t n) {
    while (n > 0 && err_ == 0) {
      const ssize_t w = ::write(fd_, p, n);
      if (w < 0) {
        if (errno != EINTR) err_ = errno;
        continue;
      }
      if (w == 0) err_ = EIO;
      p += w;
      n -= size_t(w);
    }
    return err_ == 0;
  }

  int fd_;
  std::vector<char> buf_;
  int err_ = 0;
};

// The permissions a newly created file gets (0666 less the umask), which mkstemp's 0600 would otherwise narrow.
// umask can only be read by setting it, so it is read once (a static's initialiser runs in one thread alone):
// writers on several threads never see one another's momentary 0.
mode_t default_file_mode() {
  static const mode_t mode = [] {
    const mode_t mask = ::umask(0);
    ::umask(mask);
    return mode_t(0666 & ~mask);
  }();
  return mode;
}

}  // namespace

std::string output_target(const std::string& path) {
  DL_CHECK(!path.empty(), "an output path is empty");
  std::string target = path;
  for (int hops = 0;; ++hops) {
    struct stat st {};
    // Anything other than "exists": a missing file is created; other errors (a missing directory, no permission)
    // are reported by the attempt to create the temporary file, which names the cause.
    if (::lstat(target.c_str(), &st) != 0) return target;
    if (S_ISREG(st.st_mode)) return target;
    if (S_ISLNK(st.st_mode)) {
      DL_CHECK(hops < 40, "'", path, "' is a chain of more than 40 symbolic links (a loop?)");
      std::error_code ec;
      const fs::path link = fs::read_symlink(target, ec);
      DL_CHECK(!ec, "cannot read the symbolic link '", target, "': ", ec.message());
      target = link.is_absolute() ? link.string() : (fs::path(target).parent_path() / link).string();
      continue;
    }
    if (target == path) fail("'", path, "' is ", file_kind(st.st_mode), "; choose a regular file");
    fail("'", path, "' is a symbolic link to '", target, "', ", file_kind(st.st_mode), "; choose a regular file");
  }
}

struct AtomicFile::State {
  std::string path, target, tmp;
  bool sync = true, committed = false;
  int fd = -1;
  std::unique_ptr<FdBuf> buf;
  std::unique_ptr<std::ostream> os;
};

AtomicFile::AtomicFile(const std::string& path, bool sync) : s_(std::make_unique<State>()) {
  s_->path = path;
  s_->sync = sync;
  s_->target = output_target(path);
  const fs::path t(s_->target);
  const std::string name = t.filename().string();
  DL_CHECK(!name.empty() && name != "." && name != "..", "'", path, "' names a directory; choose a file name");
  // Beside the target (same file system, so the rename is atomic); the name is cut so that the temporary name
  // stays within the 255-byte limit of a file name.
  const std::string dir = t.parent_path().empty() ? std::string() : t.parent_path().string() + "/";
  std::string tmpl = dir + "." + name.substr(0, 200) + ".XXXXXX";
  std::vector<char> buf(tmpl.begin(), tmpl.end());
  buf.push_back('\0');
  const int fd = ::mkostemp(buf.data(), O_CLOEXEC);
  DL_CHECK(fd >= 0, "cannot create a temporary file beside '", s_->target, "': ", std::strerror(errno));
  s_->fd = fd;
  s_->tmp = buf.data();
  struct stat st {};
  const mode_t mode = ::stat(s_->target.c_str(), &st) == 0 ? (st.st_mode & 07777) : default_file_mode();
  (void)::fchmod(fd, mode);  // best effort: a file system without modes keeps what it has
  s_->buf = std::make_unique<FdBuf>(fd);
  s_->os = std::make_unique<std::ostream>(s_->buf.get());
}

AtomicFile::~AtomicFile() {
  if (s_->fd >= 0) ::close(s_->fd);
  if (!s_->committed && !s_->tmp.empty()) ::unlink(s_->tmp.c_str());
}

std::ostream& AtomicFile::stream() { return *s_->os; }

void AtomicFile::commit() {
  DL_CHECK(!s_->committed, "'", s_->path, "' was already written");
  s_->os->flush();
  if (s_->buf->error() != 0) fail("failed writing '", s_->target, "': ", std::strerror(s_->buf->error()));
  DL_CHECK(s_->os->good(), "failed writing '", s_->target, "'");
  // Data on disk before the rename, so a crash cannot leave a renamed but empty file.
  if (s_->sync && ::fsync(s_->fd) != 0) fail("cannot flush '", s_->target, "' to disk: ", std::strerror(errno));
  const int fd = s_->fd;
  s_->fd = -1;
  if (::close(fd) != 0) fail("failed writing '", s_->target, "': ", std::strerror(errno));
  // The target may have become something else while the content was written (a FIFO made in its place): the
  // rename would replace it, so look again.
  DL_CHECK(output_target(s_->path) == s_->target, "'", s_->path, "' changed while it was written; not replaced");
  if (::rename(s_->tmp.c_str(), s_->target.c_str()) != 0)
    fail("cannot rename '", s_->tmp, "' to '", s_->target, "': ", std::strerror(errno));
  s_->committed = true;
}

void write_file_atomically(const std::string& path, const std::function<void(std::ostream&)>& body, bool sync) {
  AtomicFile f(path, sync);
  body(f.stream());
  f.commit();
}

}  // namespace dl::io
