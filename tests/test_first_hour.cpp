// What a new user meets first (issue 36): prompts checked against the language a model declares, one meaning per
// option and exit code across the commands, outputs whose directory is missing refused before any work, progress in
// logs, captions through `ask --caption`, and a chat whose answers draw.
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "io/image_file.h"
#include "io/model_dir.h"
#include "models/dreamllm.h"
#include "pipelines/chat.h"
#include "text/tokenizer.h"
#include "test_util.h"
#include "world/prompt_check.h"
#include "world/scene.h"
#include "world/scorer.h"
#include "world/text.h"

namespace dl {
namespace {

namespace fs = std::filesystem;
using test::cli;
using test::CliResult;
using world::PromptUse;

const std::string kWorldModel = std::string(DL_FIXTURE_DIR) + "/../../models/shapes-world";
const std::string kTiny = std::string(DL_FIXTURE_DIR) + "/tiny_full";

struct Dir {
  fs::path dir = fs::temp_directory_path() / ("dl_first_hour_" + std::to_string(getpid()));
  Dir() { fs::create_directories(dir); }
  ~Dir() {
    std::error_code ec;
    fs::permissions(dir / "locked", fs::perms::owner_all, ec);
    fs::remove_all(dir, ec);
  }
  std::string operator/(const std::string& name) const { return (dir / name).string(); }
};

world::PromptCheck shapes(PromptUse use, const std::string& text) {
  return world::check_prompt(world::kShapesWorldLanguage, use, text);
}

TEST(PromptLanguage, TheCommittedModelDeclaresTheShapesWorldAndOthersNothing) {
  EXPECT_EQ(world::declared_prompt_language(kWorldModel), "shapes-world");
  EXPECT_EQ(world::declared_prompt_language(kTiny), "");
  EXPECT_EQ(world::declared_prompt_language("/no/such/model"), "");
  EXPECT_NE(test::error_of([] { world::check_prompt("klingon", PromptUse::Create, "a cat"); }).find("'klingon'"),
            std::string::npos);
}

// A model made by `world init` declares the world's language, and training copies the config on, so the recipe's
// models are checked as the committed one is; so is a converted one.
TEST(PromptLanguage, ModelsMadeHereDeclareTheLanguage) {
  Dir d;
  ASSERT_EQ(cli("world gen -o " + (d / "data") + " --train 20 --test 2").code, 0);
  const CliResult r = cli("world init -d " + (d / "data") + " -o " + (d / "model"));
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(world::declared_prompt_language(d / "model"), "shapes-world");
  // A converted model carries the config in its companion file, and is checked as well.
  ASSERT_EQ(cli("convert -m " + kWorldModel + " -o " + (d / "sw.gguf") + " --type q8_0").code, 0);
  EXPECT_EQ(world::declared_prompt_language(d / "sw.gguf"), "shapes-world");
  const CliResult refused = cli("create -m " + (d / "sw.gguf") + " -p 'a purple elephant' -o " + (d / "e.png"));
  EXPECT_EQ(refused.code, 1);
  EXPECT_NE(refused.err.find("'elephant'"), std::string::npos) << refused.err;
}

TEST(PromptLanguage, ARefusalNamesTheUnknownWordOrTheMissingAttribute) {
  world::PromptCheck c = shapes(PromptUse::Create, "a large purple elephant at the top left");
  EXPECT_FALSE(c.ok);
  EXPECT_NE(c.problem.find("'elephant' is not a word"), std::string::npos) << c.problem;
  EXPECT_NE(c.example.find("a large red circle at the top left"), std::string::npos);
  c = shapes(PromptUse::Create, "a red circle");
  EXPECT_FALSE(c.ok);
  EXPECT_NE(c.problem.find("has no size"), std::string::npos) << c.problem;
  c = shapes(PromptUse::Create, "a large red circle");
  EXPECT_NE(c.problem.find("has no position"), std::string::npos) << c.problem;
  c = shapes(PromptUse::Question, "What color is the triangle?");
  EXPECT_NE(c.problem.find("'color' is not a word the model was trained on (it knows 'colour')"), std::string::npos)
      << c.problem;
  c = shapes(PromptUse::Question, "the triangle is yellow");
  EXPECT_NE(c.problem.find("not one of the question forms"), std::string::npos) << c.problem;
  c = shapes(PromptUse::Write, "Write a short illustrated story about shapes.");
  EXPECT_NE(c.problem.find("'write'"), std::string::npos) << c.problem;
  // A document to continue may place a shape relative to another; its words must still be the world's.
  EXPECT_TRUE(shapes(PromptUse::Document, "First there is a large red circle at the top left. Then a small blue "
                                          "square appears to its right.").ok);
  EXPECT_NE(shapes(PromptUse::Document, "Once upon a time").problem.find("'once'"), std::string::npos);
  c = shapes(PromptUse::Chat, "Draw a red circle.");
  EXPECT_NE(c.problem.find("has no size"), std::string::npos) << c.problem;
  c = shapes(PromptUse::Create, "a large red circle at the top left, a small blue square at the center, a large "
                                "green cross at the top right and a small red diamond at the bottom left");
  EXPECT_NE(c.problem.find("4 shapes"), std::string::npos) << c.problem;
}

// Everything the generator writes for the tasks is in the language: the check never refuses the training data.
TEST(PromptLanguage, EveryGeneratedPromptAndQuestionPasses) {
  world::WorldOptions wo;
  wo.image_size = 36;
  for (uint64_t seed = 0; seed < 200; ++seed) {
    Rng rng(seed);
    const world::Scene scene = world::random_scene(rng, wo);
    const std::string caption = world::caption(scene, rng), instruction = world::make_instruction(scene, rng);
    const std::string draw = world::draw_prompt(scene, rng);
    EXPECT_TRUE(shapes(PromptUse::Create, caption).ok) << caption << ": " << shapes(PromptUse::Create, caption).problem;
    EXPECT_TRUE(shapes(PromptUse::Write, instruction).ok) << instruction << ": "
                                                          << shapes(PromptUse::Write, instruction).problem;
    EXPECT_TRUE(shapes(PromptUse::Chat, draw).ok) << draw << ": " << shapes(PromptUse::Chat, draw).problem;
    std::string document;
    for (const std::string& sentence : world::make_document(scene, rng).text_list) document += sentence + " ";
    EXPECT_TRUE(shapes(PromptUse::Document, document).ok) << document << ": "
                                                          << shapes(PromptUse::Document, document).problem;
    for (const world::QA& qa : world::make_questions(scene, 8, rng)) {
      EXPECT_TRUE(shapes(PromptUse::Question, qa.question).ok)
          << qa.question << ": " << shapes(PromptUse::Question, qa.question).problem;
      EXPECT_TRUE(shapes(PromptUse::Chat, qa.question).ok) << qa.question;
    }
  }
}

TEST(PromptLanguage, CommandsRefuseOutsideTheLanguageUnlessForcedAndOtherModelsAreUnaffected) {
  Dir d;
  CliResult r = cli("create -m " + kWorldModel + " -p 'a purple elephant' -o " + (d / "e.png"));
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("'elephant' is not a word the model was trained on"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("--force"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(d / "e.png"));
  r = cli("create -m " + kWorldModel + " -p 'a red circle' -o " + (d / "f.png") + " --force --steps 1 -t 1");
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.err.find("warning: the prompt \"a red circle\" is outside"), std::string::npos) << r.err;
  EXPECT_TRUE(fs::exists(d / "f.png"));
  r = cli("write -m " + kWorldModel + " -p 'Write a story.' -o " + (d / "w.html"));
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("'write' is not a word"), std::string::npos) << r.err;
  r = cli("ask -m " + kWorldModel + " -p 'What is the meaning of life?'");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("'meaning' is not a word"), std::string::npos) << r.err;
  // chat reports the message and goes on.
  r = cli("chat -m " + kWorldModel + " -q -n 2 --max-images 0", "Tell me a joke\nHow many shapes are there?\n");
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.err.find("'tell' is not a word"), std::string::npos) << r.err;
  EXPECT_EQ(std::count(r.out.begin(), r.out.end(), '\n'), 1) << r.out;  // only the question was answered
  // The test model declares no language: any prompt runs.
  EXPECT_EQ(cli("create -m " + kTiny + " -p 'a purple elephant' --steps 1 -t 1 -o " + (d / "t.png")).code, 0);
}

