// Prompts a model understands. A model directory may declare the language its prompts are written in, as a field of
// its config.json: "prompt_language": "shapes-world" (the committed models/shapes-world does). The commands check a
// prompt against it before any work, so that a prompt the model never saw the like of is refused with the reason
// (the unknown word, the attribute a shape lacks) and a prompt that works, instead of drawing a blank picture or
// answering at random. Models without the field are not checked.
//
// The shapes world's language (world/text.h has the grammar):
//   create  a full description: every shape with size, colour, kind and position
//           ("a large red circle at the top left and a small blue square at the center");
//   write   an instruction naming such shapes ("Show how to draw a large red circle at the top left step by step.")
//           or a count ("Build a picture with two shapes step by step.");
//   ask     one of the generator's question forms about a shape named by some of its attributes: "What colour /
//           shape / size is the X?", "Is the X small or large?", "Where is the X?", "Is the X above / below / left
//           of / right of the Y?", "Is there a X?", "How many shapes are there?", "How many red shapes are there?";
//   chat    a question as for ask, or a drawing request as for create ("Draw ...", "Now add ...").
#pragma once
#include <string>
#include <string_view>

namespace dl::world {

// Document: the start of a document to continue (`write --raw`): the world's words in phrases it parses, shapes
// placed relative to others allowed.
enum class PromptUse { Create, Write, Question, Chat, Document };

// The name of the shapes world's language in a config.json.
inline constexpr std::string_view kShapesWorldLanguage = "shapes-world";

struct PromptCheck {
  bool ok = true;
  std::string problem;  // what is wrong, naming the word or the missing attribute
  std::string example;  // a prompt of the same use that is in the language
};

// The language a model declares in MODEL/config.json ("prompt_language"), or in the config.json a converted
// NAME.gguf carries in its companion; empty when it declares none or there is no model there (the command's own
// checks name that). Throws dl::Error for a config that is not JSON or a field that is not a string.
std::string declared_prompt_language(const std::string& model_path);

// Checks `text` against a language; throws dl::Error for a language this build does not know.
PromptCheck check_prompt(std::string_view language, PromptUse use, std::string_view text);

// What the commands call: nothing when the model declares no language or the prompt is in it. Otherwise, without
// `force`, throws dl::Error saying that the prompt is outside the model's language, why, and a valid example; with
// `force`, returns that message as a warning for the caller to print.
std::string require_prompt_language(const std::string& model_path, PromptUse use, std::string_view text, bool force);

}  // namespace dl::world
