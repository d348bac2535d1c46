// Text generation with DreamLLM: prompts (with their images) are consumed in one batched, left-padded forward
// pass, then the generation loop of generate.h extends every row through the KV cache.
#pragma once
#include <vector>

#include "models/dreamllm.h"
#include "pipelines/generate.h"

namespace dl::pipelines {

// A generate.h Decoder over DreamLLM's LLM. Rows are left-padded to a common length; as in HF's
// prepare_inputs_for_generation, positions count only real tokens (cumsum of the mask - 1) and padding is masked.
class DreamLLMDecoder : public Decoder {
 public:
  explicit DreamLLMDecoder(const models::DreamLLM& model);
  // Consumes the prompts (each row its own ids; <im_start> spans take pixel_values [N, C, S, S] in row order) and
  // returns the logits at each row's last prompt token, [rows, V].
  Tensor prefill(const std::vector<std::vector<int32_t>>& prompts, const Tensor& pixel_values);
  Tensor step(const std::vector<int32_t>& tokens) override;
  // Appends a chunk of ids to a single-row session (after prefill): image spans in it take `pixel_values`
  // [N, C, S, S] in order and dream spans take the dream queries, exactly as in a full forward of the whole
  // sequence. Returns the logits at the chunk's last position [1, V]; with `hidden`, also the chunk's final-norm
  // hidden states [1, n, D] (the dream conditions are read from them).
  Tensor feed(const std::vector<int32_t>& chunk, const Tensor& pixel_values, Tensor* hidden = nullptr);
  // Positions consumed so far in each row (prompt, padding excluded, plus everything fed since).
  int64_t consumed(size_t row = 0) const { return next_position_.at(row); }
  void select_rows(const std::vector<int64_t>& src) override;

 private:
  Tensor last_logits(const nn::Var& hidden) const;
  const models::DreamLLM& model_;
  models::KVCache cache_;
  std::vector<std::vector<float>> keep_;  // per row: 1 for real positions, 0 for padding
  std::vector<int64_t> next_position_;
};

// Prefills and generates in one call.
GenerationResult generate_text(const models::DreamLLM& model, const std::vector<std::vector<int32_t>>& prompts,
                               const Tensor& pixel_values, const GenerationConfig& config,
                               const GenerationCallbacks& callbacks = {});

}  // namespace dl::pipelines