TEST(FirstHour, BadUsageExitsTwoInEveryCommand) {
  for (const char* cmd : {"ask", "chat", "create", "write", "train", "convert", "inspect", "bench llm", "run llm",
                          "demo", "world gen", "world score", "world render", "world init", "world eval-vae",
                          "world eval-create", "world eval-vqa", "world eval-write", "world eval-caption"}) {
    const CliResult r = cli(std::string(cmd) + " --no-such-option");
    EXPECT_EQ(r.code, 2) << cmd << ": " << r.err;
    EXPECT_NE(r.err.find("--help"), std::string::npos) << cmd << ": " << r.err;  // where the options are
  }
  EXPECT_EQ(cli("ask -m " + kTiny).code, 2);                                  // no question
  EXPECT_EQ(cli("ask -m " + kTiny + " --caption -p 'What is it?'").code, 2);  // a caption takes no question
  EXPECT_EQ(cli("world render -o x.png").code, 2);                            // no description
  EXPECT_EQ(cli("run txt2img --model m --in i --out o --sampler fancy").code, 2);
  const CliResult v = cli("--version");
  EXPECT_EQ(v.code, 0);
  EXPECT_EQ(v.out.rfind("dreamllm.cpp, commit ", 0), 0u) << v.out;
}

TEST(FirstHour, OneMeaningPerOptionAndDefaultsInTheHelp) {
  // -b/--batch-count is the picture count; -n is max tokens wherever text is written.
  const std::string create = cli("create --help").out;
  EXPECT_NE(create.find("-b,--batch-count"), std::string::npos) << create;
  EXPECT_EQ(create.find("-n,"), std::string::npos) << create;
  EXPECT_NE(create.find("=dreamllm.png"), std::string::npos) << create;  // defaults are shown
  // The documented fast default (docs/benchmarks.md, "Fast sampling on the shapes world"): 25 Euler steps.
  EXPECT_NE(create.find("{ddpm,ddim,pndm,dpmpp2m,euler,euler_a}=euler"), std::string::npos) << create;
  EXPECT_NE(create.find("[1 - 1000]=25"), std::string::npos) << create;
  for (const char* cmd : {"ask", "chat", "write"}) {
    const std::string help = cli(std::string(cmd) + " --help").out;
    EXPECT_NE(help.find("-n,--max-tokens"), std::string::npos) << cmd;
    EXPECT_NE(help.find("-p,--prompt"), std::string::npos) << cmd;
  }
  EXPECT_NE(cli("chat --help").out.find("--sampler"), std::string::npos);
  EXPECT_NE(cli("world score --help").out.find("-p,--prompt"), std::string::npos);
  // The data commands draw at the committed model's picture size.
  EXPECT_NE(cli("world gen --help").out.find("=36"), std::string::npos);
  EXPECT_NE(cli("world render --help").out.find("=36"), std::string::npos);
  Dir d;
  ASSERT_EQ(cli("world render -p 'a large red circle at the top left' -o " + (d / "r.png")).code, 0);
  EXPECT_EQ(io::read_image(d / "r.png").width, 36);
  // Earlier spellings still work, unlisted.
  EXPECT_EQ(cli("world render --text 'a large red circle at the top left' --size 32 -o " + (d / "s.png")).code, 0);
  EXPECT_EQ(io::read_image(d / "s.png").width, 32);
  EXPECT_EQ(cli("create -m " + kTiny + " -p x --steps 1 -t 1 --count 2 -o " + (d / "c.png")).code, 0);
  EXPECT_TRUE(fs::exists(d / "c_2.png"));
}

