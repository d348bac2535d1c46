// Generation loops and logits processors; see generate.h for the HF 4.35 behaviours reproduced. The reference for
// every rule below is transformers 4.35 (generation/utils.py greedy_search / sample / beam_search,
// generation/logits_process.py, generation/beam_search.py), re-implemented in tools/fixtures/
// make_generate_fixtures.py, whose outputs tests/test_generate.cpp compares against.
#include "pipelines/generate.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>

#include "core/error.h"

namespace dl::pipelines {

namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// F32, contiguous, [rows, vocab] (vocab < 0: any), no NaN: a NaN would make argmax/top-k/sorting meaningless
// where torch would silently produce garbage.
Tensor checked_logits(const Tensor& t, int64_t rows, int64_t vocab, const char* what) {
  DL_CHECK(t.defined(), what, ": logits tensor is undefined");
  DL_CHECK(t.dim() == 2, what, ": logits must be [rows, vocab], got ", t.describe());
  DL_CHECK(dtype_info(t.dtype()).is_float && !dtype_info(t.dtype()).is_quantized, what,
           ": logits must be floating point, got ", t.describe());
  DL_CHECK(t.size(0) == rows, what, ": expected logits for ", rows, " rows, got ", t.describe());
  DL_CHECK(t.size(1) > 0 && t.size(1) <= std::numeric_limits<int32_t>::max(), what, ": bad vocabulary size in ",
           t.describe());
  if (vocab >= 0) DL_CHECK(t.size(1) == vocab, what, ": expected vocabulary size ", vocab, ", got ", t.describe());
  Tensor c = t.to(DType::F32);
  const float* p = c.f32();
  for (int64_t i = 0, n = c.numel(); i < n; ++i)
    DL_CHECK(!std::isnan(p[i]), what, ": logits contain NaN (row ", i / c.size(1), ", token ", i % c.size(1), ")");
  return c;
}

// torch.argmax: the first maximum.
int32_t argmax(std::span<const float> s) {
  return int32_t(std::max_element(s.begin(), s.end()) - s.begin());
}

// Uniform double in [0, 1) from the top 53 bits, so the stream is the same with every standard library
// (std::uniform_real_distribution's algorithm is unspecified).
double uniform01(std::mt19937_64& rng) { return double(rng() >> 11) * 0x1p-53; }

// softmax + torch.multinomial(num_samples=1) with our generator. Zero-probability tokens (-inf) are never drawn.
int32_t sample_token(std::span<const float> s, std::mt19937_64& rng) {
  const float m = *std::max_element(s.begin(), s.end());
  DL_CHECK(std::isfinite(m), "sampling: the processed scores have no finite maximum (", m,
           "); every token was filtered out or a logit is +inf");
  std::vector<double> cum(s.size());
  double total = 0;
  for (size_t i = 0; i < s.size(); ++i) {
    total += s[i] == kNegInf ? 0.0 : std::exp(double(s[i]) - double(m));
    cum[i] = total;
  }
  const double target = uniform01(rng) * total;
  size_t i = size_t(std::upper_bound(cum.begin(), cum.end(), target) - cum.begin());
  if (i == s.size()) {  // target rounded up to total: take the last token with mass
    i = s.size() - 1;
    while (i > 0 && s[i] == kNegInf) --i;
  }
  return int32_t(i);
}

// Earliest occurrence of any stop string, or npos.
size_t find_stop(const std::string& text, const std::vector<std::string>& stops) {
  size_t best = std::string::npos;
  for (const auto& st : stops) best = std::min(best, text.find(st));
  return best;
}

struct StopCut {
  std::vector<int32_t> tokens;
  std::string text;
};

// Text cut before the stop string; tokens cut to the longest prefix whose own text still fits inside it.
StopCut cut_at_stop(const std::vector<int32_t>& gen, const std::string& text, size_t pos,
                    const std::function<std::string(const std::vector<int32_t>&)>& decode) {
  StopCut out;
  out.text = text.substr(0, pos);
  for (size_t k = gen.size(); k-- > 0;) {
    std::vector<int32_t> prefix(gen.begin(), gen.begin() + std::ptrdiff_t(k));
    if (std::string t = decode(prefix); out.text.starts_with(t)) {
      out.tokens = std::move(prefix);
      break;
    }
  }
  return out;
}

// ------------------------------------------------------------------------------------------- greedy / sample
GenerationResult greedy_or_sample(Decoder& decoder, Tensor logits, const std::vector<std::vector<int32_t>>& prompts,
                                  const GenerationConfig& cfg, const GenerationCallbacks& cb) {
  const int64_t rows = int64_t(prompts.size());
  const int64_t vocab = logits.size(1);
  GenerationResult res;
  res.tokens.resize(static_cast<size_t>(rows));
  res.finish_reasons.assign(size_t(rows), FinishReason::kLength);
  std::vector<std::string> stop_texts(static_cast<size_t>(rows));
  std::vector<bool> stopped(size_t(rows), false);

  std::vector<std::vector<int32_t>> ctx(prompts);  // prompt + generated: what the repetition penalty reads
  std::vector<std::mt19937_64> rngs;
  if (cfg.do_sample) {
    // One stream per row, so a row's tokens depend only on (seed, row) and not on which other rows are running.
    for (int64_t r = 0; r < rows; ++r) {
      std::seed_seq seq{uint32_t(cfg.seed), uint32_t(cfg.seed >> 32), uint32_t(r), uint32_t(uint64_t(r) >> 32)};
      rngs.emplace_back(seq);
    }
  }

  std::vector<int64_t> active(static_cast<size_t>(rows));  // active[i]: the row held in decoder row i
  std::iota(active.begin(), active.end(), int64_t(0));
  if (cfg.max_new_tokens == 0) active.clear();
  std::vector<float> scores(static_cast<size_t>(vocab));

  while (!active.empty()) {
    const float* lp = logits.f32();
    std::vector<int64_t> keep;  // decoder rows that continue
    std::vector<int32_t> next;
    for (size_t i = 0; i < active.size(); ++i) {
      const int64_t r = active[i];
      auto& gen = res.tokens[size_t(r)];
      std::copy_n(lp + int64_t(i) * vocab, vocab, scores.begin());
      process_scores(scores, ctx[size_t(r)], int64_t(gen.size()), cfg);
      const int32_t tok = cfg.do_sample ? sample_token(scores, rngs[size_t(r)]) : argmax(scores);
      if (tok == cfg.eos_token_id) {
        res.finish_reasons[size_t(r)] = FinishReason::kEos;
        continue;
      }
      gen.push_back(tok);
      ctx[size_t(r)].push_back(tok);
      if (cb.on_token) cb.on_token(r, tok);
      if (std::find(cfg.stop_token_ids.begin(), cfg.stop_token_ids.end(), tok) != cfg.stop_token_ids.end()) {
        res.finish_reasons[size_t(r)] = FinishReason::kStopToken;
        continue;
      }
      if (!cfg.stop_strings.empty()) {
        std::string text = cb.decode(gen);
        if (size_t pos = find_stop(text, cfg.stop_strings); pos != std::string::npos) {
          StopCut cut = cut_at_stop(gen, text, pos, cb.decode);
          gen = std::move(cut.tokens);
          stop_texts[size_t(r)] = std::move(cut.text);
          stopped[size_t(r)] = true;
          res.finish_reasons[size_t(r)] = FinishReason::kStopString;
          continue;
        }
      }
      // MaxLengthCriteria: input_ids.shape[-1] >= prompt length + max_new_tokens.
      if (int64_t(gen.size()) >= cfg.max_new_tokens) continue;
      keep.push_back(int64_t(i));
      next.push_back(tok);
    }
    if (keep.empty()) break;
    // Finished rows leave the cache instead of being fed padding as HF does; the other rows are unaffected.
    if (keep.size() != active.size()) decoder.select_rows(keep);
    std::vector<int64_t> still;
    for (int64_t i : keep) still.push_back(active[size_t(i)]);
    active = std::move(still);
    logits = checked_logits(decoder.step(next), int64_t(active.size()), vocab, "Decoder::step");
  }

  if (cb.decode) {
    res.texts.resize(static_cast<size_t>(rows));
    for (int64_t r = 0; r < rows; ++r)
      res.texts[size_t(r)] = stopped[size_t(r)] ? stop_texts[size_t(r)] : cb.decode(res.tokens[size_t(r)]);
  }
  return res;
}

// ------------------------------------------------------------------------------------------------ beam search
struct Hypothesis {
  double score;
  std::vector<int32_t> seq;  // prompt + generated, without EOS
  bool eos;
};

// BeamHypotheses of one row.
struct Hypotheses {
  std::vector<Hypothesis> beams;  // insertion order matters: it breaks ties as Python's list + sorted() do
  double worst = 1e9;

