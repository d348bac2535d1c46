// `dreamllm inspect`: the counts it reports for the tiny models equal those tools/fixtures/make_tiny_llama.py counted
// from the state dicts (tests/fixtures/tiny_llama/counts.json); on a release-shaped directory of sparse files (the
// layouts of Vicuna-7B, CLIP ViT-L/14 and SD 2.1-base, no data written) it reads only headers, uses the built-in
// configs, and its parameter counts and weight sizes per type agree with the published figures.
#include <fcntl.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

#include "io/checkpoint_layout.h"
#include "io/config.h"
#include "io/model_dir.h"
#include "io/safetensors.h"
#include "test_util.h"

namespace dl {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using test::cli;
using test::CliResult;
const std::string kFixtures = DL_FIXTURE_DIR;

json inspect_json(const std::string& model) {
  const CliResult r = cli("inspect --json -m " + model);
  EXPECT_EQ(r.code, 0) << r.err;
  return json::parse(r.out);
}

void expect_counts(const json& report, const json& counts, const std::string& dir) {
  const json& parts = counts["parts"];
  ASSERT_EQ(report["components"].size(), parts.size());
  for (const json& c : report["components"]) {
    const std::string name = c["name"];
    ASSERT_TRUE(parts.contains(name)) << name;
    EXPECT_EQ(c["tensors"], parts[name]["tensors"]) << name;
    EXPECT_EQ(c["params"], parts[name]["params"]) << name;
    EXPECT_EQ(c["bytes"], parts[name]["bytes"]) << name;
    EXPECT_EQ(c["params_by_dtype"], parts[name]["params_by_dtype"]) << name;
  }
  ASSERT_EQ(report["files"].size(), counts["files"].size());
  for (const auto& [file, bytes] : counts["files"].items()) EXPECT_EQ(report["files"][dir + "/" + file], bytes) << file;
}

TEST(Inspect, CountsMatchTheStateDictsOfTheTinyModels) {
  std::ifstream f(kFixtures + "/tiny_llama/counts.json");
  const json counts = json::parse(f);
  const json full = inspect_json(kFixtures + "/tiny_full");
  expect_counts(full, counts["tiny_full"], kFixtures + "/tiny_full");
  EXPECT_EQ(full["kind"], "directory, DreamLLM model");
  EXPECT_EQ(full["tokenizer"]["vocab_size"], 428);
  const json llama = inspect_json(kFixtures + "/tiny_llama");
  expect_counts(llama, counts["tiny_llama"], kFixtures + "/tiny_llama");
  EXPECT_EQ(llama["kind"], "directory, text-only LLaMA model");
  // Every type has an estimate; at f32 the LLM weights are the stored F32 bytes (less the buffers).
  ASSERT_EQ(llama["memory"].size(), 8u);
  EXPECT_EQ(llama["memory"][0]["type"], "f32");
  EXPECT_EQ(llama["memory"][0]["llm_weights"], counts["tiny_llama"]["parts"]["llm"]["params"].get<int64_t>() * 4);
  EXPECT_EQ(llama["memory"][0]["other_weights"], 0);
  // KV cache at the model's 512 positions: 2 (k, v) x 2 layers x 2 kv heads x 8 dims x 512 x 2 bytes (F16).
  EXPECT_EQ(llama["context"], 512);
  EXPECT_EQ(llama["memory"][0]["kv_cache"], 2 * 2 * 2 * 8 * 512 * 2);
  EXPECT_GT(llama["machine"]["mem_total"].get<double>(), 0);
  // Text output too, and bad usage.
  const CliResult text = cli("inspect -m " + kFixtures + "/tiny_full");
  EXPECT_EQ(text.code, 0) << text.err;
  EXPECT_NE(text.out.find("vision tower"), std::string::npos);
  EXPECT_NE(text.out.find("q4_k_m"), std::string::npos);
  EXPECT_EQ(cli("inspect").code, 2);
  EXPECT_EQ(cli("inspect -m " + kFixtures + "/tiny_full --ctx 0").code, 2);
  const CliResult missing = cli("inspect -m /nonexistent/model");
  EXPECT_EQ(missing.code, 1);
  EXPECT_NE(missing.err.find("does not exist"), std::string::npos) << missing.err;
}

TEST(Inspect, AConvertedModelCountsAsItsSourceDirectory) {
  const fs::path dir = fs::temp_directory_path() / ("dl_inspect_gguf_" + std::to_string(getpid()));
  fs::create_directories(dir);
  const std::string gguf = (dir / "tiny.gguf").string();
  const CliResult conv = cli("convert -m " + kFixtures + "/tiny_full -o " + gguf + " --type f32");
  ASSERT_EQ(conv.code, 0) << conv.err;
  std::ifstream f(kFixtures + "/tiny_llama/counts.json");
  const json counts = json::parse(f)["tiny_full"]["parts"];
  const json r = inspect_json(gguf);
  EXPECT_EQ(r["kind"], "converted (GGUF) DreamLLM model");
  ASSERT_EQ(r["components"].size(), counts.size());
  for (const json& c : r["components"]) EXPECT_EQ(c["params"], counts[c["name"].get<std::string>()]["params"]) << c;
  // The LLM file alone is a plain llama.cpp model: text only.
  fs::copy_file(gguf, dir / "plain.gguf");
  const json plain = inspect_json((dir / "plain.gguf").string());
  EXPECT_EQ(plain["kind"], "converted (GGUF) text-only LLaMA model");
  ASSERT_EQ(plain["components"].size(), 1u);
  EXPECT_EQ(plain["components"][0]["params"], counts["llm"]["params"]);
  fs::remove_all(dir);
}

TEST(Inspect, AShardedCheckpointCountsItsShards) {
  const fs::path dir = fs::temp_directory_path() / ("dl_inspect_shards_" + std::to_string(getpid()));
  fs::create_directories(dir);
  for (const char* f : {"config.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"})
    fs::copy_file(kFixtures + "/tiny_llama/" + f, dir / f);
  // tiny_llama's LLM split in two shards with the Hugging Face index.
  const io::SafetensorsFile whole = io::read_safetensors(kFixtures + "/tiny_llama/model.safetensors");
  std::map<std::string, Tensor> shard[2];
  json index = {{"metadata", json::object()}, {"weight_map", json::object()}};
  int i = 0;
  for (const auto& [name, t] : whole.tensors) {
    const int s = i++ % 2;
    shard[s].emplace(name, t);
    index["weight_map"][name] = "model-0000" + std::to_string(s + 1) + "-of-00002.safetensors";
  }
  for (int s = 0; s < 2; ++s)
    io::write_safetensors((dir / ("model-0000" + std::to_string(s + 1) + "-of-00002.safetensors")).string(), shard[s]);
  std::ofstream(dir / "model.safetensors.index.json") << index.dump();
  std::ifstream f(kFixtures + "/tiny_llama/counts.json");
  const json llm = json::parse(f)["tiny_llama"]["parts"]["llm"];
  const json r = inspect_json(dir.string());
  ASSERT_EQ(r["components"].size(), 1u);
  EXPECT_EQ(r["components"][0]["params"], llm["params"]);
  EXPECT_EQ(r["components"][0]["tensors"], llm["tensors"]);
  EXPECT_EQ(r["components"][0]["files"].size(), 2u);  // the shards
  EXPECT_EQ(r["files"].size(), 3u);                   // and the index
  // The sharded model answers as the single file does.
  const std::string q = " -p 'What shape is a ball?' -n 6 -t 1";
  const CliResult a = cli("ask -m " + dir.string() + q);
  ASSERT_EQ(a.code, 0) << a.err;
  EXPECT_EQ(a.out, cli("ask -m " + kFixtures + "/tiny_llama" + q).out);
  fs::remove_all(dir);
}

// A safetensors file with F16 tensors of the given layout whose data is a hole: the file has its full size and no
// data blocks.
void write_sparse_safetensors(const std::string& path, const io::Layout& layout, const std::string& strip) {
  json header = json::object();
  uint64_t offset = 0;
  for (const auto& [name, shape] : layout) {
    uint64_t n = 2;
    for (int64_t d : shape) n *= uint64_t(d);
    header[name.substr(strip.size())] = {{"dtype", "F16"}, {"shape", shape}, {"data_offsets", {offset, offset + n}}};
    offset += n;
  }
  std::string h = header.dump();
  h.append((8 - h.size() % 8) % 8, ' ');
  std::ofstream f(path, std::ios::binary);
  const uint64_t len = h.size();
  f.write(reinterpret_cast<const char*>(&len), 8);
  f.write(h.data(), std::streamsize(h.size()));
  f.close();
  fs::resize_file(path, 8 + h.size() + offset);
}

TEST(Inspect, AReleaseShapedModelReadsHeadersAndBuiltInConfigs) {
  const fs::path dir = fs::temp_directory_path() / ("dl_inspect_" + std::to_string(getpid()));
  fs::create_directories(dir);
  io::DreamLLMConfig c;
  c.llm.vocab_size = 32000;  // Vicuna-7B
  c.llm.hidden_size = 4096;
  c.llm.intermediate_size = 11008;
  c.llm.num_hidden_layers = 32;
  c.llm.num_attention_heads = c.llm.num_key_value_heads = 32;
  c.llm.max_position_embeddings = 2048;
  c.special_tokens = {{"<s>", 1}, {"</s>", 2}, {"<unk>", 0}, {"<im_start>", 32001}, {"<dream_start>", 32003}};
  {
    std::ofstream(dir / "config.json") << io::to_json(c);
  }
  const io::ModelDir md = io::ModelDir::from_configs(dir.string(), {io::to_json(c), {}, {}, {}, {}});
  write_sparse_safetensors((dir / "model.safetensors").string(), md.expected(io::kLLM), "");
  write_sparse_safetensors((dir / "clip_vision_embedding.safetensors").string(), md.expected(io::kClip),
                           "model.clip_vision_embedding.");
  write_sparse_safetensors((dir / "dream_embedding.safetensors").string(), md.expected(io::kDream),
                           "model.dream_embedding.");
  write_sparse_safetensors((dir / "stable_diffusion_head.safetensors").string(), md.expected(io::kDiffusion),
                           "stable_diffusion_head.");
  const json r = inspect_json(dir.string());
  std::map<std::string, json> parts;
  for (const json& p : r["components"]) parts[p["name"]] = p;
  // Published parameter counts: LLaMA-7B 6,738,415,616; CLIP ViT-L/14's vision model 303,179,776; SD 2.1's UNet
  // 865,910,724 and VAE (AutoencoderKL) 83,653,863; DreamLLM's 64 dream queries x 4096.
  EXPECT_EQ(parts["llm"]["params"], 6738415616);
  EXPECT_EQ(parts["vision_tower"]["params"], 303179776);
  EXPECT_EQ(parts["unet"]["params"], 865910724);
  EXPECT_EQ(parts["vae"]["params"], 83653863);
  EXPECT_EQ(parts["dream_queries"]["params"], 64 * 4096);
  EXPECT_EQ(parts["vision_projector"]["params"], 4096 * 1024 + 4096);
  EXPECT_EQ(parts["condition_projector"]["params"], 1024 * 4096);
  for (const char* p : {"vision_tower", "unet", "vae"})
    EXPECT_EQ(parts[p]["config"].get<std::string>().rfind("built-in default", 0), 0u) << p;
  EXPECT_EQ(r["other_configs"]["scheduler"].get<std::string>().rfind("built-in default", 0), 0u);
  EXPECT_EQ(r["context"], 2048);
  // LLaMA-7B weight sizes as llama.cpp's quantize table gives them (GiB): Q4_0 3.56, Q4_K_M 3.80, Q8_0 6.67,
  // F16 12.55, Q6_K 5.15.
  std::map<std::string, double> gib;
  for (const json& m : r["memory"]) gib[m["type"]] = m["llm_weights"].get<double>() / double(1 << 30);
  EXPECT_NEAR(gib["q4_0"], 3.56, 0.01);
  EXPECT_NEAR(gib["q4_k_m"], 3.80, 0.01);
  EXPECT_NEAR(gib["q8_0"], 6.67, 0.01);
  EXPECT_NEAR(gib["f16"], 12.55, 0.01);
  EXPECT_NEAR(gib["q6_k"], 5.15, 0.01);
  // KV cache F16 at 2048 positions: 2 x 32 layers x 4096 x 2048 x 2 bytes = 1 GiB.
  EXPECT_EQ(r["memory"][1]["kv_cache"], uint64_t(1) << 30);
  fs::remove_all(dir);
}

}  // namespace
}  // namespace dl
