// Schedulers against trajectories from tools/fixtures/make_scheduler_fixtures.py (diffusers 0.24 semantics).
#include <algorithm>
#include <cmath>
#include <string>
#include <tuple>

#include "core/error.h"
#include "core/ops.h"
#include "diffusion/schedulers.h"
#include "test_util.h"

namespace dl::test {
namespace {

using diffusion::make_scheduler;
using diffusion::Scheduler;
using diffusion::SchedulerOptions;

const io::SafetensorsFile& sched_fixtures() {
  static const io::SafetensorsFile f =
      io::read_safetensors(std::string(DL_FIXTURE_DIR) + "/schedulers/trajectories.safetensors");
  return f;
}

Tensor sfx(const std::string& key) {
  const auto& t = sched_fixtures().tensors;
  auto it = t.find(key);
  if (it == t.end()) throw std::runtime_error("scheduler fixture tensor " + key + " is missing");
  return it->second;
}

// The fixture's stand-in for the UNet; must match fake_eps in the generator bit for bit.
Tensor fake_eps(const Tensor& x_in, float t) {
  Tensor x = x_in.contiguous(), out = Tensor::empty(x.shape());
  const float* px = x.f32();
  float* po = out.f32();
  for (int64_t k = 0; k < x.numel(); ++k) {
    const auto pattern = float(double(t) * 1e-5 * std::cos(double(k)));
    po[k] = 0.1f * px[k] + pattern;
  }
  return out;
}

struct Variant {
  std::string name;
  SchedulerOptions options;
  io::SchedulerConfig config;
};

// Fixture variant name ("v_" prefix: v_prediction) -> factory arguments.
Variant variant(std::string v) {
  Variant r;
  if (v.rfind("v_", 0) == 0) {
    r.config.prediction_type = "v_prediction";
    v = v.substr(2);
  } else if (v.rfind("z_", 0) == 0) {  // zero terminal SNR, v_prediction; DDPM and DDIM spaced "trailing"
    r.config.prediction_type = "v_prediction";
    r.config.rescale_betas_zero_snr = true;
    v = v.substr(2);
    if (v.rfind("ddpm", 0) == 0 || v.rfind("ddim", 0) == 0) r.options.timestep_spacing = "trailing";
  }
  if (v == "ddim_eta") {
    r.options.eta = 0.7f;
    v = "ddim";
  } else if (v == "dpmpp2m_karras") {
    r.options.use_karras_sigmas = true;
    v = "dpmpp2m";
  }
  r.name = v;
  return r;
}

std::vector<float> ts_of(const std::string& name, int64_t n, const SchedulerOptions& o = {}) {
  auto s = make_scheduler(name, io::SchedulerConfig{}, o);
  s->set_timesteps(n);
  return s->timesteps();
}

TEST(SchedulerTimesteps, DocumentedExamples) {
  EXPECT_EQ(ts_of("ddpm", 4), (std::vector<float>{751, 501, 251, 1}));
  EXPECT_EQ(ts_of("ddim", 4), (std::vector<float>{751, 501, 251, 1}));
  EXPECT_EQ(ts_of("pndm", 4), (std::vector<float>{751, 501, 501, 251, 1}));
  EXPECT_EQ(ts_of("pndm", 1), (std::vector<float>{1}));
  EXPECT_EQ(ts_of("dpmpp2m", 4), (std::vector<float>{999, 749, 500, 250}));
  EXPECT_EQ(ts_of("euler", 4), (std::vector<float>{999, 666, 333, 0}));
  auto d = ts_of("ddpm", 50);
  ASSERT_EQ(d.size(), 50u);
  EXPECT_EQ(d.front(), 981.f);
  EXPECT_EQ(d.back(), 1.f);
}

TEST(SchedulerTimesteps, FullStepCounts) {
  // DPM-Solver's n+1-point linspace rounds 499.5 and 500.499 both to 500; diffusers 0.24 keeps the repeat.
  auto d = ts_of("dpmpp2m", 1000);
  ASSERT_EQ(d.size(), 1000u);
  EXPECT_EQ(d.front(), 999.f);
  EXPECT_EQ(std::count(d.begin(), d.end(), 500.f), 2);
  // leading + steps_offset 1 would start at 999 + 1, a timestep alphas_cumprod does not have: refused at once.
  for (const char* name : {"ddpm", "ddim", "pndm"})
    EXPECT_NE(error_of([&] { ts_of(name, 1000); }).find("would reach timestep 1000, outside the model's 1000 "
                                                         "training timesteps [0, 999]; use at most 999 steps"),
              std::string::npos)
        << name;
  auto p = ts_of("ddpm", 999);
  ASSERT_EQ(p.size(), 999u);
  EXPECT_EQ(p.front(), 999.f);  // stride 1: 998 + 1
  EXPECT_EQ(p.back(), 1.f);
}

// Every step count that set_timesteps accepts samples to the end: each scheduler and spacing, n from 1 to N, on
// a small N (the off-by-one of "leading" spacing is at n = N whatever N is).
TEST(SchedulerTimesteps, EveryAcceptedStepCountRunsToTheEnd) {
  io::SchedulerConfig c;
  c.num_train_timesteps = 60;
  const Tensor x = Tensor::from_vector({0.5f, -0.25f}, {2}), z = Tensor::from_vector({0.1f, 0.2f}, {2});
  for (const char* name : {"ddpm", "ddim", "pndm", "euler", "euler_a", "dpmpp2m"})
    for (const char* spacing : {"leading", "linspace", "trailing"})
      for (int64_t n = 1; n <= c.num_train_timesteps; ++n) {
        SCOPED_TRACE(std::string(name) + " " + spacing + " " + std::to_string(n));
        SchedulerOptions o;
        o.timestep_spacing = spacing;
        auto s = make_scheduler(name, c, o);
        const std::string refused = error_of([&] { s->set_timesteps(n); });
        if (refused != "no error") {
          EXPECT_NE(refused.find("training timesteps [0, 59]; "), std::string::npos) << refused;
          continue;
        }
        const std::string ran = error_of([&] {
          Tensor sample = x;
          for (size_t i = 0; i < s->timesteps().size(); ++i) sample = s->step(ops::scale(sample, 0.5f), i, sample, &z);
        });
        EXPECT_EQ(ran, "no error");
      }
  // With leading spacing and steps_offset 1 (the SD scheduler's) the refusal falls at n = N only.
  for (const char* name : {"ddpm", "ddim", "pndm"}) {
    auto s = make_scheduler(name, c, {});
    EXPECT_NE(error_of([&] { s->set_timesteps(60); }), "no error") << name;
    for (int64_t n = 1; n < 60; ++n) EXPECT_EQ(error_of([&] { s->set_timesteps(n); }), "no error") << name << n;
  }
}

TEST(SchedulerAlphas, MatchTorchFloat32) {
  auto s = make_scheduler("ddpm", io::SchedulerConfig{});
  const auto& ac = s->alphas_cumprod();
  Tensor got = Tensor::from_vector(ac, {int64_t(ac.size())});
  EXPECT_TRUE(bit_equal(got, sfx("alphas_cumprod")));
}

class SchedulerTrajectory : public ::testing::TestWithParam<std::tuple<std::string, int>> {};

TEST_P(SchedulerTrajectory, MatchesReference) {
  const auto& [fixture_name, n] = GetParam();
  const std::string key = fixture_name + "/n" + std::to_string(n);
  const Variant var = variant(fixture_name);
  auto s = make_scheduler(var.name, var.config, var.options);
  s->set_timesteps(n);

  const auto want_ts = sfx(key + "/timesteps").to_vector();
  ASSERT_EQ(s->timesteps(), want_ts);
  const Tensor samples = sfx(key + "/samples");
  ASSERT_EQ(samples.size(0), int64_t(want_ts.size()) + 1);
  EXPECT_NEAR(s->init_noise_sigma(), sfx(key + "/init_noise_sigma").item(),
              1e-6f * sfx(key + "/init_noise_sigma").item());

  const Tensor noise = sfx("noise"), x_T = sfx("x_T");
  Tensor x = x_T.clone();
  for (int64_t k = 0; k < x.numel(); ++k) x.f32()[k] *= s->init_noise_sigma();
  EXPECT_TRUE(close_rel(x, samples.select(0, 0), 1e-6f));
  // Free-running: the whole trajectory, compared after every step.
  for (size_t i = 0; i < want_ts.size(); ++i) {
    Tensor eps = fake_eps(s->scale_model_input(x, i), s->timesteps()[i]);
    Tensor z = noise.select(0, int64_t(i)).contiguous();
    x = s->step(eps, i, x, s->stochastic() ? &z : nullptr);
    ASSERT_TRUE(close_rel(x, samples.select(0, int64_t(i) + 1), 1e-5f)) << key << " step " << i;
  }
  // Teacher-forced: each step from the reference's own previous sample, so errors cannot compound.
  s->set_timesteps(n);
  for (size_t i = 0; i < want_ts.size(); ++i) {
    Tensor xi = samples.select(0, int64_t(i)).contiguous();
    Tensor eps = fake_eps(s->scale_model_input(xi, i), s->timesteps()[i]);
    Tensor z = noise.select(0, int64_t(i)).contiguous();
    Tensor y = s->step(eps, i, xi, s->stochastic() ? &z : nullptr);
    ASSERT_TRUE(all_close(y, samples.select(0, int64_t(i) + 1), 1e-5f, 1e-6f)) << key << " step " << i;
  }
}

INSTANTIATE_TEST_SUITE_P(Scheduler, SchedulerTrajectory,
                         ::testing::Combine(::testing::Values("ddpm", "ddim", "ddim_eta", "pndm", "dpmpp2m",
                                                              "dpmpp2m_karras", "euler", "euler_a"),
                                            ::testing::Values(1, 4, 10, 25)),
                         [](const auto& info) {
                           return std::get<0>(info.param) + "_n" + std::to_string(std::get<1>(info.param));
                         });
INSTANTIATE_TEST_SUITE_P(SchedulerVPrediction, SchedulerTrajectory,
                         ::testing::Combine(::testing::Values("v_ddpm", "v_ddim_eta", "v_pndm", "v_dpmpp2m",
                                                              "v_euler", "v_euler_a"),
                                            ::testing::Values(10)),
                         [](const auto& info) {
                           return std::get<0>(info.param) + "_n" + std::to_string(std::get<1>(info.param));
                         });

INSTANTIATE_TEST_SUITE_P(SchedulerZeroTerminalSnr, SchedulerTrajectory,
                         ::testing::Combine(::testing::Values("z_ddpm", "z_ddim", "z_ddim_eta", "z_dpmpp2m", "z_euler",
                                                              "z_euler_a"),
                                            ::testing::Values(4, 25)),
                         [](const auto& info) {
                           return std::get<0>(info.param) + "_n" + std::to_string(std::get<1>(info.param));
                         });

TEST(SchedulerAlphas, ZeroTerminalSnrMatchesTorch) {
  io::SchedulerConfig c;
  c.prediction_type = "v_prediction";
  c.rescale_betas_zero_snr = true;
  auto s = make_scheduler("ddpm", c);
  const auto& ac = s->alphas_cumprod();
  EXPECT_EQ(ac.back(), 0.f);  // the last timestep is pure noise
  EXPECT_TRUE(all_close(Tensor::from_vector(ac, {int64_t(ac.size())}), sfx("zero_snr/alphas_cumprod"), 1e-6f, 1e-9f));
  // Training at the last timestep: the noisy latent is the noise itself.
  const Tensor x0 = sfx("add_noise/x0"), z = sfx("add_noise/noise");
  const Tensor x0_row = x0.select(0, 0).unsqueeze(0).contiguous(), z_row = z.select(0, 0).unsqueeze(0).contiguous();
  EXPECT_TRUE(bit_equal(s->add_noise(x0_row, z_row, {999}), z_row));
}

TEST(SchedulerErrors, ZeroTerminalSnrNeedsVPredictionAndRefusesPndm) {
  io::SchedulerConfig c;
  c.rescale_betas_zero_snr = true;
  EXPECT_NE(error_of([&] { make_scheduler("ddim", c); }).find("needs prediction_type v_prediction"), std::string::npos);
  c.prediction_type = "v_prediction";
  EXPECT_NE(error_of([&] { make_scheduler("pndm", c); }).find("pndm: rescale_betas_zero_snr is not supported"),
            std::string::npos);
  EXPECT_NO_THROW(make_scheduler("dpmpp2m", c));
}

TEST(SchedulerAddNoise, MatchesReference) {
  auto s = make_scheduler("ddpm", io::SchedulerConfig{});
  for (const char* tag : {"a", "b"}) {
    const std::string k = std::string("add_noise/") + tag;
    const Tensor ts = sfx(k + "/timesteps");
    std::vector<int64_t> t(ts.data<int64_t>(), ts.data<int64_t>() + ts.numel());
    EXPECT_TRUE(all_close(s->add_noise(sfx("add_noise/x0"), sfx("add_noise/noise"), t), sfx(k + "/out"), 1e-6f,
                          1e-7f))
        << tag;
  }
}

TEST(SchedulerErrors, BadStepCounts) {
  for (const char* name : {"ddpm", "ddim", "pndm", "dpmpp2m", "euler", "euler_a"}) {
    auto s = make_scheduler(name, io::SchedulerConfig{});
    EXPECT_NE(error_of([&] { s->set_timesteps(0); }).find("inference steps"), std::string::npos) << name;
    EXPECT_NE(error_of([&] { s->set_timesteps(-5); }), "no error") << name;
    EXPECT_NE(error_of([&] { s->set_timesteps(1001); }).find("1000"), std::string::npos) << name;
    Tensor x = Tensor::full({1, 4, 2, 2}, 0.5f);
    EXPECT_NE(error_of([&] { s->step(x, 0, x, &x); }).find("before set_timesteps"), std::string::npos) << name;
  }
}

TEST(SchedulerErrors, BadStepCalls) {
  io::SchedulerConfig cfg;
  Tensor x = Tensor::full({1, 4, 2, 2}, 0.5f), other = Tensor::full({1, 4, 2, 3}, 0.5f);
  auto ddpm = make_scheduler("ddpm", cfg);
  ddpm->set_timesteps(4);
  EXPECT_NE(error_of([&] { ddpm->step(x, 0, x, nullptr); }).find("noise"), std::string::npos);
  EXPECT_NE(error_of([&] { ddpm->step(x, 0, x, &other); }).find("noise"), std::string::npos);
  EXPECT_NE(error_of([&] { ddpm->step(other, 0, x, &x); }).find("does not match"), std::string::npos);
  EXPECT_NE(error_of([&] { ddpm->step(x, 4, x, &x); }).find("out of range"), std::string::npos);

  auto ddim = make_scheduler("ddim", cfg);  // eta 0: deterministic, no noise needed
  ddim->set_timesteps(4);
  EXPECT_EQ(error_of([&] { ddim->step(x, 0, x, nullptr); }), "no error");

  for (const char* name : {"pndm", "dpmpp2m"}) {
    auto s = make_scheduler(name, cfg);
    s->set_timesteps(4);
    EXPECT_NE(error_of([&] { s->step(x, 1, x, nullptr); }).find("in order"), std::string::npos) << name;
  }
  auto euler = make_scheduler("euler", cfg);
  euler->set_timesteps(4);
  EXPECT_NE(error_of([&] { euler->scale_model_input(x, 9); }).find("out of range"), std::string::npos);
}

TEST(SchedulerErrors, BadConstruction) {
  io::SchedulerConfig cfg;
  EXPECT_NE(error_of([&] { make_scheduler("lms", cfg); }).find("unknown scheduler"), std::string::npos);
  SchedulerOptions karras;
  karras.use_karras_sigmas = true;
  EXPECT_NE(error_of([&] { make_scheduler("euler", cfg, karras); }).find("karras"), std::string::npos);
  SchedulerOptions eta;
  eta.eta = 0.5f;
  EXPECT_NE(error_of([&] { make_scheduler("ddpm", cfg, eta); }).find("eta"), std::string::npos);
  eta.eta = -1.f;
  EXPECT_NE(error_of([&] { make_scheduler("ddim", cfg, eta); }).find("eta"), std::string::npos);
  io::SchedulerConfig bad = cfg;
  bad.beta_schedule = "sigmoid";
  EXPECT_NE(error_of([&] { make_scheduler("ddpm", bad); }).find("beta_schedule"), std::string::npos);
  bad = cfg;
  bad.variance_type = "learned";
  EXPECT_NE(error_of([&] { make_scheduler("ddpm", bad); }).find("variance_type"), std::string::npos);
}

TEST(SchedulerErrors, BadAddNoise) {
  auto s = make_scheduler("ddpm", io::SchedulerConfig{});
  Tensor x = Tensor::full({2, 4, 2, 2}, 0.5f);
  EXPECT_NE(error_of([&] { s->add_noise(x, x, {1}); }).find("one timestep per batch row"), std::string::npos);
  EXPECT_NE(error_of([&] { s->add_noise(x, x, {1, 1000}); }).find("outside"), std::string::npos);
  EXPECT_NE(error_of([&] { s->add_noise(x, Tensor::full({2, 4, 2, 3}, 0.f), {1, 2}); }).find("one shape"),
            std::string::npos);
}

TEST(SchedulerDDPM, FinalStepAddsTinyNoise) {
  // t = 1 is the last DDPM step; diffusers still adds sqrt(max(var, 1e-20)) * z there.
  auto s = make_scheduler("ddpm", io::SchedulerConfig{});
  s->set_timesteps(4);
  Tensor zero = Tensor::full({1, 4, 2, 2}, 0.f), one = Tensor::full({1, 4, 2, 2}, 1.f);
  EXPECT_EQ(s->step(zero, 3, zero, &zero).to_vector()[0], 0.f);
  const float d = s->step(zero, 3, zero, &one).to_vector()[0];
  EXPECT_GT(d, 0.f);
  EXPECT_LT(d, 1e-6f);
}

}  // namespace
}  // namespace dl::test
