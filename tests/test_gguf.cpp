// GGUF reader/writer: round trips of every metadata and tensor type, alignment, the on-disk byte layout checked
// against a file assembled by hand from the spec, and hostile files.
#include <sys/resource.h>
#include <unistd.h>

#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>

#include "core/error.h"
#include "io/gguf.h"
#include "test_util.h"

namespace dl {
namespace {

using io::GgufMetadata;
using io::GgufType;
using io::GgufValue;

std::string temp_path(const char* name) {
  return std::string("/tmp/dl_test_gguf_") + name + "_" + std::to_string(getpid());
}

std::string slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

io::GgufFile parse_bytes(const std::string& bytes) {
  auto s = Storage::allocate(bytes.size());
  if (!bytes.empty()) std::memcpy(s->data(), bytes.data(), bytes.size());
  return io::parse_gguf(s, "test image");
}

// Little-endian encoder written with shifts (not memcpy) so the hostile-file tests do not share the
// implementation's assumptions.
struct Bytes {
  std::string s;
  Bytes& u8(uint8_t v) {
    s.push_back(char(v));
    return *this;
  }
  Bytes& u32(uint32_t v) {
    for (int i = 0; i < 4; ++i) s.push_back(char((v >> (8 * i)) & 0xff));
    return *this;
  }
  Bytes& u64(uint64_t v) {
    for (int i = 0; i < 8; ++i) s.push_back(char((v >> (8 * i)) & 0xff));
    return *this;
  }
  Bytes& f32(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    return u32(u);
  }
  Bytes& raw(const std::string& r) {
    s += r;
    return *this;
  }
  Bytes& str(const std::string& r) { return u64(r.size()).raw(r); }
  Bytes& pad_to(size_t a) {
    while (s.size() % a) s.push_back('\0');
    return *this;
  }
  Bytes& header(uint64_t n_tensors, uint64_t n_kv, uint32_t version = 3) {
    return raw("GGUF").u32(version).u64(n_tensors).u64(n_kv);
  }
  // A tensor info: dims given innermost first, as stored.
  Bytes& info(const std::string& name, std::vector<uint64_t> ne, uint32_t type, uint64_t offset) {
    str(name).u32(uint32_t(ne.size()));
    for (uint64_t d : ne) u64(d);
    return u32(type).u64(offset);
  }
};

void expect_error(const std::string& bytes, const std::string& fragment) {
  try {
    parse_bytes(bytes);
    ADD_FAILURE() << "accepted a file that should fail with '" << fragment << "'";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos) << e.what();
  }
}

GgufMetadata all_types_metadata() {
  GgufValue::Array nested_strings{GgufValue(std::vector<std::string>{"a", "bc"}),
                                  GgufValue(std::vector<std::string>{}),
                                  GgufValue(std::vector<std::string>{std::string("nul\0inside", 10)})};
  GgufValue::Array mixed{GgufValue(std::vector<int32_t>{1, -2, 3}), GgufValue(std::vector<float>{0.5f}),
                         GgufValue(GgufValue::Array{GgufValue(std::vector<uint8_t>{7}), GgufValue(GgufValue::Array{})})};
  return GgufMetadata{
      {"general.architecture", "dreamllm"},
      {"t.u8", uint8_t(250)},
      {"t.i8", int8_t(-120)},
      {"t.u16", uint16_t(65000)},
      {"t.i16", int16_t(-32000)},
      {"t.u32", uint32_t(4000000000u)},
      {"t.i32", int32_t(-2000000000)},
      {"t.f32", 3.25f},
      {"t.bool_true", true},
      {"t.bool_false", false},
      {"t.string", std::string("héllo wörld")},
      {"t.empty_string", std::string()},
      {"t.u64", uint64_t(1) << 60},
      {"t.i64", -(int64_t(1) << 60)},
      {"t.f64", 2.718281828459045},
      {"a.u8", std::vector<uint8_t>{0, 1, 255}},
      {"a.i8", std::vector<int8_t>{-128, 0, 127}},
      {"a.u16", std::vector<uint16_t>{1, 65535}},
      {"a.i16", std::vector<int16_t>{-32768, 32767}},
      {"a.u32", std::vector<uint32_t>{0, 4294967295u}},
      {"a.i32", std::vector<int32_t>{-5, 6, 7}},
      {"a.f32", std::vector<float>{1.5f, -0.f, 1e-30f}},
      {"a.bool", std::vector<bool>{true, false, true}},
      {"a.string", std::vector<std::string>{"tok", "", "<0xFF>", "▁the"}},
      {"a.u64", std::vector<uint64_t>{~uint64_t(0)}},
      {"a.i64", std::vector<int64_t>{INT64_MIN, INT64_MAX}},
      {"a.f64", std::vector<double>{-1e300}},
      {"a.empty_f32", std::vector<float>{}},
      {"a.nested_strings", nested_strings},
      {"a.nested_mixed", mixed},
  };
}

TEST(Gguf, MetadataRoundTripsEveryType) {
  const GgufMetadata md = all_types_metadata();
  const std::string path = temp_path("meta");
  io::write_gguf(path, md, {});
  auto f = io::read_gguf(path);
  EXPECT_EQ(f.version, 3u);
  EXPECT_EQ(f.alignment, 32u);
  ASSERT_EQ(f.metadata.size(), md.size());
  for (size_t i = 0; i < md.size(); ++i) {
    SCOPED_TRACE(md.entries()[i].first);
    EXPECT_EQ(f.metadata.entries()[i].first, md.entries()[i].first);  // file order kept
    EXPECT_TRUE(f.metadata.entries()[i].second == md.entries()[i].second);
    EXPECT_EQ(f.metadata.entries()[i].second.type_name(), md.entries()[i].second.type_name());
  }
  EXPECT_EQ(f.metadata.get_u8("t.u8"), 250);
  EXPECT_EQ(f.metadata.get_i8("t.i8"), -120);
  EXPECT_EQ(f.metadata.get_u16("t.u16"), 65000);
  EXPECT_EQ(f.metadata.get_i16("t.i16"), -32000);
  EXPECT_EQ(f.metadata.get_u32("t.u32"), 4000000000u);
  EXPECT_EQ(f.metadata.get_i32("t.i32"), -2000000000);
  EXPECT_EQ(f.metadata.get_f32("t.f32"), 3.25f);
  EXPECT_TRUE(f.metadata.get_bool("t.bool_true"));
  EXPECT_FALSE(f.metadata.get_bool("t.bool_false"));
  EXPECT_EQ(f.metadata.get_string("t.string"), "héllo wörld");
  EXPECT_EQ(f.metadata.get_u64("t.u64"), uint64_t(1) << 60);
  EXPECT_EQ(f.metadata.get_i64("t.i64"), -(int64_t(1) << 60));
  EXPECT_EQ(f.metadata.get_f64("t.f64"), 2.718281828459045);
  EXPECT_EQ(f.metadata.get_string_array("a.string"), (std::vector<std::string>{"tok", "", "<0xFF>", "▁the"}));
  EXPECT_EQ(f.metadata.get_i32_array("a.i32"), (std::vector<int32_t>{-5, 6, 7}));
  EXPECT_EQ(f.metadata.at("a.empty_f32").array_type(), GgufType::F32);
  EXPECT_EQ(f.metadata.at("a.empty_f32").array_size(), 0u);

  const auto& nested = f.metadata.get_nested_array("a.nested_strings");
  ASSERT_EQ(nested.size(), 3u);
  EXPECT_EQ(nested[0].get<std::vector<std::string>>(), (std::vector<std::string>{"a", "bc"}));
  EXPECT_EQ(nested[1].array_type(), GgufType::STRING);
  EXPECT_EQ(nested[2].get<std::vector<std::string>>()[0], std::string("nul\0inside", 10));
  const auto& mixed = f.metadata.get_nested_array("a.nested_mixed");
  ASSERT_EQ(mixed.size(), 3u);
  EXPECT_EQ(mixed[1].get<std::vector<float>>(), std::vector<float>{0.5f});
  EXPECT_EQ(mixed[2].array_type(), GgufType::ARRAY);
  EXPECT_EQ(mixed[2].get<GgufValue::Array>()[1].array_size(), 0u);
  EXPECT_EQ(f.metadata.at("a.u8").type(), GgufType::ARRAY);
  EXPECT_EQ(f.metadata.at("a.u8").type_name(), "array[u8]");
  EXPECT_TRUE(f.tensors.empty());
  std::remove(path.c_str());
}

TEST(Gguf, WriterAndReaderAgreeOnTheNestingLimit) {
  auto nest = [](int levels) {
    GgufValue v(std::vector<uint8_t>{1});
    for (int i = 0; i < levels; ++i) v = GgufValue(GgufValue::Array{v});
    return v;
  };
  const std::string path = temp_path("nest");
  io::write_gguf(path, {{"deep", nest(15)}}, {});
  EXPECT_TRUE(io::read_gguf(path).metadata.at("deep") == nest(15));
  EXPECT_THROW(io::write_gguf(path, {{"deep", nest(16)}}, {}), Error);
  std::remove(path.c_str());
}

TEST(Gguf, GettersNameTheKeyOnMismatch) {
  GgufMetadata md = all_types_metadata();
  auto expect_msg = [](auto&& fn, const std::string& a, const std::string& b) {
    try {
      fn();
      ADD_FAILURE() << "no error";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(a), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find(b), std::string::npos) << e.what();
    }
  };
  expect_msg([&] { md.get_u32("t.u64"); }, "'t.u64'", "is u64, expected u32");
  expect_msg([&] { md.get_string("t.u8"); }, "'t.u8'", "expected string");
  expect_msg([&] { md.get_string_array("a.i32"); }, "'a.i32'", "array[i32], expected array[string]");
  expect_msg([&] { md.get_f32("no.such.key"); }, "'no.such.key'", "missing");
  expect_msg([&] { md.get_uint("t.i32"); }, "'t.i32'", "negative");
  expect_msg([&] { md.get_uint("t.string"); }, "'t.string'", "unsigned integer");
  EXPECT_EQ(md.get_uint("t.u8"), 250u);
  EXPECT_EQ(md.get_uint("t.u32"), 4000000000u);
  EXPECT_EQ(md.get_uint("absent", 7), 7u);
  expect_msg([&] { md.add("t.u8", uint8_t(1)); }, "duplicate", "'t.u8'");
  md.set("t.u8", std::string("replaced"));
  EXPECT_EQ(md.get_string("t.u8"), "replaced");
  EXPECT_EQ(md.entries()[1].first, "t.u8");  // replaced in place
  // An array of arrays only holds arrays.
  EXPECT_THROW((void)GgufValue(GgufValue::Array{GgufValue(uint32_t(1))}), Error);
  // The file name is part of a read file's messages.
  const std::string path = temp_path("getters");
  io::write_gguf(path, md, {});
  expect_msg([&] { io::read_gguf(path).metadata.get_bool("t.f32"); }, path, "'t.f32' is f32, expected bool");
  std::remove(path.c_str());
}

