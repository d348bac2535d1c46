#include "pipelines/comprehend.h"

#include <algorithm>

#include "core/error.h"
#include "nn/autograd.h"

namespace dl::pipelines {

DreamLLMDecoder::DreamLLMDecoder(const models::DreamLLM& model) : model_(model) {}

Tensor DreamLLMDecoder::last_logits(const nn::Var& hidden) const {
  const int64_t T = hidden.value().size(1);
  return model_.llm().logits(nn::Var(hidden.value().slice(1, T - 1, T))).value().squeeze(1).contiguous();
}

Tensor DreamLLMDecoder::prefill(const std::vector<std::vector<int32_t>>& prompts, const Tensor& pixel_values) {
  nn::NoGradGuard inference;
  DL_CHECK(!prompts.empty(), "generation: no prompts");
  size_t L = 0;
  for (const auto& p : prompts) {
    DL_CHECK(!p.empty(), "generation: empty prompt (it needs at least the BOS token)");
    L = std::max(L, p.size());
  }
  const int64_t R = int64_t(prompts.size());
  // Padding ids are masked out, so any valid id will do; 0 (<unk>) never opens a span.
  std::vector<int32_t> ids(size_t(R) * L, 0);
  std::vector<int64_t> pos(size_t(R) * L, 1);
  keep_.assign(size_t(R), std::vector<float>(L, 0.f));
  next_position_.assign(size_t(R), 0);
  for (int64_t r = 0; r < R; ++r) {
    const auto& p = prompts[size_t(r)];
    const size_t off = L - p.size();
    for (size_t i = 0; i < p.size(); ++i) {
      ids[size_t(r) * L + off + i] = p[i];
      pos[size_t(r) * L + off + i] = int64_t(i);
      keep_[size_t(r)][off + i] = 1.f;
    }
    next_position_[size_t(r)] = int64_t(p.size());
  }
  std::vector<float> keep_flat;
  for (const auto& k : keep_) keep_flat.insert(keep_flat.end(), k.begin(), k.end());
  const Tensor id_t = Tensor::from_vector_i32(ids, {R, int64_t(L)});
  nn::Var images = pixel_values.defined() ? model_.image_embeds(nn::Var(pixel_values)) : nn::Var();
  cache_ = models::KVCache();
  nn::Var hidden = model_.llm().forward(model_.embed(id_t, images), Tensor::from_vector(keep_flat, {R, int64_t(L)}),
                                        &cache_, Tensor::from_vector_i64(pos, {R, int64_t(L)}));
  return last_logits(hidden);
}

Tensor DreamLLMDecoder::step(const std::vector<int32_t>& tokens) {
  nn::NoGradGuard inference;
  const int64_t R = int64_t(tokens.size());
  DL_CHECK(R == int64_t(keep_.size()), "generation: ", R, " tokens for ", keep_.size(), " rows");
  std::vector<int64_t> pos(static_cast<size_t>(R));
  std::vector<float> keep_flat;
  for (int64_t r = 0; r < R; ++r) {
    keep_flat.insert(keep_flat.end(), keep_[size_t(r)].begin(), keep_[size_t(r)].end());
    keep_flat.push_back(1.f);
    pos[size_t(r)] = next_position_[size_t(r)];
  }
  const int64_t past = cache_.length;
  const Tensor id_t = Tensor::from_vector_i32(tokens, {R, 1});
  nn::Var hidden = model_.llm().forward(model_.llm().embed(id_t), Tensor::from_vector(keep_flat, {R, past + 1}),
                                        &cache_, Tensor::from_vector_i64(pos, {R, 1}));
  // The row state advances only once the cache holds the new position (a failed step leaves both unchanged).
  for (int64_t r = 0; r < R; ++r) {
    keep_[size_t(r)].push_back(1.f);
    ++next_position_[size_t(r)];
  }
  return last_logits(hidden);
}

Tensor DreamLLMDecoder::feed(const std::vector<int32_t>& chunk, const Tensor& pixel_values, Tensor* hidden_out) {
  nn::NoGradGuard inference;
  DL_CHECK(keep_.size() == 1, "feed: the session must hold exactly one row, it holds ", keep_.size());
  DL_CHECK(!chunk.empty(), "feed: empty chunk");
  const int64_t n = int64_t(chunk.size()), past = cache_.length;
  std::vector<float> keep_flat = keep_[0];
  keep_flat.insert(keep_flat.end(), size_t(n), 1.f);
  std::vector<int64_t> pos(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) pos[size_t(i)] = next_position_[0] + i;
  const Tensor id_t = Tensor::from_vector_i32(chunk, {1, n});
  nn::Var images = pixel_values.defined() ? model_.image_embeds(nn::Var(pixel_values.to(DType::F32))) : nn::Var();
  nn::Var hidden = model_.llm().forward(model_.embed(id_t, images), Tensor::from_vector(keep_flat, {1, past + n}),
                                        &cache_, Tensor::from_vector_i64(pos, {1, n}));
  keep_[0].insert(keep_[0].end(), size_t(n), 1.f);
  next_position_[0] += n;
  if (hidden_out) *hidden_out = hidden.value();
  return last_logits(hidden);
}

void DreamLLMDecoder::select_rows(const std::vector<int64_t>& src) {
  cache_.select_rows(src);
  std::vector<std::vector<float>> keep;
  std::vector<int64_t> next;
  for (int64_t r : src) {
    DL_CHECK(r >= 0 && r < int64_t(keep_.size()), "generation: row ", r, " does not exist");
    keep.push_back(keep_[size_t(r)]);
    next.push_back(next_position_[size_t(r)]);
  }
  keep_ = std::move(keep);
  next_position_ = std::move(next);
}

GenerationResult generate_text(const models::DreamLLM& model, const std::vector<std::vector<int32_t>>& prompts,
                               const Tensor& pixel_values, const GenerationConfig& config,
                               const GenerationCallbacks& callbacks) {
  DreamLLMDecoder decoder(model);
  const Tensor first = decoder.prefill(prompts, pixel_values);
  return generate(decoder, first, prompts, config, callbacks);
}

}  // namespace dl::pipelines
