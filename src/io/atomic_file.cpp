#include "io/atomic_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>

#include "core/error.h"

namespace dl::io {

void write_file_atomically(const std::string& path, const std::function<void(std::ostream&)>& body) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    DL_CHECK(f.good(), "cannot create '", tmp, "'");
    try {
      body(f);
    } catch (...) {
      f.close();
      std::remove(tmp.c_str());
      throw;
    }
    f.flush();
    f.close();
    if (!f) {
      std::remove(tmp.c_str());
      fail("failed writing '", tmp, "' (disk full?)");
    }
  }
  // Data on disk before the rename, so a crash cannot leave a renamed but empty file.
  const int fd = ::open(tmp.c_str(), O_RDONLY | O_CLOEXEC);
  const bool synced = fd >= 0 && ::fsync(fd) == 0;
  if (fd >= 0) ::close(fd);
  if (!synced) {
    std::remove(tmp.c_str());
    fail("cannot flush '", tmp, "' to disk");
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    fail("cannot rename '", tmp, "' to '", path, "'");
  }
}

}  // namespace dl::io
