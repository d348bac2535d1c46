#include "io/safetensors.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/atomic_file.h"

namespace dl::io {

namespace {

constexpr uint64_t kMaxHeader = 100u << 20;  // 100 MB, as the reference implementation

DType dtype_from_safetensors(const std::string& s, const std::string& what, const std::string& name) {
  if (s == "F32") return DType::F32;
  if (s == "F16") return DType::F16;
  if (s == "BF16") return DType::BF16;
  if (s == "I32") return DType::I32;
  if (s == "I64") return DType::I64;
  if (s == "I8") return DType::I8;
  if (s == "U8") return DType::U8;
  if (s == "BOOL") return DType::BOOL;
  fail(what, ": tensor '", name, "' has unsupported dtype '", s, "'");
}

std::string dtype_to_safetensors(DType t) {
  switch (t) {
    case DType::F32: return "F32";
    case DType::F16: return "F16";
    case DType::BF16: return "BF16";
    case DType::I32: return "I32";
    case DType::I64: return "I64";
    case DType::I8: return "I8";
    case DType::U8: return "U8";
    case DType::BOOL: return "BOOL";
    default: fail("safetensors cannot store dtype ", dtype_name(t));
  }
}

}  // namespace

SafetensorsFile parse_safetensors(std::shared_ptr<Storage> bytes, const std::string& what) {
  const size_t size = bytes->size();
  DL_CHECK(size >= 8, what, ": file is ", size, " bytes, too short for a safetensors header");
  const auto* base = static_cast<const unsigned char*>(bytes->data());
  uint64_t hlen = 0;
  for (int i = 7; i >= 0; --i) hlen = (hlen << 8) | base[i];
  DL_CHECK(hlen <= kMaxHeader, what, ": header length ", hlen, " exceeds the ", kMaxHeader, "-byte limit");
  DL_CHECK(hlen <= size - 8, what, ": header length ", hlen, " runs past the end of the ", size, "-byte file");
  nlohmann::json header;
  try {
    header = nlohmann::json::parse(reinterpret_cast<const char*>(base) + 8, reinterpret_cast<const char*>(base) + 8 + hlen);
  } catch (const nlohmann::json::exception& e) {
    fail(what, ": header is not valid JSON (", e.what(), ")");
  }
  DL_CHECK(header.is_object(), what, ": header is not a JSON object");
  const size_t data_start = 8 + size_t(hlen);
  const uint64_t data_size = size - data_start;
  SafetensorsFile out;
  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    const auto& info = it.value();
    if (name == "__metadata__") {
      DL_CHECK(info.is_object(), what, ": __metadata__ is not an object");
      for (auto m = info.begin(); m != info.end(); ++m) {
        DL_CHECK(m.value().is_string(), what, ": metadata value '", m.key(), "' is not a string");
        out.metadata[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    DL_CHECK(info.is_object() && info.contains("dtype") && info.contains("shape") && info.contains("data_offsets"),
             what, ": tensor '", name, "' lacks dtype, shape or data_offsets");
    DL_CHECK(info["dtype"].is_string(), what, ": tensor '", name, "' dtype is not a string");
    DType dt = dtype_from_safetensors(info["dtype"].get<std::string>(), what, name);
    const auto& js = info["shape"];
    const auto& jo = info["data_offsets"];
    DL_CHECK(js.is_array() && js.size() <= 8, what, ": tensor '", name, "' shape is not an array of rank <= 8");
    Shape shape;
    uint64_t numel = 1;
    for (const auto& d : js) {
      DL_CHECK(d.is_number_unsigned(), what, ": tensor '", name, "' has a non-integer or negative dimension");
      uint64_t v = d.get<uint64_t>();
      DL_CHECK(v < (uint64_t(1) << 40) && (v == 0 || numel <= (uint64_t(1) << 48) / v), what, ": tensor '", name,
               "' shape is absurdly large");
      numel *= v;
      shape.push_back(int64_t(v));
    }
    DL_CHECK(jo.is_array() && jo.size() == 2 && jo[0].is_number_unsigned() && jo[1].is_number_unsigned(), what,
             ": tensor '", name, "' data_offsets must be two non-negative integers");
    uint64_t b = jo[0].get<uint64_t>(), e = jo[1].get<uint64_t>();
    DL_CHECK(b <= e && e <= data_size, what, ": tensor '", name, "' data [", b, ", ", e,
             ") lies outside the data section of ", data_size, " bytes");
    uint64_t want = numel * dtype_info(dt).block_bytes;
    DL_CHECK(e - b == want, what, ": tensor '", name, "' has ", e - b, " bytes but ", info["dtype"].get<std::string>(),
             shape_str(shape), " needs ", want);
    ranges.emplace_back(b, e);
    const size_t at = data_start + size_t(b);
    const size_t align = dtype_info(dt).block_bytes;
    if ((reinterpret_cast<uintptr_t>(base) + at) % align == 0) {
      out.tensors.emplace(name, Tensor(bytes, at, dt, shape, contiguous_strides(shape)));
    } else {
      // The format does not promise alignment; a misaligned tensor is copied so kernels may load it natively.
      auto copy = Storage::allocate(size_t(want));
      std::memcpy(copy->data(), base + at, size_t(want));
      out.tensors.emplace(name, Tensor(copy, 0, dt, shape, contiguous_strides(shape)));
    }
  }
  std::sort(ranges.begin(), ranges.end());
  for (size_t i = 1; i < ranges.size(); ++i)
    DL_CHECK(ranges[i].first >= ranges[i - 1].second, what, ": tensor data ranges overlap");
  return out;
}

SafetensorsFile read_safetensors(const std::string& path) {
  return parse_safetensors(Storage::read_weights_file(path), "'" + path + "'");
}

void write_safetensors(const std::string& path, const std::map<std::string, Tensor>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  nlohmann::json header = nlohmann::json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  std::vector<Tensor> ordered;
  for (const auto& [name, t] : tensors) {
    Tensor c = t.contiguous();
    uint64_t n = c.nbytes();
    header[name] = {{"dtype", dtype_to_safetensors(c.dtype())}, {"shape", c.shape()}, {"data_offsets", {offset, offset + n}}};
    offset += n;
    ordered.push_back(c);
  }
  std::string h = header.dump();
  while ((h.size() + 8) % 8 != 0) h.push_back(' ');  // keep the data 8-byte aligned
  write_file_atomically(path, [&](std::ostream& f) {
    unsigned char len[8];
    const uint64_t hl = h.size();
    for (int i = 0; i < 8; ++i) len[i] = static_cast<unsigned char>(hl >> (8 * i));
    f.write(reinterpret_cast<const char*>(len), 8);
    f.write(h.data(), std::streamsize(h.size()));
    for (const Tensor& t : ordered) f.write(static_cast<const char*>(t.raw()), std::streamsize(t.nbytes()));
  });
}

}  // namespace dl::io
