// The trainer end to end on the complete tiny model and a small dataset written here (PNG images, image-text pairs,
// MMC4 documents, a LLaVA conversation): an interrupted and resumed run equals an uninterrupted one bit for bit,
// every stage trains exactly its preset's parameters, checkpoints load back as model directories, and bad data
// (broken images, malformed lines, empty files, a full disk) is handled as documented.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>

#include <filesystem>
#include <fstream>
#include <optional>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/random.h"
#include "io/image_file.h"
#include "io/model_dir.h"
#include "io/safetensors.h"
#include "models/dreamllm.h"
#include "nn/autograd.h"
#include "test_util.h"
#include "text/tokenizer.h"
#include "train/checkpoint.h"
#include "train/run_dir.h"
#include "train/trainer.h"

namespace dl {
namespace {

namespace fs = std::filesystem;
const std::string kModel = std::string(DL_FIXTURE_DIR) + "/tiny_full";

struct Dataset {
  fs::path dir;
  explicit Dataset(const std::string& tag) : dir(fs::temp_directory_path() / ("dl_trainer_" + tag + "_" +
                                                                                std::to_string(getpid()))) {
    fs::remove_all(dir);
    fs::create_directories(dir);
    const int64_t sizes[][2] = {{28, 28}, {40, 32}, {32, 48}, {30, 30}, {56, 28}, {28, 36}};
    for (int i = 0; i < 6; ++i) {
      io::Image img(sizes[i][0], sizes[i][1]);
      for (size_t k = 0; k < img.rgb.size(); ++k) img.rgb[k] = uint8_t((k * (7 + i * 13) + i * 31) % 256);
      io::write_png(path("img" + std::to_string(i) + ".png"), img);
    }
    std::ofstream(path("broken.png")) << "\x89PNG\r\n\x1a\nnot really";
    std::ofstream pairs(path("pairs.jsonl"));
    const char* captions[] = {"a red circle", "two blue squares", "a green triangle on the left", "a small star"};
    for (int i = 0; i < 4; ++i)
      pairs << nlohmann::json{{"image", "img" + std::to_string(i) + ".png"}, {"caption", captions[i]}}.dump() << "\n";
    std::ofstream docs(path("docs.jsonl"));
    docs << R"({"text_list": ["A red circle.", "It is round.", "A blue square."], "images": [{"path": "img4.png", "matched_text_index": 0}, {"path": "img5.png", "matched_text_index": 2}]})"
         << "\n"
         << R"({"text_list": ["A green triangle.", "Then a star."], "images": [{"path": "img2.png", "matched_text_index": 1}]})"
         << "\n";
    std::ofstream conv(path("llava.json"));
    conv << R"([{"image": "img1.png", "conversations": [{"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "Two squares."}]}])";
  }
  ~Dataset() { fs::remove_all(dir); }
  std::string path(const std::string& name) const { return (dir / name).string(); }
};

train::TrainOptions options(const Dataset& d, const std::string& out, const std::string& stage) {
  train::TrainOptions o;
  o.model = kModel;
  o.out = d.path(out);
  o.data = {train::parse_dataset_spec(d.path("pairs.jsonl")), train::parse_dataset_spec(d.path("docs.jsonl") + ":4"),
            train::parse_dataset_spec(d.path("llava.json") + ":conversation:2")};
  o.stage = train::stage_preset(stage);
  o.learning_rate = 1e-3f;
  o.micro_batch = 2;
  o.grad_accum = 2;
  o.max_steps = 6;
  o.condition_dropout = 0.25f;
  return o;
}

std::map<std::string, Tensor> all_weights(const std::string& dir) {
  std::map<std::string, Tensor> out;
  for (auto& [k, v] : io::ModelDir::open(dir).load()) out[k] = v.to(DType::F32);
  return out;
}

// The training group of a parameter; none for the names outside every group.
std::optional<train::Group> group_or_none(const std::string& name) {
  try {
    return train::group_of(name);
  } catch (const Error&) {
    return std::nullopt;
  }
}

train::TrainEvents collect(std::vector<train::StepReport>& into) {
  train::TrainEvents e;
  e.on_step = [&into](const train::StepReport& r) { into.push_back(r); };
  return e;
}

TEST(Trainer, AResumedRunEqualsAnUninterruptedOne) {
  Dataset d("resume");
  std::vector<train::StepReport> straight, split;
  {
    train::Trainer t(options(d, "a", "II"), collect(straight));
    EXPECT_EQ(t.total_steps(), 6);
    t.run();
  }
  {
    train::Trainer t(options(d, "b", "II"), collect(split));
    t.run(4);
  }
  EXPECT_TRUE(fs::exists(d.path("b/checkpoint-4/trainer_state.json")));
  EXPECT_FALSE(fs::exists(d.path("b/model.safetensors")));  // no final model before the end
  {
    train::TrainOptions o = options(d, "b", "II");
    o.resume = true;
    train::Trainer t(o, collect(split));
    EXPECT_EQ(t.start_step(), 4);
    t.run();
  }
  ASSERT_EQ(straight.size(), 6u);
  ASSERT_EQ(split.size(), 6u);
  for (size_t i = 0; i < 6; ++i) {
    EXPECT_EQ(straight[i].loss, split[i].loss) << "step " << i + 1;
    EXPECT_EQ(straight[i].grad_norm, split[i].grad_norm) << "step " << i + 1;
    EXPECT_EQ(straight[i].tokens, split[i].tokens) << "step " << i + 1;
  }
  const auto a = all_weights(d.path("a")), b = all_weights(d.path("b"));
  ASSERT_EQ(a.size(), b.size());
  for (const auto& [name, t] : a) EXPECT_TRUE(test::bit_equal(t, b.at(name))) << name;
  EXPECT_EQ(test::slurp(d.path("a/checkpoint-6/optimizer.safetensors")),
            test::slurp(d.path("b/checkpoint-6/optimizer.safetensors")));
  // The metrics log of the split run has each step once.
  std::ifstream log(d.path("b/metrics.jsonl"));
  std::string line;
  int64_t expect = 1;
  while (std::getline(log, line)) EXPECT_EQ(nlohmann::json::parse(line)["step"].get<int64_t>(), expect++);
  EXPECT_EQ(expect, 7);
}