TEST(Gguf, TensorsRoundTripBitIdentical) {
  Tensor base = test::randn({4, 64}, 7);
  std::vector<std::pair<std::string, Tensor>> tensors = {
      {"f32", test::randn({3, 5}, 1)},
      {"f16", base.to(DType::F16)},
      {"bf16", base.to(DType::BF16)},
      {"q8_0", base.to(DType::Q8_0)},
      {"q4_0", base.slice(0, 0, 2).to(DType::Q4_0)},
      {"i32", Tensor::from_vector_i32({7, -8, 9, 2147483647}, {2, 2})},
      {"i64", Tensor::from_vector_i64({-1, int64_t(1) << 40}, {2})},
      {"i8", Tensor::from_vector({-3, 0, 5}, {3}).to(DType::I8)},
      {"cube", test::randn({2, 3, 4}, 2)},
      {"strided", test::randn({5, 3}, 3).transpose(0, 1)},
      {"empty", Tensor::empty({0, 4})},
      {"scalar", Tensor::from_vector({42.f}, {})},
  };
  const std::string path = temp_path("tensors");
  io::write_gguf(path, {{"general.architecture", "test"}}, tensors);
  auto f = io::read_gguf(path);
  ASSERT_EQ(f.tensors.size(), tensors.size());
  ASSERT_EQ(f.tensor_infos.size(), tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    const auto& [name, want] = tensors[i];
    SCOPED_TRACE(name);
    EXPECT_EQ(f.tensor_infos[i].name, name);  // file order kept
    const Tensor& got = f.tensors.at(name);
    EXPECT_EQ(got.shape(), want.shape());
    EXPECT_EQ(got.dtype(), want.dtype());
    EXPECT_TRUE(test::bit_equal(got, want.contiguous()));
    EXPECT_EQ(f.tensor_infos[i].ggml_type, io::ggml_type_from_dtype(want.dtype()));
  }
  // GGUF lists dims innermost first: the row-major [2, 3, 4] is stored as ne = {4, 3, 2}.
  const auto& cube = f.tensor_infos[8];
  EXPECT_EQ(cube.ne, (std::vector<uint64_t>{4, 3, 2}));
  EXPECT_EQ(cube.shape, (Shape{2, 3, 4}));
  EXPECT_EQ(f.tensor_infos[3].ggml_type, 8u);   // Q8_0
  EXPECT_EQ(f.tensor_infos[4].ggml_type, 2u);   // Q4_0
  EXPECT_EQ(f.tensor_infos[2].ggml_type, 30u);  // BF16
  EXPECT_EQ(f.tensor_infos[5].ggml_type, 26u);  // I32
  EXPECT_TRUE(f.tensors.at("f32").storage()->is_mapped());  // zero copy
  std::remove(path.c_str());
}

