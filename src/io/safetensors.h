// safetensors: an 8-byte little-endian header length, a JSON header {name: {dtype, shape, data_offsets}} and the
// raw data. Reading maps the file and returns zero-copy tensor views; every header field is validated (size
// bound, offsets inside the data, no overlaps, byte size = dtype x shape).
#pragma once
#include <map>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace dl::io {

struct SafetensorsFile {
  std::map<std::string, Tensor> tensors;
  std::map<std::string, std::string> metadata;
};

// Reads a file (mmap, zero copy). Throws dl::Error naming the file and the problem.
SafetensorsFile read_safetensors(const std::string& path);
// Parses an in-memory image (used by the reader and by fuzzers). The storage must outlive nothing: tensors keep it.
SafetensorsFile parse_safetensors(std::shared_ptr<Storage> bytes, const std::string& what);
// Writes tensors (any plain dtype; made contiguous) with optional metadata; atomic (temp file + rename).
void write_safetensors(const std::string& path, const std::map<std::string, Tensor>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

}  // namespace dl::io
