#include "pipelines/interleave.h"

#include <algorithm>
#include <filesystem>
#include <limits>

#include "core/error.h"
#include "core/ops.h"
#include "core/random.h"
#include "pipelines/text_stream.h"

namespace dl::pipelines {

void continue_document(const models::DreamLLM& model, const DiffusionHead* head, const text::Tokenizer& tokenizer,
                       const io::ClipPreprocessConfig& clip_cfg, DreamLLMDecoder& decoder, Tensor logits,
                       Document& doc, std::vector<Tensor>& pixels, Tensor& uncond, const WriteOptions& options,
                       const WriteEvents& events) {
  validate(options.text);
  DL_CHECK(options.max_images >= 0, "write: max_images must be >= 0, got ", options.max_images);
  DL_CHECK(head != nullptr || options.max_images == 0, "write: drawing needs the model's diffusion head");
  const auto& cfg = model.config();
  // A plain LLaMA (a chat on a text-only model) has none of DreamLLM's tokens: it writes text and never draws.
  const bool dreams = cfg.special_tokens.count("<dream_start>") > 0;
  DL_CHECK(dreams || options.max_images == 0, "write: the model has no <dream_start> token to draw with");
  const auto id = [&](const char* token) { return dreams ? int32_t(cfg.token_id(token)) : int32_t(-1); };
  const int32_t dream_start = id("<dream_start>"), dream_end = id("<dream_end>");
  const int32_t im_start = id("<im_start>"), im_end = id("<im_end>"), im_patch = id("<im_patch>");
  const int64_t Q = model.dream_queries(), P = model.image_tokens();
  const int64_t max_positions = model.llm().config().max_position_embeddings;
  TextStream stream(tokenizer, events.on_text);
  int64_t text_budget = options.text.max_new_tokens;
  uint64_t segment = 0;
  const size_t images_before = doc.conditions.size();

  auto close_text = [&] {
    if (stream.empty()) return;
    Document::Block b;
    b.text = stream.finish();
    doc.blocks.push_back(std::move(b));
  };

  while (true) {
    GenerationConfig gc = options.text;
    gc.max_new_tokens = std::min<int64_t>(text_budget, max_positions - int64_t(doc.ids.size()));
    gc.seed = options.text.seed + segment++;  // each segment its own sampling stream
    const bool may_draw = int64_t(doc.conditions.size() - images_before) < options.max_images;
    if (may_draw)
      gc.stop_token_ids.push_back(dream_start);
    else if (dreams)
      gc.logit_bias.emplace_back(dream_start, -std::numeric_limits<float>::infinity());
    GenerationCallbacks cb;
    cb.on_token = [&](int64_t, int32_t tok) {
      if (!dreams || tok != dream_start) stream.push(tok);
    };
    const GenerationResult r = generate(decoder, logits, {doc.ids}, gc, cb);
    const auto& gen = r.tokens[0];
    text_budget -= int64_t(gen.size());
    doc.ids.insert(doc.ids.end(), gen.begin(), gen.end());
    doc.finish = r.finish_reasons[0];
    if (doc.finish != FinishReason::kStopToken) break;

    // <dream_start>: the decoder has consumed everything before it. Draw, if the spans still fit the context.
    close_text();
    const int64_t consumed = decoder.consumed();
    if (consumed + (Q + 2) + (P + 2) >= max_positions) {
      doc.ids.pop_back();  // no room for the image: the document ends before it
      doc.finish = FinishReason::kLength;
      break;
    }
    const auto& uc = head->unet.config();
    const int64_t lh = options.latent_height > 0 ? options.latent_height : uc.sample_size;
    const int64_t lw = options.latent_width > 0 ? options.latent_width : uc.sample_size;
    const size_t index = doc.conditions.size() - images_before;
    if (events.on_image_begin) events.on_image_begin(index);
    std::vector<int32_t> dream_chunk{dream_start};
    dream_chunk.insert(dream_chunk.end(), size_t(Q), im_patch);
    dream_chunk.push_back(dream_end);
    Tensor hidden;
    decoder.feed(dream_chunk, Tensor(), &hidden);
    doc.ids.insert(doc.ids.end(), dream_chunk.begin() + 1, dream_chunk.end());
    const Tensor cond = model.conditions(nn::Var(hidden.slice(1, 1, 1 + Q).contiguous())).value();
    doc.conditions.push_back(cond);
    if (options.drawing.guidance_scale > 1.f && !uncond.defined()) {
      std::vector<int32_t> neg = options.negative_ids;
      if (neg.empty()) neg.push_back(int32_t(cfg.token_id("<s>")));
      uncond = prompt_conditions(model, Tensor::from_vector_i32(neg, {1, int64_t(neg.size())}), Tensor());
    }
    Rng rng(options.seed + index + 1);
    const Tensor noise = rng.randn({1, uc.in_channels, lh, lw});
    const Tensor latents = sample_latents(
        head->unet, head->scheduler, cond, uncond, noise, options.drawing,
        [&](size_t) { return rng.randn({1, uc.in_channels, lh, lw}); },
        [&](size_t s, size_t n) {
          if (events.on_diffusion_step) events.on_diffusion_step(s, n);
        });
    head->release_unet_pages();
    const Tensor image = decode_latents(head->vae, latents, options.tiled_decode);
    io::Image picture(image.size(3), image.size(2), to_rgb8(image)[0]);
    if (events.on_image) events.on_image(index, picture);

    // Read it back: <im_start> + CLIP(image) + <im_end>, then continue writing from <im_end>'s logits.
    const Tensor px = io::clip_preprocess(picture, clip_cfg);
    const Tensor px4 = px.reshape({1, px.size(0), px.size(1), px.size(2)});
    std::vector<int32_t> image_chunk{im_start};
    image_chunk.insert(image_chunk.end(), size_t(P), im_patch);
    image_chunk.push_back(im_end);
    logits = decoder.feed(image_chunk, px4);
    doc.ids.insert(doc.ids.end(), image_chunk.begin(), image_chunk.end());
    pixels.push_back(px4);
    Document::Block b;
    b.is_image = true;
    b.image = std::move(picture);
    doc.blocks.push_back(std::move(b));
    if (text_budget <= 0 || int64_t(doc.ids.size()) >= max_positions) {
      doc.finish = FinishReason::kLength;
      break;
    }
  }
  close_text();
}

Document write_document(const models::DreamLLM& model, const DiffusionHead& head, const text::Tokenizer& tokenizer,
                        const io::ClipPreprocessConfig& clip_cfg, const std::vector<int32_t>& prompt,
                        const Tensor& prompt_pixels, const WriteOptions& options, const WriteEvents& events) {
  validate(options.text);
  const int64_t max_positions = model.llm().config().max_position_embeddings;
  DL_CHECK(int64_t(prompt.size()) < max_positions, "write: the prompt has ", prompt.size(),
           " tokens, the model supports ", max_positions, " positions");
  Document doc;
  doc.ids = prompt;
  doc.prompt_length = prompt.size();
  std::vector<Tensor> pixels;
  if (prompt_pixels.defined()) pixels.push_back(prompt_pixels.to(DType::F32));
  DreamLLMDecoder decoder(model);
  const Tensor logits = decoder.prefill({prompt}, prompt_pixels);
  Tensor uncond;  // the negative branch, made once by the LLM
  continue_document(model, &head, tokenizer, clip_cfg, decoder, logits, doc, pixels, uncond, options, events);
  if (!pixels.empty()) doc.pixel_values = ops::concat(pixels, 0);
  return doc;
}

}  // namespace dl::pipelines
