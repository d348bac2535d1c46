// Data builders and data-file readers: token layouts (ids, labels, image order) of hand-written records in every
// format against the reference of tools/fixtures/make_document_fixtures.py (a transcription of DreamLLM's
// builder_dreamllm.py), truncation at small max_length, malformed and empty data files, missing fields.
#include <gtest/gtest.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.h"
#include "core/random.h"
#include "test_util.h"
#include "text/tokenizer.h"
#include "train/documents.h"
#include "train/jsonl.h"

namespace dl {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using test::error_of;
using text::Tokenizer;
using train::DataIssue;
using train::DocumentBuilder;
using train::DocumentOptions;
using train::ImageRef;
using train::Record;
using train::RecordFormat;
using train::RecordReader;
using train::Sample;

const fs::path kDir = fs::path(DL_FIXTURE_DIR) / "documents";
const fs::path kTokenizerDir = fs::path(DL_FIXTURE_DIR) / "tokenizer";

json load_json(const fs::path& path) {
  std::ifstream f(path);
  std::stringstream ss;
  ss << f.rdbuf();
  return json::parse(ss.str());
}

const json& expected() {
  static const json doc = load_json(kDir / "expected.json");
  return doc;
}

// A scratch directory removed at scope exit.
struct TempDir {
  fs::path path;
  explicit TempDir(const std::string& name)
      : path(fs::temp_directory_path() / ("dl_test_docs_" + name + "_" + std::to_string(getpid()))) {
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  fs::path write(const std::string& file, const std::string& content) const {
    std::ofstream f(path / file, std::ios::binary);
    f << content;
    return path / file;
  }
};

// The fixture tokenizer; "non_legacy" is the same model with tokenizer_config.json "legacy": false.
const Tokenizer& tokenizer(const std::string& variant) {
  static std::map<std::string, std::unique_ptr<Tokenizer>> cache;
  auto& slot = cache[variant];
  if (!slot) {
    if (variant == "legacy") {
      slot = std::make_unique<Tokenizer>(Tokenizer::load(kTokenizerDir.string()));
    } else {
      const json cases = load_json(kTokenizerDir / "cases.json");
      const json& v = cases["variants"][variant];
      TempDir dir("tok_" + variant);
      fs::copy_file(kTokenizerDir / "tokenizer.model", dir.path / "tokenizer.model");
      fs::copy_file(kTokenizerDir / "added_tokens.json", dir.path / "added_tokens.json");
      if (!v["tokenizer_config"].is_null()) dir.write("tokenizer_config.json", v["tokenizer_config"].dump());
      if (!v["special_tokens_map"].is_null()) dir.write("special_tokens_map.json", v["special_tokens_map"].dump());
      slot = std::make_unique<Tokenizer>(Tokenizer::load(dir.path.string()));
    }
  }
  return *slot;
}

DocumentOptions options_of(const json& o) {
  DocumentOptions opt;
  opt.image_tokens = o["image_tokens"].get<int>();
  opt.dream_queries = o["dream_queries"].get<int>();
  opt.max_length = o["max_length"].get<int>();
  opt.comprehension = o["comprehension"].get<bool>();
  opt.creation = o["creation"].get<bool>();
  return opt;
}

std::vector<Record> read_all(const fs::path& path, RecordFormat format, std::vector<DataIssue>* issues = nullptr,
                             std::vector<int64_t>* lines = nullptr) {
  train::RecordReaderOptions opt;
  if (issues) opt.on_issue = [issues](const DataIssue& i) { issues->push_back(i); };
  RecordReader reader(path, format, opt);
  std::vector<Record> out;
  while (auto r = reader.next()) {
    out.push_back(std::move(*r));
    if (lines) lines->push_back(reader.line());
  }
  return out;
}

std::string show(const std::vector<int32_t>& v) {
  std::string s = "[";
  for (size_t i = 0; i < v.size(); ++i) {
    if (i > 0) s += ' ';
    s += std::to_string(v[i]);
  }
  return s + "]";
}

::testing::AssertionResult same_ids(const char* what, const std::vector<int32_t>& got, const json& want_json) {
  const std::vector<int32_t> want = want_json.get<std::vector<int32_t>>();
  if (got == want) return ::testing::AssertionSuccess();
  size_t at = 0;
  while (at < got.size() && at < want.size() && got[at] == want[at]) ++at;
  return ::testing::AssertionFailure() << what << " differ at position " << at << " (lengths " << got.size() << " vs "
                                       << want.size() << ")\n  got:  " << show(got) << "\n  want: " << show(want);
}

std::vector<ImageRef> refs_of(const json& j) {
  std::vector<ImageRef> refs;
  for (const auto& r : j) {
    const std::string p = r[1].get<std::string>();
    refs.push_back(ImageRef{r[0].get<int32_t>(), fs::path(p).is_absolute() ? p : (kDir / p).string()});
  }
  return refs;
}

void expect_sample(const Sample& got, const json& want, const DocumentBuilder& builder, bool may_exceed_max_length) {
  EXPECT_TRUE(same_ids("input_ids", got.input_ids, want["input_ids"]));
  EXPECT_TRUE(same_ids("labels", got.labels, want["labels"]));
  EXPECT_EQ(got.images, refs_of(want["images"]));
  EXPECT_EQ(got.dream_images, refs_of(want["dream_images"]));
  // Layout invariants that hold whatever the reference says.
  ASSERT_EQ(got.labels.size(), got.input_ids.size());
  const Tokenizer& tok = tokenizer("legacy");
  const auto count = [&](std::string_view token) {
    return size_t(std::count(got.input_ids.begin(), got.input_ids.end(), tok.token_id(token)));
  };
  EXPECT_EQ(count(text::kImageStartToken), got.images.size());
  EXPECT_EQ(count(text::kImageEndToken), got.images.size());
  EXPECT_EQ(count(text::kDreamStartToken), got.dream_images.size());
  EXPECT_EQ(count(text::kImagePatchToken), got.images.size() * size_t(builder.options().image_tokens) +
                                               got.dream_images.size() * size_t(builder.options().dream_queries));
  if (!may_exceed_max_length) {
    EXPECT_LE(got.input_ids.size(), size_t(builder.options().max_length));
  }
}

TEST(Documents, MatchesPythonReference) {
  const json& cases = expected()["cases"];
  ASSERT_GE(cases.size(), 25u);
  std::map<std::string, int> kinds;
  for (const json& c : cases) {
    const std::string name = c["name"].get<std::string>();
    SCOPED_TRACE(name);
    const std::string kind = c["kind"].get<std::string>();
    ++kinds[kind];
    const DocumentBuilder builder(tokenizer(c["tokenizer"].get<std::string>()), options_of(c["options"]));
    const RecordFormat format = kind == "pair"           ? RecordFormat::Pair
                                : kind == "conversation" ? RecordFormat::Conversation
                                                         : RecordFormat::Interleaved;
    std::vector<DataIssue> issues;
    const std::vector<Record> records = read_all(kDir / c["file"].get<std::string>(), format, &issues);
    EXPECT_TRUE(issues.empty());
    const json& samples = c["samples"];
    ASSERT_EQ(records.size(), samples.size());
    for (size_t k = 0; k < records.size(); ++k) {
      SCOPED_TRACE("record " + std::to_string(k));
      Sample got;
      if (kind == "pair") {
        const double coin = c.contains("coins") ? c["coins"][k].get<double>() : 0.0;
        got = builder.pair(std::get<train::PairRecord>(records[k]), coin);
      } else if (kind == "interleaved") {
        got = builder.interleaved(std::get<train::InterleavedRecord>(records[k]));
      } else if (kind == "instruct") {
        got = builder.instruct_interleaved(std::get<train::InterleavedRecord>(records[k]));
      } else {
        got = builder.conversation(std::get<train::ConversationRecord>(records[k]));
      }
      // Only the instruct prompt itself can outgrow max_length (the original never cuts it).
      expect_sample(got, samples[k], builder, kind == "instruct");
    }
  }
  EXPECT_GE(kinds["pair"], 4);
  EXPECT_GE(kinds["interleaved"], 4);
  EXPECT_GE(kinds["instruct"], 3);
  EXPECT_GE(kinds["conversation"], 4);
}

TEST(Documents, HandWrittenPairLayouts) {
  // Independent of the fixture: the layouts of section 2.3 spelled out with P=2, Q=1.
  const Tokenizer& tok = tokenizer("legacy");
  DocumentOptions opt;
  opt.image_tokens = 2;
  opt.dream_queries = 1;
  const DocumentBuilder builder(tok, opt);
  const train::PairRecord pair{"x.png", "A red circle."};
  const std::vector<int32_t> caption = tok.encode("A red circle.", false);
  const int32_t n = -100;

  Sample i2t = builder.image_to_text(pair);
  std::vector<int32_t> want{1, 421, 424, 424, 425};
  want.insert(want.end(), caption.begin(), caption.end());
  want.push_back(2);
  EXPECT_EQ(i2t.input_ids, want);
  std::vector<int32_t> labels{1, n, n, n, n};
  labels.insert(labels.end(), caption.begin(), caption.end());
  labels.push_back(2);
  EXPECT_EQ(i2t.labels, labels);
  EXPECT_EQ(i2t.images, (std::vector<ImageRef>{{0, "x.png"}}));
  EXPECT_TRUE(i2t.dream_images.empty());

  Sample t2i = builder.text_to_image(pair);
  want = {1};
  want.insert(want.end(), caption.begin(), caption.end());
  want.insert(want.end(), {423, 424, 422, 2});
  EXPECT_EQ(t2i.input_ids, want);
  EXPECT_EQ(t2i.labels, std::vector<int32_t>(want.size(), n));
  EXPECT_EQ(t2i.dream_images, (std::vector<ImageRef>{{0, "x.png"}}));
  EXPECT_TRUE(t2i.images.empty());

  // The coin: >= 0.5 comprehension, < 0.5 creation; a single mode ignores it.
  EXPECT_EQ(builder.pair(pair, 0.5).input_ids, i2t.input_ids);
  EXPECT_EQ(builder.pair(pair, 0.4999).input_ids, t2i.input_ids);
  opt.creation = false;
  EXPECT_EQ(DocumentBuilder(tok, opt).pair(pair, 0.0).input_ids, i2t.input_ids);
  opt.creation = true;
  opt.comprehension = false;
  EXPECT_EQ(DocumentBuilder(tok, opt).pair(pair, 0.9).input_ids, t2i.input_ids);
}

TEST(Documents, HandWrittenInterleavedLayout) {
  const Tokenizer& tok = tokenizer("legacy");
  DocumentOptions opt;
  opt.image_tokens = 2;
  opt.dream_queries = 1;
  const DocumentBuilder builder(tok, opt);
  train::InterleavedRecord doc;
  doc.text_list = {" One. ", "Two.", "Three."};
  doc.images = {{"b.png", 2, std::nullopt}, {"a.png", 0, std::nullopt}};
  const Sample s = builder.interleaved(doc);
  const int32_t n = -100;
  std::vector<int32_t> ids{1}, labels{1};
  const auto text = [&](const std::string& t) {
    for (int32_t id : tok.encode(t, false)) {
      ids.push_back(id);
      labels.push_back(id);
    }
  };
  const auto spans = [&] {
    ids.insert(ids.end(), {423, 424, 422, 421, 424, 424, 425});
    labels.insert(labels.end(), {423, n, n, n, n, n, n});  // only <dream_start> is learned
  };
  text("One.");
  spans();
  text("Two. Three.");
  spans();
  ids.push_back(2);
  labels.push_back(2);
  EXPECT_EQ(s.input_ids, ids);
  EXPECT_EQ(s.labels, labels);
  const std::vector<ImageRef> order{{1, "a.png"}, {0, "b.png"}};
  EXPECT_EQ(s.images, order);
  EXPECT_EQ(s.dream_images, order);
}

TEST(Documents, BuildDispatchesAndDrawsOneCoinPerPair) {
  const Tokenizer& tok = tokenizer("legacy");
  DocumentOptions opt;
  opt.image_tokens = 4;
  opt.dream_queries = 3;
  const DocumentBuilder builder(tok, opt);
  const std::vector<Record> pairs = read_all(kDir / "pairs.jsonl", RecordFormat::Pair);
  Rng rng(7), mirror(7);
  int i2t = 0, t2i = 0;
  for (int round = 0; round < 8; ++round) {
    for (const Record& r : pairs) {
      const Sample a = builder.build(r, rng);
      const Sample b = builder.pair(std::get<train::PairRecord>(r), mirror.uniform());
      EXPECT_EQ(a.input_ids, b.input_ids);
      (a.images.empty() ? t2i : i2t) += 1;
    }
  }
  EXPECT_GT(i2t, 0);
  EXPECT_GT(t2i, 0);
  // A single-mode builder still consumes one draw per pair, so the stream does not depend on the mode.
  opt.comprehension = false;
  Rng a(3), b(3);
  DocumentBuilder(tok, opt).build(pairs[0], a);
  b.uniform();
  EXPECT_EQ(a.next(), b.next());

  const std::vector<Record> instruct = read_all(kDir / "instruct.jsonl", RecordFormat::Interleaved);
  const auto& doc = std::get<train::InterleavedRecord>(instruct[0]);
  EXPECT_EQ(builder.build(instruct[0], rng).input_ids, builder.instruct_interleaved(doc).input_ids);
  train::InterleavedRecord plain = doc;
  plain.instruction.reset();
  EXPECT_EQ(builder.build(Record(plain), rng).input_ids, builder.interleaved(plain).input_ids);
  EXPECT_NE(error_of([&] { builder.instruct_interleaved(plain); }).find("instruction"), std::string::npos);
}

TEST(Documents, RejectsUnusableOptions) {
  const Tokenizer& tok = tokenizer("legacy");
  DocumentOptions opt;
  opt.comprehension = false;
  opt.creation = false;
  EXPECT_NE(error_of([&] { DocumentBuilder(tok, opt); }).find("at least one mode"), std::string::npos);
  opt = DocumentOptions{};
  opt.max_length = 100;  // 256 image tokens do not fit
  EXPECT_NE(error_of([&] { DocumentBuilder(tok, opt); }).find("max_length 100"), std::string::npos);
  opt = DocumentOptions{};
  opt.image_tokens = 0;
  EXPECT_NE(error_of([&] { DocumentBuilder(tok, opt); }).find("image_tokens"), std::string::npos);
}

TEST(Documents, ConversationPlaceholdersNeedImages) {
  const Tokenizer& tok = tokenizer("legacy");
  DocumentOptions opt;
  opt.image_tokens = 4;
  opt.dream_queries = 3;
  const DocumentBuilder builder(tok, opt);
  train::ConversationRecord conv;
  conv.turns = {{"human", "<image>\nWhat is it?"}, {"gpt", "A circle. <dream>"}};
  EXPECT_NE(error_of([&] { builder.conversation(conv); }).find("no \"image\" field"), std::string::npos);
  conv.images = {"a.png", "b.png", "c.png"};
  EXPECT_NE(error_of([&] { builder.conversation(conv); }).find("2 <image>/<dream> placeholder(s) but 3 images"),
            std::string::npos);
  conv.images = {"a.png", "b.png"};
  const Sample s = builder.conversation(conv);
  EXPECT_EQ(s.images, (std::vector<ImageRef>{{0, "a.png"}, {1, "b.png"}}));
  EXPECT_EQ(s.dream_images, (std::vector<ImageRef>{{1, "b.png"}}));
}

// ---------------------------------------------------------------------------------------------------------------
// Readers
// ---------------------------------------------------------------------------------------------------------------
TEST(Jsonl, MalformedLinesAreReportedWithFileAndLineAndSkipped) {
  const json& want = expected()["reader"];
  const fs::path path = kDir / want["file"].get<std::string>();
  std::vector<DataIssue> issues;
  std::vector<int64_t> lines;
  train::RecordReaderOptions opt;
  opt.on_issue = [&](const DataIssue& i) { issues.push_back(i); };
  RecordReader reader(path, RecordFormat::Pair, opt);
  std::vector<Record> records;
  while (auto r = reader.next()) {
    records.push_back(std::move(*r));
    lines.push_back(reader.line());
  }
  EXPECT_EQ(lines, want["record_lines"].get<std::vector<int64_t>>());
  std::vector<int64_t> issue_lines;
  for (const DataIssue& i : issues) {
    issue_lines.push_back(i.line);
    EXPECT_EQ(i.file, path.string());
    EXPECT_EQ(i.where(), path.string() + ":" + std::to_string(i.line));
  }
  EXPECT_EQ(issue_lines, want["skipped_lines"].get<std::vector<int64_t>>());
  ASSERT_EQ(issues.size(), 3u);
  EXPECT_NE(issues[0].message.find("invalid JSON"), std::string::npos) << issues[0].message;
  EXPECT_NE(issues[1].message.find("expected a JSON object, got array"), std::string::npos) << issues[1].message;
  EXPECT_EQ(reader.skipped(), 3);
  EXPECT_EQ(reader.records(), 3);

  DocumentOptions dopt;
  dopt.image_tokens = 4;
  dopt.dream_queries = 3;
  dopt.creation = false;
  const DocumentBuilder builder(tokenizer("legacy"), dopt);
  ASSERT_EQ(records.size(), want["samples"].size());
  for (size_t k = 0; k < records.size(); ++k) {
    expect_sample(builder.pair(std::get<train::PairRecord>(records[k]), 1.0), want["samples"][k], builder, false);
  }
}

TEST(Jsonl, JsonArrayFilesStreamElementByElement) {
  std::vector<DataIssue> issues;
  std::vector<int64_t> lines;
  const std::vector<Record> records = read_all(kDir / "malformed_array.json", RecordFormat::Pair, &issues, &lines);
  ASSERT_EQ(records.size(), 3u);
  EXPECT_EQ(lines, (std::vector<int64_t>{2, 4, 7}));
  EXPECT_EQ(std::get<train::PairRecord>(records[0]).caption,
            "First, with a bracket ] and a brace } and a comma , inside a string.");
  EXPECT_EQ(std::get<train::PairRecord>(records[1]).caption, "Third \" escaped quote");
  EXPECT_EQ(std::get<train::PairRecord>(records[2]).image, (kDir / "a4.png").string());
  ASSERT_EQ(issues.size(), 2u);
  EXPECT_EQ(issues[0].line, 3);
  EXPECT_NE(issues[0].message.find("invalid JSON"), std::string::npos);
  EXPECT_EQ(issues[1].line, 6);
  EXPECT_NE(issues[1].message.find("got number"), std::string::npos);

  // A file cut off inside the array keeps what came before and reports the rest.
  TempDir dir("cut");
  const fs::path cut = dir.write("cut.json", "[\n{\"image\": \"a.png\", \"caption\": \"x\"},\n{\"image\": \"b.p");
  issues.clear();
  EXPECT_EQ(read_all(cut, RecordFormat::Pair, &issues).size(), 1u);
  ASSERT_EQ(issues.size(), 1u);
  EXPECT_EQ(issues[0].where(), cut.string() + ":3");
  EXPECT_NE(issues[0].message.find("missing ']'"), std::string::npos);
}

TEST(Jsonl, EmptyDatasetsYieldNothing) {
  TempDir dir("empty");
  const fs::path blank = dir.write("blank.jsonl", "\n  \n\r\n");
  const fs::path bom = dir.write("bom.jsonl", "\xEF\xBB\xBF{\"image\": \"a.png\", \"text\": \"t\"}\n");
  for (const fs::path& p : {kDir / "empty.jsonl", kDir / "empty_array.json", blank}) {
    SCOPED_TRACE(p.string());
    std::vector<DataIssue> issues;
    RecordReader reader(p, RecordFormat::Conversation, {[&](const DataIssue& i) { issues.push_back(i); }, false});
    EXPECT_FALSE(reader.next().has_value());
    EXPECT_FALSE(reader.next().has_value());  // stays at the end
    EXPECT_EQ(reader.records(), 0);
    EXPECT_EQ(reader.skipped(), 0);
    EXPECT_TRUE(issues.empty());
  }
  EXPECT_EQ(read_all(bom, RecordFormat::Pair).size(), 1u);
  EXPECT_NE(error_of([&] { RecordReader(dir.path / "missing.jsonl", RecordFormat::Pair); }).find("missing.jsonl"),
            std::string::npos);
}

TEST(Jsonl, MissingFieldsAreClearErrors) {
  const fs::path base = "/data";
  const auto interleaved = [&](const char* text) {
    return error_of([&] { train::parse_interleaved_record(json::parse(text), base); });
  };
  EXPECT_NE(interleaved(R"({"images": []})").find("missing field \"text_list\""), std::string::npos);
  EXPECT_NE(interleaved(R"({"text_list": ["a"]})").find("missing field \"images\" (or MMC4's \"image_info\")"),
            std::string::npos);
  EXPECT_NE(interleaved(R"({"text_list": ["a"], "images": [{"matched_text_index": 0}]})")
                .find("images[0]: missing field \"path\""),
            std::string::npos);
  EXPECT_NE(interleaved(R"({"text_list": ["a"], "image_info": [{"image_name": "x.png"}]})")
                .find("image_info[0]: missing field \"matched_text_index\""),
            std::string::npos);
  EXPECT_NE(interleaved(R"({"text_list": ["a"], "images": [{"path": "x.png", "matched_text_index": 1}]})")
                .find("matched_text_index 1 is outside text_list (1 sentences)"),
            std::string::npos);
  EXPECT_NE(interleaved(R"({"text_list": ["a", 3], "images": []})").find("\"text_list[1]\" must be a string, got number"),
            std::string::npos);
  EXPECT_NE(interleaved(R"({"text_list": "a", "images": []})").find("\"text_list\" must be an array, got string"),
            std::string::npos);

  const auto pair = [&](const char* text) {
    return error_of([&] { train::parse_pair_record(json::parse(text), base); });
  };
  EXPECT_NE(pair(R"({"caption": "c"})").find("missing field \"image\""), std::string::npos);
  EXPECT_NE(pair(R"({"image": "a.png"})").find("missing field \"caption\" (or \"text\")"), std::string::npos);
  EXPECT_NE(pair(R"({"image": "", "caption": "c"})").find("empty path"), std::string::npos);
  EXPECT_NE(pair(R"({"image": "a.png", "caption": null})").find("\"caption\" must be a string, got null"),
            std::string::npos);
  EXPECT_NE(pair(R"({"image": "a.png", "caption": "c", "condition_labels": 3})").find("must be an array"),
            std::string::npos);
  EXPECT_NE(pair(R"({"image": "a.png", "caption": "c", "condition_labels": [[]]})").find("has 0 labels"),
            std::string::npos);
  EXPECT_NE(pair(R"({"image": "a.png", "caption": "c", "condition_labels": [[1, -2]]})").find("label ids in [0, "),
            std::string::npos);
  EXPECT_NE(pair(R"({"image": "a.png", "caption": "c", "condition_labels": [[1.5]]})").find("label ids in [0, "),
            std::string::npos);
  {
    std::string many = R"({"image": "a.png", "caption": "c", "condition_labels": [)";
    for (int i = 0; i < 300; ++i) many += std::string(i ? "," : "") + "[1]";
    EXPECT_NE(pair((many + "]}").c_str()).find("has 300 tokens (at most 256)"), std::string::npos);
  }
  const train::PairRecord labelled =
      train::parse_pair_record(json::parse(R"({"image": "a.png", "caption": "c", "condition_labels": [[0, 3], [7]]})"),
                               base);
  EXPECT_EQ(labelled.condition_labels, (std::vector<std::vector<int32_t>>{{0, 3}, {7}}));

  const auto conv = [&](const char* text) {
    return error_of([&] { train::parse_conversation_record(json::parse(text), base); });
  };
  EXPECT_NE(conv(R"({"image": "a.png"})").find("missing field \"conversations\""), std::string::npos);
  EXPECT_NE(conv(R"({"conversations": []})").find("\"conversations\" is empty"), std::string::npos);
  EXPECT_NE(conv(R"({"conversations": [{"from": "human"}]})").find("conversations[0]: missing field \"value\""),
            std::string::npos);
  EXPECT_NE(conv(R"({"conversations": [{"from": "bot", "value": "v"}]})").find("unknown role \"bot\""),
            std::string::npos);

  // Through a reader: an error naming file and line, or a reported skip.
  TempDir dir("fields");
  const fs::path file = dir.write("pairs.jsonl", "{\"image\": \"a.png\", \"caption\": \"ok\"}\n{\"image\": \"b.png\"}\n"
                                                 "{\"image\": \"c.png\", \"text\": \"ok\"}\n");
  RecordReader strict(file, RecordFormat::Pair);
  ASSERT_TRUE(strict.next().has_value());
  EXPECT_EQ(error_of([&] { strict.next(); }), file.string() + ":2: missing field \"caption\" (or \"text\")");
  std::vector<DataIssue> issues;
  const std::vector<Record> kept = [&] {
    RecordReader lenient(file, RecordFormat::Pair, {[&](const DataIssue& i) { issues.push_back(i); }, true});
    std::vector<Record> out;
    while (auto r = lenient.next()) out.push_back(*r);
    EXPECT_EQ(lenient.skipped(), 1);
    return out;
  }();
  EXPECT_EQ(kept.size(), 2u);
  ASSERT_EQ(issues.size(), 1u);
  EXPECT_EQ(issues[0].line, 2);
}

TEST(Jsonl, ImagePathsAreRelativeToTheDataFile) {
  EXPECT_EQ(train::resolve_image_path("a/b.png", "/data/set"), "/data/set/a/b.png");
  EXPECT_EQ(train::resolve_image_path("/abs/b.png", "/data/set"), "/abs/b.png");
  EXPECT_EQ(train::resolve_image_path("b.png", ""), "b.png");
  const std::vector<Record> pairs = read_all(kDir / "pairs.jsonl", RecordFormat::Pair);
  EXPECT_EQ(std::get<train::PairRecord>(pairs[0]).image, (kDir / "images/circle.png").string());
  EXPECT_EQ(std::get<train::PairRecord>(pairs[2]).image, "/data/abs/star.png");
  const std::vector<Record> docs = read_all(kDir / "interleaved.jsonl", RecordFormat::Interleaved);
  const auto& mmc4 = std::get<train::InterleavedRecord>(docs[1]);
  ASSERT_EQ(mmc4.images.size(), 3u);
  EXPECT_EQ(mmc4.images[1].path, (kDir / "sub/d.jpg").string());
  EXPECT_EQ(mmc4.images[0].matched_sim, 0.31);
  EXPECT_FALSE(mmc4.images[2].matched_sim.has_value());
}

TEST(Jsonl, StreamsManyLines) {
  TempDir dir("many");
  const fs::path file = dir.path / "many.jsonl";
  {
    std::ofstream f(file);
    for (int i = 0; i < 20000; ++i) {
      f << "{\"image\": \"" << i << ".png\", \"caption\": \"caption number " << i << "\"}\n";
      if (i % 5000 == 4999) f << "not json\n";
    }
  }
  std::vector<DataIssue> issues;
  RecordReader reader(file, RecordFormat::Pair, {[&](const DataIssue& i) { issues.push_back(i); }, false});
  int64_t n = 0;
  std::string last;
  while (auto r = reader.next()) {
    ++n;
    last = std::get<train::PairRecord>(*r).caption;
  }
  EXPECT_EQ(n, 20000);
  EXPECT_EQ(last, "caption number 19999");
  EXPECT_EQ(reader.skipped(), 4);
  ASSERT_EQ(issues.size(), 4u);
  EXPECT_EQ(issues[0].line, 5001);
  EXPECT_EQ(issues[3].line, 20004);
}

// A record longer than the limit is reported naming the limit, counted and skipped, in both file forms; one of
// exactly the limit is read. The records around it come through.
TEST(Jsonl, RecordsOverTheByteLimitAreSkippedAndCounted) {
  TempDir dir("limit");
  // {"image": "a.png", "caption": "<n x's>"} is 33 bytes plus n.
  auto record = [](const std::string& image, size_t bytes) {
    std::string r = "{\"image\": \"";
    r.append(image).append("\", \"caption\": \"").append(bytes - 33, 'x').append("\"}");
    return r;
  };
  ASSERT_EQ(record("a.png", 100).size(), 100u);
  std::string jsonl, json_array = "[";
  jsonl.append(record("a.png", 100)).append("\n").append(record("b.png", 101)).append("\r\n");
  jsonl.append(record("c.png", 5000)).append("\n").append(record("d.png", 60)).append("\n");
  json_array.append(record("a.png", 100)).append(",\n").append(record("b.png", 101)).append(",\n");
  json_array.append(record("c.png", 5000)).append(",\n").append(record("d.png", 60)).append("]\n");
  const fs::path lines = dir.write("limit.jsonl", jsonl), array = dir.write("limit.json", json_array);
  for (const fs::path& p : {lines, array}) {
    SCOPED_TRACE(p.string());
    std::vector<DataIssue> issues;
    train::RecordReaderOptions opt;
    opt.on_issue = [&](const DataIssue& i) { issues.push_back(i); };
    opt.max_record_bytes = 100;
    RecordReader reader(p, RecordFormat::Pair, opt);
    std::vector<std::string> images;
    while (auto r = reader.next()) images.push_back(fs::path(std::get<train::PairRecord>(*r).image).filename());
    EXPECT_EQ(images, (std::vector<std::string>{"a.png", "d.png"}));
    EXPECT_EQ(reader.records(), 2);
    EXPECT_EQ(reader.skipped(), 2);
    ASSERT_EQ(issues.size(), 2u);
    EXPECT_EQ(issues[0].line, 2);
    EXPECT_EQ(issues[1].line, 3);
    for (const DataIssue& i : issues)
      EXPECT_EQ(i.message, "record is longer than the limit of 100 bytes (--max-record-bytes)") << i.message;
  }
  // The default is 16 MiB.
  EXPECT_EQ(train::RecordReaderOptions{}.max_record_bytes, int64_t(16) << 20);
}

// Data files are opened without blocking: a FIFO (or a directory) is refused by name at once.
TEST(Jsonl, FifosAndDirectoriesAreRefusedNotWaitedOn) {
  TempDir dir("fifo");
  const fs::path fifo = dir.path / "data.jsonl";
  ASSERT_EQ(mkfifo(fifo.c_str(), 0644), 0);
  // Held open for writing here, so that a regression (a blocking open) fails this test instead of hanging it.
  const int writer = open(fifo.c_str(), O_RDWR | O_NONBLOCK);
  ASSERT_GE(writer, 0);
  EXPECT_EQ(error_of([&] { RecordReader(fifo, RecordFormat::Pair); }),
            "data file: '" + fifo.string() + "' is a FIFO, not a regular file");
  close(writer);
  EXPECT_EQ(error_of([&] { RecordReader(dir.path, RecordFormat::Pair); }),
            "data file: '" + dir.path.string() + "' is a directory, not a regular file");
}

}  // namespace
}  // namespace dl
