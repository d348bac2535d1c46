// Raw training records as they come off disk, before tokenization: the three on-disk formats of the data builders
// (docs/dreamllm-architecture.md section 2.3). jsonl.h parses them; documents.h turns them into token layouts.
//
// Image paths are stored already resolved (relative paths joined to the dataset file's directory), and images are
// never opened here: a record names its pictures, the trainer decodes them.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <variant>
#include <vector>

namespace dl::train {

// An image-text pair (LAION / BLIP-LAION / LLaVA-pretrain style): one picture and its caption.
struct PairRecord {
  std::string image;
  std::string caption;
  // Optional ("condition_labels"): the picture's content as label tokens, each a list of ids into a label
  // vocabulary. Only the label-conditioned UNet stage reads them (a world with no pretrained text encoder);
  // DreamLLM's stages ignore them.
  std::vector<std::vector<int32_t>> condition_labels = {};
};

// An interleaved document (MMC4), optionally with an instruction (InstructMMC4, "mmc4_instruct_filtered224").
struct InterleavedRecord {
  struct Image {
    std::string path;
    int64_t matched_text_index = 0;     // index into text_list of the sentence this image belongs after
    std::optional<double> matched_sim;  // kept for completeness; DreamLLM's similarity filter is commented out
  };
  std::vector<std::string> text_list;
  std::vector<Image> images;  // in file order; the builder sorts them by matched_text_index
  std::optional<std::string> instruction;
};

// A LLaVA-style conversation: turns whose text may contain the "<image>" / "<dream>" placeholders.
struct ConversationRecord {
  struct Turn {
    std::string from;  // "human"/"user" or "gpt"/"assistant" (also LLaVA's "obj365", "vg" = assistant)
    std::string value;
  };
  // LLaVA's "image": one path, which every placeholder refers to, or (a list) one path per placeholder, in order.
  std::vector<std::string> images;
  std::vector<Turn> turns;
};

using Record = std::variant<PairRecord, InterleavedRecord, ConversationRecord>;

}  // namespace dl::train