// Each stage changes exactly its trainable (or re-initialised) parameters and leaves everything else bit-identical.
TEST(Trainer, EveryStageTrainsExactlyItsPreset) {
  Dataset d("stages");
  const auto before = all_weights(kModel);
  for (const std::string stage : {"I-a", "I-b", "II", "III", "VAE"}) {
    SCOPED_TRACE(stage);
    train::TrainOptions o = options(d, "out_" + stage, stage);
    o.max_steps = 2;
    o.condition_dropout = 0.f;
    train::Trainer(o).run();
    const train::StagePreset p = train::stage_preset(stage);
    const auto after = all_weights(o.out);
    ASSERT_EQ(after.size(), before.size());
    int64_t changed = 0;
    for (const auto& [name, t] : before) {
      const std::optional<train::Group> g = group_or_none(name);
      const bool trains = g && std::find(p.trainable.begin(), p.trainable.end(), *g) != p.trainable.end();
      const bool same = test::bit_equal(after.at(name), t);
      if (!trains) {
        EXPECT_TRUE(same) << name << " is frozen in stage " << stage;
      } else if (!same) {
        ++changed;
      }
    }
    EXPECT_GT(changed, 0);
  }
  // Frozen components are linked or copied, never rewritten: stage I-a's LLM file is the source's.
  EXPECT_TRUE(fs::exists(d.path("out_I-a/pytorch_model.bin")));
  EXPECT_FALSE(fs::exists(d.path("out_I-a/model.safetensors")));
  EXPECT_EQ(test::slurp(d.path("out_I-a/pytorch_model.bin")), test::slurp(kModel + "/pytorch_model.bin"));
}

// Stage UNet: the UNet learns from the pairs' condition labels through a label table of its own; nothing else
// moves, the table is saved beside the weights and a resumed run continues with it bit for bit.
TEST(Trainer, TheUNetStageLearnsFromConditionLabels) {
  Dataset d("unet");
  {
    std::ofstream f(d.path("labelled.jsonl"));
    const char* labels[] = {"[[0, 3]]", "[[1, 4], [2]]", "[[0], [1], [2, 3, 4]]", "[[4]]"};
    for (int i = 0; i < 4; ++i)
      f << R"({"image": "img)" << i << R"(.png", "caption": "c", "condition_labels": )" << labels[i] << "}\n";
  }
  auto labelled = [&](const std::string& out) {
    train::TrainOptions o = options(d, out, "UNet");
    o.data = {train::parse_dataset_spec(d.path("labelled.jsonl"))};
    o.condition_labels = 5;
    o.max_steps = 4;
    return o;
  };
  const auto before = all_weights(kModel);
  std::vector<train::StepReport> straight, split;
  train::Trainer(labelled("a"), collect(straight)).run();
  train::Trainer(labelled("b"), collect(split)).run(2);
  {
    train::TrainOptions o = labelled("b");
    o.resume = true;
    train::Trainer(o, collect(split)).run();
  }
  ASSERT_EQ(straight.size(), 4u);
  ASSERT_EQ(split.size(), 4u);
  for (size_t i = 0; i < 4; ++i) {
    EXPECT_EQ(straight[i].loss, split[i].loss) << "step " << i + 1;
    EXPECT_GT(straight[i].vm_loss, 0.f);
    EXPECT_EQ(straight[i].dream_images, 4);  // every pair is a creation target
  }
  const auto after = all_weights(d.path("a"));
  int64_t changed = 0;
  for (const auto& [name, t] : before) {
    const bool same = test::bit_equal(after.at(name), t);
    if (train::group_of(name) != train::Group::kUNet) {
      EXPECT_TRUE(same) << name << " moved in stage UNet";
    }
    changed += !same;
  }
  EXPECT_GT(changed, 0);
  const auto table = [&](const std::string& dir) {
    return io::read_safetensors(d.path(dir) + "/" + train::kLabelEncoderFile).tensors.at(train::kLabelEmbeddingName);
  };
  EXPECT_EQ(table("a").shape(), Shape({5, 12}));
  EXPECT_TRUE(test::bit_equal(table("a"), table("b")));
  EXPECT_TRUE(fs::exists(d.path("b/checkpoint-2/") + train::kLabelEncoderFile));

  // Pairs without labels, labels outside the vocabulary and a missing vocabulary are refused with the reason.
  train::TrainOptions o = labelled("c");
  o.data = {train::parse_dataset_spec(d.path("pairs.jsonl"))};
  EXPECT_NE(test::error_of([&] { train::Trainer(o).run(); }).find("has no condition_labels"), std::string::npos);
  o = labelled("c");
  o.condition_labels = 4;
  EXPECT_NE(test::error_of([&] { train::Trainer(o).run(); }).find("label 4 is outside the label vocabulary of 4"),
            std::string::npos);
  o = labelled("c");
  o.condition_labels = 0;
  EXPECT_NE(test::error_of([&] { train::Trainer(o).run(); }).find("--condition-labels"), std::string::npos);
}

// The shapes-world recipe ends with a realignment (stage I-a, `--trainable condition_projector,unet --reinit none`):
// the UNet learns the conditions of the LLM that II and III left. Nothing that reads or writes text may move: the
// LLM, the dream queries and the vision side stay bit for bit the source's, and the queries are not drawn afresh.
TEST(Trainer, ARealignmentMovesOnlyTheConditionProjectorAndTheUNet) {
  Dataset d("realign");
  train::TrainOptions o = options(d, "out", "I-a");
  o.stage.trainable = {train::Group::kConditionProjector, train::Group::kUNet};
  o.stage.reinit.clear();
  o.max_steps = 2;
  o.condition_dropout = 0.f;
  train::Trainer(o).run();
  const auto before = all_weights(kModel), after = all_weights(o.out);
  ASSERT_EQ(after.size(), before.size());
  int64_t projector_changed = 0, unet_changed = 0;
  for (const auto& [name, t] : before) {
    const bool same = test::bit_equal(after.at(name), t);
    const std::optional<train::Group> g = group_or_none(name);
    if (g == train::Group::kConditionProjector) {
      projector_changed += !same;
    } else if (g == train::Group::kUNet) {
      unet_changed += !same;
    } else {
      EXPECT_TRUE(same) << name << " moved in a realignment";
    }
  }
  EXPECT_EQ(projector_changed, 1);
  EXPECT_GT(unet_changed, 0);
}

