#include "io/gguf.h"

#include <algorithm>
#include <bit>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>

#include "core/error.h"
#include "io/atomic_file.h"

namespace dl::io {

static_assert(std::endian::native == std::endian::little, "GGUF fields are read and written by memcpy");

namespace {

constexpr uint64_t kMaxTensors = 1000000;
constexpr uint64_t kMaxKeys = 1000000;
constexpr uint64_t kMaxKeyBytes = 65535;      // the spec's limit on keys
constexpr int kMaxArrayDepth = 16;            // nesting is legal but deep nesting is only a stack-overflow attack
constexpr uint32_t kMaxRank = 8;              // ggml itself stops at 4; we also store 5-D+ tensors of our own
constexpr uint64_t kMaxNumel = uint64_t(1) << 48;
constexpr uint32_t kDefaultAlignment = 32;
constexpr const char* kAlignmentKey = "general.alignment";

template <typename T>
struct VectorTraits : std::false_type {};
template <typename T>
struct VectorTraits<std::vector<T>> : std::true_type {
  using Elem = T;
};

template <typename T>
constexpr GgufType tag_of() {
  if constexpr (std::is_same_v<T, uint8_t>) return GgufType::U8;
  else if constexpr (std::is_same_v<T, int8_t>) return GgufType::I8;
  else if constexpr (std::is_same_v<T, uint16_t>) return GgufType::U16;
  else if constexpr (std::is_same_v<T, int16_t>) return GgufType::I16;
  else if constexpr (std::is_same_v<T, uint32_t>) return GgufType::U32;
  else if constexpr (std::is_same_v<T, int32_t>) return GgufType::I32;
  else if constexpr (std::is_same_v<T, float>) return GgufType::F32;
  else if constexpr (std::is_same_v<T, bool>) return GgufType::BOOL;
  else if constexpr (std::is_same_v<T, std::string>) return GgufType::STRING;
  else if constexpr (std::is_same_v<T, uint64_t>) return GgufType::U64;
  else if constexpr (std::is_same_v<T, int64_t>) return GgufType::I64;
  else if constexpr (std::is_same_v<T, double>) return GgufType::F64;
  else if constexpr (VectorTraits<T>::value || std::is_same_v<T, GgufValue>) return GgufType::ARRAY;
  else static_assert(!sizeof(T), "not a GGUF value type");
}

// Bytes one value of `t` occupies at minimum: the exact size for fixed-size types, the length prefix for strings,
// element type + count for arrays. Array counts are bounded by remaining bytes / this, so no header can make us
// allocate much more than the file's own size.
uint64_t min_encoded_size(GgufType t) {
  switch (t) {
    case GgufType::U8: case GgufType::I8: case GgufType::BOOL: return 1;
    case GgufType::U16: case GgufType::I16: return 2;
    case GgufType::U32: case GgufType::I32: case GgufType::F32: return 4;
    case GgufType::U64: case GgufType::I64: case GgufType::F64: return 8;
    case GgufType::STRING: return 8;
    case GgufType::ARRAY: return 12;
  }
  return 1;
}

bool valid_type(uint32_t t) { return t <= uint32_t(GgufType::F64); }

uint64_t align_up(uint64_t x, uint64_t a) { return (x + a - 1) / a * a; }
bool is_pow2(uint64_t a) { return a != 0 && (a & (a - 1)) == 0; }

// Alignment a kernel needs to load the type natively; quantized blocks start with an f16 scale.
size_t natural_alignment(DType t) {
  switch (t) {
    case DType::Q8_0: return alignof(BlockQ8_0);
    case DType::Q4_0: return alignof(BlockQ4_0);
    case DType::Q4_K: return alignof(BlockQ4_K);
    case DType::Q6_K: return alignof(BlockQ6_K);
    default: return dtype_info(t).block_bytes;
  }
}

class Cursor {
 public:
  Cursor(const unsigned char* base, size_t size, const std::string& what) : base_(base), size_(size), what_(what) {}

