#include "train/jsonl.h"

#include <array>
#include <string_view>
#include <utility>

#include "core/error.h"
#include "core/file.h"

namespace dl::train {

namespace fs = std::filesystem;
using nlohmann::json;

// ---------------------------------------------------------------------------------------------------------------
// JsonObjectReader
// ---------------------------------------------------------------------------------------------------------------
struct JsonObjectReader::Impl {
  fs::path path;
  std::string file;  // path as text, for messages
  IssueCallback on_issue;
  size_t max_record_bytes = size_t(kDefaultMaxRecordBytes);
  std::optional<InputFile> in;
  // Our own read buffer: the array mode looks at every character, and istream::get per character is slow.
  std::array<char, 1 << 16> buffer{};
  size_t pos = 0, end = 0;
  int64_t line = 1;  // line of the next character
  int64_t skipped = 0;
  enum class Mode { Unknown, Lines, Array, Done } mode = Mode::Unknown;

  int get() {
    if (pos == end) {
      end = in->read(buffer.data(), buffer.size());
      pos = 0;
      if (end == 0) return EOF;
    }
    const int c = static_cast<unsigned char>(buffer[pos++]);
    if (c == '\n') ++line;
    return c;
  }
  int peek() {
    if (pos == end) {
      end = in->read(buffer.data(), buffer.size());
      pos = 0;
      if (end == 0) return EOF;
    }
    return static_cast<unsigned char>(buffer[pos]);
  }

  void report(int64_t at_line, std::string message, bool counts_as_skipped) {
    if (counts_as_skipped) ++skipped;
    if (on_issue) on_issue(DataIssue{file, at_line, std::move(message)});
  }

  static bool is_blank(int c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; }

  // Parses one line / element; false (after reporting) when it is not a JSON object.
  bool parse_object(const std::string& text, int64_t at_line, json& object) {
    try {
      object = json::parse(text);
    } catch (const json::exception& e) {  // parse errors, and numbers out of range such as 1e999
      report(at_line, std::string("invalid JSON: ") + e.what(), true);
      return false;
    }
    if (!object.is_object()) {
      report(at_line, std::string("expected a JSON object, got ") + object.type_name(), true);
      return false;
    }
    return true;
  }

  void detect_mode() {
    // A UTF-8 byte order mark is not JSON; editors on some systems write one.
    if (peek() == 0xEF) {
      const std::string_view bom = "\xEF\xBB\xBF";
      size_t matched = 0;
      while (matched < bom.size() && peek() == static_cast<unsigned char>(bom[matched])) {
        get();
        ++matched;
      }
    }
    // Leading blank lines do not decide the mode; the first real character does.
    while (is_blank(peek())) get();
    const int c = peek();
    if (c == EOF) {
      mode = Mode::Done;
    } else if (c == '[') {
      get();
      mode = Mode::Array;
    } else {
      mode = Mode::Lines;
    }
  }

  void report_too_long(int64_t at_line) {
    report(at_line, "record is longer than the limit of " + std::to_string(max_record_bytes) +
                        " bytes (--max-record-bytes)", true);
  }

  bool next_line(json& object, int64_t& at_line) {
    std::string text;
    while (true) {
      int c = peek();
      if (c == EOF) {
        mode = Mode::Done;
        return false;
      }
      at_line = line;
      text.clear();
      bool too_long = false;
      while ((c = get()) != EOF && c != '\n') {
        // Past the limit the rest of the line is read through and dropped, never held.
        if (text.size() <= max_record_bytes) text.push_back(char(c));
        else too_long = true;
      }
      if (!text.empty() && text.back() == '\r') text.pop_back();  // CRLF files
      too_long = too_long || text.size() > max_record_bytes;
      if (too_long) {
        report_too_long(at_line);
        continue;
      }
      if (text.find_first_not_of(" \t\r") == std::string::npos) continue;
      if (parse_object(text, at_line, object)) return true;
    }
  }

