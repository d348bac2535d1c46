// Image resizing (bit-exact to Pillow) and CLIP preprocessing (equal to transformers 4.35 CLIPImageProcessor).
// Fixtures: tools/fixtures/make_image_fixtures.py.
#include <cstring>
#include <string>
#include <vector>

#include "core/error.h"
#include "io/image.h"
#include "io/safetensors.h"
#include "test_util.h"

namespace dl {
namespace {

const io::SafetensorsFile& image_fixtures() {
  static const io::SafetensorsFile f =
      io::read_safetensors(std::string(DL_FIXTURE_DIR) + "/images/preprocess.safetensors");
  return f;
}

Tensor fixture(const std::string& name) {
  const auto& t = image_fixtures().tensors;
  auto it = t.find(name);
  if (it == t.end()) throw std::runtime_error("image fixture tensor " + name + " is missing");
  return it->second;
}

io::Image fixture_image(const std::string& name) { return io::image_from_hwc(fixture("input/" + name), name); }

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> parts;
  size_t start = 0;
  for (size_t i = 0; i <= s.size(); ++i) {
    if (i == s.size() || s[i] == sep) {
      parts.push_back(s.substr(start, i - start));
      start = i + 1;
    }
  }
  return parts;
}

io::PilResample filter_named(const std::string& name) {
  if (name == "lanczos") return io::PilResample::Lanczos;
  if (name == "bilinear") return io::PilResample::Bilinear;
  if (name == "bicubic") return io::PilResample::Bicubic;
  if (name == "box") return io::PilResample::Box;
  if (name == "hamming") return io::PilResample::Hamming;
  throw std::runtime_error("unknown filter " + name);
}

using test::error_of;

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

// A deterministic image for the tests that need no reference values.
io::Image pattern(int64_t w, int64_t h) {
  io::Image img(w, h);
  for (size_t i = 0; i < img.rgb.size(); ++i) img.rgb[i] = uint8_t((i * 37 + i / 7) & 0xff);
  return img;
}

TEST(ImageResize, BitExactToPil) {
  int cases = 0, bicubic_down = 0, bicubic_up = 0;
  for (const auto& [key, expected] : image_fixtures().tensors) {
    if (key.rfind("resize/", 0) != 0) continue;
    const auto parts = split(key, '/');  // resize/<filter>/<image>/<W>x<H>
    ASSERT_EQ(parts.size(), 4u) << key;
    const auto wh = split(parts[3], 'x');
    const int64_t w = std::stoll(wh.at(0)), h = std::stoll(wh.at(1));
    const io::Image src = fixture_image(parts[2]);
    const io::Image out = io::resize_pil(src, w, h, filter_named(parts[1]));
    ASSERT_EQ(out.width, w) << key;
    ASSERT_EQ(out.height, h) << key;
    const io::Image ref = io::image_from_hwc(expected, key);
    size_t bad = 0, first = 0;
    for (size_t i = 0; i < ref.rgb.size(); ++i) {
      if (out.rgb[i] != ref.rgb[i] && bad++ == 0) first = i;
    }
    EXPECT_EQ(bad, 0u) << key << ": " << bad << " bytes differ; first at pixel (" << (first / 3) % size_t(w) << ", "
                       << first / 3 / size_t(w) << ") channel " << first % 3 << ": " << int(out.rgb[first])
                       << " vs PIL " << int(ref.rgb[first]);
    ++cases;
    if (parts[1] == "bicubic") {
      bicubic_down += (w < src.width || h < src.height);
      bicubic_up += (w > src.width || h > src.height);
    }
  }
  EXPECT_GE(cases, 30);
  EXPECT_GE(bicubic_down, 8);
  EXPECT_GE(bicubic_up, 6);
}

TEST(ImageResize, SameSizeIsACopy) {
  const io::Image src = pattern(13, 9);
  const io::Image out = io::resize_bicubic_pil(src, 13, 9);
  EXPECT_EQ(out.rgb, src.rgb);
}

TEST(ImageResize, ConstantImageStaysConstant) {
  // Normalised weights sum to 1 in fixed point up to rounding, so a flat image must come back flat.
  io::Image src(37, 23);
  for (size_t i = 0; i < src.rgb.size(); i += 3) {
    src.rgb[i] = 200;
    src.rgb[i + 1] = 0;
    src.rgb[i + 2] = 255;
  }
  for (auto [w, h] : {std::pair<int64_t, int64_t>{5, 3}, {100, 71}, {37, 90}, {11, 23}}) {
    const io::Image out = io::resize_bicubic_pil(src, w, h);
    for (size_t i = 0; i < out.rgb.size(); i += 3) {
      ASSERT_EQ(out.rgb[i], 200);
      ASSERT_EQ(out.rgb[i + 1], 0);
      ASSERT_EQ(out.rgb[i + 2], 255);
    }
  }
}

TEST(ImagePreprocess, MatchesTransformersReference) {
  int cases = 0;
  for (const auto& [key, expected] : image_fixtures().tensors) {
    if (key.rfind("preprocess/", 0) != 0) continue;
    const auto parts = split(key, '/');  // preprocess/<config>/<image>
    ASSERT_EQ(parts.size(), 3u) << key;
    const auto& meta = image_fixtures().metadata;
    auto it = meta.find("config/" + parts[1]);
    ASSERT_NE(it, meta.end()) << key;
    const io::ClipPreprocessConfig cfg = io::parse_clip_preprocess_config(it->second, parts[1]);
    const Tensor out = io::clip_preprocess(fixture_image(parts[2]), cfg);
    EXPECT_TRUE(test::all_close(out, expected, 0.f, 1e-6f)) << key;
    // The same IEEE operations in the same precisions as numpy (float64 product, float32 cast, float32 subtract
    // and divide), so equality is exact; a float32-only rescale would be off by an ulp and pass the 1e-6 check.
    EXPECT_TRUE(test::bit_equal(out, expected)) << key;
    ++cases;
  }
  EXPECT_GE(cases, 16);
}

TEST(ImagePreprocess, DefaultsAreClipL14) {
  // The default config reproduces openai/clip-vit-large-patch14's preprocessor_config.json.
  const auto& meta = image_fixtures().metadata;
  const io::ClipPreprocessConfig parsed = io::parse_clip_preprocess_config(meta.at("config/clip_l14"), "clip_l14");
  const io::ClipPreprocessConfig dflt;
  EXPECT_EQ(parsed.shortest_edge, dflt.shortest_edge);
  EXPECT_EQ(parsed.crop_height, dflt.crop_height);
  EXPECT_EQ(parsed.crop_width, dflt.crop_width);
  EXPECT_EQ(parsed.image_mean, dflt.image_mean);
  EXPECT_EQ(parsed.image_std, dflt.image_std);
  const Tensor out = io::clip_preprocess(fixture_image("landscape"), dflt);
  EXPECT_EQ(out.shape(), (Shape{3, 224, 224}));
  EXPECT_TRUE(test::all_close(out, fixture("preprocess/clip_l14/landscape"), 0.f, 1e-6f));
}

TEST(ImagePreprocess, ResizeOutputSize) {
  io::ClipPreprocessConfig c;
  using P = std::pair<int64_t, int64_t>;
  EXPECT_EQ(io::clip_resize_output_size(300, 200, c), (P{336, 224}));
  EXPECT_EQ(io::clip_resize_output_size(500, 97, c), (P{1154, 224}));  // int(1154.63...) truncates
  EXPECT_EQ(io::clip_resize_output_size(97, 500, c), (P{224, 1154}));
  EXPECT_EQ(io::clip_resize_output_size(224, 224, c), (P{224, 224}));
  EXPECT_EQ(io::clip_resize_output_size(31, 31, c), (P{224, 224}));
  c.shortest_edge = 28;
  EXPECT_EQ(io::clip_resize_output_size(64, 48, c), (P{37, 28}));
  EXPECT_EQ(io::clip_resize_output_size(120, 210, c), (P{28, 49}));
  c.shortest_edge = 0;
  c.resize_height = 20;
  c.resize_width = 33;
  EXPECT_EQ(io::clip_resize_output_size(500, 97, c), (P{33, 20}));
}

TEST(ImagePreprocess, CenterCrop) {
  const io::Image src = pattern(10, 7);
  // Inside the image: offsets floor((10-4)/2) = 3 and floor((7-3)/2) = 2.
  io::Image c = io::center_crop_hf(src, 3, 4);
  ASSERT_EQ(c.width, 4);
  ASSERT_EQ(c.height, 3);
  for (int64_t y = 0; y < 3; ++y)
    for (int64_t x = 0; x < 4; ++x)
      for (int64_t ch = 0; ch < 3; ++ch) EXPECT_EQ(c.at(x, y, ch), src.at(x + 3, y + 2, ch));
  // Odd leftover: floor((7-4)/2) = 1.
  c = io::center_crop_hf(src, 4, 10);
  EXPECT_EQ(c.at(0, 0, 0), src.at(0, 1, 0));
  // Too small by an even amount: centred on zeros, full crop size.
  c = io::center_crop_hf(src, 11, 14);
  ASSERT_EQ(c.width, 14);
  ASSERT_EQ(c.height, 11);
  EXPECT_EQ(c.at(1, 1, 0), 0);
  EXPECT_EQ(c.at(2, 2, 1), src.at(0, 0, 1));
  EXPECT_EQ(c.at(11, 8, 2), src.at(9, 6, 2));
  EXPECT_EQ(c.at(12, 9, 2), 0);
  // Too small by an odd amount: transformers 4.35 returns one row/column less than asked.
  c = io::center_crop_hf(src, 10, 13);
  EXPECT_EQ(c.width, 12);
  EXPECT_EQ(c.height, 9);
  EXPECT_EQ(c.at(1, 1, 0), src.at(0, 0, 0));
}

TEST(ImagePreprocess, Flags) {
  const io::Image src = pattern(6, 5);
  io::ClipPreprocessConfig c;
  c.do_resize = c.do_center_crop = c.do_normalize = false;
  c.do_rescale = false;
  Tensor t = io::clip_preprocess(src, c);
  ASSERT_EQ(t.shape(), (Shape{3, 5, 6}));
  EXPECT_EQ(t.at({2, 4, 5}), float(src.at(5, 4, 2)));
  c.do_rescale = true;
  t = io::clip_preprocess(src, c);
  EXPECT_EQ(t.at({1, 3, 2}), float(double(src.at(2, 3, 1)) / 255.0));
  c.do_normalize = true;
  t = io::clip_preprocess(src, c);
  const float x = float(double(src.at(2, 3, 1)) / 255.0);
  EXPECT_EQ(t.at({1, 3, 2}), (x - float(c.image_mean[1])) / float(c.image_std[1]));
}

TEST(ImageConfig, Parsing) {
  // Legacy int sizes.
  auto c = io::parse_clip_preprocess_config(R"({"size": 28, "crop_size": 26, "feature_extractor_type": "x"})", "t");
  EXPECT_EQ(c.shortest_edge, 28);
  EXPECT_EQ(c.crop_height, 26);
  EXPECT_EQ(c.crop_width, 26);
  // Dict sizes.
  c = io::parse_clip_preprocess_config(
      R"({"size": {"shortest_edge": 30}, "crop_size": {"height": 20, "width": 24}, "unknown": [1, 2]})", "t");
  EXPECT_EQ(c.shortest_edge, 30);
  EXPECT_EQ(c.crop_height, 20);
  EXPECT_EQ(c.crop_width, 24);
  // List crop size is (height, width); size dict with height/width resizes exactly.
  c = io::parse_clip_preprocess_config(R"({"size": {"height": 40, "width": 50}, "crop_size": [15, 12]})", "t");
  EXPECT_EQ(c.shortest_edge, 0);
  EXPECT_EQ(c.resize_height, 40);
  EXPECT_EQ(c.resize_width, 50);
  EXPECT_EQ(c.crop_height, 15);
  EXPECT_EQ(c.crop_width, 12);
  // longest_edge next to shortest_edge is accepted and, as in CLIPImageProcessor.resize, unused.
  c = io::parse_clip_preprocess_config(R"({"size": {"shortest_edge": 19, "longest_edge": 40}})", "t");
  EXPECT_EQ(c.shortest_edge, 19);
  // Missing fields keep the CLIP defaults; null sizes and means mean "default" too.
  c = io::parse_clip_preprocess_config(R"({"size": null, "image_mean": null})", "t");
  const io::ClipPreprocessConfig d;
  EXPECT_EQ(c.shortest_edge, 224);
  EXPECT_EQ(c.crop_height, 224);
  EXPECT_EQ(c.crop_width, 224);
  EXPECT_TRUE(c.do_resize && c.do_center_crop && c.do_rescale && c.do_normalize && c.do_convert_rgb);
  EXPECT_EQ(c.resample, 3);
  EXPECT_EQ(c.rescale_factor, 1.0 / 255.0);
  EXPECT_EQ(c.image_mean, d.image_mean);
  EXPECT_EQ(c.image_std, d.image_std);
  EXPECT_DOUBLE_EQ(d.image_mean[0], 0.48145466);
  EXPECT_DOUBLE_EQ(d.image_std[2], 0.27577711);
  // Scalars broadcast over the channels; flags and factors are read.
  c = io::parse_clip_preprocess_config(
      R"({"image_mean": 0.5, "image_std": [1, 2, 3], "do_center_crop": false, "rescale_factor": 0.5,
          "resample": 2, "do_convert_rgb": false})",
      "t");
  EXPECT_EQ(c.image_mean, (std::array<double, 3>{0.5, 0.5, 0.5}));
  EXPECT_EQ(c.image_std, (std::array<double, 3>{1, 2, 3}));
  EXPECT_FALSE(c.do_center_crop);
  EXPECT_FALSE(c.do_convert_rgb);
  EXPECT_EQ(c.rescale_factor, 0.5);
  EXPECT_EQ(c.resample, 2);
}

