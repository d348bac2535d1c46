// safetensors reader/writer: round trips and hostile headers.
#include <cstdio>
#include <fstream>

#include "core/error.h"
#include "io/safetensors.h"
#include "test_util.h"

namespace dl {
namespace {

std::string temp_path(const char* name) { return std::string("/tmp/dl_test_") + name + "_" + std::to_string(getpid()); }

void write_raw(const std::string& path, const std::string& header, const std::string& data) {
  std::ofstream f(path, std::ios::binary);
  uint64_t n = header.size();
  f.write(reinterpret_cast<const char*>(&n), 8);
  f << header << data;
}

TEST(Safetensors, RoundTripAllDtypes) {
  std::map<std::string, Tensor> t;
  Tensor base = test::randn({3, 5}, 1);
  t["f32"] = base;
  t["f16"] = base.to(DType::F16);
  t["bf16"] = base.to(DType::BF16);
  t["i64"] = Tensor::from_vector_i64({1, -2, 3}, {3});
  t["i32"] = Tensor::from_vector_i32({7}, {1});
  t["strided"] = base.transpose(0, 1);
  t["empty"] = Tensor::empty({0, 4});
  const std::string path = temp_path("rt");
  io::write_safetensors(path, t, {{"format", "pt"}});
  auto f = io::read_safetensors(path);
  EXPECT_EQ(f.metadata.at("format"), "pt");
  ASSERT_EQ(f.tensors.size(), t.size());
  for (const auto& [name, want] : t) {
    SCOPED_TRACE(name);
    EXPECT_TRUE(test::bit_equal(f.tensors.at(name), want.contiguous()));
  }
  EXPECT_TRUE(f.tensors.at("f32").storage()->is_mapped());
  std::remove(path.c_str());
}

TEST(Safetensors, MisalignedTensorsAreReadCorrectly) {
  // The format promises no alignment: an F32 tensor at data offset 2 must still read back exactly.
  const std::string path = temp_path("misaligned");
  float v[2] = {1.25f, -3.5f};
  std::string data(2, 'x');
  data.append(reinterpret_cast<const char*>(v), 8);
  write_raw(path, R"({"pad":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},"a":{"dtype":"F32","shape":[2],"data_offsets":[2,10]}})",
            data);
  auto f = io::read_safetensors(path);
  EXPECT_EQ(f.tensors.at("a").to_vector(), std::vector<float>({1.25f, -3.5f}));
  std::remove(path.c_str());
}

TEST(Safetensors, RejectsHostileFiles) {
  const std::string path = temp_path("bad");
  auto expect_error = [&](const std::string& header, const std::string& data, const char* fragment) {
    write_raw(path, header, data);
    try {
      io::read_safetensors(path);
      ADD_FAILURE() << "accepted: " << header;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos) << e.what();
    }
  };
  expect_error(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,16]}})", std::string(8, '\0'), "outside");
  expect_error(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", std::string(8, '\0'), "needs");
  expect_error(R"({"a":{"dtype":"F8_E4M3","shape":[1],"data_offsets":[0,1]}})", std::string(1, '\0'), "F8_E4M3");
  expect_error(R"({"a":{"dtype":"F32","shape":[1099511627776,1099511627776],"data_offsets":[0,4]}})",
               std::string(4, '\0'), "absurd");
  expect_error(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[2,6]}})",
               std::string(8, '\0'), "overlap");
  expect_error(R"({"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", std::string(4, '\0'), "negative");
  expect_error(R"({"a": nope})", "", "JSON");
  expect_error(R"({"a":{"dtype":"F32"}})", "", "lacks");
  {
    std::ofstream f(path, std::ios::binary);
    uint64_t n = 1ull << 40;
    f.write(reinterpret_cast<const char*>(&n), 8);
  }
  EXPECT_THROW(io::read_safetensors(path), Error);
  {
    std::ofstream f(path, std::ios::binary);
    f << "abc";
  }
  EXPECT_THROW(io::read_safetensors(path), Error);
  std::remove(path.c_str());
}

}  // namespace
}  // namespace dl
