// CLIP vision transformer in the Hugging Face layout (CLIPVisionModel), as DreamLLM's comprehension encoder:
// bias-free patch convolution, class token, position embeddings, pre_layrnorm, pre-LN encoder layers with
// quick-GELU MLPs. DreamLLM reads the hidden states of a selected layer with the class token dropped and never
// applies post_layernorm or the CLIP projection.
#pragma once
#include <vector>

#include "io/config.h"
#include "models/weights.h"

namespace dl::models {

class ClipVision {
 public:
  // Weights named <prefix>vision_model.*.
  ClipVision(const io::ClipVisionConfig& config, const ParameterSet& params, const std::string& prefix);

  const io::ClipVisionConfig& config() const { return config_; }
  // pixel_values [N, C, S, S] (preprocessed) -> hidden_states[select_layer] without the class token: [N, P, D].
  // select_layer indexes HF's hidden_states list (embeddings first, then one entry per layer); -2 is the output
  // of the second-to-last layer.
  nn::Var features(const nn::Var& pixel_values, int64_t select_layer) const;

 private:
  struct Layer {
    nn::Var ln1_w, ln1_b, q_w, q_b, k_w, k_b, v_w, v_b, o_w, o_b, ln2_w, ln2_b, fc1_w, fc1_b, fc2_w, fc2_b;
  };
  io::ClipVisionConfig config_;
  nn::Var class_embedding_, patch_embedding_, position_embedding_, pre_ln_w_, pre_ln_b_;
  std::vector<Layer> layers_;
};

}  // namespace dl::models
