// Configs, checkpoint layouts and the model-directory loader.
#include <sys/stat.h>

#include <cstdio>
#include <filesystem>
#include <fstream>

#include "core/error.h"
#include "io/checkpoint_layout.h"
#include "io/config.h"
#include "io/model_dir.h"
#include "io/safetensors.h"
#include "test_util.h"

namespace dl {
namespace {

namespace fs = std::filesystem;

int64_t count_params(const io::Layout& l) {
  int64_t n = 0;
  for (const auto& [name, shape] : l) n += shape_numel(shape);
  return n;
}

using test::error_of;

// The real SD 2.1-base unet/config.json and vae/config.json (diffusers format).
const char* kSd21UNet = R"({
  "_class_name": "UNet2DConditionModel", "_diffusers_version": "0.10.0.dev0", "act_fn": "silu",
  "attention_head_dim": [5, 10, 20, 20], "block_out_channels": [320, 640, 1280, 1280], "center_input_sample": false,
  "cross_attention_dim": 1024,
  "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
  "downsample_padding": 1, "dual_cross_attention": false, "flip_sin_to_cos": true, "freq_shift": 0, "in_channels": 4,
  "layers_per_block": 2, "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32, "out_channels": 4,
  "sample_size": 64, "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
  "use_linear_projection": true })";
const char* kSd21Vae = R"({
  "_class_name": "AutoencoderKL", "act_fn": "silu", "block_out_channels": [128, 256, 512, 512],
  "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"],
  "in_channels": 3, "latent_channels": 4, "layers_per_block": 2, "norm_num_groups": 32, "out_channels": 3,
  "sample_size": 768, "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"] })";

TEST(Config, PublishedParameterCounts) {
  // Independent references: the parameter counts published for the released models.
  io::LlamaConfig llama{.vocab_size = 32000, .hidden_size = 4096, .intermediate_size = 11008, .num_hidden_layers = 32,
                        .num_attention_heads = 32, .num_key_value_heads = 32};
  EXPECT_EQ(count_params(io::llama_layout(llama)), 6738415616);  // LLaMA-7B
  EXPECT_EQ(count_params(io::unet_layout(io::parse_unet_config(kSd21UNet, "unet"))), 865910724);  // SD 2.x UNet
  EXPECT_EQ(count_params(io::vae_layout(io::parse_vae_config(kSd21Vae, "vae"))), 83653863);       // SD VAE
  EXPECT_EQ(count_params(io::clip_vision_layout(io::ClipVisionConfig{})), 303179776);  // CLIP ViT-L/14 vision tower
  // Built-in defaults equal the real SD 2.1-base configs.
  EXPECT_EQ(io::unet_layout(io::UNetConfig{}), io::unet_layout(io::parse_unet_config(kSd21UNet, "unet")));
  EXPECT_EQ(io::vae_layout(io::VaeConfig{}), io::vae_layout(io::parse_vae_config(kSd21Vae, "vae")));
}

TEST(Config, UNetLegacyHeadsAndDefaults) {
  io::UNetConfig u = io::parse_unet_config(kSd21UNet, "unet");
  EXPECT_EQ(u.num_attention_heads, std::vector<int64_t>({5, 10, 20, 20}));  // legacy name = number of heads
  EXPECT_EQ(u.layers_per_block, std::vector<int64_t>({2, 2, 2, 2}));       // int broadcast to every block
  io::VaeConfig v = io::parse_vae_config(kSd21Vae, "vae");
  EXPECT_FLOAT_EQ(v.scaling_factor, 0.18215f);  // absent from the file: diffusers' default
  EXPECT_EQ(v.scale_factor(), 8);
  io::UNetConfig n = io::parse_unet_config(
      R"({"block_out_channels":[32,64],"down_block_types":["CrossAttnDownBlock2D","DownBlock2D"],
          "up_block_types":["UpBlock2D","CrossAttnUpBlock2D"],"cross_attention_dim":24,"num_attention_heads":[2,4],
          "attention_head_dim":8,"norm_num_groups":8,"layers_per_block":1,"some_future_field":{"x":1}})",
      "tiny");
  EXPECT_EQ(n.num_attention_heads, std::vector<int64_t>({2, 4}));  // the explicit field wins over the legacy one
}

