// One input of each newer fuzz target, shared by the fuzzer (fuzz_<name>.cpp) and by the regression test that
// replays tests/fixtures/fuzz_regressions/<name>/ (tests/test_fuzz_regressions.cpp), so both run the same code.
// Each function throws what the code under test throws (dl::Error for a bad input: run() swallows it) and traps on a
// broken invariant that the callers of the code rely on.
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <vector>

#include "fuzz_common.h"
#include "io/image.h"
#include "io/gguf_model.h"
#include "io/image_file.h"
#include "io/model_dir.h"
#include "nn/optim.h"
#include "text/tokenizer.h"
#include "train/checkpoint.h"
#include "train/data.h"
#include "train/webdataset.h"

namespace dl::fuzz {

inline std::optional<std::string> absent_if_empty(const std::string& s) {
  return s.empty() ? std::nullopt : std::optional<std::string>(s);
}

// An image file in any format stb_image reads (PNG, JPEG, BMP, GIF, TGA, PSD, HDR, PIC, PNM). What decodes then goes
// through both preprocessing paths at the tiny fixture's sizes: CLIP's (shorter side to 28, center crop 28x28,
// normalise) and the diffusion target's (bicubic resize to 16, crop, scale to [-1, 1]). The pixel limit is a
// megapixel while it runs, so that one input costs milliseconds, not seconds; the decoder and the resampler run the
// same code at any size.
inline void image_input(const uint8_t* data, size_t size) {
  struct PixelLimit {
    int64_t saved = io::max_image_pixels();
    PixelLimit() { io::set_max_image_pixels(int64_t(1) << 20); }
    ~PixelLimit() { io::set_max_image_pixels(saved); }
  } limit;
  const io::Image img = io::decode_image(data, size, "fuzz input");
  io::ClipPreprocessConfig clip;
  clip.shortest_edge = 28;
  clip.crop_height = clip.crop_width = 28;
  (void)io::clip_preprocess(img, clip);
  (void)train::diffusion_pixels(img, 16);
}

// A tokenizer directory: tokenizer_config.json, special_tokens_map.json, added_tokens.json, a prompt, then the
// tokenizer.model bytes (parts cut at NULs, split_parts; an empty JSON part is an absent file). What loads encodes
// and decodes the prompt, and decodes the prompt's bytes read as 16-bit token ids (ids outside the vocabulary must be
// dl::Errors too). SentencePiece is the system library, uninstrumented: coverage guides the side-file resolution,
// the added-token trie and the encode/decode wrappers around it.
inline void tokenizer_input(const uint8_t* data, size_t size) {
  const std::vector<std::string> parts = split_parts(data, size, 5);
  text::Tokenizer::Files files;
  files.tokenizer_config = absent_if_empty(parts[0]);
  files.special_tokens_map = absent_if_empty(parts[1]);
  files.added_tokens = absent_if_empty(parts[2]);
  files.model = parts[4];
  const std::string& prompt = parts[3];
  const auto tok = text::Tokenizer::from_files(files, "fuzz");
  const std::vector<int32_t> ids = tok.encode(prompt);
  for (int32_t id : ids)
    if (id < 0 || id >= tok.vocab_size()) __builtin_trap();
  (void)tok.decode(ids, true);
  (void)tok.decode(ids, false);
  (void)tok.tokenize(prompt);
  std::vector<int32_t> raw;
  for (size_t i = 0; i + 1 < prompt.size(); i += 2)
    raw.push_back(int32_t(uint8_t(prompt[i])) | int32_t(uint8_t(prompt[i + 1])) << 8);
  if (!raw.empty()) raw.back() -= 0x8000;  // a negative id too
  run([&] { (void)tok.decode(raw, false); });
  run([&] { (void)tok.id_to_piece(raw.empty() ? -1 : raw[0]); });
  (void)tok.has_token(prompt);
}

// A model directory's text files: a sharded-weights *.index.json, config.json, clip_vision/config.json,
// unet/config.json, vae/config.json, scheduler/scheduler_config.json and preprocessor_config.json (parts cut at
// NULs; an empty optional config is an absent file). A config set that opens then produces every component's
// expected weight layout, and the preprocessing config its resize sizes.
inline void model_dir_input(const uint8_t* data, size_t size) {
  const std::vector<std::string> parts = split_parts(data, size, 7);
  run([&] {
    for (const auto& [shard, names] : io::parse_weight_index(parts[0], "fuzz index"))
      if (shard.empty() || shard.find('/') != std::string::npos || names.empty()) __builtin_trap();
  });
  io::ModelDir::ConfigTexts texts;
  texts.config = parts[1];
  texts.clip_vision = absent_if_empty(parts[2]);
  texts.unet = absent_if_empty(parts[3]);
  texts.vae = absent_if_empty(parts[4]);
  texts.scheduler = absent_if_empty(parts[5]);
  run([&] {
    const io::ModelDir m = io::ModelDir::from_configs("fuzz", texts);
    for (auto c : {io::kLLM, io::kClip, io::kDream, io::kDiffusion, io::kConditionProjector}) (void)m.expected(c);
  });
  const io::ClipPreprocessConfig cfg = io::parse_clip_preprocess_config(parts[6], "fuzz preprocessor_config.json");
  for (const auto& size_wh : {std::pair<int64_t, int64_t>{1, 1}, {640, 480}, {3, 32768}})
    run([&] { (void)io::clip_resize_output_size(size_wh.first, size_wh.second, cfg); });
}

// A converted model held in memory: a little-endian u64 n, then n bytes of the LLM GGUF file, then the companion's
// bytes (none: a plain llama.cpp file). What opens as a ModelDir loads every component it reports present (all
// tensors touched), and its tokenizer (the companion's embedded files, or tokenizer.ggml.*) encodes and decodes.
inline void gguf_model_input(const uint8_t* data, size_t size) {
  uint64_t n = 0;
  if (size >= 8) std::memcpy(&n, data, 8);
  const size_t rest = size >= 8 ? size - 8 : 0;
  n = std::min<uint64_t>(n, rest);
  const uint8_t* body = size >= 8 ? data + 8 : data;
  io::GgufFile llm = io::parse_gguf(bytes_storage(body, size_t(n)), "fuzz.gguf");
  std::optional<io::GgufFile> companion;
  if (rest > n) companion = io::parse_gguf(bytes_storage(body + n, rest - size_t(n)), "fuzz.mmproj.gguf");
  const auto g = io::gguf_model_from(std::move(llm), std::move(companion), "fuzz.gguf", "fuzz.mmproj.gguf");
  const io::ModelDir dir = io::ModelDir::from_gguf(g);
  if (!dir.has(io::kLLM)) __builtin_trap();
  for (auto c : {io::kLLM, io::kClip, io::kDream, io::kDiffusion, io::kConditionProjector}) {
    if (!dir.has(c)) continue;
    run([&] {
      for (const auto& [name, t] : dir.load(c)) {
        // What the models rely on: every returned tensor has the shape the config expects for it.
        bool expected = false;
        for (const auto& [en, shape] : dir.expected(c)) expected = expected || (en == name && shape == t.shape());
        if (!expected) __builtin_trap();
        (void)t.to_vector();
      }
    });
  }
  run([&] {
    text::Tokenizer::Files files;
    if (auto model = g->embedded("tokenizer.model")) {
      files.model = *model;
      files.added_tokens = g->embedded("added_tokens.json");
      files.tokenizer_config = g->embedded("tokenizer_config.json");
      files.special_tokens_map = g->embedded("special_tokens_map.json");
    } else {
      files = text::Tokenizer::files_from_llama_cpp_vocab(g->llm.metadata, "fuzz.gguf");
    }
    const text::Tokenizer tok = text::Tokenizer::from_files(files, "fuzz");
    const std::vector<int32_t> ids = tok.encode("Hello <s> world</s>, a red circle");
    (void)tok.decode(ids, false);
  });
}

// A checkpoint's trainer state: trainer_state.json text, then the optimizer.safetensors bytes (cut at the first
// NUL). The JSON goes through parse_checkpoint_state, what resume reads; the optimizer file is restored into an
// AdamW over two small parameters (w [2, 3], b [3]) by load_optimizer_state, which reads it from a checkpoint
// directory: `scratch_dir` (existing) receives it first.
inline void checkpoint_input(const uint8_t* data, size_t size, const std::string& scratch_dir) {
  const std::vector<std::string> parts = split_parts(data, size, 2);
  int64_t step = 0;
  run([&] {
    const train::CheckpointState s = train::parse_checkpoint_state(parts[0], "fuzz trainer_state.json");
    if (s.step < 0 || s.samples_drawn < 0) __builtin_trap();
    step = s.step;
    (void)s.options.dump();
    (void)s.metrics.dump();
    // What resume reads back (train/trainer.cpp): a JSON type error here would escape as an internal error.
    if (s.metrics.is_object() && s.metrics.contains("skipped_samples"))
      (void)s.metrics["skipped_samples"].get<int64_t>();
  });
  {
    std::ofstream f(scratch_dir + "/optimizer.safetensors", std::ios::binary | std::ios::trunc);
    f.write(parts[1].data(), std::streamsize(parts[1].size()));
  }
  std::vector<nn::Var> params{nn::Var(Tensor::zeros({2, 3}), true), nn::Var(Tensor::zeros({3}), true)};
  params[0].set_name("w");
  params[1].set_name("b");
  nn::AdamW opt(params, {});
  train::load_optimizer_state(scratch_dir, opt, step);
}

// User text: a `--data PATH[:FORMAT][:SIZE]` spec, and the same string as a tar-member image reference and as a
// webdataset member name. A reference that parses must survive a round trip through make_tar_member_ref, and a
// member name split into key and extension must be those two joined by a dot.
inline void data_spec_input(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  run([&] {
    const train::DatasetSpec spec = train::parse_dataset_spec(text);
    if (spec.path.empty() || spec.size < 0) __builtin_trap();
    (void)train::data_format_name(spec.format);
  });
  if (const auto ref = train::parse_tar_member_ref(text)) {
    const auto again = train::parse_tar_member_ref(train::make_tar_member_ref(ref->tar_path, ref->offset, ref->size));
    if (!again || again->tar_path != ref->tar_path || again->offset != ref->offset || again->size != ref->size)
      __builtin_trap();
  }
  std::string key, extension;
  if (train::split_webdataset_key(text, key, extension) &&
      (key.empty() || extension.empty() || key.size() + 1 + extension.size() != text.size()))
    __builtin_trap();
}

}  // namespace dl::fuzz
