// Training checkpoints. A checkpoint is a model directory in the official release layout (config.json, the LLM,
// clip_vision_embedding, dream_embedding and stable_diffusion_head weight files, tokenizer and base configs), so
// PyTorch and our own loader read it as they read the release, plus the trainer's state:
//   optimizer.safetensors   exp_avg/<name>, exp_avg_sq/<name> (F32) and steps/<name> (I64 [1]) per trainable
//                           parameter;
//   trainer_state.json      optimizer step, samples drawn from the data stream, options that must not change on
//                           resume, the last metrics.
// Weights are written as safetensors; a component none of whose parameters trained is linked (or copied) from its
// source files instead of rewritten. A checkpoint directory appears atomically: it is written as a hidden temporary
// directory, flushed, and renamed into place; on any failure (a full disk included) the temporary directory is
// removed and every earlier checkpoint stays intact.
#pragma once
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "io/model_dir.h"
#include "models/weights.h"
#include "nn/optim.h"

namespace dl::train {

// The live weights to save: every parameter by full state-dict name (the LLM side's and the diffusion head's; for
// the condition projector, which both hold, the LLM side's trained copy wins).
struct ModelWeights {
  const models::ParameterSet* model = nullptr;  // DreamLLM: model.*, lm_head.weight, projector
  const models::ParameterSet* head = nullptr;   // DiffusionHead: stable_diffusion_head.{unet,vae,projector}.*
  // Optional: the label encoder of the label-conditioned UNet stage, written as kLabelEncoderFile.
  const models::ParameterSet* labels = nullptr;
};
inline constexpr const char* kLabelEncoderFile = "label_encoder.safetensors";
inline constexpr const char* kLabelEmbeddingName = "label_encoder.embedding";

// The component (weight file) a full parameter name belongs to.
io::Component component_of(const std::string& name);

// Writes the release layout into `dir` (which must exist): weights of the components in `rewrite` (an io::Component
// mask) from `weights`, the others linked/copied from `source`; config and tokenizer files copied from `source`.
void write_model_files(const std::string& dir, const io::ModelDir& source, const ModelWeights& weights,
                       unsigned rewrite);

struct CheckpointState {
  int64_t step = 0;           // optimizer steps done
  int64_t samples_drawn = 0;  // data stream position
  nlohmann::json options;     // the run's fixed options (checked on resume)
  nlohmann::json metrics;     // the last step's report
};

// Writes <out>/checkpoint-<step> atomically and returns its path.
std::string save_checkpoint(const std::string& out, const io::ModelDir& source, const ModelWeights& weights,
                            unsigned rewrite, const nn::AdamW& optimizer, const CheckpointState& state);
// The checkpoint directory with the highest step under `out` (complete ones only); empty when there is none.
std::string latest_checkpoint(const std::string& out);
CheckpointState read_checkpoint_state(const std::string& checkpoint_dir);
// The same from trainer_state.json's text; `what` names it in errors.
CheckpointState parse_checkpoint_state(const std::string& text, const std::string& what);
// Restores the optimizer's moments and step counts by parameter name; throws naming missing or mismatched ones.
void load_optimizer_state(const std::string& checkpoint_dir, nn::AdamW& optimizer, int64_t step);
// Removes all but the newest `keep` checkpoints under `out` (keep <= 0: keep all), never the directory `in_use`
// (the checkpoint a running job started from, whose files it still links or copies).
void prune_checkpoints(const std::string& out, int keep, const std::string& in_use = "");

}  // namespace dl::train
