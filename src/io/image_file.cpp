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

namespace {

// Debian's stb_image (2.27) mishandles some malformed files in ways no check of its results can catch: memory
// corruption, reads past its buffers, a null dereference (found by fuzz/fuzz_image.cpp), an endless loop
// (CVE-2021-42715); the inputs are in tests/fixtures/fuzz_regressions/image/. The files that reach those paths are
// refused here first.
void refuse_stb_defects(const unsigned char* d, size_t n, const std::string& what) {
  auto starts = [&](const char* magic, size_t len) { return n >= len && std::memcmp(d, magic, len) == 0; };
  // Radiance HDR and Softimage PIC, which PIL does not read either (so no DreamLLM data set holds them): a cut-short
  // HDR run-length scanline decodes as endless empty runs, and a corrupt PIC packet makes the loader convert a null
  // buffer. The signatures are the ones stb_image tests for.
  DL_CHECK(!starts("#?RADIANCE\n", 11) && !starts("#?RGBE\n", 7), what, ": Radiance HDR images are not supported");
  DL_CHECK(!(starts("\x53\x80\xF6\x34", 4) && n >= 92 && std::memcmp(d + 88, "PICT", 4) == 0), what,
           ": Softimage PIC images are not supported");
  // Binary PGM / PPM with a maximum value over 255: stb_image reads the 16-bit samples into a buffer sized for 8-bit
  // ones and converts past its end. The header is read with stb_image's own grammar (whitespace and # comments;
  // bytes past the end read as 0); a number too long for an int is refused as well (stb_image would overflow it).
  if (n >= 2 && d[0] == 'P' && (d[1] == '5' || d[1] == '6')) {
    size_t i = 2;
    auto get = [&]() -> unsigned char { return i < n ? d[i++] : 0; };
    auto space = [](unsigned char c) { return c == ' ' || (c >= '\t' && c <= '\r'); };
    unsigned char c = get();
    auto skip_space = [&] {
      for (;;) {
        while (i < n && space(c)) c = get();
        if (i >= n || c != '#') break;
        while (i < n && c != '\n' && c != '\r') c = get();
      }
    };
    auto number = [&] {
      int64_t v = 0;
      while (i < n && c >= '0' && c <= '9') {
        v = v * 10 + (c - '0');
        DL_CHECK(v <= INT32_MAX, what, ": PNM header number is too large");
        c = get();
      }
      return v;
    };
    skip_space();
    number();  // width
    skip_space();
    number();  // height
    skip_space();
    const int64_t maxval = number();
    DL_CHECK(maxval <= 255, what, ": PNM images with more than 8 bits per sample (maximum value ", maxval,
             ") are not supported");
  }
  // JPEG: a Huffman table (DHT) listing more than 256 codes overruns the decoder's tables. Every segment stb_image
  // could take for a DHT is checked: segments are skipped by their lengths, and the bytes between them (entropy-coded
  // data, stray bytes) are searched for markers as the decoder does. Like the decoder, fill bytes (0xFF) may come
  // before the start-of-image marker.
  size_t soi = 0;
  while (soi < n && d[soi] == 0xFF) ++soi;
  if (soi > 0 && soi < n && d[soi] == 0xD8) {
    size_t i = soi + 1;
    while (i < n) {
      if (d[i] != 0xFF) {
        ++i;
        continue;
      }
      while (i < n && d[i] == 0xFF) ++i;
      if (i >= n) break;
      const unsigned char m = d[i++];
      if (m == 0x00 || m == 0x01 || (m >= 0xD0 && m <= 0xD9)) continue;  // stuffing, TEM, RSTn, SOI, EOI: no body
      if (i + 2 > n) break;
      const size_t len = size_t(d[i]) << 8 | d[i + 1];
      if (len < 2) break;
      if (m == 0xC4) {
        size_t p = i + 2, left = len - 2;
        while (left > 0 && p < n) {
          const unsigned char q = d[p];
          if ((q >> 4) > 1 || (q & 15) > 3) break;  // refused by the decoder itself
          size_t codes = 0;
          for (size_t k = 1; k <= 16; ++k) codes += p + k < n ? d[p + k] : 0;
          DL_CHECK(codes <= 256, what, ": corrupt JPEG: a Huffman table lists ", codes, " codes (at most 256)");
          if (17 + codes >= left) break;
          p += 17 + codes;
          left -= 17 + codes;
        }
      }
      i += len;
    }
  }
}

}  // namespace

Image decode_image(const unsigned char* data, size_t size, const std::string& what) {
  DL_CHECK(size > 0, what, ": empty file is not an image");
  DL_CHECK(size < (size_t(1) << 31), what, ": file is too large to be an image");
  refuse_stb_defects(data, size, what);
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
