#include "io/torch_bin.h"

#include <cstring>
#include <variant>
#include <vector>

#include "core/error.h"
#include "io/zip.h"

namespace dl::io {

namespace {

// ---- the value model of the restricted unpickler ----
struct Obj;
using ObjPtr = std::shared_ptr<Obj>;

struct StorageRef {
  DType dtype;
  std::shared_ptr<Storage> bytes;
};

struct Obj {
  enum class Kind { None, Bool, Int, Float, Str, Tuple, List, Dict, Global, Storage, Tensor, Mark };
  Kind kind = Kind::None;
  int64_t i = 0;
  double f = 0;
  std::string s;                                   // Str; Global "module.name"
  std::vector<ObjPtr> items;                       // Tuple, List
  std::vector<std::pair<ObjPtr, ObjPtr>> entries;  // Dict (ordered)
  StorageRef storage;
  Tensor tensor;
};

const char* kind_name(Obj::Kind k) {
  static const char* names[] = {"None", "bool", "int", "float", "str", "tuple", "list", "dict", "global",
                                "storage", "tensor", "mark"};
  return names[int(k)];
}

ObjPtr make(Obj::Kind k) {
  auto o = std::make_shared<Obj>();
  o->kind = k;
  return o;
}

// Storage classes a state dict may name, and the dtype they load as. Double storages are narrowed to F32 on load
// because the engine has no F64 compute.
struct StorageClass {
  const char* name;
  DType dtype;
  int elem_bytes;
  bool is_f64;
};
constexpr StorageClass kStorageClasses[] = {
    {"torch.FloatStorage", DType::F32, 4, false},   {"torch.HalfStorage", DType::F16, 2, false},
    {"torch.BFloat16Storage", DType::BF16, 2, false}, {"torch.DoubleStorage", DType::F32, 8, true},
    {"torch.IntStorage", DType::I32, 4, false},     {"torch.LongStorage", DType::I64, 8, false},
    {"torch.CharStorage", DType::I8, 1, false},     {"torch.ByteStorage", DType::U8, 1, false},
    {"torch.BoolStorage", DType::BOOL, 1, false},
};

const StorageClass* storage_class(const std::string& name) {
  for (const auto& c : kStorageClasses)
    if (name == c.name) return &c;
  return nullptr;
}

constexpr const char* kAllowedCallables[] = {
    "collections.OrderedDict", "torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_tensor",
    "torch._utils._rebuild_parameter", "torch._utils._rebuild_parameter_with_state",
};

bool allowed_global(const std::string& name) {
  if (storage_class(name)) return true;
  for (const char* c : kAllowedCallables)
    if (name == c) return true;
  return false;
}

class Unpickler {
 public:
  Unpickler(const unsigned char* data, size_t size, const ZipArchive* archive, std::string prefix, std::string what)
      : p_(data), end_(data + size), archive_(archive), prefix_(std::move(prefix)), what_(std::move(what)) {}
  // A hostile pickle can make a container hold itself (through the memo); clearing every container breaks such
  // reference cycles so nothing leaks.
  ~Unpickler() {
    for (const ObjPtr& o : created_) {
      o->items.clear();
      o->entries.clear();
    }
  }

