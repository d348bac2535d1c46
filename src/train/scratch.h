// A DreamLLM built from nothing: a model directory in the release layout whose every weight is freshly
// initialised the way each original library initialises a new module, so the trainer can take it from there:
//  - LLaMA (transformers LlamaPreTrainedModel._init_weights): Linear and Embedding weights N(0, 0.02), RMSNorm 1;
//  - CLIP vision tower (CLIPPreTrainedModel._init_weights, factor 1): class embedding N(0, D^-1/2), patch and
//    position embeddings N(0, 0.02), attention q/k/v N(0, D^-1/2 (2L)^-1/2), out_proj N(0, D^-1/2), fc1
//    N(0, (2D)^-1/2), fc2 N(0, D^-1/2 (2L)^-1/2), biases 0, LayerNorm 1/0;
//  - UNet and VAE (diffusers keeps PyTorch's defaults): Conv2d/Linear weight and bias U(+-1/sqrt(fan_in)),
//    GroupNorm/LayerNorm 1/0;
//  - the projectors PyTorch's Linear default, the dream queries N(0, 0.02) (DreamLLM's plugins).
#pragma once
#include <string>

#include "io/config.h"

namespace dl::train {

struct ScratchSpec {
  io::LlamaConfig llm;  // vocab_size is taken from the tokenizer (SentencePiece pieces + 8 added tokens)
  io::ClipVisionConfig clip;
  io::UNetConfig unet;
  io::VaeConfig vae;
  io::SchedulerConfig scheduler;  // SD 2.1-base's by default
  int64_t dream_queries = 64;
  int64_t clip_select_layer = -2;
  // Standard deviation of the fresh CLIP position embeddings: HF's initializer_range (0.02) by default. Where every
  // patch holds one whole cell of a grid, the patches' content says nothing about where they are, and at 0.02 the
  // position is a few percent of the patch features.
  double clip_position_std = 0.02;
  float loss_weight_lm = 1.f, loss_weight_vm = 10.f;
};

// Writes `dir` (created if needed): config.json, clip_vision/, unet/, vae/, scheduler/ configs, the tokenizer files
// for `sentencepiece_model` (tokenizer.model bytes), and the four weight files as F32 safetensors.
void create_model_dir(const std::string& dir, ScratchSpec spec, const std::string& sentencepiece_model, uint64_t seed);

}  // namespace dl::train
