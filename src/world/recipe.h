// The tiny DreamLLM of the shapes world, built from nothing: the text its tokenizer learns from, and its sizes.
// Every part is the real architecture at toy scale (LLaMA, CLIP ViT, SD UNet and VAE), so the same code paths
// train and run it as the 7B release.
#pragma once
#include <string>
#include <vector>

#include "train/scratch.h"

namespace dl::world {

struct TinyModelOptions {
  int64_t patch_size = 0;            // CLIP patch side in px; 0: a quarter of the picture (16 patches)
  // The fresh CLIP position embeddings' standard deviation (HF's 0.02 by default). With one cell per patch (36 px,
  // 12 px patches) the patches' content no longer tells where they are; the recipe starts them at 0.25, the spread
  // of the patch features across pictures, so that the tower's features carry the cell from the first step.
  double vision_position_std = 0.02;
  bool unet_text_embedding = false;  // diffusers' addition_embed_type "text" in the UNet
  // SD 2.1-base's noise schedule (epsilon prediction, the last timestep at SNR 0.0047) instead of the world's:
  // v_prediction with the betas rescaled to zero terminal SNR. Trained on SD's, the UNet barely learns the layout
  // from the condition: an epsilon loss weights x0 errors at the noisiest steps by their SNR, and the last step
  // still shows where the shapes are (docs/shapes_world.md, "The UNet did not learn the layout from the condition").
  bool sd_noise_schedule = false;
  // The VAE's downsampling factor, 4 or 2. At 4 (8x8 latents at 32 px) a shape is 1.6-2.3 latent pixels across and
  // its kind is a pattern of channel values at one of 9 sub-pixel phases; at 2 (16x16 latents) it is 3-5 pixels
  // across, a shape the UNet's convolutions can draw, and the UNet gets a third level (16, 8 and 4 latent px).
  int64_t latent_downsampling = 4;
  // Learned dream queries, the length of the UNet's condition (the original has 64). Each query's state is one
  // token the UNet's cross-attention reads; more of them let different queries carry different attributes.
  int64_t dream_queries = 8;
  // The LLM reads words with the embeddings it writes them with (HF's tie_word_embeddings). Untied, as LLaMA, the
  // world's LLM never learns to tell "left" from "right" as inputs, and "top" from "bottom" barely: the words that
  // follow them are the same, so their input embeddings stay about where they were initialised, and the
  // dream-query conditions barely change with them. Tied, what captioning teaches the output rows is what reading
  // sees.
  bool tie_embeddings = false;
};

// The world's sizes for `image_size` px pictures (24-64, a multiple of the downsampling): 4x (or 2x) VAE
// downsampling, options.dream_queries dream queries.
train::ScratchSpec tiny_spec(int64_t image_size, const TinyModelOptions& options = {});

// Every sentence of a generated split's files (captions, questions, answers, documents, instructions, drawing
// requests) with the DreamLLM placeholders removed: the tokenizer's training text.
std::vector<std::string> training_text(const std::string& split_dir);

// Trains the tokenizer on `data_dir`/train and writes a fresh model directory to `out`.
void init_model(const std::string& data_dir, const std::string& out, int64_t image_size, int vocab_size, uint64_t seed,
                const TinyModelOptions& options = {});

}  // namespace dl::world
