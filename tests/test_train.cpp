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
#include "train/trainer.h"

namespace dl {
namespace {

const std::string kModel = std::string(DL_FIXTURE_DIR) + "/tiny_full";

const io::SafetensorsFile& loss_fixture() {
  static const io::SafetensorsFile f = io::read_safetensors(std::string(DL_FIXTURE_DIR) + "/train/loss.safetensors");
  return f;
}
const io::SafetensorsFile& adamw_fixture() {
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
    v.set_value(v.value().to(DType::F32).clone());  // writable (the fixture files are memory-mapped)
    v.set_requires_grad(true);
    params[name] = v;
  }
  // Makes trainable every parameter named by a fixture tensor "<prefix><NAME>".
  void train_listed(const io::SafetensorsFile& f, const std::string& prefix) {
    for (const auto& [key, _] : f.tensors)
      if (key.rfind(prefix, 0) == 0) train(key.substr(prefix.size()));
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

void check_case(const std::string& name, train::LossWeights w, bool recompute = false) {
  SCOPED_TRACE(name);
  Trainable t;
  t.model.set_gradient_checkpointing(recompute);
  const std::string prefix = name + "/grad/";
  t.train_listed(loss_fixture(), prefix);
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
TEST(TrainLoss, GradientCheckpointingGivesTheSameGradients) { check_case("stage2", {1.f, 10.f}, true); }

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

// The diffusion term's variants (tools/fixtures/make_train_fixtures.py, weighted.safetensors): Min-SNR-gamma
// weighting and the v-prediction target, each with the gradients it sends into the LLM side.
void check_weighted(const std::string& name, float snr_gamma, bool v_prediction) {
  SCOPED_TRACE(name);
  const io::SafetensorsFile f = io::read_safetensors(std::string(DL_FIXTURE_DIR) + "/train/weighted.safetensors");
  Trainable t;
  const std::string prefix = name + "/grad/";
  t.train_listed(f, prefix);
  ASSERT_EQ(t.params.size(), 3u);
  io::SchedulerConfig scheduler = t.dir.scheduler_config();
  if (v_prediction) scheduler.prediction_type = "v_prediction";
  const train::DreamLLMObjective objective(t.model, t.head.unet, scheduler);
  train::LossWeights w;
  w.snr_gamma = snr_gamma;
  const train::LossTerms r = objective(fixture_batch(), w);
  EXPECT_NEAR(r.vm_loss, scalar(get(f, name + "/vm_loss")), 1e-4 * scalar(get(f, name + "/vm_loss")));
  EXPECT_NEAR(scalar(r.loss.value()), scalar(get(f, name + "/loss")), 1e-4 * scalar(get(f, name + "/loss")));
  r.loss.backward();
  for (const auto& [n, v] : t.params) {
    SCOPED_TRACE(n);
    EXPECT_TRUE(grad_close(v.grad(), get(f, prefix + n)));
  }
}

TEST(TrainLoss, MinSnrWeightingMatchesTheReference) { check_weighted("minsnr", 5.f, false); }
TEST(TrainLoss, VPredictionTargetMatchesTheReference) { check_weighted("vpred", 0.f, true); }
TEST(TrainLoss, VPredictionWithMinSnrMatchesTheReference) { check_weighted("vpred_minsnr", 5.f, true); }

// The VAE stage's objective (a model built from scratch has no pretrained autoencoder): reconstruction + KL and the
// gradient of every VAE parameter.
// With `with_gain`, the latent draw is decoded times a stored gain per latent pixel (--latent-gain-jitter).
void check_autoencoder(bool with_gain) {
  const io::SafetensorsFile f = io::read_safetensors(std::string(DL_FIXTURE_DIR) + "/train/vae.safetensors");
  const std::string key = with_gain ? "gain/" : "";
  Trainable t;
  t.train_listed(f, "grad/");
  ASSERT_GT(t.params.size(), 40u);
  train::Batch b;
  b.dm_images = get(f, "x");
  b.posterior_noise = get(f, "eps");
  if (with_gain) b.latent_gain = get(f, "gain");
  const train::AutoencoderObjective objective(t.head.vae);
  const train::LossTerms r = objective(b, scalar(get(f, "kl_weight")));
  EXPECT_NEAR(r.rec_loss, scalar(get(f, key + "rec_loss")), 1e-4 * scalar(get(f, key + "rec_loss")));
  EXPECT_NEAR(r.kl_loss, scalar(get(f, "kl_loss")), 1e-4 * scalar(get(f, "kl_loss")));
  EXPECT_NEAR(scalar(r.loss.value()), scalar(get(f, key + "loss")), 1e-4 * scalar(get(f, key + "loss")));
  r.loss.backward();
  for (const auto& [n, v] : t.params) {
    SCOPED_TRACE(n);
    EXPECT_TRUE(grad_close(v.grad().defined() ? v.grad() : Tensor::zeros(v.shape()), get(f, key + "grad/" + n)));
  }
}

TEST(TrainLoss, AutoencoderObjectiveMatchesTheReference) { check_autoencoder(false); }
TEST(TrainLoss, AutoencoderObjectiveWithLatentGainMatchesTheReference) { check_autoencoder(true); }

TEST(TrainLoss, AutoencoderObjectiveRefusesAMisshapenLatentGain) {
  const io::SafetensorsFile f = io::read_safetensors(std::string(DL_FIXTURE_DIR) + "/train/vae.safetensors");
  Trainable t;
  t.train_listed(f, "grad/");
  train::Batch b;
  b.dm_images = get(f, "x");
  b.posterior_noise = get(f, "eps");
  b.latent_gain = Tensor::full({2, 4, 8, 8}, 1.f);  // one gain per channel too: not what the objective takes
  const train::AutoencoderObjective objective(t.head.vae);
  EXPECT_NE(test::error_of([&] { objective(b, 0.f); }).find("one gain per latent pixel"), std::string::npos);
}

// The label-conditioned UNet objective (labelled.safetensors): conditions from summed label embeddings, zero
// padding and zero dropped conditions, and the gradients into the label table and the UNet.
void check_labelled(const std::string& name, bool v_prediction, bool drop_second) {
  SCOPED_TRACE(name);
  const io::SafetensorsFile f = io::read_safetensors(std::string(DL_FIXTURE_DIR) + "/train/labelled.safetensors");
  Trainable t;
  const std::string prefix = name + "/grad/";
  const std::string unet = "stable_diffusion_head.unet.";
  for (const std::string n : {"conv_in.weight", "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"})
    t.train(unet + n);
  nn::Var table(get(f, "table").to(DType::F32).clone(), true);
  io::SchedulerConfig scheduler = t.dir.scheduler_config();
  if (v_prediction) scheduler.prediction_type = "v_prediction";
  const train::LabelConditionedObjective objective(t.head.unet, table, t.model.dream_queries(), scheduler);
  train::Batch b = fixture_batch();
  b.condition_labels = get(f, "labels");
  if (drop_second) b.drop_condition = {false, true};
  const train::LossTerms r = objective(b, {0.f, 1.f});
  EXPECT_NEAR(r.vm_loss, scalar(get(f, name + "/vm_loss")), 1e-4 * scalar(get(f, name + "/vm_loss")));
  EXPECT_NEAR(scalar(r.loss.value()), scalar(get(f, name + "/loss")), 1e-4 * scalar(get(f, name + "/loss")));
  EXPECT_TRUE(std::isnan(r.lm_loss));
  r.loss.backward();
  EXPECT_TRUE(grad_close(table.grad(), get(f, prefix + "table")));
  for (const auto& [n, v] : t.params) {
    SCOPED_TRACE(n);
    EXPECT_TRUE(grad_close(v.grad(), get(f, prefix + n)));
  }
}

TEST(TrainLoss, LabelConditionedObjectiveMatchesTheReference) { check_labelled("eps", false, false); }
TEST(TrainLoss, LabelConditionedObjectiveWithVTargetAndDropMatchesTheReference) {
  check_labelled("vpred_drop", true, true);
}

TEST(TrainLoss, LabelConditionedObjectiveRefusesBadLabels) {
  const io::SafetensorsFile f = io::read_safetensors(std::string(DL_FIXTURE_DIR) + "/train/labelled.safetensors");
  Trainable t;
  const nn::Var table(get(f, "table").to(DType::F32).clone(), false);
  const train::LabelConditionedObjective objective(t.head.unet, table, t.model.dream_queries(),
                                                   t.dir.scheduler_config());
  train::Batch b = fixture_batch();
  EXPECT_NE(test::error_of([&] { objective(b, {0.f, 1.f}); }).find("needs condition labels"), std::string::npos);
  b.condition_labels = Tensor::from_vector_i32({0, 7}, {2, 1, 1});
  EXPECT_NE(test::error_of([&] { objective(b, {0.f, 1.f}); }).find("label 7 is outside the label vocabulary of 7"),
            std::string::npos);
  b.condition_labels = Tensor::from_vector_i32(std::vector<int32_t>(8, 1), {2, 4, 1});
  EXPECT_NE(test::error_of([&] { objective(b, {0.f, 1.f}); }).find("more than the 3 the UNet reads"),
            std::string::npos);
}

TEST(TrainSchedule, CosineWithWarmupFollowsHuggingFace) {
  const Tensor lrs = get(adamw_fixture(), "lrs");
  const int64_t warm = train::warmup_steps(10, 0.15);
  EXPECT_EQ(warm, 2);
  for (int64_t s = 0; s < 10; ++s)
    EXPECT_NEAR(1e-2 * train::cosine_with_warmup(s, 10, warm), lrs.to_vector()[size_t(s)], 1e-9) << "step " << s;
  EXPECT_EQ(train::cosine_with_warmup(0, 100, 0), 1.0);
  EXPECT_NEAR(train::cosine_with_warmup(100, 100, 3), 0.0, 1e-12);
}

// Stage II, ten optimizer steps of two accumulated micro-batches each, clipped at 1.0, AdamW with HF's decay split
// and the cosine warm-up schedule: the trajectory tracks torch.optim.AdamW's.
TEST(TrainAdamW, TenStageIIStepsTrackPyTorch) {
  const auto& f = adamw_fixture();
  const auto& lf = loss_fixture();
  Trainable t;
  std::vector<nn::Var> params;
  std::vector<std::string> names;
  for (const auto& [key, _] : f.tensors)
    if (key.rfind("final/", 0) == 0) names.push_back(key.substr(6));
  // State-dict order of the reference (LLM, vision projector, dream queries, condition projector) does not matter
  // to AdamW; the set does.
  for (const std::string& n : names) {
    t.train(n);
    EXPECT_NO_THROW(train::group_of(n));
    params.push_back(t.params.at(n));
  }
  ASSERT_EQ(params.size(), 25u);
  const float base_lr = scalar(get(f, "config/base_lr")), wd = scalar(get(f, "config/weight_decay"));
  auto opt = train::make_optimizer(params, names, base_lr, wd);
  const train::DreamLLMObjective objective(t.model, t.head.unet, t.dir.scheduler_config());

  const Tensor ids = get(lf, "input_ids"), labels = get(lf, "labels"), mask = get(lf, "attention_mask");
  const Tensor x0 = get(f, "dm_latents"), noise = get(f, "noise");
  const std::vector<int64_t> ts = as_i64(get(f, "timesteps"));
  int64_t len1 = 0;
  for (int64_t j = 0; j < mask.size(1); ++j) len1 += mask.to(DType::I64).data<int64_t>()[mask.size(1) + j];
  const std::vector<float> losses = get(f, "losses").to_vector(), norms = get(f, "grad_norms").to_vector(),
                           lrs = get(f, "lrs").to_vector();
  for (int64_t s = 0; s < 10; ++s) {
    std::vector<train::Batch> mb(2);
    mb[0].input_ids = ids.slice(0, 0, 1).contiguous();
    mb[0].labels = labels.slice(0, 0, 1).contiguous();
    mb[0].attention_mask = mask.slice(0, 0, 1).contiguous();
    mb[0].pixel_values = get(lf, "pixel_values");
    mb[1].input_ids = ids.slice(0, 1, 2).slice(1, 0, len1).contiguous();
    mb[1].labels = labels.slice(0, 1, 2).slice(1, 0, len1).contiguous();
    for (int64_t m = 0; m < 2; ++m) {
      mb[size_t(m)].dm_latents = x0.slice(0, m, m + 1).contiguous();
      mb[size_t(m)].noise = noise.select(0, s).slice(0, m, m + 1).contiguous();
      mb[size_t(m)].timesteps = {ts[size_t(s * 2 + m)]};
    }
    const float lr = float(base_lr * train::cosine_with_warmup(s, 10, train::warmup_steps(10, 0.15)));
    EXPECT_NEAR(lr, lrs[size_t(s)], 1e-8);
    const train::StepLosses r = train::optimizer_step(objective, mb, {1.f, 10.f}, *opt, lr, 1.f);
    EXPECT_NEAR(r.loss, losses[size_t(s)], 1e-4 * losses[size_t(s)]) << "step " << s;
    EXPECT_NEAR(r.grad_norm, norms[size_t(s)], 1e-4 * norms[size_t(s)]) << "step " << s;
    if (s == 2) {
      for (size_t i = 0; i < names.size(); ++i)
        EXPECT_TRUE(test::close_rel(params[i].value(), get(f, "step3/" + names[i]), 1e-4f)) << names[i];
    }
  }
  for (size_t i = 0; i < names.size(); ++i)
    EXPECT_TRUE(test::close_rel(params[i].value(), get(f, "final/" + names[i]), 1e-4f)) << names[i];
}

}  // namespace
}  // namespace dl