  bool next_element(json& object, int64_t& at_line) {
    while (true) {
      while (is_blank(peek())) get();
      at_line = line;
      if (peek() == ']') {  // "[]", or the end after a trailing comma was already consumed
        get();
        finish_array();
        return false;
      }
      // Cut one element at the first ',' or ']' outside strings and brackets.
      std::string text;
      int depth = 0;
      bool in_string = false, escaped = false;
      int c;
      int terminator = EOF;
      bool too_long = false;
      while ((c = get()) != EOF) {
        if (in_string) {
          if (escaped) {
            escaped = false;
          } else if (c == '\\') {
            escaped = true;
          } else if (c == '"') {
            in_string = false;
          }
        } else if (c == '"') {
          in_string = true;
        } else if (c == '{' || c == '[') {
          ++depth;
        } else if (c == '}' || c == ']') {
          if (depth == 0 && c == ']') {
            terminator = c;
            break;
          }
          if (depth > 0) --depth;
        } else if (c == ',' && depth == 0) {
          terminator = c;
          break;
        }
        // Past the limit the element is scanned to its end and dropped, never held.
        if (text.size() < max_record_bytes) text.push_back(char(c));
        else too_long = true;
      }
      const bool empty = !too_long && text.find_first_not_of(" \t\r\n") == std::string::npos;
      if (terminator == EOF) {
        mode = Mode::Done;
        if (!empty) report(at_line, "file ends inside a JSON array element (missing ']')", true);
        else report(at_line, "file ends before the JSON array's closing ']'", false);
        return false;
      }
      if (terminator == ']') finish_array();
      if (too_long) {
        report_too_long(at_line);
      } else if (empty) {
        report(at_line, "empty JSON array element (stray ',')", true);
      } else if (parse_object(text, at_line, object)) {
        return true;
      }
      if (mode == Mode::Done) return false;
    }
  }