TEST(Config, ClipFullOrVisionOnly) {
  const char* full = R"({"architectures":["CLIPModel"],"text_config":{"hidden_size":768},
    "vision_config":{"hidden_size":1024,"intermediate_size":4096,"num_attention_heads":16,"num_hidden_layers":24,
                     "image_size":224,"patch_size":14,"hidden_act":"quick_gelu","layer_norm_eps":1e-05}})";
  io::ClipVisionConfig c = io::parse_clip_vision_config(full, "clip");
  EXPECT_EQ(c.num_patches(), 256);
  EXPECT_EQ(io::clip_vision_layout(c), io::clip_vision_layout(io::ClipVisionConfig{}));
  const std::string m = error_of([] {
    io::parse_clip_vision_config(R"({"hidden_size":64,"num_hidden_layers":2,"num_attention_heads":2,
                                    "image_size":28,"patch_size":14})", "'clip/config.json'");
  });
  EXPECT_NE(m.find("'intermediate_size'"), std::string::npos) << m;
  EXPECT_NE(m.find("clip/config.json"), std::string::npos) << m;
}

TEST(Config, DreamLLMSpecialTokensAndPlugins) {
  const char* cfg = R"({"architectures":["DreamLLMForCausalMLM"],"model_type":"dreamllm","vocab_size":32008,
    "hidden_size":4096,"intermediate_size":11008,"num_hidden_layers":32,"num_attention_heads":32,
    "rms_norm_eps":1e-06,"bos_token_id":0,"eos_token_id":1,"pad_token_id":-1,"loss_weight_lm":1.0,"loss_weight_vm":10.0,
    "special_tokens2ids_dict":{"<s>":1,"</s>":2,"<unk>":0,"[PAD]":32000,
      "additional_special_tokens":{"<im_start>":32001,"<dream_end>":32002,"<dream_start>":32003,"<im_patch>":32004,
                                   "<im_end>":32005,"<image>":32006,"<dream>":32007}},
    "plugins_init_kwargs":{"dream_embedding":{"_target_":"omni.models.dreamllm.modeling_plugins.DreamEmbedding",
                           "num_dream_queries":64,"embed_hidden_size":4096},
                           "clip_vision_embedding":{"select_layer":-2}}})";
  io::DreamLLMConfig c = io::parse_dreamllm_config(cfg, "config.json");
  EXPECT_EQ(c.token_id("<dream_start>"), 32003);
  EXPECT_EQ(c.token_id("</s>"), 2);
  EXPECT_EQ(c.num_dream_queries, 64);
  EXPECT_EQ(c.llm.num_key_value_heads, 32);
  EXPECT_FLOAT_EQ(c.loss_weight_vm, 10.f);
  EXPECT_THROW(c.token_id("<nope>"), Error);
  EXPECT_NE(error_of([] { io::parse_dreamllm_config(R"({"vocab_size":10,"hidden_size":8})", "cfg"); })
                .find("'intermediate_size'"),
            std::string::npos);
  EXPECT_NE(error_of([] { io::parse_dreamllm_config("{not json", "cfg"); }).find("invalid JSON"), std::string::npos);
  EXPECT_NE(error_of([] {
              io::parse_dreamllm_config(R"({"vocab_size":10,"hidden_size":12,"intermediate_size":8,
                                            "num_hidden_layers":1,"num_attention_heads":5})", "cfg");
            }).find("not divisible"),
            std::string::npos);
}

