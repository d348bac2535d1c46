// Tokenizer and chat templates: ids and decoded text against the transformers-4.35 reference of
// tools/fixtures/make_tokenizer_fixtures.py, templates against hand-written strings, and broken model directories.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.h"
#include "text/chat_template.h"
#include "text/tokenizer.h"

namespace dl {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using text::Tokenizer;

const fs::path kFixtureDir = fs::path(DL_FIXTURE_DIR) / "tokenizer";

const json& cases() {
  static const json doc = [] {
    std::ifstream f(kFixtureDir / "cases.json");
    std::stringstream ss;
    ss << f.rdbuf();
    return json::parse(ss.str());
  }();
  return doc;
}

// A scratch directory removed at scope exit.
struct TempDir {
  fs::path path;
  explicit TempDir(const std::string& name)
      : path(fs::temp_directory_path() / ("dl_test_tok_" + name + "_" + std::to_string(getpid()))) {
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  void write(const std::string& file, const std::string& content) const {
    std::ofstream f(path / file, std::ios::binary);
    f << content;
  }
  void copy_from_fixture(const std::string& file) const { fs::copy_file(kFixtureDir / file, path / file); }
};

// The fixture model and added tokens with a variant's tokenizer_config.json / special_tokens_map.json.
std::unique_ptr<TempDir> variant_dir(const std::string& name) {
  const json& v = cases()["variants"][name];
  auto dir = std::make_unique<TempDir>(name);
  dir->copy_from_fixture("tokenizer.model");
  dir->copy_from_fixture("added_tokens.json");
  if (!v["tokenizer_config"].is_null()) dir->write("tokenizer_config.json", v["tokenizer_config"].dump());
  if (!v["special_tokens_map"].is_null()) dir->write("special_tokens_map.json", v["special_tokens_map"].dump());
  return dir;
}

std::vector<int32_t> ids_of(const json& j) { return j.get<std::vector<int32_t>>(); }

void check_variant(const std::string& name, const Tokenizer& tok) {
  const json& v = cases()["variants"][name];
  ASSERT_GE(v["encode"].size(), 40u);
  for (const auto& c : v["encode"]) {
    const std::string text = c["text"].get<std::string>();
    SCOPED_TRACE(name + " encode " + json(text).dump());
    const std::vector<int32_t> want = ids_of(c["ids"]);
    EXPECT_EQ(tok.encode(text), want);
    ASSERT_FALSE(want.empty());
    EXPECT_EQ(want.front(), tok.bos_id());
    EXPECT_EQ(tok.encode(text, false), std::vector<int32_t>(want.begin() + 1, want.end()));
    std::vector<int32_t> from_tokens;
    for (const auto& t : tok.tokenize(text)) from_tokens.push_back(tok.token_id(t));
    EXPECT_EQ(from_tokens, std::vector<int32_t>(want.begin() + 1, want.end()));
    EXPECT_EQ(tok.decode(want, true), c["decode_skip"].get<std::string>());
    EXPECT_EQ(tok.decode(want, false), c["decode_keep"].get<std::string>());
  }
  for (const auto& c : v["decode"]) {
    SCOPED_TRACE(name + " decode " + c["ids"].dump());
    const std::vector<int32_t> ids = ids_of(c["ids"]);
    EXPECT_EQ(tok.decode(ids, true), c["decode_skip"].get<std::string>());
    EXPECT_EQ(tok.decode(ids, false), c["decode_keep"].get<std::string>());
  }
}

TEST(Tokenizer, LegacyMatchesTransformersReference) {
  // The checked-in directory itself is the "legacy" variant (what DreamLLM's release uses).
  const Tokenizer tok = Tokenizer::load(kFixtureDir.string());
  EXPECT_TRUE(tok.legacy());
  check_variant("legacy", tok);
}

TEST(Tokenizer, NonLegacyMatchesTransformersReference) {
  auto dir = variant_dir("non_legacy");
  const Tokenizer tok = Tokenizer::load(dir->path.string());
  EXPECT_FALSE(tok.legacy());
  check_variant("non_legacy", tok);
}

TEST(Tokenizer, StrippingAddedTokensMatchTransformersReference) {
  auto dir = variant_dir("stripping");
  check_variant("stripping", Tokenizer::load(dir->path.string()));
}

TEST(Tokenizer, PreV434ConfigMatchesTransformersReference) {
  auto dir = variant_dir("old_format");
  check_variant("old_format", Tokenizer::load(dir->path.string()));
}

TEST(Tokenizer, BareDirectoryMatchesTransformersReference) {
  // Only tokenizer.model + added_tokens.json: transformers then treats the added tokens as non-special.
  auto dir = variant_dir("bare");
  const Tokenizer tok = Tokenizer::load(dir->path.string());
  check_variant("bare", tok);
  EXPECT_EQ(tok.pad_id(), -1);
  EXPECT_FALSE(tok.is_special(tok.token_id("<im_start>")));
}

TEST(Tokenizer, DecodeRoundTripsPlainText) {
  const Tokenizer tok = Tokenizer::load(kFixtureDir.string());
  for (const std::string s : {"The red circle is next to the blue square.", "multiple   spaces  inside",
                              "trailing space ", "line one\nline two\n\nline four", "tabs\tand\ttabs",
                              "digits 12345 and 3.14", "emoji \xF0\x9F\x98\x80 and \xF0\x9F\x8E\xA8!",
                              "\xE4\xB8\xAD\xE6\x96\x87 CJK", "caf\xC3\xA9", ""}) {
    SCOPED_TRACE(s);
    EXPECT_EQ(tok.decode(tok.encode(s), true), s);
    EXPECT_EQ(tok.decode(tok.encode(s, false), true), s);
  }
  // Dropped specials do not split the text into separately decoded runs.
  EXPECT_EQ(tok.decode(tok.encode("one two<im_start><im_patch><im_end>three"), true), "one two three");
}

TEST(Tokenizer, AccessorsAndReleaseIdLayout) {
  const Tokenizer tok = Tokenizer::load(kFixtureDir.string());
  const int32_t n = cases()["sp_vocab_size"].get<int32_t>();
  EXPECT_EQ(tok.sp_vocab_size(), n);
  EXPECT_EQ(tok.vocab_size(), n + 8);
  EXPECT_EQ(tok.bos_id(), 1);
  EXPECT_EQ(tok.eos_id(), 2);
  EXPECT_EQ(tok.unk_id(), 0);
  EXPECT_EQ(tok.pad_id(), n);
  // Same order as the release: [PAD]=32000, <im_start>=32001, <dream_end>, <dream_start>, <im_patch>, <im_end>,
  // <image>, <dream>=32007.
  const std::vector<std::string> order = {"[PAD]",    "<im_start>", "<dream_end>", "<dream_start>",
                                          "<im_patch>", "<im_end>", "<image>",     "<dream>"};
  ASSERT_EQ(tok.added_tokens().size(), order.size());
  for (size_t i = 0; i < order.size(); ++i) {
    SCOPED_TRACE(order[i]);
    EXPECT_EQ(tok.token_id(order[i]), n + int32_t(i));
    EXPECT_EQ(tok.id_to_piece(n + int32_t(i)), order[i]);
    EXPECT_EQ(tok.added_tokens()[i].content, order[i]);
    EXPECT_EQ(tok.added_tokens()[i].id, n + int32_t(i));
    EXPECT_TRUE(tok.added_tokens()[i].special);
    EXPECT_TRUE(tok.is_special(n + int32_t(i)));
  }
  EXPECT_EQ(tok.token_id(text::kDreamStartToken), n + 3);
  EXPECT_EQ(tok.token_id("</s>"), 2);
  EXPECT_EQ(tok.id_to_piece(1), "<s>");
  EXPECT_EQ(tok.id_to_piece(tok.token_id("\xE2\x96\x81")), "\xE2\x96\x81");
  EXPECT_TRUE(tok.is_special(1) && tok.is_special(2) && tok.is_special(0));
  EXPECT_FALSE(tok.is_special(tok.token_id("\xE2\x96\x81")));
  EXPECT_TRUE(tok.has_token("<im_patch>"));
  EXPECT_FALSE(tok.has_token("<dream_patch>"));  // a Python constant only, never added to the vocabulary
  try {
    tok.token_id("<dream_patch>");
    FAIL() << "expected dl::Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("<dream_patch>"), std::string::npos) << e.what();
  }
  EXPECT_THROW(tok.id_to_piece(n + 8), Error);
  EXPECT_THROW(tok.id_to_piece(-1), Error);
  const std::vector<int32_t> bad = {5, n + 8};
  EXPECT_THROW(tok.decode(bad), Error);
  // The CFG unconditional prompt: tokenizer("") is just BOS.
  EXPECT_EQ(tok.encode(""), std::vector<int32_t>{1});
  // A moved-from tokenizer's successor keeps working.
  Tokenizer moved = Tokenizer::load(kFixtureDir.string());
  Tokenizer other = std::move(moved);
  EXPECT_EQ(other.encode("hello"), tok.encode("hello"));
}

void expect_load_error(const fs::path& dir, const std::vector<std::string>& fragments) {
  try {
    Tokenizer::load(dir.string());
    ADD_FAILURE() << "expected dl::Error loading " << dir;
  } catch (const Error& e) {
    for (const auto& f : fragments) EXPECT_NE(std::string(e.what()).find(f), std::string::npos) << e.what();
  }
}

TEST(Tokenizer, RejectsBrokenModelDirectories) {
  expect_load_error("/nonexistent/dl_tokenizer_dir", {"/nonexistent/dl_tokenizer_dir", "not a directory"});
  {
    TempDir d("nomodel");
    d.copy_from_fixture("added_tokens.json");
    expect_load_error(d.path, {(d.path / "tokenizer.model").string(), "missing"});
  }
  {
    TempDir d("garbage");
    const char garbage[] = "this is not a sentencepiece model \x01\x02\xff\xfe";
    d.write("tokenizer.model", std::string(garbage, sizeof(garbage) - 1));
    expect_load_error(d.path, {(d.path / "tokenizer.model").string()});
  }
  {
    TempDir d("empty");
    d.write("tokenizer.model", "");
    expect_load_error(d.path, {(d.path / "tokenizer.model").string(), "empty"});
  }
  const int32_t n = cases()["sp_vocab_size"].get<int32_t>();
  const auto with_added = [&](const std::string& name, const std::string& added_json) {
    auto d = std::make_unique<TempDir>(name);
    d->copy_from_fixture("tokenizer.model");
    d->write("added_tokens.json", added_json);
    return d;
  };
  {
    auto d = with_added("badjson", "{\"<im_start>\": 420,");
    expect_load_error(d->path, {(d->path / "added_tokens.json").string(), "not valid JSON"});
  }
  {
    auto d = with_added("notobject", "[1, 2]");
    expect_load_error(d->path, {"added_tokens.json", "not a JSON object"});
  }
  {
    auto d = with_added("notint", json{{"<im_start>", "x"}}.dump());
    expect_load_error(d->path, {"added_tokens.json", "<im_start>", "not an integer"});
  }
  {
    auto d = with_added("collide", json{{"<im_start>", 5}}.dump());
    expect_load_error(d->path, {"added_tokens.json", "<im_start>", "collides"});
  }
  {
    auto d = with_added("gap", json{{"[PAD]", n}, {"<im_start>", n + 2}}.dump());
    expect_load_error(d->path, {"added_tokens.json", "<im_start>", "gaps"});
  }
  {
    auto d = with_added("dup", json{{"[PAD]", n}, {"<im_start>", n}}.dump());
    expect_load_error(d->path, {"added_tokens.json", "twice"});
  }
  {
    // added_tokens.json and tokenizer_config.json's added_tokens_decoder disagree.
    auto d = with_added("disagree", json{{"<im_start>", n}, {"[PAD]", n + 1}}.dump());
    json cfg = cases()["variants"]["legacy"]["tokenizer_config"];
    d->write("tokenizer_config.json", cfg.dump());
    expect_load_error(d->path, {"added_tokens.json", "<im_start>", "added_tokens_decoder"});
  }
  {
    auto d = with_added("badconfig", json{{"[PAD]", n}}.dump());
    d->write("tokenizer_config.json", "{\"legacy\": \"yes\"}");
    expect_load_error(d->path, {"tokenizer_config.json", "legacy"});
  }
  {
    // A special token that exists nowhere.
    auto d = with_added("nopad", json{{"[PAD]", n}}.dump());
    d->write("special_tokens_map.json", json{{"pad_token", "<pad>"}}.dump());
    expect_load_error(d->path, {"<pad>", "neither"});
  }
}

// ---- chat templates ----

const std::string kSystem =
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, detailed, "
    "and polite answers to the user's questions.";

TEST(ChatTemplate, VicunaTrainingTwoTurns) {
  text::Conversation conv(text::VicunaVariant::Train);
  conv.append_user("What is in the picture?");
  conv.append_assistant("A red circle.");
  conv.append_user("And the square?");
  conv.append_assistant(std::nullopt);
  EXPECT_EQ(conv.prompt(), kSystem + " USER: What is in the picture? ASSISTANT: A red circle.</s>USER: And the "
                                     "square? ASSISTANT:");
  EXPECT_EQ(conv.generation_prompt(), conv.prompt());
  // omni/conversation tests `content is not None`: an empty reply is content there.
  text::Conversation empty(text::VicunaVariant::Train);
  empty.append_user("Hi");
  empty.append_assistant("");
  EXPECT_EQ(empty.prompt(), kSystem + " USER: Hi ASSISTANT: </s>");
  EXPECT_EQ(empty.generation_prompt(), kSystem + " USER: Hi ASSISTANT: ");
}

TEST(ChatTemplate, VicunaEvalTwoTurns) {
  text::Conversation conv(text::VicunaVariant::Eval);
  conv.append_user("What is in the picture?");
  conv.append_assistant("A red circle.");
  conv.append_user("And the square?");
  conv.append_assistant("");  // falsy: an open turn in omni/utils
  EXPECT_EQ(conv.prompt(), " " + kSystem + " USER: What is in the picture? ASSISTANT: A red circle.</s>USER: And "
                                           "the square? ASSISTANT:");
  text::Conversation finished(text::VicunaVariant::Eval);
  finished.append(text::Conversation::user_role(), "Q");
  finished.append(text::Conversation::assistant_role(), "The answer is:");
  EXPECT_EQ(finished.prompt(), " " + kSystem + " USER: Q ASSISTANT: The answer is:</s>");
  EXPECT_EQ(finished.generation_prompt(), " " + kSystem + " USER: Q ASSISTANT: The answer is:");
  EXPECT_EQ(text::Conversation(text::VicunaVariant::Eval).prompt(), " " + kSystem + " ");
}

TEST(ChatTemplate, ImageAndDreamSpans) {
  EXPECT_EQ(text::image_span_text(2), "<im_start><im_patch><im_patch><im_end>");
  EXPECT_EQ(text::dream_span_text(1), "<dream_start><im_patch><dream_end>");
  EXPECT_EQ(text::dream_span_text(0), "<dream_start><dream_end>");
  EXPECT_THROW(text::image_span_text(-1), Error);
  const Tokenizer tok = Tokenizer::load(kFixtureDir.string());
  const int32_t n = tok.sp_vocab_size();
  const auto img = text::image_span_ids(tok);
  ASSERT_EQ(img.size(), 258u);
  EXPECT_EQ(img.front(), n + 1);
  EXPECT_EQ(img[1], n + 4);
  EXPECT_EQ(img[256], n + 4);
  EXPECT_EQ(img.back(), n + 5);
  const auto dream = text::dream_span_ids(tok);
  ASSERT_EQ(dream.size(), 66u);
  EXPECT_EQ(dream.front(), n + 3);
  EXPECT_EQ(dream.back(), n + 2);
  EXPECT_EQ(tok.encode(text::image_span_text(), false), img);
  EXPECT_EQ(tok.encode(text::dream_span_text(), false), dream);
}

TEST(ChatTemplate, VqaPromptMatchesEvalScript) {
  const std::string p = text::vqa_prompt("Based on the image, please answer the question.", "What colour is it?",
                                         "Please provide an accurate answer within one word.",
                                         "The short answer '(one word)' is:", 2);
  EXPECT_EQ(p, " " + kSystem +
                   " USER: Based on the image, please answer the question.<im_start><im_patch><im_patch><im_end>What "
                   "colour is it?Please provide an accurate answer within one word. ASSISTANT: The short answer "
                   "'(one word)' is:");
  EXPECT_EQ(text::vqa_prompt("", "Q?", "", "", 1), " " + kSystem + " USER: <im_start><im_patch><im_end>Q? ASSISTANT:");
}

}  // namespace
}  // namespace dl
