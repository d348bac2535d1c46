#include "train/webdataset.h"

#include <algorithm>
#include <array>
#include <charconv>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <string_view>
#include <system_error>
#include <utility>

#include "core/error.h"
#include "core/file.h"

namespace dl::train {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr uint64_t kBlock = 512;
// Data of a pax extended header or a GNU long name is read into memory; real ones are a few hundred bytes.
constexpr uint64_t kMaxExtensionData = uint64_t(1) << 20;
constexpr uint64_t kMaxImageBytes = uint64_t(1) << 30;

// Header layout (POSIX.1-1988 ustar, with the GNU fields this reader uses).
constexpr size_t kName = 0, kNameLen = 100;
constexpr size_t kSize = 124, kSizeLen = 12;
constexpr size_t kChecksum = 148, kChecksumLen = 8;
constexpr size_t kTypeflag = 156;
constexpr size_t kMagic = 257;  // "ustar\0" + version "00" (POSIX), or "ustar  \0" (GNU)
constexpr char kPosixMagic[8] = {'u', 's', 't', 'a', 'r', '\0', '0', '0'};
constexpr size_t kPrefix = 345, kPrefixLen = 155;
constexpr size_t kGnuSparseIsExtended = 482;     // in a GNU 'S' header
constexpr size_t kGnuSparseExtIsExtended = 504;  // in each GNU sparse extension block

uint64_t padded(uint64_t n) { return n + (kBlock - n % kBlock) % kBlock; }

// Random-access bytes of an archive.
class Source {
 public:
  virtual ~Source() = default;
  virtual uint64_t size() const = 0;
  // Reads exactly n bytes at offset; the caller has checked that offset + n <= size().
  virtual void read_at(uint64_t offset, void* out, size_t n) = 0;
};

class FileSource final : public Source {
 public:
  // `what` names the kind of file in messages ("tar file", "image file").
  FileSource(const fs::path& path, const std::string& what) : file_(open(path, what)) {}
  uint64_t size() const override { return file_.size(); }
  void read_at(uint64_t offset, void* out, size_t n) override { file_.read_at(offset, out, n); }

 private:
  static InputFile open(const fs::path& path, const std::string& what) {
    std::error_code ec;
    const fs::file_status status = fs::status(path, ec);
    DL_CHECK(status.type() != fs::file_type::not_found, "cannot open ", what, " ", path.string(), ": no such file");
    try {
      return InputFile(path.string());  // a FIFO or a device is refused here, without blocking on it
    } catch (const Error& e) {
      fail(what, ": ", e.what());
    }
  }
  InputFile file_;
};

class MemorySource final : public Source {
 public:
  explicit MemorySource(std::vector<uint8_t> bytes) : bytes_(std::move(bytes)) {}
  uint64_t size() const override { return bytes_.size(); }
  void read_at(uint64_t offset, void* out, size_t n) override {
    if (n) std::memcpy(out, bytes_.data() + offset, n);
  }