  ObjPtr run() {
    for (;;) {
      const uint8_t op = byte();
      switch (op) {
        case 0x80: byte(); break;            // PROTO
        case 0x95: skip(8); break;           // FRAME (protocol 4 framing is transparent)
        case '.': return pop("STOP");        // STOP
        case '(': push(make(Obj::Kind::Mark)); break;  // MARK
        case 'N': push(make(Obj::Kind::None)); break;
        case 0x88: push_bool(true); break;   // NEWTRUE
        case 0x89: push_bool(false); break;  // NEWFALSE
        case 'K': push_int(byte()); break;   // BININT1
        case 'M': push_int(int64_t(uint_le(2))); break;             // BININT2
        case 'J': push_int(int64_t(int32_t(uint32_t(uint_le(4))))); break;  // BININT
        case 0x8a: {                                                // LONG1
          const size_t n = byte();
          DL_CHECK(n <= 8, what_, ": pickle integer of ", n, " bytes is too large");
          uint64_t v = 0;
          const unsigned char* b = take(n);
          for (size_t k = n; k-- > 0;) v = (v << 8) | b[k];
          if (n > 0 && n < 8 && (b[n - 1] & 0x80)) v |= ~uint64_t(0) << (8 * n);  // sign-extend
          push_int(int64_t(v));
          break;
        }
        case 'G': {  // BINFLOAT, big-endian double
          uint64_t u = 0;
          const unsigned char* b = take(8);
          for (int k = 0; k < 8; ++k) u = (u << 8) | b[k];
          auto o = make(Obj::Kind::Float);
          std::memcpy(&o->f, &u, 8);
          push(o);
          break;
        }
        case 0x8c: push_str(byte()); break;                   // SHORT_BINUNICODE
        case 'X': push_str(uint_le(4)); break;                // BINUNICODE
        case 0x8d: push_str(uint_le(8)); break;               // BINUNICODE8
        case 'U': push_str(byte()); break;                    // SHORT_BINSTRING
        case 'T': push_str(uint_le(4)); break;                // BINSTRING
        case ')': push(container(Obj::Kind::Tuple)); break;   // EMPTY_TUPLE
        case ']': push(container(Obj::Kind::List)); break;    // EMPTY_LIST
        case '}': push(container(Obj::Kind::Dict)); break;    // EMPTY_DICT
        case 't': push(tuple_of(pop_to_mark())); break;       // TUPLE
        case 0x85: push(tuple_of(pop_n(1))); break;           // TUPLE1
        case 0x86: push(tuple_of(pop_n(2))); break;           // TUPLE2
        case 0x87: push(tuple_of(pop_n(3))); break;           // TUPLE3
        case 'l': {                                           // LIST
          auto o = container(Obj::Kind::List);
          o->items = pop_to_mark();
          push(o);
          break;
        }
        case 'd': {  // DICT
          auto o = container(Obj::Kind::Dict);
          set_items(*o, pop_to_mark());
          push(o);
          break;
        }
        case 'a': {  // APPEND
          auto v = pop("APPEND");
          expect(top("APPEND"), Obj::Kind::List, "APPEND").items.push_back(v);
          break;
        }
        case 'e': {  // APPENDS
          auto vs = pop_to_mark();
          auto& list = expect(top("APPENDS"), Obj::Kind::List, "APPENDS");
          list.items.insert(list.items.end(), vs.begin(), vs.end());
          break;
        }
        case 's': {  // SETITEM
          auto v = pop("SETITEM"), k = pop("SETITEM");
          set_items(expect(top("SETITEM"), Obj::Kind::Dict, "SETITEM"), {k, v});
          break;
        }
        case 'u': {  // SETITEMS
          auto kv = pop_to_mark();
          set_items(expect(top("SETITEMS"), Obj::Kind::Dict, "SETITEMS"), kv);
          break;
        }
        case 'q': memo_put(byte()); break;        // BINPUT
        case 'r': memo_put(uint_le(4)); break;    // LONG_BINPUT
        case 0x94: memo_put(memo_.size()); break; // MEMOIZE
        case 'h': push(memo_get(byte())); break;  // BINGET
        case 'j': push(memo_get(uint_le(4))); break;  // LONG_BINGET
        case 'c': {                               // GLOBAL "module\nname\n"
          std::string module = line(), name = line();
          push(global(module + "." + name));
          break;
        }
        case 0x93: {  // STACK_GLOBAL
          auto name = pop("STACK_GLOBAL"), module = pop("STACK_GLOBAL");
          DL_CHECK(module->kind == Obj::Kind::Str && name->kind == Obj::Kind::Str, what_,
                   ": STACK_GLOBAL needs two strings");
          push(global(module->s + "." + name->s));
          break;
        }
        case 'Q': {  // BINPERSID
          push(persistent_load(pop("BINPERSID")));
          break;
        }
        case 'R': {  // REDUCE
          auto args = pop("REDUCE"), fn = pop("REDUCE");
          push(reduce(*fn, expect(args, Obj::Kind::Tuple, "REDUCE arguments")));
          break;
        }
        case 0x81: {  // NEWOBJ: cls.__new__(cls, *args); only OrderedDict is constructible
          auto args = pop("NEWOBJ"), cls = pop("NEWOBJ");
          push(reduce(*cls, expect(args, Obj::Kind::Tuple, "NEWOBJ arguments")));
          break;
        }
        case 'b': {  // BUILD: object state; state dicts carry only `_metadata`, which we do not need
          auto state = pop("BUILD");
          auto obj = top("BUILD");
          DL_CHECK(obj->kind == Obj::Kind::Dict || obj->kind == Obj::Kind::Tensor, what_, ": BUILD on a ",
                   kind_name(obj->kind), " is not part of a state dict");
          break;
        }
        case '0': pop("POP"); break;  // POP
        case '1': pop_to_mark(); break;  // POP_MARK
        case '2': push(top("DUP")); break;  // DUP
        default:
          fail(what_, ": unsupported pickle opcode 0x", hex(op), " at byte ", consumed() - 1,
               " (not a plain state dict)");
      }
    }
  }