TEST(Config, LegacyVaeNames) {
  EXPECT_EQ(io::modernize_vae_name("vae.encoder.mid_block.attentions.0.query.weight"),
            "vae.encoder.mid_block.attentions.0.to_q.weight");
  EXPECT_EQ(io::modernize_vae_name("vae.decoder.mid_block.attentions.0.proj_attn.bias"),
            "vae.decoder.mid_block.attentions.0.to_out.0.bias");
  EXPECT_EQ(io::modernize_vae_name("vae.decoder.conv_in.weight"), "vae.decoder.conv_in.weight");
}

// A tiny model directory in the official layout, written with our safetensors writer.
class TinyModelDir : public ::testing::Test {
 protected:
  void SetUp() override {
    dir = (fs::temp_directory_path() / ("dl_tiny_model_" + std::to_string(getpid()))).string();
    fs::remove_all(dir);
    fs::create_directories(dir + "/unet");
    fs::create_directories(dir + "/vae");
    fs::create_directories(dir + "/clip_vision");
    write(dir + "/config.json", R"({"vocab_size":40,"hidden_size":16,"intermediate_size":24,"num_hidden_layers":2,
      "num_attention_heads":4,"num_key_value_heads":2,"special_tokens2ids_dict":{"<dream_start>":35},
      "plugins_init_kwargs":{"dream":{"num_dream_queries":3}}})");
    write(dir + "/clip_vision/config.json", R"({"hidden_size":8,"intermediate_size":12,"num_hidden_layers":2,
      "num_attention_heads":2,"image_size":28,"patch_size":14})");
    write(dir + "/unet/config.json", R"({"block_out_channels":[8,16],"down_block_types":["CrossAttnDownBlock2D","DownBlock2D"],
      "up_block_types":["UpBlock2D","CrossAttnUpBlock2D"],"cross_attention_dim":12,"attention_head_dim":2,
      "norm_num_groups":4,"layers_per_block":1})");
    write(dir + "/vae/config.json", R"({"block_out_channels":[8,8],"latent_channels":4,"norm_num_groups":4,
      "layers_per_block":1})");
    m = io::ModelDir::open(dir);
    // LLM as two shards with an index, plus the rotary buffer the release files may hold.
    io::Layout llm = m.expected(io::kLLM);
    std::map<std::string, Tensor> a, b;
    std::string index = R"({"metadata":{},"weight_map":{)";
    for (size_t i = 0; i < llm.size(); ++i) {
      const std::string shard = i % 2 ? "model-00002-of-00002.safetensors" : "model-00001-of-00002.safetensors";
      (i % 2 ? b : a)[llm[i].first] = test::randn(llm[i].second, i);
      index += (i ? "," : "") + ("\"" + llm[i].first + "\":\"" + shard + "\"");
    }
    a["model.layers.0.self_attn.rotary_emb.inv_freq"] = Tensor::zeros({2});
    index += R"(,"model.layers.0.self_attn.rotary_emb.inv_freq":"model-00001-of-00002.safetensors"}})";
    io::write_safetensors(dir + "/model-00001-of-00002.safetensors", a);
    io::write_safetensors(dir + "/model-00002-of-00002.safetensors", b);
    write(dir + "/model.safetensors.index.json", index);
    write_plugin(io::kClip, "clip_vision_embedding", "model.clip_vision_embedding.");
    write_plugin(io::kDream, "dream_embedding", "model.dream_embedding.");
    write_plugin(io::kDiffusion, "stable_diffusion_head", "stable_diffusion_head.");
  }
  void TearDown() override { fs::remove_all(dir); }

  static void write(const std::string& path, const std::string& text) { std::ofstream(path) << text; }
  // The release's plugin files hold names without the component prefix.
  void write_plugin(io::Component c, const std::string& file, const std::string& prefix,
                    const std::function<void(std::map<std::string, Tensor>&)>& edit = {}) {
    std::map<std::string, Tensor> t;
    for (const auto& [name, shape] : m.expected(c)) t[name.substr(prefix.size())] = test::randn(shape, name.size());
    if (edit) edit(t);
    io::write_safetensors(dir + "/" + file + ".safetensors", t);
  }

  std::string dir;
  io::ModelDir m;
};