 private:
  std::vector<uint8_t> bytes_;
};

// A NUL-terminated string field (not terminated when it fills the field).
std::string field_string(const unsigned char* f, size_t n) {
  size_t len = 0;
  while (len < n && f[len] != 0) ++len;
  return std::string(reinterpret_cast<const char*>(f), len);
}

// Printable form of a numeric field for messages.
std::string field_text(const unsigned char* f, size_t n) {
  std::string out;
  for (size_t i = 0; i < n; ++i) {
    const unsigned char c = f[i];
    if (c >= 0x20 && c < 0x7F && c != '\\' && c != '"') {
      out.push_back(char(c));
    } else {
      static constexpr char kHex[] = "0123456789abcdef";
      out += "\\x";
      out.push_back(kHex[c >> 4]);
      out.push_back(kHex[c & 15]);
    }
  }
  return out;
}

// A numeric header field: GNU base-256 when the first byte has its top bit set (bit 6 being the sign), else octal
// digits after optional leading spaces, ended by a space, a NUL or the end of the field. A field of only spaces and
// NULs reads as 0, as Python's tarfile reads it. nullopt (with the reason) when it is not a non-negative number.
std::optional<uint64_t> parse_number(const unsigned char* f, size_t n, std::string& why) {
  if (f[0] & 0x80) {
    if (f[0] & 0x40) {
      why = "negative base-256 number";
      return std::nullopt;
    }
    uint64_t value = f[0] & 0x3F;
    for (size_t i = 1; i < n; ++i) {
      if (value > (std::numeric_limits<uint64_t>::max() >> 8)) {
        why = "base-256 number out of range";
        return std::nullopt;
      }
      value = (value << 8) | f[i];
    }
    return value;
  }
  size_t i = 0;
  while (i < n && f[i] == ' ') ++i;
  uint64_t value = 0;
  const size_t first_digit = i;
  while (i < n && f[i] >= '0' && f[i] <= '7') {
    if (value > (std::numeric_limits<uint64_t>::max() >> 3)) {
      why = "octal number out of range";
      return std::nullopt;
    }
    value = (value << 3) | uint64_t(f[i] - '0');
    ++i;
  }
  if (i == first_digit) {
    for (size_t j = i; j < n; ++j) {
      if (f[j] != 0 && f[j] != ' ') {
        why = "not an octal number";
        return std::nullopt;
      }
    }
    return 0;
  }
  if (i < n && f[i] != ' ' && f[i] != 0) {
    why = "not an octal number";
    return std::nullopt;
  }
  return value;
}

// Decimal digits only (pax values and reference fields), at most 19 of them so that they fit.
std::optional<uint64_t> parse_decimal(std::string_view s) {
  if (s.empty() || s.size() > 19) return std::nullopt;
  for (char c : s) {
    if (c < '0' || c > '9') return std::nullopt;
  }
  uint64_t value = 0;
  const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), value);
  if (ec != std::errc() || end != s.data() + s.size()) return std::nullopt;
  return value;
}

bool all_zero(const std::array<unsigned char, kBlock>& block) {
  return std::all_of(block.begin(), block.end(), [](unsigned char c) { return c == 0; });
}

