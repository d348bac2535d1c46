// webdataset tar shards: the tar parser against Python's tarfile (tests/fixtures/webdataset, written by
// tools/fixtures/make_webdataset_fixtures.py: ustar with its prefix field, GNU long names, pax path/size records and
// global headers), samples grouped into pair / interleaved records with the bytes behind their tar-member references,
// image-less and otherwise invalid samples reported and skipped, truncated and corrupt shards failing with the file
// and byte offset, hand-made headers for what tarfile does not write (base-256 sizes, signed checksums, pax size
// overrides, lone zero blocks), and seeded random mutations of real shards, which must parse or raise dl::Error.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>

#include "core/error.h"
#include "io/image_file.h"
#include "test_util.h"
#include "train/webdataset.h"

namespace dl {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using test::error_of;
using train::DataIssue;
using train::InterleavedRecord;
using train::PairRecord;
using train::Record;
using train::TarMember;
using train::TarReader;
using train::WebDatasetReader;

const fs::path kDir = fs::path(DL_FIXTURE_DIR) / "webdataset";

std::string slurp(const fs::path& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

std::vector<uint8_t> bytes_of(const std::string& s) { return std::vector<uint8_t>(s.begin(), s.end()); }

const json& expected() {
  static const json doc = json::parse(slurp(kDir / "expected.json"));
  return doc;
}

// CRC-32 (the zlib / PNG polynomial), to compare member bytes with what Python's zlib.crc32 saw.
uint32_t crc32_of(const std::vector<uint8_t>& data) {
  uint32_t crc = 0xFFFFFFFFu;
  for (uint8_t byte : data) {
    crc ^= byte;
    for (int k = 0; k < 8; ++k) crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1u)));
  }
  return ~crc;
}

