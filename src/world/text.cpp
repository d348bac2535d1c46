#include "world/text.h"

#include <algorithm>
#include <array>
#include <set>

#include "core/error.h"

namespace dl::world {

namespace {

constexpr std::array<std::string_view, 10> kNumberWords{"zero", "one", "two",   "three", "four",
                                                        "five", "six", "seven", "eight", "nine"};

template <typename T>
const T& pick(const std::vector<T>& items, Rng& rng) {
  return items[size_t(rng.below(items.size()))];
}

std::string join_list(const std::vector<std::string>& items) {
  std::string out;
  for (size_t i = 0; i < items.size(); ++i) {
    if (i > 0) out += i + 1 == items.size() ? " and " : ", ";
    out += items[i];
  }
  return out;
}

// "a" or "an" for the phrase that follows.
std::string with_article(const std::string& phrase) {
  const bool vowel = !phrase.empty() && std::string_view("aeiou").find(phrase[0]) != std::string_view::npos;
  return (vowel ? "an " : "a ") + phrase;
}

std::string shapes_word(int n) { return number_word(n) + (n == 1 ? " shape" : " shapes"); }

bool matches(const ObjectSpec& spec, const Shape& s) {
  return (!spec.kind || *spec.kind == s.kind) && (!spec.colour || *spec.colour == s.colour) &&
         (!spec.size || *spec.size == s.size) && (!spec.cell || *spec.cell == s.cell);
}

ObjectSpec full_spec(const Shape& s) { return ObjectSpec{s.kind, s.colour, s.size, s.cell}; }

// ---------------------------------------------------------------------------------------------------------------
// The parser
// ---------------------------------------------------------------------------------------------------------------
enum class WordClass { Article, Definite, Number, Size, Colour, Kind, Generic, Row, Col, Above, Below, Filler };

struct WordInfo {
  WordClass cls;
  int value = 0;        // kind / colour / size / row / col / number
  bool plural = false;  // kinds and generic nouns
};

std::optional<WordInfo> lookup(std::string_view w) {
  for (int k = 0; k < kNumKinds; ++k) {
    if (w == kind_name(Kind(k))) return WordInfo{WordClass::Kind, k, false};
    if (w == kind_plural(Kind(k))) return WordInfo{WordClass::Kind, k, true};
  }
  for (int c = 0; c < kNumColours; ++c)
    if (w == colour_name(Colour(c))) return WordInfo{WordClass::Colour, c};
  for (int n = 0; n < 10; ++n) {
    if (w == kNumberWords[size_t(n)]) return WordInfo{WordClass::Number, n};
    if (w.size() == 1 && w[0] == char('0' + n)) return WordInfo{WordClass::Number, n};
  }
  if (w == "a" || w == "an" || w == "another") return WordInfo{WordClass::Article};
  if (w == "the") return WordInfo{WordClass::Definite};
  if (w == "small" || w == "little" || w == "tiny") return WordInfo{WordClass::Size, int(Size::Small)};
  if (w == "large" || w == "big") return WordInfo{WordClass::Size, int(Size::Large)};
  if (w == "shape" || w == "object") return WordInfo{WordClass::Generic, 0, false};
  if (w == "shapes" || w == "objects") return WordInfo{WordClass::Generic, 0, true};
  if (w == "top" || w == "upper") return WordInfo{WordClass::Row, 0};
  if (w == "middle") return WordInfo{WordClass::Row, 1};
  if (w == "bottom" || w == "lower") return WordInfo{WordClass::Row, 2};
  if (w == "left") return WordInfo{WordClass::Col, 0};
  if (w == "center" || w == "centre") return WordInfo{WordClass::Col, 1};
  if (w == "right") return WordInfo{WordClass::Col, 2};
  if (w == "above") return WordInfo{WordClass::Above};
  if (w == "below" || w == "under" || w == "beneath") return WordInfo{WordClass::Below};
  static const std::set<std::string_view> fillers{
      "and",        "at",       "in",    "on",    "of",     "to",      "is",      "are",    "there", "with",
      "image",      "picture",  "scene", "draw",  "please", "can",     "you",     "create", "make",  "here",
      "it",         "its",      "then",  "first", "next",   "finally", "appears", "now",    "we",    "start",
      "step",       "by",       "build", "show",  "how",    "corner",  "side",    "also",   "shows", "showing",
      "containing", "contains", "has",   "add",   "added",  "drawn"};
  if (fillers.count(w)) return WordInfo{WordClass::Filler};
  return std::nullopt;
}

std::vector<std::string> tokenize(std::string_view text) {
  std::vector<std::string> words;
  std::string cur;
  for (char ch : text) {
    const bool sep = ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r' || ch == ',' || ch == '.' || ch == ';' ||
                     ch == ':' || ch == '!' || ch == '?';
    if (sep) {
      if (!cur.empty()) words.push_back(std::move(cur));
      cur.clear();
      continue;
    }
    cur += (ch >= 'A' && ch <= 'Z') ? char(ch - 'A' + 'a') : ch;
  }
  if (!cur.empty()) words.push_back(std::move(cur));
  return words;
}

class Parser {
 public:
  explicit Parser(std::string_view text) : text_(text), words_(tokenize(text)) {}

