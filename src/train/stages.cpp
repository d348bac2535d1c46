#include "train/stages.h"

#include <cmath>
#include <numbers>

#include "core/error.h"

namespace dl::train {

Group group_of(const std::string& n) {
  if (n.starts_with("model.clip_vision_embedding.projector.")) return Group::kVisionProjector;
  if (n.starts_with("stable_diffusion_head.unet.")) return Group::kUNet;
  if (n.starts_with("stable_diffusion_head.vae.")) return Group::kVAE;
  if (n.starts_with("model.clip_vision_embedding.")) return Group::kVisionTower;
  if (n == "model.dream_embedding.dream_queries") return Group::kDreamQueries;
  if (n == "stable_diffusion_head.projector.projector.weight") return Group::kConditionProjector;
  if (n.starts_with("model.") || n == "lm_head.weight") return Group::kLLM;
  fail("parameter '", n, "' belongs to no parameter group");
}

const char* group_name(Group g) {
  switch (g) {
    case Group::kLLM: return "llm";
    case Group::kVisionProjector: return "vision_projector";
    case Group::kDreamQueries: return "dream_queries";
    case Group::kConditionProjector: return "condition_projector";
    case Group::kVisionTower: return "vision_tower";
    case Group::kUNet: return "unet";
    case Group::kVAE: return "vae";
  }
  return "?";
}

Group parse_group(const std::string& s) {
  for (Group g : {Group::kLLM, Group::kVisionProjector, Group::kDreamQueries, Group::kConditionProjector,
                  Group::kVisionTower, Group::kUNet, Group::kVAE})
    if (s == group_name(g)) return g;
  fail("unknown parameter group '", s,
       "' (expected llm, vision_projector, dream_queries, condition_projector, vision_tower, unet or vae)");
}

const char* reinit_name(Reinit r) {
  switch (r) {
    case Reinit::kDreamQueries: return "dream_queries";
    case Reinit::kVisionProjector: return "vision_projector";
    case Reinit::kConditionProjector: return "condition_projector";
    case Reinit::kNewTokenRows: return "new_token_rows";
  }
  return "?";
}

Reinit parse_reinit(const std::string& s) {
  for (Reinit r : {Reinit::kDreamQueries, Reinit::kVisionProjector, Reinit::kConditionProjector, Reinit::kNewTokenRows})
    if (s == reinit_name(r)) return r;
  fail("unknown re-initialisation '", s,
       "' (expected dream_queries, vision_projector, condition_projector or new_token_rows)");
}

StagePreset stage_preset(const std::string& name) {
  StagePreset p;
  if (name == "I-a" || name == "1a" || name == "creation") {
    p = {"I-a", "creation alignment: dream queries + condition projector learn to drive the frozen SD",
         {Group::kDreamQueries, Group::kConditionProjector}, {0.f, 1.f}, 2e-3f, false, true,
         {Reinit::kDreamQueries, Reinit::kConditionProjector}};
  } else if (name == "I-b" || name == "1b" || name == "comprehension") {
    p = {"I-b", "comprehension alignment: the vision projector maps CLIP features into the frozen LLM",
         {Group::kVisionProjector}, {1.f, 0.f}, 2e-3f, true, false, {Reinit::kVisionProjector}};
  } else if (name == "II" || name == "2" || name == "pretrain") {
    p = {"II", "interleaved generative pretraining: everything but CLIP, UNet and VAE",
         {Group::kLLM, Group::kVisionProjector, Group::kDreamQueries, Group::kConditionProjector}, {1.f, 10.f}, 2e-5f,
         true, true, {Reinit::kNewTokenRows}};
  } else if (name == "III" || name == "3" || name == "sft") {
    p = {"III", "supervised fine-tuning on instructions, conversations and pairs",
         {Group::kLLM, Group::kVisionProjector, Group::kDreamQueries, Group::kConditionProjector}, {1.f, 10.f}, 4e-5f,
         true, true, {}};
  } else if (name == "VAE" || name == "vae") {
    p = {"VAE", "the image autoencoder from scratch: reconstruction + KL on the data's pictures",
         {Group::kVAE}, {0.f, 0.f}, 1e-3f, false, true, {}};
    p.objective = Objective::kAutoencoder;
  } else if (name == "UNet" || name == "unet") {
    p = {"UNet", "the UNet from scratch: the diffusion loss conditioned on the pictures' labelled content",
         {Group::kUNet}, {0.f, 1.f}, 1e-3f, false, true, {}};
    p.objective = Objective::kLabelConditioned;
  } else {
    fail("unknown stage '", name, "' (expected I-a, I-b, II, III, VAE or UNet)");
  }
  return p;
}

std::vector<std::string> stage_names() { return {"I-a", "I-b", "II", "III", "VAE", "UNet"}; }

int64_t warmup_steps(int64_t total, double ratio) {
  DL_CHECK(ratio >= 0 && ratio <= 1, "warm-up ratio ", ratio, " is outside [0, 1]");
  return int64_t(std::ceil(double(total) * ratio));
}

double cosine_with_warmup(int64_t step, int64_t total, int64_t warmup) {
  if (step < warmup) return double(step) / double(std::max<int64_t>(1, warmup));
  const double progress = double(step - warmup) / double(std::max<int64_t>(1, total - warmup));
  return std::max(0.0, 0.5 * (1.0 + std::cos(std::numbers::pi * progress)));
}

}  // namespace dl::train
