// A plain LLaMA model in the Hugging Face layout (tests/fixtures/tiny_llama, written by
// tools/fixtures/make_tiny_llama.py with tiny_full's LLM weights): it opens text-only, its logits match an
// independent PyTorch forward, the commands answer as they do with the full model's LLM, and images or creation are
// refused by name with exit 1.
#include <unistd.h>

#include <filesystem>

#include "io/image_file.h"
#include "io/model_dir.h"
#include "io/safetensors.h"
#include "models/dreamllm.h"
#include "test_util.h"

namespace dl {
namespace {

namespace fs = std::filesystem;
const std::string kLlama = std::string(DL_FIXTURE_DIR) + "/tiny_llama";
const std::string kFull = std::string(DL_FIXTURE_DIR) + "/tiny_full";

using test::cli;
using test::CliResult;

struct Scratch {
  fs::path dir = fs::temp_directory_path() / ("dl_text_only_" + std::to_string(getpid()));
  Scratch() { fs::create_directories(dir); }
  ~Scratch() { fs::remove_all(dir); }
  std::string operator/(const std::string& name) const { return (dir / name).string(); }
};

TEST(TextOnly, ModelDirSaysWhichComponentsAModelHas) {
  const io::ModelDir llama = io::ModelDir::open(kLlama);
  EXPECT_TRUE(llama.has(io::kLLM));
  EXPECT_FALSE(llama.has(io::kClip));
  EXPECT_FALSE(llama.has(io::kDream));
  EXPECT_FALSE(llama.has(io::kDiffusion));
  EXPECT_FALSE(llama.has(io::kConditionProjector));
  const io::ModelDir full = io::ModelDir::open(kFull);
  for (io::Component c : {io::kLLM, io::kClip, io::kDream, io::kDiffusion, io::kConditionProjector})
    EXPECT_TRUE(full.has(c)) << unsigned(c);
  EXPECT_NE(test::error_of([&] { llama.load(io::kClip); }).find("no vision tower"), std::string::npos);
}

TEST(TextOnly, LogitsMatchAnIndependentLlamaForward) {
  const io::ModelDir dir = io::ModelDir::open(kLlama);
  const models::DreamLLM m = models::DreamLLM::load(dir);
  EXPECT_FALSE(m.has_vision());
  EXPECT_FALSE(m.has_creation());
  EXPECT_EQ(m.image_tokens(), 0);
  const io::SafetensorsFile ref = io::read_safetensors(kLlama + "/reference.safetensors");
  nn::NoGradGuard inference;
  const auto out = m.forward(ref.tensors.at("input_ids"), Tensor(), Tensor());
  EXPECT_TRUE(test::close_rel(out.logits.value(), ref.tensors.at("logits"), 1e-4f));
  EXPECT_FALSE(out.conditions.defined());
  // Asking the text-only model for what it lacks names the model and the missing part.
  const std::string e = test::error_of([&] { m.image_embeds(nn::Var(Tensor::zeros({1, 3, 28, 28}))); });
  EXPECT_NE(e.find("this model has no vision tower"), std::string::npos) << e;
  EXPECT_NE(e.find(kLlama), std::string::npos) << e;
  EXPECT_NE(test::error_of([&] { m.dream_query_embeds(); }).find("cannot create images"), std::string::npos);
}

TEST(TextOnly, RunLlmGivesTheFullModelsLogits) {
  Scratch s;
  const std::string in = kLlama + "/reference.safetensors";
  const CliResult a = cli("run llm -m " + kLlama + " --in " + in + " --out " + (s / "a.safetensors") + " -t 1");
  ASSERT_EQ(a.code, 0) << a.err;
  const CliResult b = cli("run llm -m " + kFull + " --in " + in + " --out " + (s / "b.safetensors") + " -t 1");
  ASSERT_EQ(b.code, 0) << b.err;
  const Tensor la = io::read_safetensors(s / "a.safetensors").tensors.at("logits");
  EXPECT_TRUE(test::bit_equal(la, io::read_safetensors(s / "b.safetensors").tensors.at("logits")));
  EXPECT_TRUE(test::close_rel(la, io::read_safetensors(in).tensors.at("logits"), 1e-4f));
  // Images through run are refused as well.
  io::write_safetensors(s / "px.safetensors", {{"input_ids", Tensor::from_vector_i64({1, 5}, {1, 2})},
                                               {"pixel_values", Tensor::zeros({1, 3, 28, 28})}});
  const CliResult c = cli("run llm -m " + kLlama + " --in " + (s / "px.safetensors") + " --out " + (s / "c.out"));
  EXPECT_EQ(c.code, 1);
  EXPECT_NE(c.err.find("no vision tower"), std::string::npos) << c.err;
  const CliResult d = cli("run clip -m " + kLlama + " --in " + (s / "px.safetensors") + " --out " + (s / "d.out"));
  EXPECT_EQ(d.code, 1);
  EXPECT_NE(d.err.find("no vision tower"), std::string::npos) << d.err;
  const CliResult e =
      cli("run vae_decode -m " + kLlama + " --in " + (s / "px.safetensors") + " --out " + (s / "e.out"));
  EXPECT_EQ(e.code, 1);
  EXPECT_NE(e.err.find("cannot create images"), std::string::npos) << e.err;
}

TEST(TextOnly, AskAndChatAnswerAsTheFullModelDoesWithoutImages) {
  const std::string q = " -p 'What shape is a ball?' -n 12 -t 1";
  const CliResult a = cli("ask -m " + kLlama + q);
  ASSERT_EQ(a.code, 0) << a.err;
  const CliResult b = cli("ask -m " + kFull + q);
  ASSERT_EQ(b.code, 0) << b.err;
  EXPECT_EQ(a.out, b.out);
  EXPECT_GT(a.out.size(), 1u);
  const std::string talk = "hello\nand again\n";
  const CliResult c = cli("chat -q -n 6 -m " + kLlama, talk);
  ASSERT_EQ(c.code, 0) << c.err;
  EXPECT_EQ(c.out, cli("chat -q -n 6 -m " + kFull, talk).out);
}

TEST(TextOnly, ImagesAndCreationAreRefusedByName) {
  Scratch s;
  io::Image img(30, 40);
  io::write_png(s / "in.png", img);
  const CliResult a = cli("ask -m " + kLlama + " -i " + (s / "in.png") + " -p 'What is it?' -n 2");
  EXPECT_EQ(a.code, 1);
  EXPECT_NE(a.err.find("this model has no vision tower"), std::string::npos) << a.err;
  const CliResult b = cli("ask -m " + kLlama + " -p '<image> What is it?' -n 2");
  EXPECT_EQ(b.code, 1);
  EXPECT_NE(b.err.find("this model has no vision tower"), std::string::npos) << b.err;
  const CliResult c = cli("create -m " + kLlama + " -p 'a red circle' -o " + (s / "out.png"));
  EXPECT_EQ(c.code, 1);
  EXPECT_NE(c.err.find("cannot create images"), std::string::npos) << c.err;
  EXPECT_FALSE(fs::exists(s / "out.png"));
  const CliResult d = cli("write -m " + kLlama + " -p 'a story' -o " + (s / "doc.html"));
  EXPECT_EQ(d.code, 1);
  EXPECT_NE(d.err.find("cannot create images"), std::string::npos) << d.err;
  // In chat, an attached image is reported and the conversation goes on.
  const CliResult e = cli("chat -q -n 4 -m " + kLlama, "/image " + (s / "in.png") + "\nhello\n");
  EXPECT_EQ(e.code, 0) << e.err;
  EXPECT_NE(e.err.find("this model has no vision tower"), std::string::npos) << e.err;
  EXPECT_EQ(e.out, cli("chat -q -n 4 -m " + kLlama, "hello\n").out);
}

}  // namespace
}  // namespace dl
