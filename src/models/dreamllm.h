// DreamLLM: the LLaMA backbone with two plugins on its input side and one on its output side.
//  - comprehension: each <im_start> is followed by P positions that receive the next image's CLIP features
//    (selected layer, class token dropped) through the vision projector (Linear with bias);
//  - creation: each <dream_start> is followed by Q positions that receive the learned dream queries, and the
//    final-norm hidden states there, through the condition projector (Linear, no bias), are the diffusion
//    conditions (encoder_hidden_states of the UNet).
// Token ids, P, Q and sizes all come from the model's configs. A plain LLaMA model (no plugin files) is the LLM
// alone: it runs text, and asking it for images or conditions is an error naming what the model lacks.
#pragma once
#include <memory>
#include <optional>
#include <string>

#include "io/model_dir.h"
#include "models/clip_vision.h"
#include "models/llama.h"

namespace dl::models {

// The errors of a model that lacks a plugin: `path` names the model, `what` says what asked for the plugin.
[[noreturn]] void fail_no_vision(const std::string& path, const std::string& what);
[[noreturn]] void fail_no_creation(const std::string& path, const std::string& what);

class DreamLLM {
 public:
  // Loads the LLM and whichever of the vision tower, dream queries and condition projector the model has.
  static DreamLLM load(const io::ModelDir& dir);
  DreamLLM(const io::ModelDir& dir, ParameterSet params);

  const io::DreamLLMConfig& config() const { return config_; }
  const Llama& llm() const { return llm_; }
  void set_gradient_checkpointing(bool on) { llm_.set_gradient_checkpointing(on); }
  // The vision tower; throws when the model has none.
  const ClipVision& vision() const;
  const ParameterSet& parameters() const { return params_; }
  bool has_vision() const { return vision_.has_value(); }
  // The dream queries and the condition projector: what creating images needs on the LLM side.
  bool has_creation() const { return has_dream_; }
  // Throw the error a text-only model gives for an image (`what` says what asked for it).
  void require_vision(const std::string& what) const;
  void require_creation(const std::string& what) const;
  int64_t image_tokens() const { return vision_ ? vision_->config().num_patches() : 0; }  // P (0: no vision)
  int64_t dream_queries() const { return num_queries_; }                    // Q
  int64_t im_start_id() const { return im_start_; }
  int64_t dream_start_id() const { return dream_start_; }

  // Projected image features [N, P, D] of preprocessed pixel_values [N, C, S, S].
  nn::Var image_embeds(const nn::Var& pixel_values) const;
  // Diffusion conditions [M, Q, C] of final-norm hidden states at query positions [M, Q, D].
  nn::Var conditions(const nn::Var& query_hidden) const;
  // Dream queries as input embeddings [1, Q, D].
  nn::Var dream_query_embeds() const;

  // Input embeddings of ids [B, T] with every image span and dream span substituted. `images` [N, P, D] are
  // consumed in batch-major span order (may be undefined when there is no <im_start>).
  nn::Var embed(const Tensor& ids, const nn::Var& images) const;

  struct Output {
    nn::Var logits;      // [B, T, V]
    nn::Var hidden;      // [B, T, D], after the final norm
    nn::Var conditions;  // [M, Q, C] for the M dream spans in batch-major order (undefined when M = 0)
  };
  // The full forward: ids [B, T] (I32/I64), key_keep [B, T] (undefined: no padding), pixel_values [N, C, S, S]
  // (undefined: no images).
  Output forward(const Tensor& ids, const Tensor& key_keep, const Tensor& pixel_values) const;

  // Positions (row, index of the span's opening token) of every span opened by `token`, batch-major.
  static std::vector<std::pair<int64_t, int64_t>> spans(const Tensor& ids, int64_t token);

 private:
  io::DreamLLMConfig config_;
  ParameterSet params_;
  Llama llm_;
  std::string path_;
  std::optional<ClipVision> vision_;
  bool has_dream_ = false;
  int64_t num_queries_, im_start_, dream_start_, select_layer_;
};

}  // namespace dl::models