// The posterior cache is transparent: a stage II run whose pictures repeat (4 pairs over 6 steps) gives the same
// losses and weights with the cache as encoding every picture every time.
TEST(Trainer, CachedPosteriorsGiveTheUncachedRun) {
  Dataset d("posteriors");
  std::vector<train::StepReport> cached, fresh;
  train::TrainOptions a = options(d, "cached", "II"), b = options(d, "fresh", "II");
  b.posterior_cache_bytes = 0;
  train::Trainer(a, collect(cached)).run();
  train::Trainer(b, collect(fresh)).run();
  ASSERT_EQ(cached.size(), 6u);
  ASSERT_EQ(fresh.size(), 6u);
  int64_t drawn = 0;
  for (size_t i = 0; i < 6; ++i) {
    EXPECT_EQ(cached[i].vm_loss, fresh[i].vm_loss) << "step " << i + 1;
    EXPECT_EQ(cached[i].loss, fresh[i].loss) << "step " << i + 1;
    drawn += cached[i].dream_images;
  }
  EXPECT_GT(drawn, 4);  // more pictures drawn than there are: some came from the cache
  const auto x = all_weights(a.out), y = all_weights(b.out);
  for (const auto& [name, t] : x) EXPECT_TRUE(test::bit_equal(t, y.at(name))) << name;
}

// --posterior mode: the diffusion targets are the posterior means, so the diffusion loss does not move when the
// VAE's posterior variance does (its quant_conv logvar bias raised by 8: std x e^4), while sampled targets do.
TEST(Trainer, PosteriorModeTargetsTheMean) {
  Dataset d("mode");
  const fs::path wide = d.dir / "wide_posterior";
  fs::copy(kModel, wide, fs::copy_options::recursive);
  std::map<std::string, Tensor> head;
  std::map<std::string, DType> stored;
  const std::string prefix = "stable_diffusion_head.";
  for (auto& [k, v] : io::ModelDir::open(kModel).load())
    if (k.rfind(prefix, 0) == 0) {
      head.emplace(k.substr(prefix.size()), v.to(DType::F32).contiguous());
      stored.emplace(k.substr(prefix.size()), v.dtype());
    }
  Tensor& bias = head.at("vae.quant_conv.bias");
  const int64_t latent = bias.size(0) / 2;
  for (int64_t c = latent; c < 2 * latent; ++c) bias.f32()[c] += 8.f;  // the logvar half
  // Stored back in the fixture's dtype: a BF16 weight and its F32 widening take different GEMM paths, which may
  // differ in the last bits on some OpenBLAS kernel families (Haswell), and only the logvar may differ here.
  for (auto& [k, v] : head) v = v.to(stored.at(k));
  io::write_safetensors((wide / "stable_diffusion_head.safetensors").string(), head);
  fs::remove(wide / "stable_diffusion_head.bin");

  auto first_vm_losses = [&](const std::string& model, bool mode, const std::string& out) {
    train::TrainOptions o = options(d, out, "II");
    o.model = model;
    o.max_steps = 2;
    o.posterior_mode = mode;
    std::vector<train::StepReport> r;
    train::Trainer(o, collect(r)).run();
    EXPECT_EQ(r.size(), 2u);
    std::vector<float> vm;
    for (const auto& s : r) vm.push_back(s.vm_loss);
    return vm;
  };
  const auto mode = first_vm_losses(kModel, true, "mode"), mode_wide = first_vm_losses(wide.string(), true, "mode_w");
  const auto sample = first_vm_losses(kModel, false, "sample"),
             sample_wide = first_vm_losses(wide.string(), false, "sample_w");
  EXPECT_EQ(mode, mode_wide);
  EXPECT_NE(sample, sample_wide);
  EXPECT_NE(mode, sample);
}

// The VAE stage's latent gain moves only what the decoder reads: at the first step the encoder (so the KL term) is
// the plain run's and the reconstruction is not; the gains come from the run's seed, so a rerun repeats them.
TEST(Trainer, LatentGainJitterReachesOnlyTheDecoder) {
  Dataset d("gain");
  std::vector<std::vector<train::StepReport>> runs(3);
  for (int i = 0; i < 3; ++i) {
    train::TrainOptions o = options(d, "out" + std::to_string(i), "VAE");
    o.max_steps = 1;
    o.stage.latent_gain_jitter = i == 0 ? 0.f : 0.5f;
    train::Trainer(o, collect(runs[size_t(i)])).run();
    ASSERT_EQ(runs[size_t(i)].size(), 1u);
  }
  const train::StepReport &plain = runs[0][0], &gain = runs[1][0], &again = runs[2][0];
  EXPECT_EQ(plain.kl_loss, gain.kl_loss);
  EXPECT_NE(plain.rec_loss, gain.rec_loss);
  EXPECT_EQ(gain.rec_loss, again.rec_loss);
  EXPECT_EQ(gain.grad_norm, again.grad_norm);
}

// A group's learning-rate factor: 0 keeps it exactly where it was while the rest of the stage trains, and a
// factor of 1 is the plain run.
TEST(Trainer, LearningRateFactorsApplyPerGroup) {
  Dataset d("lrscale");
  train::TrainOptions o = options(d, "zero", "II");
  o.max_steps = 2;
  o.condition_dropout = 0.f;
  o.lr_scale = {{train::Group::kLLM, 0.f}};
  o.stage.reinit.clear();  // stage II starts the added tokens' rows fresh, which is not a step
  train::Trainer(o).run();
  train::TrainOptions plain = options(d, "plain", "II"), one = options(d, "one", "II");
  plain.max_steps = one.max_steps = 2;
  plain.condition_dropout = one.condition_dropout = 0.f;
  one.lr_scale = {{train::Group::kLLM, 1.f}};
  train::Trainer(plain).run();
  train::Trainer(one).run();
  const auto before = all_weights(kModel), zero = all_weights(o.out), a = all_weights(plain.out),
             b = all_weights(one.out);
  int64_t llm = 0, others_moved = 0;
  for (const auto& [name, t] : before) {
    EXPECT_TRUE(test::bit_equal(a.at(name), b.at(name))) << name;
    const train::Group g = [&] {
      try {
        return train::group_of(name);
      } catch (const Error&) {
        return train::Group::kVAE;
      }
    }();
    if (g == train::Group::kLLM) {
      ++llm;
      EXPECT_TRUE(test::bit_equal(zero.at(name), t)) << name << " moved with a factor of 0";
    } else if (!test::bit_equal(zero.at(name), t)) {
      ++others_moved;
    }
  }
  EXPECT_GT(llm, 0);
  EXPECT_GT(others_moved, 0);
}

