// GGUF (v3, also v2): a little-endian header ("GGUF", version, tensor count, metadata count), typed key/value
// metadata, tensor infos (name, dims innermost-first, ggml type, offset into the data section) and the data
// section, aligned to `general.alignment` (default 32). Reading maps the file and returns zero-copy tensor views;
// every count, length and offset is bounds-checked against the file so a lying header fails cleanly.
#pragma once
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include "core/tensor.h"

namespace dl::io {

// Metadata value type ids as stored in the file.
enum class GgufType : uint32_t {
  U8 = 0, I8 = 1, U16 = 2, I16 = 3, U32 = 4, I32 = 5, F32 = 6, BOOL = 7,
  STRING = 8, ARRAY = 9, U64 = 10, I64 = 11, F64 = 12,
};
const char* gguf_type_name(GgufType t);  // "u32", "string", ...; "?" for ids outside the enum

// ggml tensor type ids of the types we read and write (ids of all other ggml types are rejected).
namespace ggml_type {
constexpr uint32_t F32 = 0, F16 = 1, Q4_0 = 2, Q8_0 = 8, Q4_K = 12, Q6_K = 14, I8 = 24, I32 = 26, I64 = 27,
                   BF16 = 30;
}
std::optional<DType> dtype_from_ggml_type(uint32_t id);
uint32_t ggml_type_from_dtype(DType t);  // throws for dtypes ggml has no type for (U8, BOOL)
std::string ggml_type_name(uint32_t id);  // known ggml names ("Q4_K") or "#<id>", for messages

// One metadata value: a scalar, a string, or an array. Arrays of scalars and strings are typed vectors (compact
// and convenient: a tokenizer's vocabulary is a std::vector<std::string>); an array of arrays is a vector of
// GgufValue whose elements are themselves arrays, each with its own element type.
class GgufValue {
 public:
  using Array = std::vector<GgufValue>;
  using Repr = std::variant<uint8_t, int8_t, uint16_t, int16_t, uint32_t, int32_t, float, bool, std::string, uint64_t,
                            int64_t, double, std::vector<uint8_t>, std::vector<int8_t>, std::vector<uint16_t>,
                            std::vector<int16_t>, std::vector<uint32_t>, std::vector<int32_t>, std::vector<float>,
                            std::vector<bool>, std::vector<std::string>, std::vector<uint64_t>, std::vector<int64_t>,
                            std::vector<double>, Array>;

  template <typename T, typename V>
  struct is_alternative;
  template <typename T, typename... Ts>
  struct is_alternative<T, std::variant<Ts...>> : std::bool_constant<(std::is_same_v<T, Ts> || ...)> {};

  GgufValue() : v_(uint8_t(0)) {}
  // Exact alternative types only, so the stored GGUF type is never a surprise of integer conversion (5 is i32,
  // 5u is u32, size_t is u64).
  template <typename T, typename = std::enable_if_t<is_alternative<std::decay_t<T>, Repr>::value>>
  GgufValue(T v) : v_(std::move(v)) {
    check_array();
  }
  // String literals are not a variant alternative; they store as STRING.
  GgufValue(const char* s) : v_(std::string(s)) {}

  GgufType type() const;        // ARRAY for every array
  GgufType array_type() const;  // element type of an array; throws for non-arrays
  size_t array_size() const;    // throws for non-arrays
  std::string type_name() const;  // "u32", "array[string]", "array[array]"

  template <typename T>
  bool is() const { return std::holds_alternative<T>(v_); }
  template <typename T>
  const T* get_if() const { return std::get_if<T>(&v_); }
  // The value as T; throws naming both types when it is something else.
  template <typename T>
  const T& get() const {
    if (const T* p = std::get_if<T>(&v_)) return *p;
    type_mismatch(GgufValue(T{}).type_name());
  }
  const Repr& repr() const { return v_; }

  bool operator==(const GgufValue& o) const { return v_ == o.v_; }

 private:
  void check_array() const;  // elements of an array of arrays must be arrays
  [[noreturn]] void type_mismatch(const std::string& wanted) const;
  Repr v_;
};

// Metadata in file order with lookup by key. Getters throw a dl::Error naming the origin (file) and the key when
// the key is missing or holds another type.
class GgufMetadata {
 public:
  GgufMetadata() = default;
  GgufMetadata(std::initializer_list<std::pair<std::string, GgufValue>> entries);  // throws on duplicate keys
  explicit GgufMetadata(std::string origin) : origin_(std::move(origin)) {}