TEST(Gguf, AlignmentIsHonoured) {
  // Odd byte sizes force padding between tensors.
  std::vector<std::pair<std::string, Tensor>> tensors = {
      {"a", Tensor::from_vector({1, 2, 3}, {3})},
      {"b", Tensor::from_vector({1, 2, 3, 4, 5}, {5}).to(DType::I8)},
      {"c", test::randn({3, 7}, 4).to(DType::F16)},
      {"d", test::randn({1, 32}, 5).to(DType::Q8_0)},
  };
  for (uint32_t alignment : {8u, 32u, 64u, 4096u}) {
    SCOPED_TRACE(alignment);
    const std::string path = temp_path("align");
    io::write_gguf(path, {{"x", uint32_t(1)}}, tensors, alignment);
    auto f = io::read_gguf(path);
    EXPECT_EQ(f.alignment, alignment);
    EXPECT_EQ(f.metadata.contains("general.alignment"), alignment != 32);
    EXPECT_EQ(f.data_offset % alignment, 0u);
    EXPECT_EQ(slurp(path).size() % alignment, 0u);
    const char* base = static_cast<const char*>(f.tensors.at("a").storage()->data());
    for (const auto& [name, want] : tensors) {
      const Tensor& t = f.tensors.at(name);
      EXPECT_TRUE(t.storage()->is_mapped());
      EXPECT_EQ(size_t(static_cast<const char*>(t.raw()) - base) % alignment, 0u) << name;
      EXPECT_TRUE(test::bit_equal(t, want)) << name;
    }
    std::remove(path.c_str());
  }
  EXPECT_THROW(io::write_gguf(temp_path("align_bad"), {}, tensors, 24), Error);
  EXPECT_THROW(io::write_gguf(temp_path("align_bad"), {{"general.alignment", uint32_t(64)}}, tensors, 32), Error);
  EXPECT_THROW(io::write_gguf(temp_path("align_bad"), {{"general.alignment", uint64_t(32)}}, tensors, 32), Error);
}

