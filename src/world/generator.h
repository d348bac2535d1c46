// The shapes-world data generator: pictures plus every training file format `dreamllm train` reads, and the
// ground truth the scorer is checked against.
//
// Layout of OUT (every image path inside a file is relative to that file's directory):
//   world.json                 the options, seed and counts that produced the directory
//   train/ and test/           the two splits, each with
//     images/NNNNNN.png        scene NNNNNN (all of its shapes)
//     images/NNNNNN_sK.png     the same scene with only its first K shapes (documents and multi-turn drawing)
//     scenes.jsonl             ground truth, one line per image: {"id", "image", "step" (shapes shown),
//                              "steps" (shapes in the scene), "image_size", "background", "caption" (canonical),
//                              "shapes": [{"kind", "colour", "size", "cell", "row", "col", "bbox": [x0, y0, x1, y1)}]}
//     pairs.jsonl              {"image", "caption", "condition_labels"}               (pairs: I-a, I-b, UNet)
//     vqa.json                 [{"id", "image", "conversations", "types"}] LLaVA JSON, "<image>\n" opens the
//                              first question; answers are canonical words
//     interleaved.jsonl        MMC4 {"text_list", "images": [{"path", "matched_text_index"}]}: image k follows
//                              sentence k and shows the shapes introduced in sentences 0..k
//     instruct.jsonl           the same documents with an "instruction" (instruction-interleaved)
//     draw.json                [{"id", "image", "conversations"}]: the user asks for a picture, the assistant
//                              answers "Here it is. <dream>" (one "image" path), sometimes followed by a question
//                              about it; or the scene is built over several turns ("Now add ..."), with one image
//                              per <dream> (an "image" list of the cumulative pictures)
// The held-out split is a partition of the scene space (is_test_scene), so no test scene appears in any train set.
// Scene i of a split is drawn from its own generator seeded by (seed, split, i), so the first N scenes do not
// depend on how many are asked for, and the same options and seed give byte-identical files.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "world/scene.h"

namespace dl::world {

// A pair's "condition_labels": one token per shape, its labels {cell (0-8), 9 + kind, 14 + colour, 20 + size}.
// The label-conditioned UNet stage (`dreamllm train --stage UNet --condition-labels 22`) reads them, as SD's UNet
// read a text encoder's states: the world has no pretrained text encoder.
inline constexpr int kConditionLabels = kGrid * kGrid + kNumKinds + kNumColours + 2;  // cells, kinds, colours, sizes
std::vector<int32_t> condition_labels(const Shape& shape);

struct GenerateOptions {
  WorldOptions world;
  int64_t train = 1000, test = 100;  // scenes per split
  uint64_t seed = 0;
  int questions = 3;  // VQA questions per image (1..8)
  // Called after each scene with (scenes done, scenes in all); may be empty.
  std::function<void(int64_t, int64_t)> progress;
  void validate() const;
};

struct GenerateSummary {
  int64_t scenes = 0, images = 0, questions = 0;
};

// Writes OUT as described above (creating directories, replacing the files it writes). Throws dl::Error.
GenerateSummary generate(const GenerateOptions& options, const std::string& out_dir);

// The scene of split `test` (false: train) with index `index`: what generate() draws.
Scene generated_scene(const GenerateOptions& options, bool test, int64_t index);

// One line of scenes.jsonl.
struct SceneRecord {
  std::string id, image;  // image path as written (relative to the file's directory)
  int step = 0, steps = 0;
  Scene scene;  // the shapes shown in this image
  std::string caption;
};
std::string scene_record_json(const SceneRecord& record);
// Parses one line; throws dl::Error naming the bad field.
SceneRecord parse_scene_record(const std::string& json_line);
// Reads a whole scenes.jsonl; image paths are returned joined to the file's directory.
std::vector<SceneRecord> read_scene_records(const std::string& path);

}  // namespace dl::world
