#include "io/config.h"

#include <cmath>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.h"
#include "core/file.h"

namespace dl::io {

namespace {

using json = nlohmann::json;

json parse(const std::string& text, const std::string& what) {
  try {
    json j = json::parse(text);
    DL_CHECK(j.is_object(), what, ": not a JSON object");
    return j;
  } catch (const json::exception& e) {
    fail(what, ": invalid JSON (", e.what(), ")");
  }
}

// Typed field access with errors naming the field and the file.
class Fields {
 public:
  Fields(const json& j, const std::string& what) : j_(j), what_(what) {}
  bool has(const char* key) const { return j_.contains(key) && !j_[key].is_null(); }
  int64_t integer(const char* key) const {
    const json& v = at(key);
    const bool integral_float = v.is_number_float() && std::fabs(v.get<double>()) < 9.0e15 &&
                                v.get<double>() == std::floor(v.get<double>());
    DL_CHECK(v.is_number_integer() || integral_float, what_, ": field '", key, "' must be an integer");
    return v.is_number_integer() ? v.get<int64_t>() : int64_t(v.get<double>());
  }
  float number(const char* key) const {
    const json& v = at(key);
    DL_CHECK(v.is_number() && std::fabs(v.get<double>()) <= 3.0e38, what_, ": field '", key,
             "' must be a number in float range");
    return v.get<float>();
  }
  bool boolean(const char* key) const {
    const json& v = at(key);
    DL_CHECK(v.is_boolean(), what_, ": field '", key, "' must be true or false");
    return v.get<bool>();
  }
  std::string string(const char* key) const {
    const json& v = at(key);
    DL_CHECK(v.is_string(), what_, ": field '", key, "' must be a string");
    return v.get<std::string>();
  }
  std::vector<std::string> strings(const char* key) const {
    const json& v = at(key);
    DL_CHECK(v.is_array(), what_, ": field '", key, "' must be a list of strings");
    std::vector<std::string> out;
    for (const auto& x : v) {
      DL_CHECK(x.is_string(), what_, ": field '", key, "' must be a list of strings");
      out.push_back(x.get<std::string>());
    }
    return out;
  }
  // diffusers accepts an int (the same for every block) or a list with one value per block.
  std::vector<int64_t> int_or_list(const char* key, size_t n) const {
    const json& v = at(key);
    if (v.is_number_integer()) return std::vector<int64_t>(n, v.get<int64_t>());
    DL_CHECK(v.is_array(), what_, ": field '", key, "' must be an integer or a list of integers");
    std::vector<int64_t> out;
    for (const auto& x : v) {
      DL_CHECK(x.is_number_integer(), what_, ": field '", key, "' must be an integer or a list of integers");
      out.push_back(x.get<int64_t>());
    }
    DL_CHECK(out.size() == n, what_, ": field '", key, "' has ", out.size(), " entries for ", n, " blocks");
    return out;
  }
  template <typename T, typename Get>
  void opt(const char* key, T& dst, Get get) const {
    if (has(key)) dst = (this->*get)(key);
  }
  void require(std::initializer_list<const char*> keys) const {
    for (const char* k : keys) DL_CHECK(has(k), what_, ": required field '", k, "' is missing");
  }
  const json& raw() const { return j_; }

