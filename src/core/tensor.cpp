#include "core/tensor.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <sstream>

#include "core/error.h"
#include "core/thread_pool.h"

namespace dl {

std::string shape_str(const Shape& s) {
  std::ostringstream os;
  os << '[';
  for (size_t i = 0; i < s.size(); ++i) os << (i ? ", " : "") << s[i];
  os << ']';
  return os.str();
}

int64_t shape_numel(const Shape& s) {
  int64_t n = 1;
  for (int64_t d : s) {
    DL_CHECK(d >= 0, "negative dimension in shape ", shape_str(s));
    DL_CHECK(d == 0 || n <= (int64_t(1) << 48) / d, "shape ", shape_str(s), " has too many elements");
    n *= d;
  }
  return n;
}

Shape contiguous_strides(const Shape& s) {
  Shape st(s.size());
  int64_t acc = 1;
  for (size_t i = s.size(); i-- > 0;) {
    st[i] = acc;
    acc *= std::max<int64_t>(s[i], 1);
  }
  return st;
}

Tensor::Tensor(std::shared_ptr<Storage> storage, size_t byte_offset, DType dtype, Shape shape, Shape strides)
    : storage_(std::move(storage)), offset_(byte_offset), dtype_(dtype), shape_(std::move(shape)),
      strides_(std::move(strides)) {
  DL_CHECK(storage_, "tensor over a null storage");
  DL_CHECK(shape_.size() == strides_.size(), "shape ", shape_str(shape_), " and strides ", shape_str(strides_),
           " differ in rank");
  int64_t n = shape_numel(shape_);
  DL_CHECK(offset_ <= storage_->size(), "tensor ", describe(), " starts at byte ", offset_, ", past the end of its ",
           storage_->size(), "-byte storage");
  if (n == 0) return;
  const auto& info = dtype_info(dtype_);
  if (info.is_quantized) {
    DL_CHECK(is_contiguous(), "quantized tensor ", describe(), " must be contiguous");
    DL_CHECK(!shape_.empty() && shape_.back() % int64_t(info.block_elems) == 0, "quantized tensor ", describe(),
             ": innermost dimension must be a multiple of ", info.block_elems);
    DL_CHECK(offset_ + dtype_bytes(dtype_, n) <= storage_->size(), "tensor ", describe(), " at byte offset ",
             offset_, " runs past the end of its ", storage_->size(), "-byte storage");
    return;
  }
  // Furthest element reached must lie inside the storage; hostile strides must not wrap the arithmetic around.
  const uint64_t capacity = (storage_->size() - offset_) / info.block_bytes;  // whole elements available
  uint64_t max_index = 0;
  bool overflow = false;
  for (size_t i = 0; i < shape_.size(); ++i) {
    DL_CHECK(strides_[i] >= 0, "negative strides are not supported (", shape_str(strides_), ")");
    uint64_t term = 0;
    overflow = overflow || __builtin_mul_overflow(uint64_t(shape_[i] - 1), uint64_t(strides_[i]), &term) ||
               __builtin_add_overflow(max_index, term, &max_index);
  }
  DL_CHECK(!overflow && max_index < capacity, "tensor ", describe(), " with strides ", shape_str(strides_),
           " at byte offset ", offset_, " runs past the end of its ", storage_->size(), "-byte storage");
}

Tensor Tensor::empty(const Shape& shape, DType dtype) {
  size_t bytes = dtype_bytes(dtype, shape_numel(shape));
  return Tensor(Storage::allocate(bytes), 0, dtype, shape, contiguous_strides(shape));
}

Tensor Tensor::uninitialized(const Shape& shape, DType dtype) {
  size_t bytes = dtype_bytes(dtype, shape_numel(shape));
  return Tensor(Storage::allocate_uninitialized(bytes), 0, dtype, shape, contiguous_strides(shape));
}

Tensor Tensor::full(const Shape& shape, float value) {
  Tensor t = empty(shape);
  std::fill_n(t.f32(), t.numel(), value);
  return t;
}

Tensor Tensor::from_vector(const std::vector<float>& values, const Shape& shape) {
  DL_CHECK(int64_t(values.size()) == shape_numel(shape), "from_vector: ", values.size(), " values for shape ",
           shape_str(shape));
  Tensor t = empty(shape);
  std::copy(values.begin(), values.end(), t.f32());
  return t;
}

Tensor Tensor::from_vector_i64(const std::vector<int64_t>& values, const Shape& shape) {
  DL_CHECK(int64_t(values.size()) == shape_numel(shape), "from_vector_i64: ", values.size(), " values for shape ",
           shape_str(shape));
  Tensor t = empty(shape, DType::I64);
  std::copy(values.begin(), values.end(), t.data<int64_t>());
  return t;
}

Tensor Tensor::from_vector_i32(const std::vector<int32_t>& values, const Shape& shape) {
  DL_CHECK(int64_t(values.size()) == shape_numel(shape), "from_vector_i32: ", values.size(), " values for shape ",
           shape_str(shape));
  Tensor t = empty(shape, DType::I32);
  std::copy(values.begin(), values.end(), t.data<int32_t>());
  return t;
}

int64_t Tensor::canon_dim(int64_t d) const {
  int64_t r = dim();
  int64_t c = d < 0 ? d + r : d;
  DL_CHECK(c >= 0 && c < r, "dimension ", d, " is out of range for a tensor of shape ", shape_str(shape_));
  return c;
}

int64_t Tensor::size(int64_t d) const { return shape_[size_t(canon_dim(d))]; }

bool Tensor::is_contiguous() const {
  int64_t acc = 1;
  for (size_t i = shape_.size(); i-- > 0;) {
    if (shape_[i] != 1 && strides_[i] != acc) return false;
    acc *= shape_[i];
  }
  return true;
}

std::string Tensor::describe() const { return std::string(dtype_name(dtype_)) + shape_str(shape_); }

void Tensor::check_dtype(DType want, const char* what) const {
  DL_CHECK(defined(), what, ": tensor is undefined");
  DL_CHECK(dtype_ == want, what, ": expected ", dtype_name(want), " but tensor is ", describe());
}

Tensor Tensor::view(const Shape& shape) const {
  Shape s = shape;
  int64_t known = 1, infer = -1;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == -1) {
      DL_CHECK(infer < 0, "view: more than one -1 in ", shape_str(shape));
      infer = int64_t(i);
    } else {
      DL_CHECK(s[i] >= 0, "view: invalid shape ", shape_str(shape));
      known *= s[i];
    }
  }
  if (infer >= 0) {
    DL_CHECK(known > 0 && numel() % known == 0, "view: cannot infer -1 in ", shape_str(shape), " for ",
             numel(), " elements");
    s[size_t(infer)] = numel() / known;
  }
  DL_CHECK(shape_numel(s) == numel(), "view: shape ", shape_str(shape), " does not match ", describe());
  DL_CHECK(is_contiguous(), "view: tensor ", describe(), " is not contiguous (use reshape)");
  return Tensor(storage_, offset_, dtype_, s, contiguous_strides(s));
}

