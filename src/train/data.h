// The training data stream: datasets on disk -> a seeded, shuffled mixture of records -> DreamLLM samples ->
// collated micro-batches with decoded images.
//
//  - Each dataset streams from disk (JSONL / JSON array / webdataset tar); only a shuffle buffer of records is in
//    memory. A dataset restarts (next epoch) when exhausted.
//  - Datasets are mixed in proportion to their declared sizes (the original's MixedDataset + shuffling samples
//    proportionally to size_list); a dataset without a declared size is counted once.
//  - Everything random is seeded: the mixture and shuffle draws come from one stream whose position is the number
//    of records drawn (resume replays the draws, which reads records but builds and decodes nothing); the
//    per-sample randomness (the I2T/T2I coin) comes from a generator derived from (seed, sample index).
//  - Unreadable or undecodable images skip their sample with a counted warning; malformed lines are reported with
//    file:line and skipped.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/random.h"
#include "io/image.h"
#include "train/documents.h"
#include "train/jsonl.h"
#include "train/loss.h"

namespace dl::train {

enum class DataFormat { kAuto, kInterleaved, kPair, kConversation, kWebDataset };
const char* data_format_name(DataFormat f);

struct DatasetSpec {
  std::string path;
  DataFormat format = DataFormat::kAuto;
  int64_t size = 0;  // declared size for mixing and the epoch length; 0: count the records
  int64_t max_record_bytes = kDefaultMaxRecordBytes;  // longer records are skipped and counted
};
// "PATH[:FORMAT][:SIZE]" with FORMAT one of auto, interleaved (mmc4), pair, conversation (llava), wds.
DatasetSpec parse_dataset_spec(const std::string& text);
// The format of a file: .tar -> wds; otherwise the first record's fields decide (text_list/image_info ->
// interleaved, conversations -> conversation, else pair).
DataFormat detect_format(const std::string& path);

// A stream of records from one file, restartable.
class RecordSource {
 public:
  virtual ~RecordSource() = default;
  virtual std::optional<Record> next() = 0;
  virtual int64_t skipped() const = 0;
};
std::unique_ptr<RecordSource> open_source(const DatasetSpec& spec, const IssueCallback& on_issue);

// Deterministic 64-bit mixing of a seed with stream tags (splitmix64), for derived generators.
uint64_t derive_seed(uint64_t seed, uint64_t a, uint64_t b = 0);

class MixedStream {
 public:
  // Opens every dataset (counting those without a declared size); throws for empty datasets.
  MixedStream(std::vector<DatasetSpec> specs, uint64_t seed, int64_t shuffle_buffer, IssueCallback on_issue);

  struct Item {
    Record record;
    size_t dataset = 0;
    int64_t index = 0;  // position in the stream (0-based), the sample's identity for derived randomness
  };
  Item next();
  // Replays n draws (resume).
  void skip(int64_t n);
  int64_t drawn() const { return drawn_; }
  int64_t epoch_size() const;  // sum of the declared sizes
  const std::vector<DatasetSpec>& datasets() const { return specs_; }
  int64_t skipped_records() const;  // malformed lines / records so far

 private:
  struct Dataset {
    std::unique_ptr<RecordSource> source;
    std::vector<Record> buffer;
    bool exhausted = false;
    int64_t epoch = 0, read_this_epoch = 0, skipped_before = 0;
  };
  Record draw(size_t d);
  std::vector<DatasetSpec> specs_;
  std::vector<Dataset> sets_;
  Rng rng_;
  int64_t buffer_size_, drawn_ = 0;
  IssueCallback on_issue_;
};

// Image preparation for training: CLIP inputs as the comprehension path preprocesses them, diffusion targets as
// the original's transforms (resize the shorter side to R with bicubic, center crop R x R, scale to [-1, 1]).
struct ImagePrep {
  io::ClipPreprocessConfig clip;
  int64_t resolution = 512;  // diffusion image side: UNet sample_size x VAE scale factor
};
Tensor diffusion_pixels(const io::Image& img, int64_t resolution);  // [3, R, R] in [-1, 1]
// Reads and decodes an image reference (a file path or a tar member reference); throws dl::Error naming it.
io::Image load_image(const std::string& ref);

// A sample with its images decoded.
struct PreparedSample {
  Sample sample;
  std::vector<Tensor> pixels;     // [3, S, S] per image span
  std::vector<Tensor> dm_pixels;  // [3, R, R] per dream span
};

// Right-pads samples into a Batch (ids with pad_id, labels -100, mask 0); pixel_values and the diffusion images
// are concatenated in span order. dm_latents are not filled here (the trainer encodes dm_images with the VAE).
struct Collated {
  Batch batch;
  Tensor dm_images;  // [M, 3, R, R] in [-1, 1], undefined when M = 0
};
Collated collate(const std::vector<PreparedSample>& samples, int32_t pad_id);

}  // namespace dl::train