  size_t pos() const { return pos_; }
  uint64_t remaining() const { return size_ - pos_; }
  const std::string& what() const { return what_; }

  // `field` + `part` names what is being read; they are only joined when a message needs them, since strings
  // of a 100k-entry vocabulary pass through here.
  void need(uint64_t n, const std::string& field, const char* part = "") const {
    if (n > remaining())
      fail(what_, ": file truncated: ", field, part, " needs ", n, " bytes at offset ", pos_, " but only ",
           remaining(), " remain");
  }
  template <typename T>
  T scalar(const std::string& field, const char* part = "") {
    need(sizeof(T), field, part);
    T v;
    std::memcpy(&v, base_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }
  std::string string(const std::string& field, const char* part = "") {
    uint64_t n = scalar<uint64_t>(field, part);
    if (n > remaining())
      fail(what_, ": ", field, part, " claims ", n, " bytes at offset ", pos_, " but only ", remaining(), " remain");
    std::string s(reinterpret_cast<const char*>(base_ + pos_), size_t(n));
    pos_ += size_t(n);
    return s;
  }
  template <typename T>
  void copy_to(T* dst, uint64_t count, const std::string& field) {
    uint64_t n = count * sizeof(T);  // count was bounded by remaining() / sizeof(T): no overflow
    need(n, field);
    if (n) std::memcpy(dst, base_ + pos_, size_t(n));
    pos_ += size_t(n);
  }

 private:
  const unsigned char* base_;
  size_t size_;
  size_t pos_ = 0;
  const std::string& what_;
};

bool read_bool(Cursor& c, const std::string& field) {
  uint8_t b = c.scalar<uint8_t>(field);
  if (b > 1) fail(c.what(), ": ", field, " is a bool with byte value ", int(b), " (must be 0 or 1)");
  return b == 1;
}

template <typename T>
GgufValue read_fixed_array(Cursor& c, uint64_t count, const std::string& field) {
  std::vector<T> v(static_cast<size_t>(count));
  c.copy_to(v.data(), count, field);
  return GgufValue(std::move(v));
}

GgufValue read_array(Cursor& c, const std::string& field, int depth) {
  if (depth >= kMaxArrayDepth) fail(c.what(), ": ", field, " nests arrays deeper than ", kMaxArrayDepth, " levels");
  uint32_t et = c.scalar<uint32_t>(field, " element type");
  if (!valid_type(et)) fail(c.what(), ": ", field, " has unknown array element type ", et);
  const GgufType elem = GgufType(et);
  uint64_t count = c.scalar<uint64_t>(field, " element count");
  const uint64_t max_count = c.remaining() / min_encoded_size(elem);
  if (count > max_count)
    fail(c.what(), ": ", field, " claims ", count, " ", gguf_type_name(elem), " elements but the ", c.remaining(),
         " remaining bytes hold at most ", max_count);
  switch (elem) {
    case GgufType::U8: return read_fixed_array<uint8_t>(c, count, field);
    case GgufType::I8: return read_fixed_array<int8_t>(c, count, field);
    case GgufType::U16: return read_fixed_array<uint16_t>(c, count, field);
    case GgufType::I16: return read_fixed_array<int16_t>(c, count, field);
    case GgufType::U32: return read_fixed_array<uint32_t>(c, count, field);
    case GgufType::I32: return read_fixed_array<int32_t>(c, count, field);
    case GgufType::F32: return read_fixed_array<float>(c, count, field);
    case GgufType::U64: return read_fixed_array<uint64_t>(c, count, field);
    case GgufType::I64: return read_fixed_array<int64_t>(c, count, field);
    case GgufType::F64: return read_fixed_array<double>(c, count, field);
    case GgufType::BOOL: {
      std::vector<bool> v(static_cast<size_t>(count));
      for (uint64_t i = 0; i < count; ++i) v[size_t(i)] = read_bool(c, field);
      return GgufValue(std::move(v));
    }
    case GgufType::STRING: {
      std::vector<std::string> v;
      v.reserve(size_t(count));
      for (uint64_t i = 0; i < count; ++i) v.push_back(c.string(field));
      return GgufValue(std::move(v));
    }
    case GgufType::ARRAY: {
      GgufValue::Array v;
      v.reserve(size_t(count));
      for (uint64_t i = 0; i < count; ++i) v.push_back(read_array(c, field, depth + 1));
      return GgufValue(std::move(v));
    }
  }
  fail(c.what(), ": ", field, " has unknown array element type ", et);
}

GgufValue read_value(Cursor& c, GgufType type, const std::string& field, int depth) {
  switch (type) {
    case GgufType::U8: return c.scalar<uint8_t>(field);
    case GgufType::I8: return c.scalar<int8_t>(field);
    case GgufType::U16: return c.scalar<uint16_t>(field);
    case GgufType::I16: return c.scalar<int16_t>(field);
    case GgufType::U32: return c.scalar<uint32_t>(field);
    case GgufType::I32: return c.scalar<int32_t>(field);
    case GgufType::F32: return c.scalar<float>(field);
    case GgufType::BOOL: return read_bool(c, field);
    case GgufType::STRING: return c.string(field);
    case GgufType::ARRAY: return read_array(c, field, depth);
    case GgufType::U64: return c.scalar<uint64_t>(field);
    case GgufType::I64: return c.scalar<int64_t>(field);
    case GgufType::F64: return c.scalar<double>(field);
  }
  fail(c.what(), ": ", field, " has unknown type ", uint32_t(type));
}

// ---- writing ----

class Buffer {
 public:
  template <typename T>
  void scalar(T v) {
    char b[sizeof(T)];
    std::memcpy(b, &v, sizeof(T));
    s_.append(b, sizeof(T));
  }
  void string(const std::string& s) {
    scalar<uint64_t>(s.size());
    s_.append(s);
  }
  void bytes(const void* p, size_t n) { s_.append(static_cast<const char*>(p), n); }
  // Value payload only (the type id is written by the caller: keys carry it, array elements share one).
  void payload(const GgufValue& v) {
    std::visit([&](const auto& x) { payload_of(x); }, v.repr());
  }
  const std::string& str() const { return s_; }