Tensor Tensor::reshape(const Shape& shape) const {
  if (is_contiguous()) return view(shape);
  return contiguous().view(shape);
}

Tensor Tensor::transpose(int64_t a, int64_t b) const {
  a = canon_dim(a);
  b = canon_dim(b);
  DL_CHECK(!dtype_info(dtype_).is_quantized, "transpose of quantized tensor ", describe());
  Shape s = shape_, st = strides_;
  std::swap(s[size_t(a)], s[size_t(b)]);
  std::swap(st[size_t(a)], st[size_t(b)]);
  return Tensor(storage_, offset_, dtype_, s, st);
}

Tensor Tensor::permute(const std::vector<int64_t>& dims) const {
  DL_CHECK(int64_t(dims.size()) == dim(), "permute: ", dims.size(), " dims given for ", describe());
  DL_CHECK(!dtype_info(dtype_).is_quantized, "permute of quantized tensor ", describe());
  Shape s(dims.size()), st(dims.size());
  std::vector<bool> used(dims.size(), false);
  for (size_t i = 0; i < dims.size(); ++i) {
    int64_t d = canon_dim(dims[i]);
    DL_CHECK(!used[size_t(d)], "permute: dimension ", d, " repeated");
    used[size_t(d)] = true;
    s[i] = shape_[size_t(d)];
    st[i] = strides_[size_t(d)];
  }
  return Tensor(storage_, offset_, dtype_, s, st);
}

