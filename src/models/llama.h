// LLaMA decoder in the Hugging Face layout (what DreamLLM's Vicuna-7B backbone is): pre-norm layers of grouped-query
// attention with rotate-half rotary embeddings and a SwiGLU MLP, RMSNorm, untied lm_head, KV cache.
#pragma once
#include <vector>

#include "io/config.h"
#include "models/weights.h"

namespace dl::models {

// Storage types of a KV cache (llama.cpp's -ctk / -ctv): F16 halves the memory of F32 for a relative error near
// 2^-11 per element; Q8_0 (head dims a multiple of 32) halves it again; F32 and BF16 are also accepted.
struct KVCacheTypes {
  DType key = DType::F16, value = DType::F16;
};
// The types every new KVCache takes: process-wide, as a command line sets them once (-ctk / -ctv); F16 unless set.
KVCacheTypes default_kv_cache_types();
void set_default_kv_cache_types(KVCacheTypes types);

// Keys and values of every layer for the positions consumed so far. Each layer holds [rows, kv_heads, capacity,
// head_dim] in its storage type, of which the first `length` positions per head are filled; the capacity grows
// geometrically up to the context length, so a decoding step appends its position in place instead of copying
// the whole cache.
struct KVCache {
  KVCacheTypes types = default_kv_cache_types();
  std::vector<Tensor> keys, values;
  int64_t length = 0;
  int64_t capacity() const { return keys.empty() || !keys[0].defined() ? 0 : keys[0].size(2); }
  // Writes layer `layer`'s keys and values [rows, kv_heads, T, head_dim] (F32, any strides) at positions
  // [length, length + T), growing the capacity (at most to `max_length`) when needed. `length` itself advances
  // only once every layer is written (Llama::forward), so a failed step leaves the cache as it was.
  void append(size_t layer, const Tensor& k, const Tensor& v, int64_t max_length);
  // New row i continues old row src[i] (beam search reorders and duplicates rows).
  void select_rows(const std::vector<int64_t>& src);
};

class Llama {
 public:
  // Weights named model.* and lm_head.weight (lm_head may be absent when embeddings are tied).
  Llama(const io::LlamaConfig& config, const ParameterSet& params);

  const io::LlamaConfig& config() const { return config_; }
  // Token embeddings [B, T, D] of ids [B, T].
  nn::Var embed(const Tensor& ids) const;
  // Runs the decoder over input embeddings [B, T, D] and returns the final-norm hidden states [B, T, D].
  // key_keep [B, past + T] (1 keep, 0 padding) may be undefined (nothing masked beyond causality). With a cache,
  // the T new positions follow cache->length earlier ones and their keys/values are appended (inference only:
  // gradients do not flow into cached keys/values).
  // Positions are arange(past, past + T) for every row, as the original forward (padding is masked, never
  // compacted), unless `positions` [B, T] (I64) gives them per row, as generation with left padding does.
  nn::Var forward(const nn::Var& embeds, const Tensor& key_keep, KVCache* cache = nullptr,
                  const Tensor& positions = Tensor()) const;
  // Activation recomputation for training: each layer keeps only its input and runs again during backward
  // (gradient checkpointing, as the original trains). Same values and gradients, much less memory.
  void set_gradient_checkpointing(bool on) { gradient_checkpointing_ = on; }
  // Logits [.., V] of hidden states [.., D].
  nn::Var logits(const nn::Var& hidden) const;

 private:
  struct Layer {
    nn::Var input_norm, q, k, v, o, post_norm, gate, up, down;
  };
  io::LlamaConfig config_;
  nn::Var embed_tokens_, norm_, lm_head_;
  std::vector<Layer> layers_;
  bool gradient_checkpointing_ = false;
};

}  // namespace dl::models
