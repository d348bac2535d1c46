// Stable Diffusion UNet and VAE against the PyTorch reference of tools/fixtures/make_tiny_unet_vae.py: tiny
// random-weight heads in the release layout (stable_diffusion_head.bin with unet./vae./projector. names).
#include <cmath>

#include "core/error.h"
#include "io/checkpoint_layout.h"
#include "io/config.h"
#include "io/model_dir.h"
#include "io/safetensors.h"
#include "io/torch_bin.h"
#include "models/unet.h"
#include "models/vae.h"
#include "nn/autograd.h"
#include "nn/functional.h"
#include "test_util.h"

namespace dl {
namespace {

const std::string kRoot = std::string(DL_FIXTURE_DIR) + "/tiny_sd";
const std::string kHead = "stable_diffusion_head.";

Tensor reference(const std::string& name) {
  static const io::SafetensorsFile f = io::read_safetensors(kRoot + "/reference.safetensors");
  auto it = f.tensors.find(name);
  if (it == f.tensors.end()) throw Error("reference tensor '" + name + "' is missing");
  return it->second;
}

struct Head {
  io::UNetConfig unet;
  io::VaeConfig vae;
  models::ParameterSet params;
};

// Reads a head's weights, checks them against the layouts, and (optionally) rounds every weight to `dtype`.
Head load(const std::string& variant, DType dtype = DType::F32) {
  const std::string d = kRoot + "/" + variant;
  Head h;
  h.unet = io::parse_unet_config(io::read_text_file(d + "/unet/config.json"), variant + " unet config");
  h.vae = io::parse_vae_config(io::read_text_file(d + "/vae/config.json"), variant + " vae config");
  io::StateDict raw = io::read_torch_bin(d + "/stable_diffusion_head.bin");
  io::Layout expected;
  for (const auto& [n, s] : io::unet_layout(h.unet)) expected.emplace_back(kHead + "unet." + n, s);
  for (const auto& [n, s] : io::vae_layout(h.vae)) expected.emplace_back(kHead + "vae." + n, s);
  expected.emplace_back(kHead + "projector.projector.weight", Shape{h.unet.cross_attention_dim, 32});
  io::StateDict sd;
  for (const auto& [n, t] : raw) sd.emplace(kHead + n, dtype == DType::F32 ? t : t.to(dtype));
  io::check_against_layout(sd, expected, {}, variant + "/stable_diffusion_head.bin");
  EXPECT_EQ(sd.size(), expected.size());
  h.params.adopt(sd, kHead);
  return h;
}

bool all_finite(const Tensor& t) {
  for (float v : t.to_vector())
    if (!std::isfinite(v)) return false;
  return true;
}

TEST(UNet, MatchesReferenceInBothConfigs) {
  nn::NoGradGuard ng;
  for (const std::string v : {"a", "b"}) {
    SCOPED_TRACE(v);
    Head h = load(v);
    models::UNet unet(h.unet, h.params, kHead + "unet.");
    const nn::Var x(reference(v + "/sample")), ctx(reference(v + "/context"));
    const Tensor eps = unet.forward(x, reference(v + "/timesteps"), ctx).value();
    EXPECT_EQ(eps.shape(), reference(v + "/sample").shape());
    EXPECT_TRUE(test::close_rel(eps, reference(v + "/f32/eps")));
    // A single timestep applies to every row.
    EXPECT_TRUE(test::close_rel(unet.forward(x, Tensor::from_vector({250.f}, {1}), ctx).value(),
                                reference(v + "/f32/eps_t1")));
  }
}

// Deep-feature reuse: a refresh is the plain forward; a reuse step on the inputs the features were stored from
// recomputes the shallow blocks only and must give the same bits (so its skips are wired as the full pass wires
// them); on another timestep it differs from the full pass there (the stored features really are reused).
TEST(UNet, DeepFeatureReuse) {
  for (const std::string v : {"a", "b"}) {
    SCOPED_TRACE(v);
    Head h = load(v);
    models::UNet unet(h.unet, h.params, kHead + "unet.");
    const nn::Var x(reference(v + "/sample")), ctx(reference(v + "/context"));
    const Tensor t1 = Tensor::from_vector({250.f}, {1}), t2 = Tensor::from_vector({400.f}, {1});
    models::UNet::DeepCache cache;
    EXPECT_THROW(unet.forward_cached(x, t1, ctx, cache, true), Error);  // recording gradients: refused
    nn::NoGradGuard ng;
    EXPECT_THROW(unet.forward_cached(x, t1, ctx, cache, false), Error);  // nothing stored yet
    const Tensor full1 = unet.forward(x, t1, ctx).value();
    EXPECT_TRUE(test::bit_equal(unet.forward_cached(x, t1, ctx, cache, true).value(), full1));
    EXPECT_TRUE(test::close_rel(full1, reference(v + "/f32/eps_t1")));
    ASSERT_TRUE(cache.deep.defined());
    EXPECT_TRUE(test::bit_equal(unet.forward_cached(x, t1, ctx, cache, false).value(), full1));
    const Tensor reused2 = unet.forward_cached(x, t2, ctx, cache, false).value();
    EXPECT_TRUE(all_finite(reused2));
    EXPECT_FALSE(test::all_close(reused2, unet.forward(x, t2, ctx).value(), 1e-6f, 1e-6f));
    // A sample of another size does not fit the stored features.
    const nn::Var half(reference(v + "/sample").slice(2, 0, reference(v + "/sample").size(2) / 2).contiguous());
    EXPECT_THROW(unet.forward_cached(half, t1, ctx, cache, false), Error);
  }
}

TEST(UNet, OddLatentSidesMeetTheSkipsByNearestResize) {
  nn::NoGradGuard ng;
  Head h = load("b");
  models::UNet unet(h.unet, h.params, kHead + "unet.");
  const Tensor eps = unet.forward(nn::Var(reference("b/sample_odd")), Tensor::from_vector({300.f}, {1}),
                                  nn::Var(reference("b/context_odd")))
                         .value();
  EXPECT_EQ(eps.shape(), Shape({1, 4, 7, 5}));
  EXPECT_TRUE(test::close_rel(eps, reference("b/f32/eps_odd")));
}

TEST(UNet, Bf16WeightsMatchTheRoundedReference) {
  nn::NoGradGuard ng;
  for (const std::string v : {"a", "b"}) {
    SCOPED_TRACE(v);
    Head h = load(v, DType::BF16);
    EXPECT_EQ(h.params.at(kHead + "unet.conv_in.weight").value().dtype(), DType::BF16);
    models::UNet unet(h.unet, h.params, kHead + "unet.");
    const Tensor eps =
        unet.forward(nn::Var(reference(v + "/sample")), reference(v + "/timesteps"), nn::Var(reference(v + "/context")))
            .value();
    EXPECT_TRUE(all_finite(eps));
    EXPECT_TRUE(test::close_rel(eps, reference(v + "/bf16/eps")));
    // Config b normalises single-channel groups, which amplifies the rounding; a shows the usual small drift.
    if (v == "a") {
      EXPECT_TRUE(test::close_rel(eps, reference(v + "/f32/eps"), 5e-2f));
    }
  }
}

TEST(UNet, GradientsReachTheWeights) {
  Head h = load("a");
  for (const auto& [name, p] : h.params.all()) const_cast<nn::Var&>(p).set_requires_grad(true);
  models::UNet unet(h.unet, h.params, kHead + "unet.");
  nn::Var x(reference("a/sample"), true);
  nn::Var loss = nn::sum_all(unet.forward(x, reference("a/timesteps"), nn::Var(reference("a/context"))));
  loss.backward();
  for (const char* n : {"unet.conv_in.weight", "unet.time_embedding.linear_1.weight",
                        "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight",
                        "unet.up_blocks.1.attentions.1.proj_out.weight", "unet.conv_out.bias"}) {
    const Tensor& g = h.params.at(kHead + n).grad();
    ASSERT_TRUE(g.defined()) << n;
    EXPECT_TRUE(all_finite(g)) << n;
  }
  EXPECT_TRUE(x.grad().defined());
}

TEST(UNet, BadInputsAreClearErrors) {
  nn::NoGradGuard ng;
  Head h = load("b");
  models::UNet unet(h.unet, h.params, kHead + "unet.");
  const Tensor x = reference("b/sample"), t = reference("b/timesteps"), ctx = reference("b/context");
  using test::error_of;
  auto run = [&](const Tensor& xi, const Tensor& ti, const Tensor& ci) {
    return error_of([&] { unet.forward(nn::Var(xi), ti, nn::Var(ci)); });
  };
  EXPECT_NE(run(x.slice(2, 0, 0).contiguous(), t, ctx).find("is empty"), std::string::npos);
  EXPECT_NE(run(x.slice(1, 0, 3).contiguous(), t, ctx).find("is not [B, 4, h, w]"), std::string::npos);
  EXPECT_NE(run(x, t, ctx.slice(2, 0, 8).contiguous()).find("are not [2, S, 12]"), std::string::npos);
  EXPECT_NE(run(x, t, ctx.slice(0, 0, 1).contiguous()).find("are not [2, S, 12]"), std::string::npos);
  EXPECT_NE(run(x, Tensor::from_vector({1.f, 2.f, 3.f}, {3}), ctx).find("timesteps F32[3] are not [2] or [1]"),
            std::string::npos);
  // A missing weight names itself.
  models::ParameterSet partial;
  io::StateDict some;
  for (const auto& [n, p] : h.params.all())
    if (n.find("mid_block.attentions.0.proj_in") == std::string::npos) some.emplace(n, p.value());
  partial.adopt(some, kHead);
  EXPECT_NE(error_of([&] { models::UNet(h.unet, partial, kHead + "unet."); })
                .find("mid_block.attentions.0.proj_in.weight"),
            std::string::npos);
}

// diffusers' addition_embed_type "text": tools/fixtures/make_unet_text_embed_fixture.py.
TEST(UNet, TextTimeEmbeddingMatchesReference) {
  const std::string d = kRoot + "/text_embed";
  const io::UNetConfig cfg = io::parse_unet_config(io::read_text_file(d + "/unet/config.json"), "text_embed config");
  EXPECT_EQ(cfg.addition_embed_type, "text");
  EXPECT_EQ(cfg.addition_embed_type_num_heads, 3);
  const io::SafetensorsFile f = io::read_safetensors(d + "/reference.safetensors");
  io::StateDict sd;
  for (const auto& [n, t] : f.tensors)
    if (n.starts_with("unet.")) sd.emplace(n, t);
  io::Layout expected;
  for (const auto& [n, s] : io::unet_layout(cfg)) expected.emplace_back("unet." + n, s);
  io::check_against_layout(sd, expected, {}, "text_embed weights");
  EXPECT_EQ(sd.size(), expected.size());
  models::ParameterSet params;
  params.adopt(sd, "");
  for (const auto& [name, p] : params.all()) const_cast<nn::Var&>(p).set_requires_grad(true);
  models::UNet unet(cfg, params, "unet.");
  const Tensor t = f.tensors.at("ref/timesteps"), ctx = f.tensors.at("ref/context");
  const nn::Var x(f.tensors.at("ref/sample"));
  const nn::Var eps = unet.forward(x, t, nn::Var(ctx));
  EXPECT_TRUE(test::close_rel(eps.value(), f.tensors.at("ref/eps")));
  {
    nn::NoGradGuard ng;
    const Tensor other = unet.forward(x, t, nn::Var(f.tensors.at("ref/other_context"))).value();
    EXPECT_TRUE(test::close_rel(other, f.tensors.at("ref/eps_other_context")));
    EXPECT_FALSE(test::close_rel(other, eps.value()));
  }
  nn::sum_all(eps).backward();
  for (const char* n : {"unet.add_embedding.pool.positional_embedding", "unet.add_embedding.pool.q_proj.weight",
                        "unet.add_embedding.norm1.weight", "unet.add_embedding.proj.weight"}) {
    const Tensor& g = params.at(n).grad();
    ASSERT_TRUE(g.defined()) << n;
    EXPECT_TRUE(all_finite(g)) << n;
  }
  // Other values are refused by name; so is a head count that does not divide the context width.
  std::string text = io::read_text_file(d + "/unet/config.json");
  auto with = [&](const std::string& from, const std::string& to) {
    std::string s = text;
    s.replace(s.find(from), from.size(), to);
    return test::error_of([&] { io::parse_unet_config(s, "cfg"); });
  };
  EXPECT_NE(with("\"text\"", "\"text_image\"").find("addition_embed_type 'text_image' is not supported"),
            std::string::npos);
  EXPECT_NE(with("\"addition_embed_type_num_heads\": 3", "\"addition_embed_type_num_heads\": 5")
                .find("not divisible into 5 addition_embed_type_num_heads"),
            std::string::npos);
}

TEST(Vae, EncodeAndDecodeMatchReference) {
  nn::NoGradGuard ng;
  for (const auto& [dtype, tag] : {std::pair{DType::F32, "f32"}, std::pair{DType::BF16, "bf16"}}) {
    SCOPED_TRACE(tag);
    Head h = load("a", dtype);
    models::Vae vae(h.vae, h.params, kHead + "vae.");
    const std::string r = std::string("vae/") + tag;
    auto post = vae.encode(nn::Var(reference("vae/image")));
    EXPECT_EQ(post.mean.value().shape(), Shape({2, 4, 4, 5}));
    EXPECT_TRUE(test::close_rel(post.mean.value(), reference(r + "/mean")));
    EXPECT_TRUE(test::close_rel(post.logvar.value(), reference(r + "/logvar")));
    const Tensor img = vae.decode(post.mean).value();
    EXPECT_EQ(img.shape(), Shape({2, 3, 8, 10}));
    EXPECT_TRUE(test::close_rel(img, reference(r + "/decoded")));
  }
  Head h = load("b");
  models::Vae vae(h.vae, h.params, kHead + "vae.");
  const Tensor narrow = vae.decode(nn::Var(reference("vae/latents_narrow"))).value();
  EXPECT_TRUE(test::close_rel(narrow, reference("vae/f32/decoded_narrow")));
  // Odd sides: the asymmetric pad before each stride-2 conv rounds up (9 x 7 -> 5 x 4).
  auto odd = vae.encode(nn::Var(reference("vae/image_odd")));
  EXPECT_TRUE(test::close_rel(odd.mean.value(), reference("vae/f32/mean_odd")));
  EXPECT_TRUE(test::close_rel(odd.logvar.value(), reference("vae/f32/logvar_odd")));
}

TEST(Vae, LogvarIsClamped) {
  nn::NoGradGuard ng;
  Head h = load("a");
  // Scaling quant_conv's logvar rows drives logvar far outside [-30, 20] in both directions.
  io::StateDict sd;
  for (const auto& [n, p] : h.params.all()) sd.emplace(n, p.value());
  Tensor& w = sd.at(kHead + "vae.quant_conv.weight");
  Tensor& b = sd.at(kHead + "vae.quant_conv.bias");
  w = w.clone();
  b = b.clone();
  for (int64_t i = 4 * 8; i < w.numel(); ++i) w.f32()[i] *= 1e4f;
  b.f32()[4] = 1e6f;
  b.f32()[5] = -1e6f;
  models::ParameterSet p;
  p.adopt(sd, kHead);
  models::Vae vae(h.vae, p, kHead + "vae.");
  const std::vector<float> lv = vae.encode(nn::Var(reference("vae/image"))).logvar.value().to_vector();
  float lo = 0.f, hi = 0.f;
  for (float v : lv) {
    lo = std::min(lo, v);
    hi = std::max(hi, v);
  }
  EXPECT_EQ(lo, -30.f);
  EXPECT_EQ(hi, 20.f);
}

TEST(Vae, BadInputsAreClearErrors) {
  nn::NoGradGuard ng;
  Head h = load("a");
  models::Vae vae(h.vae, h.params, kHead + "vae.");
  using test::error_of;
  const Tensor img = reference("vae/image");
  EXPECT_NE(error_of([&] { vae.encode(nn::Var(img.slice(1, 0, 2).contiguous())); }).find("is not [B, 3, H, W]"),
            std::string::npos);
  EXPECT_NE(error_of([&] { vae.decode(nn::Var(img)); }).find("are not [B, 4, h, w]"), std::string::npos);
}

}  // namespace
}  // namespace dl
