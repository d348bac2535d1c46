// Model-agnostic text generation: HF transformers 4.35 `generate` for decoder-only models (greedy search,
// multinomial sampling, beam search), driven through the small Decoder interface below.
//
// Rows are independent prompts. Each row gets exactly what HF would produce for that prompt alone (batch size 1):
// HF batches left-pad prompts to a common length, which changes beam-search length normalisation (issue #25455),
// so a padded HF batch can differ from running its prompts one by one; this engine never pads.
//
// Semantics reproduced (transformers 4.35 generation/utils.py, logits_process.py, beam_search.py):
//  - processors in _get_logits_processor order: repetition penalty, then min_new_tokens; when sampling, the
//    warpers of _get_logits_warper follow: temperature, top-k, top-p;
//  - greedy: argmax (first index on ties); sampling: softmax then one multinomial draw;
//  - beam search: log_softmax of the raw logits *first*, then the processors on the log-probs (so a repetition
//    penalty multiplies log-probs), plus the running beam score; BeamSearchScorer / BeamHypotheses with the 4.35
//    length rule (whole sequence, prompt included: see generate.cpp);
//  - a sequence stops on EOS or after max_new_tokens; EOS is not returned.
// Sampling uses this engine's own generator (std::mt19937_64, one stream per row seeded from (seed, row)), so
// sampled tokens are reproducible within this engine but never match torch's random stream.
#pragma once
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"

namespace dl::pipelines {

// One decoding session over `rows` sequences sharing a KV cache.
struct Decoder {
  virtual ~Decoder() = default;
  // Feeds one new token per row (after the prompt was consumed by the caller) and returns next-token logits
  // [rows, V] (F32).
  virtual Tensor step(const std::vector<int32_t>& tokens) = 0;
  // Reorders/duplicates the rows of the cache: new row i continues old row `src[i]` (beam search); src.size() may
  // differ from the current row count.
  virtual void select_rows(const std::vector<int64_t>& src) = 0;
};

// HF's early_stopping: false, true or "never" (BeamHypotheses.is_done).
enum class EarlyStopping {
  kHeuristic,  // false: stop when the best running beam, scored at the current length, cannot beat the worst kept
  kAlways,     // true: stop as soon as num_beams hypotheses are finished
  kNever,      // "never": stop only when no better hypothesis is possible (uses the maximum length)
};

// Defaults are HF GenerationConfig's (top_k 50 included), except max_new_tokens, whose HF counterpart is
// max_length = 20 counting the prompt.
struct GenerationConfig {
  int64_t max_new_tokens = 20;
  int64_t min_new_tokens = 0;  // EOS is masked to -inf until this many tokens were generated
  bool do_sample = false;
  // Real-valued settings are doubles because HF keeps them as Python floats: they become float32 only where torch
  // would cast them (scalar times a float32 tensor), and stay double in beam-score arithmetic.
  double temperature = 1.0;         // sampling only; must be > 0 when sampling
  int64_t top_k = 50;               // sampling only; 0 disables
  double top_p = 1.0;               // sampling only; in (0, 1], 1 disables
  double repetition_penalty = 1.0;  // > 0; 1 disables
  int64_t num_beams = 1;            // > 1 selects beam search (without sampling)
  double length_penalty = 1.0;      // beam search: score = sum_logprobs / length ** length_penalty
  EarlyStopping early_stopping = EarlyStopping::kHeuristic;
  int32_t eos_token_id = 2;   // LLaMA </s>; negative: no EOS
  int32_t pad_token_id = -1;  // fills finished rows in GenerationResult::padded(); negative: eos_token_id
  uint64_t seed = 0;
  // Greedy/sampling: a row stops once its decoded text contains one of these; needs GenerationCallbacks::decode.
  std::vector<std::string> stop_strings;
  // Greedy/sampling: a row stops right after emitting one of these (kept in its tokens, unlike EOS). Interleaved
  // writing stops at <dream_start> to draw, then resumes.
  std::vector<int32_t> stop_token_ids;
  // Added to the raw logits before any processor (not an HF feature; empty in every HF-parity path). A bias of
  // -inf bans a token.
  std::vector<std::pair<int32_t, float>> logit_bias;
};

struct GenerationCallbacks {
  // Greedy/sampling: called for every generated token except EOS, step by step, rows in ascending order within a
  // step. Tokens that spell a stop string are streamed too (the string is only known once complete). Beam search
  // streams nothing: its hypotheses are settled only at the end.
  std::function<void(int64_t row, int32_t token)> on_token;
  // Token ids to text; required for stop strings, and when given every row's text is returned.
  std::function<std::string(const std::vector<int32_t>&)> decode;
};

enum class FinishReason { kEos, kLength, kStopString, kStopToken };
const char* finish_reason_name(FinishReason r);

struct GenerationResult {
  // Generated ids per row, without the prompt and without EOS. After a stop string, the ids are cut to the
  // longest prefix whose text does not reach into the stop string (a token that straddles it is dropped).
  std::vector<std::vector<int32_t>> tokens;
  std::vector<FinishReason> finish_reasons;
  // decode(tokens); after a stop string, the text of all generated tokens cut just before the stop string (so it
  // can hold a few more characters than decode(tokens)). Empty when no decode callback was given.
  std::vector<std::string> texts;
  // Beam search: HF's sequence_scores (the chosen hypothesis' length-normalised score); empty otherwise.
  std::vector<double> sequence_scores;
  int32_t pad_token_id = -1;

  // The tokens as an I32 [rows, longest] tensor, shorter rows filled with pad_token_id.
  Tensor padded() const;
};

// Runs generation. `first_logits` [rows, V] holds the logits at the last prompt position of each row; the decoder
// has consumed the prompts and holds `rows` rows. `prompt_ids[r]` must be the full input_ids HF would see for row
// r (placeholder tokens included): the repetition penalty reads them and beam search counts their length.
// Throws dl::Error on invalid settings, mismatched shapes, or token ids outside the vocabulary.
GenerationResult generate(Decoder& decoder, const Tensor& first_logits,
                          const std::vector<std::vector<int32_t>>& prompt_ids, const GenerationConfig& config,
                          const GenerationCallbacks& callbacks = {});

// Throws dl::Error naming the first invalid setting.
void validate(const GenerationConfig& config);

// The individual processors, in place on one row of scores, exactly as HF applies them to a [1, V] tensor.
// RepetitionPenaltyLogitsProcessor over the ids seen so far (prompt + generated; duplicates count once).
void apply_repetition_penalty(std::span<float> scores, std::span<const int32_t> ids, double penalty);
// MinNewTokensLengthLogitsProcessor.
void apply_min_new_tokens(std::span<float> scores, int64_t generated, int64_t min_new_tokens, int32_t eos_token_id);
// TemperatureLogitsWarper.
void apply_temperature(std::span<float> scores, double temperature);
// TopKLogitsWarper (min_tokens_to_keep 1): keeps every score >= the k-th largest, so ties may keep more than k.
void apply_top_k(std::span<float> scores, int64_t top_k);
// TopPLogitsWarper (min_tokens_to_keep 1).
void apply_top_p(std::span<float> scores, double top_p);
// torch.log_softmax of one row, in float32.
void log_softmax_inplace(std::span<float> scores);
// Everything HF applies to one row before choosing: for sampling the processors then the warpers, for greedy the
// processors, for beam search log_softmax then the processors (before adding the beam score). `ids` is prompt +
// generated, `generated` the number of generated tokens among them.
void process_scores(std::span<float> scores, std::span<const int32_t> ids, int64_t generated,
                    const GenerationConfig& config);

}  // namespace dl::pipelines
