// Free-form interleaved writing on the complete tiny model: what the incremental session feeds back must be the
// training layout exactly, so a single full forward over the written document reproduces every decision.
#include <algorithm>

#include "core/error.h"
#include "io/model_dir.h"
#include "models/dreamllm.h"
#include "pipelines/interleave.h"
#include "test_util.h"
#include "text/tokenizer.h"

namespace dl {
namespace {

const std::string kModel = std::string(DL_FIXTURE_DIR) + "/tiny_full";

struct Loaded {
  io::ModelDir dir = io::ModelDir::open(kModel);
  models::DreamLLM model = models::DreamLLM::load(dir);
  pipelines::DiffusionHead head{dir};
  text::Tokenizer tok = text::Tokenizer::load(kModel);
  io::ClipPreprocessConfig clip = io::clip_preprocess_config(dir);
};

const Loaded& loaded() {
  static const Loaded l;
  return l;
}

pipelines::WriteOptions options(float dream_bias) {
  const Loaded& m = loaded();
  pipelines::WriteOptions o;
  o.text.max_new_tokens = 24;
  // Random weights rarely choose <dream_start>; a bias makes this model draw, as a user's --image-bias would.
  o.text.logit_bias = {{int32_t(m.tok.token_id("<dream_start>")), dream_bias}};
  o.drawing.steps = 3;
  o.drawing.guidance_scale = 3.f;
  o.max_images = 2;
  o.seed = 11;
  return o;
}

pipelines::Document write(const pipelines::WriteOptions& o) {
  const Loaded& m = loaded();
  return pipelines::write_document(m.model, m.head, m.tok, m.clip, m.tok.encode("a red circle"), Tensor(), o);
}

TEST(Interleave, FeedsBackTheTrainingLayout) {
  const Loaded& m = loaded();
  // An F32 KV cache, so that the session and the full forward below agree to float rounding (the default F16 cache
  // moves the conditions by about 1e-3; test_kv_cache.cpp bounds that).
  const models::KVCacheTypes saved = models::default_kv_cache_types();
  models::set_default_kv_cache_types({DType::F32, DType::F32});
  const pipelines::Document doc = write(options(6.f));
  models::set_default_kv_cache_types(saved);
  const int64_t Q = m.model.dream_queries(), P = m.model.image_tokens();
  const int32_t ds = m.tok.token_id("<dream_start>"), de = m.tok.token_id("<dream_end>"),
                is = m.tok.token_id("<im_start>"), ie = m.tok.token_id("<im_end>"), ip = m.tok.token_id("<im_patch>");
  ASSERT_GE(doc.conditions.size(), 1u) << "the biased model drew nothing";
  EXPECT_LE(doc.conditions.size(), 2u);
  // Every <dream_start> opens: Q placeholders, <dream_end>, <im_start>, P placeholders, <im_end>.
  size_t spans = 0;
  for (size_t i = 0; i < doc.ids.size(); ++i) {
    if (doc.ids[i] != ds) continue;
    ++spans;
    ASSERT_LE(i + size_t(Q + P + 4), doc.ids.size());
    for (int64_t q = 0; q < Q; ++q) EXPECT_EQ(doc.ids[i + 1 + size_t(q)], ip);
    EXPECT_EQ(doc.ids[i + 1 + size_t(Q)], de);
    EXPECT_EQ(doc.ids[i + 2 + size_t(Q)], is);
    for (int64_t p = 0; p < P; ++p) EXPECT_EQ(doc.ids[i + 3 + size_t(Q + p)], ip);
    EXPECT_EQ(doc.ids[i + 3 + size_t(Q + P)], ie);
  }
  EXPECT_EQ(spans, doc.conditions.size());
  ASSERT_TRUE(doc.pixel_values.defined());
  EXPECT_EQ(doc.pixel_values.size(0), int64_t(spans));
  size_t images = 0;
  for (const auto& b : doc.blocks) images += b.is_image;
  EXPECT_EQ(images, spans);

  // One full forward over the written document (as training sees it) agrees with the incremental session.
  const int64_t T = int64_t(doc.ids.size());
  const Tensor ids = Tensor::from_vector_i32(doc.ids, {1, T});
  nn::NoGradGuard ng;
  const auto full = m.model.forward(ids, Tensor(), doc.pixel_values);
  ASSERT_EQ(full.conditions.value().size(0), int64_t(spans));
  for (size_t k = 0; k < spans; ++k)
    EXPECT_TRUE(test::close_rel(full.conditions.value().slice(0, int64_t(k), int64_t(k) + 1).contiguous(),
                                doc.conditions[k], 1e-4f));
  // Greedy with the bias: every token the model chose is the argmax of the full forward at the position before it
  // (the host's span contents are skipped; <dream_start> is banned once two images exist).
  const Tensor logits = full.logits.value().contiguous();
  const int64_t V = logits.size(2);
  size_t drawn = 0, checked = 0;
  for (int64_t t = int64_t(doc.prompt_length); t < T; ++t) {
    std::vector<float> row(logits.f32() + (t - 1) * V, logits.f32() + t * V);
    row[size_t(ds)] = drawn >= 2 ? -1e30f : row[size_t(ds)] + 6.f;
    const int32_t best = int32_t(std::max_element(row.begin(), row.end()) - row.begin());
    EXPECT_EQ(best, doc.ids[size_t(t)]) << "position " << t;
    ++checked;
    if (doc.ids[size_t(t)] == ds) {
      ++drawn;
      t += Q + P + 3;  // <dream_start> was the model's; the spans after it are the host's
    }
  }
  EXPECT_GT(checked, spans);
}

TEST(Interleave, SameSeedSameDocument) {
  auto o = options(6.f);
  o.text.do_sample = true;
  o.text.temperature = 0.9;
  o.text.seed = 5;
  const auto a = write(o), b = write(o);
  EXPECT_EQ(a.ids, b.ids);
  ASSERT_EQ(a.blocks.size(), b.blocks.size());
  for (size_t i = 0; i < a.blocks.size(); ++i) {
    EXPECT_EQ(a.blocks[i].text, b.blocks[i].text);
    EXPECT_EQ(a.blocks[i].image.rgb, b.blocks[i].image.rgb);
  }
  o.seed = 12;  // another image seed changes the pictures
  const auto c = write(o);
  bool differs = false;
  for (size_t i = 0; i < std::min(a.blocks.size(), c.blocks.size()); ++i)
    differs |= a.blocks[i].is_image && c.blocks[i].is_image && a.blocks[i].image.rgb != c.blocks[i].image.rgb;
  EXPECT_TRUE(differs);
}

TEST(Interleave, NoImagesWhenBannedAndTheBudgetHolds) {
  auto o = options(6.f);
  o.max_images = 0;
  const auto doc = write(o);
  EXPECT_TRUE(doc.conditions.empty());
  EXPECT_LE(doc.ids.size() - doc.prompt_length, 24u);
  for (const auto& b : doc.blocks) EXPECT_FALSE(b.is_image);
}

}  // namespace
}  // namespace dl
