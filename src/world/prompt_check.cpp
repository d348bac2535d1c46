#include "world/prompt_check.h"

#include <algorithm>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <vector>

#include "core/error.h"
#include "io/config.h"
#include "io/gguf_model.h"
#include "world/text.h"

namespace dl::world {

namespace {

// Words and the punctuation the generator writes; "<image>" placeholders are the commands' business, not words.
std::vector<std::string> words_of(std::string_view text) {
  std::vector<std::string> words;
  std::string cur;
  auto flush = [&] {
    if (!cur.empty() && !(cur.front() == '<' && cur.back() == '>')) words.push_back(cur);
    cur.clear();
  };
  for (char ch : text) {
    if (std::string_view(" \t\r\n,.;:!?").find(ch) != std::string_view::npos) {
      flush();
      continue;
    }
    cur += (ch >= 'A' && ch <= 'Z') ? char(ch - 'A' + 'a') : ch;
  }
  flush();
  return words;
}

std::string joined(const std::vector<std::string>& words, size_t from, size_t to) {
  std::string s;
  for (size_t i = from; i < to; ++i) s += (s.empty() ? "" : " ") + words[i];
  return s;
}

// The first word the model never read, with the word it knows for it when the parser takes a synonym.
std::string unknown_word(const std::vector<std::string>& words) {
  static const std::map<std::string, std::string> kSynonyms{
      {"big", "large"},    {"little", "small"}, {"tiny", "small"},    {"centre", "center"}, {"color", "colour"},
      {"upper", "top"},    {"lower", "bottom"}, {"object", "shape"},  {"objects", "shapes"}, {"under", "below"},
      {"beneath", "below"}};
  const std::vector<std::string>& vocabulary = world::vocabulary();
  for (const std::string& w : words) {
    if (std::binary_search(vocabulary.begin(), vocabulary.end(), w)) continue;
    const auto synonym = kSynonyms.find(w);
    return "'" + w + "' is not a word the model was trained on" +
           (synonym != kSynonyms.end() ? " (it knows '" + synonym->second + "')" : std::string());
  }
  return "";
}

// A full description of the shapes to draw: the problem, or empty.
std::string description_problem(std::string_view text, bool count_alone_ok) {
  try {
    const Description d = parse_description(text);
    if (count_alone_ok && d.objects.empty() && d.count) {
      DL_CHECK(*d.count >= 1 && *d.count <= 3, "the world's pictures hold one to three shapes, not ", *d.count);
      return "";
    }
    DL_CHECK(d.objects.size() <= 3, "the prompt names ", d.objects.size(),
             " shapes; the model was trained on one to three");
    scene_from_description(d, 36);
    return "";
  } catch (const Error& e) {
    return e.what();
  }
}

// A phrase naming one shape ("the large red circle", "the shape at the top left"): the problem, or empty.
std::string reference_problem(const std::string& phrase) {
  try {
    const Description d = parse_description(phrase);
    DL_CHECK(d.objects.size() == 1 && d.relations.empty() && !d.count, "'", phrase, "' does not name one shape");
    return "";
  } catch (const Error& e) {
    return e.what();
  }
}

// One of the generator's question forms (world/text.cpp make_question): the problem, or empty.
std::string question_problem(const std::vector<std::string>& w) {
  const size_t n = w.size();
  auto at = [&](size_t i, std::string_view s) { return i < n && w[i] == s; };
  auto ref = [&](size_t from, size_t to) {
    return from < to ? reference_problem(joined(w, from, to)) : std::string("the question names no shape");
  };
  if (at(0, "what") && (at(1, "colour") || at(1, "shape") || at(1, "size")) && at(2, "is") && at(3, "the"))
    return ref(3, n);
  if (at(0, "where") && at(1, "is") && at(2, "the")) return ref(2, n);
  if (at(0, "how") && at(1, "many")) {
    if (n == 5 && at(2, "shapes") && at(3, "are") && at(4, "there")) return "";
    if (n == 6 && at(3, "shapes") && at(4, "are") && at(5, "there")) {
      for (int c = 0; c < kNumColours; ++c)
        if (w[2] == colour_name(Colour(c))) return "";
    }
    return "a count question is \"How many shapes are there?\" or \"How many red shapes are there?\"";
  }
  if (at(0, "is") && at(1, "there") && (at(2, "a") || at(2, "an"))) return ref(2, n);
  if (at(0, "is") && at(1, "the")) {
    if (n >= 5 && at(n - 3, "small") && at(n - 2, "or") && at(n - 1, "large")) return ref(1, n - 3);
    for (size_t i = 2; i + 1 < n; ++i) {
      const bool side = (w[i] == "left" || w[i] == "right") && at(i + 1, "of") && at(i + 2, "the");
      const bool vertical = (w[i] == "above" || w[i] == "below") && at(i + 1, "the");
      if (!side && !vertical) continue;
      const size_t second = side ? i + 2 : i + 1;
      std::string p = ref(1, i);
      if (p.empty()) p = ref(second, n);
      return p;
    }
  }
  return "it is not one of the question forms the model was trained on";
}

const char* example_of(PromptUse use) {
  switch (use) {
    case PromptUse::Create:
      return "\"a large red circle at the top left and a small blue square at the bottom right\"";
    case PromptUse::Write:
      return "\"Show how to draw a large red circle at the top left and a small blue square at the bottom right step "
             "by step.\"";
    case PromptUse::Question:
      return "\"What colour is the triangle?\" (also: What shape / What size is the X?, Where is the X?, Is the X "
             "small or large?, Is the X above the Y?, Is there a X?, How many shapes are there?)";
    case PromptUse::Chat:
      return "\"Draw a large red circle at the top left.\" or a question such as \"What colour is the triangle?\"";
    case PromptUse::Document:
      return "\"First there is a large red circle at the top left.\"";
  }
  return "";
}

}  // namespace

std::string declared_prompt_language(const std::string& model_path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  std::string text, where = (fs::path(model_path) / "config.json").string();
  if (fs::is_directory(model_path, ec)) {
    if (!fs::is_regular_file(where, ec)) return "";
    text = io::read_text_file(where, size_t(16) << 20);
  } else if (io::is_gguf_model_path(model_path) && fs::is_regular_file(model_path, ec)) {
    // A converted model carries the directory's config.json in its companion file.
    const auto model = io::open_gguf_model(model_path);
    const std::optional<std::string> embedded = model->embedded("config.json");
    if (!embedded) return "";
    text = *embedded;
    where = model->companion_path + " (its config.json)";
  } else {
    return "";
  }
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    fail("'", where, "': invalid JSON (", e.what(), ")");
  }
  if (!j.is_object() || !j.contains("prompt_language")) return "";
  DL_CHECK(j["prompt_language"].is_string(), "'", where, "': \"prompt_language\" is not a string");
  return j["prompt_language"].get<std::string>();
}