  Description run() {
    DL_CHECK(!words_.empty(), "empty description");
    for (const std::string& w : words_) {
      if (w == "one") continue;  // number or noun, decided in context
      if (!lookup(w)) fail("unknown word '", w, "' in description \"", text_, "\"");
    }
    size_t i = 0;
    while (i < words_.size()) i = step(i);
    if (np_open_ && np_has_content()) fail("incomplete shape phrase at the end of \"", text_, "\" (no shape noun)");
    DL_CHECK(!pending_relation_, "relation '", relation_name(*pending_relation_), "' at the end of \"", text_,
             "\" names no shape");
    DL_CHECK(!pending_cell_, "position '", cell_name(*pending_cell_), "' in \"", text_, "\" belongs to no shape");
    DL_CHECK(!d_.objects.empty() || d_.count, "description \"", text_, "\" mentions no shape");
    DL_CHECK(d_.objects.size() <= size_t(kGrid * kGrid), "description \"", text_, "\" mentions ", d_.objects.size(),
             " shapes; at most 9 fit in the grid");
    return d_;
  }

 private:
  const std::string& word(size_t i) const { return words_[i]; }
  bool is(size_t i, std::string_view w) const { return i < words_.size() && words_[i] == w; }
  bool np_has_content() const { return np_size_ || np_colour_ || np_number_; }

  void open_np(bool definite, int number, bool has_number) {
    if (np_open_ && (np_size_ || np_colour_))
      fail("incomplete shape phrase before '", word(pos_), "' in \"", text_, "\"");
    np_open_ = true;
    np_definite_ = definite;
    np_size_.reset();
    np_colour_.reset();
    np_number_ = has_number ? std::optional<int>(number) : std::nullopt;
  }
  void close_np() {
    np_open_ = false;
    np_size_.reset();
    np_colour_.reset();
    np_number_.reset();
  }

  // Tries a relation at i; returns the index after it, or i when there is none.
  size_t relation_at(size_t i) {
    std::optional<Relation> rel;
    bool it = false;
    size_t next = i;
    const auto side = [&](size_t k) -> std::optional<Relation> {
      if (is(k, "left")) return Relation::LeftOf;
      if (is(k, "right")) return Relation::RightOf;
      return std::nullopt;
    };
    if (is(i, "to") && is(i + 1, "the") && side(i + 2) && is(i + 3, "of")) {
      rel = side(i + 2);
      next = i + 4;
    } else if (is(i, "to") && is(i + 1, "its") && side(i + 2)) {
      rel = side(i + 2);
      it = true;
      next = i + 3;
    } else if (side(i) && is(i + 1, "of")) {
      rel = side(i);
      next = i + 2;
    } else if (const auto info = lookup(word(i));
               info && (info->cls == WordClass::Above || info->cls == WordClass::Below)) {
      rel = info->cls == WordClass::Above ? Relation::Above : Relation::Below;
      next = i + 1;
      if (is(next, "it")) {
        it = true;
        ++next;
      }
    }
    if (!rel) return i;
    if (np_open_ && np_has_content()) fail("incomplete shape phrase before '", word(i), "' in \"", text_, "\"");
    close_np();
    DL_CHECK(subject_ >= 0, "relation '", relation_name(*rel), "' in \"", text_, "\" follows no shape");
    DL_CHECK(!pending_relation_, "relation '", relation_name(*rel), "' in \"", text_,
             "\" follows another relation without a shape between them");
    if (it) {
      DL_CHECK(subject_ >= 1, "'it' in \"", text_, "\" refers to no earlier shape");
      d_.relations.push_back({size_t(subject_), size_t(subject_ - 1), *rel});
      last_ = subject_;
    } else {
      pending_relation_ = rel;
    }
    return next;
  }