TEST(Gguf, MisalignedTensorIsCopied) {
  // With general.alignment = 1 an F32 tensor can start at an odd address; it must still read back exactly.
  Bytes b;
  b.header(2, 1).str("general.alignment").u32(4).u32(1);
  b.info("pad", {3}, 24, 0).info("x", {2}, 0, 3);
  const size_t data_start = b.s.size();
  b.raw("\x01\x02\x03").f32(1.25f).f32(-3.5f);
  auto f = parse_bytes(b.s);
  EXPECT_EQ(f.data_offset, data_start);
  EXPECT_EQ(f.tensors.at("x").to_vector(), std::vector<float>({1.25f, -3.5f}));
  EXPECT_EQ(reinterpret_cast<uintptr_t>(f.tensors.at("x").raw()) % 4, 0u);
}

// The smallest interesting file, written out byte by byte from the spec: one u32 key "test.answer" = 42 and one
// F32 tensor "w" of row-major shape [2, 3] (stored as ne = {3, 2}) holding 1, 2, 3, 0.5, -1, -2.
const unsigned char kHandMade[] = {
    'G', 'G', 'U', 'F',                      // magic
    3, 0, 0, 0,                              // version 3
    1, 0, 0, 0, 0, 0, 0, 0,                  // tensor count
    1, 0, 0, 0, 0, 0, 0, 0,                  // metadata count
    11, 0, 0, 0, 0, 0, 0, 0,                 // key length
    't', 'e', 's', 't', '.', 'a', 'n', 's', 'w', 'e', 'r',
    4, 0, 0, 0,                              // value type u32
    42, 0, 0, 0,                             // value
    1, 0, 0, 0, 0, 0, 0, 0, 'w',             // tensor name
    2, 0, 0, 0,                              // n_dims
    3, 0, 0, 0, 0, 0, 0, 0,                  // ne[0]: the innermost dimension
    2, 0, 0, 0, 0, 0, 0, 0,                  // ne[1]
    0, 0, 0, 0,                              // ggml type F32
    0, 0, 0, 0, 0, 0, 0, 0,                  // offset in the data section
    0, 0, 0, 0,                              // 92 bytes so far: pad to 96
    0x00, 0x00, 0x80, 0x3f,                  // 1.0f
    0x00, 0x00, 0x00, 0x40,                  // 2.0f
    0x00, 0x00, 0x40, 0x40,                  // 3.0f
    0x00, 0x00, 0x00, 0x3f,                  // 0.5f
    0x00, 0x00, 0x80, 0xbf,                  // -1.0f
    0x00, 0x00, 0x00, 0xc0,                  // -2.0f
    0, 0, 0, 0, 0, 0, 0, 0,                  // 120 bytes: pad to 128
};