// A scratch directory removed at scope exit.
struct TempDir {
  fs::path path;
  explicit TempDir(const std::string& name)
      : path(fs::temp_directory_path() / ("dl_test_wds_" + name + "_" + std::to_string(getpid()))) {
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  fs::path write(const std::string& file, const std::vector<uint8_t>& content) const {
    std::ofstream f(path / file, std::ios::binary);
    f.write(reinterpret_cast<const char*>(content.data()), std::streamsize(content.size()));
    return path / file;
  }
};

// Everything a reader gives for a shard: records, their keys, and the issues reported.
struct ReadResult {
  std::vector<Record> records;
  std::vector<std::string> keys;
  std::vector<DataIssue> issues;
  int64_t skipped = 0;
};

ReadResult read_all(WebDatasetReader reader) {
  ReadResult out;
  while (auto r = reader.next()) {
    out.records.push_back(std::move(*r));
    out.keys.push_back(reader.key());
  }
  out.skipped = reader.skipped();
  return out;
}

ReadResult read_shard(const fs::path& path) {
  auto issues = std::make_shared<std::vector<DataIssue>>();
  WebDatasetReader reader(path, [issues](const DataIssue& i) { issues->push_back(i); });
  ReadResult out = read_all(std::move(reader));
  out.issues = *issues;
  return out;
}

ReadResult read_bytes(const std::vector<uint8_t>& bytes) {
  auto issues = std::make_shared<std::vector<DataIssue>>();
  WebDatasetReader reader(TarReader("mem.tar", bytes), [issues](const DataIssue& i) { issues->push_back(i); });
  ReadResult out = read_all(std::move(reader));
  out.issues = *issues;
  return out;
}

std::string absolute_of(const fs::path& p) { return fs::absolute(p).lexically_normal().string(); }

// An image reference checked against an expected.json image entry: where it points, the bytes behind it, and for
// the PNGs the fixture script generated, the decoded pixels.
void check_image(const std::string& ref, const json& want, const fs::path& shard) {
  SCOPED_TRACE(want["member"].get<std::string>());
  ASSERT_TRUE(train::is_tar_member_ref(ref)) << ref;
  const auto parsed = train::parse_tar_member_ref(ref);
  ASSERT_TRUE(parsed.has_value());
  EXPECT_EQ(parsed->tar_path, absolute_of(shard));
  EXPECT_EQ(parsed->offset, want["offset"].get<uint64_t>());
  EXPECT_EQ(parsed->size, want["size"].get<uint64_t>());
  const std::vector<uint8_t> bytes = train::read_image_source(ref);
  ASSERT_EQ(bytes.size(), want["size"].get<size_t>());
  EXPECT_EQ(crc32_of(bytes), want["crc32"].get<uint32_t>());
  if (want.contains("same_as")) {
    EXPECT_EQ(bytes, bytes_of(slurp(fs::path(DL_FIXTURE_DIR) / want["same_as"].get<std::string>())));
  }
  if (want.contains("pixels")) {
    const io::Image img = io::decode_image(bytes.data(), bytes.size(), ref);
    EXPECT_EQ(img.width, want["width"].get<int64_t>());
    EXPECT_EQ(img.height, want["height"].get<int64_t>());
    EXPECT_EQ(img.rgb, want["pixels"].get<std::vector<uint8_t>>());
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Fixture shards against Python's tarfile
// ---------------------------------------------------------------------------------------------------------------
TEST(WebDataset, TarMembersMatchPythonTarfile) {
  int shards = 0;
  for (const auto& [name, want] : expected()["shards"].items()) {
    SCOPED_TRACE(name);
    TarReader tar(kDir / name);
    std::vector<TarMember> got;
    while (auto m = tar.next()) got.push_back(*m);
    const json& members = want["members"];
    ASSERT_EQ(got.size(), members.size());
    for (size_t i = 0; i < got.size(); ++i) {
      EXPECT_EQ(got[i].name, members[i]["name"].get<std::string>());
      EXPECT_EQ(got[i].header_offset, members[i]["offset"].get<uint64_t>()) << got[i].name;
      EXPECT_EQ(got[i].data_offset, members[i]["offset_data"].get<uint64_t>()) << got[i].name;
      EXPECT_EQ(got[i].size, members[i]["size"].get<uint64_t>()) << got[i].name;
    }
    EXPECT_FALSE(tar.next().has_value());  // stays at the end
    EXPECT_EQ(train::count_webdataset_samples(kDir / name), want["sample_count"].get<int64_t>());
    ++shards;
  }
  EXPECT_EQ(shards, 4);
}

TEST(WebDataset, RecordsMatchPythonReference) {
  for (const auto& [name, want] : expected()["shards"].items()) {
    SCOPED_TRACE(name);
    const fs::path shard = kDir / name;
    const ReadResult got = read_shard(shard);
    size_t r = 0;
    int64_t skipped = 0;
    for (const json& sample : want["samples"]) {
      const std::string key = sample["key"].get<std::string>();
      SCOPED_TRACE(key);
      const std::string kind = sample["kind"].get<std::string>();
      if (kind == "skipped") {
        ++skipped;
        const bool reported = std::any_of(got.issues.begin(), got.issues.end(), [&](const DataIssue& i) {
          return i.file == shard.string() && i.message.rfind(key + ": ", 0) == 0;
        });
        EXPECT_TRUE(reported) << "no issue reported for " << key;
        continue;
      }
      ASSERT_LT(r, got.records.size());
      EXPECT_EQ(got.keys[r], key);
      const Record& record = got.records[r++];
      if (kind == "pair") {
        ASSERT_TRUE(std::holds_alternative<PairRecord>(record));
        const auto& pair = std::get<PairRecord>(record);
        EXPECT_EQ(pair.caption, sample["caption"].get<std::string>());
        check_image(pair.image, sample["image"], shard);
      } else {
        ASSERT_EQ(kind, "interleaved");
        ASSERT_TRUE(std::holds_alternative<InterleavedRecord>(record));
        const auto& doc = std::get<InterleavedRecord>(record);
        EXPECT_EQ(doc.text_list, sample["text_list"].get<std::vector<std::string>>());
        if (sample["instruction"].is_null()) {
          EXPECT_FALSE(doc.instruction.has_value());
        } else {
          EXPECT_EQ(doc.instruction, sample["instruction"].get<std::string>());
        }
        ASSERT_EQ(doc.images.size(), sample["images"].size());
        for (size_t i = 0; i < doc.images.size(); ++i) {
          const json& image = sample["images"][i];
          EXPECT_EQ(doc.images[i].matched_text_index, image["matched_text_index"].get<int64_t>());
          if (image["matched_sim"].is_null()) {
            EXPECT_FALSE(doc.images[i].matched_sim.has_value());
          } else {
            EXPECT_EQ(doc.images[i].matched_sim, image["matched_sim"].get<double>());
          }
          check_image(doc.images[i].path, image, shard);
        }
      }
    }
    EXPECT_EQ(r, got.records.size());
    EXPECT_EQ(got.skipped, skipped);
  }
}

TEST(WebDataset, SampleWithoutImageIsReportedAndSkipped) {
  const fs::path shard = kDir / "pairs.tar";
  const ReadResult got = read_shard(shard);
  EXPECT_EQ(got.records.size(), 5u);
  EXPECT_EQ(got.skipped, 1);
  ASSERT_EQ(got.issues.size(), 2u);
  // The third sample: "<file>:<position in the shard>: <key>: ..."
  EXPECT_EQ(got.issues[0].file, shard.string());
  EXPECT_EQ(got.issues[0].line, 3);
  EXPECT_EQ(got.issues[0].message.rfind("shard/000002: no image member", 0), 0u) << got.issues[0].message;
  // A member without an extension belongs to no sample: reported, not counted as a skipped sample.
  EXPECT_NE(got.issues[1].message.find("\"shard/README\""), std::string::npos) << got.issues[1].message;
  // Reading went on after the skipped sample.
  EXPECT_EQ(got.keys[2], "shard/000003");
}

TEST(WebDataset, GnuLongNamesAndPaxPathsAreFound) {
  {
    TarReader tar(kDir / "longname.tar");
    auto m = tar.next();
    ASSERT_TRUE(m.has_value());
    EXPECT_GT(m->name.size(), 100u);
    EXPECT_EQ(m->name.substr(m->name.size() - 35), "/sample_with_a_rather_long_name.png");
    EXPECT_EQ(m->header_offset, 0u);  // the 'L' header
    EXPECT_GT(m->data_offset, 512u);
  }
  {
    const ReadResult got = read_shard(kDir / "pax.tar");
    ASSERT_EQ(got.records.size(), 2u);
    EXPECT_GT(got.keys[0].size(), 255u);
    EXPECT_EQ(got.keys[1], "pax/caf\xc3\xa9");
    EXPECT_EQ(std::get<PairRecord>(got.records[1]).caption, "Un caf\xc3\xa9 cr\xc3\xa8me.");
  }
  {
    // The ustar prefix field.
    const ReadResult got = read_shard(kDir / "pairs.tar");
    ASSERT_EQ(got.keys.size(), 5u);
    EXPECT_GT(got.keys[4].size(), 100u);
    EXPECT_EQ(std::get<PairRecord>(got.records[4]).caption, "Stored with the ustar prefix field.");
  }
}

TEST(WebDataset, BrokenShardsFailNamingFileAndOffset) {
  int n = 0;
  for (const auto& [name, want] : expected()["broken"].items()) {
    SCOPED_TRACE(name);
    const fs::path shard = kDir / name;
    const std::string where = shard.string() + ": byte " + std::to_string(want["error_offset"].get<uint64_t>()) + ": ";
    WebDatasetReader reader(shard);
    for (int64_t i = 0; i < want["records_before"].get<int64_t>(); ++i) ASSERT_TRUE(reader.next().has_value());
    const std::string err = error_of([&] { reader.next(); });
    EXPECT_NE(err.find(where), std::string::npos) << err;
    EXPECT_NE(err.find(want["message"].get<std::string>()), std::string::npos) << err;
    // The sample count fails the same way.
    EXPECT_NE(error_of([&] { train::count_webdataset_samples(shard); }).find(where), std::string::npos);
    ++n;
  }
  EXPECT_EQ(n, 3);
}

// ---------------------------------------------------------------------------------------------------------------
// Hand-made archives: what Python's tarfile does not write
// ---------------------------------------------------------------------------------------------------------------
using Header = std::array<uint8_t, 512>;
constexpr char kPosixMagic[8] = {'u', 's', 't', 'a', 'r', '\0', '0', '0'};  // magic + version

void put_octal(Header& h, size_t at, size_t len, uint64_t value) {
  std::string digits(len - 1, '0');
  for (size_t i = len - 1; i-- > 0; value >>= 3) digits[i] = char('0' + (value & 7));
  std::memcpy(h.data() + at, digits.data(), len - 1);
  h[at + len - 1] = 0;
}

void fix_checksum(Header& h, bool signed_sum = false) {
  std::memset(h.data() + 148, ' ', 8);
  int64_t sum = 0;
  for (uint8_t c : h) sum += signed_sum ? int64_t(static_cast<int8_t>(c)) : int64_t(c);
  char text[16];
  std::snprintf(text, sizeof text, "%06o", unsigned(sum & 0777777));
  std::memcpy(h.data() + 148, text, 6);
  h[154] = 0;
  h[155] = ' ';
}

Header make_header(const std::string& name, char type, uint64_t size) {
  Header h{};
  std::memcpy(h.data(), name.data(), std::min<size_t>(name.size(), 100));
  put_octal(h, 100, 8, 0644);
  put_octal(h, 108, 8, 0);
  put_octal(h, 116, 8, 0);
  put_octal(h, 124, 12, size);
  put_octal(h, 136, 12, 1700000000);
  h[156] = uint8_t(type);
  std::memcpy(h.data() + 257, kPosixMagic, 8);
  fix_checksum(h);
  return h;
}

struct TarBuilder {
  std::vector<uint8_t> bytes;
  TarBuilder& header(const Header& h) {
    bytes.insert(bytes.end(), h.begin(), h.end());
    return *this;
  }
  TarBuilder& data(const std::string& d) {
    bytes.insert(bytes.end(), d.begin(), d.end());
    bytes.resize((bytes.size() + 511) / 512 * 512, 0);
    return *this;
  }
  TarBuilder& file(const std::string& name, const std::string& d) {
    return header(make_header(name, '0', d.size())).data(d);
  }
  TarBuilder& pax(const std::string& records) {
    return header(make_header("././@PaxHeader", 'x', records.size())).data(records);
  }
  TarBuilder& zeros(size_t blocks) {
    bytes.resize(bytes.size() + 512 * blocks, 0);
    return *this;
  }
};

// "<length> key=value\n" with the length counting itself.
std::string pax_record(const std::string& key, const std::string& value) {
  const size_t body = key.size() + value.size() + 3;  // ' ', '=', '\n'
  size_t len = body + 1;
  while (std::to_string(len).size() + body != len) ++len;
  return std::to_string(len) + " " + key + "=" + value + "\n";
}

std::vector<TarMember> members_of(const std::vector<uint8_t>& bytes) {
  TarReader tar("mem.tar", bytes);
  std::vector<TarMember> out;
  while (auto m = tar.next()) out.push_back(*m);
  return out;
}

std::string tar_error(const std::vector<uint8_t>& bytes) {
  return error_of([&] { members_of(bytes); });
}

TEST(WebDatasetTar, Base256SizeAndSignedChecksum) {
  TarBuilder t;
  Header h = make_header("a.txt", '0', 0);
  std::memset(h.data() + 124, 0, 12);
  h[124] = 0x80;  // GNU base-256: 0x80, then the size big-endian in the other 11 bytes
  h[135] = 5;
  fix_checksum(h);
  t.header(h).data("hello");
  // A name with bytes >= 0x80, checksummed the way old tars summed signed chars.
  Header s = make_header("caf\xc3\xa9.txt", '0', 3);
  fix_checksum(s, /*signed_sum=*/true);
  t.header(s).data("abc").zeros(2);
  const auto members = members_of(t.bytes);
  ASSERT_EQ(members.size(), 2u);
  EXPECT_EQ(members[0].size, 5u);
  EXPECT_EQ(members[1].name, "caf\xc3\xa9.txt");
  TarReader tar("mem.tar", t.bytes);
  EXPECT_EQ(tar.read(*tar.next()), "hello");
  EXPECT_EQ(tar.read(*tar.next()), "abc");
}

TEST(WebDatasetTar, PaxSizeOverridesHeaderAndGlobalHeadersAreSkipped) {
  TarBuilder t;
  t.header(make_header("pax_global_header", 'g', 30)).data(pax_record("path", "ignored/global.txt") + "\n\n\n");
  t.pax(pax_record("size", "7") + pax_record("path", "dir/from_pax.txt"));
  t.header(make_header("short.txt", '0', 0)).data("1234567");
  t.file("after.txt", "x").zeros(2);
  const auto m = members_of(t.bytes);
  ASSERT_EQ(m.size(), 2u);
  EXPECT_EQ(m[0].name, "dir/from_pax.txt");
  EXPECT_EQ(m[0].size, 7u);
  EXPECT_EQ(m[0].header_offset, 1024u);  // its pax header, after the global one
  EXPECT_EQ(m[0].data_offset, 2560u);
  EXPECT_EQ(m[1].name, "after.txt");  // pax values apply to one member only
  EXPECT_EQ(m[1].size, 1u);
}

TEST(WebDatasetTar, ZeroBlocksAndEndOfFile) {
  // A lone zero block between members is skipped; two end the archive, and whatever follows them is ignored.
  TarBuilder t;
  t.file("a.txt", "a").zeros(1).file("b.txt", "b").zeros(2).file("c.txt", "c");
  auto m = members_of(t.bytes);
  ASSERT_EQ(m.size(), 2u);
  EXPECT_EQ(m[1].name, "b.txt");
  // No end blocks at all, one zero block then the end of the file, and an empty file.
  EXPECT_EQ(members_of(TarBuilder().file("a.txt", "a").bytes).size(), 1u);
  EXPECT_EQ(members_of(TarBuilder().file("a.txt", "a").zeros(1).bytes).size(), 1u);
  EXPECT_EQ(members_of({}).size(), 0u);
  // Directories and links are skipped; their size field does not move the reader (POSIX: no data blocks).
  TarBuilder d;
  d.header(make_header("dir/", '5', 0)).header(make_header("link.txt", '2', 0)).file("dir/f.txt", "f").zeros(2);
  m = members_of(d.bytes);
  ASSERT_EQ(m.size(), 1u);
  EXPECT_EQ(m[0].name, "dir/f.txt");
}

TEST(WebDatasetTar, CorruptHeadersNameTheOffset) {
  TarBuilder ok;
  ok.file("a.txt", "a");
  const size_t second = ok.bytes.size();  // 1024
  // Not a number in the size field (checksum fixed so that the size is what fails).
  {
    TarBuilder t = ok;
    Header h = make_header("b.txt", '0', 1);
    std::memcpy(h.data() + 124, "12x4", 4);
    fix_checksum(h);
    const std::string err = tar_error(t.header(h).data("b").bytes);
    EXPECT_NE(err.find("mem.tar: byte 1024: corrupt header: size field"), std::string::npos) << err;
  }
  // A negative base-256 size, and an absurd one.
  {
    TarBuilder t = ok;
    Header h = make_header("b.txt", '0', 0);
    std::memset(h.data() + 124, 0xFF, 12);
    fix_checksum(h);
    EXPECT_NE(tar_error(t.header(h).bytes).find("byte 1024: corrupt header: size field"), std::string::npos);
    std::memset(h.data() + 124, 0, 12);
    h[124] = 0x80;
    h[128] = 0x7F;  // about 2^63 bytes
    fix_checksum(h);
    TarBuilder u = ok;
    std::string err = tar_error(u.header(h).bytes);
    EXPECT_NE(err.find("byte 1024: member data of 9151314442816847872 bytes runs past the end of the file"),
              std::string::npos)
        << err;
    h[127] = 1;  // over 2^64
    fix_checksum(h);
    TarBuilder v = ok;
    err = tar_error(v.header(h).bytes);
    EXPECT_NE(err.find("byte 1024: corrupt header: size field"), std::string::npos) << err;
    EXPECT_NE(err.find("out of range"), std::string::npos) << err;
  }
  // A bad checksum, and a file that is not a tar archive at all.
  {
    TarBuilder t = ok;
    Header h = make_header("b.txt", '0', 1);
    h[0] = 'c';
    const std::string err = tar_error(t.header(h).data("b").bytes);
    EXPECT_NE(err.find("byte 1024: corrupt header: bad checksum"), std::string::npos) << err;
    const std::string png = slurp(fs::path(DL_FIXTURE_DIR) / "images" / "files" / "rgba.png");
    EXPECT_NE(tar_error(bytes_of(png)).find("mem.tar: byte 0: not a tar archive"), std::string::npos);
  }
  // Malformed pax records, an oversized GNU long name, an extension header with nothing after it.
  {
    TarBuilder t = ok;
    std::string err = tar_error(t.pax("99 path=x\n").file("b.txt", "b").bytes);
    EXPECT_NE(err.find("byte " + std::to_string(second + 512) + ": malformed pax"), std::string::npos) << err;
    TarBuilder u = ok;
    err = tar_error(u.pax("0 path=x\n").file("b.txt", "b").bytes);
    EXPECT_NE(err.find("malformed pax"), std::string::npos) << err;
    TarBuilder v = ok;
    err = tar_error(v.pax(pax_record("size", "12q")).file("b.txt", "b").bytes);
    EXPECT_NE(err.find("size \"12q\" is not a number"), std::string::npos) << err;
    TarBuilder w = ok;
    w.header(make_header("././@LongLink", 'L', (2u << 20))).zeros(4096 + 1);
    err = tar_error(w.bytes);
    EXPECT_NE(err.find("byte 1024: GNU long name of"), std::string::npos) << err;
    TarBuilder x = ok;
    err = tar_error(x.pax(pax_record("path", "y")).bytes);
    EXPECT_NE(err.find("ends after an extension header"), std::string::npos) << err;
  }
  // Truncated in a header.
  {
    TarBuilder t = ok;
    t.bytes.resize(second + 100, 'x');
    EXPECT_NE(tar_error(t.bytes).find("byte 1024: truncated header"), std::string::npos);
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Samples
// ---------------------------------------------------------------------------------------------------------------
TEST(WebDataset, InvalidSamplesAreReportedAndSkipped) {
  TarBuilder t;
  t.file("a.png", "P").file("a.png", "Q").file("a.txt", "dup");               // duplicate extension
  t.file("b.png", "P").file("b.json", "{not json");                           // invalid JSON
  t.file("c.png", "P").file("c.json", "{\"caption\": 3}");                    // caption not a string
  t.file("d.png", "P").file("d.json", "[1]");                                 // JSON not an object
  t.file("e.json", "{\"text_list\": [\"x\"], \"images\": 4}");                // interleaved with bad fields
  t.file("f.png", "P");                                                       // no caption
  t.file("h.png", "P").file("h.json", "{\"caption\": \"x\", \"n\": 1e999}");  // a number JSON cannot hold
  t.file("g.PnG", "P").file("g.TXT", "caption \t\n").zeros(2);                // fine
  const ReadResult got = read_bytes(t.bytes);
  ASSERT_EQ(got.records.size(), 1u);
  EXPECT_EQ(got.keys[0], "g");
  EXPECT_EQ(std::get<PairRecord>(got.records[0]).caption, "caption");
  EXPECT_EQ(got.skipped, 7);
  ASSERT_EQ(got.issues.size(), 7u);
  const std::vector<std::string> want = {"a: two members with the extension \"png\"",
                                         "b: invalid JSON in b.json",
                                         "c: field \"caption\" of c.json must be a string",
                                         "d: d.json holds a JSON array",
                                         "e: e.json: field \"images\" must be an array",
                                         "f: no caption",
                                         "h: invalid JSON in h.json"};
  for (size_t i = 0; i < want.size(); ++i) {
    EXPECT_EQ(got.issues[i].message.rfind(want[i], 0), 0u) << got.issues[i].message;
    EXPECT_EQ(got.issues[i].line, int64_t(i + 1));
    EXPECT_EQ(got.issues[i].file, "mem.tar");
  }
}

// A caption or JSON member over the record limit makes its sample skipped (the member is never read), reported
// naming the limit, and counted; the next sample is read as usual.
TEST(WebDataset, TextMembersOverTheRecordLimitAreSkipped) {
  TarBuilder t;
  t.file("a.png", "P").file("a.txt", std::string(101, 'x'));
  t.file("b.png", "P").file("b.json", "{\"caption\": \"" + std::string(200, 'y') + "\"}");
  t.file("c.png", "P").file("c.txt", std::string(100, 'z')).zeros(2);
  std::vector<DataIssue> issues;
  WebDatasetReader reader(TarReader("mem.tar", t.bytes), [&](const DataIssue& i) { issues.push_back(i); }, 100);
  const ReadResult got = read_all(std::move(reader));
  ASSERT_EQ(got.records.size(), 1u);
  EXPECT_EQ(std::get<PairRecord>(got.records[0]).caption, std::string(100, 'z'));
  EXPECT_EQ(got.skipped, 2);
  ASSERT_EQ(issues.size(), 2u);
  EXPECT_EQ(issues[0].message, "a: member a.txt is 101 bytes, longer than the limit of 100 bytes (--max-record-bytes)");
  EXPECT_EQ(issues[1].message, "b: member b.json is 215 bytes, longer than the limit of 100 bytes (--max-record-bytes)");
  EXPECT_EQ(issues[1].line, 2);
}

TEST(WebDataset, KeysAndRuns) {
  std::string key, ext;
  EXPECT_TRUE(train::split_webdataset_key("dir.v2/abc.0.JPG", key, ext));
  EXPECT_EQ(key, "dir.v2/abc");
  EXPECT_EQ(ext, "0.jpg");
  EXPECT_FALSE(train::split_webdataset_key("dir/README", key, ext));
  EXPECT_FALSE(train::split_webdataset_key("dir/.hidden", key, ext));
  EXPECT_FALSE(train::split_webdataset_key("dir/a.", key, ext));
  // A key that comes back after another one starts a new sample.
  TarBuilder t;
  t.file("a.png", "P").file("a.txt", "one").file("b.png", "P").file("b.txt", "two").file("a.jpg", "J");
  t.file("a.json", "{\"text\": \"three\"}").zeros(2);
  const ReadResult got = read_bytes(t.bytes);
  ASSERT_EQ(got.records.size(), 3u);
  EXPECT_EQ(got.keys, (std::vector<std::string>{"a", "b", "a"}));
  EXPECT_EQ(std::get<PairRecord>(got.records[2]).caption, "three");
  TempDir dir("runs");
  EXPECT_EQ(train::count_webdataset_samples(dir.write("runs.tar", t.bytes)), 3);
}

TEST(WebDataset, InterleavedImagesMustBeInTheSample) {
  TarBuilder t;
  t.file("doc.json", R"({"text_list": ["a", "b"], "image_info": [{"image_name": "1.png", "matched_text_index": 1}]})");
  t.file("doc.0.png", "P").zeros(2);
  const ReadResult got = read_bytes(t.bytes);
  EXPECT_TRUE(got.records.empty());
  ASSERT_EQ(got.issues.size(), 1u);
  EXPECT_NE(got.issues[0].message.find("doc: image \"1.png\" of doc.json is not in the sample"), std::string::npos)
      << got.issues[0].message;
}

// ---------------------------------------------------------------------------------------------------------------
// References and image sources
// ---------------------------------------------------------------------------------------------------------------
TEST(WebDataset, TarMemberReferences) {
  const std::string ref = train::make_tar_member_ref("/data/a::b/shard.tar", 1536, 42);
  EXPECT_EQ(ref, "/data/a::b/shard.tar::1536:42");
  const auto parsed = train::parse_tar_member_ref(ref);
  ASSERT_TRUE(parsed.has_value());
  EXPECT_EQ(parsed->tar_path, "/data/a::b/shard.tar");
  EXPECT_EQ(parsed->offset, 1536u);
  EXPECT_EQ(parsed->size, 42u);
  for (const char* not_ref : {"/images/a.png", "a.tar::12", "a.tar::12:", "a.tar::x:1", "a.tar::1:2:3", "::1:2",
                              "a.tar:1:2", "a.tar::-1:2", "a.tar::99999999999999999999:1"}) {
    EXPECT_FALSE(train::is_tar_member_ref(not_ref)) << not_ref;
  }

  const fs::path photo = fs::path(DL_FIXTURE_DIR) / "images" / "files" / "photo.jpg";
  EXPECT_EQ(train::read_image_source(photo.string()), bytes_of(slurp(photo)));
  std::string err = error_of([] { train::read_image_source("/no/such/picture.png"); });
  EXPECT_NE(err.find("cannot open image file /no/such/picture.png: no such file"), std::string::npos) << err;
  err = error_of([] { train::read_image_source(DL_FIXTURE_DIR); });
  EXPECT_NE(err.find("not a regular file"), std::string::npos) << err;

  const std::string shard = absolute_of(kDir / "pairs.tar");
  const uint64_t size = fs::file_size(kDir / "pairs.tar");
  err = error_of([&] { train::read_image_source(train::make_tar_member_ref(shard, size - 512, 1024)); });
  EXPECT_NE(err.find("runs past the end of " + shard), std::string::npos) << err;
  err = error_of([&] { train::read_image_source(train::make_tar_member_ref(shard, 513, 1)); });
  EXPECT_NE(err.find("not at a tar block boundary"), std::string::npos) << err;
  err = error_of([&] { train::read_image_source(train::make_tar_member_ref(shard + ".gone", 512, 1)); });
  EXPECT_NE(err.find("cannot open tar file " + shard + ".gone"), std::string::npos) << err;
  EXPECT_NE(error_of([] { WebDatasetReader("/no/such/shard.tar"); }).find("/no/such/shard.tar"), std::string::npos);
}

// ---------------------------------------------------------------------------------------------------------------
// Mutations: every damaged shard parses or raises dl::Error
// ---------------------------------------------------------------------------------------------------------------
TEST(WebDataset, RandomMutationsNeverCrash) {
  const std::vector<std::vector<uint8_t>> originals = {
      bytes_of(slurp(kDir / "pairs.tar")), bytes_of(slurp(kDir / "interleaved.tar")), bytes_of(slurp(kDir / "pax.tar")),
      bytes_of(slurp(kDir / "longname.tar"))};
  std::mt19937_64 rng(20240611);
  TempDir dir("mutations");
  int parsed = 0, failed = 0;
  for (int trial = 0; trial < 400; ++trial) {
    std::vector<uint8_t> b = originals[size_t(trial) % originals.size()];
    const int kind = int(rng() % 4);
    if (kind == 0) {  // random bytes anywhere (mostly caught by checksums)
      for (int k = 1 + int(rng() % 8); k > 0; --k) b[rng() % b.size()] = uint8_t(rng());
    } else if (kind == 1) {  // a header field, with the checksum fixed afterwards so that parsing goes deeper
      std::vector<size_t> headers;
      {
        TarReader tar("orig", b);
        while (auto m = tar.next()) headers.push_back(m->data_offset - 512);
      }
      const size_t h = headers[rng() % headers.size()];
      static constexpr size_t kFields[] = {0, 124, 124, 130, 135, 156, 257, 345};
      const size_t at = h + kFields[rng() % std::size(kFields)] + rng() % 4;
      b[at] = (rng() % 2) ? uint8_t(rng()) : uint8_t("0123456789 \x80\xff\0xgL5"[rng() % 16]);
      Header hdr;
      std::memcpy(hdr.data(), b.data() + h, 512);
      fix_checksum(hdr, rng() % 2 == 0);
      std::memcpy(b.data() + h, hdr.data(), 512);
    } else if (kind == 2) {  // member data (JSON, captions, pax records)
      for (int k = 1 + int(rng() % 4); k > 0; --k) b[rng() % b.size()] = uint8_t("{}[]\":,0 \n=x"[rng() % 12]);
    } else {  // truncated
      b.resize(rng() % b.size());
    }
    try {
      const bool via_file = trial % 10 == 0;
      const ReadResult got = via_file ? read_shard(dir.write("m.tar", b)) : read_bytes(b);
      if (via_file) {  // the references of a damaged shard still read within bounds, or fail cleanly
        for (const Record& r : got.records) {
          if (const auto* pair = std::get_if<PairRecord>(&r)) {
            try {
              (void)train::read_image_source(pair->image);
            } catch (const Error&) {
            }
          }
        }
      }
      ++parsed;
    } catch (const Error&) {
      ++failed;
    }
  }
  EXPECT_EQ(parsed + failed, 400);
  EXPECT_GT(parsed, 0);
  EXPECT_GT(failed, 0);
}

}  // namespace
}  // namespace dl