TEST(FirstHour, AnOutputWhoseDirectoryIsMissingFailsBeforeAnyWork) {
  Dir d;
  const std::string missing = d / "no/such/dir";
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"create -m " + kTiny + " -p x --steps 2 -o " + missing + "/a.png", missing + "/a.png"},
      {"write -m " + kTiny + " -p x --steps 2 -n 4 -o " + missing + "/d.html", missing + "/d.html"},
      {"world render -p 'a large red circle at the top left' -o " + missing + "/r.png", missing + "/r.png"},
      {"run llm --model " + kTiny + " --in " + std::string(DL_FIXTURE_DIR) +
           "/tiny_dreamllm/reference.safetensors --out " + missing + "/o.safetensors",
       missing + "/o.safetensors"},
      {"chat -m " + kTiny + " -q -n 2 --output-dir " + missing, missing}};
  for (const auto& [args, path] : cases) {
    const CliResult r = cli(args, "hello\n");
    EXPECT_EQ(r.code, 1) << args << "\n" << r.err;
    EXPECT_NE(r.err.find("'" + path), std::string::npos) << args << "\n" << r.err;
    EXPECT_NE(r.err.find("does not exist"), std::string::npos) << args << "\n" << r.err;
    // No progress: nothing was drawn or computed first.
    EXPECT_EQ(r.err.find("create 1/1"), std::string::npos) << args << "\n" << r.err;
    EXPECT_EQ(r.err.find("drawing"), std::string::npos) << args << "\n" << r.err;
  }
  // A directory that cannot be written to (not checkable as root, who may write anywhere).
  if (geteuid() != 0) {
    fs::create_directories(d / "locked");
    fs::permissions(d / "locked", fs::perms::owner_read | fs::perms::owner_exec);
    const CliResult r = cli("create -m " + kTiny + " -p x --steps 2 -o " + (d / "locked") + "/a.png");
    EXPECT_EQ(r.code, 1);
    EXPECT_NE(r.err.find("is not writable"), std::string::npos) << r.err;
  }
}

