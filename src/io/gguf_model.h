// A converted DreamLLM model (`dreamllm convert`, docs/gguf.md): a pair of GGUF files.
//  - NAME.gguf: the LLM as an ordinary llama.cpp LLaMA model (architecture "llama", llama.cpp tensor names, q/k rows
//    in llama.cpp's order, the vocabulary in tokenizer.ggml.*), which llama.cpp and Ollama run as text;
//  - NAME.mmproj.gguf beside it (the companion, after llama.cpp's multimodal projector files): everything else under
//    its state-dict name (vision tower, projectors, dream queries, UNet, VAE) and, as metadata, the DreamLLM
//    config.json, the base configs, the scheduler and preprocessor configs and the tokenizer files byte for byte.
// A llama.cpp LLaMA GGUF from elsewhere (no companion) opens as a text-only model: config from llama.* keys,
// tokenizer from tokenizer.ggml.*.
#pragma once
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "io/config.h"
#include "io/gguf.h"
#include "io/model_dir.h"

namespace dl::io {

// Metadata key prefix of a file embedded in the companion: "dreamllm.file." + its path relative to the model
// directory ("config.json", "unet/config.json", "tokenizer.model", ...). Text files are strings, tokenizer.model an
// array of u8.
inline constexpr const char* kEmbeddedFilePrefix = "dreamllm.file.";
inline constexpr const char* kCompanionArchitecture = "dreamllm";

// Whether a -m path names a GGUF model (a path ending in .gguf, any case) rather than a model directory.
bool is_gguf_model_path(const std::string& path);
// "DIR/NAME.gguf" -> "DIR/NAME.mmproj.gguf".
std::string companion_path(const std::string& llm_path);

// llama.cpp's name of a Hugging Face LLaMA tensor ("model.layers.3.self_attn.q_proj.weight" -> "blk.3.attn_q.weight")
// and back; std::nullopt for names outside the LLaMA layout.
std::optional<std::string> llama_cpp_tensor_name(const std::string& hf_name);
std::optional<std::string> hf_tensor_name(const std::string& llama_cpp_name);

// llama.cpp's converter reorders the rows of q_proj/k_proj within each head so that its rotary embedding can pair
// neighbouring dimensions (HF pairs the two halves): GGUF row h*d + 2i + j = HF row h*d + j*d/2 + i. Rows are moved
// whole, so quantized weights are permuted without requantizing. `to_gguf` false undoes the permutation. The result
// is a new contiguous tensor.
Tensor permute_qk_rows(const Tensor& w, int64_t heads, bool to_gguf);

// The pair as opened: both files mapped read-only, tensors are views of the mappings.
struct GgufModel {
  std::string path, companion_path;  // companion_path empty when there is no companion
  GgufFile llm;
  std::optional<GgufFile> companion;
  // An embedded file of the companion (text or bytes), std::nullopt when absent (or without a companion).
  std::optional<std::string> embedded(const std::string& rel) const;
  // The relative paths of every embedded file.
  std::vector<std::string> embedded_files() const;
  // Whether the companion holds a tensor whose name starts with `prefix`.
  bool companion_has(const std::string& prefix) const;
};

// Opens NAME.gguf and, when present, its companion. Throws dl::Error naming the file when either is not a GGUF
// file, the LLM file's architecture is not llama, or the companion's is not dreamllm.
std::shared_ptr<const GgufModel> open_gguf_model(const std::string& path);
// The same checks over files already parsed (the fuzzer's entry point); the paths name them in errors.
std::shared_ptr<const GgufModel> gguf_model_from(GgufFile llm, std::optional<GgufFile> companion,
                                                 const std::string& path, const std::string& companion_path);

// The LLaMA hyperparameters of a llama.cpp GGUF (llama.* keys; the vocabulary size from token_embd.weight).
LlamaConfig llama_config_from_gguf(const GgufFile& f, const std::string& what);

// `dreamllm convert --type` for the LLM file, as llama-quantize's policy (docs/gguf.md): 1-D tensors F32; the plain
// types everywhere else; q4_k_m as llama.cpp's Q4_K_M (output.weight Q6_K, attn_v and ffn_down Q6_K in the layers
// llama.cpp's use_more_bits picks, the rest Q4_K); q8_mix Q8_0 with token_embd and output F16. A row length that is
// not a multiple of the chosen type's block falls back (K types to Q8_0, Q8_0/Q4_0 to F16), with `note` saying so.
struct TensorTypeChoice {
  DType dtype = DType::F32;
  std::string note;  // empty unless the type fell back
};
// The names --type accepts.
const std::vector<std::string>& llm_type_names();
// Throws dl::Error naming the type when this build lacks a block format it needs.
TensorTypeChoice llm_tensor_type(const std::string& type, const std::string& gguf_name, const Shape& shape,
                                 int64_t n_layers);
// general.file_type (llama.cpp's llama_ftype) of a --type.
uint32_t llama_file_type(const std::string& type);

// ModelDir::weight_files of a GGUF pair: the LLM file for kLLM, the companion for the rest.
std::vector<std::string> gguf_weight_files(const GgufModel& g, Component c);

}  // namespace dl::io
