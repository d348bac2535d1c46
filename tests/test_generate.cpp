// Text generation (src/pipelines/generate.h) on a fake decoder whose logits depend only on the last two tokens of
// each row. Greedy, beam search and the logits processors are checked against the transformers-4.35 reference of
// tools/fixtures/make_generate_fixtures.py (tests/fixtures/generate/expected.json); sampling, stop strings,
// streaming and bad input are checked directly.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <numeric>
#include <sstream>

#include "core/error.h"
#include "pipelines/generate.h"

namespace dl {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using pipelines::EarlyStopping;
using pipelines::FinishReason;
using pipelines::GenerationCallbacks;
using pipelines::GenerationConfig;
using pipelines::GenerationResult;

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

const json& fixture() {
  static const json doc = [] {
    std::ifstream f(fs::path(DL_FIXTURE_DIR) / "generate" / "expected.json");
    std::stringstream ss;
    ss << f.rdbuf();
    return json::parse(ss.str());
  }();
  return doc;
}

// ---------------------------------------------------------------------------------------------- fake model
// The fixture's model: entry c after (..., a, b) is SplitMix64(seed * 1000003 + (a * V + b) * V + c) mapped to
// [-4, 4) in steps of 2^-21, exact in float32.
uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  uint64_t z = x;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

using LogitsFn = std::function<std::vector<float>(const std::vector<int32_t>& history)>;

LogitsFn table_model(int64_t vocab, uint64_t seed) {
  return [vocab, seed](const std::vector<int32_t>& h) {
    const uint64_t a = uint64_t(h[h.size() - 2]), b = uint64_t(h.back()), v = uint64_t(vocab);
    std::vector<float> out(static_cast<size_t>(vocab));
    for (uint64_t c = 0; c < v; ++c) {
      const uint64_t u = splitmix64(seed * 1000003ull + (a * v + b) * v + c) >> 40;
      out[c] = float((double(u) - double(1 << 23)) / double(1 << 21));
    }
    return out;
  };
}

LogitsFn fixture_model() {
  return table_model(fixture()["vocab"].get<int64_t>(), fixture()["seed"].get<uint64_t>());
}

// Keeps each row's token history, computes logits from it, and follows select_rows like a KV cache would.
class FakeDecoder : public pipelines::Decoder {
 public:
  FakeDecoder(std::vector<std::vector<int32_t>> prompts, LogitsFn fn) : hist_(std::move(prompts)), fn_(std::move(fn)) {}

  Tensor logits() const {
    std::vector<float> v;
    for (const auto& h : hist_) {
      auto row = fn_(h);
      vocab_ = int64_t(row.size());
      v.insert(v.end(), row.begin(), row.end());
    }
    return Tensor::from_vector(v, {int64_t(hist_.size()), vocab_});
  }

  Tensor step(const std::vector<int32_t>& tokens) override {
    EXPECT_EQ(tokens.size(), hist_.size()) << "one token per cached row";
    for (size_t i = 0; i < hist_.size() && i < tokens.size(); ++i) hist_[i].push_back(tokens[i]);
    ++steps;
    return logits();
  }

  void select_rows(const std::vector<int64_t>& src) override {
    std::vector<std::vector<int32_t>> next;
    for (int64_t s : src) {
      EXPECT_TRUE(s >= 0 && s < int64_t(hist_.size())) << "select_rows source " << s;
      next.push_back(hist_.at(size_t(s)));
    }
    hist_ = std::move(next);
    ++selects;
    select_sizes.push_back(int64_t(src.size()));
  }

  int64_t rows() const { return int64_t(hist_.size()); }

  int64_t steps = 0;
  int64_t selects = 0;
  std::vector<int64_t> select_sizes;

