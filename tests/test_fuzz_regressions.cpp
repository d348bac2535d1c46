// Every input a fuzzer once broke the parsers with (tests/fixtures/fuzz_regressions/<target>/) is replayed: it must
// load or raise dl::Error. Run under the sanitizer build this also catches leaks and undefined behaviour.
#include <filesystem>
#include <fstream>

#include "core/error.h"
#include "io/config.h"
#include "io/safetensors.h"
#include "io/torch_bin.h"
#include "io/zip.h"
#include "test_util.h"

namespace dl {
namespace {

namespace fs = std::filesystem;

std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

std::shared_ptr<Storage> storage_of(const std::string& bytes) {
  auto s = Storage::allocate(bytes.size());
  if (!bytes.empty()) std::memcpy(s->data(), bytes.data(), bytes.size());
  return s;
}

template <typename Fn>
int replay(const std::string& target, Fn&& fn) {
  const fs::path dir = fs::path(DL_FIXTURE_DIR) / "fuzz_regressions" / target;
  int n = 0;
  if (!fs::exists(dir)) return n;
  for (const auto& entry : fs::directory_iterator(dir)) {
    SCOPED_TRACE(entry.path().string());
    const std::string bytes = slurp(entry.path());
    try {
      fn(bytes);
    } catch (const Error&) {
    }
    ++n;
  }
  return n;
}

TEST(FuzzRegressions, TorchBin) {
  EXPECT_GT(replay("torch_bin",
                   [](const std::string& b) {
                     io::ZipArchive zip(storage_of(b), "regression");
                     for (const auto& [name, t] : io::read_torch_bin(zip)) (void)t.to_vector();
                   }),
            0);
}

TEST(FuzzRegressions, Pickle) {
  EXPECT_GT(replay("pickle",
                   [](const std::string& b) {
                     io::unpickle_state_dict(reinterpret_cast<const unsigned char*>(b.data()), b.size(), nullptr,
                                             "archive", "regression");
                   }),
            0);
}

TEST(FuzzRegressions, SafetensorsAndConfigs) {
  replay("safetensors", [](const std::string& b) {
    for (const auto& [name, t] : io::parse_safetensors(storage_of(b), "regression").tensors) (void)t.to_vector();
  });
  replay("config", [](const std::string& b) { io::parse_unet_config(b, "regression"); });
}

}  // namespace
}  // namespace dl