  // BeamHypotheses.add. 4.35 divides by hyp.shape[-1], the whole sequence with the prompt and without the EOS;
  // only 4.36 (PR #27351) switched to the generated length.
  void add(std::vector<int32_t> seq, double sum_logprobs, bool eos, int64_t num_beams, double length_penalty) {
    const double score = sum_logprobs / std::pow(double(seq.size()), length_penalty);
    if (int64_t(beams.size()) < num_beams || score > worst) {
      beams.push_back({score, std::move(seq), eos});
      if (int64_t(beams.size()) > num_beams) {
        // sorted([(s, idx)]): drop the lowest score (lowest index on ties); the next one becomes the worst.
        size_t lo = 0;
        for (size_t j = 1; j < beams.size(); ++j)
          if (beams[j].score < beams[lo].score) lo = j;
        beams.erase(beams.begin() + std::ptrdiff_t(lo));
        worst = beams[0].score;
        for (const auto& h : beams) worst = std::min(worst, h.score);
      } else {
        worst = std::min(score, worst);
      }
    }
  }

  // BeamHypotheses.is_done; cur_len is input_ids.shape[-1] before this step's token, prompt included.
  bool is_done(double best_sum_logprobs, int64_t cur_len, int64_t max_length, const GenerationConfig& cfg) const {
    if (int64_t(beams.size()) < cfg.num_beams) return false;
    switch (cfg.early_stopping) {
      case EarlyStopping::kAlways:
        return true;
      case EarlyStopping::kHeuristic:
        return worst >= best_sum_logprobs / std::pow(double(cur_len), cfg.length_penalty);
      case EarlyStopping::kNever: {
        // With a positive penalty the best attainable score comes from the longest possible sequence.
        const double len = cfg.length_penalty > 0.0 ? double(max_length) : double(cur_len);
        return worst >= best_sum_logprobs / std::pow(len, cfg.length_penalty);
      }
    }
    return false;
  }