 private:
  std::vector<std::vector<int32_t>> hist_;
  LogitsFn fn_;
  mutable int64_t vocab_ = 0;
};

GenerationResult run(const std::vector<std::vector<int32_t>>& prompts, const GenerationConfig& cfg,
                     const LogitsFn& fn, const GenerationCallbacks& cb = {}, FakeDecoder** out_dec = nullptr) {
  static thread_local std::unique_ptr<FakeDecoder> last;
  last = std::make_unique<FakeDecoder>(prompts, fn);
  if (out_dec) *out_dec = last.get();
  Tensor first = last->logits();
  return pipelines::generate(*last, first, prompts, cfg, cb);
}

std::vector<std::vector<int32_t>> fixture_prompts() {
  return fixture()["prompts"].get<std::vector<std::vector<int32_t>>>();
}

GenerationConfig config_from(const json& j) {
  GenerationConfig c;
  c.eos_token_id = fixture()["eos_token_id"].get<int32_t>();
  if (j.contains("max_new_tokens")) c.max_new_tokens = j["max_new_tokens"].get<int64_t>();
  if (j.contains("min_new_tokens")) c.min_new_tokens = j["min_new_tokens"].get<int64_t>();
  if (j.contains("repetition_penalty")) c.repetition_penalty = j["repetition_penalty"].get<double>();
  if (j.contains("num_beams")) c.num_beams = j["num_beams"].get<int64_t>();
  if (j.contains("length_penalty")) c.length_penalty = j["length_penalty"].get<double>();
  if (j.contains("temperature")) c.temperature = j["temperature"].get<double>();
  if (j.contains("top_k")) c.top_k = j["top_k"].get<int64_t>();
  if (j.contains("top_p")) c.top_p = j["top_p"].get<double>();
  if (j.contains("early_stopping")) {
    const json& e = j["early_stopping"];
    c.early_stopping = e.is_string() ? EarlyStopping::kNever
                       : e.get<bool>() ? EarlyStopping::kAlways
                                       : EarlyStopping::kHeuristic;
  }
  return c;
}

std::vector<std::string> reason_names(const GenerationResult& r) {
  std::vector<std::string> out;
  for (auto f : r.finish_reasons) out.push_back(pipelines::finish_reason_name(f));
  return out;
}

std::vector<float> floats_from(const json& j) {
  std::vector<float> v;
  for (const auto& x : j) v.push_back(x.is_null() ? kNegInf : x.get<float>());
  return v;
}

// Softmax in double, for expected sampling frequencies.
std::vector<double> softmax(const std::vector<float>& s) {
  const float m = *std::max_element(s.begin(), s.end());
  std::vector<double> p(s.size());
  double sum = 0;
  for (size_t i = 0; i < s.size(); ++i) sum += p[i] = s[i] == kNegInf ? 0.0 : std::exp(double(s[i]) - m);
  for (auto& x : p) x /= sum;
  return p;
}

template <typename F>
void expect_error(F&& f, const std::string& needle) {
  try {
    f();
    ADD_FAILURE() << "expected dl::Error mentioning '" << needle << "'";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

// -------------------------------------------------------------------------------------- HF reference parity
TEST(GenerateFixture, GreedyMatchesReference) {
  const auto prompts = fixture_prompts();
  for (const auto& c : fixture()["greedy"]) {
    SCOPED_TRACE(c["config"].dump());
    const GenerationConfig cfg = config_from(c["config"]);
    const auto want = c["tokens"].get<std::vector<std::vector<int32_t>>>();
    const auto reasons = c["reasons"].get<std::vector<std::string>>();
    // All prompts as one batch: rows finish at different steps and leave the cache.
    GenerationResult res = run(prompts, cfg, fixture_model());
    EXPECT_EQ(res.tokens, want);
    EXPECT_EQ(reason_names(res), reasons);
    EXPECT_TRUE(res.sequence_scores.empty());
    // Each prompt alone gives the same row.
    for (size_t r = 0; r < prompts.size(); ++r) {
      GenerationResult one = run({prompts[r]}, cfg, fixture_model());
      EXPECT_EQ(one.tokens[0], want[r]) << "prompt " << r;
    }
  }
}

TEST(GenerateFixture, BeamSearchMatchesReference) {
  const auto prompts = fixture_prompts();
  int64_t compared = 0;
  for (const auto& c : fixture()["beam"]) {
    SCOPED_TRACE(c["config"].dump());
    const GenerationConfig cfg = config_from(c["config"]);
    const auto want = c["tokens"].get<std::vector<std::vector<int32_t>>>();
    const auto reasons = c["reasons"].get<std::vector<std::string>>();
    const auto scores = c["scores"].get<std::vector<double>>();
    FakeDecoder* dec = nullptr;
    GenerationResult res = run(prompts, cfg, fixture_model(), {}, &dec);
    EXPECT_EQ(res.tokens, want);
    EXPECT_EQ(reason_names(res), reasons);
    ASSERT_EQ(res.sequence_scores.size(), scores.size());
    for (size_t r = 0; r < scores.size(); ++r)
      EXPECT_NEAR(res.sequence_scores[r], scores[r], 1e-5 * std::max(1.0, std::abs(scores[r]))) << "row " << r;
    if (cfg.max_new_tokens > 1) {
      // The first select_rows duplicates each prompt's cache into num_beams rows.
      ASSERT_FALSE(dec->select_sizes.empty());
      EXPECT_EQ(dec->select_sizes[0] % cfg.num_beams, 0);
      EXPECT_LE(dec->select_sizes[0], int64_t(prompts.size()) * cfg.num_beams);
    }
    compared += int64_t(want.size());
  }
  EXPECT_GE(compared, 17 * 8);
}

// An EOS ranked below the top num_beams candidates must not close a hypothesis (see the fixture script).
TEST(GenerateFixture, BeamSearchLowRankedEosIsIgnored) {
  const json& c = fixture()["scripted"];
  std::map<std::vector<int32_t>, std::vector<float>> table;
  for (const auto& e : c["table"])
    table[e["history"].get<std::vector<int32_t>>()] = e["logits"].get<std::vector<float>>();
  const auto fallback = c["default"].get<std::vector<float>>();
  LogitsFn fn = [table, fallback](const std::vector<int32_t>& h) {
    auto it = table.find(h);
    return it == table.end() ? fallback : it->second;
  };
  GenerationResult res = run({c["prompt"].get<std::vector<int32_t>>()}, config_from(c["config"]), fn);
  EXPECT_EQ(res.tokens[0], c["tokens"].get<std::vector<int32_t>>());
  EXPECT_EQ(pipelines::finish_reason_name(res.finish_reasons[0]), c["reason"].get<std::string>());
  EXPECT_NEAR(res.sequence_scores[0], c["score"].get<double>(), 1e-6);
}

TEST(GenerateFixture, ProcessorsMatchReference) {
  int64_t n = 0;
  for (const auto& c : fixture()["processors"]) {
    const std::string kind = c["kind"].get<std::string>();
    SCOPED_TRACE(kind + " " + c["config"].dump());
    std::vector<float> s = floats_from(c["input"]);
    const std::vector<float> want = floats_from(c["expected"]);
    const auto ids = c["ids"].get<std::vector<int32_t>>();
    const json& cj = c["config"];
    if (kind == "repetition_penalty") {
      pipelines::apply_repetition_penalty(s, ids, cj["repetition_penalty"].get<double>());
    } else if (kind == "temperature") {
      pipelines::apply_temperature(s, cj["temperature"].get<double>());
    } else if (kind == "top_k") {
      pipelines::apply_top_k(s, cj["top_k"].get<int64_t>());
    } else if (kind == "top_p") {
      pipelines::apply_top_p(s, cj["top_p"].get<double>());
    } else if (kind == "sample_pipeline") {
      GenerationConfig cfg = config_from(cj);
      cfg.do_sample = true;
      pipelines::process_scores(s, ids, 0, cfg);
    } else {
      ASSERT_EQ(kind, "beam_pipeline");
      GenerationConfig cfg = config_from(cj);
      cfg.num_beams = 2;
      pipelines::process_scores(s, ids, 0, cfg);
    }
    ASSERT_EQ(s.size(), want.size());
    for (size_t i = 0; i < s.size(); ++i) {
      if (want[i] == kNegInf) {
        EXPECT_EQ(s[i], kNegInf) << "index " << i;
      } else {
        EXPECT_NEAR(s[i], want[i], 1e-6 * std::max(1.0f, std::abs(want[i]))) << "index " << i;
      }
    }
    ++n;
  }
  EXPECT_GE(n, 50);
}

// ------------------------------------------------------------------------------------------------ sampling
TEST(GenerateSampling, TopK1EqualsGreedy) {
  const auto prompts = fixture_prompts();
  GenerationConfig greedy;
  greedy.max_new_tokens = 12;
  const auto want = run(prompts, greedy, fixture_model()).tokens;
  for (uint64_t seed : {0ull, 1ull, 12345ull}) {
    GenerationConfig s = greedy;
    s.do_sample = true;
    s.top_k = 1;
    s.temperature = 0.7;
    s.seed = seed;
    EXPECT_EQ(run(prompts, s, fixture_model()).tokens, want) << "seed " << seed;
  }
}

TEST(GenerateSampling, SameSeedSameTokens) {
  const auto prompts = fixture_prompts();
  GenerationConfig s;
  s.max_new_tokens = 12;
  s.do_sample = true;
  s.temperature = 1.3;
  s.top_k = 0;
  s.seed = 42;
  const auto a = run(prompts, s, fixture_model()).tokens;
  EXPECT_EQ(run(prompts, s, fixture_model()).tokens, a);
  s.seed = 43;
  EXPECT_NE(run(prompts, s, fixture_model()).tokens, a);
  // A row's stream depends on (seed, row) only: changing another row's prompt leaves it alone.
  s.seed = 42;
  auto other = prompts;
  other[0] = {1, 1, 1};
  const auto b = run(other, s, fixture_model()).tokens;
  for (size_t r = 1; r < prompts.size(); ++r) EXPECT_EQ(b[r], a[r]) << "row " << r;
}

// Draws one token per row from N identical rows and compares the frequencies with the processed softmax.
void check_frequencies(const GenerationConfig& base, const std::vector<int32_t>& prompt) {
  constexpr int64_t kRows = 20000;
  GenerationConfig cfg = base;
  cfg.do_sample = true;
  cfg.max_new_tokens = 1;
  cfg.eos_token_id = -1;  // count every token
  std::vector<std::vector<int32_t>> prompts(kRows, prompt);
  GenerationResult res = run(prompts, cfg, fixture_model());
  std::vector<float> s = fixture_model()(prompt);
  pipelines::process_scores(s, prompt, 0, cfg);
  const auto p = softmax(s);
  std::vector<int64_t> count(p.size(), 0);
  for (const auto& t : res.tokens) {
    ASSERT_EQ(t.size(), 1u);
    ++count[size_t(t[0])];
  }
  for (size_t i = 0; i < p.size(); ++i) {
    const double f = double(count[i]) / kRows;
    if (p[i] == 0) {
      EXPECT_EQ(count[i], 0) << "token " << i << " was filtered out but drawn";
    } else {
      const double sigma = std::sqrt(p[i] * (1 - p[i]) / kRows);
      EXPECT_NEAR(f, p[i], 5 * sigma + 1e-3) << "token " << i;
    }
  }
}

TEST(GenerateSampling, FrequenciesMatchSoftmax) {
  GenerationConfig t;
  t.temperature = 0.8;
  t.top_k = 0;
  check_frequencies(t, {5, 9});
  GenerationConfig w;
  w.temperature = 1.5;
  w.top_k = 6;
  w.top_p = 0.7;
  w.repetition_penalty = 1.4;
  check_frequencies(w, {14, 3});
}

// ---------------------------------------------------------------------------------- stopping and streaming
// Token t decodes to one letter, 'a' + t.
std::string letters(const std::vector<int32_t>& ids) {
  std::string s;
  for (int32_t t : ids) s += char('a' + t);
  return s;
}
// Token t decodes to two letters, so stop strings can straddle tokens.
std::string pairs(const std::vector<int32_t>& ids) {
  std::string s;
  for (int32_t t : ids) {
    s += char('a' + t);
    s += char('A' + t);
  }
  return s;
}

TEST(GenerateStop, StopStringEndsRowAndIsTrimmed) {
  const auto prompts = fixture_prompts();
  GenerationConfig cfg;
  cfg.max_new_tokens = 12;
  const auto full = run(prompts, cfg, fixture_model()).tokens;
  ASSERT_EQ(full[0].size(), 12u);
  const std::string text = letters(full[0]);
  const std::string stop = text.substr(5, 2);
  const size_t pos = text.find(stop);

  GenerationCallbacks cb;
  cb.decode = letters;
  cfg.stop_strings = {"zzz", stop};  // "zzz" never occurs
  FakeDecoder* dec = nullptr;
  GenerationResult res = run(prompts, cfg, fixture_model(), cb, &dec);
  EXPECT_EQ(res.finish_reasons[0], FinishReason::kStopString);
  EXPECT_EQ(res.texts[0], text.substr(0, pos));
  EXPECT_EQ(res.tokens[0], std::vector<int32_t>(full[0].begin(), full[0].begin() + std::ptrdiff_t(pos)));
  // The other rows either stop on the same string or run as before.
  for (size_t r = 1; r < prompts.size(); ++r) {
    const std::string t = letters(full[r]);
    const size_t p = t.find(stop);
    if (p == std::string::npos) {
      EXPECT_EQ(res.tokens[r], full[r]);
      EXPECT_EQ(res.texts[r], t);
    } else {
      EXPECT_EQ(res.finish_reasons[r], FinishReason::kStopString);
      EXPECT_EQ(res.texts[r], t.substr(0, p));
    }
  }
}

TEST(GenerateStop, StopStringStraddlingTokens) {
  const std::vector<std::vector<int32_t>> prompts = {fixture_prompts()[0]};
  GenerationConfig cfg;
  cfg.max_new_tokens = 12;
  const auto full = run(prompts, cfg, fixture_model()).tokens[0];
  const std::string text = pairs(full);
  // Starts on the second letter of token 2 and ends on the first letter of token 3.
  const std::string stop = text.substr(5, 2);
  ASSERT_EQ(text.find(stop), 5u) << "pick another offset for this model";
  GenerationCallbacks cb;
  cb.decode = pairs;
  cfg.stop_strings = {stop};
  GenerationResult res = run(prompts, cfg, fixture_model(), cb);
  EXPECT_EQ(res.finish_reasons[0], FinishReason::kStopString);
  EXPECT_EQ(res.texts[0], text.substr(0, 5));
  // Token 2 reaches into the stop string, so only tokens 0 and 1 remain.
  EXPECT_EQ(res.tokens[0], std::vector<int32_t>(full.begin(), full.begin() + 2));
}

TEST(GenerateStop, EarliestStopStringWins) {
  // Find a row and a token i whose letter is new at i, so that both stop strings below first complete at token i.
  const auto prompts = fixture_prompts();
  GenerationConfig cfg;
  cfg.max_new_tokens = 12;
  const auto full = run(prompts, cfg, fixture_model()).tokens;
  for (size_t r = 0; r < prompts.size(); ++r) {
    const std::string text = letters(full[r]);
    for (size_t i = 3; i < text.size(); ++i) {
      const std::string one = text.substr(i, 1), three = text.substr(i - 2, 3);
      if (text.find(one) != i || text.find(three) != i - 2) continue;
      GenerationCallbacks cb;
      cb.decode = letters;
      GenerationConfig c = cfg;
      c.stop_strings = {one, three};
      GenerationResult res = run({prompts[r]}, c, fixture_model(), cb);
      EXPECT_EQ(res.texts[0], text.substr(0, i - 2));
      EXPECT_EQ(res.tokens[0].size(), i - 2);
      return;
    }
  }
  FAIL() << "no suitable row in the fixture";
}

// A model that emits EOS once a row holds `eos_at[first prompt token]` generated tokens, and otherwise prefers
// token 3 + (history length % 5).
LogitsFn eos_model(std::vector<size_t> prompt_len, std::vector<int64_t> eos_after) {
  return [prompt_len, eos_after](const std::vector<int32_t>& h) {
    std::vector<float> l(16, 0.0f);
    const size_t row = size_t(h[0]);  // prompts are {row, 0}
    const int64_t generated = int64_t(h.size() - prompt_len[row]);
    if (generated == eos_after[row]) {
      l[2] = 5.0f;
    } else {
      l[size_t(3 + h.size() % 5)] = 4.0f;
      l[2] = 2.0f;  // EOS second best, for min_new_tokens
    }
    return l;
  };
}

TEST(GenerateLoop, EosEndsRowsAndIsNotReturned) {
  const std::vector<std::vector<int32_t>> prompts = {{0, 0}, {1, 0}, {2, 0}, {3, 0}};
  const std::vector<int64_t> eos_after = {3, 0, 7, 100};
  GenerationConfig cfg;
  cfg.max_new_tokens = 10;
  std::vector<std::pair<int64_t, int32_t>> events;
  GenerationCallbacks cb;
  cb.on_token = [&](int64_t row, int32_t tok) { events.emplace_back(row, tok); };
  FakeDecoder* dec = nullptr;
  GenerationResult res = run(prompts, cfg, eos_model({2, 2, 2, 2}, eos_after), cb, &dec);
  ASSERT_EQ(res.tokens.size(), 4u);
  EXPECT_EQ(res.tokens[0].size(), 3u);
  EXPECT_EQ(res.tokens[1].size(), 0u);
  EXPECT_EQ(res.tokens[2].size(), 7u);
  EXPECT_EQ(res.tokens[3].size(), 10u);
  EXPECT_EQ(reason_names(res), (std::vector<std::string>{"eos", "eos", "eos", "length"}));
  for (const auto& t : res.tokens)
    for (int32_t x : t) EXPECT_NE(x, 2);
  // Streaming: step by step, rows ascending, EOS never streamed.
  std::vector<std::pair<int64_t, int32_t>> want;
  for (size_t s = 0; s < 10; ++s)
    for (size_t r = 0; r < res.tokens.size(); ++r)
      if (s < res.tokens[r].size()) want.emplace_back(int64_t(r), res.tokens[r][s]);
  EXPECT_EQ(events, want);
  // The decoder is stepped once per generated token except the last, and finished rows are dropped from it.
  EXPECT_EQ(dec->steps, 9);
  EXPECT_EQ(dec->rows(), 1);
  EXPECT_EQ(dec->select_sizes, (std::vector<int64_t>{3, 2, 1}));

  Tensor padded = res.padded();
  EXPECT_EQ(padded.shape(), (Shape{4, 10}));
  EXPECT_EQ(padded.at({1, 0}), 2.0f);  // pad defaults to EOS
  EXPECT_EQ(padded.at({0, 2}), float(res.tokens[0][2]));
}

TEST(GenerateLoop, MinNewTokensDelaysEos) {
  const std::vector<std::vector<int32_t>> prompts = {{0, 0}, {1, 0}};
  GenerationConfig cfg;
  cfg.max_new_tokens = 10;
  cfg.min_new_tokens = 3;
  GenerationResult res = run(prompts, cfg, eos_model({2, 2}, {1, 5}));
  // Row 0 wanted EOS after 1 token; it is masked until 3 were generated, and then the model no longer asks for it.
  EXPECT_EQ(res.tokens[0].size(), 10u);
  EXPECT_EQ(res.tokens[1].size(), 5u);
  EXPECT_EQ(res.finish_reasons[1], FinishReason::kEos);
}

TEST(GenerateLoop, MaxNewTokens) {
  const auto prompts = fixture_prompts();
  GenerationConfig cfg;
  cfg.max_new_tokens = 0;
  FakeDecoder* dec = nullptr;
  GenerationResult res = run(prompts, cfg, fixture_model(), {}, &dec);
  for (const auto& t : res.tokens) EXPECT_TRUE(t.empty());
  EXPECT_EQ(dec->steps, 0);
  cfg.num_beams = 3;
  res = run(prompts, cfg, fixture_model(), {}, &dec);
  for (const auto& t : res.tokens) EXPECT_TRUE(t.empty());
  EXPECT_EQ(dec->steps, 0);

  cfg = GenerationConfig{};
  cfg.max_new_tokens = 7;
  cfg.eos_token_id = -1;
  res = run({prompts[0]}, cfg, fixture_model(), {}, &dec);
  EXPECT_EQ(res.tokens[0].size(), 7u);
  EXPECT_EQ(res.finish_reasons[0], FinishReason::kLength);
  EXPECT_EQ(dec->steps, 6);
}

TEST(GenerateLoop, TextsComeFromDecode) {
  const auto prompts = fixture_prompts();
  GenerationConfig cfg;
  cfg.max_new_tokens = 5;
  GenerationCallbacks cb;
  cb.decode = letters;
  GenerationResult res = run(prompts, cfg, fixture_model(), cb);
  ASSERT_EQ(res.texts.size(), prompts.size());
  for (size_t r = 0; r < prompts.size(); ++r) EXPECT_EQ(res.texts[r], letters(res.tokens[r]));
  cfg.num_beams = 3;
  res = run(prompts, cfg, fixture_model(), cb);
  ASSERT_EQ(res.texts.size(), prompts.size());
  for (size_t r = 0; r < prompts.size(); ++r) EXPECT_EQ(res.texts[r], letters(res.tokens[r]));
}

// ----------------------------------------------------------------------------------------------- bad input
TEST(GenerateErrors, BadSettings) {
  const auto prompts = fixture_prompts();
  auto with = [&](auto edit) {
    GenerationConfig c;
    c.max_new_tokens = 3;
    edit(c);
    return [&prompts, c] { run(prompts, c, fixture_model()); };
  };
  expect_error(with([](GenerationConfig& c) { c.num_beams = 0; }), "num_beams");
  expect_error(with([](GenerationConfig& c) {
                 c.do_sample = true;
                 c.temperature = 0;
               }),
               "temperature");
  expect_error(with([](GenerationConfig& c) {
                 c.do_sample = true;
                 c.temperature = -1;
               }),
               "temperature");
  expect_error(with([](GenerationConfig& c) { c.top_p = 0; }), "top_p");
  expect_error(with([](GenerationConfig& c) { c.top_p = 1.5; }), "top_p");
  expect_error(with([](GenerationConfig& c) { c.top_k = -1; }), "top_k");
  expect_error(with([](GenerationConfig& c) { c.repetition_penalty = 0; }), "repetition_penalty");
  expect_error(with([](GenerationConfig& c) { c.max_new_tokens = -1; }), "max_new_tokens");
  expect_error(with([](GenerationConfig& c) {
                 c.num_beams = 2;
                 c.do_sample = true;
               }),
               "beam sampling");
  expect_error(with([](GenerationConfig& c) { c.stop_strings = {"x"}; }), "decode callback");
  expect_error(with([](GenerationConfig& c) { c.stop_strings = {""}; }), "empty stop string");
  expect_error(with([](GenerationConfig& c) {
                 c.num_beams = 2;
                 c.stop_strings = {"x"};
               }),
               "beam search");
  expect_error(with([](GenerationConfig& c) { c.eos_token_id = 16; }), "eos_token_id");
  // Temperature is ignored without sampling, as in HF.
  GenerationConfig ok;
  ok.max_new_tokens = 2;
  ok.temperature = 0;
  EXPECT_NO_THROW(run(prompts, ok, fixture_model()));
}

TEST(GenerateErrors, BadLogitsAndPrompts) {
  const auto prompts = fixture_prompts();
  GenerationConfig cfg;
  cfg.max_new_tokens = 3;
  FakeDecoder dec(prompts, fixture_model());
  const Tensor good = dec.logits();
  expect_error([&] { pipelines::generate(dec, good.view({-1}), prompts, cfg); }, "[rows, vocab]");
  expect_error([&] { pipelines::generate(dec, good.slice(0, 0, 3), prompts, cfg); }, "rows");
  expect_error([&] { pipelines::generate(dec, Tensor(), prompts, cfg); }, "undefined");
  expect_error([&] { pipelines::generate(dec, good, {}, cfg); }, "no rows");
  expect_error([&] { pipelines::generate(dec, good.to(DType::I32), prompts, cfg); }, "floating point");
  Tensor nan = good.clone();
  nan.f32()[5] = std::numeric_limits<float>::quiet_NaN();
  expect_error([&] { pipelines::generate(dec, nan, prompts, cfg); }, "NaN");

  // A decoder whose step() returns the wrong vocabulary size.
  FakeDecoder wrong(prompts, [](const std::vector<int32_t>&) { return std::vector<float>(7, 0.0f); });
  expect_error([&] { pipelines::generate(wrong, good, prompts, cfg); }, "Decoder::step");

  // The repetition penalty reads the prompt, whose ids must be in the vocabulary.
  auto bad_prompts = prompts;
  bad_prompts[2].push_back(99);
  cfg.repetition_penalty = 1.2;
  expect_error([&] { pipelines::generate(dec, good, bad_prompts, cfg); }, "outside the vocabulary");

  // Beam search needs a prompt: 4.35 divides by its length.
  GenerationConfig beam;
  beam.num_beams = 3;
  auto empty_prompt = prompts;
  empty_prompt[0].clear();
  expect_error([&] { pipelines::generate(dec, good, empty_prompt, beam); }, "empty");
}

TEST(GenerateErrors, ProcessorArguments) {
  std::vector<float> s = {1, 2, 3};
  expect_error([&] { pipelines::apply_top_p(s, 0.0); }, "top_p");
  expect_error([&] { pipelines::apply_top_k(s, 0); }, "top_k");
  expect_error([&] { pipelines::apply_temperature(s, 0.0); }, "temperature");
  const std::vector<int32_t> ids = {3};
  expect_error([&] { pipelines::apply_repetition_penalty(s, ids, 1.2); }, "outside the vocabulary");
}

}  // namespace
}  // namespace dl
