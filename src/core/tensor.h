// Tensor: a typed, strided view into a Storage. Views (slice, transpose, permute, reshape of a contiguous tensor)
// share the storage; anything that cannot be a view copies. Strides are in elements. Quantized tensors are only
// ever contiguous, with the innermost dimension a whole number of blocks.
#pragma once
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/storage.h"

namespace dl {

using Shape = std::vector<int64_t>;

std::string shape_str(const Shape& s);
int64_t shape_numel(const Shape& s);
Shape contiguous_strides(const Shape& s);

class Tensor {
 public:
  Tensor() = default;  // an undefined tensor
  Tensor(std::shared_ptr<Storage> storage, size_t byte_offset, DType dtype, Shape shape, Shape strides);

  static Tensor empty(const Shape& shape, DType dtype = DType::F32);
  static Tensor zeros(const Shape& shape, DType dtype = DType::F32) { return empty(shape, dtype); }
  // Storage left as the allocator gives it: only for outputs that the caller overwrites whole before any read (a
  // GEMM with beta 0, a copy, an element-wise map). Zeroing them was 6-8% of a training step.
  static Tensor uninitialized(const Shape& shape, DType dtype = DType::F32);
  static Tensor full(const Shape& shape, float value);
  static Tensor from_vector(const std::vector<float>& values, const Shape& shape);
  static Tensor from_vector_i64(const std::vector<int64_t>& values, const Shape& shape);
  static Tensor from_vector_i32(const std::vector<int32_t>& values, const Shape& shape);
  static Tensor scalar(float v) { return from_vector({v}, {1}); }

  bool defined() const { return storage_ != nullptr; }
  DType dtype() const { return dtype_; }
  const Shape& shape() const { return shape_; }
  const Shape& strides() const { return strides_; }
  int64_t dim() const { return int64_t(shape_.size()); }
  int64_t size(int64_t d) const;  // negative d counts from the end
  int64_t numel() const { return shape_numel(shape_); }
  size_t nbytes() const { return dtype_bytes(dtype_, numel()); }
  bool is_contiguous() const;
  const std::shared_ptr<Storage>& storage() const { return storage_; }
  size_t byte_offset() const { return offset_; }
  std::string describe() const;  // e.g. "F32[2, 3]"

  void* raw() const { return static_cast<char*>(storage_->data()) + offset_; }
  template <typename T>
  T* data() const {
    check_dtype(dtype_of<T>(), "data<T>");
    return static_cast<T*>(raw());
  }
  float* f32() const { return data<float>(); }

  // Views (no copy).
  Tensor view(const Shape& shape) const;  // requires a contiguous tensor; one dim may be -1
  Tensor transpose(int64_t a, int64_t b) const;
  Tensor permute(const std::vector<int64_t>& dims) const;
  Tensor slice(int64_t dim, int64_t start, int64_t end) const;  // [start, end) along dim
  Tensor select(int64_t dim, int64_t index) const;             // drops dim
  Tensor unsqueeze(int64_t dim) const;
  Tensor squeeze(int64_t dim) const;
  Tensor expand(const Shape& shape) const;  // broadcasting view with stride 0

  // View when the layout allows, copy otherwise.
  Tensor reshape(const Shape& shape) const;
  Tensor contiguous() const;
  Tensor clone() const;           // always a fresh contiguous copy
  Tensor to(DType dtype) const;   // converting copy (returns *this when dtype already matches and contiguous)
  void copy_from(const Tensor& src);  // same shape; converts dtype; handles strides
  void fill(float v);

  float item() const;                  // single-element tensor as float
  float at(const Shape& index) const;  // element as float (any plain dtype)
  std::vector<float> to_vector() const;  // all elements in row-major order as float

  int64_t canon_dim(int64_t d) const;  // wraps negative dims and checks the range

 private:
  void check_dtype(DType want, const char* what) const;
  std::shared_ptr<Storage> storage_;
  size_t offset_ = 0;
  DType dtype_ = DType::F32;
  Shape shape_, strides_;
};

// Drops the resident pages of a tensor that views a read-only file mapping; its next use reads them again from the
// page cache. What a model part that is idle for a while gives back (the UNet while its picture is decoded and read,
// a mapped matrix once a reordered copy replaced it). Only whole pages inside the tensor's bytes are dropped; owned
// memory is left alone.
void release_mapped_pages(const Tensor& t);

// Shape of broadcasting a and b (numpy rules); throws naming `op` and both shapes when incompatible.
Shape broadcast_shapes(const Shape& a, const Shape& b, const char* op);

}  // namespace dl
