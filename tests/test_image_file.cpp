// Image files decode to what PIL's Image.open(...).convert("RGB") gives (tools/fixtures/make_image_file_fixtures.py).
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>

#include "core/error.h"
#include "io/image_file.h"
#include "io/safetensors.h"
#include "test_util.h"

namespace dl {
namespace {

const std::string kDir = std::string(DL_FIXTURE_DIR) + "/images/files/";

TEST(ImageFile, DecodesLikePilConvertRgb) {
  auto expected = io::read_safetensors(kDir + "expected.safetensors");
  for (const auto& [name, want] : expected.tensors) {
    SCOPED_TRACE(name);
    io::Image img = io::read_image(kDir + name);
    ASSERT_EQ(img.height, want.size(0));
    ASSERT_EQ(img.width, want.size(1));
    const auto* w = static_cast<const uint8_t*>(want.raw());
    int worst = 0;
    for (size_t i = 0; i < img.rgb.size(); ++i) worst = std::max(worst, std::abs(int(img.rgb[i]) - int(w[i])));
    // Lossless formats are exact; JPEG decoders (stb here, libjpeg in PIL) may differ by a few levels.
    EXPECT_LE(worst, name.ends_with(".jpg") ? 3 : 0);
  }
}

TEST(ImageFile, PngRoundTrip) {
  io::Image img = io::read_image(kDir + "rgb.png");
  const std::string path = (std::filesystem::temp_directory_path() / ("dl_png_" + std::to_string(getpid()) + ".png")).string();
  io::write_png(path, img);
  io::Image back = io::read_image(path);
  EXPECT_EQ(back.rgb, img.rgb);
  std::filesystem::remove(path);
}

TEST(ImageFile, UnreadableFilesAreNamedErrors) {
  for (const char* bad : {"truncated.png", "not_an_image.png", "expected.safetensors"}) {
    const std::string m = test::error_of([&] { io::read_image(kDir + bad); });
    EXPECT_NE(m.find(bad), std::string::npos) << m;
  }
  EXPECT_NE(test::error_of([] { io::read_image("/nonexistent.png"); }).find("cannot open"), std::string::npos);
}

// A picture path that is a FIFO is refused at once instead of waiting for a writer.
TEST(ImageFile, AFifoIsRefusedNotWaitedOn) {
  const std::string fifo = (std::filesystem::temp_directory_path() / ("dl_fifo_" + std::to_string(getpid()))).string();
  ASSERT_EQ(mkfifo(fifo.c_str(), 0644), 0);
  // Held open for writing here, so that a regression (a blocking open) fails this test instead of hanging it.
  const int writer = open(fifo.c_str(), O_RDWR | O_NONBLOCK);
  ASSERT_GE(writer, 0);
  EXPECT_EQ(test::error_of([&] { io::read_image(fifo); }), "'" + fifo + "' is a FIFO, not a regular file");
  close(writer);
  std::filesystem::remove(fifo);
  EXPECT_EQ(test::error_of([] { io::read_image(kDir); }), "'" + kDir + "' is a directory, not a regular file");
}

}  // namespace
}  // namespace dl
