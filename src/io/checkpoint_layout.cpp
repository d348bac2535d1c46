#include "io/checkpoint_layout.h"

#include <algorithm>

namespace dl::io {

namespace {

struct Builder {
  Layout out;
  void add(const std::string& name, Shape shape) { out.emplace_back(name, std::move(shape)); }
  void linear(const std::string& p, int64_t out_f, int64_t in_f, bool bias = true) {
    add(p + ".weight", {out_f, in_f});
    if (bias) add(p + ".bias", {out_f});
  }
  void conv(const std::string& p, int64_t out_c, int64_t in_c, int64_t k) {
    add(p + ".weight", {out_c, in_c, k, k});
    add(p + ".bias", {out_c});
  }
  void norm(const std::string& p, int64_t c) {
    add(p + ".weight", {c});
    add(p + ".bias", {c});
  }
  // diffusers ResnetBlock2D; temb = 0 means no time embedding projection (VAE).
  void resnet(const std::string& p, int64_t in_c, int64_t out_c, int64_t temb) {
    norm(p + ".norm1", in_c);
    conv(p + ".conv1", out_c, in_c, 3);
    if (temb > 0) linear(p + ".time_emb_proj", out_c, temb);
    norm(p + ".norm2", out_c);
    conv(p + ".conv2", out_c, out_c, 3);
    if (in_c != out_c) conv(p + ".conv_shortcut", out_c, in_c, 1);
  }
  // diffusers Transformer2DModel with BasicTransformerBlocks (self-attn, cross-attn, GEGLU feed-forward).
  void transformer(const std::string& p, int64_t channels, int64_t layers, int64_t cross_dim, bool linear_proj) {
    const int64_t inner = channels;  // heads * (channels / heads)
    norm(p + ".norm", channels);
    if (linear_proj)
      linear(p + ".proj_in", inner, channels);
    else
      conv(p + ".proj_in", inner, channels, 1);
    for (int64_t l = 0; l < layers; ++l) {
      const std::string b = p + ".transformer_blocks." + std::to_string(l);
      norm(b + ".norm1", inner);
      for (const char* m : {".attn1.to_q", ".attn1.to_k", ".attn1.to_v"}) linear(b + m, inner, inner, false);
      linear(b + ".attn1.to_out.0", inner, inner);
      norm(b + ".norm2", inner);
      linear(b + ".attn2.to_q", inner, inner, false);
      linear(b + ".attn2.to_k", inner, cross_dim, false);
      linear(b + ".attn2.to_v", inner, cross_dim, false);
      linear(b + ".attn2.to_out.0", inner, inner);
      norm(b + ".norm3", inner);
      linear(b + ".ff.net.0.proj", inner * 8, inner);
      linear(b + ".ff.net.2", inner, inner * 4);
    }
    if (linear_proj)
      linear(p + ".proj_out", channels, inner);
    else
      conv(p + ".proj_out", channels, inner, 1);
  }
  // The single-head attention of the VAE mid block.
  void vae_attention(const std::string& p, int64_t c) {
    norm(p + ".group_norm", c);
    for (const char* m : {".to_q", ".to_k", ".to_v", ".to_out.0"}) linear(p + m, c, c);
  }
};

}  // namespace

Layout llama_layout(const LlamaConfig& c) {
  Builder b;
  const int64_t D = c.hidden_size, kv = c.num_key_value_heads * c.head_dim();
  b.add("model.embed_tokens.weight", {c.vocab_size, D});
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l);
    b.linear(p + ".self_attn.q_proj", D, D, false);
    b.linear(p + ".self_attn.k_proj", kv, D, false);
    b.linear(p + ".self_attn.v_proj", kv, D, false);
    b.linear(p + ".self_attn.o_proj", D, D, false);
    b.linear(p + ".mlp.gate_proj", c.intermediate_size, D, false);
    b.linear(p + ".mlp.up_proj", c.intermediate_size, D, false);
    b.linear(p + ".mlp.down_proj", D, c.intermediate_size, false);
    b.add(p + ".input_layernorm.weight", {D});
    b.add(p + ".post_attention_layernorm.weight", {D});
  }
  b.add("model.norm.weight", {D});
  if (!c.tie_word_embeddings) b.add("lm_head.weight", {c.vocab_size, D});
  return b.out;
}

