// Image files: decoding (PNG, JPEG, BMP, GIF's first frame, ...) to 8-bit RGB as PIL's convert("RGB") gives it
// (alpha dropped, grey replicated, palettes expanded), and PNG encoding. Undecodable data and absurd sizes are
// dl::Errors naming the file.
#pragma once
#include <string>

#include "io/image.h"

namespace dl::io {

Image read_image(const std::string& path);
Image decode_image(const unsigned char* data, size_t size, const std::string& what);
void write_png(const std::string& path, const Image& image);
// The PNG file bytes of an image (for embedding, e.g. as an HTML data URI).
std::string encode_png(const Image& image);

}  // namespace dl::io