TEST(ImageConfig, BadConfigsNameTheField) {
  auto err = [](const char* json) {
    return error_of([&] { io::parse_clip_preprocess_config(json, "pp.json"); });
  };
  EXPECT_TRUE(contains(err("{"), "pp.json: invalid JSON"));
  EXPECT_TRUE(contains(err("[1]"), "not a JSON object"));
  EXPECT_TRUE(contains(err(R"({"size": "big"})"), "'size'"));
  EXPECT_TRUE(contains(err(R"({"size": 0})"), "'size' = 0 is out of range"));
  EXPECT_TRUE(contains(err(R"({"size": 40000})"), "out of range"));
  EXPECT_TRUE(contains(err(R"({"size": {"longest_edge": 30}})"), "'size' needs 'shortest_edge'"));
  EXPECT_TRUE(contains(err(R"({"size": {"height": 30}})"), "must have the keys"));
  EXPECT_TRUE(contains(err(R"({"crop_size": {"shortest_edge": 30}})"), "'crop_size' needs 'height' and 'width'"));
  EXPECT_TRUE(contains(err(R"({"crop_size": {"height": 30, "width": -1}})"), "'crop_size.width' = -1"));
  EXPECT_TRUE(contains(err(R"({"crop_size": [1, 2, 3]})"), "[height, width]"));
  EXPECT_TRUE(contains(err(R"({"crop_size": 22.5})"), "'crop_size'"));
  EXPECT_TRUE(contains(err(R"({"resample": 0})"), "resample = 0 is not supported"));
  EXPECT_TRUE(contains(err(R"({"resample": "bicubic"})"), "'resample' must be an integer"));
  EXPECT_TRUE(contains(err(R"({"image_mean": [0.5, 0.5]})"), "'image_mean' must be a number or a list of 3"));
  EXPECT_TRUE(contains(err(R"({"image_std": [1, 0, 1]})"), "image_std[1] must be finite and non-zero"));
  EXPECT_TRUE(contains(err(R"({"do_resize": "yes"})"), "'do_resize' must be true or false"));
  EXPECT_TRUE(contains(err(R"({"rescale_factor": null})"), "'rescale_factor' is null"));
  // Fields that a disabled step would use are not needed.
  EXPECT_NO_THROW(io::parse_clip_preprocess_config(R"({"do_center_crop": false, "crop_size": {"longest_edge": 3}})",
                                                   "t"));
}

