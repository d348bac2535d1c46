// Writing a file so that readers see either the old file or the complete new one, never a torn mix: the body
// writes `path`.tmp, which is flushed to disk and renamed over `path`. On any failure (a full disk included)
// the temporary file is removed, `path` is left as it was, and dl::Error names the file.
#pragma once
#include <functional>
#include <ostream>
#include <string>

namespace dl::io {

void write_file_atomically(const std::string& path, const std::function<void(std::ostream&)>& body);

}  // namespace dl::io
