// DreamLLM comprehension path against the PyTorch reference of tools/fixtures/make_tiny_dreamllm.py: a tiny
// random-weight model in the official directory layout (.bin files), in F32, BF16 and F16.
#include <cstdlib>
#include <filesystem>

#include "core/error.h"
#include "core/ops.h"
#include "io/safetensors.h"
#include "models/dreamllm.h"
#include "nn/autograd.h"
#include "pipelines/comprehend.h"
#include "test_util.h"

namespace dl {
namespace {

const std::string kRoot = std::string(DL_FIXTURE_DIR) + "/tiny_dreamllm";

const io::SafetensorsFile& reference() {
  static const io::SafetensorsFile f = io::read_safetensors(kRoot + "/reference.safetensors");
  return f;
}
Tensor reference_tensor(const std::string& name) { return reference().tensors.at(name); }

struct Loaded {
  io::ModelDir dir;
  models::DreamLLM model;
};
Loaded load(const std::string& variant) {
  io::ModelDir d = io::ModelDir::open(kRoot + "/" + variant);
  return {d, models::DreamLLM::load(d)};
}

TEST(DreamLLM, ForwardMatchesReferenceInEveryWeightDtype) {
  nn::NoGradGuard ng;
  for (const std::string v : {"f32", "bf16", "f16"}) {
    SCOPED_TRACE(v);
    Loaded m = load(v);
    auto out = m.model.forward(reference_tensor("input_ids"), reference_tensor("attention_mask").to(DType::F32), reference_tensor("pixel_values"));
    EXPECT_TRUE(test::close_rel(out.logits.value(), reference_tensor(v + "/logits")));
    EXPECT_TRUE(test::close_rel(out.hidden.value(), reference_tensor(v + "/hidden_states")));
    ASSERT_TRUE(out.conditions.defined());
    EXPECT_EQ(out.conditions.value().shape(), Shape({2, 3, 12}));  // two dream spans, Q = 3, C = 12
    EXPECT_TRUE(test::close_rel(out.conditions.value(), reference_tensor(v + "/dream_conditions")));
  }
}

TEST(DreamLLM, ClipFeaturesAndImageEmbeds) {
  nn::NoGradGuard ng;
  for (const std::string v : {"f32", "bf16"}) {
    SCOPED_TRACE(v);
    Loaded m = load(v);
    nn::Var px(reference_tensor("clip_pixel_values"));
    EXPECT_TRUE(test::close_rel(m.model.vision().features(px, -2).value(), reference_tensor(v + "/clip_features")));
    EXPECT_TRUE(test::close_rel(m.model.image_embeds(px).value(), reference_tensor(v + "/image_embeds")));
  }
}

TEST(DreamLLM, KVCacheDecodingEqualsFullForward) {
  nn::NoGradGuard ng;
  Loaded m = load("f32");
  const models::Llama& llm = m.model.llm();
  const Tensor ids = Tensor::from_vector_i64({1, 5, 9, 17, 3, 22, 40, 2, 11, 6}, {1, 10});
  const Tensor full = llm.forward(llm.embed(ids), Tensor()).value();
  // Prompt of 4 tokens, then one token at a time, through an F32 cache (the other types: test_kv_cache.cpp).
  models::KVCache cache;
  cache.types = {DType::F32, DType::F32};
  std::vector<Tensor> pieces{llm.forward(llm.embed(ids.slice(1, 0, 4).contiguous()), Tensor(), &cache).value()};
  for (int64_t t = 4; t < 10; ++t)
    pieces.push_back(llm.forward(llm.embed(ids.slice(1, t, t + 1).contiguous()), Tensor(), &cache).value());
  EXPECT_EQ(cache.length, 10);
  EXPECT_TRUE(test::close_rel(ops::concat(pieces, 1), full, 1e-5f));
}

TEST(DreamLLM, BatchedEqualsUnbatched) {
  nn::NoGradGuard ng;
  Loaded m = load("f32");
  const Tensor ids = reference_tensor("input_ids"), keep = reference_tensor("attention_mask").to(DType::F32);
  auto batched = m.model.forward(ids, keep, reference_tensor("pixel_values"));
  // Row 1 alone, without its padding (it has no image).
  int64_t len = 0;
  for (float k : keep.select(0, 1).to_vector()) len += k != 0.f;
  const Tensor row1 = ids.slice(0, 1, 2).slice(1, 0, len).contiguous();
  auto alone = m.model.forward(row1, Tensor(), Tensor());
  EXPECT_TRUE(test::close_rel(alone.logits.value(), batched.logits.value().slice(0, 1, 2).slice(1, 0, len), 1e-5f));
  EXPECT_TRUE(test::close_rel(alone.conditions.value(), batched.conditions.value().slice(0, 1, 2), 1e-5f));
}

using test::error_of;

TEST(DreamLLM, BadInputsAreClearErrors) {
  nn::NoGradGuard ng;
  Loaded m = load("f32");
  const Tensor ids = reference_tensor("input_ids"), px = reference_tensor("pixel_values");
  
  EXPECT_NE(error_of([&] { m.model.forward(ids, Tensor(), Tensor()); }).find("<im_start> span(s) but 0 image"),
            std::string::npos);
  EXPECT_NE(error_of([&] { m.model.forward(ids, Tensor(), ops::concat({px, px}, 0)); }).find("4 image(s)"),
            std::string::npos);
  const Tensor cut = ids.slice(1, 0, 5).contiguous();  // an <im_start> whose span runs off the end
  EXPECT_NE(error_of([&] { m.model.forward(cut.slice(0, 0, 1).contiguous(), Tensor(), px.slice(0, 0, 1)); })
                .find("has no room"),
            std::string::npos);
  const Tensor too_long = Tensor::from_vector_i64(std::vector<int64_t>(200, 5), {1, 200});
  EXPECT_NE(error_of([&] { m.model.forward(too_long, Tensor(), Tensor()); }).find("exceed the context"),
            std::string::npos);
  const Tensor bad_id = Tensor::from_vector_i64({1, 64}, {1, 2});
  EXPECT_NE(error_of([&] { m.model.forward(bad_id, Tensor(), Tensor()); }).find("outside the vocabulary"),
            std::string::npos);
  EXPECT_NE(error_of([&] { m.model.forward(ids, Tensor(), px.slice(2, 0, 14)); }).find("pixel_values"),
            std::string::npos);
}

TEST(DreamLLM, RunCommandWritesTheTensorInterface) {
  const std::string out = (std::filesystem::temp_directory_path() / ("dl_run_llm_" + std::to_string(getpid()))).string();
  const std::string cmd = std::string(DL_CLI) + " run llm --model " + kRoot + "/f32 --in " + kRoot +
                          "/reference.safetensors --out " + out + " -t 2";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  io::SafetensorsFile f = io::read_safetensors(out);
  EXPECT_TRUE(test::close_rel(f.tensors.at("logits"), reference_tensor("f32/logits")));
  EXPECT_TRUE(test::close_rel(f.tensors.at("hidden_states"), reference_tensor("f32/hidden_states")));
  EXPECT_TRUE(test::close_rel(f.tensors.at("dream_conditions"), reference_tensor("f32/dream_conditions")));
  const std::string clip_cmd = std::string(DL_CLI) + " run clip --model " + kRoot + "/f32 --in " + out + "x --out " +
                               out + " 2> /dev/null";
  EXPECT_NE(std::system(clip_cmd.c_str()), 0);  // missing input file: non-zero exit
  std::remove(out.c_str());
}

std::vector<int32_t> as_ids(const Tensor& t) {
  std::vector<int32_t> v;
  for (float x : t.to_vector()) v.push_back(int32_t(x));
  return v;
}

TEST(DreamLLMGenerate, GreedyMatchesReferenceWithCacheAndImage) {
  Loaded m = load("f32");
  pipelines::GenerationConfig cfg;
  cfg.max_new_tokens = 8;
  cfg.eos_token_id = -1;  // the reference ran exactly 8 steps
  const auto prompt = as_ids(reference_tensor("greedy/prompt"));
  auto r = pipelines::generate_text(m.model, {prompt}, reference_tensor("pixel_values").slice(0, 0, 1), cfg);
  EXPECT_EQ(r.tokens[0], as_ids(reference_tensor("greedy/tokens")));
}

TEST(DreamLLMGenerate, LeftPaddedBatchEqualsEachPromptAlone) {
  Loaded m = load("f32");
  const auto with_image = as_ids(reference_tensor("greedy/prompt"));
  const std::vector<int32_t> text_only{1, 7, 8, 30, 31};
  const Tensor px = reference_tensor("pixel_values").slice(0, 0, 1);
  for (int64_t beams : {1, 3}) {
    SCOPED_TRACE(beams);
    pipelines::GenerationConfig cfg;
    cfg.max_new_tokens = 6;
    cfg.num_beams = beams;
    auto both = pipelines::generate_text(m.model, {text_only, with_image}, px, cfg);
    auto first = pipelines::generate_text(m.model, {text_only}, Tensor(), cfg);
    auto second = pipelines::generate_text(m.model, {with_image}, px, cfg);
    EXPECT_EQ(both.tokens[0], first.tokens[0]);
    EXPECT_EQ(both.tokens[1], second.tokens[0]);
  }
}

}  // namespace
}  // namespace dl