Tensor Tensor::slice(int64_t d, int64_t start, int64_t end) const {
  d = canon_dim(d);
  int64_t n = shape_[size_t(d)];
  DL_CHECK(0 <= start && start <= end && end <= n, "slice [", start, ", ", end, ") out of range for dimension ", d,
           " of ", describe());
  const auto& info = dtype_info(dtype_);
  Shape s = shape_;
  s[size_t(d)] = end - start;
  if (info.is_quantized) {
    DL_CHECK(d == 0, "quantized tensors can only be sliced along dimension 0");
    int64_t row_elems = numel() / std::max<int64_t>(n, 1);
    return Tensor(storage_, offset_ + dtype_bytes(dtype_, start * row_elems), dtype_, s, contiguous_strides(s));
  }
  return Tensor(storage_, offset_ + size_t(start * strides_[size_t(d)]) * info.block_bytes, dtype_, s, strides_);
}

Tensor Tensor::select(int64_t d, int64_t index) const {
  d = canon_dim(d);
  Tensor t = slice(d, index, index + 1);
  Shape s = t.shape_, st = t.strides_;
  s.erase(s.begin() + d);
  st.erase(st.begin() + d);
  return Tensor(storage_, t.offset_, dtype_, s, st);
}

Tensor Tensor::unsqueeze(int64_t d) const {
  int64_t r = dim() + 1;
  int64_t c = d < 0 ? d + r : d;
  DL_CHECK(c >= 0 && c < r, "unsqueeze: dimension ", d, " out of range for ", describe());
  Shape s = shape_, st = strides_;
  int64_t stride = size_t(c) < shape_.size() ? strides_[size_t(c)] * shape_[size_t(c)] : 1;
  s.insert(s.begin() + c, 1);
  st.insert(st.begin() + c, stride);
  return Tensor(storage_, offset_, dtype_, s, st);
}

Tensor Tensor::squeeze(int64_t d) const {
  d = canon_dim(d);
  DL_CHECK(shape_[size_t(d)] == 1, "squeeze: dimension ", d, " of ", describe(), " is not 1");
  Shape s = shape_, st = strides_;
  s.erase(s.begin() + d);
  st.erase(st.begin() + d);
  return Tensor(storage_, offset_, dtype_, s, st);
}

Tensor Tensor::expand(const Shape& shape) const {
  DL_CHECK(shape.size() >= shape_.size(), "expand: cannot expand ", describe(), " to ", shape_str(shape));
  size_t lead = shape.size() - shape_.size();
  Shape st(shape.size(), 0);
  for (size_t i = 0; i < shape_.size(); ++i) {
    int64_t want = shape[lead + i];
    if (shape_[i] == want) {
      st[lead + i] = strides_[i];
    } else {
      DL_CHECK(shape_[i] == 1, "expand: cannot expand ", describe(), " to ", shape_str(shape));
      st[lead + i] = 0;
    }
  }
  return Tensor(storage_, offset_, dtype_, shape, st);
}