TEST(FirstHour, ProgressLinesReachALog) {
  Dir d;
  const CliResult r = cli("create -m " + kTiny + " -p x --steps 20 -t 1 -o " + (d / "p.png"));
  ASSERT_EQ(r.code, 0) << r.err;
  size_t lines = 0;
  for (size_t at = r.err.find("create 1/1: "); at != std::string::npos; at = r.err.find("create 1/1: ", at + 1))
    ++lines;
  EXPECT_GE(lines, 10u) << r.err;  // a line per tenth of the steps, and the last
  EXPECT_NE(r.err.find("create 1/1: 20/20 in"), std::string::npos) << r.err;
}

TEST(FirstHour, WorldScoreFailsWhenTheDescriptionFails) {
  Dir d;
  ASSERT_EQ(cli("world render -p 'a large red circle at the top left' -o " + (d / "r.png")).code, 0);
  EXPECT_EQ(cli("world score -i " + (d / "r.png") + " -p 'a large red circle at the top left'").code, 0);
  const CliResult r = cli("world score -i " + (d / "r.png") + " -p 'a large blue circle at the top left'");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.out.find("FAIL expected blue, found red"), std::string::npos) << r.out;
}

// The committed model's caption of a rendered scene, through the pairs' layout, describes the scene.
TEST(FirstHour, AskCaptionGivesTheModelsCaption) {
  Dir d;
  const std::string scene = "a large yellow triangle at the center and a small green cross at the top right";
  ASSERT_EQ(cli("world render -p '" + scene + "' -o " + (d / "s.png")).code, 0);
  const CliResult r = cli("ask -m " + kWorldModel + " -i " + (d / "s.png") + " --caption -t 1");
  ASSERT_EQ(r.code, 0) << r.err;
  const world::ScoreResult score = world::score(io::read_image(d / "s.png"), r.out);
  EXPECT_TRUE(score.pass) << r.out << score.report();
}