TEST(Trainer, StageIaStartsTheDreamQueriesAndProjectorFresh) {
  Dataset d("reinit");
  train::TrainOptions o = options(d, "out", "I-a");
  o.max_steps = 1;
  o.learning_rate = 1e-30f;  // practically no update: the saved values are the initialisation
  o.warmup_ratio = 0.f;
  train::Trainer(o).run();
  const auto w = all_weights(o.out);
  const Tensor q = w.at("model.dream_embedding.dream_queries");
  double sum = 0, sq = 0;
  for (float x : q.to_vector()) sum += x, sq += double(x) * x;
  const double n = double(q.numel()), sd = std::sqrt(sq / n - (sum / n) * (sum / n));
  EXPECT_NEAR(sd, 0.02, 0.006);  // N(0, 0.02) over 96 values
  const Tensor proj = w.at("stable_diffusion_head.projector.projector.weight");  // [12, 32]: U(+-1/sqrt(32))
  float peak = 0;
  for (float x : proj.to_vector()) peak = std::max(peak, std::fabs(x));
  EXPECT_LE(peak, 1.f / std::sqrt(32.f));
  EXPECT_GT(peak, 0.8f / std::sqrt(32.f));
  EXPECT_FALSE(test::bit_equal(proj, all_weights(kModel).at("stable_diffusion_head.projector.projector.weight")));
}

// Covariance of rows [N, C] around their mean, divided by N - 1 (numpy.cov), written out here independently of
// the trainer's.
std::vector<double> covariance(const std::vector<double>& x, int64_t C) {
  const int64_t N = int64_t(x.size()) / C;
  std::vector<double> mean(size_t(C), 0.0), cov(size_t(C * C), 0.0);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t i = 0; i < C; ++i) mean[size_t(i)] += x[size_t(n * C + i)] / double(N);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t i = 0; i < C; ++i)
      for (int64_t j = 0; j < C; ++j)
        cov[size_t(i * C + j)] +=
            (x[size_t(n * C + i)] - mean[size_t(i)]) * (x[size_t(n * C + j)] - mean[size_t(j)]) / double(N - 1);
  return cov;
}

// ZCA whitening by its definition: the symmetric S with S Sigma S = I, for correlated rows of very different
// spreads (scales 2 to 1/8, plus a mean that must not count).
TEST(Trainer, WhiteningMatrixGivesIdentityCovariance) {
  const int64_t N = 400, C = 5;
  Rng rng(3);
  std::vector<double> x(size_t(N * C));
  for (int64_t n = 0; n < N; ++n) {
    double z[C];
    for (double& v : z) v = rng.normal();
    for (int64_t i = 0; i < C; ++i) {
      double v = 1.0 + double(i);  // a mean that must not count
      for (int64_t k = 0; k <= i; ++k) v += z[k] * std::pow(2.0, 1.0 - double(k)) * (k == i ? 1.0 : 0.3);
      x[size_t(n * C + i)] = v;
    }
  }
  const Tensor S = train::whitening_matrix(x, C, 1e-12);  // a floor far below every variance: exact ZCA
  ASSERT_EQ(S.shape(), Shape({C, C}));
  const std::vector<double> cov = covariance(x, C);
  const float* s = S.f32();
  for (int64_t i = 0; i < C; ++i)
    for (int64_t j = 0; j < C; ++j) {
      EXPECT_EQ(s[i * C + j], s[j * C + i]);
      double v = 0;  // (S cov S)[i, j]
      for (int64_t a = 0; a < C; ++a)
        for (int64_t b = 0; b < C; ++b) v += double(s[i * C + a]) * cov[size_t(a * C + b)] * double(s[b * C + j]);
      EXPECT_NEAR(v, i == j ? 1.0 : 0.0, 1e-4) << i << ", " << j;
    }
  EXPECT_NE(test::error_of([] { train::whitening_matrix({1, 2, 3}, 3); }).find("at least 2 rows"), std::string::npos);
  EXPECT_NE(test::error_of([] { train::whitening_matrix({1, 2, 1, 2}, 2); }).find("do not vary"), std::string::npos);
}

