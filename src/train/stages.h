// The four training stages of DreamLLM (docs/dreamllm-architecture.md section 3.2) as presets: which parameter
// groups train, the loss weights, the learning rate, the data modes and which parts start from a fresh
// initialisation. Every field can be overridden from the command line.
#pragma once
#include <string>
#include <vector>

#include "train/loss.h"

namespace dl::train {

// Parameter groups, by full state-dict name (design.md section 3).
enum class Group {
  kLLM,                 // model.* and lm_head.weight (embeddings included)
  kVisionProjector,     // model.clip_vision_embedding.projector.projector.*
  kDreamQueries,        // model.dream_embedding.dream_queries
  kConditionProjector,  // stable_diffusion_head.projector.projector.weight
  kVisionTower,         // model.clip_vision_embedding.clip_vision_model.* (frozen in every released stage)
  kUNet,                // stable_diffusion_head.unet.* (frozen in every released stage; trained from scratch)
  kVAE,                 // stable_diffusion_head.vae.* (frozen in every released stage; trained from scratch)
};
// Group of a parameter name; throws for names outside the groups.
Group group_of(const std::string& name);
const char* group_name(Group g);
Group parse_group(const std::string& name);  // "llm", "vision_projector", "dream_queries", ...

// What a stage starts from fresh, as the original does when it builds the module anew.
enum class Reinit {
  kDreamQueries,        // N(0, 0.02) (PluginBase._init_weights)
  kVisionProjector,     // PyTorch Linear default: kaiming-uniform(a = sqrt 5) weight, U(+-1/sqrt(fan_in)) bias
  kConditionProjector,  // the same, no bias
  kNewTokenRows,        // embed_tokens and lm_head rows of DreamLLM's added tokens ([PAD] and the 7 specials): N(0, 0.02)
};
const char* reinit_name(Reinit r);
Reinit parse_reinit(const std::string& name);

// What a stage optimises: DreamLLM's joint LM + diffusion objective, or (building a model from scratch, where no
// pretrained Stable Diffusion exists) the VAE's own: reconstruction MSE + kl_weight x KL, as SD's autoencoder
// was trained without its perceptual and adversarial terms; or the UNet's own: the diffusion loss conditioned on
// the pictures' labels (LabelConditionedObjective), as SD's UNet was trained on a frozen text encoder's states.
enum class Objective { kDreamLLM, kAutoencoder, kLabelConditioned };

struct StagePreset {
  std::string name;  // "I-a", "I-b", "II", "III", "VAE", "UNet"
  std::string description;
  std::vector<Group> trainable;
  LossWeights weights;
  float learning_rate = 2e-5f;
  bool comprehension = true, creation = true;  // data modes (DocumentOptions)
  std::vector<Reinit> reinit;
  Objective objective = Objective::kDreamLLM;
  float kl_weight = 1e-6f;  // kAutoencoder only (SD's KL weight)
  // kAutoencoder only: each latent pixel is multiplied by a gain drawn from U[1 - j, 1 + j] before decoding (all
  // channels alike), so the decoder has to read what a latent pixel shows from its direction, not its length.
  // Diffusion samples miss the length (shrinkage without guidance, overshoot with it), and a latent that codes
  // colour by length turns every such miss into a wrong colour. 0: off, SD's autoencoder.
  float latent_gain_jitter = 0.f;
};

// "I-a" (alias "1a", "creation"), "I-b" ("1b", "comprehension"), "II" ("2", "pretrain"), "III" ("3", "sft"),
// "VAE" ("vae"): the autoencoder on the data's pictures, and "UNet" ("unet"): the UNet from scratch on pairs whose
// records carry condition labels.
StagePreset stage_preset(const std::string& name);
std::vector<std::string> stage_names();

// The learning rate multiplier at optimizer step `step` (0-based) of `total` with HF's
// get_cosine_schedule_with_warmup: linear warm-up over ceil(total * warmup_ratio) steps from 0, then half a cosine
// down to 0. (HF steps the schedule after each optimizer step, so step 0 runs at multiplier 0 when warming up.)
int64_t warmup_steps(int64_t total, double warmup_ratio);
double cosine_with_warmup(int64_t step, int64_t total, int64_t warmup);

}  // namespace dl::train
