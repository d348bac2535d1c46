#include "train/data.h"

#include <algorithm>
#include <cctype>
#include <cmath>

#include "core/error.h"
#include "core/ops.h"
#include "io/image_file.h"
#include "train/webdataset.h"

namespace dl::train {

namespace {

bool all_digits(const std::string& s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](unsigned char c) { return std::isdigit(c) != 0; });
}

std::optional<DataFormat> format_from_name(const std::string& s) {
  if (s == "auto") return DataFormat::kAuto;
  if (s == "interleaved" || s == "mmc4") return DataFormat::kInterleaved;
  if (s == "pair" || s == "pairs") return DataFormat::kPair;
  if (s == "conversation" || s == "llava") return DataFormat::kConversation;
  if (s == "wds" || s == "webdataset") return DataFormat::kWebDataset;
  return std::nullopt;
}

RecordFormat record_format(DataFormat f) {
  switch (f) {
    case DataFormat::kInterleaved: return RecordFormat::Interleaved;
    case DataFormat::kPair: return RecordFormat::Pair;
    case DataFormat::kConversation: return RecordFormat::Conversation;
    default: fail("internal: no JSON record format for ", data_format_name(f));
  }
}

class TarSource final : public RecordSource {
 public:
  TarSource(const std::string& path, const IssueCallback& on_issue, int64_t max_record_bytes)
      : reader_(path, on_issue, max_record_bytes) {}
  std::optional<Record> next() override { return reader_.next(); }
  int64_t skipped() const override { return reader_.skipped(); }

 private:
  WebDatasetReader reader_;
};

class JsonSource final : public RecordSource {
 public:
  JsonSource(const std::string& path, RecordFormat format, const IssueCallback& on_issue, int64_t max_record_bytes)
      : reader_(path, format, RecordReaderOptions{on_issue, true, max_record_bytes}) {}
  std::optional<Record> next() override { return reader_.next(); }
  int64_t skipped() const override { return reader_.skipped(); }

 private:
  RecordReader reader_;
};

}  // namespace

const char* data_format_name(DataFormat f) {
  switch (f) {
    case DataFormat::kAuto: return "auto";
    case DataFormat::kInterleaved: return "interleaved";
    case DataFormat::kPair: return "pair";
    case DataFormat::kConversation: return "conversation";
    case DataFormat::kWebDataset: return "wds";
  }
  return "?";
}

DatasetSpec parse_dataset_spec(const std::string& text) {
  DatasetSpec spec;
  std::string rest = text;
  // Peel ":SIZE" and ":FORMAT" from the right; whatever remains is the path (which may itself contain ':').
  for (int i = 0; i < 2; ++i) {
    const size_t colon = rest.rfind(':');
    if (colon == std::string::npos) break;
    const std::string tail = rest.substr(colon + 1);
    if (i == 0 && all_digits(tail)) {
      DL_CHECK(tail.size() <= 15, "dataset '", text, "': size ", tail, " is too large");
      spec.size = std::stoll(tail);
      DL_CHECK(spec.size > 0, "dataset '", text, "': the declared size must be positive");
      rest = rest.substr(0, colon);
    } else if (auto f = format_from_name(tail)) {
      spec.format = *f;
      rest = rest.substr(0, colon);
      break;
    } else {
      break;
    }
  }
  DL_CHECK(!rest.empty(), "dataset '", text, "' names no file (expected PATH[:FORMAT][:SIZE])");
  spec.path = rest;
  return spec;
}

DataFormat detect_format(const std::string& path) {
  if (path.ends_with(".tar")) return DataFormat::kWebDataset;
  JsonObjectReader reader(path);
  nlohmann::json obj;
  int64_t line = 0;
  DL_CHECK(reader.next(obj, line), "dataset '", path, "' has no records (cannot detect its format)");
  if (obj.contains("text_list") || obj.contains("image_info")) return DataFormat::kInterleaved;
  if (obj.contains("conversations")) return DataFormat::kConversation;
  return DataFormat::kPair;
}

std::unique_ptr<RecordSource> open_source(const DatasetSpec& spec, const IssueCallback& on_issue) {
  const DataFormat f = spec.format == DataFormat::kAuto ? detect_format(spec.path) : spec.format;
  if (f == DataFormat::kWebDataset) return std::make_unique<TarSource>(spec.path, on_issue, spec.max_record_bytes);
  return std::make_unique<JsonSource>(spec.path, record_format(f), on_issue, spec.max_record_bytes);
}

uint64_t derive_seed(uint64_t seed, uint64_t a, uint64_t b) {
  auto mix = [](uint64_t z) {
    z += 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  };
  return mix(mix(mix(seed) ^ a) ^ b);
}

MixedStream::MixedStream(std::vector<DatasetSpec> specs, uint64_t seed, int64_t shuffle_buffer,
                         IssueCallback on_issue)
    : specs_(std::move(specs)), rng_(derive_seed(seed, 0x6d6978)), buffer_size_(shuffle_buffer),
      on_issue_(std::move(on_issue)) {
  DL_CHECK(!specs_.empty(), "no training data given");
  DL_CHECK(buffer_size_ >= 1, "the shuffle buffer must hold at least one record");
  for (DatasetSpec& s : specs_) {
    if (s.format == DataFormat::kAuto) s.format = detect_format(s.path);
    if (s.size == 0) {
      // Count once, quietly: issues are reported when the records are actually read.
      if (s.format == DataFormat::kWebDataset) {
        s.size = count_webdataset_samples(s.path);
      } else {
        auto counter = open_source(s, {});
        while (counter->next()) ++s.size;
      }
      DL_CHECK(s.size > 0, "dataset '", s.path, "' has no usable records");
    }
    Dataset d;
    d.source = open_source(s, on_issue_);
    sets_.push_back(std::move(d));
  }
}

