// The tiny DreamLLM of the shapes world, built from nothing: the text its tokenizer learns from, and its sizes.
// Every part is the real architecture at toy scale (LLaMA, CLIP ViT, SD UNet and VAE), so the same code paths
// train and run it as the 7B release.
#pragma once
#include <string>
#include <vector>

#include "train/scratch.h"

namespace dl::world {

// The world's sizes for `image_size` px pictures (32 or 64): 4x VAE downsampling, CLIP patches of `patch_size` px
// (0: image_size / 4, 16 patches). `unet_text_embedding` adds diffusers' addition_embed_type "text" to the UNet.
train::ScratchSpec tiny_spec(int64_t image_size, int64_t patch_size = 0, bool unet_text_embedding = false);

// Every sentence of a generated split's files (captions, questions, answers, documents, instructions, drawing
// requests) with the DreamLLM placeholders removed: the tokenizer's training text.
std::vector<std::string> training_text(const std::string& split_dir);

// Trains the tokenizer on `data_dir`/train and writes a fresh model directory to `out`.
void init_model(const std::string& data_dir, const std::string& out, int64_t image_size, int vocab_size, uint64_t seed,
                int64_t patch_size = 0, bool unet_text_embedding = false);

}  // namespace dl::world