  // Tries a position at i; returns the index after it, or i.
  size_t position_at(size_t i) {
    const auto info = lookup(word(i));
    if (!info || (info->cls != WordClass::Row && info->cls != WordClass::Col)) return i;
    Cell cell{1, 1};
    size_t next = i + 1;
    if (info->cls == WordClass::Row) {
      cell.row = info->value;
      if (next < words_.size()) {
        const auto col = lookup(word(next));
        if (col && col->cls == WordClass::Col) {
          cell.col = col->value;
          ++next;
        } else if (col && col->cls == WordClass::Row && col->value == 1 && cell.row != 1) {
          ++next;  // "top middle"
        }
      }
    } else {
      cell.col = info->value;
    }
    if (np_open_ && np_has_content()) fail("incomplete shape phrase before '", word(i), "' in \"", text_, "\"");
    close_np();
    const auto free = [&](int k) { return k >= 0 && !d_.objects[size_t(k)].cell; };
    if (free(last_)) {
      d_.objects[size_t(last_)].cell = cell;
    } else if (free(subject_)) {
      d_.objects[size_t(subject_)].cell = cell;
    } else {
      DL_CHECK(!pending_cell_, "two positions in a row in \"", text_, "\" ('", cell_name(*pending_cell_), "' and '",
               cell_name(cell), "')");
      pending_cell_ = cell;
    }
    return next;
  }

  // A noun closes the open phrase (opened implicitly when there is none).
  void noun(const WordInfo& info) {
    if (!np_open_) open_np(false, 1, false);
    const bool generic = info.cls == WordClass::Generic;
    if (generic && !np_size_ && !np_colour_ && (np_number_ || info.plural) && !pending_relation_) {
      // "two shapes", "there are three objects": a count, not a shape; a bare plural says nothing.
      if (np_number_) d_.count = *np_number_;
      close_np();
      return;
    }
    int n = np_number_.value_or(1);
    DL_CHECK(!(info.plural && !np_number_), "'", word(pos_), "' in \"", text_, "\" needs a number (\"two ", word(pos_),
             "\")");
    ObjectSpec spec;
    if (!generic) spec.kind = Kind(info.value);
    spec.colour = np_colour_;
    spec.size = np_size_;
    if (pending_relation_) {
      DL_CHECK(n == 1, "a relation in \"", text_, "\" refers to ", n, " shapes at once");
      int ref = -1;
      if (np_definite_) {
        for (int k = subject_ - 1; k >= 0 && ref < 0; --k) {
          const ObjectSpec& o = d_.objects[size_t(k)];
          if ((!spec.kind || o.kind == spec.kind) && (!spec.colour || o.colour == spec.colour) &&
              (!spec.size || o.size == spec.size))
            ref = k;
        }
      }
      if (ref < 0) {
        ref = int(d_.objects.size());
        d_.objects.push_back(spec);
      }
      d_.relations.push_back({size_t(subject_), size_t(ref), *pending_relation_});
      pending_relation_.reset();
      last_ = ref;
    } else {
      DL_CHECK(n >= 1, "\"", text_, "\" asks for zero shapes of a kind");
      for (int k = 0; k < n; ++k) d_.objects.push_back(spec);
      subject_ = last_ = int(d_.objects.size()) - 1;
      if (pending_cell_) {
        d_.objects[size_t(subject_)].cell = pending_cell_;
        pending_cell_.reset();
      }
    }
    close_np();
  }

