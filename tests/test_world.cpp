// The shapes world: scenes and renderer, the language (captions, parser, VQA, documents), the generator's files
// (deterministic, readable by the training readers, held-out split disjoint) and the scorer (agreement with the
// ground truth on clean and degraded pictures, wrong descriptions rejected attribute by attribute, bad inputs).
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "core/error.h"
#include "core/random.h"
#include "io/image_file.h"
#include "test_util.h"
#include "text/tokenizer.h"
#include "train/documents.h"
#include "train/jsonl.h"
#include "world/generator.h"
#include "world/scene.h"
#include "world/scorer.h"
#include "world/text.h"

namespace dl {
namespace {

namespace fs = std::filesystem;
using test::error_of;
using world::Colour;
using world::Description;
using world::Kind;
using world::Scene;
using world::Size;

struct Scratch {
  fs::path dir;
  explicit Scratch(const std::string& name)
      : dir(fs::temp_directory_path() / ("dl_test_world_" + name + "_" + std::to_string(getpid()))) {
    fs::remove_all(dir);
    fs::create_directories(dir);
  }
  ~Scratch() {
    std::error_code ec;
    fs::remove_all(dir, ec);
  }
};

std::vector<Scene> random_scenes(int n, int64_t size, uint64_t seed) {
  world::WorldOptions o;
  o.image_size = size;
  Rng rng(seed);
  std::vector<Scene> out;
  for (int i = 0; i < n; ++i) out.push_back(world::random_scene(rng, o));
  return out;
}

std::string join_sentences(const std::vector<std::string>& list, size_t last) {
  std::string s;
  for (size_t i = 0; i <= last; ++i) s += (i ? " " : "") + list[i];
  return s;
}

std::string slurp(const fs::path& p) { return test::slurp(p.string()); }

// ---------------------------------------------------------------------------------------------------------------
// Scenes and rendering
// ---------------------------------------------------------------------------------------------------------------
TEST(WorldScene, NamesRoundTripAndPaletteIsSeparated) {
  for (int k = 0; k < world::kNumKinds; ++k) EXPECT_EQ(world::kind_from_name(world::kind_name(Kind(k))), Kind(k));
  for (int c = 0; c < world::kNumColours; ++c)
    EXPECT_EQ(world::colour_from_name(world::colour_name(Colour(c))), Colour(c));
  std::set<std::string> cells;
  for (int r = 0; r < 3; ++r)
    for (int c = 0; c < 3; ++c) {
      const std::string name = world::cell_name({r, c});
      cells.insert(name);
      EXPECT_EQ(world::cell_from_name(name), (world::Cell{r, c}));
    }
  EXPECT_EQ(cells.size(), 9u);
  EXPECT_EQ(world::cell_name({1, 1}), "center");
  EXPECT_EQ(world::cell_name({0, 0}), "top left");
  for (int a = 0; a < world::kNumColours; ++a) {
    for (int b = 0; b < a; ++b) {
      double d2 = 0;
      for (size_t c = 0; c < 3; ++c) {
        const double d = double(world::palette(Colour(a))[c]) - world::palette(Colour(b))[c];
        d2 += d * d;
      }
      EXPECT_GE(std::sqrt(d2), 90.0) << world::colour_name(Colour(a)) << " vs " << world::colour_name(Colour(b));
    }
  }
}

TEST(WorldScene, RenderIsExactDeterministicAndShapesStayInTheirCells) {
  for (int64_t S : {32, 64}) {
    for (const Scene& scene : random_scenes(60, S, 5)) {
      const io::Image a = world::render(scene), b = world::render(scene);
      ASSERT_EQ(a.width, S);
      ASSERT_EQ(a.height, S);
      EXPECT_EQ(a.rgb, b.rgb);
      // Every coloured pixel lies in exactly one shape's box, the boxes lie in their cells.
      std::vector<world::Box> boxes;
      const double c = world::cell_side(S);
      for (const world::Shape& s : scene.shapes) {
        const world::Box box = world::shape_box(s, S);
        EXPECT_GE(box.x0, int64_t(std::floor(s.cell.col * c)));
        EXPECT_LE(box.x1, int64_t(std::ceil((s.cell.col + 1) * c)));
        EXPECT_GE(box.y0, int64_t(std::floor(s.cell.row * c)));
        EXPECT_LE(box.y1, int64_t(std::ceil((s.cell.row + 1) * c)));
        boxes.push_back(box);
      }
      for (int64_t y = 0; y < S; ++y)
        for (int64_t x = 0; x < S; ++x) {
          const bool bg = a.at(x, y, 0) == 255 && a.at(x, y, 1) == 255 && a.at(x, y, 2) == 255;
          int in = 0;
          for (const world::Box& box : boxes) in += (x >= box.x0 && x < box.x1 && y >= box.y0 && y < box.y1);
          EXPECT_LE(in, 1);
          if (!bg) {
            EXPECT_EQ(in, 1) << "pixel " << x << "," << y;
          }
        }
    }
  }
  // Without anti-aliasing every pixel is the background or a palette colour.
  Scene s;
  s.shapes = {world::Shape{Kind::Circle, Colour::Blue, Size::Large, {1, 1}}};
  const io::Image hard = world::render(s, false);
  for (size_t i = 0; i < hard.rgb.size(); i += 3) {
    const world::Rgb p{hard.rgb[i], hard.rgb[i + 1], hard.rgb[i + 2]};
    EXPECT_TRUE(p == world::kWhite || p == world::palette(Colour::Blue));
  }
}

TEST(WorldScene, OptionsAndScenesAreValidated) {
  world::WorldOptions o;
  o.image_size = 16;
  EXPECT_NE(error_of([&] { o.validate(); }).find("image size 16"), std::string::npos);
  o = {};
  o.min_shapes = 3;
  o.max_shapes = 2;
  EXPECT_NE(error_of([&] { o.validate(); }).find("shape counts"), std::string::npos);
  o = {};
  o.background = world::palette(Colour::Red);
  EXPECT_NE(error_of([&] { o.validate(); }).find("too close to red"), std::string::npos);
  o = {};
  o.kinds = {Kind::Circle, Kind::Circle};
  EXPECT_NE(error_of([&] { o.validate(); }).find("given twice"), std::string::npos);
  Scene s;
  s.shapes = {world::Shape{Kind::Circle, Colour::Red, Size::Small, {0, 0}},
              world::Shape{Kind::Square, Colour::Blue, Size::Small, {0, 0}}};
  EXPECT_NE(error_of([&] { world::render(s); }).find("both at the top left"), std::string::npos);
  EXPECT_NE(error_of([&] { world::kind_from_name("hexagon"); }).find("unknown shape kind 'hexagon'"),
            std::string::npos);
}

// ---------------------------------------------------------------------------------------------------------------
// Language
// ---------------------------------------------------------------------------------------------------------------
TEST(WorldText, ParserReadsTheGrammar) {
  const Description d = world::parse_description(
      "a large red circle at the top left and a small blue square at "
      "the bottom right");
  ASSERT_EQ(d.objects.size(), 2u);
  EXPECT_EQ(d.objects[0], (world::ObjectSpec{Kind::Circle, Colour::Red, Size::Large, world::Cell{0, 0}}));
  EXPECT_EQ(d.objects[1], (world::ObjectSpec{Kind::Square, Colour::Blue, Size::Small, world::Cell{2, 2}}));
  EXPECT_FALSE(d.count);
  EXPECT_EQ(d.expected_count(), 2);

  const Description e = world::parse_description("Draw a small green triangle.");
  ASSERT_EQ(e.objects.size(), 1u);
  EXPECT_EQ(e.objects[0], (world::ObjectSpec{Kind::Triangle, Colour::Green, Size::Small, std::nullopt}));

  const Description f = world::parse_description(
      "There are three shapes: two red circles, and a big one in the "
      "centre. In the upper right there is a tiny diamond!");
  EXPECT_EQ(f.count, 3);
  ASSERT_EQ(f.objects.size(), 4u);
  EXPECT_EQ(f.objects[1].colour, Colour::Red);
  EXPECT_EQ(f.objects[2], (world::ObjectSpec{std::nullopt, std::nullopt, Size::Large, world::Cell{1, 1}}));
  EXPECT_EQ(f.objects[3], (world::ObjectSpec{Kind::Diamond, std::nullopt, Size::Small, world::Cell{0, 2}}));

  const Description g = world::parse_description(
      "A red circle at the top left. Then a blue square appears to its right. Then a green cross appears at the "
      "bottom center, below the red circle.");
  ASSERT_EQ(g.objects.size(), 3u);
  ASSERT_EQ(g.relations.size(), 2u);
  EXPECT_EQ(g.relations[0], (world::RelationSpec{1, 0, world::Relation::RightOf}));
  EXPECT_EQ(g.relations[1], (world::RelationSpec{2, 0, world::Relation::Below}));
  EXPECT_FALSE(g.objects[1].cell);

  const Description h = world::parse_description("a purple triangle to the left of an orange diamond");
  ASSERT_EQ(h.objects.size(), 2u);
  EXPECT_EQ(h.relations, (std::vector<world::RelationSpec>{{0, 1, world::Relation::LeftOf}}));
  EXPECT_EQ(world::parse_description("the shape at the top").objects[0].cell, (world::Cell{0, 1}));
  EXPECT_EQ(world::parse_description("a circle on the left").objects[0].cell, (world::Cell{1, 0}));
  EXPECT_EQ(world::parse_description("Build a picture with two shapes step by step.").expected_count(), 2);
}

TEST(WorldText, ParserRefusesWhatItCannotRead) {
  EXPECT_NE(error_of([] { world::parse_description(""); }).find("empty description"), std::string::npos);
  EXPECT_NE(error_of([] { world::parse_description("  .. "); }).find("empty description"), std::string::npos);
  EXPECT_NE(error_of([] { world::parse_description("a red hexagon"); }).find("unknown word 'hexagon'"),
            std::string::npos);
  EXPECT_NE(error_of([] { world::parse_description("a large red"); }).find("incomplete shape phrase"),
            std::string::npos);
  EXPECT_NE(error_of([] { world::parse_description("red circles"); }).find("needs a number"), std::string::npos);
  EXPECT_NE(error_of([] { world::parse_description("a small large circle"); }).find("conflicting sizes"),
            std::string::npos);
  EXPECT_NE(error_of([] { world::parse_description("a circle at the top at the bottom"); }).find("belongs to no shape"),
            std::string::npos);
  EXPECT_NE(error_of([] { world::parse_description("there is nothing"); }).find("unknown word 'nothing'"),
            std::string::npos);
  EXPECT_NE(error_of([] { world::parse_description("at the top left"); }).find("belongs to no shape"),
            std::string::npos);
  EXPECT_NE(error_of([] { world::parse_description("and the"); }).find("mentions no shape"), std::string::npos);
  EXPECT_NE(error_of([] { world::parse_description("a red circle to the left of"); }).find("names no shape"),
            std::string::npos);
  EXPECT_NE(error_of([] { world::parse_description("to its left"); }).find("follows no shape"), std::string::npos);
  // A description of a scene must be complete to be drawn.
  EXPECT_NE(
      error_of([] { world::scene_from_description(world::parse_description("a red circle"), 32); }).find("has no size"),
      std::string::npos);
}

// Every word of a generated text is in world::vocabulary() ("<image>" and "<dream>" are not words).
void check_words(const std::string& text) {
  static const std::set<std::string> vocabulary(world::vocabulary().begin(), world::vocabulary().end());
  std::string w;
  for (char ch : text + " ") {
    if (std::isalpha(static_cast<unsigned char>(ch))) {
      w += char(std::tolower(static_cast<unsigned char>(ch)));
    } else if (!w.empty()) {
      EXPECT_TRUE(vocabulary.count(w) || w == "image" || w == "dream") << "'" << w << "' in " << text;
      w.clear();
    }
  }
}

TEST(WorldText, GeneratedTextParsesBackToItsScene) {
  Rng rng(17);
  for (const Scene& scene : random_scenes(300, 32, 9)) {
    const Description full = world::describe(scene);
    EXPECT_EQ(world::parse_description(world::canonical_caption(scene)), full);
    EXPECT_EQ(world::scene_from_description(full, 32), scene);
    for (int v = 0; v < 3; ++v) {
      const std::string c = world::caption(scene, rng);
      const Description d = world::parse_description(c);
      EXPECT_EQ(d.objects, full.objects) << c;
      EXPECT_EQ(d.expected_count(), int(scene.shapes.size())) << c;
      check_words(c);
      const std::string p = world::draw_prompt(scene, rng);
      EXPECT_EQ(world::parse_description(p).objects, full.objects) << p;
      check_words(p);
      const std::string ins = world::make_instruction(scene, rng);
      const Description di = world::parse_description(ins);
      EXPECT_EQ(di.expected_count(), int(scene.shapes.size())) << ins;
      if (!di.objects.empty()) {
        EXPECT_EQ(di.objects, full.objects) << ins;
      }
      check_words(ins);
    }
    // Documents: the text up to image k describes image k, which shows the first k + 1 shapes.
    const world::Document doc = world::make_document(scene, rng);
    ASSERT_EQ(doc.images.size(), scene.shapes.size());
    for (size_t k = 0; k < doc.images.size(); ++k) {
      ASSERT_EQ(doc.images[k].shapes, k + 1);
      const std::string prefix = join_sentences(doc.text_list, doc.images[k].text_index);
      check_words(prefix);
      const Description d = world::parse_description(prefix);
      const Scene shown = world::scene_prefix(scene, k + 1);
      ASSERT_EQ(d.objects.size(), k + 1) << prefix;
      for (size_t i = 0; i <= k; ++i) {
        EXPECT_EQ(d.objects[i].kind, shown.shapes[i].kind) << prefix;
        EXPECT_EQ(d.objects[i].colour, shown.shapes[i].colour) << prefix;
        EXPECT_EQ(d.objects[i].size, shown.shapes[i].size) << prefix;
        if (d.objects[i].cell) {
          EXPECT_EQ(*d.objects[i].cell, shown.shapes[i].cell) << prefix;
        }
      }
      for (const world::RelationSpec& r : d.relations)
        EXPECT_TRUE(world::relation_holds(r.relation, shown.shapes[r.subject].cell, shown.shapes[r.object].cell))
            << prefix;
      EXPECT_TRUE(world::score(world::render(shown), d).pass) << prefix;
    }
    const Description whole = world::parse_description(join_sentences(doc.text_list, doc.text_list.size() - 1));
    EXPECT_EQ(whole.expected_count(), int(scene.shapes.size()));
  }
}

TEST(WorldText, VqaAnswersAgreeWithTheScene) {
  const std::set<std::string> yes_no{"yes", "no"};
  std::map<std::string, int> seen;
  Rng rng(3);
  for (const Scene& scene : random_scenes(400, 32, 21)) {
    for (const world::QA& qa : world::make_questions(scene, 8, rng)) {
      ++seen[std::string(world::question_type_name(qa.type))];
      check_words(qa.question + " " + qa.answer);
      EXPECT_EQ(world::answer_question(scene, qa.question), qa.answer) << qa.question;
      EXPECT_EQ(qa.question.back(), '?');
      switch (qa.type) {
        case world::QuestionType::Colour:
          EXPECT_NO_THROW(world::colour_from_name(qa.answer));
          break;
        case world::QuestionType::Shape:
          EXPECT_NO_THROW(world::kind_from_name(qa.answer));
          break;
        case world::QuestionType::Size:
          EXPECT_NO_THROW(world::size_from_name(qa.answer));
          break;
        case world::QuestionType::Position:
          EXPECT_NO_THROW(world::cell_from_name(qa.answer));
          break;
        case world::QuestionType::Count:
          EXPECT_EQ(qa.answer, world::number_word(int(scene.shapes.size())));
          break;
        case world::QuestionType::ColourCount:
          EXPECT_TRUE(qa.answer == "zero" || qa.answer == "one" || qa.answer == "two" || qa.answer == "three");
          break;
        case world::QuestionType::Relation:
        case world::QuestionType::Exists:
          EXPECT_TRUE(yes_no.count(qa.answer)) << qa.answer;
          break;
      }
    }
  }
  EXPECT_EQ(seen.size(), 8u);
  // Hand-made cases.
  Scene s;
  s.shapes = {world::Shape{Kind::Circle, Colour::Red, Size::Large, {0, 0}},
              world::Shape{Kind::Square, Colour::Blue, Size::Small, {2, 2}}};
  EXPECT_EQ(world::answer_question(s, "What colour is the circle?"), "red");
  EXPECT_EQ(world::answer_question(s, "What shape is the red shape?"), "circle");
  EXPECT_EQ(world::answer_question(s, "How many shapes are there?"), "two");
  EXPECT_EQ(world::answer_question(s, "Where is the blue square?"), "bottom right");
  EXPECT_EQ(world::answer_question(s, "Is the red circle left of the blue square?"), "yes");
  EXPECT_EQ(world::answer_question(s, "Is the red circle below the blue square?"), "no");
  EXPECT_EQ(world::answer_question(s, "How many green shapes are there?"), "zero");
  EXPECT_EQ(world::answer_question(s, "Is there an orange circle?"), "no");
  EXPECT_NE(error_of([&] { world::answer_question(s, "What colour is the shape?"); }).find("names 2 shapes"),
            std::string::npos);
}

// ---------------------------------------------------------------------------------------------------------------
// Generator
// ---------------------------------------------------------------------------------------------------------------
std::map<std::string, std::string> tree(const fs::path& root) {
  std::map<std::string, std::string> files;
  for (const auto& e : fs::recursive_directory_iterator(root))
    if (e.is_regular_file()) files[fs::relative(e.path(), root).string()] = slurp(e.path());
  return files;
}

TEST(WorldGenerator, SameSeedSameBytes) {
  Scratch a("det_a"), b("det_b"), c("det_c"), d("det_d");
  world::GenerateOptions o;
  o.train = 12;
  o.test = 4;
  o.seed = 5;
  const world::GenerateSummary sa = world::generate(o, a.dir.string());
  world::generate(o, b.dir.string());
  EXPECT_EQ(sa.scenes, 16);
  const auto ta = tree(a.dir), tb = tree(b.dir);
  EXPECT_EQ(ta, tb);
  for (const char* f : {"world.json", "train/pairs.jsonl", "train/vqa.json", "train/interleaved.jsonl",
                        "train/instruct.jsonl", "train/draw.json", "train/scenes.jsonl", "test/pairs.jsonl",
                        "train/images/000000.png", "test/images/000003.png"})
    EXPECT_TRUE(ta.count(f)) << f;
  for (const auto& entry : ta) EXPECT_EQ(entry.first.find(".tmp"), std::string::npos) << entry.first;
  // Another seed gives other scenes; fewer scenes give a prefix of the same files.
  o.seed = 6;
  world::generate(o, c.dir.string());
  EXPECT_NE(slurp(c.dir / "train/pairs.jsonl"), slurp(a.dir / "train/pairs.jsonl"));
  o.seed = 5;
  o.train = 6;
  world::generate(o, d.dir.string());
  const std::string small = slurp(d.dir / "train/pairs.jsonl"), big = slurp(a.dir / "train/pairs.jsonl");
  EXPECT_EQ(big.substr(0, small.size()), small);
  EXPECT_EQ(slurp(d.dir / "test/vqa.json"), slurp(a.dir / "test/vqa.json"));
}

TEST(WorldGenerator, HeldOutScenesNeverAppearInTraining) {
  world::GenerateOptions o;
  o.world.max_shapes = 1;  // the smallest scene space: 540 scenes, so collisions would show
  std::set<std::string> train, test;
  for (int64_t i = 0; i < 400; ++i) train.insert(world::canonical_key(world::generated_scene(o, false, i)));
  for (int64_t i = 0; i < 100; ++i) {
    const Scene s = world::generated_scene(o, true, i);
    EXPECT_TRUE(world::is_test_scene(s));
    test.insert(world::canonical_key(s));
  }
  for (const std::string& k : test) EXPECT_FALSE(train.count(k)) << k;
  EXPECT_GT(test.size(), 20u);
}

TEST(WorldGenerator, FilesReadWithTheTrainingReaders) {
  Scratch s("readers");
  world::GenerateOptions o;
  o.train = 40;
  o.test = 10;
  o.seed = 2;
  o.world.image_size = 64;
  world::generate(o, s.dir.string());
  const text::Tokenizer tok = text::Tokenizer::load((fs::path(DL_FIXTURE_DIR) / "tokenizer").string());
  train::DocumentOptions dopt;
  dopt.image_tokens = 4;
  dopt.dream_queries = 2;
  const train::DocumentBuilder builder(tok, dopt);
  Rng rng(0);
  for (const char* split : {"train", "test"}) {
    const fs::path dir = s.dir / split;
    const int64_t scenes = std::string(split) == "train" ? 40 : 10;
    const auto read = [&](const char* file, train::RecordFormat format) {
      train::RecordReader reader(dir / file, format);
      std::vector<train::Record> out;
      while (auto r = reader.next()) out.push_back(std::move(*r));
      EXPECT_EQ(reader.skipped(), 0) << file;
      EXPECT_EQ(int64_t(out.size()), scenes) << file;
      return out;
    };
    const auto check_image = [&](const std::string& path) {
      const io::Image img = io::read_image(path);
      EXPECT_EQ(img.width, 64);
      EXPECT_EQ(img.height, 64);
    };
    for (const train::Record& r : read("pairs.jsonl", train::RecordFormat::Pair)) {
      const auto& p = std::get<train::PairRecord>(r);
      check_image(p.image);
      EXPECT_TRUE(world::score(io::read_image(p.image), p.caption).pass) << p.caption;
      EXPECT_EQ(builder.image_to_text(p).images.size(), 1u);
      // The condition labels spell the picture: {cell, 9 + kind, 14 + colour, 20 + size} per shape.
      world::Scene labelled;
      labelled.image_size = 64;
      for (const auto& token : p.condition_labels) {
        ASSERT_EQ(token.size(), 4u);
        ASSERT_TRUE(token[0] >= 0 && token[0] < 9 && token[1] >= 9 && token[1] < 14 && token[2] >= 14 &&
                    token[2] < 20 && token[3] >= 20 && token[3] < world::kConditionLabels);
        labelled.shapes.push_back({world::Kind(token[1] - 9), world::Colour(token[2] - 14), world::Size(token[3] - 20),
                                   {token[0] / 3, token[0] % 3}});
      }
      ASSERT_FALSE(labelled.shapes.empty());
      EXPECT_TRUE(world::score(io::read_image(p.image), world::canonical_caption(labelled)).pass) << p.caption;
      EXPECT_EQ(builder.text_to_image(p).dream_images.at(0).condition_labels, p.condition_labels);
    }
    for (const train::Record& r : read("vqa.json", train::RecordFormat::Conversation)) {
      const auto& c = std::get<train::ConversationRecord>(r);
      ASSERT_EQ(c.images.size(), 1u);
      check_image(c.images[0]);
      ASSERT_EQ(c.turns.size(), 6u);
      EXPECT_EQ(c.turns[0].value.rfind("<image>\n", 0), 0u);
      const train::Sample smp = builder.conversation(c);
      EXPECT_EQ(smp.images.size(), 1u);
      EXPECT_TRUE(smp.dream_images.empty());
    }
    for (const char* file : {"interleaved.jsonl", "instruct.jsonl"}) {
      for (const train::Record& r : read(file, train::RecordFormat::Interleaved)) {
        const auto& doc = std::get<train::InterleavedRecord>(r);
        EXPECT_EQ(doc.instruction.has_value(), std::string(file) == "instruct.jsonl");
        for (const auto& im : doc.images) {
          check_image(im.path);
          ASSERT_LT(size_t(im.matched_text_index), doc.text_list.size());
          // The text up to the image describes it.
          EXPECT_TRUE(
              world::score(io::read_image(im.path), join_sentences(doc.text_list, size_t(im.matched_text_index))).pass);
        }
        const train::Sample smp = builder.build(r, rng);
        EXPECT_EQ(smp.images.size(), doc.images.size());
        EXPECT_EQ(smp.dream_images.size(), doc.images.size());
      }
    }
    for (const train::Record& r : read("draw.json", train::RecordFormat::Conversation)) {
      const auto& c = std::get<train::ConversationRecord>(r);
      size_t dreams = 0;
      std::string asked;
      for (size_t t = 0; t < c.turns.size(); ++t) {
        if (c.turns[t].value.find("<dream>") == std::string::npos) continue;
        // Everything the user asked so far describes the picture of this <dream>.
        asked.clear();
        for (size_t u = 0; u < t; u += 2) asked += c.turns[u].value + " ";
        const std::string& path = c.images.size() == 1 ? c.images[0] : c.images.at(dreams);
        EXPECT_TRUE(world::score(io::read_image(path), asked).pass) << asked;
        ++dreams;
      }
      EXPECT_TRUE(c.images.size() == 1 || c.images.size() == dreams);
      const train::Sample smp = builder.conversation(c);
      EXPECT_EQ(smp.dream_images.size(), dreams);
    }
    // Ground truth: every image once, and the scorer reads each back.
    const std::vector<world::SceneRecord> recs = world::read_scene_records((dir / "scenes.jsonl").string());
    std::set<std::string> images;
    for (const auto& e : fs::directory_iterator(dir / "images")) images.insert(e.path().string());
    EXPECT_EQ(recs.size(), images.size());
    for (const world::SceneRecord& rec : recs) {
      EXPECT_TRUE(images.count(rec.image)) << rec.image;
      EXPECT_TRUE(world::same_shapes(world::parse_image(io::read_image(rec.image)).scene(), rec.scene)) << rec.image;
      EXPECT_EQ(rec.caption, world::canonical_caption(rec.scene));
    }
  }
  const nlohmann::json manifest = nlohmann::json::parse(slurp(s.dir / "world.json"));
  EXPECT_EQ(manifest["image_size"], 64);
  EXPECT_EQ(manifest["train"], 40);
}

TEST(WorldGenerator, BadOptionsAndRecordsAreRefused) {
  Scratch s("bad");
  world::GenerateOptions o;
  o.train = 0;
  o.test = 0;
  EXPECT_NE(error_of([&] { world::generate(o, s.dir.string()); }).find("at least one scene"), std::string::npos);
  o.train = 1;
  o.questions = 0;
  EXPECT_NE(error_of([&] { world::generate(o, s.dir.string()); }).find("questions per image"), std::string::npos);
  EXPECT_NE(error_of([] { world::parse_scene_record("{\"image\": \"a.png\"}"); }).find("\"image_size\""),
            std::string::npos);
  EXPECT_NE(error_of([] {
              world::parse_scene_record(
                  R"({"image": "a.png", "image_size": 32, "shapes": [{"kind": "blob", "colour": "red", )"
                  R"("size": "small", "cell": "center"}]})");
            }).find("unknown shape kind 'blob'"),
            std::string::npos);
  EXPECT_NE(error_of([] { world::parse_scene_record("{not json"); }).find("not valid JSON"), std::string::npos);
}

// ---------------------------------------------------------------------------------------------------------------
// Scorer
// ---------------------------------------------------------------------------------------------------------------
io::Image shift(const io::Image& img, int64_t dx, int64_t dy) {
  io::Image out(img.width, img.height);
  std::fill(out.rgb.begin(), out.rgb.end(), uint8_t(255));
  for (int64_t y = 0; y < img.height; ++y)
    for (int64_t x = 0; x < img.width; ++x) {
      const int64_t sx = x - dx, sy = y - dy;
      if (sx < 0 || sy < 0 || sx >= img.width || sy >= img.height) continue;
      for (int64_t c = 0; c < 3; ++c) out.rgb[size_t((y * img.width + x) * 3 + c)] = img.at(sx, sy, c);
    }
  return out;
}

io::Image colour_cast(const io::Image& img, int dr, int dg, int db) {
  io::Image out = img;
  const int d[3] = {dr, dg, db};
  for (size_t i = 0; i < out.rgb.size(); ++i) out.rgb[i] = uint8_t(std::clamp(int(out.rgb[i]) + d[i % 3], 0, 255));
  return out;
}

// Fraction of random scenes whose picture, degraded, parses back exactly.
double agreement(int n, int64_t size, uint64_t seed, const std::function<io::Image(const io::Image&, Rng&)>& degrade) {
  Rng noise(seed + 1000);
  int ok = 0;
  for (const Scene& scene : random_scenes(n, size, seed)) {
    io::Image img = world::render(scene);
    if (degrade) img = degrade(img, noise);
    ok += world::same_shapes(world::parse_image(img).scene(), scene) ? 1 : 0;
  }
  return double(ok) / n;
}

TEST(WorldScorer, RecoversCleanScenesAt32And64) {
  // Measured 100% on 2 x 2000 scenes at each size.
  for (uint64_t seed : {1, 2}) {
    EXPECT_GE(agreement(600, 32, seed, {}), 0.99) << "32 px, seed " << seed;
    EXPECT_GE(agreement(200, 64, seed, {}), 0.99) << "64 px, seed " << seed;
  }
  world::WorldOptions hard;
  hard.antialias = false;
  Rng rng(4);
  int ok = 0;
  for (int i = 0; i < 200; ++i) {
    const Scene s = world::random_scene(rng, hard);
    ok += world::same_shapes(world::parse_image(world::render(s, false)).scene(), s);
  }
  EXPECT_GE(ok, 198) << "without anti-aliasing";
}

TEST(WorldScorer, ToleratesBlurNoiseColourCastAndShifts) {
  const auto blur = [](double sigma) {
    return [sigma](const io::Image& img, Rng&) { return world::gaussian_blur(img, sigma); };
  };
  const auto noise = [](double sigma) {
    return [sigma](const io::Image& img, Rng& rng) { return world::add_noise(img, sigma, rng); };
  };
  EXPECT_GE(agreement(150, 32, 3, blur(0.8)), 0.98);
  EXPECT_GE(agreement(60, 64, 3, blur(1.2)), 0.98);
  EXPECT_GE(agreement(150, 32, 4, noise(20)), 0.98);
  EXPECT_GE(agreement(150, 32, 5,
                      [](const io::Image& img, Rng& rng) {
                        return world::add_noise(world::gaussian_blur(img, 0.7), 8, rng);
                      }),
            0.97);
  EXPECT_GE(agreement(150, 32, 6, [](const io::Image& img, Rng&) { return colour_cast(img, -20, 15, -10); }), 0.98);
  EXPECT_GE(agreement(150, 32, 7, [](const io::Image& img, Rng&) { return shift(img, 1, -1); }), 0.98);
  // A few stray pixels of other colours are smudges, not shapes.
  EXPECT_GE(agreement(150, 32, 8,
                      [](const io::Image& img, Rng& rng) {
                        io::Image out = img;
                        for (int k = 0; k < 6; ++k) {
                          const size_t p = size_t(rng.below(uint64_t(img.width * img.height)));
                          out.rgb[p * 3] = 90;
                          out.rgb[p * 3 + 1] = 60;
                          out.rgb[p * 3 + 2] = 40;
                        }
                        return out;
                      }),
            0.98);
}

TEST(WorldScorer, WrongDescriptionsFailTheirAttribute) {
  Rng rng(12);
  int cases = 0;
  for (const Scene& scene : random_scenes(150, 32, 31)) {
    const io::Image img = world::render(scene);
    const Description truth = world::describe(scene);
    ASSERT_TRUE(world::score(img, truth).pass) << world::canonical_caption(scene);
    const size_t i = size_t(rng.below(scene.shapes.size()));
    const auto expect_only = [&](const Description& d, const std::string& attribute) {
      const world::ScoreResult r = world::score(img, d);
      EXPECT_FALSE(r.pass) << attribute;
      EXPECT_FALSE(r.attribute_pass(attribute)) << attribute << "\n" << r.report();
      for (const world::Check& c : r.checks)
        if (c.attribute != attribute) {
          EXPECT_TRUE(c.pass) << attribute << "\n" << r.report();
        }
      ++cases;
    };
    Description d = truth;
    d.objects[i].colour = Colour((int(scene.shapes[i].colour) + 1 + int(rng.below(5))) % world::kNumColours);
    expect_only(d, "colour");
    d = truth;
    d.objects[i].kind = Kind((int(scene.shapes[i].kind) + 1 + int(rng.below(4))) % world::kNumKinds);
    expect_only(d, "kind");
    d = truth;
    d.objects[i].size = scene.shapes[i].size == Size::Small ? Size::Large : Size::Small;
    expect_only(d, "size");
    d = truth;
    for (int cell = 0; cell < 9; ++cell) {  // an empty cell
      const world::Cell c{cell / 3, cell % 3};
      if (std::none_of(scene.shapes.begin(), scene.shapes.end(), [&](const world::Shape& s) { return s.cell == c; })) {
        d.objects[i].cell = c;
        break;
      }
    }
    expect_only(d, "position");
    d = truth;
    d.count = int(scene.shapes.size()) + 1;
    expect_only(d, "count");
    if (scene.shapes.size() >= 2) {
      d = truth;
      const world::Cell a = scene.shapes[0].cell, b = scene.shapes[1].cell;
      for (world::Relation rel :
           {world::Relation::LeftOf, world::Relation::RightOf, world::Relation::Above, world::Relation::Below}) {
        if (!world::relation_holds(rel, a, b)) {
          d.relations = {{0, 1, rel}};
          break;
        }
      }
      expect_only(d, "relation");
      // A missing shape.
      Scene fewer = scene;
      fewer.shapes.pop_back();
      const world::ScoreResult r = world::score(world::render(fewer), truth);
      EXPECT_FALSE(r.attribute_pass("count"));
      EXPECT_FALSE(r.attribute_pass("present"));
    }
  }
  EXPECT_GT(cases, 700);
  // Through text, as a user would write it.
  Scene s;
  s.shapes = {world::Shape{Kind::Circle, Colour::Red, Size::Large, {0, 0}},
              world::Shape{Kind::Square, Colour::Blue, Size::Small, {2, 2}}};
  const io::Image img = world::render(s);
  EXPECT_TRUE(world::score(img, "a large red circle at the top left and a small blue square at the bottom right").pass);
  EXPECT_TRUE(world::score(img, "a red circle to the left of a blue square").pass);
  EXPECT_FALSE(world::score(img, "a red circle to the right of a blue square").attribute_pass("relation"));
  EXPECT_FALSE(world::score(img, "a green circle and a blue square").attribute_pass("colour"));
  EXPECT_FALSE(world::score(img, "a red circle").attribute_pass("count"));
  EXPECT_TRUE(world::score(img, "two shapes").pass);
}

TEST(WorldScorer, BadInputsAreClearErrors) {
  EXPECT_NE(error_of([] { world::parse_image(io::Image(40, 32)); }).find("square"), std::string::npos);
  EXPECT_NE(error_of([] { world::parse_image(io::Image(16, 16)); }).find("outside the scorer's 24..1024"),
            std::string::npos);
  world::ScorerOptions o;
  o.expected_size = 64;
  EXPECT_NE(error_of([&] { world::parse_image(io::Image(32, 32), o); }).find("64x64 was expected"), std::string::npos);
  io::Image broken(32, 32);
  broken.rgb.resize(10);
  EXPECT_NE(error_of([&] { world::parse_image(broken); }).find("RGB buffer"), std::string::npos);
  const io::Image blank = world::render(random_scenes(1, 32, 1)[0]);
  EXPECT_NE(error_of([&] { world::score(blank, ""); }).find("empty description"), std::string::npos);
  EXPECT_NE(error_of([&] { world::score(blank, "a red blob"); }).find("unknown word 'blob'"), std::string::npos);
  // A blank picture has no shapes: everything described is missing.
  io::Image white(32, 32);
  std::fill(white.rgb.begin(), white.rgb.end(), uint8_t(255));
  const world::ScoreResult r = world::score(white, "a red circle");
  EXPECT_TRUE(r.parse.detections.empty());
  EXPECT_FALSE(r.attribute_pass("present"));
  EXPECT_FALSE(r.pass);
}

TEST(WorldScorer, Deterministic) {
  Rng rng(1);
  const Scene scene = random_scenes(1, 32, 77)[0];
  const io::Image img = world::add_noise(world::gaussian_blur(world::render(scene), 0.6), 10, rng);
  const world::ScoreResult a = world::score(img, world::canonical_caption(scene)),
                           b = world::score(img, world::canonical_caption(scene));
  EXPECT_EQ(a.report(), b.report());
  ASSERT_EQ(a.parse.detections.size(), b.parse.detections.size());
  for (size_t i = 0; i < a.parse.detections.size(); ++i) {
    EXPECT_EQ(a.parse.detections[i].area, b.parse.detections[i].area);
    EXPECT_EQ(a.parse.detections[i].fit_error, b.parse.detections[i].fit_error);
  }
}

#ifdef DL_CLI
TEST(WorldCli, GenerateAndScore) {
  Scratch s("cli");
  const std::string out = (s.dir / "data").string();
  const test::CliResult g = test::cli("world gen -o " + out + " --train 8 --test 2 --seed 3 --size 32");
  ASSERT_EQ(g.code, 0) << g.err;
  EXPECT_NE(g.out.find("wrote 10 scenes"), std::string::npos) << g.out;
  const test::CliResult p = test::cli("world score --pairs " + out + "/train/pairs.jsonl");
  ASSERT_EQ(p.code, 0) << p.err;
  EXPECT_NE(p.out.find("pairs: 8 scored, 8 pass (100.00%)"), std::string::npos) << p.out;
  const test::CliResult sc = test::cli("world score --scenes " + out + "/test/scenes.jsonl");
  ASSERT_EQ(sc.code, 0) << sc.err;
  EXPECT_NE(sc.out.find("(100.00%)"), std::string::npos) << sc.out;
  const std::string png = (s.dir / "r.png").string();
  ASSERT_EQ(test::cli("world render -p 'a large red circle at the top left' -o " + png).code, 0);
  const test::CliResult one = test::cli("world score -i " + png + " -p 'a large red circle at the top left'");
  ASSERT_EQ(one.code, 0) << one.err;
  EXPECT_NE(one.out.find("overall: pass"), std::string::npos) << one.out;
  const test::CliResult wrong = test::cli("world score -i " + png + " -p 'a blue circle at the top left'");
  ASSERT_EQ(wrong.code, 1);  // a description the picture does not show fails, as a check should
  EXPECT_NE(wrong.out.find("colour    object 1  FAIL expected blue, found red"), std::string::npos) << wrong.out;
  // Bad usage and bad inputs.
  EXPECT_EQ(test::cli("world").code, 2);
  EXPECT_EQ(test::cli("world score -p 'a red circle'").code, 2);
  EXPECT_EQ(test::cli("world gen --train 3").code, 2);
  const test::CliResult unknown = test::cli("world score -i " + png + " -p 'a red blob'");
  EXPECT_EQ(unknown.code, 1);
  EXPECT_NE(unknown.err.find("unknown word 'blob'"), std::string::npos) << unknown.err;
  EXPECT_EQ(test::cli("world render -p 'a red circle' -o " + png).code, 1);
}
#endif

}  // namespace
}  // namespace dl