TEST_F(TinyModelDir, LoadsEveryComponentUnderFullNames) {
  io::StateDict sd = m.load();
  size_t expected = 0;
  for (auto c : {io::kLLM, io::kClip, io::kDream, io::kDiffusion}) {
    for (const auto& [name, shape] : m.expected(c)) {
      ASSERT_TRUE(sd.count(name)) << name;
      EXPECT_EQ(sd.at(name).shape(), shape) << name;
    }
    expected += m.expected(c).size();
  }
  EXPECT_EQ(sd.size(), expected);  // inv_freq dropped
  EXPECT_EQ(sd.at("model.dream_embedding.dream_queries").shape(), Shape({1, 3, 16}));
  EXPECT_EQ(sd.at("model.layers.1.self_attn.k_proj.weight").shape(), Shape({8, 16}));  // grouped KV heads
  EXPECT_TRUE(sd.count("stable_diffusion_head.unet.up_blocks.1.attentions.1.transformer_blocks.0.attn2.to_k.weight"));
  EXPECT_EQ(m.config().token_id("<dream_start>"), 35);
}

TEST_F(TinyModelDir, OneErrorListsEveryProblem) {
  write_plugin(io::kDiffusion, "stable_diffusion_head", "stable_diffusion_head.", [](auto& t) {
    t.erase("unet.conv_in.weight");
    t["unet.mid_block.resnets.0.conv1.bias"] = Tensor::zeros({7});
    t["unet.extra.weight"] = Tensor::zeros({1});
  });
  const std::string e = error_of([&] { m.load(io::kDiffusion); });
  EXPECT_NE(e.find("1 missing"), std::string::npos) << e;
  EXPECT_NE(e.find("stable_diffusion_head.unet.conv_in.weight"), std::string::npos) << e;
  EXPECT_NE(e.find("conv1.bias is [7], expected [16]"), std::string::npos) << e;
  EXPECT_NE(e.find("stable_diffusion_head.unet.extra.weight"), std::string::npos) << e;
}

TEST_F(TinyModelDir, LegacyVaeAttentionAsConvolutions) {
  write_plugin(io::kDiffusion, "stable_diffusion_head", "stable_diffusion_head.", [](auto& t) {
    for (const char* part : {"encoder", "decoder"}) {
      const std::string p = std::string("vae.") + part + ".mid_block.attentions.0.";
      Tensor w = t.at(p + "to_q.weight");
      t.erase(p + "to_q.weight");
      t[p + "query.weight"] = w.reshape({8, 8, 1, 1});
    }
  });
  io::StateDict sd = m.load(io::kDiffusion);
  EXPECT_EQ(sd.at("stable_diffusion_head.vae.encoder.mid_block.attentions.0.to_q.weight").shape(), Shape({8, 8}));
}

TEST_F(TinyModelDir, ShardIndexCannotReferToItself) {
  write(dir + "/model.safetensors.index.json", R"({"weight_map":{"a":"model.safetensors.index.json"}})");
  EXPECT_NE(error_of([&] { m.load(io::kLLM); }).find("must be a .safetensors or .bin file"), std::string::npos);
}

TEST_F(TinyModelDir, MissingFilesAreNamed) {
  fs::remove(dir + "/dream_embedding.safetensors");
  EXPECT_NE(error_of([&] { m.load(io::kDream); }).find("dream_embedding.bin"), std::string::npos);
  EXPECT_NO_THROW(m.load(io::kLLM | io::kClip));
  fs::remove(dir + "/model-00002-of-00002.safetensors");
  EXPECT_NE(error_of([&] { m.load(io::kLLM); }).find("model-00002-of-00002.safetensors"), std::string::npos);
  EXPECT_NE(error_of([] { io::ModelDir::open("/nonexistent/model"); }).find("does not exist"), std::string::npos);
  fs::remove(dir + "/config.json");
  EXPECT_NE(error_of([&] { io::ModelDir::open(dir); }).find("no config.json"), std::string::npos);
}

}  // namespace
}  // namespace dl