 private:
  static std::string hex(uint8_t v) {
    const char* d = "0123456789abcdef";
    return std::string{d[v >> 4], d[v & 15]};
  }
  size_t consumed() const { return size_t(p_ - begin_()); }
  const unsigned char* begin_() const { return end_ - total_; }

  const unsigned char* take(size_t n) {
    DL_CHECK(size_t(end_ - p_) >= n, what_, ": pickle data ends early");
    const unsigned char* b = p_;
    p_ += n;
    return b;
  }
  uint8_t byte() { return *take(1); }
  void skip(size_t n) { take(n); }
  uint64_t uint_le(int n) {
    const unsigned char* b = take(size_t(n));
    uint64_t v = 0;
    for (int k = n - 1; k >= 0; --k) v = (v << 8) | b[k];
    return v;
  }
  std::string line() {
    const unsigned char* nl = static_cast<const unsigned char*>(std::memchr(p_, '\n', size_t(end_ - p_)));
    DL_CHECK(nl, what_, ": unterminated GLOBAL name in pickle");
    std::string s(reinterpret_cast<const char*>(p_), size_t(nl - p_));
    p_ = nl + 1;
    return s;
  }

  void push(ObjPtr o) {
    DL_CHECK(stack_.size() < (1u << 20), what_, ": pickle stack too deep");
    stack_.push_back(std::move(o));
  }
  void push_bool(bool b) {
    auto o = make(Obj::Kind::Bool);
    o->i = b;
    push(o);
  }
  void push_int(int64_t v) {
    auto o = make(Obj::Kind::Int);
    o->i = v;
    push(o);
  }
  void push_str(uint64_t n) {
    DL_CHECK(n <= uint64_t(end_ - p_), what_, ": pickle string of ", n, " bytes runs past the end");
    auto o = make(Obj::Kind::Str);
    o->s.assign(reinterpret_cast<const char*>(take(size_t(n))), size_t(n));
    push(o);
  }
  ObjPtr pop(const char* op) {
    DL_CHECK(!stack_.empty() && stack_.back()->kind != Obj::Kind::Mark, what_, ": pickle stack underflow at ", op);
    ObjPtr o = std::move(stack_.back());
    stack_.pop_back();
    return o;
  }
  ObjPtr top(const char* op) {
    DL_CHECK(!stack_.empty() && stack_.back()->kind != Obj::Kind::Mark, what_, ": pickle stack underflow at ", op);
    return stack_.back();
  }
  std::vector<ObjPtr> pop_n(size_t n) {
    std::vector<ObjPtr> v(n);
    for (size_t k = n; k-- > 0;) v[k] = pop("TUPLEn");
    return v;
  }
  std::vector<ObjPtr> pop_to_mark() {
    size_t m = stack_.size();
    while (m > 0 && stack_[m - 1]->kind != Obj::Kind::Mark) --m;
    DL_CHECK(m > 0, what_, ": pickle MARK missing");
    std::vector<ObjPtr> v(stack_.begin() + int64_t(m), stack_.end());
    stack_.resize(m - 1);
    return v;
  }
  ObjPtr container(Obj::Kind k) {
    created_.push_back(make(k));
    return created_.back();
  }
  ObjPtr tuple_of(std::vector<ObjPtr> items) {
    auto o = container(Obj::Kind::Tuple);
    o->items = std::move(items);
    return o;
  }
  Obj& expect(const ObjPtr& o, Obj::Kind k, const char* what) {
    DL_CHECK(o->kind == k, what_, ": ", what, " expects a ", kind_name(k), " but found a ", kind_name(o->kind));
    return *o;
  }
  void set_items(Obj& dict, const std::vector<ObjPtr>& kv) {
    DL_CHECK(kv.size() % 2 == 0, what_, ": odd number of dict items");
    for (size_t k = 0; k < kv.size(); k += 2) dict.entries.emplace_back(kv[k], kv[k + 1]);
  }
  void memo_put(uint64_t idx) {
    // Every PUT costs at least two bytes of pickle, so an index beyond the pickle's size is a lie.
    DL_CHECK(idx <= total_, what_, ": pickle memo index ", idx, " is implausible for a ", total_, "-byte pickle");
    if (idx >= memo_.size()) memo_.resize(size_t(idx) + 1);
    memo_[size_t(idx)] = top("PUT");
  }
  ObjPtr memo_get(uint64_t idx) {
    DL_CHECK(idx < memo_.size() && memo_[size_t(idx)], what_, ": pickle refers to unknown memo entry ", idx);
    return memo_[size_t(idx)];
  }

