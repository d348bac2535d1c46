#include "io/zip.h"

#include <zlib.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "core/error.h"

namespace dl::io {

namespace {

class Reader {
 public:
  Reader(const unsigned char* base, uint64_t size, const std::string& what) : base_(base), size_(size), what_(what) {}
  void need(uint64_t at, uint64_t n, const char* field) const {
    DL_CHECK(at <= size_ && n <= size_ - at, what_, ": ", field, " at byte ", at, " runs past the end of the ",
             size_, "-byte archive");
  }
  uint64_t le(uint64_t at, int bytes, const char* field) const {
    need(at, uint64_t(bytes), field);
    uint64_t v = 0;
    for (int i = bytes - 1; i >= 0; --i) v = (v << 8) | base_[at + uint64_t(i)];
    return v;
  }
  const unsigned char* at(uint64_t off) const { return base_ + off; }

 private:
  const unsigned char* base_;
  uint64_t size_;
  const std::string& what_;
};

constexpr uint32_t kEocd = 0x06054b50, kEocd64 = 0x06064b50, kEocd64Locator = 0x07064b50;
constexpr uint32_t kCentral = 0x02014b50, kLocal = 0x04034b50;

}  // namespace

ZipArchive::ZipArchive(std::shared_ptr<Storage> file, std::string what) : file_(std::move(file)), what_(std::move(what)) {
  const uint64_t size = file_->size();
  const auto* base = static_cast<const unsigned char*>(file_->data());
  Reader r(base, size, what_);
  DL_CHECK(size >= 22, what_, ": ", size, " bytes is too short to be a zip archive");
  // The end-of-central-directory record sits in the last 22 + 65535 bytes (after an optional comment).
  uint64_t eocd = UINT64_MAX;
  const uint64_t lowest = size >= 22 + 65535 ? size - 22 - 65535 : 0;
  for (uint64_t p = size - 22 + 1; p-- > lowest;) {
    if (r.le(p, 4, "signature") == kEocd) {
      eocd = p;
      break;
    }
  }
  DL_CHECK(eocd != UINT64_MAX, what_, ": not a zip archive (no end-of-central-directory record)");
  uint64_t count = r.le(eocd + 10, 2, "entry count");
  uint64_t cd_size = r.le(eocd + 12, 4, "directory size");
  uint64_t cd_offset = r.le(eocd + 16, 4, "directory offset");
  if (count == 0xffff || cd_size == 0xffffffff || cd_offset == 0xffffffff) {
    DL_CHECK(eocd >= 20 && r.le(eocd - 20, 4, "zip64 locator") == kEocd64Locator, what_,
             ": zip64 fields without a zip64 locator");
    const uint64_t rec = r.le(eocd - 20 + 8, 8, "zip64 record offset");
    DL_CHECK(r.le(rec, 4, "zip64 record") == kEocd64, what_, ": bad zip64 end-of-central-directory record");
    count = r.le(rec + 32, 8, "zip64 entry count");
    cd_size = r.le(rec + 40, 8, "zip64 directory size");
    cd_offset = r.le(rec + 48, 8, "zip64 directory offset");
  }
  r.need(cd_offset, cd_size, "central directory");
  DL_CHECK(count <= cd_size / 46, what_, ": central directory claims ", count, " entries in ", cd_size, " bytes");
  uint64_t p = cd_offset;
  for (uint64_t i = 0; i < count; ++i) {
    DL_CHECK(r.le(p, 4, "central directory entry") == kCentral, what_, ": bad central directory entry ", i);
    const uint16_t flags = uint16_t(r.le(p + 8, 2, "flags"));
    Entry e{};
    e.method = uint16_t(r.le(p + 10, 2, "method"));
    e.compressed = r.le(p + 20, 4, "compressed size");
    e.uncompressed = r.le(p + 24, 4, "size");
    const uint64_t name_len = r.le(p + 28, 2, "name length");
    const uint64_t extra_len = r.le(p + 30, 2, "extra length");
    const uint64_t comment_len = r.le(p + 32, 2, "comment length");
    e.local_offset = r.le(p + 42, 4, "local header offset");
    r.need(p + 46, name_len + extra_len + comment_len, "entry name");
    std::string name(reinterpret_cast<const char*>(r.at(p + 46)), name_len);
    // ZIP64 extended information replaces the saturated 32-bit fields, in this order.
    uint64_t x = p + 46 + name_len;
    const uint64_t x_end = x + extra_len;
    while (x + 4 <= x_end) {
      const uint64_t id = r.le(x, 2, "extra id"), len = r.le(x + 2, 2, "extra length");
      DL_CHECK(x + 4 + len <= x_end, what_, ": extra field of '", name, "' overruns its entry");
      if (id == 0x0001) {
        uint64_t q = x + 4;
        auto take = [&](uint64_t& field) {
          if (field != 0xffffffff) return;
          DL_CHECK(q + 8 <= x + 4 + len, what_, ": truncated zip64 extra field of '", name, "'");
          field = r.le(q, 8, "zip64 field");
          q += 8;
        };
        take(e.uncompressed);
        take(e.compressed);
        take(e.local_offset);
      }
      x += 4 + len;
    }
    DL_CHECK((flags & 0x1) == 0, what_, ": entry '", name, "' is encrypted");
    DL_CHECK(e.method == 0 || e.method == 8, what_, ": entry '", name, "' uses unsupported compression method ",
             e.method);
    DL_CHECK(entries_.emplace(name, e).second, what_, ": duplicate entry '", name, "'");
    p += 46 + name_len + extra_len + comment_len;
  }
}

ZipArchive ZipArchive::open(const std::string& path) { return ZipArchive(Storage::map_file(path), "'" + path + "'"); }

std::vector<std::string> ZipArchive::names() const {
  std::vector<std::string> out;
  for (const auto& [name, e] : entries_) out.push_back(name);
  return out;
}

std::shared_ptr<Storage> ZipArchive::read(const std::string& name) const {
  auto it = entries_.find(name);
  DL_CHECK(it != entries_.end(), what_, ": archive has no entry '", name, "'");
  const Entry& e = it->second;
  const auto* base = static_cast<const unsigned char*>(file_->data());
  Reader r(base, file_->size(), what_);
  DL_CHECK(r.le(e.local_offset, 4, "local header") == kLocal, what_, ": bad local header for '", name, "'");
  const uint64_t data = e.local_offset + 30 + r.le(e.local_offset + 26, 2, "name length") +
                        r.le(e.local_offset + 28, 2, "extra length");
  r.need(data, e.compressed, "entry data");
  if (e.method == 0) {
    DL_CHECK(e.compressed == e.uncompressed, what_, ": stored entry '", name, "' has differing sizes");
    return Storage::view(file_, size_t(data), size_t(e.uncompressed));
  }
  // Deflated: bounded by the declared size, which must match what inflates.
  DL_CHECK(e.uncompressed <= (uint64_t(1) << 40), what_, ": entry '", name, "' claims ", e.uncompressed, " bytes");
  // Deflate expands at most 1032:1, so the declared size is bounded by the bytes actually present.
  DL_CHECK(e.uncompressed <= 1032 * e.compressed + 64, what_, ": entry '", name, "' claims ", e.uncompressed,
           " bytes from ", e.compressed, " compressed bytes, an impossible ratio");
  auto out = Storage::allocate(e.uncompressed);
  z_stream zs{};
  DL_CHECK(inflateInit2(&zs, -MAX_WBITS) == Z_OK, what_, ": zlib initialisation failed");
  uint64_t in_left = e.compressed, out_done = 0;
  const unsigned char* in = base + data;
  auto* dst = static_cast<unsigned char*>(out->data());
  int rc = Z_OK;
  while (rc != Z_STREAM_END) {
    const uInt in_chunk = uInt(std::min<uint64_t>(in_left, 1u << 30));
    const uInt out_chunk = uInt(std::min<uint64_t>(e.uncompressed - out_done, 1u << 30));
    zs.next_in = const_cast<unsigned char*>(in);
    zs.avail_in = in_chunk;
    zs.next_out = dst + out_done;
    zs.avail_out = out_chunk;
    rc = inflate(&zs, Z_NO_FLUSH);
    const uint64_t consumed = in_chunk - zs.avail_in, produced = out_chunk - zs.avail_out;
    in += consumed;
    in_left -= consumed;
    out_done += produced;
    if (rc == Z_STREAM_END) break;
    if (rc != Z_OK || (consumed == 0 && produced == 0)) {
      inflateEnd(&zs);
      fail(what_, ": entry '", name, "' does not inflate (", zs.msg ? zs.msg : "corrupt or truncated data", ")");
    }
  }
  inflateEnd(&zs);
  DL_CHECK(out_done == e.uncompressed, what_, ": entry '", name, "' inflates to ", out_done, " bytes, not ",
           e.uncompressed);
  return out;
}

}  // namespace dl::io
