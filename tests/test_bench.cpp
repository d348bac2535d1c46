// `dreamllm bench`: its JSON is an array of records in llama-bench's shape with consistent values on the tiny models
// (small -p/-n; these check the tool's output, not speed), its table is llama-bench's Markdown, and bad options exit 2.
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>
#include <nlohmann/json.hpp>

#include "test_util.h"

namespace dl {
namespace {

using json = nlohmann::json;
using test::cli;
using test::CliResult;
const std::string kLlama = std::string(DL_FIXTURE_DIR) + "/tiny_llama";
const std::string kFull = std::string(DL_FIXTURE_DIR) + "/tiny_full";

json bench_json(const std::string& args) {
  const CliResult r = cli("bench " + args + " --json");
  EXPECT_EQ(r.code, 0) << r.err;
  return json::parse(r.out);
}

// Every field llama-bench's JSON printer writes (test::get_fields plus samples_ns / samples_ts), with the type it
// gives each.
void expect_llama_bench_shape(const json& rec) {
  for (const char* k : {"build_commit", "cpu_info", "gpu_info", "backends", "model_filename", "model_type", "cpu_mask",
                        "type_k", "type_v", "split_mode", "devices", "tensor_split", "tensor_buft_overrides",
                        "test_time"})
    EXPECT_TRUE(rec.contains(k) && rec[k].is_string()) << k;
  for (const char* k : {"build_number", "model_size", "model_n_params", "n_batch", "n_ubatch", "n_threads", "poll",
                        "n_gpu_layers", "n_cpu_moe", "main_gpu", "flash_attn", "no_op_offload", "fit_target",
                        "fit_min_ctx", "n_prompt", "n_gen", "n_depth", "avg_ns", "stddev_ns"})
    EXPECT_TRUE(rec.contains(k) && rec[k].is_number_integer()) << k;
  for (const char* k : {"cpu_strict", "no_kv_offload", "embeddings", "no_host"})
    EXPECT_TRUE(rec.contains(k) && rec[k].is_boolean()) << k;
  for (const char* k : {"avg_ts", "stddev_ts"}) EXPECT_TRUE(rec.contains(k) && rec[k].is_number()) << k;
  ASSERT_TRUE(rec["samples_ns"].is_array() && rec["samples_ts"].is_array());
  ASSERT_EQ(rec["samples_ns"].size(), rec["samples_ts"].size());
  // avg_ts is the mean of the per-repetition rates, each items / seconds of its repetition.
  double sum = 0;
  for (size_t i = 0; i < rec["samples_ns"].size(); ++i) {
    const double ns = rec["samples_ns"][i].get<double>(), ts = rec["samples_ts"][i].get<double>();
    EXPECT_GT(ns, 0);
    sum += ts;
  }
  EXPECT_NEAR(rec["avg_ts"].get<double>(), sum / double(rec["samples_ts"].size()), 1e-6 * sum);
  EXPECT_GE(rec["stddev_ts"].get<double>(), 0);
  EXPECT_GT(rec["peak_rss_bytes"].get<double>(), 1e6);
  EXPECT_GE(rec["load_ms"].get<double>(), 0);
}

TEST(Bench, LlmRecordsHaveLlamaBenchsFieldsAndConsistentValues) {
  const json recs = bench_json("llm -m " + kLlama + " -p 16 -n 4 -t 1,2 -r 3");
  ASSERT_TRUE(recs.is_array());
  ASSERT_EQ(recs.size(), 4u);  // pp and tg for each thread count
  const int threads[] = {1, 1, 2, 2};
  for (size_t i = 0; i < recs.size(); ++i) {
    const json& r = recs[i];
    expect_llama_bench_shape(r);
    EXPECT_EQ(r["n_threads"], threads[i]);
    EXPECT_EQ(r["samples_ns"].size(), 3u);
    EXPECT_EQ(r["model_n_params"], 42912);  // counts.json: tiny_llama's LLM parameters
    EXPECT_EQ(r["model_size"], 171648);     // their F32 bytes
    EXPECT_EQ(r["model_type"], "llama 43K F32");
    EXPECT_EQ(r["type_k"], "f16");
    const bool prefill = i % 2 == 0;
    EXPECT_EQ(r["n_prompt"], prefill ? 16 : 0);
    EXPECT_EQ(r["n_gen"], prefill ? 0 : 4);
    EXPECT_EQ(r["n_depth"], prefill ? 0 : 16);
    EXPECT_EQ(r["test"], prefill ? "pp16" : "tg4 @ d16");
    // The first prompt's logits come after the model is loaded.
    if (prefill) {
      EXPECT_GE(r["first_token_ms"].get<double>(), r["load_ms"].get<double>());
    }
    // One sample's rate is its tokens over its time.
    const double ns = r["samples_ns"][0].get<double>();
    EXPECT_NEAR(r["samples_ts"][0].get<double>(), 1e9 * (prefill ? 16 : 4) / ns, 1e-6 * 1e9 * 16 / ns);
  }
  // The KV cache type options are llama-bench's too.
  EXPECT_EQ(bench_json("llm -m " + kLlama + " -p 8 -n 0 -t 1 -r 1 --cache-type-k bf16")[0]["type_k"], "bf16");
  // The table: llama-bench's columns and test names.
  const CliResult table = cli("bench llm -m " + kLlama + " -p 8 -n 2 -t 1 -r 1");
  ASSERT_EQ(table.code, 0) << table.err;
  EXPECT_NE(table.out.find("| model"), std::string::npos) << table.out;
  EXPECT_NE(table.out.find("pp8"), std::string::npos) << table.out;
  EXPECT_NE(table.out.find("tg2 @ d8"), std::string::npos) << table.out;
}

TEST(Bench, ClipUnetAndVaeRecords) {
  const json clip = bench_json("clip -m " + kFull + " -b 2 -t 1 -r 2");
  ASSERT_EQ(clip.size(), 1u);
  expect_llama_bench_shape(clip[0]);
  EXPECT_EQ(clip[0]["unit"], "images/s");
  EXPECT_EQ(clip[0]["batch"], 2);
  const json unet = bench_json("unet -m " + kFull + " -W 32 -H 32 --cfg -t 1 -r 2");
  ASSERT_EQ(unet.size(), 1u);
  expect_llama_bench_shape(unet[0]);
  EXPECT_EQ(unet[0]["batch"], 2);
  EXPECT_EQ(unet[0]["width"], 32);
  EXPECT_NEAR(unet[0]["avg_seconds"].get<double>(), unet[0]["avg_ns"].get<double>() / 1e9, 1e-6);
  const CliResult unet_table = cli("bench unet -m " + kFull + " -W 32 -H 32 -t 1 -r 1");
  ASSERT_EQ(unet_table.code, 0) << unet_table.err;
  EXPECT_NE(unet_table.out.find("s/step"), std::string::npos) << unet_table.out;
  EXPECT_NE(unet_table.out.find("unet 32x32"), std::string::npos) << unet_table.out;
  const json vae = bench_json("vae -m " + kFull + " -W 32 -H 32 --tiled -t 1 -r 1");
  expect_llama_bench_shape(vae[0]);
  EXPECT_EQ(vae[0]["tiled"], true);
  // A text-only model has no vision tower or diffusion head to measure.
  const CliResult no_clip = cli("bench clip -m " + kLlama + " -t 1 -r 1");
  EXPECT_EQ(no_clip.code, 1);
  EXPECT_NE(no_clip.err.find("no vision tower"), std::string::npos) << no_clip.err;
  EXPECT_EQ(cli("bench unet -m " + kLlama + " -t 1 -r 1").code, 1);
}

TEST(Bench, BadOptionsAreUsageErrors) {
  const std::string llm = "llm -m " + kLlama;
  const std::vector<std::string> bad = {"",
                                       "nothing",
                                       "llm",
                                       llm + " -p -1",
                                       llm + " -t 0",
                                       llm + " -t 1,x",
                                       llm + " -p 0 -n 0",
                                       llm + " -r 0",
                                       llm + " --cache-type-k q2",
                                       "unet -m " + kFull + " --tiled",
                                       "vae -m " + kFull + " --cfg",
                                       "unet -m " + kFull + " -b 0",
                                       "vae -m " + kFull + " -b 0",
                                       "vae -m " + kFull + " -b 65",
                                       "create",
                                       "create -m " + kFull + " -b 0",
                                       "create -m " + kFull + " --steps 0",
                                       "create -m " + kFull + " -W 0",
                                       "create -m " + kFull + " --sampler heun"};
  for (const std::string& args : bad) {
    const CliResult r = cli("bench " + args);
    EXPECT_EQ(r.code, 2) << args << "\n" << r.err;
    EXPECT_FALSE(r.err.empty()) << args;
  }
  // A prompt longer than the model's context is an input error, named.
  const CliResult r = cli("bench llm -m " + kLlama + " -p 600 -n 0 -t 1 -r 1");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("supports 512"), std::string::npos) << r.err;
}

// Sizes are checked on the configs before any weight is read or any work is done: not a multiple of the VAE's factor
// (2 for the tiny model), or more memory than is available (a copy of the tiny model whose VAE is far too wide for
// any machine at this size: only its config is read). Exit 1, the message naming the size and the estimate.
TEST(Bench, DrawingSizesAreCheckedBeforeAnyWork) {
  for (const std::string& args : {"unet -m " + kFull + " -W 31 --cfg", "vae -m " + kFull + " -H 17",
                                  "create -m " + kFull + " -W 31 --steps 1"}) {
    const CliResult r = cli("bench " + args + " -t 1 -r 1");
    EXPECT_EQ(r.code, 1) << args << "\n" << r.err;
    EXPECT_NE(r.err.find("is not a multiple of 2 (the VAE's downsampling factor)"), std::string::npos) << r.err;
  }
  namespace fs = std::filesystem;
  const fs::path wide = fs::temp_directory_path() / ("dl_bench_wide_" + std::to_string(getpid()));
  fs::remove_all(wide);
  fs::copy(kFull, wide, fs::copy_options::recursive);
  std::string vae = test::slurp((wide / "vae/config.json").string());
  const size_t at = vae.find("\"block_out_channels\"");
  ASSERT_NE(at, std::string::npos);
  vae = vae.substr(0, at) + "\"block_out_channels\": [65536, 65536]," + vae.substr(vae.find(']', at) + 2);
  std::ofstream(wide / "vae/config.json") << vae;
  // One image: the single-image check of every drawing command.
  CliResult r = cli("bench vae -m " + wide.string() + " -W 2048 -H 2048 -t 1 -r 1");
  EXPECT_EQ(r.code, 1) << r.err;
  EXPECT_NE(r.err.find("image size 2048x2048 needs an estimated"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("available now (MemAvailable); choose a smaller size or --tiled"), std::string::npos)
      << r.err;
  // A batch: named as one, its estimate the batch's.
  r = cli("bench vae -m " + wide.string() + " -W 2048 -H 2048 -b 3 -t 1 -r 1");
  EXPECT_EQ(r.code, 1) << r.err;
  EXPECT_NE(r.err.find("a batch of 3 at 2048x2048 needs an estimated"), std::string::npos) << r.err;
  r = cli("bench create -m " + wide.string() + " -W 2048 -H 2048 --steps 1 -t 1");
  EXPECT_EQ(r.code, 1) << r.err;
  EXPECT_NE(r.err.find("image size 2048x2048 needs an estimated"), std::string::npos) << r.err;
  fs::remove_all(wide);
}

// `bench create` runs the whole create pipeline: one record per thread count, the seconds of each repetition.
TEST(Bench, CreateRecords) {
  const json recs = bench_json("create -m " + kFull + " -W 32 -H 24 --steps 2 --sampler euler -t 1,2 -r 2");
  ASSERT_EQ(recs.size(), 2u);
  for (const json& r : recs) {
    expect_llama_bench_shape(r);
    EXPECT_EQ(r["unit"], "images/s");
    EXPECT_EQ(r["test"], "create 32x24 euler 2 cfg");
    EXPECT_EQ(r["width"], 32);
    EXPECT_EQ(r["height"], 24);
    EXPECT_EQ(r["steps"], 2);
    EXPECT_EQ(r["samples_ns"].size(), 2u);
    EXPECT_NEAR(r["seconds_per_image"].get<double>(), r["avg_ns"].get<double>() / 1e9, 1e-6);
  }
  EXPECT_EQ(recs[1]["n_threads"], 2);
  const json two = bench_json("create -m " + kFull + " -W 16 -H 16 --steps 1 -b 2 -t 1 -r 1");
  EXPECT_EQ(two[0]["images"], 2);
  EXPECT_NEAR(two[0]["seconds_per_image"].get<double>(), two[0]["avg_ns"].get<double>() / 2e9, 1e-6);
  const CliResult table = cli("bench create -m " + kFull + " -W 16 -H 16 --steps 1 -t 1");
  ASSERT_EQ(table.code, 0) << table.err;
  EXPECT_NE(table.out.find("s/image"), std::string::npos) << table.out;
}

}  // namespace
}  // namespace dl