namespace {

// Visits every element of a strided tensor in row-major order, calling fn(element_offset, linear_index) where the
// offset is in elements from the tensor's start.
template <typename Fn>
void for_each_offset(const Shape& shape, const Shape& strides, Fn&& fn) {
  int64_t n = shape_numel(shape);
  if (n == 0) return;
  size_t r = shape.size();
  std::vector<int64_t> idx(r, 0);
  int64_t off = 0;
  for (int64_t i = 0; i < n; ++i) {
    fn(off, i);
    for (size_t d = r; d-- > 0;) {
      if (++idx[d] < shape[d]) {
        off += strides[d];
        break;
      }
      off -= (shape[d] - 1) * strides[d];
      idx[d] = 0;
    }
  }
}


// Copies a strided view into another of the same element size. Dimensions of one element are dropped and
// neighbours that are laid out back to back in both tensors merged, so a permuted or sliced view becomes a few
// long runs: the innermost is a memcpy when both sides are dense along it, else a typed strided loop. The outer
// runs are split across the thread pool.
void strided_copy(const Shape& shape, const Shape& dst_strides, const Shape& src_strides, size_t elem, char* dst,
                  const char* src) {
  struct Dim {
    int64_t n, ds, ss;
  };
  std::vector<Dim> dims;  // outermost first
  for (size_t d = 0; d < shape.size(); ++d)
    if (shape[d] != 1) dims.push_back({shape[d], dst_strides[d], src_strides[d]});
  std::vector<Dim> merged;
  for (const Dim& dim : dims) {
    if (!merged.empty()) {
      Dim& outer = merged.back();
      if (outer.ds == dim.ds * dim.n && outer.ss == dim.ss * dim.n) {
        outer = {outer.n * dim.n, dim.ds, dim.ss};
        continue;
      }
    }
    merged.push_back(dim);
  }
  if (merged.empty()) merged.push_back({1, 1, 1});
  const Dim inner = merged.back();
  merged.pop_back();
  int64_t rows = 1;
  for (const Dim& dim : merged) rows *= dim.n;
  auto copy_run = [&](char* d, const char* s) {
    if (inner.ds == 1 && inner.ss == 1) {
      std::memcpy(d, s, size_t(inner.n) * elem);
      return;
    }
    switch (elem) {
      case 4: {
        auto* dd = reinterpret_cast<uint32_t*>(d);
        auto* ss = reinterpret_cast<const uint32_t*>(s);
        for (int64_t i = 0; i < inner.n; ++i) dd[i * inner.ds] = ss[i * inner.ss];
        break;
      }
      case 2: {
        auto* dd = reinterpret_cast<uint16_t*>(d);
        auto* ss = reinterpret_cast<const uint16_t*>(s);
        for (int64_t i = 0; i < inner.n; ++i) dd[i * inner.ds] = ss[i * inner.ss];
        break;
      }
      default:
        for (int64_t i = 0; i < inner.n; ++i)
          std::memcpy(d + size_t(i * inner.ds) * elem, s + size_t(i * inner.ss) * elem, elem);
    }
  };
  // Small copies stay on the calling thread: waking the pool costs more than they do. So does a destination that
  // repeats elements (a zero stride), so that the last write wins as in a serial copy.
  int64_t grain = std::max<int64_t>(1, (int64_t(1) << 15) / std::max<int64_t>(1, inner.n));
  for (const Dim& dim : merged)
    if (dim.ds == 0) grain = rows;
  parallel_for(rows, grain, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      int64_t doff = 0, soff = 0, rest = r;
      for (size_t k = merged.size(); k-- > 0;) {
        int64_t i = rest % merged[k].n;
        rest /= merged[k].n;
        doff += i * merged[k].ds;
        soff += i * merged[k].ss;
      }
      copy_run(dst + size_t(doff) * elem, src + size_t(soff) * elem);
    }
  });
}

}  // namespace

void Tensor::copy_from(const Tensor& src) {
  DL_CHECK(defined() && src.defined(), "copy_from: undefined tensor");
  DL_CHECK(shape_ == src.shape_, "copy_from: shape ", src.describe(), " into ", describe());
  DL_CHECK(storage_->is_writable(), "copy_from: destination ", describe(), " is read-only (memory-mapped)");
  if (numel() == 0) return;
  const auto& si = dtype_info(src.dtype_);
  const auto& di = dtype_info(dtype_);
  if (si.is_quantized || di.is_quantized) {
    DL_CHECK(is_contiguous() && src.is_contiguous(), "copy_from: quantized copies need contiguous tensors");
    if (src.dtype_ == dtype_) {
      std::memcpy(raw(), src.raw(), nbytes());
      return;
    }
    // Through F32, one row at a time.
    int64_t row = shape_.empty() ? 1 : shape_.back();
    int64_t rows = row ? numel() / row : 0;
    std::vector<float> tmp(static_cast<size_t>(row));
    for (int64_t r = 0; r < rows; ++r) {
      convert_to_f32(src.dtype_, static_cast<const char*>(src.raw()) + dtype_bytes(src.dtype_, r * row),
                     tmp.data(), row);
      convert_from_f32(dtype_, tmp.data(), static_cast<char*>(raw()) + dtype_bytes(dtype_, r * row), row);
    }
    return;
  }
  if (src.dtype_ == dtype_ && is_contiguous() && src.is_contiguous()) {
    std::memmove(raw(), src.raw(), nbytes());
    return;
  }
  if (is_contiguous() && src.is_contiguous() && storage_ != src.storage_) {
    // Widening a half-precision weight for a kernel that computes in F32 happens on every call: one pass.
    if (dtype_ == DType::F32) return convert_to_f32(src.dtype_, src.raw(), static_cast<float*>(raw()), numel());
    if (src.dtype_ == DType::F32) return convert_from_f32(dtype_, static_cast<const float*>(src.raw()), raw(), numel());
  }
  const char* s = static_cast<const char*>(src.raw());
  char* d = static_cast<char*>(raw());
  size_t sb = si.block_bytes, db = di.block_bytes;
  if (src.dtype_ == dtype_) {
    if (storage_ != src.storage_) {
      strided_copy(shape_, strides_, src.strides_, sb, d, s);
    } else {  // the two views may overlap: through a buffer
      std::vector<char> buf(size_t(numel()) * sb);
      strided_copy(shape_, contiguous_strides(shape_), src.strides_, sb, buf.data(), s);
      strided_copy(shape_, strides_, contiguous_strides(shape_), sb, d, buf.data());
    }
    return;
  }
  // General case: gather source into contiguous F32-or-same buffer, then scatter.
  std::vector<char> buf(size_t(numel()) * sb);
  for_each_offset(src.shape_, src.strides_,
                  [&](int64_t off, int64_t i) { std::memcpy(buf.data() + size_t(i) * sb, s + size_t(off) * sb, sb); });
  std::vector<char> conv;
  const char* from = buf.data();
  if (src.dtype_ != dtype_) {
    std::vector<float> f(static_cast<size_t>(numel()));
    convert_to_f32(src.dtype_, buf.data(), f.data(), numel());
    conv.resize(size_t(numel()) * db);
    convert_from_f32(dtype_, f.data(), conv.data(), numel());
    from = conv.data();
  }
  for_each_offset(shape_, strides_,
                  [&](int64_t off, int64_t i) { std::memcpy(d + size_t(off) * db, from + size_t(i) * db, db); });
}