TEST(ImageErrors, BadImagesAreClearErrors) {
  EXPECT_TRUE(contains(error_of([] { io::Image(0, 5); }), "width 0 is out of range"));
  EXPECT_TRUE(contains(error_of([] { io::Image(5, -2); }), "height -2 is out of range"));
  EXPECT_TRUE(contains(error_of([] { io::Image(40000, 1); }), "width 40000 is out of range"));
  EXPECT_TRUE(contains(error_of([] { io::Image(2, 2, std::vector<uint8_t>(11)); }),
                       "RGB buffer has 11 bytes, expected 2 x 2 x 3 = 12"));
  io::Image broken;
  EXPECT_TRUE(contains(error_of([&] { io::resize_bicubic_pil(broken, 4, 4); }), "resize_pil input"));
  broken.width = 3;
  broken.height = 3;
  broken.rgb.resize(26);
  EXPECT_TRUE(contains(error_of([&] { io::clip_preprocess(broken, {}); }), "expected 3 x 3 x 3 = 27"));
  const io::Image ok = pattern(4, 4);
  EXPECT_TRUE(contains(error_of([&] { io::resize_bicubic_pil(ok, 0, 4); }), "target width 0"));
  EXPECT_TRUE(contains(error_of([&] { io::resize_bicubic_pil(ok, 4, 1 << 16); }), "target height 65536"));
  EXPECT_TRUE(contains(error_of([&] { io::center_crop_hf(ok, 0, 4); }), "crop height 0"));
  // A thin image whose resize would exceed the side limit.
  io::ClipPreprocessConfig cfg;
  EXPECT_TRUE(contains(error_of([&] { io::clip_preprocess(io::Image(1, 1000), cfg); }), "limit 32768"));
  cfg.crop_width = 0;
  EXPECT_TRUE(contains(error_of([&] { io::clip_preprocess(ok, cfg); }), "crop width 0"));
  cfg = {};
  cfg.resample = 0;
  EXPECT_TRUE(contains(error_of([&] { io::clip_preprocess(ok, cfg); }), "resample = 0 is not supported"));
  // Tensor conversion checks dtype and shape.
  EXPECT_TRUE(
      contains(error_of([] { io::image_from_hwc(Tensor::zeros({2, 2, 3}), "px"); }), "px: image tensor must be U8"));
  EXPECT_TRUE(contains(error_of([] { io::image_from_hwc(Tensor::zeros({2, 2, 4}, DType::U8), "px"); }), "[H, W, 3]"));
  EXPECT_TRUE(contains(error_of([] { io::image_from_hwc(Tensor::zeros({0, 2, 3}, DType::U8), "px"); }), "height 0"));
  // Round trip through a strided view.
  const Tensor hwc = io::image_to_hwc(ok);
  const io::Image back = io::image_from_hwc(hwc.slice(1, 1, 3), "view");
  EXPECT_EQ(back.width, 2);
  EXPECT_EQ(back.at(0, 3, 2), ok.at(1, 3, 2));
}

}  // namespace
}  // namespace dl
