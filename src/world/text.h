// The shapes world's language: captions, VQA, interleaved documents, instructions and drawing requests generated
// from scenes, and the parser that reads a caption or prompt back into the attributes it mentions (the scorer's
// description side).
//
// Grammar of the generated text (all words lower case in captions; sentences capitalised and ended with a period
// elsewhere). NP = "<size> <colour> <kind>" ("large red circle"), POS = "the <cell>" with the nine canonical cell
// names (see scene.h), LIST = "a NP at|in POS", joined by ", " and a final " and ".
//   caption      : LIST | "there is " LIST | ("an image of " | "a picture of ") LIST | "<count> shape(s): " LIST
//   draw prompt  : ("Draw " | "Please draw " | "Can you draw " | "Create an image of " | "Make a picture of ") LIST
//                  ("." | "?"), answered "Here it is. <dream>"
//   document     : sentence k introduces shape k and is followed by image k, which shows shapes 0..k (the scene so
//                  far): "First there is a NP at POS." / "We start with a NP at POS." / "There is a NP at POS.",
//                  then ("Then" | "Next" | "Finally") " a NP appears " (at POS | at POS ", " REL " the <colour>
//                  <kind>" | REL-IT) "." with REL = "to the left of" | "to the right of" | "above" | "below" and
//                  REL-IT = "to its left" | "to its right" | "above it" | "below it", or two of them joined by "and"
//                  ("it" is the shape introduced just before); optionally closed by "Now there is one shape." /
//                  "Now there are <count> shapes." (no image). So the text up to and including sentence k, parsed,
//                  describes image k exactly.
//   instruction  : "Draw " LIST " step by step." | "Show how to draw " LIST " step by step." |
//                  "Build a picture with <count> shape(s) step by step."
// VQA answers are single canonical words or phrases: colour names, kind names, "small"/"large", cell names,
// "zero".."three", "yes"/"no".
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/random.h"
#include "world/scene.h"

namespace dl::world {

// Relative positions between cells: A left of B iff A's column is smaller, above iff its row is smaller.
enum class Relation : uint8_t { LeftOf, RightOf, Above, Below };
std::string_view relation_name(Relation relation);  // "left of", "right of", "above", "below"
bool relation_holds(Relation relation, Cell a, Cell b);

std::string number_word(int n);  // 0..9 -> "zero".."nine"

// ---------------------------------------------------------------------------------------------------------------
// Descriptions: what a caption or prompt says about a picture
// ---------------------------------------------------------------------------------------------------------------
struct ObjectSpec {
  std::optional<Kind> kind;
  std::optional<Colour> colour;
  std::optional<Size> size;
  std::optional<Cell> cell;
  bool operator==(const ObjectSpec&) const = default;
};

struct RelationSpec {
  size_t subject = 0, object = 0;  // indices into Description::objects
  Relation relation = Relation::LeftOf;
  bool operator==(const RelationSpec&) const = default;
};

struct Description {
  std::vector<ObjectSpec> objects;  // every shape mentioned, in order
  std::optional<int> count;         // an explicit "two shapes"; otherwise the shapes are those listed
  std::vector<RelationSpec> relations;
  // How many shapes the picture must have: the explicit count, else the number of objects.
  int expected_count() const { return count ? *count : int(objects.size()); }
  bool operator==(const Description&) const = default;
};

// Parses a caption / prompt in the grammar above, and a little more: "big"/"little"/"tiny" for sizes, "centre",
// "upper"/"lower", a lone row or column word ("top" = top center, "left" = middle left), "shape"/"object"/"one"
// for a shape of unspecified kind ("the red one"), numbers ("two red circles"), "there are three shapes" (an
// explicit count), relations between shapes ("a red circle to the left of a blue square", "to its right",
// "below it"; "the <NP>" after a relation refers back to an earlier shape when one matches). Case and
// punctuation are ignored. Throws dl::Error for empty text, unknown words, phrases left incomplete ("a red" with
// no noun), conflicting attributes and text that mentions no shape at all.
Description parse_description(std::string_view text);

// The full description of a scene (every attribute of every shape).
Description describe(const Scene& scene);
// The scene a fully specified description draws (the inverse of describe()): throws dl::Error naming the object
// and the attribute it lacks, or two objects in one cell.
Scene scene_from_description(const Description& description, int64_t image_size, Rgb background = kWhite);

// "large red circle", "red circle at the top left", ... (only the attributes given).
std::string object_phrase(const ObjectSpec& object, bool with_position = true);
std::string object_phrase(const Shape& shape, bool with_position = true);

// ---------------------------------------------------------------------------------------------------------------
// Generated text
// ---------------------------------------------------------------------------------------------------------------
// LIST over the scene's shapes, "a large red circle at the top left and a small blue square at the center".
std::string shape_list(const Scene& scene);
std::string canonical_caption(const Scene& scene);  // LIST
std::string caption(const Scene& scene, Rng& rng);  // one of the caption templates

enum class QuestionType : uint8_t { Colour, Shape, Size, Count, ColourCount, Position, Relation, Exists };
std::string_view question_type_name(QuestionType type);  // "colour", "shape", "size", "count", ...

struct QA {
  QuestionType type;
  std::string question, answer;
};
// One question of the given type with its answer, or nullopt when the scene cannot support it (a relation
// question needs two shapes; a question about one shape needs a way to name it without giving the answer away).
std::optional<QA> make_question(const Scene& scene, QuestionType type, Rng& rng);
// Up to `count` questions of distinct types, in random order.
std::vector<QA> make_questions(const Scene& scene, int count, Rng& rng);
// The answer to a question from make_question() computed again from the scene (for consistency checks); throws
// when the question is not one the generator asks.
std::string answer_question(const Scene& scene, std::string_view question);

// An interleaved document: sentence k introduces shape k and image k (after sentence images[k].text_index)
// shows the first images[k].shapes shapes of the scene.
struct Document {
  struct Image {
    size_t text_index = 0;
    size_t shapes = 0;
  };
  std::vector<std::string> text_list;
  std::vector<Image> images;
};
Document make_document(const Scene& scene, Rng& rng);
std::string make_instruction(const Scene& scene, Rng& rng);
std::string draw_prompt(const Scene& scene, Rng& rng);
inline constexpr std::string_view kDrawReply = "Here it is. <dream>";

// The first `shapes` shapes of a scene (the picture after `shapes` steps of a document).
Scene scene_prefix(const Scene& scene, size_t shapes);

// Every word the generator can write (lower case, without punctuation; "<image>" and "<dream>" are not words), for
// checking a tokenizer's coverage.
const std::vector<std::string>& vocabulary();

}  // namespace dl::world
