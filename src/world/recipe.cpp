#include "world/recipe.h"

#include <filesystem>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/atomic_file.h"
#include "io/config.h"
#include "world/prompt_check.h"
#include "text/tokenizer_trainer.h"
#include "train/documents.h"
#include "train/jsonl.h"

namespace dl::world {

namespace fs = std::filesystem;

train::ScratchSpec tiny_spec(int64_t image_size, const TinyModelOptions& options) {
  const int64_t down = options.latent_downsampling;
  DL_CHECK(down == 2 || down == 4, "the tiny world model's VAE downsamples 2x or 4x, not ", down, "x");
  DL_CHECK(image_size >= 24 && image_size <= 64 && image_size % down == 0, "the tiny world model is sized for ",
           "24-64 px pictures whose side the VAE's ", down, "x downsampling divides, not ", image_size, " px");
  int64_t patch_size = options.patch_size;
  if (patch_size == 0) patch_size = image_size / 4;  // 16 patches
  DL_CHECK(patch_size >= 2 && image_size % patch_size == 0 && image_size / patch_size <= 16, "CLIP patches of ",
           patch_size, " px do not tile a ", image_size, " px picture into at most 16 x 16 patches");
  train::ScratchSpec s;
  s.llm.hidden_size = 128;
  s.llm.intermediate_size = 344;
  s.llm.num_hidden_layers = 4;
  s.llm.num_attention_heads = 4;
  s.llm.num_key_value_heads = 4;
  s.llm.max_position_embeddings = 512;
  s.llm.tie_word_embeddings = options.tie_embeddings;
  s.clip.hidden_size = 96;
  s.clip.intermediate_size = 384;
  s.clip.num_hidden_layers = 4;
  s.clip.num_attention_heads = 4;
  s.clip.image_size = image_size;
  s.clip.patch_size = patch_size;
  DL_CHECK(options.vision_position_std > 0 && options.vision_position_std <= 10,
           "the CLIP position embeddings' standard deviation must be in (0, 10], not ", options.vision_position_std);
  s.clip_position_std = options.vision_position_std;
  if (down == 4) {
    s.vae.block_out_channels = {32, 64, 64};  // 8x8 latents at 32 px
    s.unet.block_out_channels = {64, 128};
    s.unet.down_block_types = {"CrossAttnDownBlock2D", "DownBlock2D"};
    s.unet.up_block_types = {"UpBlock2D", "CrossAttnUpBlock2D"};
    s.unet.num_attention_heads = {4, 4};
  } else {
    // 16x16 latents at 32 px. Each UNet level costs about what one level of the 4x model does (channels halve
    // as the side doubles). The condition is read at 8x8 and 4x4, as at 4x: attention at 16x16 as well made a
    // step 28% slower.
    s.vae.block_out_channels = {32, 64};
    s.unet.block_out_channels = {32, 64, 128};
    s.unet.down_block_types = {"DownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"};
    s.unet.up_block_types = {"UpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"};
    s.unet.num_attention_heads = {2, 4, 4};
  }
  const size_t vae_blocks = s.vae.block_out_channels.size(), unet_levels = s.unet.block_out_channels.size();
  s.vae.down_block_types = std::vector<std::string>(vae_blocks, "DownEncoderBlock2D");
  s.vae.up_block_types = std::vector<std::string>(vae_blocks, "UpDecoderBlock2D");
  s.vae.layers_per_block = 1;
  s.vae.norm_num_groups = 16;
  s.vae.sample_size = image_size;
  s.unet.sample_size = image_size / down;
  s.unet.layers_per_block = std::vector<int64_t>(unet_levels, 1);
  s.unet.transformer_layers_per_block = std::vector<int64_t>(unet_levels, 1);
  s.unet.cross_attention_dim = 64;
  s.unet.norm_num_groups = 16;
  if (options.unet_text_embedding) {
    s.unet.addition_embed_type = "text";
    s.unet.addition_embed_type_num_heads = 4;
  }
  if (!options.sd_noise_schedule) {
    s.scheduler.prediction_type = "v_prediction";
    s.scheduler.rescale_betas_zero_snr = true;
    s.scheduler.timestep_spacing = "trailing";  // DDPM and DDIM then start at the timestep of zero SNR
  }
  DL_CHECK(options.dream_queries >= 1 && options.dream_queries <= 256,
           "the number of dream queries must be in [1, 256], not ", options.dream_queries);
  s.dream_queries = options.dream_queries;
  return s;
}

namespace {

std::string without_placeholders(std::string s) {
  for (const std::string p : {"<image>", "<dream>", "</s>"}) {
    for (size_t at = s.find(p); at != std::string::npos; at = s.find(p)) s.erase(at, p.size());
  }
  return s;
}

}  // namespace

std::vector<std::string> training_text(const std::string& dir) {
  std::vector<std::string> lines;
  auto add = [&](const std::string& s) {
    const std::string t = without_placeholders(s);
    if (t.find_first_not_of(" \n") != std::string::npos) lines.push_back(t);
  };
  const struct {
    const char* file;
    train::RecordFormat format;
  } files[] = {{"pairs.jsonl", train::RecordFormat::Pair},
               {"vqa.json", train::RecordFormat::Conversation},
               {"interleaved.jsonl", train::RecordFormat::Interleaved},
               {"instruct.jsonl", train::RecordFormat::Interleaved},
               {"draw.json", train::RecordFormat::Conversation}};
  for (const auto& f : files) {
    const fs::path p = fs::path(dir) / f.file;
    std::error_code ec;  // not the throwing overload: a symbolic-link loop there is reported by the reader below
    if (fs::symlink_status(p, ec).type() == fs::file_type::not_found) continue;
    train::RecordReader reader(p, f.format);
    while (auto r = reader.next()) {
      if (const auto* pair = std::get_if<train::PairRecord>(&*r)) add(pair->caption);
      if (const auto* doc = std::get_if<train::InterleavedRecord>(&*r)) {
        for (const auto& t : doc->text_list) add(t);
        if (doc->instruction) add(*doc->instruction);
      }
      // As the model reads it: the vicuna template's system prompt and roles are most of a conversation's text,
      // and a vocabulary that never saw them spells them out letter by letter (155 tokens instead of 48).
      if (const auto* conv = std::get_if<train::ConversationRecord>(&*r)) add(train::conversation_prompt(*conv));
    }
  }
  DL_CHECK(!lines.empty(), "no text found under '", dir, "' (run dreamllm world gen first)");
  return lines;
}

void init_model(const std::string& data_dir, const std::string& out, int64_t image_size, int vocab_size,
                uint64_t seed, const TinyModelOptions& options) {
  const std::vector<std::string> text = training_text((fs::path(data_dir) / "train").string());
  train::create_model_dir(out, tiny_spec(image_size, options),
                           text::train_sentencepiece(text, vocab_size), seed);
  // The model will read the world's language only, and says so: the commands then check prompts against it
  // (world/prompt_check.h). Training copies the field on with the config into every checkpoint and final model.
  const std::string path = (fs::path(out) / "config.json").string();
  nlohmann::ordered_json config = nlohmann::ordered_json::parse(io::read_text_file(path));
  config["prompt_language"] = std::string(kShapesWorldLanguage);
  io::write_file_atomically(path, [&](std::ostream& f) { f << config.dump(1) << "\n"; });
}

}  // namespace dl::world