int64_t MixedStream::epoch_size() const {
  int64_t n = 0;
  for (const DatasetSpec& s : specs_) n += s.size;
  return n;
}

int64_t MixedStream::skipped_records() const {
  int64_t n = 0;
  for (const Dataset& d : sets_) n += d.skipped_before + d.source->skipped();
  return n;
}

Record MixedStream::draw(size_t i) {
  Dataset& d = sets_[i];
  for (int attempt = 0; attempt < 2; ++attempt) {
    while (!d.exhausted && int64_t(d.buffer.size()) < buffer_size_) {
      std::optional<Record> r = d.source->next();
      if (!r) {
        d.exhausted = true;
        break;
      }
      d.buffer.push_back(std::move(*r));
      ++d.read_this_epoch;
    }
    if (!d.buffer.empty()) break;
    // Epoch boundary: the file is read again from the start.
    DL_CHECK(d.read_this_epoch > 0, "dataset '", specs_[i].path, "' yielded no usable records");
    d.skipped_before += d.source->skipped();
    // Later epochs count the same bad lines again but do not report them again.
    d.source = open_source(specs_[i], {});
    d.exhausted = false;
    d.read_this_epoch = 0;
    ++d.epoch;
  }
  DL_CHECK(!d.buffer.empty(), "dataset '", specs_[i].path, "' yielded no usable records");
  const size_t pick = size_t(rng_.below(d.buffer.size()));
  std::swap(d.buffer[pick], d.buffer.back());
  Record r = std::move(d.buffer.back());
  d.buffer.pop_back();
  return r;
}

MixedStream::Item MixedStream::next() {
  // Proportional to the declared sizes.
  const int64_t total = epoch_size();
  int64_t ticket = int64_t(rng_.below(uint64_t(total)));
  size_t d = 0;
  while (ticket >= specs_[d].size) ticket -= specs_[d++].size;
  Item item{draw(d), d, drawn_};
  ++drawn_;
  return item;
}

void MixedStream::skip(int64_t n) {
  for (int64_t i = 0; i < n; ++i) next();
}

Tensor diffusion_pixels(const io::Image& img, int64_t R) {
  img.validate("diffusion image");
  // torchvision Resize(R) (shorter side to R, the longer one truncated) with PIL bicubic, then CenterCrop(R) with
  // its round-half-to-even offsets, then ToTensor and Normalize(0.5, 0.5).
  const bool wide = img.width >= img.height;
  const int64_t shorter = wide ? img.height : img.width, longer = wide ? img.width : img.height;
  const int64_t new_long = int64_t(double(R) * double(longer) / double(shorter));
  const int64_t w = wide ? new_long : R, h = wide ? R : new_long;
  const io::Image resized = (w == img.width && h == img.height) ? img : io::resize_bicubic_pil(img, w, h);
  DL_CHECK(resized.width >= R && resized.height >= R, "diffusion image of ", img.width, "x", img.height,
           " is too thin to crop to ", R, "x", R);
  const int64_t top = int64_t(std::nearbyint(double(resized.height - R) / 2.0)),
                left = int64_t(std::nearbyint(double(resized.width - R) / 2.0));
  Tensor out = Tensor::empty({3, R, R});
  float* o = out.f32();
  for (int64_t c = 0; c < 3; ++c)
    for (int64_t y = 0; y < R; ++y)
      for (int64_t x = 0; x < R; ++x)
        o[(c * R + y) * R + x] = (float(resized.at(left + x, top + y, c)) / 255.f - 0.5f) / 0.5f;
  return out;
}

io::Image load_image(const std::string& ref) {
  if (!is_tar_member_ref(ref)) return io::read_image(ref);
  const std::vector<uint8_t> bytes = read_image_source(ref);
  return io::decode_image(bytes.data(), bytes.size(), ref);
}

Collated collate(const std::vector<PreparedSample>& samples, int32_t pad_id) {
  DL_CHECK(!samples.empty(), "collate: no samples");
  size_t T = 0;
  for (const PreparedSample& s : samples) T = std::max(T, s.sample.input_ids.size());
  const int64_t B = int64_t(samples.size());
  std::vector<int64_t> ids(size_t(B) * T, pad_id), labels(size_t(B) * T, kIgnoreIndex);
  std::vector<float> keep(size_t(B) * T, 0.f);
  std::vector<Tensor> pixels, dm;
  for (int64_t b = 0; b < B; ++b) {
    const Sample& s = samples[size_t(b)].sample;
    for (size_t t = 0; t < s.input_ids.size(); ++t) {
      ids[size_t(b) * T + t] = s.input_ids[t];
      labels[size_t(b) * T + t] = s.labels[t];
      keep[size_t(b) * T + t] = 1.f;
    }
    for (const Tensor& p : samples[size_t(b)].pixels) pixels.push_back(p.reshape({1, p.size(0), p.size(1), p.size(2)}));
    for (const Tensor& p : samples[size_t(b)].dm_pixels) dm.push_back(p.reshape({1, p.size(0), p.size(1), p.size(2)}));
  }
  Collated c;
  c.batch.input_ids = Tensor::from_vector_i64(ids, {B, int64_t(T)});
  c.batch.labels = Tensor::from_vector_i64(labels, {B, int64_t(T)});
  c.batch.attention_mask = Tensor::from_vector(keep, {B, int64_t(T)});
  if (!pixels.empty()) c.batch.pixel_values = ops::concat(pixels, 0);
  if (!dm.empty()) c.dm_images = ops::concat(dm, 0);
  return c;
}

}  // namespace dl::train
