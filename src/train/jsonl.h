// Streaming readers for the training data files and parsers for their three record formats.
//
// A data file is either JSON Lines (one object per line) or one JSON array of objects (LLaVA's
// llava_v1_5_mix665k.json). Both are read incrementally: only the current line / array element is held in memory,
// so multi-gigabyte files are fine. A malformed line or element is reported through the issue callback with the
// file and line number, counted, and skipped; reading goes on with the next one.
//
// Record formats (image paths are relative to the data file's directory unless absolute):
//  - interleaved (MMC4): {"text_list": [str, ...], "images": [{"path": p, "matched_text_index": k}, ...]}.
//    The original MMC4 / DreamLLM names are accepted too: "image_info" for "images", "image_name" for "path",
//    and the optional "matched_sim" (other MMC4 fields such as "url", "raw_url", "similarity_matrix" are ignored).
//    An optional "instruction" string makes it an instruction-interleaved (InstructMMC4) record.
//  - pair: {"image": p, "caption": str} or {"image": p, "text": str} ("caption" wins when both are present).
//  - conversation (LLaVA): {"image": p or [p, ...] (optional), "conversations": [{"from": "human"|"gpt"|...,
//    "value": str}, ...]}.
#pragma once
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "train/records.h"

namespace dl::train {

// A problem with one line / element of a data file: where it is and what is wrong with it.
struct DataIssue {
  std::string file;
  int64_t line = 0;  // 1-based line where the offending line / array element starts
  std::string message;
  std::string where() const { return file + ":" + std::to_string(line); }
};
using IssueCallback = std::function<void(const DataIssue&)>;

// The most bytes one record (a JSON line, a JSON array element, a webdataset text member) may have by default.
// Real records are a few kB; without a bound, one damaged or hostile 50 MB line costs gigabytes of parsed JSON each
// time it is drawn. A longer record is skipped (its bytes are never held) with a warning naming the limit.
constexpr int64_t kDefaultMaxRecordBytes = int64_t(16) << 20;

// Streams the JSON objects of a JSON Lines file or of a top-level JSON array (detected from the first non-blank
// character, '[' meaning array). Blank lines are ignored silently; invalid JSON, values that are not objects and
// records over max_record_bytes are reported and skipped. Without a callback, issues are only counted.
class JsonObjectReader {
 public:
  explicit JsonObjectReader(std::filesystem::path path, IssueCallback on_issue = {},
                            int64_t max_record_bytes = kDefaultMaxRecordBytes);
  JsonObjectReader(JsonObjectReader&&) noexcept;
  JsonObjectReader& operator=(JsonObjectReader&&) noexcept;
  ~JsonObjectReader();

  // The next object, and the line it starts on; false at the end of the file.
  bool next(nlohmann::json& object, int64_t& line);
  // Lines / elements skipped so far because they were malformed.
  int64_t skipped() const;
  const std::filesystem::path& path() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

enum class RecordFormat { Interleaved, Pair, Conversation };

// Record parsers. A missing or mistyped field throws dl::Error naming the field; relative image paths are joined to
// base_dir.
InterleavedRecord parse_interleaved_record(const nlohmann::json& object, const std::filesystem::path& base_dir);
PairRecord parse_pair_record(const nlohmann::json& object, const std::filesystem::path& base_dir);
ConversationRecord parse_conversation_record(const nlohmann::json& object, const std::filesystem::path& base_dir);
Record parse_record(RecordFormat format, const nlohmann::json& object, const std::filesystem::path& base_dir);

struct RecordReaderOptions {
  IssueCallback on_issue;
  // A record whose JSON is valid but whose fields are not (missing "text_list", a number for a caption, ...):
  // false throws dl::Error "<file>:<line>: <problem>"; true reports it like a malformed line and skips it.
  bool skip_invalid_records = false;
  int64_t max_record_bytes = kDefaultMaxRecordBytes;  // see kDefaultMaxRecordBytes
};

// Streams parsed records of one data file.
class RecordReader {
 public:
  RecordReader(std::filesystem::path path, RecordFormat format, RecordReaderOptions options = {});

  // The next record; std::nullopt at the end of the file.
  std::optional<Record> next();
  // Line the last returned record starts on.
  int64_t line() const { return line_; }
  // Records returned so far, and lines / elements skipped (malformed JSON, plus invalid records when skipping).
  int64_t records() const { return records_; }
  int64_t skipped() const { return objects_.skipped() + invalid_; }

 private:
  JsonObjectReader objects_;
  RecordFormat format_;
  RecordReaderOptions options_;
  std::filesystem::path base_dir_;
  int64_t line_ = 0;
  int64_t records_ = 0;
  int64_t invalid_ = 0;
};

// Image path as stored in a record: absolute paths unchanged, relative ones joined to base_dir.
std::string resolve_image_path(const std::string& path, const std::filesystem::path& base_dir);

}  // namespace dl::train