std::string lowercase(std::string s) {
  for (char& c : s) {
    if (c >= 'A' && c <= 'Z') c = char(c - 'A' + 'a');
  }
  return s;
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------------
// TarReader
// ---------------------------------------------------------------------------------------------------------------
struct TarReader::Impl {
  std::string name;      // for messages
  std::string ref_path;  // for member references
  std::unique_ptr<Source> source;
  uint64_t size = 0;
  uint64_t pos = 0;  // offset of the next header; may pass `size` by less than a block (missing final padding)
  bool done = false;
  std::array<unsigned char, kBlock> block{};

  [[noreturn]] void error(uint64_t offset, const std::string& what) const { fail(name, ": byte ", offset, ": ", what); }

  uint64_t left(uint64_t offset) const { return offset >= size ? 0 : size - offset; }

  void read_block(uint64_t offset) { source->read_at(offset, block.data(), kBlock); }

  void check_checksum(uint64_t at) {
    std::string why;
    const auto stored = parse_number(block.data() + kChecksum, kChecksumLen, why);
    if (!stored) {
      error(at, at == 0 ? "not a tar archive (header checksum field: " + why + ")"
                        : "corrupt header: checksum field \"" + field_text(block.data() + kChecksum, kChecksumLen) +
                              "\" is " + why);
    }
    // The sum of all header bytes with the checksum field read as spaces; old tars summed signed chars.
    uint64_t unsigned_sum = 0;
    int64_t signed_sum = 0;
    for (size_t i = 0; i < kBlock; ++i) {
      const unsigned char c = (i >= kChecksum && i < kChecksum + kChecksumLen) ? ' ' : block[i];
      unsigned_sum += c;
      signed_sum += static_cast<signed char>(c);
    }
    if (*stored != unsigned_sum && int64_t(*stored) != signed_sum) {
      error(at, std::string(at == 0 ? "not a tar archive (bad header checksum: " : "corrupt header: bad checksum (") +
                    "stored " + std::to_string(*stored) + ", computed " + std::to_string(unsigned_sum) + ")");
    }
  }

  // The data of an extension header, bounded.
  std::string read_extension_data(uint64_t at, uint64_t data_at, uint64_t n, const char* what) {
    if (n > kMaxExtensionData) {
      error(at, std::string(what) + " of " + std::to_string(n) + " bytes is larger than the " +
                    std::to_string(kMaxExtensionData) + " bytes allowed");
    }
    std::string data(size_t(n), '\0');
    source->read_at(data_at, data.data(), data.size());
    return data;
  }

  struct Pax {
    std::optional<std::string> path;
    std::optional<uint64_t> size;
    bool sparse = false;
  };

  // Records "<length> <key>=<value>\n", the length counting the whole record in bytes.
  void parse_pax(const std::string& data, uint64_t data_at, Pax& pax) const {
    size_t p = 0;
    while (p < data.size()) {
      if (data.find_first_not_of('\0', p) == std::string::npos) break;  // NUL padding
      size_t q = p;
      while (q < data.size() && q - p < 19 && data[q] >= '0' && data[q] <= '9') ++q;
      if (q == p || q >= data.size() || data[q] != ' ') {
        error(data_at + p, "malformed pax extended header: a record does not start with \"<length> \"");
      }
      const uint64_t length = *parse_decimal(std::string_view(data).substr(p, q - p));
      if (length <= q - p + 1 || length > data.size() - p) {
        error(data_at + p, "malformed pax extended header: record length " + std::to_string(length) +
                               " is out of range (" + std::to_string(data.size() - p) + " bytes left)");
      }
      const size_t end = p + size_t(length);
      if (data[end - 1] != '\n') error(data_at + p, "malformed pax extended header: record does not end in a newline");
      const std::string_view record = std::string_view(data).substr(q + 1, end - 1 - (q + 1));
      const size_t eq = record.find('=');
      if (eq == std::string_view::npos || eq == 0) {
        error(data_at + p, "malformed pax extended header: record is not \"key=value\"");
      }
      const std::string_view key = record.substr(0, eq), value = record.substr(eq + 1);
      if (key == "path") {
        // An empty value cancels the keyword: the header's own name applies.
        pax.path = value.empty() ? std::nullopt : std::optional<std::string>(std::string(value));
      } else if (key == "size") {
        if (value.empty()) {
          pax.size.reset();
        } else {
          pax.size = parse_decimal(value);
          if (!pax.size) error(data_at + p, "pax extended header: size \"" + std::string(value) + "\" is not a number");
        }
      } else if (key.substr(0, 11) == "GNU.sparse.") {
        pax.sparse = true;
      }
      p = end;
    }
  }

  std::optional<TarMember> next() {
    // Extension headers ('x', 'L', 'K') describe the header that follows them.
    std::optional<std::string> long_name;
    Pax pax;
    bool extended = false;
    uint64_t first_header = pos;
    while (!done) {
      const uint64_t at = pos;
      const uint64_t remaining = left(at);
      if (remaining == 0) {
        if (extended) error(at, "the archive ends after an extension header, before the member it describes");
        done = true;
        break;
      }
      if (remaining < kBlock) {
        error(at, "truncated header: the file ends " + std::to_string(remaining) + " bytes into it");
      }
      read_block(at);
      if (all_zero(block)) {
        if (extended) error(at, "a zero block follows an extension header, where the member it describes belongs");
        // End of archive: a second zero block, or the end of the file (or a last partial block) after the first.
        if (remaining - kBlock < kBlock) {
          done = true;
          break;
        }
        read_block(at + kBlock);
        if (all_zero(block)) {
          done = true;
          break;
        }
        pos = at + kBlock;  // a lone zero block followed by a header: skipped, as GNU tar does
        first_header = pos;
        continue;
      }
      check_checksum(at);
      std::string why;
      const auto header_size = parse_number(block.data() + kSize, kSizeLen, why);
      if (!header_size) {
        error(at, "corrupt header: size field \"" + field_text(block.data() + kSize, kSizeLen) + "\" is " + why);
      }
      const char type = char(block[kTypeflag]);
      const bool is_extension = type == 'x' || type == 'g' || type == 'L' || type == 'K';
      if (!extended) first_header = at;
      const uint64_t size = (!is_extension && pax.size) ? *pax.size : *header_size;

      std::string name;
      if (!is_extension) {
        if (pax.path) {
          name = *pax.path;
        } else if (long_name) {
          name = *long_name;
        } else {
          name = field_string(block.data() + kName, kNameLen);
          const bool posix = std::memcmp(block.data() + kMagic, kPosixMagic, sizeof kPosixMagic) == 0;
          if (posix) {
            const std::string prefix = field_string(block.data() + kPrefix, kPrefixLen);
            if (!prefix.empty()) name = prefix + "/" + name;
          }
        }
      }

      // Where the member's data starts: after the header, and for a GNU sparse file after its extension blocks.
      uint64_t data_at = at + kBlock;
      if (type == 'S') {
        bool more = block[kGnuSparseIsExtended] != 0;
        while (more) {
          if (left(data_at) < kBlock) error(data_at, "truncated GNU sparse header");
          read_block(data_at);
          more = block[kGnuSparseExtIsExtended] != 0;
          data_at += kBlock;
        }
      }
      // Links, devices, fifos and directories have no data blocks whatever their size field says (POSIX), nor has
      // an old-style regular entry whose name ends in '/' (a directory); everything else has `size` bytes.
      const bool directory_like = type == '\0' && !name.empty() && name.back() == '/';
      const bool has_data = !(type >= '1' && type <= '6') && !directory_like;
      if (has_data && size > left(data_at)) {
        error(at, "member data of " + std::to_string(size) + " bytes runs past the end of the file (" +
                      std::to_string(left(data_at)) + " bytes left)");
      }
      const uint64_t next_header = has_data ? data_at + padded(size) : data_at;

      switch (type) {
        case 'L': {
          const std::string data = read_extension_data(at, data_at, size, "GNU long name");
          long_name = field_string(reinterpret_cast<const unsigned char*>(data.data()), data.size());
          extended = true;
          break;
        }
        case 'x': {
          const std::string data = read_extension_data(at, data_at, size, "pax extended header");
          parse_pax(data, data_at, pax);
          extended = true;
          break;
        }
        case 'K':  // GNU long link name: only links use it, and links are skipped
          extended = true;
          break;
        case 'g':  // pax global header: nothing in it concerns this reader
          break;
        case '0':
        case '\0':
        case '7':
          if (!directory_like && !pax.sparse) {
            pos = next_header;
            return TarMember{std::move(name), first_header, data_at, size};
          }
          [[fallthrough]];
        default:  // anything else is skipped, and consumes the extension headers before it
          long_name.reset();
          pax = Pax{};
          extended = false;
          break;
      }
      pos = next_header;
    }
    return std::nullopt;
  }
};

TarReader::TarReader(const fs::path& path) : impl_(std::make_unique<Impl>()) {
  impl_->name = path.string();
  std::error_code ec;
  const fs::path absolute = fs::absolute(path, ec);
  impl_->ref_path = ec ? path.string() : absolute.lexically_normal().string();
  impl_->source = std::make_unique<FileSource>(path, "tar file");
  impl_->size = impl_->source->size();
}

TarReader::TarReader(std::string name, std::vector<uint8_t> bytes) : impl_(std::make_unique<Impl>()) {
  impl_->name = std::move(name);
  impl_->ref_path = impl_->name;
  impl_->source = std::make_unique<MemorySource>(std::move(bytes));
  impl_->size = impl_->source->size();
}

TarReader::TarReader(TarReader&&) noexcept = default;
TarReader& TarReader::operator=(TarReader&&) noexcept = default;
TarReader::~TarReader() = default;

std::optional<TarMember> TarReader::next() { return impl_->next(); }

std::string TarReader::read(const TarMember& member) {
  Impl& s = *impl_;
  DL_CHECK(member.size <= s.left(member.data_offset), s.name, ": byte ", member.data_offset, ": member ", member.name,
           " of ", member.size, " bytes runs past the end of the file");
  DL_CHECK(member.size <= std::numeric_limits<size_t>::max() / 2, s.name, ": member ", member.name, " is too large");
  std::string data(size_t(member.size), '\0');
  s.source->read_at(member.data_offset, data.data(), data.size());
  return data;
}

const std::string& TarReader::name() const { return impl_->name; }
const std::string& TarReader::ref_path() const { return impl_->ref_path; }
uint64_t TarReader::size() const { return impl_->size; }

// ---------------------------------------------------------------------------------------------------------------
// Samples
// ---------------------------------------------------------------------------------------------------------------
bool split_webdataset_key(const std::string& member_name, std::string& key, std::string& extension) {
  const size_t slash = member_name.rfind('/');
  const size_t base = slash == std::string::npos ? 0 : slash + 1;
  const size_t dot = member_name.find('.', base);
  if (dot == std::string::npos || dot == base || dot + 1 == member_name.size()) return false;
  key = member_name.substr(0, dot);
  extension = lowercase(member_name.substr(dot + 1));
  return true;
}

WebDatasetReader::WebDatasetReader(const fs::path& path, IssueCallback on_issue, int64_t max_record_bytes)
    : WebDatasetReader(TarReader(path), std::move(on_issue), max_record_bytes) {}

WebDatasetReader::WebDatasetReader(TarReader tar, IssueCallback on_issue, int64_t max_record_bytes)
    : tar_(std::move(tar)), on_issue_(std::move(on_issue)), max_record_bytes_(uint64_t(max_record_bytes)) {
  DL_CHECK(max_record_bytes > 0, "the record limit must be positive, not ", max_record_bytes);
}

void WebDatasetReader::report(int64_t position, std::string message) {
  if (on_issue_) on_issue_(DataIssue{tar_.name(), position, std::move(message)});
}

std::optional<WebDatasetReader::Part> WebDatasetReader::next_part() {
  while (auto member = tar_.next()) {
    Part part;
    if (split_webdataset_key(member->name, part.key, part.extension)) {
      part.member = std::move(*member);
      return part;
    }
    report(samples_ + 1, "member \"" + member->name + "\" (byte " + std::to_string(member->header_offset) +
                             ") has no \"<key>.<extension>\" name; ignored");
  }
  return std::nullopt;
}

bool WebDatasetReader::collect_sample() {
  parts_.clear();
  if (!lookahead_) lookahead_ = next_part();
  if (!lookahead_) return false;
  sample_key_ = lookahead_->key;
  parts_.push_back(std::move(*lookahead_));
  lookahead_.reset();
  while (auto part = next_part()) {
    if (part->key != sample_key_) {
      lookahead_ = std::move(part);
      break;
    }
    parts_.push_back(std::move(*part));
  }
  ++samples_;
  return true;
}

const WebDatasetReader::Part* WebDatasetReader::find(const std::string& extension) const {
  const auto it = by_extension_.find(extension);
  return it == by_extension_.end() ? nullptr : &parts_[it->second];
}

std::optional<std::string> WebDatasetReader::read_text(const Part& part, std::string& problem) {
  // Captions (txt) and per-sample JSON are read into memory (MMC4 documents are a few kB); a longer member is
  // never read.
  if (part.member.size > max_record_bytes_) {
    problem = "member " + part.member.name + " is " + std::to_string(part.member.size) +
              " bytes, longer than the limit of " + std::to_string(max_record_bytes_) + " bytes (--max-record-bytes)";
    return std::nullopt;
  }
  return tar_.read(part.member);
}

std::optional<Record> WebDatasetReader::build_record(std::string& problem) {
  by_extension_.clear();
  for (size_t i = 0; i < parts_.size(); ++i) {
    const auto [it, inserted] = by_extension_.emplace(parts_[i].extension, i);
    if (!inserted) {
      problem = "two members with the extension \"" + parts_[i].extension + "\" (" + parts_[it->second].member.name +
                " and " + parts_[i].member.name + ")";
      return std::nullopt;
    }
  }
  const auto reference = [&](const Part& part) {
    return make_tar_member_ref(tar_.ref_path(), part.member.data_offset, part.member.size);
  };

  json meta;
  const Part* json_part = find("json");
  if (json_part != nullptr) {
    const auto text = read_text(*json_part, problem);
    if (!text) return std::nullopt;
    try {
      meta = json::parse(*text);
    } catch (const json::exception& e) {  // parse_error, and out_of_range for numbers like 1e999
      problem = "invalid JSON in " + json_part->member.name + ": " + e.what();
      return std::nullopt;
    }
    if (!meta.is_object()) {
      problem = json_part->member.name + " holds a JSON " + meta.type_name() + ", not an object";
      return std::nullopt;
    }
  }

  // An interleaved document: its images are members of the sample, named by extension.
  if (json_part != nullptr && meta.contains("text_list")) {
    InterleavedRecord record;
    try {
      record = parse_interleaved_record(meta, fs::path());
    } catch (const Error& e) {
      problem = json_part->member.name + ": " + e.what();
      return std::nullopt;
    }
    for (auto& image : record.images) {
      const Part* part = find(lowercase(image.path));
      if (part == nullptr) {
        problem = "image \"" + image.path + "\" of " + json_part->member.name + " is not in the sample (no member " +
                  sample_key_ + "." + image.path + ")";
        return std::nullopt;
      }
      image.path = reference(*part);
    }
    return Record(std::move(record));
  }

  // An image-text pair.
  static constexpr std::array<const char*, 5> kImageExtensions = {"jpg", "jpeg", "png", "webp", "bmp"};
  const Part* image = nullptr;
  for (const char* extension : kImageExtensions) {
    if (image == nullptr) image = find(extension);
  }
  if (image == nullptr) {
    problem = json_part != nullptr ? "no image member (jpg, jpeg, png, webp or bmp) and no \"text_list\" in its json"
                                   : "no image member (jpg, jpeg, png, webp or bmp)";
    return std::nullopt;
  }
  PairRecord record;
  record.image = reference(*image);
  if (const Part* txt = find("txt"); txt != nullptr) {
    auto text = read_text(*txt, problem);
    if (!text) return std::nullopt;
    const size_t last = text->find_last_not_of(" \t\r\n\v\f");
    text->erase(last == std::string::npos ? 0 : last + 1);
    record.caption = std::move(*text);
  } else if (json_part != nullptr) {
    const char* field = meta.contains("caption") ? "caption" : meta.contains("text") ? "text" : nullptr;
    if (field == nullptr) {
      problem = "no caption: no txt member, and " + json_part->member.name + " has no \"caption\" or \"text\" field";
      return std::nullopt;
    }
    const json& caption = meta.at(field);
    if (!caption.is_string()) {
      problem = "field \"" + std::string(field) + "\" of " + json_part->member.name + " must be a string, got " +
                caption.type_name();
      return std::nullopt;
    }
    record.caption = caption.get<std::string>();
  } else {
    problem = "no caption (no txt or json member)";
    return std::nullopt;
  }
  return Record(std::move(record));
}

std::optional<Record> WebDatasetReader::next() {
  while (collect_sample()) {
    std::string problem;
    std::optional<Record> record = build_record(problem);
    if (record) {
      key_ = sample_key_;
      ++records_;
      return record;
    }
    ++skipped_;
    report(samples_, sample_key_ + ": " + problem);
  }
  return std::nullopt;
}

int64_t count_webdataset_samples(const fs::path& path) {
  TarReader tar(path);
  int64_t samples = 0;
  std::string previous, key, extension;
  while (auto member = tar.next()) {
    if (!split_webdataset_key(member->name, key, extension)) continue;
    if (samples == 0 || key != previous) {
      ++samples;
      previous = key;
    }
  }
  return samples;
}

// ---------------------------------------------------------------------------------------------------------------
// Image sources
// ---------------------------------------------------------------------------------------------------------------
std::string make_tar_member_ref(const std::string& tar_path, uint64_t offset, uint64_t size) {
  return tar_path + "::" + std::to_string(offset) + ":" + std::to_string(size);
}

std::optional<TarMemberRef> parse_tar_member_ref(const std::string& ref) {
  const size_t sep = ref.rfind("::");
  if (sep == std::string::npos || sep == 0) return std::nullopt;
  const std::string_view tail = std::string_view(ref).substr(sep + 2);
  const size_t colon = tail.find(':');
  if (colon == std::string_view::npos) return std::nullopt;
  const auto offset = parse_decimal(tail.substr(0, colon));
  const auto size = parse_decimal(tail.substr(colon + 1));
  if (!offset || !size) return std::nullopt;
  return TarMemberRef{ref.substr(0, sep), *offset, *size};
}

bool is_tar_member_ref(const std::string& ref) { return parse_tar_member_ref(ref).has_value(); }

std::vector<uint8_t> read_image_source(const std::string& ref) {
  if (const auto member = parse_tar_member_ref(ref)) {
    FileSource tar(member->tar_path, "tar file");
    DL_CHECK(member->offset >= kBlock && member->offset % kBlock == 0, "image reference ", ref,
             ": the data offset is not at a tar block boundary after a header");
    DL_CHECK(member->offset <= tar.size() && member->size <= tar.size() - member->offset, "image reference ", ref,
             ": the member runs past the end of ", member->tar_path, " (", tar.size(), " bytes)");
    DL_CHECK(member->size <= kMaxImageBytes, "image reference ", ref, ": ", member->size,
             " bytes is too large for an image");
    std::vector<uint8_t> bytes(size_t(member->size));
    tar.read_at(member->offset, bytes.data(), bytes.size());
    return bytes;
  }
  FileSource file(ref, "image file");
  DL_CHECK(file.size() <= kMaxImageBytes, "image file ", ref, ": ", file.size(), " bytes is too large for an image");
  std::vector<uint8_t> bytes(size_t(file.size()));
  file.read_at(0, bytes.data(), bytes.size());
  return bytes;
}

}  // namespace dl::train
