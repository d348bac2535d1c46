// Writing a file so that readers see either the old file or the complete new one, never a torn mix: the content
// goes to a uniquely named temporary file beside the target (".name.XXXXXX", so two writers never share one),
// which is flushed to disk and renamed over the target. On any failure (a full disk included) the temporary file is
// removed, the target is left as it was, and dl::Error names the file.
//
// Only regular files are ever replaced. A target that exists as a device node, FIFO, socket or directory is refused
// with a message naming it. A symbolic link is written through: the file it finally points to (a chain is followed)
// receives the new content, renamed into place beside that file, and the link itself stays a link.
#pragma once
#include <functional>
#include <memory>
#include <ostream>
#include <string>

namespace dl::io {

// The path that writing `path` replaces: `path` itself, or the file its chain of symbolic links ends at (which need
// not exist yet). Throws dl::Error when that file exists and is not a regular file, or the chain loops.
std::string output_target(const std::string& path);

// A file being written: stream() receives the content, commit() puts it in place. Destroyed without commit(), it
// removes its temporary file and leaves the target untouched. `sync` = false skips the fsync before the rename,
// for many small files that can be made again (a generated data set); the rename keeps them whole all the same.
class AtomicFile {
 public:
  explicit AtomicFile(const std::string& path, bool sync = true);
  ~AtomicFile();
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  std::ostream& stream();
  void commit();

 private:
  struct State;
  std::unique_ptr<State> s_;
};

void write_file_atomically(const std::string& path, const std::function<void(std::ostream&)>& body,
                           bool sync = true);

}  // namespace dl::io