// --whiten-condition: the saved projector gives the conditions of the data's captions (read as creation prompts)
// identity covariance, measured here with the saved model; a stage without creation refuses it.
TEST(Trainer, WhitenedConditionsHaveIdentityCovariance) {
  Dataset d("whiten");
  const char* colours[] = {"red", "blue", "green", "small", "large"};
  const char* things[] = {"circle", "square", "triangle", "star", "cross", "dot", "line", "ring"};
  std::vector<std::string> captions;
  {
    std::ofstream pairs(d.path("many.jsonl"));
    for (int i = 0; i < 40; ++i) {
      captions.push_back(std::string("a ") + colours[i % 5] + " " + things[(i * 3) % 8] + (i % 2 ? " on the left" : ""));
      pairs << nlohmann::json{{"image", "img" + std::to_string(i % 4) + ".png"}, {"caption", captions.back()}}.dump()
            << "\n";
    }
  }
  train::TrainOptions o = options(d, "out", "I-a");
  o.data = {train::parse_dataset_spec(d.path("many.jsonl"))};
  o.max_steps = 1;
  o.learning_rate = 1e-30f;  // practically no update: the saved projector is the whitened one
  o.warmup_ratio = 0.f;
  o.whiten_condition = 40;
  train::Trainer(o).run();

  const io::ModelDir md = io::ModelDir::open(o.out);
  const models::DreamLLM m = models::DreamLLM::load(md);
  const text::Tokenizer tok = text::Tokenizer::load(o.out);
  nn::NoGradGuard ng;
  std::vector<double> rows;
  int64_t C = 0;
  for (const std::string& c : captions) {
    std::vector<int64_t> ids{md.config().token_id("<s>")};
    for (int32_t t : tok.encode(c, false)) ids.push_back(t);
    ids.push_back(md.config().token_id("<dream_start>"));
    for (int64_t q = 0; q < m.dream_queries(); ++q) ids.push_back(md.config().token_id("<im_patch>"));
    ids.push_back(md.config().token_id("<dream_end>"));
    const Tensor cond =
        m.forward(Tensor::from_vector_i64(ids, {1, int64_t(ids.size())}), Tensor(), Tensor()).conditions.value();
    C = cond.size(2);
    for (float v : cond.to(DType::F32).to_vector()) rows.push_back(v);
  }
  ASSERT_EQ(int64_t(rows.size()), 40 * m.dream_queries() * C);
  const std::vector<double> cov = covariance(rows, C);
  for (int64_t i = 0; i < C; ++i)
    for (int64_t j = 0; j < C; ++j) EXPECT_NEAR(cov[size_t(i * C + j)], i == j ? 1.0 : 0.0, 2e-3) << i << ", " << j;
  EXPECT_FALSE(test::bit_equal(all_weights(o.out).at("stable_diffusion_head.projector.projector.weight"),
                               all_weights(kModel).at("stable_diffusion_head.projector.projector.weight")));

  train::TrainOptions b = options(d, "out_b", "I-b");
  b.whiten_condition = 8;
  EXPECT_NE(test::error_of([&] { train::Trainer t(b); }).find("--whiten-condition needs a stage that trains creation"),
            std::string::npos);
}

TEST(Trainer, BadImagesAndMalformedLinesAreSkippedAndCounted) {
  Dataset d("bad");
  {
    std::ofstream f(d.path("pairs.jsonl"), std::ios::app);
    f << R"({"image": "broken.png", "caption": "broken"})" << "\n"
      << R"({"image": "missing.png", "caption": "missing"})" << "\n"
      << "{not json\n"
      << R"({"image": "img0.png", "caption": "out of range", "n": 1e999})" << "\n";
  }
  std::vector<std::string> warnings;
  train::TrainOptions o = options(d, "out", "II");
  o.data.resize(1);  // the pairs only
  o.max_steps = 4;
  train::TrainEvents ev;
  ev.on_warning = [&](const std::string& w) { warnings.push_back(w); };
  train::StepReport last;
  ev.on_step = [&](const train::StepReport& r) { last = r; };
  train::Trainer(o, ev).run();
  EXPECT_GT(last.skipped_samples, 0);
  EXPECT_GE(last.skipped_records, 1);
  bool line7 = false, line8 = false, broken = false, missing = false;
  for (const std::string& w : warnings) {
    line7 = line7 || w.find("pairs.jsonl:7") != std::string::npos;
    line8 = line8 || w.find("pairs.jsonl:8") != std::string::npos;
    broken = broken || w.find("broken.png") != std::string::npos;
    missing = missing || w.find("missing.png") != std::string::npos;
  }
  EXPECT_TRUE(line7);
  EXPECT_TRUE(line8);
  EXPECT_TRUE(broken);
  EXPECT_TRUE(missing);
}

// Webdataset shards feed the same stream: images are read from inside the tar.
TEST(Trainer, TrainsFromWebdatasetShards) {
  Dataset d("wds");
  train::TrainOptions o = options(d, "out", "II");
  o.data = {train::parse_dataset_spec(std::string(DL_FIXTURE_DIR) + "/webdataset/pairs.tar"),
            train::parse_dataset_spec(d.path("docs.jsonl"))};
  o.max_steps = 3;
  train::StepReport total;
  train::TrainEvents ev;
  ev.on_step = [&](const train::StepReport& r) {
    total.images += r.images;
    total.dream_images += r.dream_images;
    total.skipped_samples += r.skipped_samples;
  };
  train::Trainer t(o, ev);
  t.run();
  EXPECT_GT(total.images + total.dream_images, 0);
  EXPECT_EQ(total.skipped_samples, 0);
  EXPECT_TRUE(fs::exists(d.path("out/model.safetensors")));
}

TEST(Trainer, EmptyOrUnusableDatasetsAreRefused) {
  Dataset d("empty");
  std::ofstream(d.path("empty.jsonl")) << "\n\n";
  train::TrainOptions o = options(d, "out", "II");
  o.data = {train::parse_dataset_spec(d.path("empty.jsonl") + ":pair")};
  EXPECT_NE(test::error_of([&] { train::Trainer t(o); }).find("has no usable records"), std::string::npos);
  o.data = {train::parse_dataset_spec(d.path("nothing_here.jsonl"))};
  EXPECT_NE(test::error_of([&] { train::Trainer t(o); }).find("nothing_here.jsonl"), std::string::npos);
  o.data = {train::parse_dataset_spec(d.path("pairs.jsonl"))};
  o.out = kModel;
  EXPECT_NE(test::error_of([&] { train::Trainer t(o); }).find("is the model directory"), std::string::npos);
}

TEST(TrainData, DatasetSpecsParse) {
  auto s = train::parse_dataset_spec("/d/a.jsonl:pair:500");
  EXPECT_EQ(s.path, "/d/a.jsonl");
  EXPECT_EQ(s.format, train::DataFormat::kPair);
  EXPECT_EQ(s.size, 500);
  s = train::parse_dataset_spec("c:/x/mmc4.jsonl:1000");
  EXPECT_EQ(s.path, "c:/x/mmc4.jsonl");
  EXPECT_EQ(s.format, train::DataFormat::kAuto);
  s = train::parse_dataset_spec("shards.tar:wds");
  EXPECT_EQ(s.format, train::DataFormat::kWebDataset);
  EXPECT_NE(test::error_of([] { train::parse_dataset_spec(":pair"); }).find("names no file"), std::string::npos);
  EXPECT_NE(test::error_of([] { train::parse_dataset_spec("a.jsonl:0"); }).find("must be positive"),
            std::string::npos);
}