  void set(const std::string& key, GgufValue value);  // replaces in place, or appends
  void add(const std::string& key, GgufValue value);  // throws if the key exists
  bool contains(const std::string& key) const { return index_.count(key) != 0; }
  const GgufValue* find(const std::string& key) const;
  const GgufValue& at(const std::string& key) const;
  size_t size() const { return entries_.size(); }
  bool empty() const { return entries_.empty(); }
  const std::vector<std::pair<std::string, GgufValue>>& entries() const { return entries_; }
  const std::string& origin() const { return origin_; }

  template <typename T>
  const T& get(const std::string& key) const {
    const GgufValue& v = at(key);
    if (const T* p = v.get_if<T>()) return *p;
    type_mismatch(key, v, GgufValue(T{}).type_name());
  }
  uint8_t get_u8(const std::string& key) const { return get<uint8_t>(key); }
  int8_t get_i8(const std::string& key) const { return get<int8_t>(key); }
  uint16_t get_u16(const std::string& key) const { return get<uint16_t>(key); }
  int16_t get_i16(const std::string& key) const { return get<int16_t>(key); }
  uint32_t get_u32(const std::string& key) const { return get<uint32_t>(key); }
  int32_t get_i32(const std::string& key) const { return get<int32_t>(key); }
  uint64_t get_u64(const std::string& key) const { return get<uint64_t>(key); }
  int64_t get_i64(const std::string& key) const { return get<int64_t>(key); }
  float get_f32(const std::string& key) const { return get<float>(key); }
  double get_f64(const std::string& key) const { return get<double>(key); }
  bool get_bool(const std::string& key) const { return get<bool>(key); }
  const std::string& get_string(const std::string& key) const { return get<std::string>(key); }
  const std::vector<std::string>& get_string_array(const std::string& key) const {
    return get<std::vector<std::string>>(key);
  }
  const std::vector<float>& get_f32_array(const std::string& key) const { return get<std::vector<float>>(key); }
  const std::vector<int32_t>& get_i32_array(const std::string& key) const { return get<std::vector<int32_t>>(key); }
  const std::vector<uint32_t>& get_u32_array(const std::string& key) const {
    return get<std::vector<uint32_t>>(key);
  }
  const GgufValue::Array& get_nested_array(const std::string& key) const { return get<GgufValue::Array>(key); }
  // Any integer type holding a value >= 0: writers disagree on u32 versus u64 for counts, and the spec asks readers
  // to accept both.
  uint64_t get_uint(const std::string& key) const;
  // Same, with a default when the key is absent (a present key of the wrong type still throws).
  uint64_t get_uint(const std::string& key, uint64_t fallback) const;

 private:
  [[noreturn]] void type_mismatch(const std::string& key, const GgufValue& v, const std::string& wanted) const;
  std::string origin_;
  std::vector<std::pair<std::string, GgufValue>> entries_;
  std::map<std::string, size_t> index_;
};

struct GgufTensorInfo {
  std::string name;
  uint32_t ggml_type = 0;
  DType dtype = DType::F32;
  std::vector<uint64_t> ne;  // dims as stored: ne[0] is the innermost (fastest) dimension
  Shape shape;               // row-major: ne reversed
  uint64_t offset = 0;       // relative to the data section
};

struct GgufFile {
  uint32_t version = 3;
  uint32_t alignment = 32;
  uint64_t data_offset = 0;  // absolute file offset of the data section
  GgufMetadata metadata;
  std::vector<GgufTensorInfo> tensor_infos;  // file order
  std::map<std::string, Tensor> tensors;
};

// Reads a file (mmap, zero copy unless a tensor is misaligned for its type). Throws dl::Error naming the file and
// the problem.
GgufFile read_gguf(const std::string& path);
// Parses an in-memory image (used by the reader and by fuzzers); tensors keep the storage alive.
GgufFile parse_gguf(std::shared_ptr<Storage> bytes, const std::string& what);
// Writes a v3 file: metadata in the given order, tensors (made contiguous) in the given order, each tensor's data
// at a multiple of `alignment` (a power of two). `general.alignment` is written when alignment != 32; a
// `general.alignment` already in the metadata must be a u32 equal to `alignment`. Atomic (temp file + rename).
void write_gguf(const std::string& path, const GgufMetadata& metadata,
                const std::vector<std::pair<std::string, Tensor>>& tensors, uint32_t alignment = 32);
// The same for files larger than memory: the header is written from `plan` (names, types and shapes known ahead),
// then produce(i) is called once per tensor, in order, and its result written before the next is asked for, so only
// one converted tensor need exist at a time. A produced tensor must match its plan entry.
struct GgufTensorPlan {
  std::string name;
  DType dtype = DType::F32;
  Shape shape;  // row-major
};
void write_gguf_streaming(const std::string& path, const GgufMetadata& metadata,
                          const std::vector<GgufTensorPlan>& plan, const std::function<Tensor(size_t)>& produce,
                          uint32_t alignment = 32);

}  // namespace dl::io