 private:
  const json& at(const char* key) const {
    DL_CHECK(has(key), what_, ": required field '", key, "' is missing");
    return j_[key];
  }
  const json& j_;
  const std::string& what_;
};

void check_positive(const std::string& what, const char* field, int64_t v, int64_t max = int64_t(1) << 24) {
  DL_CHECK(v > 0 && v <= max, what, ": field '", field, "' = ", v, " is out of range (1..", max, ")");
}

LlamaConfig llama_from(const Fields& f, const std::string& what) {
  LlamaConfig c;
  f.require({"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"});
  c.vocab_size = f.integer("vocab_size");
  c.hidden_size = f.integer("hidden_size");
  c.intermediate_size = f.integer("intermediate_size");
  c.num_hidden_layers = f.integer("num_hidden_layers");
  c.num_attention_heads = f.integer("num_attention_heads");
  c.num_key_value_heads = f.has("num_key_value_heads") ? f.integer("num_key_value_heads") : c.num_attention_heads;
  f.opt("max_position_embeddings", c.max_position_embeddings, &Fields::integer);
  f.opt("rms_norm_eps", c.rms_norm_eps, &Fields::number);
  f.opt("rope_theta", c.rope_theta, &Fields::number);
  f.opt("tie_word_embeddings", c.tie_word_embeddings, &Fields::boolean);
  f.opt("hidden_act", c.hidden_act, &Fields::string);
  check_positive(what, "vocab_size", c.vocab_size);
  check_positive(what, "hidden_size", c.hidden_size);
  check_positive(what, "intermediate_size", c.intermediate_size);
  check_positive(what, "num_hidden_layers", c.num_hidden_layers, 1024);
  check_positive(what, "num_attention_heads", c.num_attention_heads, 1024);
  check_positive(what, "num_key_value_heads", c.num_key_value_heads, 1024);
  check_positive(what, "max_position_embeddings", c.max_position_embeddings);
  DL_CHECK(c.hidden_size % c.num_attention_heads == 0, what, ": hidden_size ", c.hidden_size,
           " is not divisible by num_attention_heads ", c.num_attention_heads);
  DL_CHECK(c.num_attention_heads % c.num_key_value_heads == 0, what, ": num_attention_heads ",
           c.num_attention_heads, " is not a multiple of num_key_value_heads ", c.num_key_value_heads);
  DL_CHECK(c.head_dim() % 2 == 0, what, ": head dimension ", c.head_dim(), " must be even for rotary embeddings");
  DL_CHECK(c.hidden_act == "silu", what, ": hidden_act '", c.hidden_act, "' is not supported (LLaMA uses silu)");
  DL_CHECK(!f.has("rope_scaling"), what, ": rope_scaling is not supported");
  return c;
}

void flatten_special_tokens(const json& j, const std::string& what, std::map<std::string, int64_t>& out) {
  DL_CHECK(j.is_object(), what, ": special_tokens2ids_dict must be an object");
  for (auto it = j.begin(); it != j.end(); ++it) {
    if (it.value().is_object()) {
      flatten_special_tokens(it.value(), what, out);
    } else {
      DL_CHECK(it.value().is_number_integer(), what, ": special token '", it.key(), "' must map to an integer id");
      out[it.key()] = it.value().get<int64_t>();
    }
  }
}

}  // namespace

std::string read_text_file(const std::string& path, size_t max_bytes) { return read_file(path, max_bytes); }

int64_t DreamLLMConfig::token_id(const std::string& token) const {
  auto it = special_tokens.find(token);
  DL_CHECK(it != special_tokens.end(), "config.json: special token '", token, "' is not in special_tokens2ids_dict");
  return it->second;
}

DreamLLMConfig parse_dreamllm_config(const std::string& text, const std::string& what) {
  json j = parse(text, what);
  Fields f(j, what);
  DreamLLMConfig c;
  c.llm = llama_from(f, what);
  if (f.has("special_tokens2ids_dict")) flatten_special_tokens(j["special_tokens2ids_dict"], what, c.special_tokens);
  f.opt("loss_weight_lm", c.loss_weight_lm, &Fields::number);
  f.opt("loss_weight_vm", c.loss_weight_vm, &Fields::number);
  // The plugin kwargs are LazyCall dicts; the two numbers the engine needs live inside them.
  if (j.contains("plugins_init_kwargs") && j["plugins_init_kwargs"].is_object()) {
    for (const auto& [name, kw] : j["plugins_init_kwargs"].items()) {
      if (!kw.is_object()) continue;
      Fields pf(kw, what);
      if (pf.has("num_dream_queries")) c.num_dream_queries = pf.integer("num_dream_queries");
      if (pf.has("select_layer")) c.clip_select_layer = pf.integer("select_layer");
    }
  }
  if (f.has("num_dream_queries")) c.num_dream_queries = f.integer("num_dream_queries");
  check_positive(what, "num_dream_queries", c.num_dream_queries, 4096);
  return c;
}

DreamLLMConfig read_dreamllm_config(const std::string& path) {
  return parse_dreamllm_config(read_text_file(path), "'" + path + "'");
}

ClipVisionConfig parse_clip_vision_config(const std::string& text, const std::string& what) {
  json j = parse(text, what);
  // A full CLIPConfig nests the vision tower's fields under vision_config.
  const json& v = j.contains("vision_config") ? j["vision_config"] : j;
  DL_CHECK(v.is_object(), what, ": vision_config is not an object");
  Fields f(v, what);
  ClipVisionConfig c;
  f.require({"hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "image_size",
             "patch_size"});
  c.hidden_size = f.integer("hidden_size");
  c.intermediate_size = f.integer("intermediate_size");
  c.num_hidden_layers = f.integer("num_hidden_layers");
  c.num_attention_heads = f.integer("num_attention_heads");
  c.image_size = f.integer("image_size");
  c.patch_size = f.integer("patch_size");
  f.opt("num_channels", c.num_channels, &Fields::integer);
  f.opt("layer_norm_eps", c.layer_norm_eps, &Fields::number);
  f.opt("hidden_act", c.hidden_act, &Fields::string);
  for (auto [k, val] : {std::pair{"hidden_size", c.hidden_size}, {"intermediate_size", c.intermediate_size},
                        {"num_hidden_layers", c.num_hidden_layers}, {"num_attention_heads", c.num_attention_heads},
                        {"image_size", c.image_size}, {"patch_size", c.patch_size}, {"num_channels", c.num_channels}})
    check_positive(what, k, val, int64_t(1) << 20);
  DL_CHECK(c.hidden_size % c.num_attention_heads == 0, what, ": hidden_size is not divisible by num_attention_heads");
  DL_CHECK(c.image_size % c.patch_size == 0, what, ": image_size ", c.image_size, " is not a multiple of patch_size ",
           c.patch_size);
  DL_CHECK(c.hidden_act == "quick_gelu" || c.hidden_act == "gelu", what, ": hidden_act '", c.hidden_act,
           "' is not supported");
  return c;
}

UNetConfig parse_unet_config(const std::string& text, const std::string& what) {
  json j = parse(text, what);
  Fields f(j, what);
  UNetConfig c;
  f.require({"block_out_channels", "down_block_types", "up_block_types", "cross_attention_dim"});
  c.block_out_channels = f.int_or_list("block_out_channels", j["block_out_channels"].is_array() ? j["block_out_channels"].size() : 1);
  const size_t n = c.block_out_channels.size();
  DL_CHECK(n >= 1 && n <= 8, what, ": block_out_channels must list 1..8 blocks");
  c.down_block_types = f.strings("down_block_types");
  c.up_block_types = f.strings("up_block_types");
  DL_CHECK(c.down_block_types.size() == n && c.up_block_types.size() == n, what,
           ": down_block_types, up_block_types and block_out_channels must have the same length");
  for (const auto& t : c.down_block_types)
    DL_CHECK(t == "CrossAttnDownBlock2D" || t == "DownBlock2D", what, ": down block type '", t, "' is not supported");
  for (const auto& t : c.up_block_types)
    DL_CHECK(t == "CrossAttnUpBlock2D" || t == "UpBlock2D", what, ": up block type '", t, "' is not supported");
  f.opt("mid_block_type", c.mid_block_type, &Fields::string);
  DL_CHECK(c.mid_block_type == "UNetMidBlock2DCrossAttn", what, ": mid block type '", c.mid_block_type,
           "' is not supported");
  c.cross_attention_dim = f.integer("cross_attention_dim");
  f.opt("in_channels", c.in_channels, &Fields::integer);
  f.opt("out_channels", c.out_channels, &Fields::integer);
  f.opt("sample_size", c.sample_size, &Fields::integer);
  c.layers_per_block = f.has("layers_per_block") ? f.int_or_list("layers_per_block", n) : std::vector<int64_t>(n, 2);
  // diffusers 0.24: num_attention_heads = num_attention_heads or attention_head_dim (the legacy name that SD
  // configs use for the number of heads).
  if (f.has("num_attention_heads"))
    c.num_attention_heads = f.int_or_list("num_attention_heads", n);
  else if (f.has("attention_head_dim"))
    c.num_attention_heads = f.int_or_list("attention_head_dim", n);
  else
    c.num_attention_heads = std::vector<int64_t>(n, 8);
  c.transformer_layers_per_block =
      f.has("transformer_layers_per_block") ? f.int_or_list("transformer_layers_per_block", n) : std::vector<int64_t>(n, 1);
  f.opt("norm_num_groups", c.norm_num_groups, &Fields::integer);
  f.opt("norm_eps", c.norm_eps, &Fields::number);
  f.opt("use_linear_projection", c.use_linear_projection, &Fields::boolean);
  f.opt("flip_sin_to_cos", c.flip_sin_to_cos, &Fields::boolean);
  f.opt("upcast_attention", c.upcast_attention, &Fields::boolean);
  f.opt("only_cross_attention", c.only_cross_attention, &Fields::boolean);
  f.opt("freq_shift", c.freq_shift, &Fields::integer);
  f.opt("downsample_padding", c.downsample_padding, &Fields::integer);
  f.opt("act_fn", c.act_fn, &Fields::string);
  DL_CHECK(!c.only_cross_attention, what, ": only_cross_attention is not supported");
  DL_CHECK(c.act_fn == "silu", what, ": act_fn '", c.act_fn, "' is not supported");
  f.opt("addition_embed_type", c.addition_embed_type, &Fields::string);
  f.opt("addition_embed_type_num_heads", c.addition_embed_type_num_heads, &Fields::integer);
  DL_CHECK(c.addition_embed_type.empty() || c.addition_embed_type == "text", what, ": addition_embed_type '",
           c.addition_embed_type, "' is not supported (only \"text\")");
  for (const char* k : {"class_embed_type", "encoder_hid_dim"})
    DL_CHECK(!f.has(k), what, ": '", k, "' (extra conditioning) is not supported");
  check_positive(what, "in_channels", c.in_channels, 1024);
  check_positive(what, "out_channels", c.out_channels, 1024);
  check_positive(what, "cross_attention_dim", c.cross_attention_dim, 1 << 16);
  check_positive(what, "norm_num_groups", c.norm_num_groups, 1024);
  for (size_t i = 0; i < n; ++i) {
    check_positive(what, "block_out_channels", c.block_out_channels[i], 1 << 16);
    check_positive(what, "layers_per_block", c.layers_per_block[i], 64);
    check_positive(what, "attention_head_dim", c.num_attention_heads[i], 1024);
    check_positive(what, "transformer_layers_per_block", c.transformer_layers_per_block[i], 64);
    DL_CHECK(c.block_out_channels[i] % c.norm_num_groups == 0, what, ": block_out_channels ", c.block_out_channels[i],
             " is not divisible by norm_num_groups ", c.norm_num_groups);
    DL_CHECK(c.block_out_channels[i] % c.num_attention_heads[i] == 0, what, ": block ", i, " has ",
             c.block_out_channels[i], " channels, not divisible into ", c.num_attention_heads[i], " heads");
  }
  if (!c.addition_embed_type.empty()) {
    check_positive(what, "addition_embed_type_num_heads", c.addition_embed_type_num_heads, 1024);
    DL_CHECK(c.cross_attention_dim % c.addition_embed_type_num_heads == 0, what, ": cross_attention_dim ",
             c.cross_attention_dim, " is not divisible into ", c.addition_embed_type_num_heads,
             " addition_embed_type_num_heads");
  }
  return c;
}

VaeConfig parse_vae_config(const std::string& text, const std::string& what) {
  json j = parse(text, what);
  Fields f(j, what);
  VaeConfig c;
  f.require({"block_out_channels", "latent_channels"});
  const size_t n = j["block_out_channels"].is_array() ? j["block_out_channels"].size() : 0;
  DL_CHECK(n >= 1 && n <= 8, what, ": block_out_channels must list 1..8 blocks");
  c.block_out_channels = f.int_or_list("block_out_channels", n);
  c.latent_channels = f.integer("latent_channels");
  c.down_block_types = f.has("down_block_types") ? f.strings("down_block_types") : std::vector<std::string>(n, "DownEncoderBlock2D");
  c.up_block_types = f.has("up_block_types") ? f.strings("up_block_types") : std::vector<std::string>(n, "UpDecoderBlock2D");
  DL_CHECK(c.down_block_types.size() == n && c.up_block_types.size() == n, what,
           ": block type lists and block_out_channels must have the same length");
  for (const auto& t : c.down_block_types)
    DL_CHECK(t == "DownEncoderBlock2D", what, ": down block type '", t, "' is not supported");
  for (const auto& t : c.up_block_types) DL_CHECK(t == "UpDecoderBlock2D", what, ": up block type '", t, "' is not supported");
  f.opt("in_channels", c.in_channels, &Fields::integer);
  f.opt("out_channels", c.out_channels, &Fields::integer);
  f.opt("layers_per_block", c.layers_per_block, &Fields::integer);
  f.opt("norm_num_groups", c.norm_num_groups, &Fields::integer);
  f.opt("sample_size", c.sample_size, &Fields::integer);
  f.opt("act_fn", c.act_fn, &Fields::string);
  if (f.has("scaling_factor")) c.scaling_factor = f.number("scaling_factor");  // absent: the 0.18215 default
  DL_CHECK(c.act_fn == "silu", what, ": act_fn '", c.act_fn, "' is not supported");
  check_positive(what, "latent_channels", c.latent_channels, 1024);
  check_positive(what, "layers_per_block", c.layers_per_block, 64);
  check_positive(what, "norm_num_groups", c.norm_num_groups, 1024);
  for (int64_t ch : c.block_out_channels) {
    check_positive(what, "block_out_channels", ch, 1 << 16);
    DL_CHECK(ch % c.norm_num_groups == 0, what, ": block_out_channels ", ch, " is not divisible by norm_num_groups ",
             c.norm_num_groups);
  }
  DL_CHECK(c.scaling_factor > 0.f, what, ": scaling_factor must be positive");
  return c;
}

SchedulerConfig parse_scheduler_config(const std::string& text, const std::string& what) {
  json j = parse(text, what);
  Fields f(j, what);
  SchedulerConfig c;
  f.require({"num_train_timesteps", "beta_start", "beta_end", "beta_schedule"});
  c.num_train_timesteps = f.integer("num_train_timesteps");
  c.beta_start = f.number("beta_start");
  c.beta_end = f.number("beta_end");
  c.beta_schedule = f.string("beta_schedule");
  f.opt("_class_name", c.class_name, &Fields::string);
  f.opt("steps_offset", c.steps_offset, &Fields::integer);
  f.opt("prediction_type", c.prediction_type, &Fields::string);
  f.opt("timestep_spacing", c.timestep_spacing, &Fields::string);
  f.opt("variance_type", c.variance_type, &Fields::string);
  f.opt("clip_sample", c.clip_sample, &Fields::boolean);
  f.opt("set_alpha_to_one", c.set_alpha_to_one, &Fields::boolean);
  f.opt("rescale_betas_zero_snr", c.rescale_betas_zero_snr, &Fields::boolean);
  check_positive(what, "num_train_timesteps", c.num_train_timesteps, 100000);
  DL_CHECK(c.beta_start > 0.f && c.beta_end > c.beta_start && c.beta_end < 1.f, what, ": betas ", c.beta_start,
           "..", c.beta_end, " are not increasing within (0, 1)");
  DL_CHECK(c.beta_schedule == "scaled_linear" || c.beta_schedule == "linear", what, ": beta_schedule '",
           c.beta_schedule, "' is not supported");
  DL_CHECK(c.prediction_type == "epsilon" || c.prediction_type == "v_prediction", what, ": prediction_type '",
           c.prediction_type, "' is not supported");
  DL_CHECK(c.timestep_spacing == "leading" || c.timestep_spacing == "linspace" || c.timestep_spacing == "trailing",
           what, ": timestep_spacing '", c.timestep_spacing, "' is not supported");
  return c;
}

namespace {
std::string dump(const json& j) { return j.dump(1) + "\n"; }
}  // namespace

std::string to_json(const DreamLLMConfig& c) {
  const LlamaConfig& l = c.llm;
  json special = json::object(), additional = json::object();
  for (const auto& [name, id] : c.special_tokens) {
    if (name == "<s>" || name == "</s>" || name == "<unk>" || name == "[PAD]")
      special[name] = id;
    else
      additional[name] = id;
  }
  special["additional_special_tokens"] = additional;
  json j = {{"architectures", {"DreamLLMForCausalMLM"}},
            {"model_type", "dreamllm"},
            {"vocab_size", l.vocab_size},
            {"hidden_size", l.hidden_size},
            {"intermediate_size", l.intermediate_size},
            {"num_hidden_layers", l.num_hidden_layers},
            {"num_attention_heads", l.num_attention_heads},
            {"num_key_value_heads", l.num_key_value_heads ? l.num_key_value_heads : l.num_attention_heads},
            {"max_position_embeddings", l.max_position_embeddings},
            {"rms_norm_eps", l.rms_norm_eps},
            {"rope_theta", l.rope_theta},
            {"hidden_act", l.hidden_act},
            {"tie_word_embeddings", l.tie_word_embeddings},
            {"initializer_range", 0.02},
            {"bos_token_id", c.special_tokens.count("<s>") ? c.special_tokens.at("<s>") : 1},
            {"eos_token_id", c.special_tokens.count("</s>") ? c.special_tokens.at("</s>") : 2},
            {"pad_token_id", c.special_tokens.count("[PAD]") ? c.special_tokens.at("[PAD]") : -1},
            {"loss_weight_lm", c.loss_weight_lm},
            {"loss_weight_vm", c.loss_weight_vm},
            {"loss_scale_schedule", "none"},
            {"special_tokens2ids_dict", special},
            {"plugins_init_kwargs",
             {{"clip_vision_embedding",
               {{"_target_", "omni.models.dreamllm.modeling_plugins.CLIPVisionEmbedding"},
                {"select_layer", c.clip_select_layer},
                {"embed_hidden_size", l.hidden_size}}},
              {"dream_embedding",
               {{"_target_", "omni.models.dreamllm.modeling_plugins.DreamEmbedding"},
                {"num_dream_queries", c.num_dream_queries},
                {"embed_hidden_size", l.hidden_size}}},
              {"stable_diffusion_head", {{"_target_", "omni.models.dreamllm.modeling_plugins.StableDiffusionHead"}}}}},
            {"plugins_type",
             {{"clip_vision_embedding", "embedding"}, {"dream_embedding", "embedding"},
              {"stable_diffusion_head", "head"}}}};
  return dump(j);
}

std::string to_json(const ClipVisionConfig& c) {
  return dump({{"model_type", "clip_vision_model"},
               {"hidden_size", c.hidden_size},
               {"intermediate_size", c.intermediate_size},
               {"num_hidden_layers", c.num_hidden_layers},
               {"num_attention_heads", c.num_attention_heads},
               {"image_size", c.image_size},
               {"patch_size", c.patch_size},
               {"num_channels", c.num_channels},
               {"layer_norm_eps", c.layer_norm_eps},
               {"hidden_act", c.hidden_act}});
}

std::string to_json(const UNetConfig& c) {
  json j = {{"_class_name", "UNet2DConditionModel"},
            {"_diffusers_version", "0.24.0"},
            {"in_channels", c.in_channels},
            {"out_channels", c.out_channels},
            {"sample_size", c.sample_size},
            {"block_out_channels", c.block_out_channels},
            {"down_block_types", c.down_block_types},
            {"up_block_types", c.up_block_types},
            {"mid_block_type", c.mid_block_type},
            {"layers_per_block", c.layers_per_block},
            {"attention_head_dim", c.num_attention_heads},  // the legacy name, as SD configs store the heads
            {"transformer_layers_per_block", c.transformer_layers_per_block},
            {"cross_attention_dim", c.cross_attention_dim},
            {"norm_num_groups", c.norm_num_groups},
            {"norm_eps", c.norm_eps},
            {"use_linear_projection", c.use_linear_projection},
            {"flip_sin_to_cos", c.flip_sin_to_cos},
            {"upcast_attention", c.upcast_attention},
            {"freq_shift", c.freq_shift},
            {"downsample_padding", c.downsample_padding},
               {"act_fn", c.act_fn}};
  if (!c.addition_embed_type.empty()) {
    j["addition_embed_type"] = c.addition_embed_type;
    j["addition_embed_type_num_heads"] = c.addition_embed_type_num_heads;
  }
  return dump(j);
}

std::string to_json(const VaeConfig& c) {
  return dump({{"_class_name", "AutoencoderKL"},
               {"_diffusers_version", "0.24.0"},
               {"in_channels", c.in_channels},
               {"out_channels", c.out_channels},
               {"latent_channels", c.latent_channels},
               {"layers_per_block", c.layers_per_block},
               {"norm_num_groups", c.norm_num_groups},
               {"sample_size", c.sample_size},
               {"block_out_channels", c.block_out_channels},
               {"down_block_types", c.down_block_types},
               {"up_block_types", c.up_block_types},
               {"scaling_factor", c.scaling_factor},
               {"act_fn", c.act_fn}});
}

std::string to_json(const SchedulerConfig& c) {
  return dump({{"_class_name", c.class_name},
               {"_diffusers_version", "0.24.0"},
               {"num_train_timesteps", c.num_train_timesteps},
               {"beta_start", c.beta_start},
               {"beta_end", c.beta_end},
               {"beta_schedule", c.beta_schedule},
               {"prediction_type", c.prediction_type},
               {"timestep_spacing", c.timestep_spacing},
               {"variance_type", c.variance_type},
               {"clip_sample", c.clip_sample},
               {"set_alpha_to_one", c.set_alpha_to_one},
               {"rescale_betas_zero_snr", c.rescale_betas_zero_snr},
               {"steps_offset", c.steps_offset}});
}

}  // namespace dl::io
