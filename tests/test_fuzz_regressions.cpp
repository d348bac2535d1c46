// Every input a fuzzer once broke the parsers with (tests/fixtures/fuzz_regressions/<target>/) is replayed: it must
// load or raise dl::Error. Run under the sanitizer build this also catches leaks and undefined behaviour.
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "../fuzz/fuzz_targets.h"
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

// The newer targets' inputs go through the very function the fuzzer calls (fuzz/fuzz_targets.h). A target gets its
// test here with its first finding (fuzz_tokenizer, fuzz_model_dir and fuzz_data_spec: none yet).
const uint8_t* bytes_of(const std::string& b) { return reinterpret_cast<const uint8_t*>(b.data()); }

TEST(FuzzRegressions, Image) {
  EXPECT_GT(replay("image", [](const std::string& b) { fuzz::image_input(bytes_of(b), b.size()); }), 0);
}

// The image inputs that reached stb_image 2.27's defects (a hang, a null dereference, reads past a buffer, a table
// overrun) are refused before decoding, each with an error naming the problem; before, the HDR file hung, the PIC
// file crashed, the 16-bit PGM decoded bytes from past its buffer and the JPEGs corrupted the decoder's tables.
TEST(FuzzRegressions, ImageDefectsRefusedByName) {
  const fs::path dir = fs::path(DL_FIXTURE_DIR) / "fuzz_regressions" / "image";
  const std::pair<const char*, const char*> cases[] = {
      {"hdr_truncated_rle_scanline.hdr", "Radiance HDR images are not supported"},
      {"pic_corrupt_packet.pic", "Softimage PIC images are not supported"},
      {"pgm_16bit.pgm", "PNM images with more than 8 bits per sample (maximum value 65535) are not supported"},
      {"jpeg_dht_over_256_codes.jpg", "corrupt JPEG: a Huffman table lists"},
      {"jpeg_dht_after_fill_bytes.jpg", "corrupt JPEG: a Huffman table lists"}};
  for (const auto& [name, message] : cases) {
    SCOPED_TRACE(name);
    const std::string b = slurp(dir / name);
    ASSERT_FALSE(b.empty());
    const std::string err = test::error_of([&] { io::decode_image(bytes_of(b), b.size(), "'x'"); });
    EXPECT_NE(err.find(std::string("'x': ") + message), std::string::npos) << err;
  }
}

TEST(FuzzRegressions, Checkpoint) {
  const fs::path dir = fs::temp_directory_path() / ("dl_fuzz_regressions_" + std::to_string(getpid()));
  fs::create_directories(dir);
  EXPECT_GT(replay("checkpoint",
                   [&](const std::string& b) { fuzz::checkpoint_input(bytes_of(b), b.size(), dir.string()); }),
            0);
  fs::remove_all(dir);
}

// Resume reads metrics.skipped_samples back as an integer: any other value was a JSON type error that `dreamllm
// train --resume` reported as an internal error (exit 3).
TEST(FuzzRegressions, CheckpointStateSkippedSamplesIsACount) {
  const std::string b =
      slurp(fs::path(DL_FIXTURE_DIR) / "fuzz_regressions" / "checkpoint" / "skipped_samples_not_a_count.json");
  EXPECT_EQ(test::error_of([&] { train::parse_checkpoint_state(b, "'state'"); }),
            "'state': metrics.skipped_samples is not a count");
  EXPECT_EQ(train::parse_checkpoint_state(R"({"step": 1, "samples_drawn": 2, "metrics": {"skipped_samples": 3}})", "s")
                .metrics["skipped_samples"],
            3);
}

}  // namespace
}  // namespace dl