// The mixture draws datasets in proportion to their declared sizes and is a pure function of the seed.
TEST(TrainData, MixingFollowsDeclaredSizesAndTheSeed) {
  Dataset d("mix");
  auto draw = [&](uint64_t seed) {
    train::MixedStream s({train::parse_dataset_spec(d.path("pairs.jsonl") + ":300"),
                          train::parse_dataset_spec(d.path("docs.jsonl") + ":100")},
                         seed, 3, {});
    std::vector<size_t> which;
    for (int i = 0; i < 2000; ++i) which.push_back(s.next().dataset);
    return which;
  };
  const auto a = draw(7), b = draw(7), c = draw(8);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
  const double first = double(std::count(a.begin(), a.end(), size_t(0))) / double(a.size());
  EXPECT_NEAR(first, 0.75, 0.04);
}

TEST(TrainData, DiffusionImagesAreResizedCroppedAndScaled) {
  io::Image img(6, 4);  // wide: shorter side 4 -> R
  for (size_t k = 0; k < img.rgb.size(); ++k) img.rgb[k] = uint8_t(k * 10 % 256);
  const Tensor t = train::diffusion_pixels(img, 4);  // no resize; centre crop of width 6 -> offset 1
  ASSERT_EQ(t.shape(), Shape({3, 4, 4}));
  for (int64_t c = 0; c < 3; ++c)
    for (int64_t y = 0; y < 4; ++y)
      for (int64_t x = 0; x < 4; ++x)
        EXPECT_FLOAT_EQ(t.f32()[(c * 4 + y) * 4 + x], (float(img.at(x + 1, y, c)) / 255.f - 0.5f) / 0.5f);
}

// The command: progress and metrics, and a disk that fills during a checkpoint leaves the previous one intact.
TEST(TrainCli, ADiskFullDuringACheckpointKeepsThePreviousOne) {
  Dataset d("cli");
  const std::string args = "train --stage II -m " + kModel + " --data " + d.path("pairs.jsonl") + " -o " +
                           d.path("out") + " --max-steps 2 --save-every 1 -b 2 -t 1";
  const auto ok = test::cli(args + " --stop-after 1");
  ASSERT_EQ(ok.code, 0) << ok.err;
  EXPECT_NE(ok.err.find("step 1/2 | loss"), std::string::npos) << ok.err;
  EXPECT_TRUE(fs::exists(d.path("out/checkpoint-1/model.safetensors")));
  const std::string saved = test::slurp(d.path("out/checkpoint-1/model.safetensors"));
  // A 64 KiB file-size limit: the LLM file of the next checkpoint (about 180 KB) cannot be written.
  const auto full = test::cli(args + " --resume", "", "ulimit -f 64; ");
  EXPECT_EQ(full.code, 1) << full.err;
  EXPECT_NE(full.err.find("could not save checkpoint"), std::string::npos) << full.err;
  EXPECT_NE(full.err.find("earlier checkpoints are intact"), std::string::npos) << full.err;
  EXPECT_FALSE(fs::exists(d.path("out/checkpoint-2")));
  EXPECT_FALSE(fs::exists(d.path("out/.checkpoint-2.tmp")));
  EXPECT_EQ(test::slurp(d.path("out/checkpoint-1/model.safetensors")), saved);
  // And the run goes on from it once there is room.
  const auto resumed = test::cli(args + " --resume");
  EXPECT_EQ(resumed.code, 0) << resumed.err;
  EXPECT_NE(resumed.err.find("resuming after step 1"), std::string::npos) << resumed.err;
  EXPECT_TRUE(fs::exists(d.path("out/model.safetensors")));
  EXPECT_NO_THROW(models::DreamLLM::load(io::ModelDir::open(d.path("out"))));
}

TEST(TrainCli, BadUsageExitsWithAMessage) {
  const auto no_data = test::cli("train -m " + kModel + " -o /tmp/x");
  EXPECT_EQ(no_data.code, 2);
  EXPECT_NE(no_data.err.find("--data"), std::string::npos);
  const auto stage = test::cli("train --stage IV -m " + kModel + " --data a.jsonl -o /tmp/x");
  EXPECT_EQ(stage.code, 2);
  EXPECT_NE(stage.err.find("unknown stage 'IV'"), std::string::npos);
  const auto group = test::cli("train --trainable lora -m " + kModel + " --data a.jsonl -o /tmp/x");
  EXPECT_EQ(group.code, 2);
  EXPECT_NE(group.err.find("unknown parameter group 'lora'"), std::string::npos);
  const auto factor = test::cli("train --lr-scale vision_tower=fast -m " + kModel + " --data a.jsonl -o /tmp/x");
  EXPECT_EQ(factor.code, 2);
  EXPECT_NE(factor.err.find("GROUP=FACTOR"), std::string::npos);
  const auto posterior = test::cli("train --posterior mean -m " + kModel + " --data a.jsonl -o /tmp/x");
  EXPECT_EQ(posterior.code, 2);
  EXPECT_NE(posterior.err.find("--posterior"), std::string::npos);
  const auto labels = test::cli("train --stage II --condition-labels 22 -m " + kModel + " --data a.jsonl -o /tmp/x");
  EXPECT_EQ(labels.code, 2);
  EXPECT_NE(labels.err.find("--condition-labels applies to stage UNet only"), std::string::npos);
  const auto vocabulary = test::cli("train --stage UNet --condition-labels 0 -m " + kModel + " --data a.jsonl -o /tmp/x");
  EXPECT_EQ(vocabulary.code, 2);
}

// The per-step losses a run logged, by step; each step must appear once.
std::map<int64_t, double> logged_losses(const std::string& metrics) {
  std::map<int64_t, double> out;
  std::ifstream f(metrics);
  std::string line;
  while (std::getline(f, line)) {
    const auto j = nlohmann::json::parse(line);
    EXPECT_TRUE(out.emplace(j["step"].get<int64_t>(), j["loss"].get<double>()).second) << "step logged twice: " << line;
  }
  return out;
}

std::vector<std::string> checkpoint_names(const std::string& out) {
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(out))
    if (e.path().filename().string().starts_with("checkpoint-")) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