Layout clip_vision_layout(const ClipVisionConfig& c) {
  Builder b;
  const int64_t D = c.hidden_size;
  const std::string e = "vision_model.embeddings";
  b.add(e + ".class_embedding", {D});
  b.add(e + ".patch_embedding.weight", {D, c.num_channels, c.patch_size, c.patch_size});
  b.add(e + ".position_embedding.weight", {c.num_patches() + 1, D});
  b.norm("vision_model.pre_layrnorm", D);
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = "vision_model.encoder.layers." + std::to_string(l);
    for (const char* m : {".self_attn.q_proj", ".self_attn.k_proj", ".self_attn.v_proj", ".self_attn.out_proj"})
      b.linear(p + m, D, D);
    b.norm(p + ".layer_norm1", D);
    b.linear(p + ".mlp.fc1", c.intermediate_size, D);
    b.linear(p + ".mlp.fc2", D, c.intermediate_size);
    b.norm(p + ".layer_norm2", D);
  }
  b.norm("vision_model.post_layernorm", D);
  return b.out;
}

Layout unet_layout(const UNetConfig& c) {
  Builder b;
  const auto& ch = c.block_out_channels;
  const size_t n = ch.size();
  const int64_t temb = c.time_embed_dim();
  b.conv("conv_in", ch[0], c.in_channels, 3);
  b.linear("time_embedding.linear_1", temb, ch[0]);
  b.linear("time_embedding.linear_2", temb, temb);
  if (c.addition_embed_type == "text") {
    const int64_t D = c.cross_attention_dim;
    b.norm("add_embedding.norm1", D);
    b.add("add_embedding.pool.positional_embedding", {1, D});
    for (const char* proj : {"k_proj", "q_proj", "v_proj"}) b.linear(std::string("add_embedding.pool.") + proj, D, D);
    b.linear("add_embedding.proj", temb, D);
    b.norm("add_embedding.norm2", temb);
  }
  int64_t out_c = ch[0];
  for (size_t i = 0; i < n; ++i) {
    const int64_t in_c = out_c;
    out_c = ch[i];
    const std::string p = "down_blocks." + std::to_string(i);
    const bool attn = c.down_block_types[i] == "CrossAttnDownBlock2D";
    for (int64_t j = 0; j < c.layers_per_block[i]; ++j) {
      b.resnet(p + ".resnets." + std::to_string(j), j == 0 ? in_c : out_c, out_c, temb);
      if (attn)
        b.transformer(p + ".attentions." + std::to_string(j), out_c, c.transformer_layers_per_block[i],
                      c.cross_attention_dim, c.use_linear_projection);
    }
    if (i + 1 < n) b.conv(p + ".downsamplers.0.conv", out_c, out_c, 3);
  }
  const int64_t mid = ch[n - 1];
  b.resnet("mid_block.resnets.0", mid, mid, temb);
  b.transformer("mid_block.attentions.0", mid, c.transformer_layers_per_block[n - 1], c.cross_attention_dim,
                c.use_linear_projection);
  b.resnet("mid_block.resnets.1", mid, mid, temb);
  std::vector<int64_t> rev(ch.rbegin(), ch.rend()), rev_layers(c.layers_per_block.rbegin(), c.layers_per_block.rend()),
      rev_tl(c.transformer_layers_per_block.rbegin(), c.transformer_layers_per_block.rend());
  int64_t prev_out = rev[0];
  for (size_t i = 0; i < n; ++i) {
    const int64_t o = rev[i], skip_in = rev[std::min(i + 1, n - 1)];
    const std::string p = "up_blocks." + std::to_string(i);
    const bool attn = c.up_block_types[i] == "CrossAttnUpBlock2D";
    const int64_t layers = rev_layers[i] + 1;
    for (int64_t j = 0; j < layers; ++j) {
      const int64_t res_skip = j == layers - 1 ? skip_in : o;
      const int64_t res_in = j == 0 ? prev_out : o;
      b.resnet(p + ".resnets." + std::to_string(j), res_in + res_skip, o, temb);
      if (attn)
        b.transformer(p + ".attentions." + std::to_string(j), o, rev_tl[i], c.cross_attention_dim,
                      c.use_linear_projection);
    }
    if (i + 1 < n) b.conv(p + ".upsamplers.0.conv", o, o, 3);
    prev_out = o;
  }
  b.norm("conv_norm_out", ch[0]);
  b.conv("conv_out", c.out_channels, ch[0], 3);
  return b.out;
}