  size_t step(size_t i) {
    pos_ = i;
    if (size_t j = relation_at(i); j != i) return j;
    if (size_t j = position_at(i); j != i) return j;
    const std::string& w = word(i);
    if (w == "one") {
      // A noun after an adjective ("a red one"), a number otherwise ("one red circle").
      if (np_open_ && (np_size_ || np_colour_)) {
        noun(WordInfo{WordClass::Generic, 0, false});
      } else {
        open_np(false, 1, true);
      }
      return i + 1;
    }
    const WordInfo info = *lookup(w);
    switch (info.cls) {
      case WordClass::Article:
        open_np(false, 1, false);
        break;
      case WordClass::Definite:
        open_np(true, 1, false);
        break;
      case WordClass::Number:
        if (np_open_ && (np_size_ || np_colour_)) fail("number '", w, "' inside a shape phrase in \"", text_, "\"");
        open_np(np_open_ && np_definite_, info.value, true);
        break;
      case WordClass::Size:
        if (!np_open_) open_np(false, 1, false);
        DL_CHECK(!np_size_ || int(*np_size_) == info.value, "conflicting sizes in \"", text_, "\"");
        np_size_ = Size(info.value);
        break;
      case WordClass::Colour:
        if (!np_open_) open_np(false, 1, false);
        DL_CHECK(!np_colour_ || int(*np_colour_) == info.value, "conflicting colours in \"", text_, "\"");
        np_colour_ = Colour(info.value);
        break;
      case WordClass::Kind:
      case WordClass::Generic:
        noun(info);
        break;
      case WordClass::Filler:
        if (np_open_ && (np_size_ || np_colour_))
          fail("incomplete shape phrase before '", w, "' in \"", text_, "\" (no shape noun)");
        break;
      default:
        fail("unexpected '", w, "' in \"", text_, "\"");
    }
    return i + 1;
  }

