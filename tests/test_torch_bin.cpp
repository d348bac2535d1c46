// PyTorch .bin checkpoints written by torch.save (tools/fixtures/make_torch_bin_fixtures.py) load with identical
// values; hostile archives are refused with clear errors.
#include <cstdio>
#include <fstream>

#include "core/error.h"
#include "io/torch_bin.h"
#include "io/zip.h"
#include "test_util.h"

namespace dl {
namespace {

const std::string kDir = std::string(DL_FIXTURE_DIR) + "/torch_bin/";

const io::SafetensorsFile& expected() {
  static const io::SafetensorsFile f = io::read_safetensors(kDir + "expected.safetensors");
  return f;
}

void expect_matches_reference(const std::string& file) {
  io::StateDict sd = io::read_torch_bin(kDir + file);
  size_t checked = 0;
  for (const auto& [key, want] : expected().tensors) {
    if (key.rfind(file + "/", 0) != 0) continue;
    const std::string name = key.substr(file.size() + 1);
    SCOPED_TRACE(file + ": " + name);
    ASSERT_TRUE(sd.count(name)) << "missing";
    const Tensor& got = sd.at(name);
    EXPECT_EQ(got.dtype(), want.dtype());
    EXPECT_TRUE(test::bit_equal(got, want));
    ++checked;
  }
  EXPECT_EQ(checked, sd.size());
  EXPECT_GT(checked, 0u);
}

std::string error_of(const std::string& file) {
  try {
    io::read_torch_bin(file);
  } catch (const Error& e) {
    return e.what();
  }
  return "no error";
}

TEST(TorchBin, EveryDtypeLoadsIdentically) { expect_matches_reference("dtypes.bin"); }

TEST(TorchBin, SharedAndStridedStorages) {
  expect_matches_reference("shared.bin");
  io::StateDict sd = io::read_torch_bin(kDir + "shared.bin");
  // Views of one storage share it, zero-copy from the mapping, and keep their strides.
  EXPECT_EQ(sd.at("base").storage(), sd.at("transposed").storage());
  EXPECT_EQ(sd.at("base").storage(), sd.at("cols_step").storage());
  EXPECT_FALSE(sd.at("transposed").is_contiguous());
  EXPECT_TRUE(sd.at("base").storage()->is_mapped());
  EXPECT_FALSE(sd.at("base").storage()->is_writable());
  EXPECT_EQ(sd.at("cols_step").strides(), Shape({8, 3}));
}

TEST(TorchBin, ModuleStateDictAndParameters) {
  expect_matches_reference("module.bin");
  expect_matches_reference("params.bin");
  io::StateDict sd = io::read_torch_bin(kDir + "module.bin");
  EXPECT_EQ(sd.at("2.num_batches_tracked").dtype(), DType::I64);
  EXPECT_EQ(sd.at("0.weight").shape(), Shape({3, 4}));
}

TEST(TorchBin, DeflatedZip64Archive) { expect_matches_reference("deflated_zip64.bin"); }

TEST(TorchBin, RefusesForeignGlobals) {
  const std::string m = error_of(kDir + "evil_os_system.bin");
  EXPECT_NE(m.find("refusing to load global 'posix.system'"), std::string::npos) << m;
}

TEST(TorchBin, RefusesShortStorages) {
  const std::string m = error_of(kDir + "short_storage.bin");
  EXPECT_NE(m.find("fewer than"), std::string::npos) << m;
}

TEST(TorchBin, EveryTruncationIsAnError) {
  std::ifstream in(kDir + "shared.bin", std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const std::string path = "/tmp/dl_trunc_" + std::to_string(getpid()) + ".bin";
  for (size_t n = 0; n < bytes.size(); n += 7) {
    {
      std::ofstream out(path, std::ios::binary | std::ios::trunc);
      out.write(bytes.data(), std::streamsize(n));
    }
    EXPECT_THROW(io::read_torch_bin(path), Error) << "prefix of " << n << " bytes";
  }
  std::remove(path.c_str());
}

TEST(TorchBin, CorruptedBytesNeverCrash) {
  // Flip bytes all over a valid archive: every outcome is a clean load or a dl::Error.
  std::ifstream in(kDir + "dtypes.bin", std::ios::binary);
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const std::string path = "/tmp/dl_flip_" + std::to_string(getpid()) + ".bin";
  for (size_t i = 0; i < bytes.size(); i += 13) {
    std::string b = bytes;
    b[i] = char(b[i] ^ 0x5a);
    {
      std::ofstream out(path, std::ios::binary | std::ios::trunc);
      out << b;
    }
    try {
      io::read_torch_bin(path);
    } catch (const Error&) {
    }
  }
  std::remove(path.c_str());
}

TEST(TorchBin, MemoIndicesAreBoundedByThePickle) {
  // PROTO 2, NONE, then LONG_BINPUT with an index far beyond anything the pickle could hold.
  const unsigned char pkl[] = {0x80, 2, 'N', 'r', 0xff, 0xff, 0x0f, 0x00, '.'};
  const std::string m = test::error_of([&] { io::unpickle_state_dict(pkl, sizeof pkl, nullptr, "archive", "memo"); });
  EXPECT_NE(m.find("memo index"), std::string::npos) << m;
}

TEST(TorchBin, DeflatedEntryCannotClaimMoreThanItsBytesHold) {
  // A one-entry zip whose deflated entry claims 4 GiB from zero compressed bytes.
  auto le = [](std::string& s, uint64_t v, int n) {
    for (int i = 0; i < n; ++i) s.push_back(char((v >> (8 * i)) & 0xff));
  };
  const std::string name = "archive/data.pkl";
  std::string z;
  le(z, 0x04034b50, 4), le(z, 20, 2), le(z, 0, 2), le(z, 8, 2), le(z, 0, 4), le(z, 0, 4), le(z, 0, 4);
  le(z, 0xffffffffu, 4), le(z, name.size(), 2), le(z, 0, 2);
  z += name;
  const size_t cd = z.size();
  le(z, 0x02014b50, 4), le(z, 20, 2), le(z, 20, 2), le(z, 0, 2), le(z, 8, 2), le(z, 0, 4), le(z, 0, 4);
  le(z, 0, 4), le(z, 0xfffffffeu, 4), le(z, name.size(), 2), le(z, 0, 2), le(z, 0, 2), le(z, 0, 2), le(z, 0, 2);
  le(z, 0, 4), le(z, 0, 4);
  z += name;
  const size_t cd_size = z.size() - cd;
  le(z, 0x06054b50, 4), le(z, 0, 2), le(z, 0, 2), le(z, 1, 2), le(z, 1, 2), le(z, cd_size, 4), le(z, cd, 4), le(z, 0, 2);
  auto st = Storage::allocate(z.size());
  std::memcpy(st->data(), z.data(), z.size());
  io::ZipArchive zip(st, "zip bomb");
  const std::string m = test::error_of([&] { zip.read(name); });
  EXPECT_NE(m.find("impossible ratio"), std::string::npos) << m;
}

TEST(TorchBin, NotAZip) {
  const std::string m = error_of(kDir + "expected.safetensors");
  EXPECT_NE(m.find("not a torch.save zip archive"), std::string::npos) << m;
  EXPECT_NE(error_of("/nonexistent.bin").find("cannot open"), std::string::npos);
}

}  // namespace
}  // namespace dl