  void finish_array() {
    mode = Mode::Done;
    while (is_blank(peek())) get();
    if (peek() != EOF) report(line, "unexpected content after the JSON array's closing ']' (ignored)", false);
  }
};

JsonObjectReader::JsonObjectReader(fs::path path, IssueCallback on_issue, int64_t max_record_bytes)
    : impl_(std::make_unique<Impl>()) {
  impl_->path = std::move(path);
  impl_->file = impl_->path.string();
  impl_->on_issue = std::move(on_issue);
  DL_CHECK(max_record_bytes > 0, "the record limit must be positive, not ", max_record_bytes);
  impl_->max_record_bytes = size_t(max_record_bytes);
  try {
    impl_->in.emplace(impl_->file);  // a FIFO, a directory or a device is refused without blocking on it
  } catch (const Error& e) {
    fail("data file: ", e.what());
  }
}

JsonObjectReader::JsonObjectReader(JsonObjectReader&&) noexcept = default;
JsonObjectReader& JsonObjectReader::operator=(JsonObjectReader&&) noexcept = default;
JsonObjectReader::~JsonObjectReader() = default;

bool JsonObjectReader::next(json& object, int64_t& line) {
  Impl& s = *impl_;
  if (s.mode == Impl::Mode::Unknown) s.detect_mode();
  switch (s.mode) {
    case Impl::Mode::Lines:
      return s.next_line(object, line);
    case Impl::Mode::Array:
      return s.next_element(object, line);
    default:
      return false;
  }
}

int64_t JsonObjectReader::skipped() const { return impl_->skipped; }
const fs::path& JsonObjectReader::path() const { return impl_->path; }

// ---------------------------------------------------------------------------------------------------------------
// Record parsers
// ---------------------------------------------------------------------------------------------------------------
namespace {

// Bounds on a pair's condition labels, so a malformed record cannot ask for a huge condition tensor.
constexpr size_t kMaxConditionTokens = 256, kMaxLabelsPerToken = 64;
constexpr int64_t kMaxConditionLabel = int64_t(1) << 20;

const json* find_field(const json& object, std::string_view name) {
  auto it = object.find(name);
  return it == object.end() ? nullptr : &*it;
}

const json& require_field(const json& object, std::string_view name, std::string_view context) {
  const json* v = find_field(object, name);
  DL_CHECK(v != nullptr, context, "missing field \"", name, "\"");
  return *v;
}

std::string as_string(const json& v, std::string_view name, std::string_view context) {
  DL_CHECK(v.is_string(), context, "field \"", name, "\" must be a string, got ", v.type_name());
  return v.get<std::string>();
}

const json& as_array(const json& v, std::string_view name, std::string_view context) {
  DL_CHECK(v.is_array(), context, "field \"", name, "\" must be an array, got ", v.type_name());
  return v;
}

std::string image_path(const json& v, std::string_view name, std::string_view context, const fs::path& base_dir) {
  std::string p = as_string(v, name, context);
  DL_CHECK(!p.empty(), context, "field \"", name, "\" is an empty path");
  return resolve_image_path(p, base_dir);
}

}  // namespace

std::string resolve_image_path(const std::string& path, const fs::path& base_dir) {
  const fs::path p(path);
  if (p.is_absolute() || base_dir.empty()) return path;
  return (base_dir / p).string();
}

InterleavedRecord parse_interleaved_record(const json& object, const fs::path& base_dir) {
  DL_CHECK(object.is_object(), "interleaved record must be a JSON object, got ", object.type_name());
  InterleavedRecord r;
  const json& texts = as_array(require_field(object, "text_list", ""), "text_list", "");
  r.text_list.reserve(texts.size());
  for (size_t i = 0; i < texts.size(); ++i) {
    r.text_list.push_back(as_string(texts[i], "text_list[" + std::to_string(i) + "]", ""));
  }

  // "images" is this project's name; "image_info" is MMC4's (and DreamLLM's webdataset / InstructMMC4 JSON).
  const json* images = find_field(object, "images");
  std::string images_name = "images";
  if (images == nullptr) {
    images = find_field(object, "image_info");
    images_name = "image_info";
  }
  DL_CHECK(images != nullptr, "missing field \"images\" (or MMC4's \"image_info\")");
  as_array(*images, images_name, "");
  for (size_t i = 0; i < images->size(); ++i) {
    const json& info = (*images)[i];
    const std::string context = images_name + "[" + std::to_string(i) + "]: ";
    DL_CHECK(info.is_object(), context, "must be an object, got ", info.type_name());
    InterleavedRecord::Image image;
    const json* path = find_field(info, "path");
    const char* path_name = "path";
    if (path == nullptr) {
      path = find_field(info, "image_name");
      path_name = "image_name";
    }
    DL_CHECK(path != nullptr, context, "missing field \"path\" (or MMC4's \"image_name\")");
    image.path = image_path(*path, path_name, context, base_dir);
    const json& index = require_field(info, "matched_text_index", context);
    DL_CHECK(index.is_number_integer(), context, "field \"matched_text_index\" must be an integer, got ",
             index.type_name());
    image.matched_text_index = index.get<int64_t>();
    // Python slicing would quietly make empty or partial chunks of an out-of-range index; we refuse it.
    DL_CHECK(image.matched_text_index >= 0 && image.matched_text_index < int64_t(r.text_list.size()), context,
             "matched_text_index ", image.matched_text_index, " is outside text_list (", r.text_list.size(),
             " sentences)");
    if (const json* sim = find_field(info, "matched_sim"); sim != nullptr && !sim->is_null()) {
      DL_CHECK(sim->is_number(), context, "field \"matched_sim\" must be a number, got ", sim->type_name());
      image.matched_sim = sim->get<double>();
    }
    r.images.push_back(std::move(image));
  }

  if (const json* instruction = find_field(object, "instruction"); instruction != nullptr) {
    r.instruction = as_string(*instruction, "instruction", "");
  }
  return r;
}

PairRecord parse_pair_record(const json& object, const fs::path& base_dir) {
  DL_CHECK(object.is_object(), "pair record must be a JSON object, got ", object.type_name());
  PairRecord r;
  r.image = image_path(require_field(object, "image", ""), "image", "", base_dir);
  if (const json* caption = find_field(object, "caption"); caption != nullptr) {
    r.caption = as_string(*caption, "caption", "");
  } else {
    const json* text = find_field(object, "text");
    DL_CHECK(text != nullptr, "missing field \"caption\" (or \"text\")");
    r.caption = as_string(*text, "text", "");
  }
  if (const json* labels = find_field(object, "condition_labels"); labels != nullptr) {
    const json& tokens = as_array(*labels, "condition_labels", "");
    DL_CHECK(tokens.size() <= kMaxConditionTokens, "field \"condition_labels\" has ", tokens.size(),
             " tokens (at most ", kMaxConditionTokens, ")");
    for (size_t i = 0; i < tokens.size(); ++i) {
      const std::string name = "condition_labels[" + std::to_string(i) + "]";
      const json& ids = as_array(tokens[i], name, "");
      DL_CHECK(!ids.empty() && ids.size() <= kMaxLabelsPerToken, "field \"", name, "\" has ", ids.size(),
               " labels (1 to ", kMaxLabelsPerToken, ")");
      std::vector<int32_t>& token = r.condition_labels.emplace_back();
      for (const json& id : ids) {
        DL_CHECK(id.is_number_integer() && id.get<int64_t>() >= 0 && id.get<int64_t>() < kMaxConditionLabel,
                 "field \"", name, "\" must hold label ids in [0, ", kMaxConditionLabel, "), got ", id.dump());
        token.push_back(int32_t(id.get<int64_t>()));
      }
    }
  }
  return r;
}

ConversationRecord parse_conversation_record(const json& object, const fs::path& base_dir) {
  DL_CHECK(object.is_object(), "conversation record must be a JSON object, got ", object.type_name());
  ConversationRecord r;
  if (const json* image = find_field(object, "image"); image != nullptr) {
    if (image->is_array()) {
      for (size_t i = 0; i < image->size(); ++i) {
        r.images.push_back(image_path((*image)[i], "image[" + std::to_string(i) + "]", "", base_dir));
      }
    } else {
      r.images.push_back(image_path(*image, "image", "", base_dir));
    }
  }
  const json& turns = as_array(require_field(object, "conversations", ""), "conversations", "");
  DL_CHECK(!turns.empty(), "field \"conversations\" is empty");
  for (size_t i = 0; i < turns.size(); ++i) {
    const json& t = turns[i];
    const std::string context = "conversations[" + std::to_string(i) + "]: ";
    DL_CHECK(t.is_object(), context, "must be an object, got ", t.type_name());
    ConversationRecord::Turn turn;
    turn.from = as_string(require_field(t, "from", context), "from", context);
    // The roles DreamLLM's ConversationDataset.roles_map knows; anything else is a KeyError there.
    static constexpr std::array<std::string_view, 6> kKnownRoles = {"human", "user", "gpt", "assistant", "obj365",
                                                                     "vg"};
    bool known = false;
    for (std::string_view role : kKnownRoles) known = known || turn.from == role;
    DL_CHECK(known, context, "unknown role \"", turn.from, "\" (expected human, user, gpt, assistant, obj365 or vg)");
    turn.value = as_string(require_field(t, "value", context), "value", context);
    r.turns.push_back(std::move(turn));
  }
  return r;
}

Record parse_record(RecordFormat format, const json& object, const fs::path& base_dir) {
  switch (format) {
    case RecordFormat::Interleaved:
      return parse_interleaved_record(object, base_dir);
    case RecordFormat::Pair:
      return parse_pair_record(object, base_dir);
    case RecordFormat::Conversation:
      return parse_conversation_record(object, base_dir);
  }
  fail("unknown record format");
}

// ---------------------------------------------------------------------------------------------------------------
// RecordReader
// ---------------------------------------------------------------------------------------------------------------
RecordReader::RecordReader(fs::path path, RecordFormat format, RecordReaderOptions options)
    : objects_(path, options.on_issue, options.max_record_bytes),
      format_(format),
      options_(std::move(options)),
      base_dir_(path.parent_path()) {}

std::optional<Record> RecordReader::next() {
  json object;
  int64_t line = 0;
  while (objects_.next(object, line)) {
    try {
      Record record = parse_record(format_, object, base_dir_);
      line_ = line;
      ++records_;
      return record;
    } catch (const Error& e) {
      DataIssue issue{objects_.path().string(), line, e.what()};
      if (!options_.skip_invalid_records) fail(issue.where(), ": ", issue.message);
      ++invalid_;
      if (options_.on_issue) options_.on_issue(issue);
    }
  }
  return std::nullopt;
}

}  // namespace dl::train
