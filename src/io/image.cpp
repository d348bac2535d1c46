#include "io/image.h"

#include <algorithm>
#include <cmath>
#include <nlohmann/json.hpp>
#include <numbers>
#include <set>

#include "core/error.h"
#include "io/config.h"

// Resampling must not fuse multiply-adds: Pillow is built for baseline x86-64 (no FMA) and every double below has
// to round exactly as it does there, so src/CMakeLists.txt compiles this file with -ffp-contract=off.

namespace dl::io {

namespace {

void check_side(int64_t v, const char* name, const std::string& what) {
  DL_CHECK(v >= 1 && v <= kMaxImageSide, what, ": image ", name, " ", v, " is out of range (1..", kMaxImageSide,
           ")");
}

// ---------------------------------------------------------------------------------------------------------------
// Pillow's separable resampler, 8 bits per channel (libImaging/Resample.c).

struct Filter {
  double (*fn)(double);
  double support;
};

double box_filter(double x) { return (x > -0.5 && x <= 0.5) ? 1.0 : 0.0; }

double bilinear_filter(double x) {
  if (x < 0.0) x = -x;
  return x < 1.0 ? 1.0 - x : 0.0;
}

double hamming_filter(double x) {
  if (x < 0.0) x = -x;
  if (x == 0.0) return 1.0;
  if (x >= 1.0) return 0.0;
  x = x * std::numbers::pi;
  // Pillow writes these constants as float literals; their float values are part of the result.
  return std::sin(x) / x * (0.54f + 0.46f * std::cos(x));
}

double bicubic_filter(double x) {
  constexpr double a = -0.5;
  if (x < 0.0) x = -x;
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
  if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
  return 0.0;
}

double sinc_filter(double x) {
  if (x == 0.0) return 1.0;
  x = x * std::numbers::pi;
  return std::sin(x) / x;
}

double lanczos_filter(double x) {
  if (-3.0 <= x && x < 3.0) return sinc_filter(x) * sinc_filter(x / 3);
  return 0.0;
}

Filter filter_for(PilResample r) {
  switch (r) {
    case PilResample::Box: return {box_filter, 0.5};
    case PilResample::Bilinear: return {bilinear_filter, 1.0};
    case PilResample::Hamming: return {hamming_filter, 1.0};
    case PilResample::Bicubic: return {bicubic_filter, 2.0};
    case PilResample::Lanczos: return {lanczos_filter, 3.0};
  }
  fail("resize_pil: unknown resampling filter ", int(r));
}

// Filter can go negative and sum above 1, so two bits are kept for overflow and sign above the 8 result bits.
constexpr int kPrecisionBits = 32 - 8 - 2;

// Per output pixel: the first input pixel, the number of taps, and ksize fixed-point weights (zero padded).
struct Coeffs {
  int ksize = 0;
  std::vector<int> first, count;
  std::vector<int32_t> k;
};

// precompute_coeffs + normalize_coeffs_8bpc. The box is always the whole input, so in0 = 0 and in1 = in_size
// (Pillow holds them as float; exact for these sizes).
Coeffs precompute_coeffs(int in_size, int out_size, const Filter& f) {
  const float in0 = 0.f, in1 = float(in_size);
  const double scale = double(in1 - in0) / out_size;
  // Downscaling widens the kernel by the scale factor: that is Pillow's antialiasing.
  const double filterscale = scale < 1.0 ? 1.0 : scale;
  const double support = f.support * filterscale;
  Coeffs c;
  c.ksize = int(std::ceil(support)) * 2 + 1;
  c.first.resize(size_t(out_size));
  c.count.resize(size_t(out_size));
  std::vector<double> w(size_t(c.ksize));
  c.k.assign(size_t(out_size) * size_t(c.ksize), 0);
  for (int xx = 0; xx < out_size; ++xx) {
    const double center = in0 + (xx + 0.5) * scale;
    const double ss = 1.0 / filterscale;
    // Truncation, not floor: negative values are clamped to 0 right after, so the two agree.
    int xmin = int(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    int xmax = int(center + support + 0.5);
    if (xmax > in_size) xmax = in_size;
    xmax -= xmin;
    double ww = 0.0;
    for (int x = 0; x < xmax; ++x) {
      const double v = f.fn((x + xmin - center + 0.5) * ss);
      w[size_t(x)] = v;
      ww += v;
    }
    int32_t* k = &c.k[size_t(xx) * size_t(c.ksize)];
    for (int x = 0; x < xmax; ++x) {
      double v = w[size_t(x)];
      if (ww != 0.0) v /= ww;
      k[x] = v < 0 ? int32_t(-0.5 + v * (1 << kPrecisionBits)) : int32_t(0.5 + v * (1 << kPrecisionBits));
    }
    c.first[size_t(xx)] = xmin;
    c.count[size_t(xx)] = xmax;
  }
  return c;
}

// Pillow's clip8 lookup: arithmetic shift (floor) of the fixed-point sum, saturated to 0..255.
inline uint8_t clip8(int32_t v) {
  const int32_t s = v >> kPrecisionBits;
  return uint8_t(s < 0 ? 0 : (s > 255 ? 255 : s));
}

constexpr int32_t kRoundHalf = int32_t(1) << (kPrecisionBits - 1);

// Rows [row0, row0 + rows) of src resampled horizontally to out_w columns.
std::vector<uint8_t> resample_horizontal(const uint8_t* src, int in_w, int row0, int rows, int out_w,
                                         const Coeffs& c) {
  std::vector<uint8_t> out(size_t(rows) * size_t(out_w) * 3);
  for (int yy = 0; yy < rows; ++yy) {
    const uint8_t* line = src + size_t(row0 + yy) * size_t(in_w) * 3;
    uint8_t* dst = &out[size_t(yy) * size_t(out_w) * 3];
    for (int xx = 0; xx < out_w; ++xx) {
      const int32_t* k = &c.k[size_t(xx) * size_t(c.ksize)];
      const uint8_t* p = line + size_t(c.first[size_t(xx)]) * 3;
      int32_t s0 = kRoundHalf, s1 = kRoundHalf, s2 = kRoundHalf;
      for (int x = 0, n = c.count[size_t(xx)]; x < n; ++x) {
        s0 += int32_t(p[x * 3 + 0]) * k[x];
        s1 += int32_t(p[x * 3 + 1]) * k[x];
        s2 += int32_t(p[x * 3 + 2]) * k[x];
      }
      dst[xx * 3 + 0] = clip8(s0);
      dst[xx * 3 + 1] = clip8(s1);
      dst[xx * 3 + 2] = clip8(s2);
    }
  }
  return out;
}

// src has `width` columns; output row yy mixes src rows first[yy] - row_shift + [0, count[yy]).
std::vector<uint8_t> resample_vertical(const uint8_t* src, int width, int row_shift, int out_h, const Coeffs& c) {
  const size_t row_len = size_t(width) * 3;
  std::vector<uint8_t> out(size_t(out_h) * row_len);
  std::vector<int32_t> acc(row_len);
  for (int yy = 0; yy < out_h; ++yy) {
    const int32_t* k = &c.k[size_t(yy) * size_t(c.ksize)];
    const uint8_t* base = src + size_t(c.first[size_t(yy)] - row_shift) * row_len;
    std::fill(acc.begin(), acc.end(), kRoundHalf);
    // Integer sums are exact, so accumulating tap by tap over whole rows equals Pillow's per-pixel order.
    for (int y = 0, n = c.count[size_t(yy)]; y < n; ++y) {
      const uint8_t* line = base + size_t(y) * row_len;
      const int32_t ky = k[y];
      for (size_t i = 0; i < row_len; ++i) acc[i] += int32_t(line[i]) * ky;
    }
    uint8_t* dst = &out[size_t(yy) * row_len];
    for (size_t i = 0; i < row_len; ++i) dst[i] = clip8(acc[i]);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------------------------
// preprocessor_config.json

using json = nlohmann::json;

class Fields {
 public:
  Fields(const json& j, const std::string& what) : j_(j), what_(what) {}
  bool present(const char* key) const { return j_.contains(key); }
  bool has(const char* key) const { return j_.contains(key) && !j_[key].is_null(); }
  const json& operator[](const char* key) const { return j_[key]; }
  // CLIPImageProcessor stores these flags as given; a null one is falsy when preprocess() tests it.
  bool flag(const char* key, bool dflt) const {
    if (!present(key)) return dflt;
    const json& v = j_[key];
    if (v.is_null()) return false;
    DL_CHECK(v.is_boolean(), what_, ": field '", key, "' must be true or false");
    return v.get<bool>();
  }
  int64_t side(const json& v, const std::string& key) const {
    DL_CHECK(v.is_number_integer(), what_, ": field '", key, "' must be an integer");
    const int64_t s = v.get<int64_t>();
    DL_CHECK(s >= 1 && s <= kMaxImageSide, what_, ": field '", key, "' = ", s, " is out of range (1..",
             kMaxImageSide, ")");
    return s;
  }
  double number(const json& v, const std::string& key) const {
    DL_CHECK(v.is_number(), what_, ": field '", key, "' must be a number");
    return v.get<double>();
  }
  // A scalar applies to every channel (HF normalize accepts one); a list needs one value per channel.
  std::array<double, 3> per_channel(const char* key) const {
    const json& v = j_[key];
    if (v.is_number()) {
      const double x = v.get<double>();
      return {x, x, x};
    }
    DL_CHECK(v.is_array() && v.size() == 3, what_, ": field '", key,
             "' must be a number or a list of 3 numbers (one per RGB channel)");
    std::array<double, 3> out{};
    for (size_t i = 0; i < 3; ++i) out[i] = number(v[i], std::string(key) + "[" + std::to_string(i) + "]");
    return out;
  }
  const std::string& what() const { return what_; }

 private:
  const json& j_;
  const std::string& what_;
};

// HF get_size_dict: an int becomes {shortest_edge} (size) or {height, width} (crop_size), a list is (height, width),
// a dict must have one of the valid key sets. Returns {shortest_edge, height, width}, unused entries 0.
struct SizeSpec {
  int64_t shortest_edge = 0, height = 0, width = 0;
};

SizeSpec size_dict(const Fields& f, const char* key, bool default_to_square) {
  const json& v = f[key];
  const std::string k(key);
  SizeSpec s;
  if (v.is_number_integer()) {
    const int64_t n = f.side(v, k);
    if (default_to_square) {
      s.height = s.width = n;
    } else {
      s.shortest_edge = n;
    }
    return s;
  }
  if (v.is_array()) {
    DL_CHECK(v.size() == 2, f.what(), ": field '", key, "' as a list must be [height, width]");
    s.height = f.side(v[0], k + "[0]");
    s.width = f.side(v[1], k + "[1]");
    return s;
  }
  DL_CHECK(v.is_object(), f.what(), ": field '", key, "' must be an integer, [height, width] or a dict");
  std::set<std::string> keys;
  for (const auto& [name, _] : v.items()) keys.insert(name);
  const std::set<std::set<std::string>> valid{
      {"height", "width"}, {"shortest_edge"}, {"shortest_edge", "longest_edge"}, {"longest_edge"}};
  DL_CHECK(valid.count(keys), f.what(), ": field '", key,
           "' must have the keys {height, width}, {shortest_edge}, {shortest_edge, longest_edge} or {longest_edge}");
  if (keys.count("shortest_edge")) s.shortest_edge = f.side(v["shortest_edge"], k + ".shortest_edge");
  if (keys.count("longest_edge")) f.side(v["longest_edge"], k + ".longest_edge");
  if (keys.count("height")) {
    s.height = f.side(v["height"], k + ".height");
    s.width = f.side(v["width"], k + ".width");
  }
  return s;
}

void check_config(const ClipPreprocessConfig& c, const std::string& what) {
  if (c.do_resize) {
    if (c.shortest_edge != 0) {
      DL_CHECK(c.shortest_edge >= 1 && c.shortest_edge <= kMaxImageSide, what, ": shortest_edge ", c.shortest_edge,
               " is out of range (1..", kMaxImageSide, ")");
    } else {
      check_side(c.resize_height, "resize height", what);
      check_side(c.resize_width, "resize width", what);
    }
    DL_CHECK(c.resample >= 1 && c.resample <= 5, what, ": resample = ", c.resample,
             " is not supported (1 LANCZOS, 2 BILINEAR, 3 BICUBIC, 4 BOX, 5 HAMMING)");
  }
  if (c.do_center_crop) {
    check_side(c.crop_height, "crop height", what);
    check_side(c.crop_width, "crop width", what);
  }
  if (c.do_rescale) DL_CHECK(std::isfinite(c.rescale_factor), what, ": rescale_factor must be finite");
  if (c.do_normalize) {
    for (int i = 0; i < 3; ++i) {
      DL_CHECK(std::isfinite(c.image_mean[size_t(i)]), what, ": image_mean[", i, "] must be finite");
      DL_CHECK(std::isfinite(c.image_std[size_t(i)]) && c.image_std[size_t(i)] != 0.0, what, ": image_std[", i,
               "] must be finite and non-zero");
    }
  }
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------------

Image::Image(int64_t w, int64_t h) : width(w), height(h) {
  check_side(w, "width", "Image");
  check_side(h, "height", "Image");
  rgb.assign(size_t(w * h * 3), 0);
}

Image::Image(int64_t w, int64_t h, std::vector<uint8_t> data) : width(w), height(h), rgb(std::move(data)) {
  validate("Image");
}

void Image::validate(const std::string& what) const {
  check_side(width, "width", what);
  check_side(height, "height", what);
  DL_CHECK(rgb.size() == size_t(width * height * 3), what, ": RGB buffer has ", rgb.size(), " bytes, expected ",
           width, " x ", height, " x 3 = ", width * height * 3);
}

Image image_from_hwc(const Tensor& t, const std::string& what) {
  DL_CHECK(t.defined(), what, ": undefined tensor");
  DL_CHECK(t.dtype() == DType::U8, what, ": image tensor must be U8, got ", t.describe());
  DL_CHECK(t.dim() == 3 && t.size(2) == 3, what, ": image tensor must be [H, W, 3], got ", t.describe());
  check_side(t.size(1), "width", what);
  check_side(t.size(0), "height", what);
  const Tensor c = t.contiguous();
  const uint8_t* p = c.data<uint8_t>();
  return Image(t.size(1), t.size(0), std::vector<uint8_t>(p, p + c.numel()));
}

Tensor image_to_hwc(const Image& img) {
  img.validate("image_to_hwc");
  Tensor t = Tensor::empty({img.height, img.width, 3}, DType::U8);
  std::copy(img.rgb.begin(), img.rgb.end(), t.data<uint8_t>());
  return t;
}

Image resize_pil(const Image& src, int64_t new_w, int64_t new_h, PilResample filter) {
  src.validate("resize_pil input");
  check_side(new_w, "target width", "resize_pil");
  check_side(new_h, "target height", "resize_pil");
  const Filter f = filter_for(filter);
  // Image.resize returns a copy when nothing changes; otherwise each pass runs only along an axis whose size changes.
  if (new_w == src.width && new_h == src.height) return src;
  const int in_w = int(src.width), in_h = int(src.height), out_w = int(new_w), out_h = int(new_h);
  const bool need_h = out_w != in_w, need_v = out_h != in_h;

  const Coeffs cv = precompute_coeffs(in_h, out_h, f);
  // Pillow resamples horizontally only the source rows that the vertical pass will read.
  const int row_first = cv.first[0];
  const int row_last = cv.first[size_t(out_h - 1)] + cv.count[size_t(out_h - 1)];

  Image out;
  out.width = new_w;
  out.height = new_h;
  if (!need_h) {
    out.rgb = resample_vertical(src.rgb.data(), in_w, 0, out_h, cv);
    return out;
  }
  const Coeffs ch = precompute_coeffs(in_w, out_w, f);
  if (!need_v) {
    out.rgb = resample_horizontal(src.rgb.data(), in_w, 0, in_h, out_w, ch);
    return out;
  }
  const std::vector<uint8_t> tmp =
      resample_horizontal(src.rgb.data(), in_w, row_first, row_last - row_first, out_w, ch);
  out.rgb = resample_vertical(tmp.data(), out_w, row_first, out_h, cv);
  return out;
}

ClipPreprocessConfig parse_clip_preprocess_config(const std::string& text, const std::string& what) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    fail(what, ": invalid JSON (", e.what(), ")");
  }
  DL_CHECK(j.is_object(), what, ": not a JSON object");
  const Fields f(j, what);
  ClipPreprocessConfig c;
  c.do_resize = f.flag("do_resize", c.do_resize);
  c.do_center_crop = f.flag("do_center_crop", c.do_center_crop);
  c.do_rescale = f.flag("do_rescale", c.do_rescale);
  c.do_normalize = f.flag("do_normalize", c.do_normalize);
  c.do_convert_rgb = f.flag("do_convert_rgb", c.do_convert_rgb);

  // CLIPImageProcessor.resize uses shortest_edge when present (longest_edge is then ignored), else height/width.
  if (f.has("size")) {
    const SizeSpec s = size_dict(f, "size", /*default_to_square=*/false);
    if (s.shortest_edge) {
      c.shortest_edge = s.shortest_edge;
    } else if (s.height) {
      c.shortest_edge = 0;
      c.resize_height = s.height;
      c.resize_width = s.width;
    } else if (c.do_resize) {
      fail(what, ": field 'size' needs 'shortest_edge' or 'height' and 'width' to resize");
    }
  }
  if (f.has("crop_size")) {
    const SizeSpec s = size_dict(f, "crop_size", /*default_to_square=*/true);
    if (s.height) {
      c.crop_height = s.height;
      c.crop_width = s.width;
    } else if (c.do_center_crop) {
      fail(what, ": field 'crop_size' needs 'height' and 'width' to center-crop");
    }
  }
  if (f.has("resample")) {
    DL_CHECK(f["resample"].is_number_integer(), what, ": field 'resample' must be an integer");
    const int64_t r = f["resample"].get<int64_t>();
    DL_CHECK(r >= 1 && r <= 5, what, ": resample = ", r,
             " is not supported (1 LANCZOS, 2 BILINEAR, 3 BICUBIC, 4 BOX, 5 HAMMING)");
    c.resample = int(r);
  }
  if (f.present("rescale_factor")) {
    DL_CHECK(f.has("rescale_factor") || !c.do_rescale, what, ": field 'rescale_factor' is null");
    if (f.has("rescale_factor")) c.rescale_factor = f.number(f["rescale_factor"], "rescale_factor");
  }
  if (f.has("image_mean")) c.image_mean = f.per_channel("image_mean");
  if (f.has("image_std")) c.image_std = f.per_channel("image_std");
  check_config(c, what);
  return c;
}

ClipPreprocessConfig read_clip_preprocess_config(const std::string& path) {
  return parse_clip_preprocess_config(read_text_file(path), "'" + path + "'");
}

std::pair<int64_t, int64_t> clip_resize_output_size(int64_t width, int64_t height, const ClipPreprocessConfig& cfg) {
  check_side(width, "width", "clip_resize_output_size");
  check_side(height, "height", "clip_resize_output_size");
  if (cfg.shortest_edge == 0) return {cfg.resize_width, cfg.resize_height};
  const bool portrait = width <= height;
  const int64_t shorter = portrait ? width : height, longer = portrait ? height : width;
  // Python's int(size * long / short): true division in double, truncated.
  const double scaled = double(cfg.shortest_edge * longer) / double(shorter);
  DL_CHECK(scaled <= double(kMaxImageSide), "clip_resize_output_size: resizing a ", width, "x", height,
           " image to shortest edge ", cfg.shortest_edge, " makes the longer side ", int64_t(scaled),
           " (limit ", kMaxImageSide, ")");
  const int64_t new_long = int64_t(scaled);
  return portrait ? std::pair{cfg.shortest_edge, new_long} : std::pair{new_long, cfg.shortest_edge};
}

Image center_crop_hf(const Image& src, int64_t crop_h, int64_t crop_w) {
  src.validate("center_crop input");
  check_side(crop_h, "crop height", "center_crop");
  check_side(crop_w, "crop width", "center_crop");
  // Python's // floors, also for the negative offsets of an image smaller than the crop.
  auto floordiv2 = [](int64_t v) { return v >= 0 ? v / 2 : -((-v + 1) / 2); };
  int64_t top = floordiv2(src.height - crop_h), left = floordiv2(src.width - crop_w);
  int64_t bottom = top + crop_h, right = left + crop_w;
  int64_t canvas_h = src.height, canvas_w = src.width, pad_top = 0, pad_left = 0;
  if (!(top >= 0 && bottom <= src.height && left >= 0 && right <= src.width)) {
    // Too small: centre the image on a zero canvas at least as large as the crop, then crop that. The padding
    // offset also rounds down, so an odd size difference loses a row/column at the bottom/right (HF 4.35).
    canvas_h = std::max(crop_h, src.height);
    canvas_w = std::max(crop_w, src.width);
    pad_top = (canvas_h - src.height) / 2;
    pad_left = (canvas_w - src.width) / 2;
    top = std::max<int64_t>(0, top + pad_top);
    bottom = std::min(canvas_h, bottom + pad_top);
    left = std::max<int64_t>(0, left + pad_left);
    right = std::min(canvas_w, right + pad_left);
  }
  Image out(right - left, bottom - top);
  for (int64_t y = top; y < bottom; ++y) {
    const int64_t sy = y - pad_top;
    if (sy < 0 || sy >= src.height) continue;
    for (int64_t x = left; x < right; ++x) {
      const int64_t sx = x - pad_left;
      if (sx < 0 || sx >= src.width) continue;
      uint8_t* dst = &out.rgb[size_t(((y - top) * out.width + (x - left)) * 3)];
      for (int64_t ch = 0; ch < 3; ++ch) dst[ch] = src.at(sx, sy, ch);
    }
  }
  return out;
}

Tensor clip_preprocess(const Image& img, const ClipPreprocessConfig& cfg) {
  img.validate("clip_preprocess input");
  check_config(cfg, "clip_preprocess config");
  Image resized;
  const Image* cur = &img;
  if (cfg.do_resize) {
    const auto [w, h] = clip_resize_output_size(img.width, img.height, cfg);
    resized = resize_pil(img, w, h, PilResample(cfg.resample));
    cur = &resized;
  }
  Image cropped;
  if (cfg.do_center_crop) {
    cropped = center_crop_hf(*cur, cfg.crop_height, cfg.crop_width);
    cur = &cropped;
  }
  const int64_t h = cur->height, w = cur->width;
  Tensor out = Tensor::empty({3, h, w});
  float* o = out.f32();
  for (int64_t c = 0; c < 3; ++c) {
    // numpy: mean/std become float32 arrays, the subtraction and division happen in float32.
    const float mean = float(cfg.image_mean[size_t(c)]), stdev = float(cfg.image_std[size_t(c)]);
    float* plane = o + c * h * w;
    for (int64_t i = 0; i < h * w; ++i) {
      const uint8_t v = cur->rgb[size_t(i * 3 + c)];
      // rescale multiplies in float64 (uint8 array times a Python float) and casts the product to float32.
      float x = cfg.do_rescale ? float(double(v) * cfg.rescale_factor) : float(v);
      if (cfg.do_normalize) x = (x - mean) / stdev;
      plane[i] = x;
    }
  }
  return out;
}

}  // namespace dl::io
