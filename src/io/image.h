// Images and CLIP image preprocessing, reproducing what DreamLLM's Python stack does to a picture before the vision
// tower sees it: HF CLIPImageProcessor (transformers 4.35) on a PIL RGB image, with Pillow's own resampling.
// Resizing is bit-exact to Pillow's 8-bit path (libImaging/Resample.c); the float steps follow numpy's dtypes
// (rescale in float64 then cast to float32, normalisation in float32), so results match the reference exactly.
#pragma once
#include <array>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"

namespace dl::io {

// Larger sides are refused: no real input needs them and the resampler's buffers grow with the side length.
constexpr int64_t kMaxImageSide = int64_t(1) << 15;

// An 8-bit RGB image, rows top to bottom, pixels interleaved (HWC, 3 channels).
struct Image {
  int64_t width = 0, height = 0;
  std::vector<uint8_t> rgb;

  Image() = default;
  Image(int64_t width, int64_t height);  // all black
  Image(int64_t width, int64_t height, std::vector<uint8_t> rgb);

  // Throws naming `what` unless 1 <= width, height <= kMaxImageSide and rgb holds width*height*3 bytes.
  void validate(const std::string& what) const;
  uint8_t at(int64_t x, int64_t y, int64_t c) const { return rgb[size_t((y * width + x) * 3 + c)]; }
};

// U8 [H, W, 3] tensor (any strides) <-> Image.
Image image_from_hwc(const Tensor& t, const std::string& what);
Tensor image_to_hwc(const Image& img);

// PIL's resampling filters with their Image.Resampling numbers. NEAREST (0) uses a different code path in Pillow
// and is not implemented.
enum class PilResample : int { Lanczos = 1, Bilinear = 2, Bicubic = 3, Box = 4, Hamming = 5 };

// PIL Image.resize((new_w, new_h), resample) of an RGB image, reducing_gap=None, no box: bit-identical output.
Image resize_pil(const Image& src, int64_t new_w, int64_t new_h, PilResample filter);
inline Image resize_bicubic_pil(const Image& src, int64_t new_w, int64_t new_h) {
  return resize_pil(src, new_w, new_h, PilResample::Bicubic);
}

// The fields of a CLIPImageProcessor preprocessor_config.json, defaults as openai/clip-vit-large-patch14.
struct ClipPreprocessConfig {
  bool do_resize = true;
  // Resize so the shorter side becomes shortest_edge; when it is 0, resize to exactly resize_height x resize_width
  // (a size dict with height and width).
  int64_t shortest_edge = 224;
  int64_t resize_height = 0, resize_width = 0;
  int resample = 3;  // PIL Image.Resampling number; 3 = BICUBIC
  bool do_center_crop = true;
  int64_t crop_height = 224, crop_width = 224;
  bool do_rescale = true;
  double rescale_factor = 1.0 / 255.0;
  bool do_normalize = true;
  std::array<double, 3> image_mean{0.48145466, 0.4578275, 0.40821073};
  std::array<double, 3> image_std{0.26862954, 0.26130258, 0.27577711};
  bool do_convert_rgb = true;  // images here are always RGB already
};

// Parses preprocessor_config.json text; `what` names the source in errors. Accepts both the legacy format
// ("size": 224, "crop_size": 224) and the dict format; unknown fields are ignored.
ClipPreprocessConfig parse_clip_preprocess_config(const std::string& json_text, const std::string& what);
ClipPreprocessConfig read_clip_preprocess_config(const std::string& path);

// HF get_resize_output_image_size for the config's size: returns {new_width, new_height}.
std::pair<int64_t, int64_t> clip_resize_output_size(int64_t width, int64_t height, const ClipPreprocessConfig& cfg);

// HF image_transforms.center_crop of transformers 4.35, zero padding included. When the image is smaller than the
// crop by an odd number of pixels that version returns one pixel less than asked; this reproduces it.
Image center_crop_hf(const Image& src, int64_t crop_height, int64_t crop_width);

// The whole CLIPImageProcessor.preprocess: F32 [3, H, W] pixel_values (H = W = crop size in every normal config).
Tensor clip_preprocess(const Image& img, const ClipPreprocessConfig& cfg);

}  // namespace dl::io