TEST(Gguf, ByteLayoutMatchesAFileAssembledFromTheSpec) {
  static_assert(sizeof(kHandMade) == 128);
  const std::string bytes(reinterpret_cast<const char*>(kHandMade), sizeof(kHandMade));
  auto f = parse_bytes(bytes);
  EXPECT_EQ(f.metadata.size(), 1u);
  EXPECT_EQ(f.metadata.get_u32("test.answer"), 42u);
  EXPECT_EQ(f.data_offset, 96u);
  ASSERT_EQ(f.tensors.size(), 1u);
  EXPECT_EQ(f.tensors.at("w").shape(), (Shape{2, 3}));
  EXPECT_EQ(f.tensors.at("w").to_vector(), (std::vector<float>{1, 2, 3, 0.5f, -1, -2}));
  EXPECT_EQ(f.tensor_infos[0].ne, (std::vector<uint64_t>{3, 2}));
  EXPECT_EQ(f.tensors.at("w").at({1, 0}), 0.5f);

  const std::string path = temp_path("layout");
  io::write_gguf(path, {{"test.answer", uint32_t(42)}},
                 {{"w", Tensor::from_vector({1, 2, 3, 0.5f, -1, -2}, {2, 3})}});
  EXPECT_EQ(slurp(path), bytes);
  std::remove(path.c_str());
}