  // finalize(): sorted(key=score).pop(), i.e. the highest score, the last inserted among equals.
  const Hypothesis& best() const {
    size_t b = 0;
    for (size_t j = 1; j < beams.size(); ++j)
      if (beams[j].score >= beams[b].score) b = j;
    return beams[b];
  }
};

struct BeamRow {
  std::vector<std::vector<int32_t>> seqs;  // per beam: prompt + generated
  std::vector<float> scores;               // running sums of log-probs, float32 as in torch
  Hypotheses hyps;
  bool done = false;
};

GenerationResult beam_search(Decoder& decoder, Tensor logits, const std::vector<std::vector<int32_t>>& prompts,
                             const GenerationConfig& cfg, const GenerationCallbacks& cb) {
  const int64_t rows = int64_t(prompts.size());
  const int64_t vocab = logits.size(1);
  const int64_t nb = cfg.num_beams;
  const int64_t n_cand = 2 * nb;  // max(2, 1 + number of EOS ids) * num_beams with one EOS id
  DL_CHECK(vocab >= 2, "beam search: needs a vocabulary of at least 2 tokens, got ", vocab);
  for (int64_t r = 0; r < rows; ++r)
    DL_CHECK(!prompts[size_t(r)].empty(), "beam search: prompt ", r,
             " is empty; the length normalisation counts the prompt, so a decoder-only model needs one");

  std::vector<BeamRow> br(static_cast<size_t>(rows));
  for (int64_t r = 0; r < rows; ++r) {
    br[size_t(r)].seqs.assign(size_t(nb), prompts[size_t(r)]);
    // Only beam 0 may expand at the first step, otherwise the identical beams would pick the same tokens.
    br[size_t(r)].scores.assign(size_t(nb), -1e9f);
    br[size_t(r)].scores[0] = 0.0f;
  }

  std::vector<int64_t> active(static_cast<size_t>(rows));
  std::iota(active.begin(), active.end(), int64_t(0));
  bool first = true;  // before the first select_rows, decoder row i holds the prompt of active[i] for all beams
  std::vector<float> flat(size_t(nb * vocab));
  std::vector<int64_t> order(size_t(nb * vocab));
  std::vector<float> scratch(static_cast<size_t>(vocab));

  for (int64_t step = 0; step < cfg.max_new_tokens; ++step) {
    const float* lp = logits.f32();
    std::vector<int64_t> src;  // decoder row that each continuing beam extends
    std::vector<int32_t> next;
    std::vector<int64_t> still;
    for (size_t i = 0; i < active.size(); ++i) {
      BeamRow& row = br[size_t(active[i])];
      const int64_t prompt_len = int64_t(prompts[size_t(active[i])].size());
      auto dec_row = [&](int64_t b) { return first ? int64_t(i) : int64_t(i) * nb + b; };
      for (int64_t b = 0; b < nb; ++b) {
        std::copy_n(lp + dec_row(b) * vocab, vocab, scratch.begin());
        process_scores(scratch, row.seqs[size_t(b)], step, cfg);
        for (int64_t t = 0; t < vocab; ++t) flat[size_t(b * vocab + t)] = scratch[size_t(t)] + row.scores[size_t(b)];
      }
      // torch.topk(sorted=True) over (beam, token); ties go to the lower flat index.
      std::iota(order.begin(), order.end(), int64_t(0));
      auto better = [&](int64_t a, int64_t b) {
        return flat[size_t(a)] > flat[size_t(b)] || (flat[size_t(a)] == flat[size_t(b)] && a < b);
      };
      std::partial_sort(order.begin(), order.begin() + n_cand, order.end(), better);

      // BeamSearchScorer.process.
      const int64_t cur_len = prompt_len + step;
      std::vector<std::vector<int32_t>> new_seqs;
      std::vector<float> new_scores;
      std::vector<int64_t> new_src;
      for (int64_t rank = 0; rank < n_cand; ++rank) {
        const int64_t idx = order[size_t(rank)];
        const int64_t b = idx / vocab;
        const int32_t tok = int32_t(idx % vocab);
        const float s = flat[size_t(idx)];
        if (tok == cfg.eos_token_id) {
          // An EOS outside the top num_beams candidates does not close a hypothesis.
          if (rank >= nb) continue;
          row.hyps.add(row.seqs[size_t(b)], double(s), true, nb, cfg.length_penalty);
        } else {
          new_seqs.push_back(row.seqs[size_t(b)]);
          new_seqs.back().push_back(tok);
          new_scores.push_back(s);
          new_src.push_back(b);
        }
        if (int64_t(new_seqs.size()) == nb) break;
      }
      DL_CHECK(int64_t(new_seqs.size()) == nb, "beam search: fewer than ", nb, " non-EOS candidates");
      row.done = row.done || row.hyps.is_done(double(flat[size_t(order[0])]), cur_len,
                                              prompt_len + cfg.max_new_tokens, cfg);
      row.seqs = std::move(new_seqs);
      row.scores = std::move(new_scores);
      if (row.done) continue;  // finalize() will not add its open beams either
      still.push_back(active[i]);
      for (int64_t j = 0; j < nb; ++j) {
        src.push_back(dec_row(new_src[size_t(j)]));
        next.push_back(row.seqs[size_t(j)].back());
      }
    }
    active = std::move(still);
    if (active.empty() || step + 1 == cfg.max_new_tokens) break;
    bool identity = !first && int64_t(src.size()) == logits.size(0);
    for (size_t j = 0; identity && j < src.size(); ++j) identity = src[j] == int64_t(j);
    if (!identity) decoder.select_rows(src);
    first = false;
    logits = checked_logits(decoder.step(next), int64_t(active.size()) * nb, vocab, "Decoder::step");
  }

  // BeamSearchScorer.finalize: rows that were not done add all their open beams.
  GenerationResult res;
  for (int64_t r = 0; r < rows; ++r) {
    BeamRow& row = br[size_t(r)];
    if (!row.done)
      for (int64_t b = 0; b < nb; ++b)
        row.hyps.add(row.seqs[size_t(b)], double(row.scores[size_t(b)]), false, nb, cfg.length_penalty);
    const Hypothesis& h = row.hyps.best();
    res.tokens.emplace_back(h.seq.begin() + std::ptrdiff_t(prompts[size_t(r)].size()), h.seq.end());
    res.finish_reasons.push_back(h.eos ? FinishReason::kEos : FinishReason::kLength);
    res.sequence_scores.push_back(h.score);
  }
  if (cb.decode)
    for (const auto& t : res.tokens) res.texts.push_back(cb.decode(t));
  return res;
}

}  // namespace

