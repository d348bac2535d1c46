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

// The bytes of a PNG whose header claims w x h RGB pixels, followed by a few bytes of image data (the size check
// must come before any decoding, so the rest does not matter).
std::vector<unsigned char> png_claiming(uint32_t w, uint32_t h) {
  std::vector<unsigned char> b = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n', 0, 0, 0, 13, 'I', 'H', 'D', 'R'};
  for (uint32_t v : {w, h})
    for (int shift = 24; shift >= 0; shift -= 8) b.push_back((unsigned char)(v >> shift));
  b.insert(b.end(), {8, 2, 0, 0, 0});  // 8 bits, RGB, deflate, no filter, no interlace
  uint32_t crc = 0xFFFFFFFFu;  // CRC-32 of the chunk type and data
  for (size_t i = 12; i < b.size(); ++i) {
    crc ^= b[i];
    for (int k = 0; k < 8; ++k) crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1u)));
  }
  crc = ~crc;
  for (int shift = 24; shift >= 0; shift -= 8) b.push_back((unsigned char)(crc >> shift));
  b.insert(b.end(), {0, 0, 0, 4, 'I', 'D', 'A', 'T', 0x78, 0x9C, 0x03, 0x00});
  return b;
}

struct PixelLimit {
  explicit PixelLimit(int64_t n) { io::set_max_image_pixels(n); }
  ~PixelLimit() { io::set_max_image_pixels(io::kDefaultMaxImagePixels); }
};

TEST(ImageFile, PicturesOverThePixelLimitAreRefusedFromTheirHeader) {
  EXPECT_EQ(io::max_image_pixels(), 89478485);  // Pillow's Image.MAX_IMAGE_PIXELS
  const auto bomb = png_claiming(18000, 18000);
  EXPECT_EQ(test::error_of([&] { io::decode_image(bomb.data(), bomb.size(), "'bomb.png'"); }),
            "'bomb.png': image too large: 18000x18000 = 324000000 pixels, over the limit of 89478485 pixels "
            "(--max-image-pixels)");
  {
    // At the limit the size passes (and decoding then fails on the missing pixel data); one row more does not.
    PixelLimit limit(1000 * 1000);
    const auto at = png_claiming(1000, 1000), over = png_claiming(1000, 1001);
    const std::string at_error = test::error_of([&] { io::decode_image(at.data(), at.size(), "'at.png'"); });
    EXPECT_EQ(at_error.rfind("'at.png': cannot decode", 0), 0u) << at_error;
    EXPECT_EQ(test::error_of([&] { io::decode_image(over.data(), over.size(), "'over.png'"); }),
              "'over.png': image too large: 1000x1001 = 1001000 pixels, over the limit of 1000000 pixels "
              "(--max-image-pixels)");
  }
  {
    // Past stb_image's own bounds the size is still named, not "unknown image type".
    PixelLimit unlimited(int64_t(1) << 40);
    const auto huge = png_claiming(40000, 40000);
    EXPECT_EQ(test::error_of([&] { io::decode_image(huge.data(), huge.size(), "'huge.png'"); }),
              "'huge.png': image too large: 40000x40000 pixels by its PNG header, more than the decoder takes");
  }
  {
    PixelLimit small(53 * 37 - 1);  // rgb.png is 53 x 37
    EXPECT_EQ(test::error_of([] { io::read_image(kDir + "rgb.png"); }),
              "'" + kDir + "rgb.png': image too large: 53x37 = 1961 pixels, over the limit of 1960 pixels "
              "(--max-image-pixels)");
  }
  EXPECT_EQ(io::read_image(kDir + "rgb.png").width, 53);
  EXPECT_NE(test::error_of([] { io::set_max_image_pixels(0); }).find("must be positive"), std::string::npos);
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