TEST(Gguf, EveryTruncationFailsCleanly) {
  GgufMetadata md{{"general.architecture", "llama"},
                  {"tok", std::vector<std::string>{"a", "bb"}},
                  {"nest", GgufValue::Array{GgufValue(std::vector<int16_t>{1, 2})}},
                  {"flag", true},
                  {"eps", 1e-5f}};
  std::vector<std::pair<std::string, Tensor>> tensors = {{"w", test::randn({2, 32}, 9).to(DType::Q8_0)},
                                                         {"b", Tensor::from_vector({1, 2, 3}, {3})}};
  const std::string path = temp_path("trunc");
  io::write_gguf(path, md, tensors);
  const std::string full = slurp(path);
  std::remove(path.c_str());
  auto f = parse_bytes(full);
  // Every byte up to the end of the last tensor's data is needed; only the trailing padding is optional.
  uint64_t data_end = 0;
  for (const auto& info : f.tensor_infos)
    data_end = std::max<uint64_t>(data_end, f.data_offset + info.offset + f.tensors.at(info.name).nbytes());
  ASSERT_LT(data_end, full.size());
  for (size_t n = 0; n < full.size(); ++n) {
    const std::string prefix = full.substr(0, n);
    if (n < data_end) {
      EXPECT_THROW(parse_bytes(prefix), Error) << "prefix of " << n << " bytes";
    } else {
      auto g = parse_bytes(prefix);
      EXPECT_TRUE(test::bit_equal(g.tensors.at("w"), tensors[0].second));
    }
  }
}