 private:
  template <typename T>
  void payload_of(const T& x) {
    if constexpr (std::is_same_v<T, bool>) {
      scalar<uint8_t>(x ? 1 : 0);
    } else if constexpr (std::is_same_v<T, std::string>) {
      string(x);
    } else if constexpr (VectorTraits<T>::value) {
      using E = typename VectorTraits<T>::Elem;
      scalar<uint32_t>(uint32_t(tag_of<E>()));
      scalar<uint64_t>(x.size());
      if constexpr (std::is_arithmetic_v<E> && !std::is_same_v<E, bool>) {
        bytes(x.data(), x.size() * sizeof(E));
      } else if constexpr (std::is_same_v<E, GgufValue>) {
        // The reader's nesting limit applies here too, so we never write a file we would refuse to read.
        ++depth_;
        DL_CHECK(x.empty() || depth_ < kMaxArrayDepth, "GGUF arrays nest deeper than ", kMaxArrayDepth, " levels");
        for (const GgufValue& e : x) payload(e);
        --depth_;
      } else {
        for (const auto& e : x) payload_of(e);
      }
    } else {
      scalar<T>(x);
    }
  }
  std::string s_;
  int depth_ = 0;
};

}  // namespace

// ---- names and type mapping ----

const char* gguf_type_name(GgufType t) {
  switch (t) {
    case GgufType::U8: return "u8";
    case GgufType::I8: return "i8";
    case GgufType::U16: return "u16";
    case GgufType::I16: return "i16";
    case GgufType::U32: return "u32";
    case GgufType::I32: return "i32";
    case GgufType::F32: return "f32";
    case GgufType::BOOL: return "bool";
    case GgufType::STRING: return "string";
    case GgufType::ARRAY: return "array";
    case GgufType::U64: return "u64";
    case GgufType::I64: return "i64";
    case GgufType::F64: return "f64";
  }
  return "?";
}

std::optional<DType> dtype_from_ggml_type(uint32_t id) {
  switch (id) {
    case ggml_type::F32: return DType::F32;
    case ggml_type::F16: return DType::F16;
    case ggml_type::Q4_0: return DType::Q4_0;
    case ggml_type::Q8_0: return DType::Q8_0;
    case ggml_type::Q4_K: return DType::Q4_K;
    case ggml_type::Q6_K: return DType::Q6_K;
    case ggml_type::I8: return DType::I8;
    case ggml_type::I32: return DType::I32;
    case ggml_type::I64: return DType::I64;
    case ggml_type::BF16: return DType::BF16;
    default: return std::nullopt;
  }
}

uint32_t ggml_type_from_dtype(DType t) {
  switch (t) {
    case DType::F32: return ggml_type::F32;
    case DType::F16: return ggml_type::F16;
    case DType::BF16: return ggml_type::BF16;
    case DType::Q4_0: return ggml_type::Q4_0;
    case DType::Q8_0: return ggml_type::Q8_0;
    case DType::Q4_K: return ggml_type::Q4_K;
    case DType::Q6_K: return ggml_type::Q6_K;
    case DType::I8: return ggml_type::I8;
    case DType::I32: return ggml_type::I32;
    case DType::I64: return ggml_type::I64;
    default: fail("GGUF has no tensor type for dtype ", dtype_name(t));
  }
}

std::string ggml_type_name(uint32_t id) {
  // Gaps are ids ggml has removed.
  static constexpr const char* kNames[] = {
      "F32",    "F16",   "Q4_0",  "Q4_1",  nullptr, nullptr, "Q5_0",  "Q5_1",    "Q8_0",    "Q8_1",
      "Q2_K",   "Q3_K",  "Q4_K",  "Q5_K",  "Q6_K",  "Q8_K",  "IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S",
      "IQ4_NL", "IQ3_S", "IQ2_S", "IQ4_XS", "I8",   "I16",   "I32",   "I64",     "F64",     "IQ1_M",
      "BF16",   nullptr, nullptr, nullptr, "TQ1_0", "TQ2_0", nullptr, nullptr,   nullptr,   "MXFP4"};
  if (id < std::size(kNames) && kNames[id]) return kNames[id];
  return detail::concat("#", id);  // not "#" + std::to_string(id): GCC 12 warns falsely (-Wrestrict)
}

// ---- GgufValue ----

GgufType GgufValue::type() const {
  return std::visit([](const auto& x) { return tag_of<std::decay_t<decltype(x)>>(); }, v_);
}

GgufType GgufValue::array_type() const {
  return std::visit(
      [this](const auto& x) -> GgufType {
        using T = std::decay_t<decltype(x)>;
        if constexpr (VectorTraits<T>::value) {
          return tag_of<typename VectorTraits<T>::Elem>();
        } else {
          fail("GGUF value of type ", type_name(), " is not an array");
        }
      },
      v_);
}

size_t GgufValue::array_size() const {
  return std::visit(
      [this](const auto& x) -> size_t {
        using T = std::decay_t<decltype(x)>;
        if constexpr (VectorTraits<T>::value) {
          return x.size();
        } else {
          fail("GGUF value of type ", type_name(), " is not an array");
        }
      },
      v_);
}

std::string GgufValue::type_name() const {
  if (type() != GgufType::ARRAY) return gguf_type_name(type());
  return std::string("array[") + gguf_type_name(array_type()) + "]";
}

void GgufValue::check_array() const {
  if (const Array* a = std::get_if<Array>(&v_))
    for (const GgufValue& e : *a)
      DL_CHECK(e.type() == GgufType::ARRAY, "a GGUF array of arrays cannot hold a ", e.type_name());
}

void GgufValue::type_mismatch(const std::string& wanted) const {
  fail("GGUF value is ", type_name(), ", not ", wanted);
}

// ---- GgufMetadata ----

GgufMetadata::GgufMetadata(std::initializer_list<std::pair<std::string, GgufValue>> entries) {
  for (const auto& [k, v] : entries) add(k, v);
}

void GgufMetadata::set(const std::string& key, GgufValue value) {
  auto it = index_.find(key);
  if (it != index_.end()) {
    entries_[it->second].second = std::move(value);
    return;
  }
  index_.emplace(key, entries_.size());
  entries_.emplace_back(key, std::move(value));
}

void GgufMetadata::add(const std::string& key, GgufValue value) {
  if (contains(key)) fail(origin_.empty() ? "GGUF" : origin_, ": duplicate metadata key '", key, "'");
  set(key, std::move(value));
}

const GgufValue* GgufMetadata::find(const std::string& key) const {
  auto it = index_.find(key);
  return it == index_.end() ? nullptr : &entries_[it->second].second;
}

const GgufValue& GgufMetadata::at(const std::string& key) const {
  if (const GgufValue* v = find(key)) return *v;
  fail(origin_.empty() ? "GGUF" : origin_, ": metadata key '", key, "' is missing");
}

void GgufMetadata::type_mismatch(const std::string& key, const GgufValue& v, const std::string& wanted) const {
  fail(origin_.empty() ? "GGUF" : origin_, ": metadata key '", key, "' is ", v.type_name(), ", expected ", wanted);
}

uint64_t GgufMetadata::get_uint(const std::string& key) const {
  const GgufValue& v = at(key);
  return std::visit(
      [&](const auto& x) -> uint64_t {
        using T = std::decay_t<decltype(x)>;
        if constexpr (std::is_integral_v<T> && !std::is_same_v<T, bool>) {
          if constexpr (std::is_signed_v<T>) {
            if (x < 0)
              fail(origin_.empty() ? "GGUF" : origin_, ": metadata key '", key, "' is negative (", int64_t(x), ")");
          }
          return uint64_t(x);
        } else {
          type_mismatch(key, v, "an unsigned integer");
        }
      },
      v.repr());
}

uint64_t GgufMetadata::get_uint(const std::string& key, uint64_t fallback) const {
  return contains(key) ? get_uint(key) : fallback;
}

// ---- reading ----

GgufFile parse_gguf(std::shared_ptr<Storage> bytes, const std::string& what) {
  DL_CHECK(bytes, what, ": null storage");
  const size_t size = bytes->size();
  const auto* base = static_cast<const unsigned char*>(bytes->data());
  Cursor c(base, size, what);
  GgufFile out;
  out.metadata = GgufMetadata(what);

  c.need(4, "magic");
  if (std::memcmp(base, "GGUF", 4) != 0) {
    char hex[16];
    std::snprintf(hex, sizeof(hex), "%02x %02x %02x %02x", base[0], base[1], base[2], base[3]);
    fail(what, ": not a GGUF file (magic bytes ", hex, ", expected 47 47 55 46 \"GGUF\")");
  }
  c.scalar<uint32_t>("magic");
  out.version = c.scalar<uint32_t>("version");
  if (out.version == 0x03000000u || out.version == 0x02000000u)
    fail(what, ": big-endian GGUF files are not supported");
  if (out.version == 1) fail(what, ": GGUF version 1 (32-bit counts) is not supported; convert the file to v3");
  if (out.version != 2 && out.version != 3) fail(what, ": unsupported GGUF version ", out.version, " (expected 3)");
  const uint64_t n_tensors = c.scalar<uint64_t>("tensor count");
  const uint64_t n_kv = c.scalar<uint64_t>("metadata count");
  if (n_tensors > kMaxTensors) fail(what, ": tensor count ", n_tensors, " exceeds the limit of ", kMaxTensors);
  if (n_kv > kMaxKeys) fail(what, ": metadata count ", n_kv, " exceeds the limit of ", kMaxKeys);

  for (uint64_t i = 0; i < n_kv; ++i) {
    const std::string slot = "metadata key #" + std::to_string(i);
    std::string key = c.string(slot);
    if (key.empty() || key.size() > kMaxKeyBytes)
      fail(what, ": ", slot, " has length ", key.size(), " (must be 1 to ", kMaxKeyBytes, " bytes)");
    if (out.metadata.contains(key)) fail(what, ": duplicate metadata key '", key, "'");
    const std::string field = "value of metadata key '" + key + "'";
    uint32_t t = c.scalar<uint32_t>(field, " type");
    if (!valid_type(t)) fail(what, ": metadata key '", key, "' has unknown value type ", t);
    out.metadata.set(key, read_value(c, GgufType(t), field, 0));
  }
  if (const GgufValue* a = out.metadata.find(kAlignmentKey)) {
    const uint32_t* v = a->get_if<uint32_t>();
    if (!v) fail(what, ": ", kAlignmentKey, " is ", a->type_name(), ", expected u32");
    if (!is_pow2(*v)) fail(what, ": ", kAlignmentKey, " is ", *v, ", not a power of two");
    out.alignment = *v;
  }

  out.tensor_infos.reserve(size_t(std::min<uint64_t>(n_tensors, c.remaining() / 24)));
  std::map<std::string, size_t> seen;
  for (uint64_t i = 0; i < n_tensors; ++i) {
    const std::string slot = "tensor info #" + std::to_string(i);
    GgufTensorInfo info;
    info.name = c.string(slot, " name");
    if (info.name.empty()) fail(what, ": ", slot, " has an empty name");
    if (!seen.emplace(info.name, size_t(i)).second) fail(what, ": duplicate tensor name '", info.name, "'");
    const std::string field = "tensor '" + info.name + "'";
    uint32_t n_dims = c.scalar<uint32_t>(field, " rank");
    if (n_dims > kMaxRank) fail(what, ": ", field, " has rank ", n_dims, " (at most ", kMaxRank, " supported)");
    // Zero dims count as 1 here: an empty tensor's strides still multiply the other dims and must not overflow.
    uint64_t span = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      uint64_t ne = c.scalar<uint64_t>(field, " dimension");
      const uint64_t ne1 = std::max<uint64_t>(ne, 1);
      if (ne1 > kMaxNumel || span > kMaxNumel / ne1)
        fail(what, ": ", field, " has an absurdly large shape (dimension ", d, " is ", ne, ")");
      span *= ne1;
      info.ne.push_back(ne);
    }
    info.shape.assign(info.ne.rbegin(), info.ne.rend());
    info.ggml_type = c.scalar<uint32_t>(field, " type");
    info.offset = c.scalar<uint64_t>(field, " offset");
    std::optional<DType> dt = dtype_from_ggml_type(info.ggml_type);
    if (!dt)
      fail(what, ": ", field, " has ggml type ", info.ggml_type, " (", ggml_type_name(info.ggml_type),
           "), which is not supported");
    info.dtype = *dt;
    out.tensor_infos.push_back(std::move(info));
  }

