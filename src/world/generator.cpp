#include "world/generator.h"

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>

#include "core/error.h"
#include "core/file.h"
#include "io/atomic_file.h"
#include "io/image_file.h"
#include "world/text.h"

namespace dl::world {

namespace {

namespace fs = std::filesystem;
using ojson = nlohmann::ordered_json;

uint64_t mix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}
uint64_t derive(uint64_t a, uint64_t b) { return mix64(a ^ mix64(b)); }

// Independent streams of one scene, so that a change in one file's text leaves the others as they were.
enum Stream : uint64_t { kCaption = 1, kVqa, kDocument, kInstruct, kDraw };

uint64_t scene_seed(uint64_t seed, bool test, int64_t index) {
  return derive(derive(seed, test ? 2 : 1), uint64_t(index));
}

std::string scene_id(int64_t index) {
  std::string s = std::to_string(index);
  if (s.size() < 6) s.insert(0, 6 - s.size(), '0');
  return s;
}

// A text file written whole or not at all (io::AtomicFile); abandoned, it leaves nothing behind. Not synced: a data
// set can always be generated again.
class OutFile {
 public:
  explicit OutFile(const fs::path& path) : file_(path.string(), false) {}
  void line(const std::string& s) { file_.stream() << s << '\n'; }
  void raw(const std::string& s) { file_.stream() << s; }
  void finish() { file_.commit(); }

 private:
  io::AtomicFile file_;
};

// A JSON array written one element per line.
class JsonArrayFile {
 public:
  explicit JsonArrayFile(fs::path path) : file_(std::move(path)) { file_.raw("["); }
  void add(const ojson& element) {
    file_.raw(first_ ? "\n" : ",\n");
    file_.raw(element.dump());
    first_ = false;
  }
  void finish() {
    file_.raw(first_ ? "]\n" : "\n]\n");
    file_.finish();
  }

 private:
  OutFile file_;
  bool first_ = true;
};

ojson turn(const char* from, const std::string& value) {
  ojson t;
  t["from"] = from;
  t["value"] = value;
  return t;
}

const char* split_name(bool test) { return test ? "test" : "train"; }

// A PNG written without io::write_png's sync to disk, which makes thousands of small pictures slow; a data set can
// always be generated again.
void write_png_file(const fs::path& path, const io::Image& image) {
  const std::string bytes = io::encode_png(image);
  io::write_file_atomically(path.string(), [&](std::ostream& out) { out << bytes; }, false);
}

}  // namespace

void GenerateOptions::validate() const {
  world.validate();
  DL_CHECK(train >= 0 && test >= 0 && train + test >= 1, "world: ask for at least one scene (train ", train, ", test ",
           test, ")");
  DL_CHECK(train <= 10'000'000 && test <= 10'000'000, "world: at most 10000000 scenes per split");
  DL_CHECK(questions >= 1 && questions <= 8, "world: questions per image ", questions, " is outside 1..8");
}

Scene generated_scene(const GenerateOptions& options, bool test, int64_t index) {
  Rng rng(scene_seed(options.seed, test, index));
  for (int attempt = 0; attempt < 100000; ++attempt) {
    Scene scene = random_scene(rng, options.world);
    if (is_test_scene(scene) == test) return scene;
  }
  fail("world: cannot draw a ", split_name(test), " scene with these options (the scene space is too small)");
}

std::string scene_record_json(const SceneRecord& r) {
  ojson j;
  j["id"] = r.id;
  j["image"] = r.image;
  j["step"] = r.step;
  j["steps"] = r.steps;
  j["image_size"] = r.scene.image_size;
  j["background"] = {r.scene.background[0], r.scene.background[1], r.scene.background[2]};
  j["caption"] = r.caption;
  ojson shapes = ojson::array();
  for (const Shape& s : r.scene.shapes) {
    const Box b = shape_box(s, r.scene.image_size);
    ojson o;
    o["kind"] = kind_name(s.kind);
    o["colour"] = colour_name(s.colour);
    o["size"] = size_name(s.size);
    o["cell"] = cell_name(s.cell);
    o["row"] = s.cell.row;
    o["col"] = s.cell.col;
    o["bbox"] = {b.x0, b.y0, b.x1, b.y1};
    shapes.push_back(std::move(o));
  }
  j["shapes"] = std::move(shapes);
  return j.dump();
}

