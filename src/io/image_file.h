// Image files: decoding (PNG, JPEG, BMP, GIF's first frame, ...) to 8-bit RGB as PIL's convert("RGB") gives it
// (alpha dropped, grey replicated, palettes expanded), and PNG encoding. Undecodable data and absurd sizes are
// dl::Errors naming the file.
#pragma once
#include <cstdint>
#include <string>

#include "io/image.h"

namespace dl::io {

// The most pixels (width x height) an image may decode to, checked from its header before any pixel is decoded: a
// file of a few hundred kB can claim 18000 x 18000 pixels and cost gigabytes. The default is the number of
// Pillow's decompression-bomb guard, PIL.Image.MAX_IMAGE_PIXELS = 89,478,485 pixels (past that Pillow warns; we
// refuse). Process-wide: the commands set it from --max-image-pixels.
constexpr int64_t kDefaultMaxImagePixels = 89478485;
void set_max_image_pixels(int64_t pixels);
int64_t max_image_pixels();

Image read_image(const std::string& path);
Image decode_image(const unsigned char* data, size_t size, const std::string& what);
void write_png(const std::string& path, const Image& image);
// The PNG file bytes of an image (for embedding, e.g. as an HTML data URI).
std::string encode_png(const Image& image);

}  // namespace dl::io
