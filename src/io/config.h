// Configuration files of a DreamLLM model directory, parsed with the semantics of the libraries that wrote them
// (transformers 4.35 LLaMA/CLIP configs, diffusers 0.24 UNet/VAE/scheduler configs). Unknown fields are ignored;
// a missing required field is an error naming the field and the file. Built-in defaults reproduce
// openai/clip-vit-large-patch14 (vision tower) and stabilityai/stable-diffusion-2-1-base for directories that
// ship no base configs.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace dl::io {

struct LlamaConfig {
  int64_t vocab_size = 0, hidden_size = 0, intermediate_size = 0, num_hidden_layers = 0, num_attention_heads = 0;
  int64_t num_key_value_heads = 0;  // defaults to num_attention_heads
  int64_t max_position_embeddings = 2048;
  float rms_norm_eps = 1e-6f, rope_theta = 10000.f;
  bool tie_word_embeddings = false;
  std::string hidden_act = "silu";
  int64_t head_dim() const { return hidden_size / num_attention_heads; }
};

// DreamLLM's config.json: the LLaMA fields plus the multimodal ones.
struct DreamLLMConfig {
  LlamaConfig llm;
  std::map<std::string, int64_t> special_tokens;  // flattened special_tokens2ids_dict (additional tokens included)
  float loss_weight_lm = 1.f, loss_weight_vm = 10.f;
  int64_t num_dream_queries = 64;
  int64_t clip_select_layer = -2;  // hidden_states index: -2 = output of the second-to-last encoder layer
  int64_t token_id(const std::string& token) const;  // throws naming the token when absent
};

struct ClipVisionConfig {
  int64_t hidden_size = 1024, intermediate_size = 4096, num_hidden_layers = 24, num_attention_heads = 16;
  int64_t image_size = 224, patch_size = 14, num_channels = 3;
  float layer_norm_eps = 1e-5f;
  std::string hidden_act = "quick_gelu";
  int64_t num_patches() const { return (image_size / patch_size) * (image_size / patch_size); }
};

struct UNetConfig {
  int64_t in_channels = 4, out_channels = 4, sample_size = 64;
  std::vector<int64_t> block_out_channels{320, 640, 1280, 1280};
  std::vector<std::string> down_block_types{"CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                            "DownBlock2D"};
  std::vector<std::string> up_block_types{"UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D",
                                          "CrossAttnUpBlock2D"};
  std::string mid_block_type = "UNetMidBlock2DCrossAttn";
  std::vector<int64_t> layers_per_block{2, 2, 2, 2};
  std::vector<int64_t> num_attention_heads{5, 10, 20, 20};  // per down block (resolved from the legacy field)
  std::vector<int64_t> transformer_layers_per_block{1, 1, 1, 1};
  int64_t cross_attention_dim = 1024;
  int64_t norm_num_groups = 32;
  float norm_eps = 1e-5f;
  bool use_linear_projection = true, flip_sin_to_cos = true, upcast_attention = false, only_cross_attention = false;
  int64_t freq_shift = 0, downsample_padding = 1;
  std::string act_fn = "silu";
  // diffusers' addition_embed_type "text" (TextTimeEmbedding): the context, attention-pooled to one vector, is
  // added to the time embedding, so every resnet sees the condition. Empty: off, as in SD.
  std::string addition_embed_type;
  int64_t addition_embed_type_num_heads = 64;
  int64_t time_embed_dim() const { return block_out_channels.at(0) * 4; }
};

struct VaeConfig {
  int64_t in_channels = 3, out_channels = 3, latent_channels = 4, layers_per_block = 2, norm_num_groups = 32;
  int64_t sample_size = 768;
  std::vector<int64_t> block_out_channels{128, 256, 512, 512};
  std::vector<std::string> down_block_types{"DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D",
                                            "DownEncoderBlock2D"};
  std::vector<std::string> up_block_types{"UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D",
                                          "UpDecoderBlock2D"};
  float scaling_factor = 0.18215f;
  std::string act_fn = "silu";
  int64_t scale_factor() const { return int64_t(1) << (block_out_channels.size() - 1); }
};

struct SchedulerConfig {
  std::string class_name = "PNDMScheduler";  // as stored on disk; DreamLLM samples with DDPM regardless
  int64_t num_train_timesteps = 1000, steps_offset = 1;
  float beta_start = 0.00085f, beta_end = 0.012f;
  std::string beta_schedule = "scaled_linear", prediction_type = "epsilon", timestep_spacing = "leading";
  std::string variance_type = "fixed_small";
  bool clip_sample = false, set_alpha_to_one = false;
  // diffusers' rescale_betas_zero_snr (Lin et al. 2024): the betas are rescaled so that the last timestep is pure
  // noise, as sampling from N(0, 1) assumes. Meant for v_prediction, where the model still has a target there.
  bool rescale_betas_zero_snr = false;
};

// Each parser reads a JSON file; `*_from_json` parses text (used by tests and fuzzers), `what` names the source.
DreamLLMConfig read_dreamllm_config(const std::string& path);
DreamLLMConfig parse_dreamllm_config(const std::string& json, const std::string& what);
ClipVisionConfig parse_clip_vision_config(const std::string& json, const std::string& what);
UNetConfig parse_unet_config(const std::string& json, const std::string& what);
VaeConfig parse_vae_config(const std::string& json, const std::string& what);
SchedulerConfig parse_scheduler_config(const std::string& json, const std::string& what);
std::string read_text_file(const std::string& path, size_t max_bytes = size_t(64) << 20);

// Writers: JSON in the format of the library that owns the file (transformers / diffusers / DreamLLM), which the
// parsers above read back to equal configs. The DreamLLM config names its plugins as the original's
// plugins_init_kwargs does.
std::string to_json(const DreamLLMConfig& c);
std::string to_json(const ClipVisionConfig& c);
std::string to_json(const UNetConfig& c);
std::string to_json(const VaeConfig& c);
std::string to_json(const SchedulerConfig& c);

}  // namespace dl::io