Tensor Tensor::contiguous() const {
  if (is_contiguous()) return *this;
  return clone();
}

Tensor Tensor::clone() const {
  Tensor t = uninitialized(shape_, dtype_);
  t.copy_from(*this);
  return t;
}

Tensor Tensor::to(DType dtype) const {
  if (dtype == dtype_ && is_contiguous()) return *this;
  Tensor t = uninitialized(shape_, dtype);
  t.copy_from(*this);
  return t;
}

void Tensor::fill(float v) {
  DL_CHECK(storage_->is_writable(), "fill: tensor ", describe(), " is read-only");
  Tensor one = from_vector({v}, {});
  copy_from(one.to(dtype_).expand(shape_));
}

float Tensor::item() const {
  DL_CHECK(numel() == 1, "item: tensor ", describe(), " has ", numel(), " elements");
  return to_vector()[0];
}

float Tensor::at(const Shape& index) const {
  DL_CHECK(index.size() == shape_.size(), "at: index rank ", index.size(), " for ", describe());
  int64_t off = 0;
  for (size_t i = 0; i < index.size(); ++i) {
    DL_CHECK(index[i] >= 0 && index[i] < shape_[i], "at: index ", shape_str(index), " out of range for ", describe());
    off += index[i] * strides_[i];
  }
  DL_CHECK(!dtype_info(dtype_).is_quantized, "at: quantized tensor ", describe());
  float v;
  convert_to_f32(dtype_, static_cast<const char*>(raw()) + size_t(off) * dtype_info(dtype_).block_bytes, &v, 1);
  return v;
}

std::vector<float> Tensor::to_vector() const {
  Tensor c = to(DType::F32);
  return std::vector<float>(c.f32(), c.f32() + c.numel());
}

Shape broadcast_shapes(const Shape& a, const Shape& b, const char* op) {
  size_t r = std::max(a.size(), b.size());
  Shape out(r);
  for (size_t i = 0; i < r; ++i) {
    int64_t da = i < r - a.size() ? 1 : a[i - (r - a.size())];
    int64_t db = i < r - b.size() ? 1 : b[i - (r - b.size())];
    DL_CHECK(da == db || da == 1 || db == 1, op, ": shapes ", shape_str(a), " and ", shape_str(b),
             " cannot be broadcast");
    out[i] = da == 1 ? db : da;
  }
  return out;
}

}  // namespace dl

namespace dl {

void release_mapped_pages(const Tensor& t) {
  if (!t.defined() || !t.storage()->is_mapped() || t.storage()->is_writable()) return;
  const uintptr_t page = uintptr_t(::sysconf(_SC_PAGESIZE));
  const uintptr_t start = reinterpret_cast<uintptr_t>(t.raw());
  const uintptr_t begin = (start + page - 1) / page * page, end = (start + t.nbytes()) / page * page;
  if (end > begin) ::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_DONTNEED);
}

}  // namespace dl
