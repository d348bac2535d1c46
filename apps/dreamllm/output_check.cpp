#include "output_check.h"

#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>

#include "core/error.h"
#include "io/atomic_file.h"
#include "io/gguf_model.h"

namespace dl::app {

namespace fs = std::filesystem;

void check_output_directory(const std::string& output) {
  // The file is written beside its target (io::AtomicFile), so it is the target's directory that must take it.
  const fs::path target(io::output_target(output));
  const fs::path dir = target.has_parent_path() ? target.parent_path() : fs::path(".");
  std::error_code ec;
  const fs::file_status st = fs::status(dir, ec);
  DL_CHECK(st.type() != fs::file_type::not_found, "cannot write '", output, "': its directory '", dir.string(),
           "' does not exist (create it first)");
  DL_CHECK(!ec, "cannot write '", output, "': its directory '", dir.string(), "': ", ec.message());
  DL_CHECK(fs::is_directory(st), "cannot write '", output, "': '", dir.string(), "' is not a directory");
  DL_CHECK(::access(dir.c_str(), W_OK | X_OK) == 0, "cannot write '", output, "': its directory '", dir.string(),
           "' is not writable");
}

void InputFiles::add(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode)) files_.push_back({st.st_dev, st.st_ino, path});
}

void InputFiles::add_tree(const std::string& dir) {
  std::error_code ec;
  if (fs::is_regular_file(dir, ec)) {
    // A converted model: NAME.gguf and its companion.
    add(dir);
    if (io::is_gguf_model_path(dir)) add(io::companion_path(dir));
    return;
  }
  // Bounded: a model directory holds tens of files, and a wrong -m pointing at a huge tree must not stall.
  size_t visited = 0;
  for (fs::recursive_directory_iterator it(dir, fs::directory_options::skip_permission_denied, ec), end;
       !ec && it != end && visited < 100000; it.increment(ec), ++visited)
    add(it->path().string());
}

void InputFiles::check_outputs(const std::vector<std::string>& outputs) const {
  std::vector<std::string> targets;
  for (const std::string& out : outputs) {
    check_output_directory(out);
    const std::string target = io::output_target(out);
    struct stat st {};
    if (::stat(target.c_str(), &st) == 0) {
      for (const File& f : files_)
        DL_CHECK(f.dev != st.st_dev || f.ino != st.st_ino, "the output '", out, "' is the input '", f.path,
                 "', which writing would overwrite; choose another output file");
    }
    std::error_code ec;
    const fs::path abs = fs::weakly_canonical(fs::absolute(target, ec), ec);
    const std::string key = ec ? fs::path(target).lexically_normal().string() : abs.string();
    for (size_t i = 0; i < targets.size(); ++i)
      DL_CHECK(targets[i] != key, "the outputs '", outputs[i], "' and '", out,
               "' are the same file: one would overwrite the other; choose another output name");
    targets.push_back(key);
  }
}

}  // namespace dl::app
