#include "io/image_file.h"

#include <stb/stb_image.h>
#include <stb/stb_image_write.h>

#include <cstring>

#include "core/error.h"
#include "core/storage.h"
#include "io/atomic_file.h"

namespace dl::io {

namespace {
constexpr int kMaxSide = 1 << 15;  // matches Image's own bound
}

Image decode_image(const unsigned char* data, size_t size, const std::string& what) {
  DL_CHECK(size > 0, what, ": empty file is not an image");
  DL_CHECK(size < (size_t(1) << 31), what, ": file is too large to be an image");
  int w = 0, h = 0, channels = 0;
  // Read the header first so that a lying size never becomes a giant allocation.
  DL_CHECK(stbi_info_from_memory(data, int(size), &w, &h, &channels), what, ": not a readable image (",
           stbi_failure_reason(), ")");
  DL_CHECK(w > 0 && h > 0 && w <= kMaxSide && h <= kMaxSide, what, ": image size ", w, "x", h,
           " is outside 1..", kMaxSide, " pixels per side");
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
