// Image files decode to what PIL's Image.open(...).convert("RGB") gives (tools/fixtures/make_image_file_fixtures.py).
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

}  // namespace
}  // namespace dl
