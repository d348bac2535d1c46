#include "models/llama.h"

#include "core/error.h"
#include "core/ops.h"
#include "nn/functional.h"

namespace dl::models {

using nn::Var;

void KVCache::select_rows(const std::vector<int64_t>& src) {
  auto gather = [&](Tensor& t) {
    if (!t.defined()) return;
    std::vector<Tensor> rows;
    for (int64_t r : src) {
      DL_CHECK(r >= 0 && r < t.size(0), "KV cache: row ", r, " does not exist (", t.size(0), " rows)");
      rows.push_back(t.slice(0, r, r + 1));
    }
    t = ops::concat(rows, 0);
  };
  for (auto& k : keys) gather(k);
  for (auto& v : values) gather(v);
}

Llama::Llama(const io::LlamaConfig& config, const ParameterSet& p) : config_(config) {
  embed_tokens_ = p.at("model.embed_tokens.weight");
  norm_ = p.at("model.norm.weight");
  lm_head_ = config.tie_word_embeddings ? embed_tokens_ : p.at("lm_head.weight");
  for (int64_t l = 0; l < config.num_hidden_layers; ++l) {
    const std::string n = "model.layers." + std::to_string(l) + ".";
    layers_.push_back({p.at(n + "input_layernorm.weight"), p.at(n + "self_attn.q_proj.weight"),
                       p.at(n + "self_attn.k_proj.weight"), p.at(n + "self_attn.v_proj.weight"),
                       p.at(n + "self_attn.o_proj.weight"), p.at(n + "post_attention_layernorm.weight"),
                       p.at(n + "mlp.gate_proj.weight"), p.at(n + "mlp.up_proj.weight"), p.at(n + "mlp.down_proj.weight")});
  }
}

Var Llama::embed(const Tensor& ids) const {
  DL_CHECK(ids.dim() == 2, "llama: input_ids must be [B, T], got ", ids.describe());
  return nn::embedding(embed_tokens_, ids);
}

Var Llama::forward(const Var& embeds, const Tensor& key_keep, KVCache* cache, const Tensor& positions_in) const {
  const auto& c = config_;
  DL_CHECK(embeds.value().dim() == 3 && embeds.value().size(2) == c.hidden_size, "llama: embeddings ",
           embeds.value().describe(), " are not [B, T, ", c.hidden_size, "]");
  const int64_t B = embeds.value().size(0), T = embeds.value().size(1), hd = c.head_dim();
  const int64_t past = cache ? cache->length : 0;
  DL_CHECK(past + T <= c.max_position_embeddings, "llama: ", past + T, " positions exceed the context of ",
           c.max_position_embeddings);
  if (cache && cache->keys.empty()) {
    cache->keys.resize(size_t(c.num_hidden_layers));
    cache->values.resize(size_t(c.num_hidden_layers));
  }
  if (key_keep.defined())
    DL_CHECK(key_keep.shape() == Shape({B, past + T}), "llama: attention mask ", key_keep.describe(), " is not [", B,
             ", ", past + T, "]");
  Tensor positions = positions_in;
  if (positions.defined()) {
    DL_CHECK(positions.shape() == Shape({B, T}), "llama: positions ", positions.describe(), " are not [", B, ", ", T,
             "]");
  } else {
    std::vector<int64_t> pos(static_cast<size_t>(T));
    for (int64_t t = 0; t < T; ++t) pos[size_t(t)] = past + t;
    positions = Tensor::from_vector_i64(pos, {T});
  }
  nn::Mask mask;
  mask.causal = true;
  if (key_keep.defined()) mask.key_keep = key_keep.to(DType::F32);
  auto heads = [&](const Var& x, int64_t n) { return nn::transpose(nn::reshape(x, {B, T, n, hd}), 1, 2); };

  Var h = embeds;
  for (size_t l = 0; l < layers_.size(); ++l) {
    const Layer& L = layers_[l];
    Var x = nn::rms_norm(h, L.input_norm, c.rms_norm_eps);
    Var q = nn::rope(heads(nn::linear(x, L.q), c.num_attention_heads), positions, c.rope_theta);
    Var k = nn::rope(heads(nn::linear(x, L.k), c.num_key_value_heads), positions, c.rope_theta);
    Var v = heads(nn::linear(x, L.v), c.num_key_value_heads);
    if (cache) {
      if (cache->keys[l].defined()) {
        DL_CHECK(cache->keys[l].size(0) == B, "llama: cache holds ", cache->keys[l].size(0), " rows, input has ", B);
        k = Var(ops::concat({cache->keys[l], k.value()}, 2));
        v = Var(ops::concat({cache->values[l], v.value()}, 2));
      }
      cache->keys[l] = k.value().contiguous();
      cache->values[l] = v.value().contiguous();
    }
    Var a = nn::attention(q, k, v, mask);  // [B, H, T, hd]
    h = nn::add(h, nn::linear(nn::reshape(nn::transpose(a, 1, 2), {B, T, c.hidden_size}), L.o));
    Var y = nn::rms_norm(h, L.post_norm, c.rms_norm_eps);
    h = nn::add(h, nn::linear(nn::swiglu(nn::linear(y, L.gate), nn::linear(y, L.up)), L.down));
  }
  if (cache) cache->length += T;
  return nn::rms_norm(h, norm_, c.rms_norm_eps);
}

Var Llama::logits(const Var& hidden) const { return nn::linear(hidden, lm_head_); }

}  // namespace dl::models
