// PyTorch checkpoint files (`torch.save` zip format, e.g. pytorch_model.bin) read without executing pickle code.
// A restricted unpickler understands exactly what a state dict needs (OrderedDict, tensor and parameter rebuild
// calls, typed storages as persistent ids) and refuses any other global by name. Tensor data is a zero-copy view
// of the memory-mapped archive wherever the entry is stored uncompressed and aligned.
#pragma once
#include <map>
#include <memory>
#include <string>

#include "core/tensor.h"

namespace dl::io {

class ZipArchive;

// name -> tensor, in the file's order of names (sorted).
using StateDict = std::map<std::string, Tensor>;

StateDict read_torch_bin(const std::string& path);
// From an open archive (used by fuzzers and tests).
StateDict read_torch_bin(const ZipArchive& archive);
// Runs only the restricted unpickler over `pickle` bytes whose storages live in `archive` under `prefix`/data/.
// Exposed for fuzzing.
StateDict unpickle_state_dict(const unsigned char* pickle, size_t size, const ZipArchive* archive,
                              const std::string& prefix, const std::string& what);

}  // namespace dl::io
