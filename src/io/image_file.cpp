#include "io/image_file.h"

#include <stb/stb_image.h>
#include <stb/stb_image_write.h>

#include <atomic>
#include <cstring>
#include <optional>
#include <utility>

#include "core/error.h"
#include "core/storage.h"
#include "io/atomic_file.h"

namespace dl::io {

namespace {

constexpr int kMaxSide = 1 << 15;  // matches Image's own bound

std::atomic<int64_t> g_max_image_pixels{kDefaultMaxImagePixels};

// Width and height from a PNG's IHDR chunk, which must come first; nullopt when `data` does not start like a PNG.
// stb_image's info call refuses a PNG too large for its decoder, and then, having tried every other format, says
// only "unknown image type": this recovers the size to report.
std::optional<std::pair<uint32_t, uint32_t>> png_header_size(const unsigned char* data, size_t size) {
  static constexpr unsigned char kSignature[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};
  if (size < 29 || std::memcmp(data, kSignature, 8) != 0 || std::memcmp(data + 12, "IHDR", 4) != 0)
    return std::nullopt;
  auto be32 = [&](size_t at) {
    return uint32_t(data[at]) << 24 | uint32_t(data[at + 1]) << 16 | uint32_t(data[at + 2]) << 8 |
           uint32_t(data[at + 3]);
  };
  return std::pair{be32(16), be32(20)};
}

void check_pixels(uint64_t w, uint64_t h, const std::string& what) {
  const uint64_t limit = uint64_t(max_image_pixels());
  DL_CHECK(w * h <= limit, what, ": image too large: ", w, "x", h, " = ", w * h, " pixels, over the limit of ", limit,
           " pixels (--max-image-pixels)");
}

}  // namespace

void set_max_image_pixels(int64_t pixels) {
  DL_CHECK(pixels > 0, "the image pixel limit must be positive, not ", pixels);
  g_max_image_pixels.store(pixels, std::memory_order_relaxed);
}

int64_t max_image_pixels() { return g_max_image_pixels.load(std::memory_order_relaxed); }

Image decode_image(const unsigned char* data, size_t size, const std::string& what) {
  DL_CHECK(size > 0, what, ": empty file is not an image");
  DL_CHECK(size < (size_t(1) << 31), what, ": file is too large to be an image");
  int w = 0, h = 0, channels = 0;
  // Read the header first so that a lying size never becomes a giant allocation.
  if (!stbi_info_from_memory(data, int(size), &w, &h, &channels)) {
    if (const auto png = png_header_size(data, size); png && png->first > 0 && png->second > 0) {
      const auto [pw, ph] = *png;
      check_pixels(pw, ph, what);
      // stb_image's own bounds (stbi__parse_png_file): 2^24 per side, and 2^30 bytes of decoded pixels at the
      // colour type's channel count (4 for palettes, which it expands).
      const uint32_t colour = data[25], png_channels = colour == 0 ? 1 : colour == 2 ? 3 : colour == 4 ? 2 : 4;
      DL_CHECK(pw <= (1u << 24) && ph <= (1u << 24) && (1u << 30) / pw / png_channels >= ph, what,
               ": image too large: ", pw, "x", ph, " pixels by its PNG header, more than the decoder takes");
    }
    fail(what, ": not a readable image (", stbi_failure_reason(), ")");
  }
  DL_CHECK(w > 0 && h > 0, what, ": image size ", w, "x", h, " is empty");
  check_pixels(uint64_t(w), uint64_t(h), what);
  DL_CHECK(w <= kMaxSide && h <= kMaxSide, what, ": image size ", w, "x", h, " is outside 1..", kMaxSide,
           " pixels per side");
  unsigned char* pixels = stbi_load_from_memory(data, int(size), &w, &h, &channels, 3);
  DL_CHECK(pixels, what, ": cannot decode image (", stbi_failure_reason(), ")");
  Image img;
  img.width = w;
  img.height = h;
  img.rgb.assign(pixels, pixels + size_t(w) * size_t(h) * 3);
  stbi_image_free(pixels);
  return img;
}

Image read_image(const std::string& path) {
  auto file = Storage::map_file(path);
  return decode_image(static_cast<const unsigned char*>(file->data()), file->size(), "'" + path + "'");
}

void write_png(const std::string& path, const Image& image) {
  DL_CHECK(image.width > 0 && image.height > 0 && image.rgb.size() == size_t(image.width * image.height * 3),
           "write_png: invalid ", image.width, "x", image.height, " image");
  write_file_atomically(path, [&](std::ostream& out) {
    auto sink = [](void* ctx, void* bytes, int n) { static_cast<std::ostream*>(ctx)->write(static_cast<char*>(bytes), n); };
    DL_CHECK(stbi_write_png_to_func(sink, &out, int(image.width), int(image.height), 3, image.rgb.data(),
                                    int(image.width * 3)),
             "cannot encode '", path, "' as PNG");
  });
}

std::string encode_png(const Image& image) {
  DL_CHECK(image.width > 0 && image.height > 0 && image.rgb.size() == size_t(image.width * image.height * 3),
           "encode_png: invalid ", image.width, "x", image.height, " image");
  std::string bytes;
  auto sink = [](void* ctx, void* data, int n) { static_cast<std::string*>(ctx)->append(static_cast<char*>(data), n); };
  DL_CHECK(stbi_write_png_to_func(sink, &bytes, int(image.width), int(image.height), 3, image.rgb.data(),
                                  int(image.width * 3)),
           "cannot encode a ", image.width, "x", image.height, " image as PNG");
  return bytes;
}

}  // namespace dl::io
