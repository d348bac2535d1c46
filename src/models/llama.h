// LLaMA decoder in the Hugging Face layout (what DreamLLM's Vicuna-7B backbone is): pre-norm layers of grouped-query
// attention with rotate-half rotary embeddings and a SwiGLU MLP, RMSNorm, untied lm_head, KV cache.
#pragma once
#include <vector>

#include "io/config.h"
#include "models/weights.h"

namespace dl::models {

// Keys and values of every layer for the positions consumed so far: [rows, kv_heads, length, head_dim] each.
struct KVCache {
  std::vector<Tensor> keys, values;
  int64_t length = 0;
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