PromptCheck check_prompt(std::string_view language, PromptUse use, std::string_view text) {
  DL_CHECK(language == kShapesWorldLanguage, "prompt language '", language, "' is not one this build knows (it knows '",
           kShapesWorldLanguage, "')");
  PromptCheck r;
  r.example = example_of(use);
  const std::vector<std::string> words = words_of(text);
  if (words.empty()) {
    r.problem = "the prompt is empty";
  } else if (std::string unknown = unknown_word(words); !unknown.empty()) {
    r.problem = unknown;
  } else if (use == PromptUse::Create) {
    r.problem = description_problem(text, false);
  } else if (use == PromptUse::Write) {
    r.problem = description_problem(text, true);
  } else if (use == PromptUse::Question) {
    r.problem = question_problem(words);
  } else if (use == PromptUse::Document) {
    try {
      parse_description(text);
    } catch (const Error& e) {
      r.problem = e.what();
    }
  } else {
    // A chat message is a question or a drawing request; a failed one is judged as what it looks like.
    const std::string question = question_problem(words);
    if (!question.empty()) {
      const std::string drawing = description_problem(text, false);
      const bool asks = words[0] == "what" || words[0] == "where" || words[0] == "how" || words[0] == "is";
      r.problem = drawing.empty() ? "" : asks ? question : drawing;
    }
  }
  r.ok = r.problem.empty();
  return r;
}

std::string require_prompt_language(const std::string& model_path, PromptUse use, std::string_view text, bool force) {
  const std::string language = declared_prompt_language(model_path);
  if (language.empty()) return "";
  const PromptCheck c = check_prompt(language, use, text);
  if (c.ok) return "";
  const std::string message = "the prompt \"" + std::string(text) + "\" is outside what the model '" + model_path +
                              "' understands (its config.json declares the prompt language \"" + language +
                              "\"): " + c.problem + ". A prompt it understands: " + c.example;
  if (!force) fail(message, " (--force runs it anyway)");
  return message;
}

}  // namespace dl::world