Layout vae_layout(const VaeConfig& c) {
  Builder b;
  const auto& ch = c.block_out_channels;
  const size_t n = ch.size();
  const int64_t top = ch[n - 1];
  auto mid_block = [&](const std::string& p) {
    b.resnet(p + ".resnets.0", top, top, 0);
    b.vae_attention(p + ".attentions.0", top);
    b.resnet(p + ".resnets.1", top, top, 0);
  };
  b.conv("encoder.conv_in", ch[0], c.in_channels, 3);
  int64_t out_c = ch[0];
  for (size_t i = 0; i < n; ++i) {
    const int64_t in_c = out_c;
    out_c = ch[i];
    const std::string p = "encoder.down_blocks." + std::to_string(i);
    for (int64_t j = 0; j < c.layers_per_block; ++j) b.resnet(p + ".resnets." + std::to_string(j), j == 0 ? in_c : out_c, out_c, 0);
    if (i + 1 < n) b.conv(p + ".downsamplers.0.conv", out_c, out_c, 3);
  }
  mid_block("encoder.mid_block");
  b.norm("encoder.conv_norm_out", top);
  b.conv("encoder.conv_out", 2 * c.latent_channels, top, 3);
  b.conv("quant_conv", 2 * c.latent_channels, 2 * c.latent_channels, 1);
  b.conv("post_quant_conv", c.latent_channels, c.latent_channels, 1);
  b.conv("decoder.conv_in", top, c.latent_channels, 3);
  mid_block("decoder.mid_block");
  std::vector<int64_t> rev(ch.rbegin(), ch.rend());
  int64_t prev_out = rev[0];
  for (size_t i = 0; i < n; ++i) {
    const int64_t o = rev[i];
    const std::string p = "decoder.up_blocks." + std::to_string(i);
    for (int64_t j = 0; j < c.layers_per_block + 1; ++j)
      b.resnet(p + ".resnets." + std::to_string(j), j == 0 ? prev_out : o, o, 0);
    if (i + 1 < n) b.conv(p + ".upsamplers.0.conv", o, o, 3);
    prev_out = o;
  }
  b.norm("decoder.conv_norm_out", ch[0]);
  b.conv("decoder.conv_out", c.out_channels, ch[0], 3);
  return b.out;
}

std::string modernize_vae_name(const std::string& name) {
  static const std::pair<const char*, const char*> kMap[] = {
      {".query.", ".to_q."}, {".key.", ".to_k."}, {".value.", ".to_v."}, {".proj_attn.", ".to_out.0."}};
  if (name.find(".attentions.") == std::string::npos) return name;
  for (const auto& [from, to] : kMap) {
    const auto pos = name.find(from);
    if (pos != std::string::npos) return name.substr(0, pos) + to + name.substr(pos + std::string(from).size());
  }
  return name;
}

}  // namespace dl::io