SceneRecord parse_scene_record(const std::string& json_line) {
  ojson j;
  try {
    j = ojson::parse(json_line);
  } catch (const std::exception& e) {
    fail("scene record is not valid JSON (", e.what(), ")");
  }
  DL_CHECK(j.is_object(), "scene record must be a JSON object");
  const auto field = [&](const ojson& obj, const char* name) -> const ojson& {
    const auto it = obj.find(name);
    DL_CHECK(it != obj.end(), "scene record has no \"", name, "\"");
    return *it;
  };
  const auto str = [&](const ojson& obj, const char* name) {
    const ojson& v = field(obj, name);
    DL_CHECK(v.is_string(), "scene record field \"", name, "\" must be a string");
    return v.get<std::string>();
  };
  const auto integer = [&](const ojson& obj, const char* name) {
    const ojson& v = field(obj, name);
    DL_CHECK(v.is_number_integer(), "scene record field \"", name, "\" must be an integer");
    return v.get<int64_t>();
  };
  SceneRecord r;
  r.id = j.contains("id") ? str(j, "id") : std::string();
  r.image = str(j, "image");
  r.scene.image_size = integer(j, "image_size");
  if (j.contains("background")) {
    const ojson& bg = j["background"];
    DL_CHECK(bg.is_array() && bg.size() == 3, "scene record field \"background\" must be [r, g, b]");
    for (size_t c = 0; c < 3; ++c) {
      DL_CHECK(bg[c].is_number_integer() && bg[c].get<int64_t>() >= 0 && bg[c].get<int64_t>() <= 255,
               "scene record field \"background\" must hold 0..255 integers");
      r.scene.background[c] = uint8_t(bg[c].get<int64_t>());
    }
  }
  const ojson& shapes = field(j, "shapes");
  DL_CHECK(shapes.is_array(), "scene record field \"shapes\" must be an array");
  for (const ojson& o : shapes) {
    DL_CHECK(o.is_object(), "scene record: each shape must be an object");
    r.scene.shapes.push_back(Shape{kind_from_name(str(o, "kind")), colour_from_name(str(o, "colour")),
                                   size_from_name(str(o, "size")), cell_from_name(str(o, "cell"))});
  }
  r.step = j.contains("step") ? int(integer(j, "step")) : int(r.scene.shapes.size());
  r.steps = j.contains("steps") ? int(integer(j, "steps")) : r.step;
  r.caption = j.contains("caption") ? str(j, "caption") : canonical_caption(r.scene);
  validate_scene(r.scene);
  return r;
}

std::vector<SceneRecord> read_scene_records(const std::string& path) {
  // Read whole (the records are all kept anyway) through dl::read_file, which refuses a FIFO instead of waiting on it.
  std::istringstream in(read_file(path, size_t(1) << 30));
  const fs::path dir = fs::path(path).parent_path();
  std::vector<SceneRecord> out;
  std::string line;
  int64_t number = 0;
  while (std::getline(in, line)) {
    ++number;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    try {
      SceneRecord r = parse_scene_record(line);
      if (!fs::path(r.image).is_absolute()) r.image = (dir / r.image).string();
      out.push_back(std::move(r));
    } catch (const Error& e) {
      fail(path, ":", number, ": ", e.what());
    }
  }
  return out;
}

std::vector<int32_t> condition_labels(const Shape& shape) {
  constexpr int kFirstKind = kGrid * kGrid;
  constexpr int kFirstColour = kFirstKind + kNumKinds;
  constexpr int kFirstSize = kFirstColour + kNumColours;
  return {int32_t(shape.cell.index()), int32_t(kFirstKind + int(shape.kind)),
          int32_t(kFirstColour + int(shape.colour)), int32_t(kFirstSize + int(shape.size))};
}