  std::string text_;
  std::vector<std::string> words_;
  Description d_;
  size_t pos_ = 0;
  int subject_ = -1, last_ = -1;
  std::optional<Cell> pending_cell_;
  std::optional<Relation> pending_relation_;
  bool np_open_ = false, np_definite_ = false;
  std::optional<Size> np_size_;
  std::optional<Colour> np_colour_;
  std::optional<int> np_number_;
};

// ---------------------------------------------------------------------------------------------------------------
// Referring expressions: how a question names one shape of a scene
// ---------------------------------------------------------------------------------------------------------------
enum Attr : unsigned { kKindBit = 1, kColourBit = 2, kSizeBit = 4, kCellBit = 8 };

ObjectSpec restrict_spec(const Shape& s, unsigned bits) {
  ObjectSpec o;
  if (bits & kKindBit) o.kind = s.kind;
  if (bits & kColourBit) o.colour = s.colour;
  if (bits & kSizeBit) o.size = s.size;
  if (bits & kCellBit) o.cell = s.cell;
  return o;
}

size_t count_matching(const Scene& scene, const ObjectSpec& spec) {
  size_t n = 0;
  for (const Shape& s : scene.shapes) n += matches(spec, s) ? 1 : 0;
  return n;
}

// A phrase naming shape `target` uniquely without the attributes in `forbidden`; nullopt when there is none.
std::optional<ObjectSpec> refer(const Scene& scene, size_t target, unsigned forbidden, Rng& rng) {
  static const std::vector<unsigned> kSubsets{0,
                                              kKindBit,
                                              kColourBit,
                                              kSizeBit,
                                              kColourBit | kKindBit,
                                              kSizeBit | kKindBit,
                                              kSizeBit | kColourBit,
                                              kSizeBit | kColourBit | kKindBit,
                                              kCellBit,
                                              kCellBit | kKindBit};
  std::vector<ObjectSpec> unique;
  for (unsigned bits : kSubsets) {
    if (bits & forbidden) continue;
    const ObjectSpec spec = restrict_spec(scene.shapes[target], bits);
    if (count_matching(scene, spec) == 1) unique.push_back(spec);
  }
  if (unique.empty()) return std::nullopt;
  return unique[size_t(rng.below(unique.size()))];
}

std::string np_words(const Shape& s) {
  return std::string(size_name(s.size)) + " " + std::string(colour_name(s.colour)) + " " +
         std::string(kind_name(s.kind));
}

// The one shape a referring phrase names; throws unless exactly one matches.
size_t resolve(const Scene& scene, std::string_view phrase) {
  const Description d = parse_description(phrase);
  DL_CHECK(d.objects.size() == 1 && d.relations.empty(), "'", phrase, "' does not name one shape");
  size_t found = 0, index = 0;
  for (size_t k = 0; k < scene.shapes.size(); ++k) {
    if (matches(d.objects[0], scene.shapes[k])) {
      ++found;
      index = k;
    }
  }
  DL_CHECK(found == 1, "'", phrase, "' names ", found, " shapes of the scene");
  return index;
}

bool starts_with(std::string_view s, std::string_view prefix) { return s.substr(0, prefix.size()) == prefix; }

}  // namespace

std::string_view relation_name(Relation relation) {
  switch (relation) {
    case Relation::LeftOf:
      return "left of";
    case Relation::RightOf:
      return "right of";
    case Relation::Above:
      return "above";
    case Relation::Below:
      return "below";
  }
  return "?";
}

bool relation_holds(Relation relation, Cell a, Cell b) {
  switch (relation) {
    case Relation::LeftOf:
      return a.col < b.col;
    case Relation::RightOf:
      return a.col > b.col;
    case Relation::Above:
      return a.row < b.row;
    case Relation::Below:
      return a.row > b.row;
  }
  return false;
}

std::string number_word(int n) {
  DL_CHECK(n >= 0 && n <= 9, "no number word for ", n);
  return std::string(kNumberWords[size_t(n)]);
}

Description parse_description(std::string_view text) { return Parser(text).run(); }

Description describe(const Scene& scene) {
  Description d;
  for (const Shape& s : scene.shapes) d.objects.push_back(full_spec(s));
  return d;
}

Scene scene_from_description(const Description& description, int64_t image_size, Rgb background) {
  Scene scene;
  scene.image_size = image_size;
  scene.background = background;
  DL_CHECK(!description.objects.empty(), "the description names no shape to draw");
  DL_CHECK(description.expected_count() == int(description.objects.size()), "the description says ",
           description.expected_count(), " shapes but describes ", description.objects.size());
  for (size_t i = 0; i < description.objects.size(); ++i) {
    const ObjectSpec& o = description.objects[i];
    const std::string what = "shape " + std::to_string(i + 1) + " (" + object_phrase(o) + ")";
    DL_CHECK(o.kind, what, " has no kind (circle, square, triangle, diamond, cross)");
    DL_CHECK(o.colour, what, " has no colour");
    DL_CHECK(o.size, what, " has no size (small or large)");
    DL_CHECK(o.cell, what, " has no position");
    scene.shapes.push_back(Shape{*o.kind, *o.colour, *o.size, *o.cell});
  }
  for (const RelationSpec& r : description.relations) {
    DL_CHECK(relation_holds(r.relation, scene.shapes[r.subject].cell, scene.shapes[r.object].cell), "shape ",
             r.subject + 1, " cannot be ", relation_name(r.relation), " shape ", r.object + 1, " at those positions");
  }
  validate_scene(scene);
  return scene;
}

std::string object_phrase(const ObjectSpec& o, bool with_position) {
  std::string s;
  if (o.size) s += std::string(size_name(*o.size)) + " ";
  if (o.colour) s += std::string(colour_name(*o.colour)) + " ";
  s += o.kind ? std::string(kind_name(*o.kind)) : std::string("shape");
  if (with_position && o.cell) s += " at the " + cell_name(*o.cell);
  return s;
}

std::string object_phrase(const Shape& shape, bool with_position) {
  return object_phrase(full_spec(shape), with_position);
}

std::string shape_list(const Scene& scene) {
  std::vector<std::string> items;
  for (const Shape& s : scene.shapes) items.push_back("a " + object_phrase(s));
  return join_list(items);
}

std::string canonical_caption(const Scene& scene) { return shape_list(scene); }

std::string caption(const Scene& scene, Rng& rng) {
  std::vector<std::string> items;
  for (const Shape& s : scene.shapes) {
    const char* prep = (rng.below(2) == 0) ? " at the " : " in the ";
    items.push_back("a " + np_words(s) + prep + cell_name(s.cell));
  }
  const std::string list = join_list(items);
  switch (rng.below(4)) {
    case 0:
      return list;
    case 1:
      return "there is " + list;
    case 2:
      return (rng.below(2) ? "an image of " : "a picture of ") + list;
    default:
      return shapes_word(int(scene.shapes.size())) + ": " + list;
  }
}

std::string_view question_type_name(QuestionType type) {
  switch (type) {
    case QuestionType::Colour:
      return "colour";
    case QuestionType::Shape:
      return "shape";
    case QuestionType::Size:
      return "size";
    case QuestionType::Count:
      return "count";
    case QuestionType::ColourCount:
      return "colour_count";
    case QuestionType::Position:
      return "position";
    case QuestionType::Relation:
      return "relation";
    case QuestionType::Exists:
      return "exists";
  }
  return "?";
}

std::optional<QA> make_question(const Scene& scene, QuestionType type, Rng& rng) {
  const size_t n = scene.shapes.size();
  DL_CHECK(n >= 1, "make_question: empty scene");
  const size_t target = size_t(rng.below(n));
  const Shape& t = scene.shapes[target];
  switch (type) {
    case QuestionType::Colour: {
      const auto ref = refer(scene, target, kColourBit, rng);
      if (!ref) return std::nullopt;
      return QA{type, "What colour is the " + object_phrase(*ref) + "?", std::string(colour_name(t.colour))};
    }
    case QuestionType::Shape: {
      const auto ref = refer(scene, target, kKindBit, rng);
      if (!ref) return std::nullopt;
      return QA{type, "What shape is the " + object_phrase(*ref) + "?", std::string(kind_name(t.kind))};
    }
    case QuestionType::Size: {
      const auto ref = refer(scene, target, kSizeBit, rng);
      if (!ref) return std::nullopt;
      const std::string q = rng.below(2) ? "What size is the " + object_phrase(*ref) + "?"
                                         : "Is the " + object_phrase(*ref) + " small or large?";
      return QA{type, q, std::string(size_name(t.size))};
    }
    case QuestionType::Count:
      return QA{type, "How many shapes are there?", number_word(int(n))};
    case QuestionType::ColourCount: {
      const Colour c = rng.below(2) ? t.colour : Colour(rng.below(kNumColours));
      int k = 0;
      for (const Shape& s : scene.shapes) k += s.colour == c ? 1 : 0;
      return QA{type, "How many " + std::string(colour_name(c)) + " shapes are there?", number_word(k)};
    }
    case QuestionType::Position: {
      const auto ref = refer(scene, target, kCellBit, rng);
      if (!ref) return std::nullopt;
      return QA{type, "Where is the " + object_phrase(*ref) + "?", cell_name(t.cell)};
    }
    case QuestionType::Relation: {
      if (n < 2) return std::nullopt;
      size_t other = size_t(rng.below(n - 1));
      if (other >= target) ++other;
      const auto a = refer(scene, target, kCellBit, rng);
      const auto b = refer(scene, other, kCellBit, rng);
      if (!a || !b) return std::nullopt;
      const Relation rel = Relation(rng.below(4));
      const bool yes = relation_holds(rel, t.cell, scene.shapes[other].cell);
      return QA{
          type,
          "Is the " + object_phrase(*a) + " " + std::string(relation_name(rel)) + " the " + object_phrase(*b) + "?",
          yes ? "yes" : "no"};
    }
    case QuestionType::Exists: {
      Shape probe = t;
      if (rng.below(2)) {
        probe.kind = Kind(rng.below(kNumKinds));
        probe.colour = Colour(rng.below(kNumColours));
      }
      const ObjectSpec spec{probe.kind, probe.colour, std::nullopt, std::nullopt};
      const bool yes = count_matching(scene, spec) > 0;
      return QA{type, "Is there " + with_article(object_phrase(spec)) + "?", yes ? "yes" : "no"};
    }
  }
  return std::nullopt;
}

std::vector<QA> make_questions(const Scene& scene, int count, Rng& rng) {
  std::vector<QuestionType> types{QuestionType::Colour,   QuestionType::Shape,       QuestionType::Size,
                                  QuestionType::Count,    QuestionType::ColourCount, QuestionType::Position,
                                  QuestionType::Relation, QuestionType::Exists};
  for (size_t i = types.size(); i > 1; --i) std::swap(types[i - 1], types[size_t(rng.below(i))]);
  std::vector<QA> out;
  for (QuestionType type : types) {
    if (int(out.size()) >= count) break;
    if (auto qa = make_question(scene, type, rng)) out.push_back(std::move(*qa));
  }
  return out;
}

std::string answer_question(const Scene& scene, std::string_view question) {
  std::string q;
  for (char ch : question) q += (ch >= 'A' && ch <= 'Z') ? char(ch - 'A' + 'a') : ch;
  DL_CHECK(!q.empty() && q.back() == '?', "'", question, "' is not a question");
  q.pop_back();
  const auto rest = [&](std::string_view prefix) { return std::string_view(q).substr(prefix.size()); };
  if (q == "how many shapes are there") return number_word(int(scene.shapes.size()));
  const std::string_view kCountTail = " shapes are there", kSizeTail = " small or large";
  const auto ends_with = [&](std::string_view tail) {
    return q.size() >= tail.size() && std::string_view(q).substr(q.size() - tail.size()) == tail;
  };
  if (starts_with(q, "how many ") && ends_with(kCountTail) && q.size() > 9 + kCountTail.size()) {
    const Colour c = colour_from_name(std::string_view(q).substr(9, q.size() - 9 - kCountTail.size()));
    int k = 0;
    for (const Shape& s : scene.shapes) k += s.colour == c ? 1 : 0;
    return number_word(k);
  }
  if (starts_with(q, "what colour is the "))
    return std::string(colour_name(scene.shapes[resolve(scene, rest("what colour is the "))].colour));
  if (starts_with(q, "what shape is the "))
    return std::string(kind_name(scene.shapes[resolve(scene, rest("what shape is the "))].kind));
  if (starts_with(q, "what size is the "))
    return std::string(size_name(scene.shapes[resolve(scene, rest("what size is the "))].size));
  if (starts_with(q, "where is the ")) return cell_name(scene.shapes[resolve(scene, rest("where is the "))].cell);
  if (starts_with(q, "is there ")) {
    const Description d = parse_description(rest("is there "));
    DL_CHECK(d.objects.size() == 1, "'", question, "' asks about ", d.objects.size(), " shapes");
    return count_matching(scene, d.objects[0]) > 0 ? "yes" : "no";
  }
  if (starts_with(q, "is the ") && ends_with(kSizeTail) && q.size() > 7 + kSizeTail.size()) {
    const std::string_view ref = std::string_view(q).substr(7, q.size() - 7 - kSizeTail.size());
    return std::string(size_name(scene.shapes[resolve(scene, ref)].size));
  }
  if (starts_with(q, "is the ")) {
    const std::string_view body = rest("is the ");
    for (Relation rel : {Relation::LeftOf, Relation::RightOf, Relation::Above, Relation::Below}) {
      const std::string sep = " " + std::string(relation_name(rel)) + " the ";
      const size_t at = body.find(sep);
      if (at == std::string_view::npos) continue;
      const size_t a = resolve(scene, body.substr(0, at)), b = resolve(scene, body.substr(at + sep.size()));
      return relation_holds(rel, scene.shapes[a].cell, scene.shapes[b].cell) ? "yes" : "no";
    }
  }
  fail("'", question, "' is not a question the shapes world asks");
}

Scene scene_prefix(const Scene& scene, size_t shapes) {
  DL_CHECK(shapes >= 1 && shapes <= scene.shapes.size(), "scene_prefix: ", shapes, " of ", scene.shapes.size(),
           " shapes");
  Scene out = scene;
  out.shapes.resize(shapes);
  return out;
}

Document make_document(const Scene& scene, Rng& rng) {
  Document doc;
  const size_t n = scene.shapes.size();
  for (size_t k = 0; k < n; ++k) {
    const Shape& s = scene.shapes[k];
    const std::string np = np_words(s);
    std::string sentence;
    if (k == 0) {
      static const std::vector<std::string> kOpeners{"First there is", "We start with", "There is"};
      sentence = pick(kOpeners, rng) + " a " + np + " at the " + cell_name(s.cell) + ".";
    } else {
      static const std::vector<std::string> kThen{"Then", "Next"};
      const std::string opener = (k + 1 == n && n >= 3) ? std::string("Finally") : pick(kThen, rng);
      sentence = opener + " a " + np + " appears ";
      const uint64_t variant = rng.below(4);
      // An earlier shape named by colour and kind alone, unambiguously among the shapes before this one.
      std::vector<size_t> refs;
      for (size_t j = 0; j < k; ++j) {
        size_t same = 0;
        for (size_t m = 0; m < k; ++m)
          same += (scene.shapes[m].colour == scene.shapes[j].colour && scene.shapes[m].kind == scene.shapes[j].kind);
        if (same == 1) refs.push_back(j);
      }
      if (variant == 3) {
        // Relative to the previous shape only.
        const Shape& p = scene.shapes[k - 1];
        std::vector<std::string> parts;
        if (s.cell.row < p.cell.row) parts.push_back("above it");
        if (s.cell.row > p.cell.row) parts.push_back("below it");
        if (s.cell.col < p.cell.col) parts.push_back("to its left");
        if (s.cell.col > p.cell.col) parts.push_back("to its right");
        if (parts.size() == 2 && rng.below(2)) std::swap(parts[0], parts[1]);
        sentence += parts.size() == 2 ? parts[0] + " and " + parts[1] : parts[0];
      } else {
        sentence += "at the " + cell_name(s.cell);
        if (variant == 2 && !refs.empty()) {
          const Shape& r = scene.shapes[pick(refs, rng)];
          std::vector<std::string> rels;
          if (s.cell.col < r.cell.col) rels.push_back("to the left of");
          if (s.cell.col > r.cell.col) rels.push_back("to the right of");
          if (s.cell.row < r.cell.row) rels.push_back("above");
          if (s.cell.row > r.cell.row) rels.push_back("below");
          sentence += ", " + pick(rels, rng) + " the " + std::string(colour_name(r.colour)) + " " +
                      std::string(kind_name(r.kind));
        }
      }
      sentence += ".";
    }
    doc.text_list.push_back(sentence);
    doc.images.push_back({k, k + 1});
  }
  if (rng.below(2)) {
    doc.text_list.push_back(n == 1 ? std::string("Now there is one shape.")
                                   : "Now there are " + shapes_word(int(n)) + ".");
  }
  return doc;
}

std::string make_instruction(const Scene& scene, Rng& rng) {
  switch (rng.below(3)) {
    case 0:
      return "Draw " + shape_list(scene) + " step by step.";
    case 1:
      return "Show how to draw " + shape_list(scene) + " step by step.";
    default:
      return "Build a picture with " + shapes_word(int(scene.shapes.size())) + " step by step.";
  }
}

std::string draw_prompt(const Scene& scene, Rng& rng) {
  static const std::vector<std::string> kOpeners{"Draw ", "Please draw ", "Can you draw ", "Create an image of ",
                                                 "Make a picture of "};
  const std::string& opener = pick(kOpeners, rng);
  return opener + shape_list(scene) + (opener == "Can you draw " ? "?" : ".");
}

const std::vector<std::string>& vocabulary() {
  static const std::vector<std::string> words = [] {
    std::set<std::string> w{"a",      "an",     "the",     "at",      "in",     "and",   "of",   "there",  "is",
                            "are",    "image",  "picture", "shape",   "shapes", "first", "we",   "start",  "with",
                            "then",   "next",   "finally", "appears", "to",     "its",   "it",   "left",   "right",
                            "above",  "below",  "now",     "draw",    "step",   "by",    "show", "how",    "build",
                            "please", "can",    "you",     "create",  "make",   "here",  "what", "colour", "size",
                            "where",  "many",   "or",      "small",   "large",  "yes",   "no",   "top",    "middle",
                            "bottom", "center", "add"};
    for (int k = 0; k < kNumKinds; ++k) {
      w.insert(std::string(kind_name(Kind(k))));
      w.insert(std::string(kind_plural(Kind(k))));
    }
    for (int c = 0; c < kNumColours; ++c) w.insert(std::string(colour_name(Colour(c))));
    for (int n = 0; n <= 3; ++n) w.insert(number_word(n));
    return std::vector<std::string>(w.begin(), w.end());
  }();
  return words;
}

}  // namespace dl::world
