// `dreamllm convert` and models opened from the GGUF pair it writes: every --type converts the complete tiny model
// and runs the LLM (with images and dream spans), the vision tower and a UNet step within the type's tolerance of
// the directory; the f32 file is checked against what llama.cpp's converter would write (expectations derived
// independently by tools/fixtures/make_convert_fixtures.py); K types are exercised on a model with 256-wide rows;
// bad files fail by name.
#include <unistd.h>

#include <cctype>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "../fuzz/fuzz_targets.h"
#include "core/ops.h"
#include "io/checkpoint_layout.h"
#include "io/gguf.h"
#include "io/image_file.h"
#include "io/gguf_model.h"
#include "io/model_dir.h"
#include "io/safetensors.h"
#include "models/dreamllm.h"
#include "pipelines/comprehend.h"
#include "pipelines/create.h"
#include "test_util.h"
#include "text/tokenizer.h"

namespace dl {
namespace {

namespace fs = std::filesystem;
using test::cli;
using test::error_of;

const std::string kFixtures = DL_FIXTURE_DIR;
const std::string kModel = kFixtures + "/tiny_full";

const std::vector<std::string> kTypes = {"f32", "f16", "bf16", "q8_0", "q4_0", "q4_k", "q6_k", "q4_k_m", "q8_mix"};

// One scratch directory for the whole suite, holding one conversion per type (converted once).
class Convert : public ::testing::Test {
 protected:
  static fs::path dir() {
    static const fs::path d = [] {
      fs::path p = fs::temp_directory_path() / ("dl_convert_" + std::to_string(getpid()));
      fs::create_directories(p);
      return p;
    }();
    return d;
  }
  static std::string path(const std::string& name) { return (dir() / name).string(); }
  // The converted LLM file of a type and the converter's stdout.
  static const std::string& converted(const std::string& type) {
    static std::map<std::string, std::string> done;
    auto it = done.find(type);
    if (it != done.end()) return it->second;
    const std::string out = path("tiny-" + type + ".gguf");
    const auto r = cli("convert -m " + kModel + " -o " + out + " --type " + type);
    EXPECT_EQ(r.code, 0) << r.err;
    stdouts()[type] = r.out;
    return done.emplace(type, out).first->second;
  }
  static std::map<std::string, std::string>& stdouts() {
    static std::map<std::string, std::string> s;
    return s;
  }
  static void TearDownTestSuite() { fs::remove_all(dir()); }
};

io::SafetensorsFile& reference() {
  static io::SafetensorsFile r = io::read_safetensors(kModel + "/reference.safetensors");
  return r;
}
Tensor ref(const std::string& n) { return reference().tensors.at(n); }

struct Outputs {
  Tensor logits, hidden, conditions, image_embeds, eps;
};

// What `dreamllm run llm`, `run clip` and `run unet` compute, through the same library calls.
Outputs run_all(const std::string& model) {
  nn::NoGradGuard inference;
  const io::ModelDir dir = io::ModelDir::open(model);
  const models::DreamLLM m = models::DreamLLM::load(dir);
  Outputs o;
  const auto r = m.forward(ref("llm/input_ids"), ref("llm/attention_mask").to(DType::F32), ref("llm/pixel_values"));
  o.logits = r.logits.value();
  o.hidden = r.hidden.value();
  o.conditions = r.conditions.value();
  o.image_embeds = m.image_embeds(nn::Var(ref("llm/pixel_values"))).value();
  const pipelines::DiffusionHead head(dir);
  const Tensor sample = test::randn({1, 4, 8, 8}, 7);
  o.eps = head.unet.forward(nn::Var(sample), Tensor::from_vector({500.f}, {1}), nn::Var(ref("ddim/cond"))).value();
  return o;
}

const Outputs& directory_outputs() {
  static const Outputs o = run_all(kModel);
  return o;
}

// Largest |a - e| relative to the largest |e|.
float rel_err(const Tensor& a, const Tensor& e) {
  const std::vector<float> av = a.to_vector(), ev = e.to_vector();
  EXPECT_EQ(av.size(), ev.size());
  float d = 0, m = 0;
  for (size_t i = 0; i < av.size() && i < ev.size(); ++i) {
    d = std::max(d, std::abs(av[i] - ev[i]));
    m = std::max(m, std::abs(ev[i]));
  }
  return m > 0 ? d / m : d;
}

TEST_F(Convert, EveryTypeRunsWithinItsTolerance) {
  // Bounds on the largest logit error relative to the largest logit, per type, with margin over what this
  // random-weight model measures: f16 1.0e-3, bf16 4.8e-3, q8_0 2.0e-2, q4_0 2.8e-1 (4-bit blocks of 32 random
  // weights), q8_mix 1.9e-2; q4_k, q6_k and q4_k_m fall back to Q8_0/F16 on these 32- and 48-wide rows (2.0e-2;
  // KTypesOnWideRows exercises them). The companion is F16 except with --type f32: the vision tower's image
  // embeddings measure 5.8e-4, the UNet step 3.7e-7.
  const std::map<std::string, float> llm_tol = {{"f32", 0.f},    {"f16", 3e-3f},   {"bf16", 1.5e-2f},
                                                {"q8_0", 4e-2f}, {"q4_0", 5e-1f},  {"q4_k", 4e-2f},
                                                {"q6_k", 4e-2f}, {"q4_k_m", 4e-2f}, {"q8_mix", 4e-2f}};
  const Outputs& want = directory_outputs();
  for (const std::string& type : kTypes) {
    SCOPED_TRACE("--type " + type);
    const Outputs got = run_all(converted(type));
    const float tol = llm_tol.at(type), companion_tol = type == "f32" ? 0.f : 2e-3f;
    if (type == "f32") {
      EXPECT_TRUE(test::bit_equal(got.logits, want.logits));
      EXPECT_TRUE(test::bit_equal(got.conditions, want.conditions));
      EXPECT_TRUE(test::bit_equal(got.image_embeds, want.image_embeds));
      // The fixture's diffusion head is stored in BF16; widened to F32 the values are the same, but the kernels
      // take their F32 path instead of the BF16 one, so only rounding may differ.
      EXPECT_LE(rel_err(got.eps, want.eps), 1e-5f);
      continue;
    }
    const float e_logits = rel_err(got.logits, want.logits), e_hidden = rel_err(got.hidden, want.hidden);
    EXPECT_LE(e_logits, tol);
    EXPECT_LE(e_hidden, tol);
    EXPECT_GT(e_logits, 0.f);  // the type was really applied
    // Conditions pass through the LLM and the F16 projector; image embeddings through the F16 tower and projector.
    EXPECT_LE(rel_err(got.conditions, want.conditions), tol + companion_tol);
    EXPECT_LE(rel_err(got.image_embeds, want.image_embeds), companion_tol);
    EXPECT_LE(rel_err(got.eps, want.eps), companion_tol);
    std::printf("  %-7s logits %.2e hidden %.2e conditions %.2e image_embeds %.2e eps %.2e\n", type.c_str(),
                e_logits, e_hidden, rel_err(got.conditions, want.conditions),
                rel_err(got.image_embeds, want.image_embeds), rel_err(got.eps, want.eps));
  }
}

TEST_F(Convert, QuantizedWeightsStayQuantizedAndMapped) {
  const io::ModelDir dir = io::ModelDir::open(converted("q8_0"));
  const io::StateDict sd = dir.load(io::kLLM | io::kClip);
  const Tensor& up = sd.at("model.layers.0.mlp.up_proj.weight");
  EXPECT_EQ(up.dtype(), DType::Q8_0);
  EXPECT_TRUE(up.storage()->is_mapped());  // a view of the file, not a copy
  EXPECT_EQ(sd.at("model.embed_tokens.weight").dtype(), DType::Q8_0);  // embedding lookups read quantized rows
  EXPECT_EQ(sd.at("model.layers.0.mlp.down_proj.weight").dtype(), DType::F16);  // 48-wide rows fall back
  EXPECT_EQ(sd.at("model.norm.weight").dtype(), DType::F32);
  // q/k come back to HF's row order: a copy of those two only.
  EXPECT_FALSE(sd.at("model.layers.0.self_attn.q_proj.weight").storage()->is_mapped());
  EXPECT_EQ(sd.at("model.clip_vision_embedding.projector.projector.weight").dtype(), DType::F16);
  EXPECT_TRUE(dir.has(io::kClip) && dir.has(io::kDream) && dir.has(io::kDiffusion));
  EXPECT_EQ(dir.weight_files(io::kLLM), std::vector<std::string>{converted("q8_0")});
  EXPECT_EQ(dir.weight_files(io::kDiffusion), std::vector<std::string>{io::companion_path(converted("q8_0"))});
}

TEST_F(Convert, FallbackNotesNameTheTensor) {
  converted("q4_0");
  converted("q4_k");
  const std::string& q4 = stdouts().at("q4_0");
  EXPECT_NE(q4.find("note: blk.0.ffn_down.weight: rows of 48 are not a multiple of Q4_0's 32-element block; "
                    "stored as F16"),
            std::string::npos)
      << q4;
  EXPECT_EQ(q4.find("blk.0.ffn_up.weight: rows"), std::string::npos);  // 32-wide rows fit Q4_0
  const std::string& k = stdouts().at("q4_k");
  EXPECT_NE(k.find("note: blk.0.ffn_up.weight: rows of 32 are not a multiple of Q4_K's 256-element block; stored as "
                   "Q8_0"),
            std::string::npos)
      << k;
  EXPECT_NE(k.find("note: blk.1.ffn_down.weight: rows of 48 are not a multiple of Q4_K's 256-element block; stored "
                   "as F16"),
            std::string::npos);
}

// Metadata, tensor names, shapes and f32 data against what tools/fixtures/make_convert_fixtures.py derived from the
// source with sentencepiece and PyTorch, following llama.cpp's converter.
TEST_F(Convert, LlamaCppFileMatchesIndependentExpectations) {
  const io::GgufFile f = io::read_gguf(converted("f32"));
  const nlohmann::json want = nlohmann::json::parse(test::slurp(kFixtures + "/convert/expected.json"));
  for (const auto& [key, tv] : want["metadata"].items()) {
    SCOPED_TRACE(key);
    const io::GgufValue* v = f.metadata.find(key);
    ASSERT_NE(v, nullptr);
    const std::string type = tv[0].get<std::string>();
    EXPECT_EQ(v->type_name(), type);
    const auto& val = tv[1];
    if (type == "string") {
      EXPECT_EQ(v->get<std::string>(), val.get<std::string>());
    }
    if (type == "u32") {
      EXPECT_EQ(v->get<uint32_t>(), val.get<uint32_t>());
    }
    if (type == "f32") {
      EXPECT_FLOAT_EQ(v->get<float>(), val.get<float>());
    }
    if (type == "bool") {
      EXPECT_EQ(v->get<bool>(), val.get<bool>());
    }
    if (type == "array[string]") {
      EXPECT_EQ(v->get<std::vector<std::string>>(), val.get<std::vector<std::string>>());
    }
    if (type == "array[f32]") {
      EXPECT_EQ(v->get<std::vector<float>>(), val.get<std::vector<float>>());
    }
    if (type == "array[i32]") {
      EXPECT_EQ(v->get<std::vector<int32_t>>(), val.get<std::vector<int32_t>>());
    }
  }
  std::map<std::string, std::vector<uint64_t>> names, want_names;
  for (const auto& info : f.tensor_infos) names[info.name] = info.ne;
  for (const auto& t : want["tensors"]) want_names[t[0].get<std::string>()] = t[1].get<std::vector<uint64_t>>();
  EXPECT_EQ(names, want_names);
  const io::SafetensorsFile data = io::read_safetensors(kFixtures + "/convert/expected_llm.safetensors");
  for (const auto& [name, t] : data.tensors) {
    SCOPED_TRACE(name);
    ASSERT_TRUE(f.tensors.count(name));
    EXPECT_TRUE(test::bit_equal(f.tensors.at(name), t));  // q/k in llama.cpp's permuted order
  }
  // The file types llama.cpp names (general.file_type).
  const std::map<std::string, uint32_t> ftype = {{"f32", 0}, {"f16", 1},  {"q4_0", 2},  {"q8_0", 7},
                                                 {"q4_k", 14}, {"q4_k_m", 15}, {"q6_k", 18}, {"bf16", 32}};
  for (const auto& [type, id] : ftype)
    EXPECT_EQ(io::read_gguf(converted(type)).metadata.get_u32("general.file_type"), id) << type;
}

TEST_F(Convert, QkPermutationRoundTrips) {
  for (DType t : {DType::F32, DType::F16, DType::Q8_0}) {
    const Tensor w = test::randn({64, 32}, 3).to(t);
    const Tensor g = io::permute_qk_rows(w, 4, true);
    EXPECT_FALSE(test::bit_equal(g.to(DType::F32), w.to(DType::F32)));
    EXPECT_TRUE(test::bit_equal(io::permute_qk_rows(g, 4, false).to(DType::F32), w.to(DType::F32)));
  }
  // Head 0 of d = 4: GGUF rows 0,1,2,3 are HF rows 0,2,1,3.
  const Tensor w = Tensor::from_vector({0, 1, 2, 3, 4, 5, 6, 7}, {8, 1});
  EXPECT_EQ(io::permute_qk_rows(w, 2, true).to_vector(), (std::vector<float>{0, 2, 1, 3, 4, 6, 5, 7}));
  EXPECT_NE(error_of([&] { io::permute_qk_rows(Tensor::zeros({6, 2}), 2, true); }).find("do not split"),
            std::string::npos);
}

TEST_F(Convert, TokenizerAndGenerationMatchTheDirectory) {
  const text::Tokenizer want = text::Tokenizer::load(kModel);
  const text::Tokenizer got = text::Tokenizer::load(converted("f32"));
  const std::string text = "a red circle <im_start><im_patch><im_end> then <dream_start> blue </s> squares";
  EXPECT_EQ(got.encode(text), want.encode(text));
  EXPECT_EQ(got.vocab_size(), want.vocab_size());

  // Generation: greedy, equal token for token at F32.
  pipelines::GenerationConfig gc;
  gc.max_new_tokens = 12;
  gc.eos_token_id = want.eos_id();
  auto generate = [&](const std::string& model) {
    const models::DreamLLM m = models::DreamLLM::load(io::ModelDir::open(model));
    return pipelines::generate_text(m, {want.encode("the shapes are")}, Tensor(), gc).tokens;
  };
  EXPECT_EQ(generate(converted("f32")), generate(kModel));
}

TEST_F(Convert, PlainLlamaCppFileRunsTextOnly) {
  // The LLM file alone, as llama.cpp users have it: no companion beside it.
  const std::string alone = path("alone.gguf");
  fs::copy_file(converted("f32"), alone, fs::copy_options::overwrite_existing);
  const io::ModelDir dir = io::ModelDir::open(alone);
  EXPECT_TRUE(dir.has(io::kLLM));
  EXPECT_FALSE(dir.has(io::kClip) || dir.has(io::kDream) || dir.has(io::kDiffusion));
  EXPECT_EQ(dir.config().llm.hidden_size, 32);
  EXPECT_EQ(dir.config().llm.num_key_value_heads, 2);
  EXPECT_NE(error_of([&] { dir.load(io::kClip); }).find("holds only the LLM"), std::string::npos);
  // The tokenizer rebuilt from tokenizer.ggml.* alone encodes and decodes as the original.
  const text::Tokenizer want = text::Tokenizer::load(kModel);
  const text::Tokenizer got = text::Tokenizer::load(alone);
  for (const std::string s : {"Hello world, a red circle!", "  two  spaces\nnewline", "<im_start>x<dream_end> é ü",
                              "</s>tail"}) {
    EXPECT_EQ(got.encode(s), want.encode(s)) << s;
    EXPECT_EQ(got.decode(want.encode(s)), want.decode(want.encode(s))) << s;
  }
  EXPECT_EQ(got.bos_id(), want.bos_id());
  EXPECT_EQ(got.eos_id(), want.eos_id());
  EXPECT_EQ(got.pad_id(), want.pad_id());
  // ask answers text-only from it through the CLI.
  const auto r = cli("ask -m " + alone + " -p 'what shapes?' -n 4");
  EXPECT_EQ(r.code, 0) << r.err;
}

TEST_F(Convert, TrainsFromAConvertedModelIntoADirectory) {
  // Stage II trains the LLM side (made F32 for training) with CLIP, UNet and VAE frozen in their converted types.
  io::Image img(32, 32);
  for (size_t i = 0; i < img.rgb.size(); ++i) img.rgb[i] = uint8_t((i * 29) % 253);
  io::write_png(path("img0.png"), img);
  io::write_png(path("img1.png"), img);
  std::ofstream(path("pairs.jsonl")) << R"({"image": "img0.png", "caption": "a red circle"})" << "\n"
                                     << R"({"image": "img1.png", "caption": "a blue square"})" << "\n";
  const std::string out = path("trained");
  const auto r = cli("train --stage II -m " + converted("q8_0") + " --data " + path("pairs.jsonl") + " -o " + out +
                     " --max-steps 1 -b 2 -t 1");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(test::slurp(out + "/config.json"), test::slurp(kModel + "/config.json"));
  EXPECT_EQ(test::slurp(out + "/tokenizer.model"), test::slurp(kModel + "/tokenizer.model"));
  EXPECT_EQ(test::slurp(out + "/unet/config.json"), test::slurp(kModel + "/unet/config.json"));
  const io::ModelDir trained = io::ModelDir::open(out);
  const io::StateDict t = trained.load(io::kClip | io::kLLM);
  const io::StateDict g = io::ModelDir::open(converted("q8_0")).load(io::kClip);
  const std::string w = "model.clip_vision_embedding.clip_vision_model.vision_model.encoder.layers.0.mlp.fc1.weight";
  EXPECT_TRUE(test::bit_equal(t.at(w), g.at(w)));  // frozen: the converted values, unchanged
  EXPECT_EQ(t.at("model.layers.0.mlp.up_proj.weight").dtype(), DType::F32);
  EXPECT_EQ(cli("ask -m " + out + " -p hi -n 2").code, 0);
}

// A model whose rows are 256 wide, so Q4_K and Q6_K are used as such (the tiny model's rows fall back).
std::string wide_model(const fs::path& at) {
  fs::create_directories(at);
  for (const char* f : {"tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"})
    fs::copy_file(kFixtures + "/tiny_llama/" + f, at / f, fs::copy_options::overwrite_existing);
  nlohmann::json cfg = nlohmann::json::parse(test::slurp(kFixtures + "/tiny_llama/config.json"));
  cfg["hidden_size"] = 256;
  cfg["intermediate_size"] = 512;
  cfg["num_hidden_layers"] = 2;
  cfg["num_attention_heads"] = 4;
  cfg["num_key_value_heads"] = 2;
  std::ofstream(at / "config.json") << cfg.dump(1);
  io::DreamLLMConfig c;
  c.llm.vocab_size = 428;
  c.llm.hidden_size = 256;
  c.llm.intermediate_size = 512;
  c.llm.num_hidden_layers = 2;
  c.llm.num_attention_heads = 4;
  c.llm.num_key_value_heads = 2;
  std::map<std::string, Tensor> w;
  uint64_t seed = 100;
  for (const auto& [name, shape] : io::llama_layout(c.llm)) {
    const bool norm = shape.size() == 1;
    Tensor t = test::randn(shape, seed++, norm ? 0.1f : name == "lm_head.weight" ? 0.25f : 0.05f);
    if (norm) t = ops::add(t, Tensor::full(shape, 1.f));
    w[name] = t;
  }
  io::write_safetensors((at / "model.safetensors").string(), w);
  return at.string();
}

TEST_F(Convert, KTypesOnWideRows) {
  const std::string src = wide_model(dir() / "wide");
  auto logits = [](const std::string& model) {
    nn::NoGradGuard inference;
    const io::ModelDir d = io::ModelDir::open(model);
    const models::DreamLLM m = models::DreamLLM::load(d);
    return m.forward(ref("llm/input_ids").slice(1, 0, 8).contiguous(), Tensor(), Tensor()).logits.value();
  };
  const Tensor want = logits(src);
  // Largest logit error relative to the largest logit, measured on this random-weight model: q8_0 1.9e-2, q6_k
  // 5.3e-2, q4_k 2.5e-1, q4_k_m 2.4e-1, q4_0 3.4e-1. Bounds with margin, and the order the formats' precision
  // implies (a K type silently stored as another would break it).
  const std::map<std::string, float> tol = {
      {"q8_0", 4e-2f}, {"q6_k", 1e-1f}, {"q4_k", 4e-1f}, {"q4_k_m", 4e-1f}, {"q4_0", 5e-1f}};
  std::map<std::string, float> err;
  for (const auto& [type, bound] : tol) {
    SCOPED_TRACE(type);
    const std::string out = path("wide-" + type + ".gguf");
    const auto r = cli("convert -m " + src + " -o " + out + " --type " + type);
    ASSERT_EQ(r.code, 0) << r.err;
    EXPECT_EQ(r.out.find("note:"), std::string::npos) << r.out;
    const io::GgufFile f = io::read_gguf(out);
    auto type_of = [&](const std::string& n) { return std::string(dtype_name(f.tensors.at(n).dtype())); };
    if (type == "q4_k_m") {
      // llama.cpp's Q4_K_M: output Q6_K; attn_v and ffn_down Q6_K where use_more_bits(layer, 2) (layer 1 only).
      EXPECT_EQ(type_of("output.weight"), "Q6_K");
      EXPECT_EQ(type_of("token_embd.weight"), "Q4_K");
      EXPECT_EQ(type_of("blk.0.attn_v.weight"), "Q4_K");
      EXPECT_EQ(type_of("blk.1.attn_v.weight"), "Q6_K");
      EXPECT_EQ(type_of("blk.1.ffn_down.weight"), "Q6_K");
      EXPECT_EQ(type_of("blk.1.ffn_up.weight"), "Q4_K");
    } else {
      std::string want_type = type;
      for (char& ch : want_type) ch = char(std::toupper(static_cast<unsigned char>(ch)));
      EXPECT_EQ(type_of("blk.0.ffn_down.weight"), want_type);
      EXPECT_EQ(type_of("output.weight"), want_type);
    }
    EXPECT_EQ(type_of("blk.0.attn_norm.weight"), "F32");
    err[type] = rel_err(logits(out), want);
    std::printf("  wide %-7s logits %.2e\n", type.c_str(), err[type]);
    EXPECT_LE(err[type], bound);
  }
  EXPECT_LT(err["q8_0"], err["q6_k"]);
  EXPECT_LT(err["q6_k"], err["q4_k"]);
  EXPECT_LT(err["q4_k"], err["q4_0"]);
}

TEST(ConvertTypePolicy, MixesAndFallbacks) {
  auto t = [](const std::string& type, const std::string& name, Shape s) {
    return std::string(dtype_name(io::llm_tensor_type(type, name, s, 32).dtype));
  };
  EXPECT_EQ(t("q8_mix", "token_embd.weight", {32000, 4096}), "F16");
  EXPECT_EQ(t("q8_mix", "output.weight", {32000, 4096}), "F16");
  EXPECT_EQ(t("q8_mix", "blk.3.ffn_up.weight", {11008, 4096}), "Q8_0");
  EXPECT_EQ(t("q4_k_m", "blk.4.ffn_down.weight", {4096, 11008}), "Q4_K");  // 11008 = 43 * 256
  EXPECT_EQ(t("q4_k_m", "blk.0.ffn_down.weight", {4096, 11008}), "Q6_K");
  EXPECT_EQ(t("q4_k_m", "output.weight", {32000, 4096}), "Q6_K");
  EXPECT_EQ(t("q4_k_m", "token_embd.weight", {32000, 4096}), "Q4_K");
  // use_more_bits(i, 32): layers 0-3, 28-31 and every third from 6.
  EXPECT_EQ(t("q4_k_m", "blk.0.attn_v.weight", {4096, 4096}), "Q6_K");
  EXPECT_EQ(t("q4_k_m", "blk.4.attn_v.weight", {4096, 4096}), "Q4_K");
  EXPECT_EQ(t("q4_k_m", "blk.6.attn_v.weight", {4096, 4096}), "Q6_K");
  EXPECT_EQ(t("q4_k_m", "blk.31.attn_v.weight", {4096, 4096}), "Q6_K");
  EXPECT_EQ(t("q4_0", "blk.0.attn_norm.weight", {4096}), "F32");
  EXPECT_EQ(t("q6_k", "blk.0.ffn_up.weight", {48, 96}), "Q8_0");
  EXPECT_EQ(t("q8_0", "blk.0.ffn_up.weight", {48, 40}), "F16");
  EXPECT_EQ(io::llm_tensor_type("q8_0", "blk.0.ffn_up.weight", {48, 64}, 2).note, "");
}

// ---- bad input ----

std::string copy_pair(const std::string& from, const std::string& to) {
  fs::copy_file(from, to, fs::copy_options::overwrite_existing);
  fs::copy_file(io::companion_path(from), io::companion_path(to), fs::copy_options::overwrite_existing);
  return to;
}

TEST_F(Convert, TruncatedFileFailsByName) {
  const std::string p = copy_pair(converted("f32"), path("cut.gguf"));
  fs::resize_file(p, fs::file_size(p) / 2);
  const auto r = cli("ask -m " + p + " -p hi -n 2");
  EXPECT_EQ(r.code, 1) << r.err;
  EXPECT_NE(r.err.find("cut.gguf"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("tensor '"), std::string::npos) << r.err;
}

// Rewrites a converted LLM file with `edit` applied to its metadata and tensors.
std::string rewrite(const std::string& from, const std::string& to,
                    const std::function<void(io::GgufMetadata&, std::vector<std::pair<std::string, Tensor>>&)>& edit) {
  copy_pair(from, to);
  const io::GgufFile f = io::read_gguf(from);
  io::GgufMetadata m = f.metadata;
  std::vector<std::pair<std::string, Tensor>> ts;
  for (const auto& info : f.tensor_infos) ts.emplace_back(info.name, f.tensors.at(info.name));
  edit(m, ts);
  io::write_gguf(to, m, ts);
  return to;
}

TEST_F(Convert, ShapeDisagreeingWithConfigFailsByName) {
  const std::string p = rewrite(converted("f32"), path("shape.gguf"), [](auto&, auto& ts) {
    for (auto& [n, t] : ts)
      if (n == "blk.1.attn_v.weight") t = Tensor::zeros({8, 32});
  });
  const auto r = cli("ask -m " + p + " -p hi -n 2");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("'" + p + "': tensor 'blk.1.attn_v.weight' is [8, 32] but the configuration makes it [16, 32]"),
            std::string::npos)
      << r.err;
}

TEST_F(Convert, ArchitectureOtherThanLlamaIsRefused) {
  const std::string p = rewrite(converted("f32"), path("arch.gguf"),
                                [](auto& m, auto&) { m.set("general.architecture", "gpt2"); });
  const auto r = cli("ask -m " + p + " -p hi -n 2");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("architecture 'gpt2' is not supported"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("arch.gguf"), std::string::npos) << r.err;
}

TEST_F(Convert, HyperparametersDisagreeingWithTheCompanionAreRefused) {
  const std::string p = rewrite(converted("f32"), path("ffn.gguf"),
                                [](auto& m, auto&) { m.set("llama.feed_forward_length", uint32_t(64)); });
  const auto r = cli("ask -m " + p + " -p hi -n 2");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("feed-forward 64"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("disagree with the config.json of '" + io::companion_path(p) + "'"), std::string::npos)
      << r.err;
}

TEST_F(Convert, TiedEmbeddingsWithoutOutputWeight) {
  // A llama.cpp file without output.weight (llama.cpp then uses token_embd for the head), without companion.
  const std::string p = rewrite(converted("f32"), path("tied.gguf"), [](auto&, auto& ts) {
    std::erase_if(ts, [](const auto& nt) { return nt.first == "output.weight"; });
  });
  fs::remove(io::companion_path(p));
  nn::NoGradGuard inference;
  const io::ModelDir dir = io::ModelDir::open(p);
  EXPECT_TRUE(dir.config().llm.tie_word_embeddings);
  const models::DreamLLM m = models::DreamLLM::load(dir);
  const Tensor ids = ref("llm/input_ids").slice(1, 0, 6).contiguous();
  const Tensor logits = m.forward(ids, Tensor(), Tensor()).logits.value();
  const Tensor hidden = m.forward(ids, Tensor(), Tensor()).hidden.value();
  const Tensor embed = io::read_gguf(p).tensors.at("token_embd.weight");
  EXPECT_TRUE(test::close_rel(logits, ops::matmul(hidden, embed.transpose(0, 1))));
}

TEST_F(Convert, UnknownTensorTypeFailsByName) {
  const std::string p = copy_pair(converted("f32"), path("type.gguf"));
  // Patch the type id of the first tensor info ("token_embd.weight", 2 dims) to 99.
  std::string bytes = test::slurp(p);
  const std::string name = "token_embd.weight";
  const size_t at = bytes.find(name);
  ASSERT_NE(at, std::string::npos);
  const size_t type_at = at + name.size() + 4 + 2 * 8;
  const uint32_t bad = 99;
  std::memcpy(bytes.data() + type_at, &bad, 4);
  std::ofstream(p, std::ios::binary) << bytes;
  const auto r = cli("ask -m " + p + " -p hi -n 2");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("type.gguf"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("token_embd.weight"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("ggml type 99"), std::string::npos) << r.err;
}

TEST_F(Convert, BadConvertInvocations) {
  EXPECT_EQ(cli("convert -m " + kModel + " -o " + path("x.gguf") + " --type q5_k").code, 2);
  EXPECT_EQ(cli("convert -m " + kModel + " -o " + path("x.bin")).code, 2);
  // A source failing the layout check (a config that does not describe its weights).
  const fs::path bad = dir() / "bad_src";
  fs::create_directories(bad);
  for (const auto& e : fs::directory_iterator(kModel))
    if (e.is_regular_file()) fs::copy_file(e.path(), bad / e.path().filename(), fs::copy_options::overwrite_existing);
  nlohmann::json cfg = nlohmann::json::parse(test::slurp(kModel + "/config.json"));
  cfg["intermediate_size"] = 64;
  std::ofstream(bad / "config.json") << cfg.dump(1);
  auto r = cli("convert -m " + bad.string() + " -o " + path("bad.gguf"));
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("does not match the configured model"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(path("bad.gguf")) || fs::exists(path("bad.mmproj.gguf")));
  // An output that is an input (through a symbolic link).
  fs::create_symlink(bad / "pytorch_model.bin", dir() / "link.gguf");
  r = cli("convert -m " + bad.string() + " -o " + path("link.gguf"));
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("is the input"), std::string::npos) << r.err;
  // A disk that fills while writing: an error, and no file under either final name.
  r = cli("convert -m " + kModel + " -o " + path("full.gguf") + " --type f32", "", "ulimit -f 200; ");
  EXPECT_EQ(r.code, 1) << r.err;
  EXPECT_NE(r.err.find("full.mmproj.gguf"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(path("full.gguf")) || fs::exists(path("full.mmproj.gguf")));
  // The LLM file failing after its companion was written (a text-only model's companion is a few KB, its LLM file
  // MBs): the companion goes too.
  const std::string wide = wide_model(dir() / "wide_for_full");
  r = cli("convert -m " + wide + " -o " + path("full2.gguf") + " --type f16", "", "ulimit -f 200; ");
  EXPECT_EQ(r.code, 1) << r.err;
  EXPECT_NE(r.err.find("full2.gguf"), std::string::npos) << r.err;
  EXPECT_NE(r.out.find("writing " + path("full2.mmproj.gguf")), std::string::npos) << r.out;  // it was written
  EXPECT_FALSE(fs::exists(path("full2.gguf")) || fs::exists(path("full2.mmproj.gguf")));
  // Converting a converted model is refused (convert reads directories).
  r = cli("convert -m " + converted("f32") + " -o " + path("again.gguf"));
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("already a converted model"), std::string::npos) << r.err;
}

// The fuzz target's seeds and a few hundred deterministic mutations of them (cut short, bytes overwritten where the
// metadata and tensor infos lie) go through the fuzz target's code: each loads or fails with a dl::Error.
TEST(GgufModelFuzz, SeedsAndMutationsLoadOrFailCleanly) {
  int loaded = 0, refused = 0;
  auto feed = [&](const std::string& b) {
    try {
      fuzz::gguf_model_input(reinterpret_cast<const uint8_t*>(b.data()), b.size());
      ++loaded;
    } catch (const Error&) {
      ++refused;
    }
  };
  for (const char* seed : {"llm_only.bin", "pair.bin"}) {
    const std::string b = test::slurp(kFixtures + "/fuzz_seeds/gguf_model/" + seed);
    ASSERT_GT(b.size(), 1000u);
    feed(b);
    uint64_t state = 12345;
    auto next = [&] {
      state = state * 6364136223846793005ull + 1442695040888963407ull;
      return state >> 33;
    };
    for (int i = 0; i < 40; ++i) feed(b.substr(0, size_t(next() % b.size())));
    for (int i = 0; i < 200; ++i) {
      std::string m = b;
      const size_t limit = std::min<size_t>(m.size(), 16384);  // header, metadata and infos
      for (int k = 0; k < 1 + int(next() % 4); ++k) m[size_t(next() % limit)] = char(next());
      feed(m);
    }
  }
  std::printf("  %d inputs loaded, %d refused\n", loaded, refused);
  EXPECT_GE(loaded, 2);  // the seeds themselves
  EXPECT_GT(refused, 0);
}

}  // namespace
}  // namespace dl