  ObjPtr global(const std::string& name) {
    DL_CHECK(allowed_global(name), what_, ": refusing to load global '", name,
             "': only plain state dicts (tensors, storages, OrderedDict) are accepted");
    auto o = make(Obj::Kind::Global);
    o->s = name;
    return o;
  }

  // ('storage', <storage class>, key, location, numel)
  ObjPtr persistent_load(const ObjPtr& pid) {
    DL_CHECK(pid->kind == Obj::Kind::Tuple && pid->items.size() >= 5 && pid->items[0]->kind == Obj::Kind::Str &&
                 pid->items[0]->s == "storage",
             what_, ": unsupported persistent id in pickle");
    const Obj& cls = *pid->items[1];
    DL_CHECK(cls.kind == Obj::Kind::Global && storage_class(cls.s), what_, ": persistent id names no storage type");
    const StorageClass& sc = *storage_class(cls.s);
    const Obj& key = *pid->items[2];
    const Obj& numel = *pid->items[4];
    DL_CHECK(key.kind == Obj::Kind::Str && numel.kind == Obj::Kind::Int && numel.i >= 0, what_,
             ": malformed storage persistent id");
    auto cached = storages_.find(key.s);
    if (cached != storages_.end()) return cached->second;
    DL_CHECK(archive_, what_, ": pickle references storage '", key.s, "' but there is no archive");
    const std::string entry = prefix_ + "/data/" + key.s;
    std::shared_ptr<Storage> bytes = archive_->read(entry);
    DL_CHECK(uint64_t(numel.i) <= bytes->size() / uint64_t(sc.elem_bytes), what_, ": storage '", key.s, "' holds ",
             bytes->size(), " bytes, fewer than ", numel.i, " elements of ", cls.s);
    if (sc.is_f64) {  // narrowed to F32: the engine computes in F32
      auto f32 = Storage::allocate(size_t(numel.i) * 4);
      const auto* src = static_cast<const unsigned char*>(bytes->data());
      for (int64_t k = 0; k < numel.i; ++k) {
        double d;
        std::memcpy(&d, src + k * 8, 8);
        static_cast<float*>(f32->data())[k] = float(d);
      }
      bytes = f32;
    } else if (reinterpret_cast<uintptr_t>(bytes->data()) % uintptr_t(sc.elem_bytes) != 0) {
      auto copy = Storage::allocate(bytes->size());
      std::memcpy(copy->data(), bytes->data(), bytes->size());
      bytes = copy;
    }
    auto o = make(Obj::Kind::Storage);
    o->storage = {sc.dtype, bytes};
    storages_[key.s] = o;
    return o;
  }

  static std::vector<int64_t> int_tuple(const Obj& t, const std::string& what, const char* field) {
    DL_CHECK(t.kind == Obj::Kind::Tuple, what, ": tensor ", field, " is not a tuple");
    std::vector<int64_t> v;
    for (const auto& x : t.items) {
      DL_CHECK(x->kind == Obj::Kind::Int && x->i >= 0, what, ": tensor ", field, " holds a non-integer or negative value");
      v.push_back(x->i);
    }
    return v;
  }

