#include "models/dreamllm.h"

#include "core/error.h"
#include "nn/functional.h"

namespace dl::models {

using nn::Var;

namespace {
const std::string kClipPrefix = "model.clip_vision_embedding.clip_vision_model.";
const std::string kVisionProjector = "model.clip_vision_embedding.projector.projector.";
const std::string kDreamQueries = "model.dream_embedding.dream_queries";
const std::string kConditionProjector = "stable_diffusion_head.projector.projector.weight";

ParameterSet adopt_all(const io::StateDict& sd) {
  ParameterSet p;
  p.adopt(sd, "");
  return p;
}

int64_t id_at(const Tensor& ids, int64_t i) {
  return ids.dtype() == DType::I64 ? ids.data<int64_t>()[i] : int64_t(ids.data<int32_t>()[i]);
}

// A token the model needs only for a plugin it has; -1 (never an id) when the plugin is absent and the config
// does not name the token (a plain LLaMA config has no special_tokens2ids_dict).
int64_t plugin_token(const io::DreamLLMConfig& c, const char* token, bool needed) {
  if (needed || c.special_tokens.count(token)) return c.token_id(token);
  return -1;
}
}  // namespace

DreamLLM DreamLLM::load(const io::ModelDir& dir) {
  unsigned mask = io::kLLM;
  if (dir.has(io::kClip)) mask |= io::kClip;
  // Creation needs both halves on the LLM side: the queries going in and the projector reading them out.
  if (dir.has(io::kDream) && dir.has(io::kConditionProjector)) mask |= io::kDream | io::kConditionProjector;
  return DreamLLM(dir, adopt_all(dir.load(mask)));
}

DreamLLM::DreamLLM(const io::ModelDir& dir, ParameterSet params)
    : config_(dir.config()),
      params_(std::move(params)),
      llm_(dir.config().llm, params_),
      path_(dir.path()),
      has_dream_(params_.contains(kDreamQueries) && params_.contains(kConditionProjector)),
      num_queries_(dir.config().num_dream_queries),
      select_layer_(dir.config().clip_select_layer) {
  if (params_.contains(kVisionProjector + "weight")) vision_.emplace(dir.clip_config(), params_, kClipPrefix);
  im_start_ = plugin_token(config_, "<im_start>", vision_.has_value());
  dream_start_ = plugin_token(config_, "<dream_start>", has_dream_);
}

const ClipVision& DreamLLM::vision() const {
  require_vision("the vision tower was asked for");
  return *vision_;
}

void fail_no_vision(const std::string& path, const std::string& what) {
  fail("this model has no vision tower: '", path,
       "' holds no clip_vision_embedding weights (a text-only model), so it cannot read images (", what, ")");
}

void fail_no_creation(const std::string& path, const std::string& what) {
  fail("this model cannot create images: '", path,
       "' lacks the dream_embedding and stable_diffusion_head weights (a text-only model) (", what, ")");
}

void DreamLLM::require_vision(const std::string& what) const {
  if (!vision_) fail_no_vision(path_, what);
}

void DreamLLM::require_creation(const std::string& what) const {
  if (!has_dream_) fail_no_creation(path_, what);
}

Var DreamLLM::image_embeds(const Var& pixel_values) const {
  require_vision("an image was given");
  const Var& w = params_.at(kVisionProjector + "weight");
  const Var& b = params_.at(kVisionProjector + "bias");
  return nn::linear(vision_->features(pixel_values, select_layer_), w, &b);
}

Var DreamLLM::conditions(const Var& query_hidden) const {
  require_creation("diffusion conditions were asked for");
  return nn::linear(query_hidden, params_.at(kConditionProjector));
}

Var DreamLLM::dream_query_embeds() const {
  require_creation("the input has a <dream_start> span");
  return as_f32(params_.at(kDreamQueries));
}

std::vector<std::pair<int64_t, int64_t>> DreamLLM::spans(const Tensor& ids, int64_t token) {
  DL_CHECK(ids.dim() == 2 && (ids.dtype() == DType::I32 || ids.dtype() == DType::I64),
           "input_ids must be integer [B, T], got ", ids.describe());
  Tensor c = ids.contiguous();
  std::vector<std::pair<int64_t, int64_t>> out;
  for (int64_t b = 0; b < c.size(0); ++b)
    for (int64_t t = 0; t < c.size(1); ++t)
      if (id_at(c, b * c.size(1) + t) == token) out.emplace_back(b, t);
  return out;
}

Var DreamLLM::embed(const Tensor& ids_in, const Var& images) const {
  const Tensor ids = ids_in.contiguous();
  const int64_t B = ids.size(0), T = ids.size(1), P = image_tokens(), Q = num_queries_;
  Var text = llm_.embed(ids);  // [B, T, D]
  const auto image_spans = spans(ids, im_start_), dream_spans = spans(ids, dream_start_);
  const int64_t n_images = images.defined() ? images.value().size(0) : 0;
  DL_CHECK(int64_t(image_spans.size()) == n_images, "the input has ", image_spans.size(), " <im_start> span(s) but ",
           n_images, " image(s) were supplied");
  if (image_spans.empty() && dream_spans.empty()) return text;
  // Rebuild each row as a concatenation of text pieces and substituted spans, so gradients reach every source.
  struct Insert {
    int64_t at, len;
    Var src;
  };
  std::vector<std::vector<Insert>> per_row(static_cast<size_t>(B));
  for (size_t i = 0; i < image_spans.size(); ++i) {
    const auto [b, t] = image_spans[i];
    DL_CHECK(t + P < T, "the <im_start> at row ", b, ", position ", t, " has no room for its ", P,
             " image positions in a sequence of ", T);
    per_row[size_t(b)].push_back({t + 1, P, nn::reshape(nn::slice(images, 0, int64_t(i), int64_t(i) + 1),
                                                        {P, images.value().size(2)})});
  }
  const Var queries = dream_spans.empty() ? Var() : nn::reshape(dream_query_embeds(), {Q, llm_.config().hidden_size});
  for (const auto& [b, t] : dream_spans) {
    DL_CHECK(t + Q < T, "the <dream_start> at row ", b, ", position ", t, " has no room for its ", Q,
             " query positions in a sequence of ", T);
    per_row[size_t(b)].push_back({t + 1, Q, queries});
  }
  std::vector<Var> rows;
  for (int64_t b = 0; b < B; ++b) {
    auto& ins = per_row[size_t(b)];
    std::sort(ins.begin(), ins.end(), [](const Insert& x, const Insert& y) { return x.at < y.at; });
    Var row = nn::reshape(nn::slice(text, 0, b, b + 1), {T, llm_.config().hidden_size});
    if (ins.empty()) {
      rows.push_back(row);
      continue;
    }
    std::vector<Var> parts;
    int64_t at = 0;
    for (const Insert& s : ins) {
      DL_CHECK(s.at >= at, "overlapping image/dream spans in row ", b);
      if (s.at > at) parts.push_back(nn::slice(row, 0, at, s.at));
      parts.push_back(s.src);
      at = s.at + s.len;
    }
    if (at < T) parts.push_back(nn::slice(row, 0, at, T));
    rows.push_back(nn::concat(parts, 0));
  }
  return nn::reshape(nn::concat(rows, 0), {B, T, llm_.config().hidden_size});
}

DreamLLM::Output DreamLLM::forward(const Tensor& ids, const Tensor& key_keep, const Tensor& pixel_values) const {
  DL_CHECK(ids.dim() == 2, "input_ids must be [B, T], got ", ids.describe());
  Var images = pixel_values.defined() ? image_embeds(Var(pixel_values)) : Var();
  Output out;
  out.hidden = llm_.forward(embed(ids, images), key_keep);
  out.logits = llm_.logits(out.hidden);
  const auto dream_spans = spans(ids, dream_start_);
  if (!dream_spans.empty()) {
    std::vector<Var> q;
    for (const auto& [b, t] : dream_spans)
      q.push_back(nn::slice(nn::slice(out.hidden, 0, b, b + 1), 1, t + 1, t + 1 + num_queries_));
    out.conditions = conditions(nn::concat(q, 0));
  }
  return out;
}

}  // namespace dl::models