TEST(Gguf, RejectsHostileFiles) {
  const std::string f32x2 = Bytes().f32(1).f32(2).s;
  auto one_tensor = [&](std::vector<uint64_t> ne, uint32_t type, uint64_t offset, const std::string& data) {
    Bytes b;
    b.header(1, 0).info("t", std::move(ne), type, offset).pad_to(32).raw(data);
    return b.s;
  };
  // The baseline is valid, so each case below fails for the reason it names.
  EXPECT_EQ(parse_bytes(one_tensor({2}, 0, 0, f32x2)).tensors.at("t").to_vector(), std::vector<float>({1, 2}));

  expect_error("", "truncated");
  expect_error("GGU", "truncated");
  expect_error(Bytes().raw("GGUX").u32(3).u64(0).u64(0).s, "not a GGUF file");
  expect_error(Bytes().raw("\x7f" "ELF").u32(3).u64(0).u64(0).s, "7f 45 4c 46");
  expect_error(Bytes().header(0, 0, 4).s, "unsupported GGUF version 4");
  expect_error(Bytes().header(0, 0, 1).s, "version 1");
  expect_error(Bytes().header(0, 0, 0x03000000).s, "big-endian");
  EXPECT_NO_THROW(parse_bytes(Bytes().header(0, 0, 2).s));
  expect_error(Bytes().header(2000000, 0).s, "tensor count 2000000");
  expect_error(Bytes().header(0, uint64_t(1) << 62).s, "metadata count");

  // Lying lengths and counts.
  expect_error(Bytes().header(0, 1).u64(uint64_t(1) << 60).raw("key").s, "claims 1152921504606846976 bytes");
  expect_error(Bytes().header(0, 1).str("k").u32(8).u64(uint64_t(1) << 60).raw("abc").s, "claims");
  expect_error(Bytes().header(0, 1).str("k").u32(9).u32(0).u64(uint64_t(1) << 60).raw("abc").s,
               "claims 1152921504606846976 u8 elements");
  expect_error(Bytes().header(0, 1).str("k").u32(9).u32(8).u64(1000).str("a").s, "string elements");
  expect_error(Bytes().header(0, 1).str("k").u32(9).u32(9).u64(uint64_t(1) << 40).s, "array elements");
  expect_error(Bytes().header(0, 1).str("k").u32(9).u32(4).u64(3).u32(1).u32(2).s, "claims 3 u32 elements");
  {
    Bytes deep;
    deep.header(0, 1).str("k").u32(9);
    for (int i = 0; i < 100; ++i) deep.u32(9).u64(1);
    deep.u32(0).u64(0);
    expect_error(deep.s, "deeper");
  }

  // Malformed metadata.
  expect_error(Bytes().header(0, 1).str("k").u32(13).u32(0).s, "unknown value type 13");
  expect_error(Bytes().header(0, 1).str("k").u32(9).u32(77).u64(0).s, "unknown array element type 77");
  expect_error(Bytes().header(0, 1).str("k").u32(7).u8(2).s, "bool with byte value 2");
  expect_error(Bytes().header(0, 2).str("k").u32(4).u32(1).str("k").u32(4).u32(2).s, "duplicate metadata key 'k'");
  expect_error(Bytes().header(0, 1).str("").u32(4).u32(1).s, "length 0");
  expect_error(Bytes().header(0, 1).str("general.alignment").u32(4).u32(24).s, "not a power of two");
  expect_error(Bytes().header(0, 1).str("general.alignment").u32(10).u64(32).s, "expected u32");

  // Malformed tensor infos and data.
  expect_error(one_tensor({2}, 0, 32, f32x2), "outside the data section");
  expect_error(one_tensor({2}, 0, uint64_t(1) << 63, f32x2), "outside the data section");
  expect_error(one_tensor({3}, 0, 0, f32x2), "outside the data section");
  expect_error(one_tensor({2}, 0, 4, f32x2 + f32x2), "not a multiple of the alignment");
  expect_error(one_tensor({2}, 13, 0, f32x2), "ggml type 13 (Q5_K)");
  expect_error(one_tensor({2}, 99, 0, f32x2), "ggml type 99 (#99)");
  expect_error(one_tensor({16}, 8, 0, std::string(34, '\0')), "not a multiple of the 32-element block");
  expect_error(one_tensor({uint64_t(1) << 40, uint64_t(1) << 40}, 0, 0, f32x2), "absurdly large");
  expect_error(one_tensor({0, uint64_t(1) << 40, uint64_t(1) << 40}, 0, 0, f32x2), "absurdly large");
  expect_error(one_tensor(std::vector<uint64_t>(9, 1), 0, 0, f32x2), "rank 9");
  expect_error(Bytes().header(1, 0).info("t", {2}, 0, 0).s, "past the end");
  {
    Bytes b;
    b.header(2, 0).info("t", {2}, 0, 0).info("t", {2}, 0, 32).pad_to(32).raw(std::string(64, '\0'));
    expect_error(b.s, "duplicate tensor name 't'");
  }
  {
    Bytes b;
    b.header(2, 0).info("a", {16}, 0, 0).info("b", {2}, 0, 32).pad_to(32).raw(std::string(64, '\0'));
    expect_error(b.s, "overlap");
  }
  {
    Bytes b;
    b.header(1, 0).info("", {2}, 0, 0).pad_to(32).raw(f32x2);
    expect_error(b.s, "empty name");
  }
  // Empty tensors take no bytes, so two may share an offset.
  {
    Bytes b;
    b.header(2, 0).info("a", {0, 4}, 0, 0).info("b", {2}, 0, 0).pad_to(32).raw(f32x2);
    auto f = parse_bytes(b.s);
    EXPECT_EQ(f.tensors.at("a").shape(), (Shape{4, 0}));
  }
}

