#include "models/llama.h"

#include <algorithm>
#include <atomic>
#include <cstring>

#include "core/error.h"
#include "core/ops.h"
#include "nn/functional.h"

namespace dl::models {

using nn::Var;

namespace {

std::atomic<DType> g_cache_key_type{DType::F16}, g_cache_value_type{DType::F16};

// A cache tensor [rows, heads, capacity, head_dim] holding the first `filled` positions of `from` (of the rows
// `rows` of it, in that order) in a tensor of capacity `capacity`.
Tensor regrow(const Tensor& from, const std::vector<int64_t>& rows, int64_t capacity, int64_t filled) {
  const int64_t H = from.size(1), old_capacity = from.size(2), hd = from.size(3);
  Tensor to = Tensor::uninitialized({int64_t(rows.size()), H, capacity, hd}, from.dtype());
  const size_t head_bytes = dtype_bytes(from.dtype(), filled * hd);
  for (size_t r = 0; r < rows.size(); ++r)
    for (int64_t h = 0; h < H; ++h)
      std::memcpy(static_cast<char*>(to.raw()) + dtype_bytes(from.dtype(), (int64_t(r) * H + h) * capacity * hd),
                  static_cast<const char*>(from.raw()) +
                      dtype_bytes(from.dtype(), (rows[r] * H + h) * old_capacity * hd),
                  head_bytes);
  return to;
}

}  // namespace

KVCacheTypes default_kv_cache_types() {
  return {g_cache_key_type.load(std::memory_order_relaxed), g_cache_value_type.load(std::memory_order_relaxed)};
}
void set_default_kv_cache_types(KVCacheTypes types) {
  g_cache_key_type.store(types.key, std::memory_order_relaxed);
  g_cache_value_type.store(types.value, std::memory_order_relaxed);
}

void KVCache::append(size_t layer, const Tensor& k, const Tensor& v, int64_t max_length) {
  DL_CHECK(k.dim() == 4 && v.dim() == 4 && k.shape() == v.shape(), "KV cache: keys ", k.describe(), " and values ",
           v.describe(), " are not [rows, heads, T, head_dim] alike");
  const int64_t B = k.size(0), H = k.size(1), T = k.size(2), hd = k.size(3);
  if (keys.size() <= layer) {
    keys.resize(layer + 1);
    values.resize(layer + 1);
  }
  for (DType t : {types.key, types.value}) {
    DL_CHECK(t == DType::F32 || t == DType::F16 || t == DType::BF16 || t == DType::Q8_0, "KV cache: type ",
             dtype_name(t), " is not supported (f32, f16, bf16, q8_0)");
    DL_CHECK(hd % int64_t(dtype_info(t).block_elems) == 0, "KV cache: type ", dtype_name(t),
             " needs a head dimension that is a multiple of ", dtype_info(t).block_elems, "; this model's is ", hd,
             " (use f16)");
  }
  Tensor& kc = keys[layer];
  Tensor& vc = values[layer];
  const int64_t need = length + T;
  DL_CHECK(need <= max_length, "KV cache: ", need, " positions exceed the context of ", max_length);
  if (kc.defined()) {
    DL_CHECK(kc.size(0) == B && kc.size(1) == H && kc.size(3) == hd, "KV cache: holds ", kc.describe(),
             ", new keys are ", k.describe());
  } else {
    DL_CHECK(length == 0, "KV cache: layer ", layer, " is empty at position ", length);
  }
  if (!kc.defined() || kc.size(2) < need) {
    const int64_t old = kc.defined() ? kc.size(2) : 0;
    const int64_t capacity = std::min(max_length, std::max({need, 2 * old, int64_t(256)}));
    std::vector<int64_t> all_rows(static_cast<size_t>(B));
    for (int64_t r = 0; r < B; ++r) all_rows[size_t(r)] = r;
    if (kc.defined()) {
      kc = regrow(kc, all_rows, capacity, length);
      vc = regrow(vc, all_rows, capacity, length);
    } else {
      kc = Tensor::uninitialized({B, H, capacity, hd}, types.key);
      vc = Tensor::uninitialized({B, H, capacity, hd}, types.value);
    }
  }
  const Tensor kf = k.contiguous(), vf = v.contiguous();
  DL_CHECK(kf.dtype() == DType::F32 && vf.dtype() == DType::F32, "KV cache: new keys/values must be F32");
  const int64_t capacity = kc.size(2);
  for (int64_t r = 0; r < B; ++r)
    for (int64_t h = 0; h < H; ++h) {
      const int64_t src = (r * H + h) * T * hd, dst = ((r * H + h) * capacity + length) * hd;
      convert_from_f32(types.key, kf.f32() + src, static_cast<char*>(kc.raw()) + dtype_bytes(types.key, dst), T * hd);
      convert_from_f32(types.value, vf.f32() + src, static_cast<char*>(vc.raw()) + dtype_bytes(types.value, dst),
                       T * hd);
    }
}

void KVCache::select_rows(const std::vector<int64_t>& src) {
  for (size_t l = 0; l < keys.size(); ++l) {
    if (!keys[l].defined()) continue;
    for (int64_t r : src)
      DL_CHECK(r >= 0 && r < keys[l].size(0), "KV cache: row ", r, " does not exist (", keys[l].size(0), " rows)");
    keys[l] = regrow(keys[l], src, keys[l].size(2), length);
    values[l] = regrow(values[l], src, values[l].size(2), length);
  }
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
  auto layer = [c, B, T, hd, positions, mask](const Layer& L, const Var& h, KVCache* cache, size_t index) {
    auto heads = [&](const Var& x, int64_t n) { return nn::transpose(nn::reshape(x, {B, T, n, hd}), 1, 2); };
    Var x = nn::rms_norm(h, L.input_norm, c.rms_norm_eps);
    Var q = nn::rope(heads(nn::linear(x, L.q), c.num_attention_heads), positions, c.rope_theta);
    Var k = nn::rope(heads(nn::linear(x, L.k), c.num_key_value_heads), positions, c.rope_theta);
    Var v = heads(nn::linear(x, L.v), c.num_key_value_heads);
    Var a;  // [B, H, T, hd]
    if (cache) {
      // Inference: the new keys and values join the cache, and attention reads them from there (no gradient).
      cache->append(index, k.value(), v.value(), c.max_position_embeddings);
      a = Var(ops::attention_cached(q.value(), cache->keys[index], cache->values[index], cache->length + T,
                                    mask.view()));
    } else {
      a = nn::attention(q, k, v, mask);
    }
    Var out = nn::add(h, nn::linear(nn::reshape(nn::transpose(a, 1, 2), {B, T, c.hidden_size}), L.o));
    Var y = nn::rms_norm(out, L.post_norm, c.rms_norm_eps);
    return nn::add(out, nn::linear(nn::swiglu(nn::linear(y, L.gate), nn::linear(y, L.up)), L.down));
  };

  Var h = embeds;
  const bool recompute = gradient_checkpointing_ && !cache && nn::grad_enabled();
  for (size_t l = 0; l < layers_.size(); ++l) {
    if (recompute) {
      const Layer L = layers_[l];
      h = nn::checkpoint([layer, L](const std::vector<Var>& in) { return layer(L, in[0], nullptr, 0); }, {h});
    } else {
      h = layer(layers_[l], h, cache, l);
    }
  }
  if (cache) cache->length += T;
  return nn::rms_norm(h, norm_, c.rms_norm_eps);
}

Var Llama::logits(const Var& hidden) const { return nn::linear(hidden, lm_head_); }

}  // namespace dl::models