  // A file without tensors may legitimately end right after the infos, before any padding.
  const uint64_t data_start = align_up(c.pos(), out.alignment);
  if (n_tensors > 0 && data_start > size)
    fail(what, ": data section would start at ", data_start, ", past the end of the ", size, "-byte file");
  out.data_offset = data_start;
  const uint64_t data_size = data_start <= size ? size - data_start : 0;

  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  for (const GgufTensorInfo& info : out.tensor_infos) {
    const std::string field = "tensor '" + info.name + "'";
    const DTypeInfo& di = dtype_info(info.dtype);
    if (di.is_quantized && (info.ne.empty() || info.ne[0] % di.block_elems != 0))
      fail(what, ": ", field, " is ", di.name, " but its innermost dimension ", info.ne.empty() ? 1 : info.ne[0],
           " is not a multiple of the ", di.block_elems, "-element block");
    const uint64_t numel = uint64_t(shape_numel(info.shape));
    const uint64_t nbytes = numel / di.block_elems * di.block_bytes;  // numel <= 2^48, block_bytes small
    if (info.offset % out.alignment != 0)
      fail(what, ": ", field, " data offset ", info.offset, " is not a multiple of the alignment ", out.alignment);
    if (info.offset > data_size || nbytes > data_size - info.offset)
      fail(what, ": ", field, " data [", info.offset, ", +", nbytes, ") lies outside the data section of ", data_size,
           " bytes");
    if (nbytes) ranges.emplace_back(info.offset, info.offset + nbytes);
    const size_t at = size_t(data_start + info.offset);
    Shape strides = contiguous_strides(info.shape);
    if (reinterpret_cast<uintptr_t>(base + at) % natural_alignment(info.dtype) == 0) {
      out.tensors.emplace(info.name, Tensor(bytes, at, info.dtype, info.shape, strides));
    } else {
      // Only reachable with a tiny general.alignment or an unaligned in-memory image: copy so kernels can load
      // the elements natively.
      auto copy = Storage::allocate(size_t(nbytes));
      if (nbytes) std::memcpy(copy->data(), base + at, size_t(nbytes));
      out.tensors.emplace(info.name, Tensor(copy, 0, info.dtype, info.shape, strides));
    }
  }
  std::sort(ranges.begin(), ranges.end());
  for (size_t i = 1; i < ranges.size(); ++i)
    if (ranges[i].first < ranges[i - 1].second)
      fail(what, ": tensor data ranges overlap (at data offsets ", ranges[i - 1].first, " and ", ranges[i].first, ")");
  return out;
}

GgufFile read_gguf(const std::string& path) { return parse_gguf(Storage::read_weights_file(path), "'" + path + "'"); }

// ---- writing ----

void write_gguf_streaming(const std::string& path, const GgufMetadata& metadata,
                          const std::vector<GgufTensorPlan>& plan, const std::function<Tensor(size_t)>& produce,
                          uint32_t alignment) {
  const std::string what = "'" + path + "'";
  DL_CHECK(is_pow2(alignment), what, ": GGUF alignment ", alignment, " is not a power of two");
  if (const GgufValue* a = metadata.find(kAlignmentKey)) {
    const uint32_t* v = a->get_if<uint32_t>();
    DL_CHECK(v && *v == alignment, what, ": metadata ", kAlignmentKey, " (", a->type_name(), ") disagrees with the ",
             "requested alignment ", alignment);
  }
  const bool add_alignment_key = alignment != kDefaultAlignment && !metadata.contains(kAlignmentKey);

  // Everything is validated and the header built before the temp file is created, so a bad input leaves no file.
  Buffer h;
  h.bytes("GGUF", 4);
  h.scalar<uint32_t>(3);
  h.scalar<uint64_t>(plan.size());
  h.scalar<uint64_t>(metadata.size() + (add_alignment_key ? 1 : 0));
  auto put_kv = [&](const std::string& key, const GgufValue& v) {
    DL_CHECK(!key.empty() && key.size() <= kMaxKeyBytes, what, ": metadata key of length ", key.size(),
             " (must be 1 to ", kMaxKeyBytes, " bytes)");
    h.string(key);
    h.scalar<uint32_t>(uint32_t(v.type()));
    try {
      h.payload(v);
    } catch (const Error& e) {
      fail(what, ": metadata key '", key, "': ", e.what());
    }
  };
  for (const auto& [key, v] : metadata.entries()) put_kv(key, v);
  if (add_alignment_key) put_kv(kAlignmentKey, GgufValue(alignment));

  std::vector<uint64_t> offsets, sizes;
  std::map<std::string, int> seen;
  uint64_t offset = 0;
  for (const GgufTensorPlan& p : plan) {
    DL_CHECK(!p.name.empty(), what, ": tensor with an empty name");
    DL_CHECK(seen.emplace(p.name, 0).second, what, ": duplicate tensor name '", p.name, "'");
    DL_CHECK(p.shape.size() <= kMaxRank, what, ": tensor '", p.name, "' ", shape_str(p.shape), " has rank above ",
             kMaxRank);
    uint32_t type_id;
    try {
      type_id = ggml_type_from_dtype(p.dtype);
    } catch (const Error& e) {
      fail(what, ": tensor '", p.name, "': ", e.what());
    }
    const DTypeInfo& di = dtype_info(p.dtype);
    DL_CHECK(!di.is_quantized || (!p.shape.empty() && p.shape.back() % int64_t(di.block_elems) == 0), what,
             ": tensor '", p.name, "' ", shape_str(p.shape), " is ", di.name, " but its rows are not a whole number of ",
             di.block_elems, "-element blocks");
    h.string(p.name);
    h.scalar<uint32_t>(uint32_t(p.shape.size()));
    for (size_t d = p.shape.size(); d-- > 0;) h.scalar<uint64_t>(uint64_t(p.shape[d]));
    h.scalar<uint32_t>(type_id);
    h.scalar<uint64_t>(offset);
    offsets.push_back(offset);
    sizes.push_back(dtype_bytes(p.dtype, shape_numel(p.shape)));
    offset = align_up(offset + sizes.back(), alignment);
  }

  const std::string& header = h.str();
  const std::string zeros(std::min<size_t>(alignment, 1 << 16), '\0');
  auto pad = [&](std::ostream& f, uint64_t n) {
    while (n) {
      size_t k = size_t(std::min<uint64_t>(n, zeros.size()));
      f.write(zeros.data(), std::streamsize(k));
      n -= k;
    }
  };
  write_file_atomically(path, [&](std::ostream& f) {
    f.write(header.data(), std::streamsize(header.size()));
    // Padding after the infos and after every tensor (the last included) keeps each tensor's data at a multiple
    // of the alignment and the file a whole number of alignment units.
    pad(f, align_up(header.size(), alignment) - header.size());
    for (size_t i = 0; i < plan.size(); ++i) {
      const Tensor t = produce(i).contiguous();
      DL_CHECK(t.defined() && t.dtype() == plan[i].dtype && t.shape() == plan[i].shape, what, ": tensor '",
               plan[i].name, "' was announced as ", dtype_name(plan[i].dtype), shape_str(plan[i].shape), " but is ",
               t.defined() ? t.describe() : std::string("undefined"));
      f.write(static_cast<const char*>(t.raw()), std::streamsize(sizes[i]));
      // Stop at the first failed write rather than converting the rest of a large model for nothing.
      DL_CHECK(f.good(), "failed writing ", what, " at tensor '", plan[i].name, "' (is the disk full?)");
      pad(f, align_up(offsets[i] + sizes[i], alignment) - (offsets[i] + sizes[i]));
    }
  });
}

void write_gguf(const std::string& path, const GgufMetadata& metadata,
                const std::vector<std::pair<std::string, Tensor>>& tensors, uint32_t alignment) {
  std::vector<GgufTensorPlan> plan;
  plan.reserve(tensors.size());
  for (const auto& [name, t] : tensors) {
    DL_CHECK(t.defined(), "'", path, "': tensor '", name, "' is undefined");
    plan.push_back({name, t.dtype(), t.shape()});
  }
  write_gguf_streaming(path, metadata, plan, [&](size_t i) { return tensors[i].second; }, alignment);
}

}  // namespace dl::io