// With the default --save-total-limit (2), a run resumed from checkpoint-4 kept linking its frozen weights and
// configs from checkpoint-4 after the pruner had removed it, and failed at checkpoint-10.
TEST(TrainCli, AResumeWithDefaultOptionsRunsToTheEnd) {
  Dataset d("resume_defaults");
  const std::string args = "train --stage II -m " + kModel + " --data " + d.path("pairs.jsonl") +
                           " --max-steps 20 --save-every 2 -b 2 -t 1 -q -o ";
  ASSERT_EQ(test::cli(args + d.path("straight")).code, 0);
  const auto first = test::cli(args + d.path("split") + " --stop-after 4");
  ASSERT_EQ(first.code, 0) << first.err;
  EXPECT_EQ(checkpoint_names(d.path("split")), (std::vector<std::string>{"checkpoint-2", "checkpoint-4"}));
  const auto rest = test::cli(args + d.path("split") + " --resume");
  ASSERT_EQ(rest.code, 0) << rest.err;
  // Done: the newest two are kept, the starting checkpoint pruned once nothing links from it.
  EXPECT_EQ(checkpoint_names(d.path("split")), (std::vector<std::string>{"checkpoint-18", "checkpoint-20"}));
  const auto a = all_weights(d.path("straight")), b = all_weights(d.path("split"));
  ASSERT_EQ(a.size(), b.size());
  for (const auto& [name, t] : a) EXPECT_TRUE(test::bit_equal(t, b.at(name))) << name;
  const auto la = logged_losses(d.path("straight/metrics.jsonl")), lb = logged_losses(d.path("split/metrics.jsonl"));
  EXPECT_EQ(la.size(), 20u);
  EXPECT_EQ(la, lb);
  // Slices resumed one after another get there too.
  ASSERT_EQ(test::cli(args + d.path("sliced") + " --stop-after 4").code, 0);
  for (int stop : {8, 12, 16}) {
    const auto r = test::cli(args + d.path("sliced") + " --resume --stop-after " + std::to_string(stop));
    ASSERT_EQ(r.code, 0) << "slice to " << stop << ": " << r.err;
  }
  ASSERT_EQ(test::cli(args + d.path("sliced") + " --resume").code, 0);
  EXPECT_EQ(logged_losses(d.path("sliced/metrics.jsonl")), la);
}

// One directory holds one run: a fresh run does not mix with (or lose its checkpoints to) an earlier one, --resume
// continues only the same run, and a checkpoint folder is not an output directory.
TEST(TrainCli, AnOutputDirectoryHoldsOneRun) {
  Dataset d("one_run");
  const std::string common = "train --stage II -m " + kModel + " --save-every 2 -b 2 -t 1 -q -o " + d.path("out");
  const std::string data = " --data " + d.path("pairs.jsonl"), args = common + data + " --max-steps 6";
  ASSERT_EQ(test::cli(args).code, 0);
  const std::string model_before = test::slurp(d.path("out/model.safetensors"));

  const auto fresh = test::cli(args);
  EXPECT_EQ(fresh.code, 1);
  EXPECT_NE(fresh.err.find("already holds an earlier run"), std::string::npos) << fresh.err;
  EXPECT_NE(fresh.err.find("--overwrite"), std::string::npos) << fresh.err;
  EXPECT_EQ(test::slurp(d.path("out/model.safetensors")), model_before);

  const auto other_lr = test::cli(args + " --resume --lr 1e-3");
  EXPECT_EQ(other_lr.code, 1);
  EXPECT_NE(other_lr.err.find("--lr 2e-05 (now 0.001)"), std::string::npos) << other_lr.err;
  const auto other_steps = test::cli(common + data + " --resume --max-steps 8");
  EXPECT_EQ(other_steps.code, 1);
  EXPECT_NE(other_steps.err.find("--max-steps 6 (now 8)"), std::string::npos) << other_steps.err;
  const auto other_data = test::cli(common + data + " --data " + d.path("docs.jsonl") + " --resume --max-steps 6");
  EXPECT_EQ(other_data.code, 1);
  EXPECT_NE(other_data.err.find("--data"), std::string::npos) << other_data.err;

  // --overwrite starts again: the old run's checkpoint-6 is gone, not kept as the "newest" by the pruner.
  const auto again = test::cli(common + data + " --overwrite --max-steps 4 --save-total-limit 1");
  ASSERT_EQ(again.code, 0) << again.err;
  EXPECT_EQ(checkpoint_names(d.path("out")), std::vector<std::string>{"checkpoint-4"});
  EXPECT_EQ(logged_losses(d.path("out/metrics.jsonl")).size(), 4u);

  for (const char* resume : {"", " --resume"}) {
    const auto into_checkpoint = test::cli("train --stage II -m " + kModel + " --data " + d.path("pairs.jsonl") +
                                           " --max-steps 2 -b 2 -t 1 -q -o " + d.path("out/checkpoint-4") + resume);
    EXPECT_EQ(into_checkpoint.code, 1) << resume;
    EXPECT_NE(into_checkpoint.err.find("is a checkpoint of another run"), std::string::npos) << into_checkpoint.err;
  }
  EXPECT_EQ(fs::exists(d.path("out/checkpoint-4/model.safetensors")), true);
}

// A damaged data position (found by fuzz_checkpoint) made --resume replay 10^12 draws, i.e. hang.
TEST(TrainCli, AnImpossibleDataPositionIsRefusedNotReplayed) {
  Dataset d("position");
  const std::string args = "train --stage II -m " + kModel + " --data " + d.path("pairs.jsonl") +
                           " --max-steps 4 -b 2 -t 1 -q -o " + d.path("out");
  ASSERT_EQ(test::cli(args + " --stop-after 2").code, 0);
  const std::string state = d.path("out/checkpoint-2/trainer_state.json");
  nlohmann::json js = nlohmann::json::parse(test::slurp(state));
  js["samples_drawn"] = int64_t(1) << 40;
  std::ofstream(state) << js.dump();
  const auto r = test::cli(args + " --resume");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("samples_drawn 1099511627776 is more than 2 steps can have drawn"), std::string::npos) << r.err;
}