  ObjPtr reduce(const Obj& fn, const Obj& args) {
    DL_CHECK(fn.kind == Obj::Kind::Global, what_, ": REDUCE of a ", kind_name(fn.kind), " is not allowed");
    const auto& a = args.items;
    if (fn.s == "collections.OrderedDict") {
      auto d = container(Obj::Kind::Dict);
      if (!a.empty()) {  // OrderedDict([(k, v), ...])
        DL_CHECK(a.size() == 1 && (a[0]->kind == Obj::Kind::List || a[0]->kind == Obj::Kind::Tuple), what_,
                 ": unexpected OrderedDict arguments");
        for (const auto& kv : a[0]->items) {
          DL_CHECK(kv->kind == Obj::Kind::Tuple && kv->items.size() == 2, what_, ": OrderedDict item is not a pair");
          d->entries.emplace_back(kv->items[0], kv->items[1]);
        }
      }
      return d;
    }
    if (fn.s == "torch._utils._rebuild_tensor_v2" || fn.s == "torch._utils._rebuild_tensor") {
      DL_CHECK(a.size() >= 4, what_, ": ", fn.s, " needs (storage, offset, size, stride)");
      DL_CHECK(a[0]->kind == Obj::Kind::Storage && a[1]->kind == Obj::Kind::Int && a[1]->i >= 0, what_, ": ", fn.s,
               " needs a storage and a non-negative offset");
      const StorageRef& st = a[0]->storage;
      Shape shape = int_tuple(*a[2], what_, "size"), strides = int_tuple(*a[3], what_, "stride");
      DL_CHECK(shape.size() == strides.size(), what_, ": tensor size and stride ranks differ");
      const size_t elem = dtype_info(st.dtype).block_bytes;
      DL_CHECK(uint64_t(a[1]->i) <= st.bytes->size() / elem, what_, ": tensor offset ", a[1]->i,
               " lies outside its storage");
      auto t = make(Obj::Kind::Tensor);
      // The Tensor constructor checks that every strided element lies inside the storage.
      t->tensor = Tensor(st.bytes, size_t(a[1]->i) * elem, st.dtype, shape, strides);
      return t;
    }
    if (fn.s == "torch._utils._rebuild_parameter" || fn.s == "torch._utils._rebuild_parameter_with_state") {
      DL_CHECK(!a.empty() && a[0]->kind == Obj::Kind::Tensor, what_, ": ", fn.s, " needs a tensor");
      return a[0];
    }
    fail(what_, ": calling '", fn.s, "' is not allowed");
  }

  const unsigned char* p_;
  const unsigned char* end_;
  size_t total_ = size_t(end_ - p_);
  const ZipArchive* archive_;
  std::string prefix_, what_;
  std::vector<ObjPtr> stack_, memo_, created_;
  std::map<std::string, ObjPtr> storages_;
};

}  // namespace

StateDict unpickle_state_dict(const unsigned char* pickle, size_t size, const ZipArchive* archive,
                              const std::string& prefix, const std::string& what) {
  Unpickler u(pickle, size, archive, prefix, what);
  ObjPtr root = u.run();
  DL_CHECK(root->kind == Obj::Kind::Dict, what, ": the pickle holds a ", kind_name(root->kind),
           ", not a state dict");
  StateDict out;
  for (const auto& [k, v] : root->entries) {
    DL_CHECK(k->kind == Obj::Kind::Str, what, ": state dict key is a ", kind_name(k->kind), ", not a string");
    DL_CHECK(v->kind == Obj::Kind::Tensor, what, ": state dict entry '", k->s, "' is a ", kind_name(v->kind),
             ", not a tensor");
    DL_CHECK(out.emplace(k->s, v->tensor).second, what, ": duplicate state dict key '", k->s, "'");
  }
  return out;
}

StateDict read_torch_bin(const ZipArchive& archive) {
  // torch.save puts everything under one top-level folder, whose name varies ("archive", the file stem, ...).
  std::string prefix;
  for (const std::string& n : archive.names()) {
    const auto slash = n.find('/');
    if (slash != std::string::npos && n.compare(slash, std::string::npos, "/data.pkl") == 0) {
      DL_CHECK(prefix.empty(), archive.what(), ": more than one data.pkl in the archive");
      prefix = n.substr(0, slash);
    }
  }
  DL_CHECK(!prefix.empty(), archive.what(), ": no data.pkl: not a torch.save zip archive");
  if (archive.contains(prefix + "/byteorder")) {
    auto bo = archive.read(prefix + "/byteorder");
    std::string order(static_cast<const char*>(bo->data()), bo->size());
    DL_CHECK(order == "little", archive.what(), ": byte order '", order, "' is not supported");
  }
  auto pkl = archive.read(prefix + "/data.pkl");
  return unpickle_state_dict(static_cast<const unsigned char*>(pkl->data()), pkl->size(), &archive, prefix,
                             archive.what());
}

StateDict read_torch_bin(const std::string& path) {
  auto file = Storage::read_weights_file(path);
  const std::string what = "'" + path + "'";
  // The legacy (pre-1.6) format is a bare pickle stream starting with a magic number, not a zip.
  DL_CHECK(file->size() >= 4 && std::memcmp(file->data(), "PK\x03\x04", 4) == 0, what,
           ": not a torch.save zip archive (legacy PyTorch serialisation is not supported; re-save with torch>=1.6)");
  ZipArchive archive(file, what);
  return read_torch_bin(archive);
}

}  // namespace dl::io
