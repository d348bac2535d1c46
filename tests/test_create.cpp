// Creation end to end against the PyTorch reference of tools/fixtures/make_tiny_full.py: a complete tiny DreamLLM
// directory (bf16 diffusion head) whose LLM writes the conditions of both guidance branches, then every sampler's
// whole trajectory and the decoded image.
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/config.h"
#include "io/model_dir.h"
#include "io/safetensors.h"
#include "models/dreamllm.h"
#include "pipelines/create.h"
#include "test_util.h"

namespace dl {
namespace {

const std::string kModel = std::string(DL_FIXTURE_DIR) + "/tiny_full";

Tensor fixture(const std::string& name) {
  static const io::SafetensorsFile f = io::read_safetensors(kModel + "/reference.safetensors");
  auto it = f.tensors.find(name);
  if (it == f.tensors.end()) throw Error("reference tensor '" + name + "' is missing");
  return it->second;
}

struct Loaded {
  io::ModelDir dir = io::ModelDir::open(kModel);
  models::DreamLLM model = models::DreamLLM::load(dir);
  pipelines::DiffusionHead head{dir};
};

const Loaded& loaded() {
  static const Loaded l;
  return l;
}

nlohmann::json cases() { return nlohmann::json::parse(io::read_text_file(kModel + "/cases.json"))["cases"]; }

TEST(Create, TheHeadLoadsInBf16) {
  const Loaded& m = loaded();
  EXPECT_EQ(m.head.params.at("stable_diffusion_head.unet.conv_in.weight").value().dtype(), DType::BF16);
  EXPECT_EQ(m.head.vae.config().scaling_factor, 0.18215f);
  EXPECT_EQ(m.head.scheduler.class_name, "PNDMScheduler");
}

TEST(Create, EverySamplerMatchesTheReferenceTrajectory) {
  const Loaded& m = loaded();
  for (const auto& c : cases()) {
    const std::string name = c["name"];
    SCOPED_TRACE(name);
    const std::string p = name + "/";
    const Tensor cond = pipelines::prompt_conditions(m.model, fixture(p + "input_ids"), fixture(p + "attention_mask"));
    EXPECT_TRUE(test::close_rel(cond, fixture(p + "cond")));
    pipelines::SamplingOptions o;
    o.scheduler = c["scheduler"];
    o.scheduler_options.eta = c["eta"];
    o.steps = c["steps"];
    o.guidance_scale = c["guidance_scale"];
    Tensor uncond;
    if (o.guidance_scale > 1.f) {
      uncond = pipelines::prompt_conditions(m.model, fixture(p + "negative_input_ids"), fixture(p + "negative_attention_mask"));
      EXPECT_TRUE(test::close_rel(uncond, fixture(p + "uncond")));
    }
    const Tensor step_noise = fixture(p + "step_noise");
    size_t calls = 0, drawn = 0;
    const Tensor latents = pipelines::sample_latents(
        m.head.unet, m.head.scheduler, cond, uncond, fixture(p + "noise"), o,
        [&](size_t i) {
          ++drawn;
          return step_noise.select(0, int64_t(i)).contiguous();
        },
        [&](size_t, size_t) { ++calls; });
    EXPECT_EQ(calls, size_t(c["unet_evaluations"]));
    EXPECT_EQ(drawn, c["stochastic"].get<bool>() ? calls : 0);
    EXPECT_TRUE(test::close_rel(latents, fixture(p + "latents"), 1e-4f));
    const Tensor image = pipelines::decode_latents(m.head.vae, latents);
    EXPECT_TRUE(test::all_close(image, fixture(p + "image"), 1e-3f, 1e-4f));
  }
}

TEST(Create, GuidanceOneSkipsTheNegativeBranch) {
  const Loaded& m = loaded();
  const std::string p = "ddpm_nocfg/";
  const Tensor cond = pipelines::prompt_conditions(m.model, fixture(p + "input_ids"), fixture(p + "attention_mask"));
  pipelines::SamplingOptions o;
  o.scheduler = "ddpm";  // the fixture's sampler, not whatever the commands' default is
  o.steps = 4;
  o.guidance_scale = 1.f;
  auto noise = [&](size_t i) { return fixture(p + "step_noise").select(0, int64_t(i)).contiguous(); };
  // Without guidance the negative conditions are never read: any (even mis-shaped) tensor gives the same result.
  const Tensor a = pipelines::sample_latents(m.head.unet, m.head.scheduler, cond, Tensor(), fixture(p + "noise"), o, noise);
  const Tensor b = pipelines::sample_latents(m.head.unet, m.head.scheduler, cond, Tensor::zeros({1, 1, 1}),
                                             fixture(p + "noise"), o, noise);
  EXPECT_TRUE(test::bit_equal(a, b));
}

TEST(Create, GuidanceRescaleMixesTowardsTheTextBranchStd) {
  const Loaded& m = loaded();
  const std::string p = "ddim/";
  const Tensor cond = pipelines::prompt_conditions(m.model, fixture(p + "input_ids"), fixture(p + "attention_mask"));
  const Tensor uncond =
      pipelines::prompt_conditions(m.model, fixture(p + "negative_input_ids"), fixture(p + "negative_attention_mask"));
  pipelines::SamplingOptions o;
  o.scheduler = "ddim";
  o.steps = 5;
  o.guidance_scale = 3.5f;
  const Tensor plain = pipelines::sample_latents(m.head.unet, m.head.scheduler, cond, uncond, fixture(p + "noise"), o, {});
  o.guidance_rescale = 0.7f;
  const Tensor rescaled =
      pipelines::sample_latents(m.head.unet, m.head.scheduler, cond, uncond, fixture(p + "noise"), o, {});
  EXPECT_FALSE(test::all_close(plain, rescaled, 1e-3f, 1e-3f));
  EXPECT_TRUE(test::close_rel(plain, fixture(p + "latents"), 1e-4f));
}

TEST(Create, TiledDecodingOfASingleTileIsPlainDecoding) {
  const Loaded& m = loaded();
  const Tensor z = fixture("euler/latents");  // 8 x 12 latents
  const Tensor plain = m.head.vae.decode(nn::Var(z)).value();
  EXPECT_TRUE(test::bit_equal(m.head.vae.decode_tiled(z, 12), plain));
  // Smaller tiles give a blended image of the same size.
  const Tensor tiled = m.head.vae.decode_tiled(z, 4);
  EXPECT_EQ(tiled.shape(), plain.shape());
  EXPECT_TRUE(test::all_close(tiled, fixture("tiled/euler_tile4"), 1e-4f, 1e-5f));
}

TEST(Create, BadInputsAreClearErrors) {
  const Loaded& m = loaded();
  using test::error_of;
  const std::string p = "ddpm_cfg/";
  const Tensor cond = pipelines::prompt_conditions(m.model, fixture(p + "input_ids"), fixture(p + "attention_mask"));
  const Tensor noise = fixture(p + "noise");
  auto sample = [&](pipelines::SamplingOptions o, const Tensor& c, const Tensor& u, const Tensor& x) {
    return error_of([&] {
      pipelines::sample_latents(m.head.unet, m.head.scheduler, c, u, x, o,
                                [&](size_t i) { return fixture(p + "step_noise").select(0, int64_t(i)).contiguous(); });
    });
  };
  pipelines::SamplingOptions o;
  o.scheduler = "ddpm";
  o.steps = 0;
  EXPECT_NE(sample(o, cond, cond, noise).find("steps"), std::string::npos);
  o.steps = 5000;
  EXPECT_NE(sample(o, cond, cond, noise).find("steps"), std::string::npos);
  o.steps = 2;
  EXPECT_NE(sample(o, cond.slice(2, 0, 8).contiguous(), cond, noise).find("are not [2, Q, 12]"), std::string::npos);
  EXPECT_NE(sample(o, cond, cond.slice(1, 0, 2).contiguous(), noise).find("do not match the conditions"),
            std::string::npos);
  EXPECT_NE(sample(o, cond, cond, noise.slice(1, 0, 3).contiguous()).find("is not [B, 4, h, w]"), std::string::npos);
  o.scheduler = "heun";
  EXPECT_NE(sample(o, cond, cond, noise).find("heun"), std::string::npos);
  o.scheduler = "ddpm";
  o.guidance_scale = std::nanf("");
  EXPECT_NE(sample(o, cond, cond, noise).find("guidance scale"), std::string::npos);
  o.guidance_scale = 7.5f;
  o.scheduler = "euler_a";
  EXPECT_NE(error_of([&] {
              pipelines::sample_latents(m.head.unet, m.head.scheduler, cond, cond, noise, o, {});
            }).find("stochastic"),
            std::string::npos);
  // A prompt longer than the model's positions.
  const Tensor long_ids = Tensor::from_vector_i64(std::vector<int64_t>(600, 5), {1, 600});
  EXPECT_NE(error_of([&] { pipelines::prompt_conditions(m.model, long_ids, Tensor()); }).find("exceeds the 512"),
            std::string::npos);
}

TEST(Create, RunTxt2ImgWritesTheTensorInterface) {
  const std::string dir = std::filesystem::temp_directory_path().string();
  const std::string in = dir + "/dl_txt2img_in_" + std::to_string(getpid()) + ".safetensors";
  const std::string out = dir + "/dl_txt2img_out_" + std::to_string(getpid()) + ".safetensors";
  std::map<std::string, Tensor> inputs;
  for (const char* n : {"input_ids", "attention_mask", "negative_input_ids", "negative_attention_mask", "noise",
                        "step_noise", "steps", "guidance_scale"})
    inputs[n] = fixture(std::string("euler_a/") + n);
  io::write_safetensors(in, inputs);
  const std::string cmd = std::string(DL_CLI) + " run txt2img --model " + kModel + " --in " + in + " --out " + out +
                          " --scheduler euler_a -t 2";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  const io::SafetensorsFile f = io::read_safetensors(out);
  EXPECT_TRUE(test::close_rel(f.tensors.at("latents"), fixture("euler_a/latents"), 2e-4f));
  EXPECT_TRUE(test::all_close(f.tensors.at("image"), fixture("euler_a/image"), 1e-3f, 1e-4f));
  EXPECT_TRUE(test::close_rel(f.tensors.at("negative_conditions"), fixture("euler_a/uncond")));
  // Without step_noise a stochastic sampler cannot run: a message and a non-zero exit.
  inputs.erase("step_noise");
  io::write_safetensors(in, inputs);
  EXPECT_NE(std::system((cmd + " 2> /dev/null").c_str()), 0);
  std::remove(in.c_str());
  std::remove(out.c_str());
}

TEST(Create, RunUnetAndVaeMatchTheSampler) {
  const Loaded& m = loaded();
  const std::string dir = std::filesystem::temp_directory_path().string();
  const std::string in = dir + "/dl_unet_in_" + std::to_string(getpid()) + ".safetensors";
  const std::string out = dir + "/dl_unet_out_" + std::to_string(getpid()) + ".safetensors";
  const Tensor z = fixture("ddim/latents");
  const Tensor ctx = fixture("ddim/cond");
  io::write_safetensors(in, {{"sample", z}, {"timestep", Tensor::from_vector({501.f}, {1})},
                             {"encoder_hidden_states", ctx}, {"latents", z}, {"image", fixture("ddim/image")}});
  for (const char* component : {"unet", "vae_decode", "vae_encode"}) {
    const std::string cmd = std::string(DL_CLI) + " run " + component + " --model " + kModel + " --in " + in +
                            " --out " + out + " -t 1";
    ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
    const io::SafetensorsFile f = io::read_safetensors(out);
    nn::NoGradGuard ng;
    if (std::string(component) == "unet") {
      const Tensor eps = m.head.unet.forward(nn::Var(z), Tensor::from_vector({501.f}, {1}), nn::Var(ctx)).value();
      EXPECT_TRUE(test::bit_equal(f.tensors.at("eps"), eps));
    } else if (std::string(component) == "vae_decode") {
      // The decoder output before clamping maps onto the reference image after clamp(x / 2 + 0.5).
      Tensor img = f.tensors.at("image").contiguous().clone();
      for (int64_t i = 0; i < img.numel(); ++i) img.f32()[i] = std::clamp(img.f32()[i] / 2.f + 0.5f, 0.f, 1.f);
      EXPECT_TRUE(test::all_close(img, fixture("ddim/image"), 1e-3f, 1e-4f));
    } else {
      EXPECT_EQ(f.tensors.at("mean").shape(), Shape({1, 4, 8, 8}));
      EXPECT_EQ(f.tensors.at("logvar").shape(), Shape({1, 4, 8, 8}));
    }
  }
  std::remove(in.c_str());
  std::remove(out.c_str());
}

}  // namespace
}  // namespace dl