TEST(Gguf, WriterRejectsBadInputAndReportsWriteFailures) {
  const std::string path = temp_path("writer");
  Tensor t = Tensor::from_vector({1, 2}, {2});
  EXPECT_THROW(io::write_gguf(path, {}, {{"a", t}, {"a", t}}), Error);
  EXPECT_THROW(io::write_gguf(path, {}, {{"", t}}), Error);
  EXPECT_THROW(io::write_gguf(path, {}, {{"u8", t.to(DType::U8)}}), Error);
  EXPECT_THROW(io::write_gguf(path, {}, {{"undef", Tensor()}}), Error);
  EXPECT_THROW(io::write_gguf(path, {{"", uint8_t(1)}}, {}), Error);
  EXPECT_THROW(GgufMetadata({{"k", uint8_t(1)}, {"k", uint8_t(2)}}), Error);
  EXPECT_THROW(io::write_gguf("/nonexistent-dir/x.gguf", {}, {{"a", t}}), Error);
  EXPECT_FALSE(std::ifstream(path).good());  // nothing written for rejected input
  // A full disk: a file-size limit makes every write past 64 KiB fail (with SIGXFSZ ignored, as EFBIG).
  const std::string full = temp_path("full");
  struct rlimit saved {};
  ASSERT_EQ(getrlimit(RLIMIT_FSIZE, &saved), 0);
  struct rlimit small = saved;
  small.rlim_cur = 64 * 1024;
  const auto previous = std::signal(SIGXFSZ, SIG_IGN);
  ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &small), 0);
  const std::string message = test::error_of([&] { io::write_gguf(full, {}, {{"a", test::randn({64, 1024}, 1)}}); });
  setrlimit(RLIMIT_FSIZE, &saved);
  std::signal(SIGXFSZ, previous);
  std::string expected = "failed writing '";
  expected += full;
  EXPECT_NE(message.find(expected), std::string::npos) << message;
  EXPECT_FALSE(std::ifstream(full).good());
  // Nor is its temporary file (".name.XXXXXX" beside it) left behind.
  const std::filesystem::path target(full);
  std::string temp_prefix(1, '.');
  temp_prefix += target.filename().string();
  temp_prefix += '.';
  for (const auto& entry : std::filesystem::directory_iterator(target.parent_path()))
    EXPECT_NE(entry.path().filename().string().rfind(temp_prefix, 0), 0u) << entry.path();
}

}  // namespace
}  // namespace dl

namespace dl {
namespace {

// A file assembled byte by byte by tools/fixtures/make_gguf_fixture.py (independent of our writer).
TEST(GgufIndependentFixture, ReadsHandAssembledFile) {
  io::GgufFile f = io::read_gguf(std::string(DL_FIXTURE_DIR) + "/small.gguf");
  EXPECT_EQ(f.metadata.get_string("general.architecture"), "dreamllm");
  EXPECT_EQ(f.metadata.get_u64("test.count"), 7u);
  EXPECT_EQ(f.metadata.get_f32("test.scale"), 0.5f);
  EXPECT_EQ(f.metadata.get_string_array("test.names"), std::vector<std::string>({"a", "bc"}));
  const Tensor& w = f.tensors.at("w");
  EXPECT_EQ(w.shape(), Shape({2, 3}));
  EXPECT_EQ(w.to_vector(), std::vector<float>({0, 1, 2, 3, 4, 5}));
  const Tensor& b = f.tensors.at("b");
  EXPECT_EQ(b.dtype(), DType::F16);
  EXPECT_EQ(b.to_vector(), std::vector<float>({1, -2, 0.5, 3}));
}

}  // namespace
}  // namespace dl