TEST(TrainCli, ASecondTrainerOnTheSameDirectoryStopsNamingTheFirst) {
  Dataset d("lock");
  const std::string args = "train --stage II -m " + kModel + " --data " + d.path("pairs.jsonl") +
                           " --max-steps 2 -b 2 -t 1 -q -o " + d.path("out");
  {
    train::RunDirectory held(d.path("out"));  // this process is the first trainer
    const auto second = test::cli(args);
    EXPECT_EQ(second.code, 1);
    EXPECT_NE(second.err.find("in use by another trainer (pid " + std::to_string(getpid()) + ")"),
              std::string::npos)
        << second.err;
    EXPECT_FALSE(fs::exists(d.path("out/metrics.jsonl")));
  }
  const auto after = test::cli(args);  // released
  EXPECT_EQ(after.code, 0) << after.err;
  // An output that cannot be a directory is an error in the inputs (1), not an internal error.
  const auto unwritable = test::cli("train --stage II -m " + kModel + " --data " + d.path("pairs.jsonl") +
                                    " --max-steps 2 -q -o " + d.path("pairs.jsonl") + "/sub");
  EXPECT_EQ(unwritable.code, 1) << unwritable.err;
  EXPECT_NE(unwritable.err.find("cannot create the output directory"), std::string::npos) << unwritable.err;
}

// kill -9 at random moments (many of them inside a checkpoint, which is written at every step): every checkpoint
// left behind is complete, and resuming again and again ends in the model and losses of an uninterrupted run.
TEST(TrainCli, KilledAtRandomMomentsItResumesToTheSameRun) {
  Dataset d("kill");
  const std::string args = " train --stage II -m " + kModel + " --data " + d.path("pairs.jsonl") +
                           " --max-steps 24 --save-every 1 --save-total-limit 3 -b 2 -t 1 -q -o ";
  const auto t0 = std::chrono::steady_clock::now();
  ASSERT_EQ(test::cli(args + d.path("straight")).code, 0);
  // Kill delays scale with this machine's (or sanitizer build's) speed: up to 0.3 of a whole run, so that at least
  // three runs are killed before one can finish.
  const double whole_run_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  const std::string out = d.path("killed");
  const std::string command = "exec " + std::string(DL_CLI) + args + out + " --resume > /dev/null 2>&1";
  Rng rng(2024);
  int kills = 0, runs = 0;
  bool finished = false;
  while (!finished && runs < 80) {
    ++runs;
    const pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      execl("/bin/sh", "sh", "-c", command.c_str(), static_cast<char*>(nullptr));
      _exit(127);
    }
    // Every run is killed within 0.3 of a whole run's time (the last runs have less left to do and finish), until
    // the 40th, which is let finish.
    if (runs < 40) {
      usleep(useconds_t(1000.0 * whole_run_ms * (0.03 + 0.27 * rng.uniform())));
      kill(pid, SIGKILL);
    }
    int status = 0;
    ASSERT_EQ(waitpid(pid, &status, 0), pid);
    if (WIFEXITED(status)) {
      ASSERT_EQ(WEXITSTATUS(status), 0) << "run " << runs << " failed";
      finished = true;
    } else {
      ASSERT_TRUE(WIFSIGNALED(status));
      ++kills;
    }
    if (!fs::exists(out)) continue;
    for (const std::string& name : checkpoint_names(out)) {
      EXPECT_TRUE(fs::exists(out + "/" + name + "/trainer_state.json")) << name << " after run " << runs;
      EXPECT_TRUE(fs::exists(out + "/" + name + "/optimizer.safetensors")) << name << " after run " << runs;
      EXPECT_TRUE(fs::exists(out + "/" + name + "/model.safetensors")) << name << " after run " << runs;
    }
  }
  ASSERT_TRUE(finished) << kills << " kills in " << runs << " runs and never finished";
  EXPECT_GE(kills, 3) << "the runs finished too fast to be interrupted";
  std::printf("%d kills in %d runs\n", kills, runs);
  const auto a = all_weights(d.path("straight")), b = all_weights(out);
  ASSERT_EQ(a.size(), b.size());
  for (const auto& [name, t] : a) EXPECT_TRUE(test::bit_equal(t, b.at(name))) << name;
  EXPECT_EQ(logged_losses(out + "/metrics.jsonl"), logged_losses(d.path("straight/metrics.jsonl")));
  EXPECT_EQ(checkpoint_names(out), (std::vector<std::string>{"checkpoint-22", "checkpoint-23", "checkpoint-24"}));
}

TEST(RunLoss, TheTensorInterfaceReturnsLossesAndNamedGradients) {
  const std::string dir = (fs::temp_directory_path() / ("dl_runloss_" + std::to_string(getpid()))).string();
  fs::create_directories(dir);
  const io::SafetensorsFile fx = io::read_safetensors(std::string(DL_FIXTURE_DIR) + "/train/loss.safetensors");
  std::map<std::string, Tensor> in;
  for (const char* n : {"input_ids", "labels", "attention_mask", "pixel_values", "dm_latents", "noise", "timesteps"})
    in[n] = fx.tensors.at(n);
  io::write_safetensors(dir + "/in.safetensors", in);
  const std::string q = "model.dream_embedding.dream_queries", u = "stable_diffusion_head.unet.conv_in.weight";
  const auto r = test::cli("run loss --model " + kModel + " --in " + dir + "/in.safetensors --out " + dir +
                           "/out.safetensors --grads " + q + "," + u);
  ASSERT_EQ(r.code, 0) << r.err;
  const io::SafetensorsFile out = io::read_safetensors(dir + "/out.safetensors");
  // The model's config weights are (1, 10): the reference's stage-II case.
  EXPECT_TRUE(test::close_rel(out.tensors.at("loss"), fx.tensors.at("stage2/loss"), 1e-4f));
  EXPECT_TRUE(test::close_rel(out.tensors.at("grad/" + q), fx.tensors.at("stage2/grad/" + q), 1e-4f));
  EXPECT_TRUE(test::close_rel(out.tensors.at("grad/" + u), fx.tensors.at("stage2/grad/" + u), 1e-4f));
  const auto bad = test::cli("run loss --model " + kModel + " --in " + dir + "/in.safetensors --out " + dir +
                             "/o.safetensors --grads model.nope");
  EXPECT_EQ(bad.code, 1);
  EXPECT_NE(bad.err.find("no parameter named 'model.nope'"), std::string::npos);
  fs::remove_all(dir);
}

}  // namespace
}  // namespace dl