GenerateSummary generate(const GenerateOptions& options, const std::string& out_dir) {
  options.validate();
  DL_CHECK(!out_dir.empty(), "world: no output directory");
  const fs::path root(out_dir);
  std::error_code ec;
  fs::create_directories(root, ec);
  DL_CHECK(!ec && fs::is_directory(root), "cannot create directory '", out_dir, "'", ec ? ": " + ec.message() : "");

  GenerateSummary summary;
  const int64_t total = options.train + options.test;
  int64_t done = 0;
  const WorldOptions& w = options.world;
  for (const bool test : {false, true}) {
    const int64_t count = test ? options.test : options.train;
    const fs::path dir = root / split_name(test);
    fs::create_directories(dir / "images", ec);
    DL_CHECK(!ec, "cannot create directory '", (dir / "images").string(), "': ", ec.message());
    OutFile scenes(dir / "scenes.jsonl"), pairs(dir / "pairs.jsonl"), interleaved(dir / "interleaved.jsonl"),
        instruct(dir / "instruct.jsonl");
    JsonArrayFile vqa(dir / "vqa.json"), draw(dir / "draw.json");
    for (int64_t i = 0; i < count; ++i) {
      const Scene scene = generated_scene(options, test, i);
      const uint64_t seed = scene_seed(options.seed, test, i);
      const std::string id = scene_id(i);
      const size_t n = scene.shapes.size();
      // Images: step k (1-based) shows the first k shapes; the last step is the scene itself.
      std::vector<std::string> step_paths(n + 1);
      for (size_t k = 1; k <= n; ++k) {
        step_paths[k] = k == n ? "images/" + id + ".png" : "images/" + id + "_s" + std::to_string(k) + ".png";
        const Scene shown = scene_prefix(scene, k);
        write_png_file(dir / step_paths[k], render(shown, w.antialias));
        ++summary.images;
      }
      scenes.line(scene_record_json({id, step_paths[n], int(n), int(n), scene, canonical_caption(scene)}));
      for (size_t k = 1; k < n; ++k) {
        const Scene shown = scene_prefix(scene, k);
        scenes.line(scene_record_json({id, step_paths[k], int(k), int(n), shown, canonical_caption(shown)}));
      }
      const std::string& main_image = step_paths[n];

      {  // pairs
        Rng rng(derive(seed, kCaption));
        ojson j;
        j["image"] = main_image;
        j["caption"] = caption(scene, rng);
        ojson labels = ojson::array();
        for (const Shape& shape : scene.shapes) labels.push_back(condition_labels(shape));
        j["condition_labels"] = std::move(labels);
        pairs.line(j.dump());
      }
      {  // VQA
        Rng rng(derive(seed, kVqa));
        const std::vector<QA> qas = make_questions(scene, options.questions, rng);
        ojson j, conv = ojson::array(), types = ojson::array();
        j["id"] = id;
        j["image"] = main_image;
        for (size_t q = 0; q < qas.size(); ++q) {
          conv.push_back(turn("human", q == 0 ? "<image>\n" + qas[q].question : qas[q].question));
          conv.push_back(turn("gpt", qas[q].answer));
          types.push_back(question_type_name(qas[q].type));
        }
        j["conversations"] = std::move(conv);
        j["types"] = std::move(types);
        vqa.add(j);
        summary.questions += int64_t(qas.size());
      }
      const auto document_json = [&](const Document& doc, const std::optional<std::string>& instruction) {
        ojson j;
        if (instruction) j["instruction"] = *instruction;
        j["text_list"] = doc.text_list;
        ojson images = ojson::array();
        for (const Document::Image& im : doc.images) {
          ojson o;
          o["path"] = step_paths[im.shapes];
          o["matched_text_index"] = im.text_index;
          images.push_back(std::move(o));
        }
        j["images"] = std::move(images);
        return j.dump();
      };
      {  // interleaved documents
        Rng rng(derive(seed, kDocument));
        interleaved.line(document_json(make_document(scene, rng), std::nullopt));
      }
      {  // instruction-interleaved documents
        Rng rng(derive(seed, kInstruct));
        const std::string instruction = make_instruction(scene, rng);
        instruct.line(document_json(make_document(scene, rng), instruction));
      }
      {  // drawing conversations
        Rng rng(derive(seed, kDraw));
        ojson j, conv = ojson::array();
        j["id"] = id;
        if (n >= 2 && rng.below(2)) {
          // Built turn by turn: "<dream>" k shows the first k shapes.
          ojson images = ojson::array();
          for (size_t k = 0; k < n; ++k) {
            const Shape& s = scene.shapes[k];
            const std::string what = "a " + object_phrase(s) + ".";
            conv.push_back(turn("human", (k == 0 ? "Draw " : "Now add ") + what));
            conv.push_back(turn("gpt", std::string(kDrawReply)));
            images.push_back(step_paths[k + 1]);
          }
          j["image"] = std::move(images);
        } else {
          j["image"] = main_image;
          conv.push_back(turn("human", draw_prompt(scene, rng)));
          conv.push_back(turn("gpt", std::string(kDrawReply)));
          if (rng.below(2)) {
            const std::vector<QA> qas = make_questions(scene, 1, rng);
            conv.push_back(turn("human", qas[0].question));
            conv.push_back(turn("gpt", qas[0].answer));
          }
        }
        j["conversations"] = std::move(conv);
        draw.add(j);
      }
      ++summary.scenes;
      ++done;
      if (options.progress) options.progress(done, total);
    }
    scenes.finish();
    pairs.finish();
    interleaved.finish();
    instruct.finish();
    vqa.finish();
    draw.finish();
  }

  ojson manifest;
  manifest["format"] = "dreamllm-shapes-world";
  manifest["version"] = 1;
  manifest["seed"] = options.seed;
  manifest["train"] = options.train;
  manifest["test"] = options.test;
  manifest["image_size"] = w.image_size;
  manifest["min_shapes"] = w.min_shapes;
  manifest["max_shapes"] = w.max_shapes;
  ojson kinds = ojson::array(), colours = ojson::array();
  for (Kind k : w.kinds) kinds.push_back(kind_name(k));
  for (Colour c : w.colours) colours.push_back(colour_name(c));
  manifest["kinds"] = std::move(kinds);
  manifest["colours"] = std::move(colours);
  manifest["background"] = {w.background[0], w.background[1], w.background[2]};
  manifest["antialias"] = w.antialias;
  manifest["questions"] = options.questions;
  manifest["holdout"] = "scenes whose canonical key hashes to 0 mod 8 form the test part of the scene space";
  manifest["images"] = summary.images;
  OutFile file(root / "world.json");
  file.raw(manifest.dump(2) + "\n");
  file.finish();
  return summary;
}

}  // namespace dl::world