const char* finish_reason_name(FinishReason r) {
  switch (r) {
    case FinishReason::kEos:
      return "eos";
    case FinishReason::kLength:
      return "length";
    case FinishReason::kStopString:
      return "stop_string";
    case FinishReason::kStopToken:
      return "stop_token";
  }
  return "?";
}

Tensor GenerationResult::padded() const {
  size_t longest = 0;
  for (const auto& t : tokens) longest = std::max(longest, t.size());
  std::vector<int32_t> v(tokens.size() * longest, pad_token_id);
  for (size_t r = 0; r < tokens.size(); ++r) std::copy(tokens[r].begin(), tokens[r].end(), v.begin() + r * longest);
  return Tensor::from_vector_i32(v, {int64_t(tokens.size()), int64_t(longest)});
}

void validate(const GenerationConfig& c) {
  DL_CHECK(c.max_new_tokens >= 0, "generation: max_new_tokens must be >= 0, got ", c.max_new_tokens);
  DL_CHECK(c.min_new_tokens >= 0, "generation: min_new_tokens must be >= 0, got ", c.min_new_tokens);
  DL_CHECK(c.num_beams >= 1, "generation: num_beams must be >= 1, got ", c.num_beams);
  DL_CHECK(!(c.do_sample && c.num_beams > 1), "generation: beam sampling (do_sample with num_beams ", c.num_beams,
           ") is not supported");
  if (c.do_sample)
    DL_CHECK(std::isfinite(c.temperature) && c.temperature > 0, "generation: temperature must be > 0 when sampling, got ",
             c.temperature);
  DL_CHECK(c.top_k >= 0, "generation: top_k must be >= 0 (0 disables it), got ", c.top_k);
  DL_CHECK(c.top_p > 0 && c.top_p <= 1, "generation: top_p must be in (0, 1], got ", c.top_p);
  DL_CHECK(std::isfinite(c.repetition_penalty) && c.repetition_penalty > 0,
           "generation: repetition_penalty must be > 0, got ", c.repetition_penalty);
  DL_CHECK(std::isfinite(c.length_penalty), "generation: length_penalty must be finite, got ", c.length_penalty);
  for (const auto& s : c.stop_strings) DL_CHECK(!s.empty(), "generation: empty stop string");
  DL_CHECK(c.stop_strings.empty() || c.num_beams == 1,
           "generation: stop strings are only supported by greedy search and sampling, not beam search");
  DL_CHECK(c.stop_token_ids.empty() || c.num_beams == 1,
           "generation: stop tokens are only supported by greedy search and sampling, not beam search");
  for (const auto& [id, bias] : c.logit_bias)
    DL_CHECK(id >= 0 && !std::isnan(bias), "generation: logit bias for token ", id, " is invalid (", bias, ")");
}

