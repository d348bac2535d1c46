// A DreamLLM model directory in the official release layout (design.md section 2): config.json, the LLM weights
// (pytorch_model.bin, model.safetensors or HF shards with an index), the three plugin files, tokenizer files and
// optional base configs. Opening reads and validates the configs; load() reads the weights of the requested
// components, checks every expected tensor is present with the expected shape (one error listing every missing,
// unexpected and mis-shaped name), and returns them under the full state-dict names of design.md section 3.
#pragma once
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "io/checkpoint_layout.h"
#include "io/config.h"
#include "io/image.h"
#include "io/torch_bin.h"

namespace dl::io {

struct GgufModel;  // io/gguf_model.h

// kDiffusion is the UNet + VAE + condition projector; kConditionProjector alone reads just the projector from the
// same file (what the LLM side needs to produce diffusion conditions).
enum Component : unsigned {
  kLLM = 1,
  kClip = 2,
  kDream = 4,
  kDiffusion = 8,
  kConditionProjector = 16,
  kAllComponents = kLLM | kClip | kDream | kDiffusion
};

class ModelDir {
 public:
  // A model directory, or a converted model's NAME.gguf (its companion NAME.mmproj.gguf found beside it).
  static ModelDir open(const std::string& dir);
  // The texts of the directory's configs (std::nullopt: absent, defaults apply), as open() reads them.
  struct ConfigTexts {
    std::string config;
    std::optional<std::string> clip_vision, unet, vae, scheduler;
  };
  // open() from texts already in memory (the fuzzer's entry point); `dir` names the files in errors.
  static ModelDir from_configs(const std::string& dir, const ConfigTexts& texts);
  // A converted model already opened (open() of NAME.gguf; the fuzzer's entry point).
  static ModelDir from_gguf(std::shared_ptr<const GgufModel> gguf);

  const std::string& path() const { return dir_; }
  const DreamLLMConfig& config() const { return config_; }
  const ClipVisionConfig& clip_config() const { return clip_; }
  const UNetConfig& unet_config() const { return unet_; }
  const VaeConfig& vae_config() const { return vae_; }
  const SchedulerConfig& scheduler_config() const { return scheduler_; }

  // Expected full names and shapes of a component.
  Layout expected(Component c) const;
  // Loads the components in `mask` (a bitwise or of Component values).
  StateDict load(unsigned mask = kAllComponents) const;
  // Whether the model holds the weights of component `c`. A plain LLaMA model (text only) holds just kLLM; the
  // commands then refuse images and creation by name instead of failing on a missing file.
  bool has(Component c) const { return (present_ & unsigned(c)) == unsigned(c); }
  // The file(s) a component's weights are read from (the index and its shards for a sharded LLM); kDiffusion and
  // kConditionProjector share stable_diffusion_head.*. Throws when the component has no weight file.
  std::vector<std::string> weight_files(Component c) const;
  // The GGUF pair a converted model was opened from; null for a directory.
  const std::shared_ptr<const GgufModel>& gguf() const { return gguf_; }

 private:
  // Defined in gguf_model.cpp.
  static ModelDir open_gguf(const std::string& path);
  StateDict load_gguf(unsigned mask) const;
  std::shared_ptr<const GgufModel> gguf_;
  std::string dir_;
  DreamLLMConfig config_;
  ClipVisionConfig clip_;
  UNetConfig unet_;
  VaeConfig vae_;
  SchedulerConfig scheduler_;
  unsigned present_ = kAllComponents | kConditionProjector;
};

// The CLIP image preprocessing of a model directory: its preprocessor_config.json, or CLIP's defaults at the
// vision tower's image size.
ClipPreprocessConfig clip_preprocess_config(const ModelDir& dir);

// Reads one weight file: .bin (torch.save zip), .safetensors, or a sharded checkpoint's *.index.json.
StateDict read_weights(const std::string& path);
// A sharded checkpoint's *.index.json text: shard file -> the tensor names it holds. Every shard must be a
// .safetensors or .bin file name without a directory part; `what` names the index in errors.
std::map<std::string, std::vector<std::string>> parse_weight_index(const std::string& text, const std::string& what);

// Checks `tensors` against `expected`; names listed in `ignored_suffixes` are dropped silently. Weights stored
// as 1x1 convolutions where a linear weight is expected are reshaped. Throws one error listing every problem.
void check_against_layout(StateDict& tensors, const Layout& expected, const std::vector<std::string>& ignored_suffixes,
                          const std::string& what);

}  // namespace dl::io
