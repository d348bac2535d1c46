#include "models/clip_vision.h"

#include <cmath>

#include "core/error.h"
#include "nn/functional.h"

namespace dl::models {

using nn::Var;

ClipVision::ClipVision(const io::ClipVisionConfig& config, const ParameterSet& p, const std::string& prefix)
    : config_(config) {
  const std::string v = prefix + "vision_model.";
  class_embedding_ = p.at(v + "embeddings.class_embedding");
  patch_embedding_ = p.at(v + "embeddings.patch_embedding.weight");
  position_embedding_ = p.at(v + "embeddings.position_embedding.weight");
  pre_ln_w_ = p.at(v + "pre_layrnorm.weight");
  pre_ln_b_ = p.at(v + "pre_layrnorm.bias");
  for (int64_t l = 0; l < config.num_hidden_layers; ++l) {
    const std::string n = v + "encoder.layers." + std::to_string(l) + ".";
    auto w = [&](const std::string& m) { return p.at(n + m + ".weight"); };
    auto b = [&](const std::string& m) { return p.at(n + m + ".bias"); };
    layers_.push_back({w("layer_norm1"), b("layer_norm1"), w("self_attn.q_proj"), b("self_attn.q_proj"),
                       w("self_attn.k_proj"), b("self_attn.k_proj"), w("self_attn.v_proj"), b("self_attn.v_proj"),
                       w("self_attn.out_proj"), b("self_attn.out_proj"), w("layer_norm2"), b("layer_norm2"),
                       w("mlp.fc1"), b("mlp.fc1"), w("mlp.fc2"), b("mlp.fc2")});
  }
}

Var ClipVision::features(const Var& pixel_values, int64_t select_layer) const {
  const auto& c = config_;
  const Tensor& px = pixel_values.value();
  DL_CHECK(px.dim() == 4 && px.size(1) == c.num_channels && px.size(2) == c.image_size && px.size(3) == c.image_size,
           "clip: pixel_values ", px.describe(), " are not [N, ", c.num_channels, ", ", c.image_size, ", ",
           c.image_size, "]");
  const int64_t L = c.num_hidden_layers;
  // hidden_states has L + 1 entries; entry i is the output after i layers.
  const int64_t entry = select_layer < 0 ? L + 1 + select_layer : select_layer;
  DL_CHECK(entry >= 0 && entry <= L, "clip: select_layer ", select_layer, " is outside the ", L + 1,
           " hidden states");
  const int64_t N = px.size(0), D = c.hidden_size, P = c.num_patches(), nh = c.num_attention_heads, hd = D / nh;
  Var patches = nn::conv2d(pixel_values, patch_embedding_, nullptr, int(c.patch_size), 0);  // [N, D, g, g]
  patches = nn::transpose(nn::reshape(patches, {N, D, P}), 1, 2);                          // [N, P, D]
  // The class token leads every sequence: broadcast it over the batch by adding it to zeros.
  Var cls = nn::add(Var(Tensor::zeros({N, 1, D})), nn::reshape(as_f32(class_embedding_), {1, 1, D}));
  Var x = nn::add(nn::concat({cls, patches}, 1), as_f32(position_embedding_));
  x = nn::layer_norm(x, &pre_ln_w_, &pre_ln_b_, c.layer_norm_eps);
  const ops::Act act = c.hidden_act == "quick_gelu" ? ops::Act::QuickGelu : ops::Act::GeluErf;
  auto heads = [&](const Var& t) { return nn::transpose(nn::reshape(t, {N, P + 1, nh, hd}), 1, 2); };
  for (int64_t l = 0; l < entry; ++l) {
    const Layer& Ly = layers_[size_t(l)];
    Var r = x;
    Var y = nn::layer_norm(x, &Ly.ln1_w, &Ly.ln1_b, c.layer_norm_eps);
    Var q = heads(nn::linear(y, Ly.q_w, &Ly.q_b));
    Var k = heads(nn::linear(y, Ly.k_w, &Ly.k_b));
    Var v = heads(nn::linear(y, Ly.v_w, &Ly.v_b));
    Var a = nn::attention(q, k, v, {}, 1.f / std::sqrt(float(hd)));
    x = nn::add(r, nn::linear(nn::reshape(nn::transpose(a, 1, 2), {N, P + 1, D}), Ly.o_w, &Ly.o_b));
    r = x;
    y = nn::layer_norm(x, &Ly.ln2_w, &Ly.ln2_b, c.layer_norm_eps);
    x = nn::add(r, nn::linear(nn::activation(act, nn::linear(y, Ly.fc1_w, &Ly.fc1_b)), Ly.fc2_w, &Ly.fc2_b));
  }
  return nn::slice(x, 1, 1, P + 1);
}

}  // namespace dl::models