void apply_repetition_penalty(std::span<float> scores, std::span<const int32_t> ids, double penalty) {
  const float p = float(penalty);  // torch multiplies a float32 tensor by the Python float cast to float32
  const int64_t vocab = int64_t(scores.size());
  // Gather everything before scattering, as torch.gather + scatter_ do: a repeated id is penalised once.
  std::vector<float> penalised(ids.size());
  for (size_t i = 0; i < ids.size(); ++i) {
    const int32_t id = ids[i];
    DL_CHECK(id >= 0 && id < vocab, "repetition penalty: token id ", id, " outside the vocabulary of ", vocab);
    const float s = scores[size_t(id)];
    penalised[i] = s < 0 ? s * p : s / p;
  }
  for (size_t i = 0; i < ids.size(); ++i) scores[size_t(ids[i])] = penalised[i];
}

void apply_min_new_tokens(std::span<float> scores, int64_t generated, int64_t min_new_tokens, int32_t eos_token_id) {
  if (eos_token_id < 0 || generated >= min_new_tokens) return;
  DL_CHECK(size_t(eos_token_id) < scores.size(), "min_new_tokens: eos_token_id ", eos_token_id,
           " outside the vocabulary of ", scores.size());
  scores[size_t(eos_token_id)] = kNegInf;
}

void apply_temperature(std::span<float> scores, double temperature) {
  DL_CHECK(temperature > 0, "temperature must be > 0, got ", temperature);
  const float t = float(temperature);
  for (float& s : scores) s = s / t;
}