// A chat whose answer draws: the picture is written to --output-dir, named in the answer, scored against the
// request, and the conversation goes on with it read back.
TEST(FirstHour, AChatWithADreamTurnWritesAPicture) {
  Dir d;
  const std::string request = "Draw a large red circle at the top left.";
  const CliResult r = cli("chat -m " + kWorldModel + " --template train -n 40 -t 1 --steps 25 --sampler dpmpp2m "
                          "--cfg-scale 3 --output-dir " + d.dir.string(),
                          request + "\nWhat colour is the circle?\n");
  ASSERT_EQ(r.code, 0) << r.err;
  const std::string png = d / "chat_1.png";
  EXPECT_NE(r.out.find("[picture: " + png + "]"), std::string::npos) << r.out;
  ASSERT_TRUE(fs::exists(png)) << r.out;
  const io::Image picture = io::read_image(png);
  EXPECT_EQ(picture.width, 36);
  EXPECT_TRUE(world::score(picture, request).pass) << world::score(picture, request).report();
  EXPECT_EQ(std::count(r.out.begin(), r.out.end(), '\n'), 2) << r.out;  // two answers
  // /reset says so, even when nothing else is said (-q, or input from a pipe).
  const CliResult reset = cli("chat -m " + kWorldModel + " -q -n 2 --max-images 0", "/reset\n");
  EXPECT_NE(reset.err.find("(new conversation"), std::string::npos) << reset.err;
}

// The library's chat (what `chat` and the server run): a picture drawn in an answer is read back as the training
// conversations lay out "<dream>": a dream span, then the picture's image span; the conversation re-tokenizes to what
// the model consumed, so the next turn goes on from the cache; and the next answer can be about the picture.
TEST(ChatSession, ADrawnPictureIsReadBackAsADreamSpanThenItsImageSpan) {
  const io::ModelDir dir = io::ModelDir::open(kWorldModel);
  const models::DreamLLM llm = models::DreamLLM::load(dir);
  const pipelines::DiffusionHead head(dir);
  const text::Tokenizer tok = text::Tokenizer::load(kWorldModel);
  pipelines::ChatOptions o;
  o.layout = text::VicunaVariant::Train;
  o.answer.text.max_new_tokens = 40;
  o.answer.text.eos_token_id = tok.eos_id();
  o.answer.drawing.steps = 25;
  o.answer.drawing.scheduler = "dpmpp2m";
  o.answer.drawing.guidance_scale = 3.f;
  o.answer.max_images = 1;
  pipelines::ChatSession chat(llm, &head, tok, io::clip_preprocess_config(dir), o);
  const std::string request = "Draw a large red circle at the top left.";
  const pipelines::ChatReply first = chat.turn(request);
  ASSERT_EQ(first.pictures.size(), 1u) << first.text;
  EXPECT_TRUE(world::score(first.pictures[0], request).pass);
  EXPECT_EQ(chat.pictures_drawn(), 1u);

  const std::vector<int32_t>& ids = chat.consumed();
  const auto at = std::find(ids.begin(), ids.end(), tok.token_id(text::kDreamStartToken));
  ASSERT_NE(at, ids.end());
  const size_t d = size_t(at - ids.begin()), Q = size_t(llm.dream_queries()), P = size_t(llm.image_tokens());
  ASSERT_GE(ids.size(), d + Q + P + 4);
  const int32_t patch = tok.token_id(text::kImagePatchToken);
  for (size_t k = 1; k <= Q; ++k) EXPECT_EQ(ids[d + k], patch);
  EXPECT_EQ(ids[d + Q + 1], tok.token_id(text::kDreamEndToken));
  EXPECT_EQ(ids[d + Q + 2], tok.token_id(text::kImageStartToken));
  for (size_t k = 0; k < P; ++k) EXPECT_EQ(ids[d + Q + 3 + k], patch);
  EXPECT_EQ(ids[d + Q + 3 + P], tok.token_id(text::kImageEndToken));

  const std::vector<int32_t> again = tok.encode(chat.conversation());
  ASSERT_GE(again.size(), ids.size());
  EXPECT_TRUE(std::equal(ids.begin(), ids.end(), again.begin())) << chat.conversation();

  const pipelines::ChatReply second = chat.turn("What colour is the circle?");
  EXPECT_EQ(second.text, "red");
  EXPECT_TRUE(second.pictures.empty());
}

}  // namespace
}  // namespace dl
