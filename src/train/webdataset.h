// Training data in webdataset form: tar shards whose members are grouped into samples by key.
//
// TarReader streams the members of a tar file: POSIX ustar (with its name prefix), GNU tar (long names, base-256
// sizes) and pax (extended "path" and "size"). Only one 512-byte header is held at a time and member data is
// skipped with a seek, so multi-gigabyte shards cost nothing to scan. Every header's checksum is verified; a corrupt
// or truncated archive is a dl::Error "<file>: byte <offset>: <problem>", never a crash or a hang.
//
// WebDatasetReader turns a shard into training records. A member "dir/abc.0.jpg" has the key "dir/abc" (the path up
// to the first '.' of its base name) and the extension "0.jpg" (the rest, lowercased); a sample is a run of
// consecutive members with the same key. Members with no extension (and base names starting with '.') belong to no
// sample: they are reported through the issue callback and otherwise ignored, as webdataset ignores them.
//  - A sample whose "json" member has a "text_list" field is an interleaved (MMC4) document, parsed like a JSONL
//    interleaved record ("images"/"path" or MMC4's "image_info"/"image_name", "matched_text_index", ...). Each image
//    name must be the extension of a member of the same sample: "image_name": "0.jpg" is the member "<key>.0.jpg"
//    (compared case-insensitively, as extensions are lowercased).
//  - Otherwise a sample with an image member (the first of the extensions jpg, jpeg, png, webp, bmp) and a caption
//    is an image-text pair. The caption is the whole "txt" member with trailing whitespace removed, or when there is
//    no "txt", the "caption" (else "text") string field of the "json" member.
//  - Any other sample (no image, no caption, invalid JSON, an interleaved image that is not in the sample, two
//    members with the same extension, a text member over the record limit, ...) is reported through the issue
//    callback, counted in skipped(), and skipped; reading goes on. For these issues DataIssue::file is the shard, `line` is
//    the 1-based position of the sample in the shard (for an ignored member, of the sample being read), and the
//    message starts with "<key>: ".
//
// Records name their images by tar-member references, so the trainer can fetch the bytes later without the reader:
//     "<tar path>::<data offset>:<size>"      e.g. "/data/mmc4/shard-00012.tar::1536:48211"
// with the absolute path of the shard, the byte offset of the member's data in it and the member's size, both in
// decimal. The last "::" of the string is the separator, so the tar path may itself contain "::"; a plain image path
// is only mistaken for a reference if it ends in "::<digits>:<digits>". read_image_source() reads either form.
#pragma once
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "train/jsonl.h"
#include "train/records.h"

namespace dl::train {

// One regular file of a tar archive.
struct TarMember {
  std::string name;            // full path: pax "path", else GNU long name, else ustar prefix + "/" + name
  uint64_t header_offset = 0;  // where its first header block starts (the pax / long-name header if any)
  uint64_t data_offset = 0;    // where its data starts
  uint64_t size = 0;           // data size in bytes
};

// Streams the regular files of a tar archive (typeflag '0', '\0' and '7'); directories, links, devices, fifos, GNU
// sparse files and unknown types are skipped. Reading ends at two zero blocks or at the end of the file at a header
// boundary; a lone zero block followed by a header is skipped (as GNU tar does), and anything after the end-of-archive
// blocks is ignored.
class TarReader {
 public:
  explicit TarReader(const std::filesystem::path& path);
  // An archive held in memory (tests, fuzzing). `name` appears in messages and in member references.
  TarReader(std::string name, std::vector<uint8_t> bytes);
  TarReader(TarReader&&) noexcept;
  TarReader& operator=(TarReader&&) noexcept;
  ~TarReader();

  // The next regular file; std::nullopt at the end of the archive.
  std::optional<TarMember> next();
  // The data of a member of this archive (bounds-checked against the file).
  std::string read(const TarMember& member);
  // The archive's name as given (for messages), its path as used in member references (absolute for files), and its
  // size in bytes.
  const std::string& name() const;
  const std::string& ref_path() const;
  uint64_t size() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Streams the records of a webdataset shard (see the top of this file).
class WebDatasetReader {
 public:
  // Text members (txt, json) longer than max_record_bytes make their sample skipped and counted.
  explicit WebDatasetReader(const std::filesystem::path& path, IssueCallback on_issue = {},
                            int64_t max_record_bytes = kDefaultMaxRecordBytes);
  explicit WebDatasetReader(TarReader tar, IssueCallback on_issue = {},
                            int64_t max_record_bytes = kDefaultMaxRecordBytes);

  // The next record; std::nullopt at the end of the shard. A corrupt archive throws dl::Error; since the end of a
  // sample is found by reading the next member's header, a damaged header throws before the sample ahead of it is
  // returned.
  std::optional<Record> next();
  // Key of the sample the last returned record came from.
  const std::string& key() const { return key_; }
  // Records returned so far, and samples skipped because they were not valid records.
  int64_t records() const { return records_; }
  int64_t skipped() const { return skipped_; }

 private:
  bool collect_sample();
  std::optional<Record> build_record(std::string& problem);
  void report(int64_t position, std::string message);

  struct Part {
    TarMember member;
    std::string key, extension;
  };
  std::optional<Part> next_part();
  const Part* find(const std::string& extension) const;
  std::optional<std::string> read_text(const Part& part, std::string& problem);

  TarReader tar_;
  IssueCallback on_issue_;
  uint64_t max_record_bytes_;
  std::optional<Part> lookahead_;               // first member of the next sample, already read
  std::vector<Part> parts_;                     // members of the current sample
  std::map<std::string, size_t> by_extension_;  // index into parts_
  std::string sample_key_;
  std::string key_;
  int64_t samples_ = 0;
  int64_t records_ = 0;
  int64_t skipped_ = 0;
};

// Samples (runs of members with the same key) in a shard, from one pass over its headers; the records a
// WebDatasetReader returns are at most this many (invalid samples are skipped).
int64_t count_webdataset_samples(const std::filesystem::path& path);

// Sample key and extension of a member name ("dir/abc.0.JPG" -> "dir/abc", "0.jpg"); false when the name has none.
bool split_webdataset_key(const std::string& member_name, std::string& key, std::string& extension);

// Tar-member references (format at the top of this file).
struct TarMemberRef {
  std::string tar_path;
  uint64_t offset = 0;
  uint64_t size = 0;
};
std::string make_tar_member_ref(const std::string& tar_path, uint64_t offset, uint64_t size);
std::optional<TarMemberRef> parse_tar_member_ref(const std::string& ref);
bool is_tar_member_ref(const std::string& ref);

// The bytes of an image source: a plain file, or a tar member given by its reference (checked against the tar's
// size and block alignment). A missing, unreadable or over-1-GiB source is a dl::Error naming it. Each call opens
// the file anew.
std::vector<uint8_t> read_image_source(const std::string& ref);

}  // namespace dl::train