void apply_top_k(std::span<float> scores, int64_t top_k) {
  DL_CHECK(top_k > 0, "top_k must be > 0, got ", top_k);
  const int64_t k = std::min<int64_t>(top_k, int64_t(scores.size()));
  if (k <= 0) return;
  std::vector<float> tmp(scores.begin(), scores.end());
  std::nth_element(tmp.begin(), tmp.begin() + (k - 1), tmp.end(), std::greater<float>());
  const float kth = tmp[size_t(k - 1)];
  for (float& s : scores)
    if (s < kth) s = kNegInf;
}

void apply_top_p(std::span<float> scores, double top_p) {
  DL_CHECK(top_p > 0 && top_p <= 1, "top_p must be in (0, 1], got ", top_p);
  const size_t n = scores.size();
  if (n == 0) return;
  // Ascending sort; equal scores keep index order (torch.sort gives no guarantee there).
  std::vector<size_t> idx(n);
  std::iota(idx.begin(), idx.end(), size_t(0));
  std::stable_sort(idx.begin(), idx.end(), [&](size_t a, size_t b) { return scores[a] < scores[b]; });
  const float m = scores[idx[n - 1]];
  if (m == kNegInf) return;  // torch's softmax is NaN here and NaN <= x removes nothing
  std::vector<float> prob(n);
  double sum = 0;
  for (size_t i = 0; i < n; ++i) {
    prob[i] = std::exp(scores[idx[i]] - m);
    sum += prob[i];
  }
  // torch's CPU cumsum accumulates float32 in double and rounds each partial sum to float32.
  const float threshold = float(1.0 - top_p);  // the Python-float difference, cast like a tensor comparison
  double cum = 0;
  std::vector<bool> remove(n, false);
  for (size_t i = 0; i + 1 < n; ++i) {  // the last (most probable) token is always kept
    cum += double(float(double(prob[i]) / sum));
    remove[i] = float(cum) <= threshold;
  }
  for (size_t i = 0; i < n; ++i)
    if (remove[i]) scores[idx[i]] = kNegInf;
}

void log_softmax_inplace(std::span<float> scores) {
  if (scores.empty()) return;
  const float m = *std::max_element(scores.begin(), scores.end());
  double sum = 0;
  for (float s : scores) sum += std::exp(double(s - m));
  const float log_sum = float(std::log(sum));
  for (float& s : scores) s = (s - m) - log_sum;
}

void process_scores(std::span<float> scores, std::span<const int32_t> ids, int64_t generated,
                    const GenerationConfig& c) {
  const bool beam = c.num_beams > 1;
  for (const auto& [id, bias] : c.logit_bias) {
    DL_CHECK(size_t(id) < scores.size(), "logit bias: token id ", id, " outside the vocabulary of ", scores.size());
    scores[size_t(id)] += bias;
  }
  if (beam) log_softmax_inplace(scores);
  if (c.repetition_penalty != 1.0) apply_repetition_penalty(scores, ids, c.repetition_penalty);
  if (c.min_new_tokens > 0) apply_min_new_tokens(scores, generated, c.min_new_tokens, c.eos_token_id);
  if (c.do_sample && !beam) {
    if (c.temperature != 1.0) apply_temperature(scores, c.temperature);
    if (c.top_k != 0) apply_top_k(scores, c.top_k);
    if (c.top_p < 1.0) apply_top_p(scores, c.top_p);
  }
}

GenerationResult generate(Decoder& decoder, const Tensor& first_logits,
                          const std::vector<std::vector<int32_t>>& prompt_ids, const GenerationConfig& config,
                          const GenerationCallbacks& callbacks) {
  validate(config);
  DL_CHECK(!prompt_ids.empty(), "generate: no rows (prompt_ids is empty)");
  Tensor logits = checked_logits(first_logits, int64_t(prompt_ids.size()), -1, "generate: first_logits");
  const int64_t vocab = logits.size(1);
  DL_CHECK(config.eos_token_id < vocab, "generate: eos_token_id ", config.eos_token_id,
           " outside the vocabulary of ", vocab);
  DL_CHECK(config.stop_strings.empty() || callbacks.decode, "generate: stop strings need a decode callback");
  GenerationResult res = config.num_beams > 1 ? beam_search(decoder, logits, prompt_ids, config, callbacks)
                                              : greedy_or_sample(decoder, logits, prompt_ids, config, callbacks);
  res.pad_token_id = config.pad_token_id >= 0 ? config.pad_token_id : config.eos_token_id;
  return res;
}

}  // namespace dl::pipelines
