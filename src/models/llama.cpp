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
  // One decoder layer; self-contained (captures by value) so that a checkpointed segment can run it again during
  // backward, after this function has returned.
  auto layer = [c, B, T, hd, positions, mask](const Layer& L, const Var& h, Tensor* cached_k, Tensor* cached_v) {
    auto heads = [&](const Var& x, int64_t n) { return nn::transpose(nn::reshape(x, {B, T, n, hd}), 1, 2); };
    Var x = nn::rms_norm(h, L.input_norm, c.rms_norm_eps);
    Var q = nn::rope(heads(nn::linear(x, L.q), c.num_attention_heads), positions, c.rope_theta);
    Var k = nn::rope(heads(nn::linear(x, L.k), c.num_key_value_heads), positions, c.rope_theta);
    Var v = heads(nn::linear(x, L.v), c.num_key_value_heads);
    if (cached_k) {
      if (cached_k->defined()) {
        DL_CHECK(cached_k->size(0) == B, "llama: cache holds ", cached_k->size(0), " rows, input has ", B);
        k = Var(ops::concat({*cached_k, k.value()}, 2));
        v = Var(ops::concat({*cached_v, v.value()}, 2));
      }
      *cached_k = k.value().contiguous();
      *cached_v = v.value().contiguous();
    }
    Var a = nn::attention(q, k, v, mask);  // [B, H, T, hd]
    Var out = nn::add(h, nn::linear(nn::reshape(nn::transpose(a, 1, 2), {B, T, c.hidden_size}), L.o));
    Var y = nn::rms_norm(out, L.post_norm, c.rms_norm_eps);
    return nn::add(out, nn::linear(nn::swiglu(nn::linear(y, L.gate), nn::linear(y, L.up)), L.down));
  };

  Var h = embeds;
  const bool recompute = gradient_checkpointing_ && !cache && nn::grad_enabled();
  for (size_t l = 0; l < layers_.size(); ++l) {
    if (recompute) {
      const Layer L = layers_[l];
      h = nn::checkpoint([layer, L](const std::vector<Var>& in) { return layer(L, in[0], nullptr, nullptr); }, {h});
    } else {
      h = layer(layers_[l], h, cache ? &cache->keys[l] : nullptr, cache ? &cache->values[l] : nullptr);
    }
  }
  if (cache) cache->length += T;
  return nn::rms_norm(h, norm_, c.rms_norm_eps);
}

Var Llama::logits(const Var& hidden) const { return nn::linear(hidden, lm_head_); }

}  // namespace dl::models
