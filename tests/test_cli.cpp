// The user-facing commands end to end on the complete tiny model (official layout): outputs exist and are
// reproducible, `ask` answers what the library answers for the evaluation template, bad usage and bad inputs exit
// non-zero with a message.
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "io/image_file.h"
#include "io/model_dir.h"
#include "models/dreamllm.h"
#include "pipelines/comprehend.h"
#include "pipelines/interleave.h"
#include "test_util.h"
#include "text/chat_template.h"
#include "text/tokenizer.h"

namespace dl {
namespace {

namespace fs = std::filesystem;
const std::string kModel = std::string(DL_FIXTURE_DIR) + "/tiny_full";

using test::cli;
using test::CliResult;
using test::slurp;

struct Scratch {
  fs::path dir = fs::temp_directory_path() / ("dl_cli_out_" + std::to_string(getpid()));
  Scratch() { fs::create_directories(dir); }
  ~Scratch() { fs::remove_all(dir); }
  std::string operator/(const std::string& name) const { return (dir / name).string(); }
};

std::string test_image(const Scratch& s) {
  io::Image img(30, 40);
  for (size_t i = 0; i < img.rgb.size(); ++i) img.rgb[i] = uint8_t((i * 37) % 251);
  const std::string p = s / "input.png";
  io::write_png(p, img);
  return p;
}

// What the library answers (greedy, 10 tokens) for one image and the prompt `render` makes from the model's image
// span length: the reference `ask` is checked against.
template <typename Render>
std::string library_answer(const std::string& img, Render render) {
  const io::ModelDir dir = io::ModelDir::open(kModel);
  const models::DreamLLM m = models::DreamLLM::load(dir);
  const text::Tokenizer tok = text::Tokenizer::load(kModel);
  const std::vector<int32_t> ids = tok.encode(render(int(m.image_tokens())));
  const Tensor px = io::clip_preprocess(io::read_image(img), io::clip_preprocess_config(dir));
  pipelines::GenerationConfig gc;
  gc.max_new_tokens = 10;
  gc.eos_token_id = tok.eos_id();
  const auto res = pipelines::generate_text(m, {ids}, px.reshape({1, 3, 28, 28}), gc);
  return tok.decode(res.tokens[0]);
}

TEST(Cli, AskAnswersAsTheEvaluationTemplateDoes) {
  Scratch s;
  const std::string img = test_image(s);
  const CliResult r = cli("ask -m " + kModel + " -i " + img + " -p 'What shape is it?' -n 10 -t 1");
  ASSERT_EQ(r.code, 0) << r.err;
  // The same question through the library: eval template, one image span, greedy.
  EXPECT_EQ(r.out, library_answer(img, [](int patches) {
              return text::vqa_prompt("", "What shape is it?", "", "", patches);
            }) + "\n");
  EXPECT_EQ(cli("ask -m " + kModel + " -i " + img + " -p 'What shape is it?' -n 10 -t 1").out, r.out);
}

TEST(Cli, AskWithTheTrainingTemplateAnswersAsTheTrainingLayoutReads) {
  Scratch s;
  const std::string img = test_image(s);
  const CliResult r = cli("ask -m " + kModel + " -i " + img + " -p 'What shape is it?' -n 10 -t 1 --template train");
  ASSERT_EQ(r.code, 0) << r.err;
  // The training conversations' layout: no leading space, the image span then a newline before the question.
  EXPECT_EQ(r.out, library_answer(img, [](int patches) {
              text::Conversation conv(text::VicunaVariant::Train);
              conv.append_user(text::image_span_text(patches) + "\nWhat shape is it?");
              conv.append_assistant(std::nullopt);
              return conv.generation_prompt();
            }) + "\n");
  // An explicit placeholder puts the span where it stands, and nothing is added.
  EXPECT_EQ(cli("ask -m " + kModel + " -i " + img + " -p '<image>\nWhat shape is it?' -n 10 -t 1 --template train").out,
            r.out);
  EXPECT_EQ(cli("ask -m " + kModel + " -p hi --template chatml").code, 2);
}

TEST(Cli, CreateIsReproducibleBySeed) {
  Scratch s;
  const CliResult a = cli("create -m " + kModel + " -p 'a red circle' -o " + (s / "a.png") + " -b 2 --steps 4 --seed 3");
  ASSERT_EQ(a.code, 0) << a.err;
  EXPECT_NE(a.err.find("create 1/2"), std::string::npos);  // progress
  const io::Image a1 = io::read_image(s / "a_1.png"), a2 = io::read_image(s / "a_2.png");
  EXPECT_EQ(a1.width, 16);
  EXPECT_EQ(a1.height, 16);
  EXPECT_NE(a1.rgb, a2.rgb);  // image k uses seed + k
  ASSERT_EQ(cli("create -m " + kModel + " -p 'a red circle' -o " + (s / "b.png") + " --steps 4 --seed 3").code, 0);
  EXPECT_EQ(slurp(s / "b.png"), slurp(s / "a_1.png"));
  // Another size, sampler and a reference image.
  const CliResult c = cli("create -m " + kModel + " -p 'like <image> but blue' -i " + test_image(s) + " -o " +
                    (s / "c.png") + " -W 24 -H 16 --steps 3 --sampler euler_a --negative 'green' --cfg-scale 3");
  ASSERT_EQ(c.code, 0) << c.err;
  EXPECT_EQ(io::read_image(s / "c.png").width, 24);
}

TEST(Cli, WriteProducesHtmlMarkdownAndImagesReproducibly) {
  Scratch s;
  const std::string args = "write -m " + kModel + " -p 'Write about shapes' --steps 3 --image-bias 6 -n 24 " +
                           "--max-images 2 -o ";
  const CliResult a = cli(args + (s / "doc.html"));
  ASSERT_EQ(a.code, 0) << a.err;
  const std::string html = slurp(s / "doc.html"), md = slurp(s / "doc.md");
  size_t inline_images = 0;
  for (size_t at = html.find("data:image/png;base64,"); at != std::string::npos;
       at = html.find("data:image/png;base64,", at + 1))
    ++inline_images;
  EXPECT_GE(inline_images, 1u);
  EXPECT_NE(html.find("<!DOCTYPE html>"), std::string::npos);
  for (size_t i = 1; i <= inline_images; ++i) {
    EXPECT_TRUE(fs::exists(s / ("doc_" + std::to_string(i) + ".png")));
    EXPECT_NE(md.find("(doc_" + std::to_string(i) + ".png)"), std::string::npos);
  }
  EXPECT_NE(a.out.find("[image 1]"), std::string::npos);  // streamed progress
  const CliResult b = cli(args + (s / "again.html"));
  ASSERT_EQ(b.code, 0);
  EXPECT_EQ(slurp(s / "again.html"), html);  // self-contained: identical bytes
  EXPECT_EQ(slurp(s / "again_1.png"), slurp(s / "doc_1.png"));
}

TEST(Cli, ChatKeepsTheConversationAndAttachesImages) {
  Scratch s;
  const std::string img = test_image(s);
  const CliResult r = cli("chat -m " + kModel + " -q -n 6", "/image " + img + "\nhello\n/image missing.png\nagain\n/quit\n");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.err.find("missing.png"), std::string::npos);  // a bad image is reported and the chat goes on
  size_t lines = 0;
  for (char c : r.out) lines += c == '\n';
  EXPECT_EQ(lines, 2u);  // one answer per message
  // The second answer continues the cached conversation: the same as a fresh session given the same history.
  EXPECT_EQ(cli("chat -m " + kModel + " -q -n 6", "/image " + img + "\nhello\nagain\n").out, r.out);
}

TEST(Cli, BadUsageAndBadInputsExitNonZeroWithAMessage) {
  Scratch s;
  const std::string img = test_image(s);
  std::ofstream(s / "broken.png") << "not a png at all";
  struct Case {
    std::string args;
    int code;
    std::string message;
  };
  const std::vector<Case> cases = {
      {"ask -p hi", 2, "--model is required"},
      {"ask -m " + kModel, 2, "--prompt is required"},
      {"ask -m /no/such/model -p hi", 1, "does not exist"},
      {"ask -m " + kModel + "/config.json -p hi", 1, "is a file"},
      {"ask -m " + std::string(DL_FIXTURE_DIR) + " -p hi", 1, "config.json"},
      {"ask -m " + kModel + " -p hi -i " + (s / "broken.png"), 1, "broken.png"},
      {"ask -m " + kModel + " -p hi -i /no/such.png", 2, "/no/such.png"},
      {"ask -m " + kModel + " -p '<image> and <image>' -i " + img, 1, "2 <image> placeholder(s) but 1 image"},
      {"ask -m " + kModel + " -p hi --bogus", 2, "--bogus"},
      {"create -m " + kModel + " -p hi -W 15", 1, "not a multiple of 2"},
      {"create -m " + kModel + " -p hi --steps 0", 2, "--steps"},
      {"create -m " + kModel + " -p hi -b 0", 2, "--batch-count"},
      {"create -m " + kModel + " -p hi --sampler heun", 2, "heun"},
      {"create -m " + kModel + " -p hi -o /no/such/dir/x.png --steps 1", 1, "/no/such/dir"},
      {"write -m " + kModel + " -p hi --beams 2", 1, "--beams"},
      {"create -m " + kModel + " -p '" + std::string(3000, 'a') + "'", 1, "exceeds the 512"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.args.substr(0, 120));
    const CliResult r = cli(c.args);
    EXPECT_EQ(r.code, c.code) << r.err;
    EXPECT_NE(r.err.find(c.message), std::string::npos) << r.err;
  }
  // --help succeeds everywhere.
  for (const char* cmd : {"ask", "chat", "create", "write"}) EXPECT_EQ(cli(std::string(cmd) + " --help").code, 0);
}

// "'path'", built by appending: GCC 12 warns falsely (-Wrestrict) on "'" + string + "...".
std::string quoted(const std::string& path) {
  std::string q(1, '\'');
  q += path;
  q += '\'';
  return q;
}

// Outputs replace regular files only: a FIFO, a directory or a device node named by -o is refused and left as it
// was (the old writer renamed a regular file over them); a symbolic link is written through and stays a link.
TEST(CliOutputs, NeverReplaceFifosDirectoriesDevicesOrLinks) {
  Scratch s;
  const std::string args = "create -m " + kModel + " -p hi --steps 1 -t 1 -o ";
  ASSERT_EQ(mkfifo((s / "pipe.png").c_str(), 0644), 0);
  CliResult r = cli(args + (s / "pipe.png"));
  EXPECT_EQ(r.code, 1) << r.err;
  EXPECT_NE(r.err.find(quoted(s / "pipe.png") + " is a FIFO; choose a regular file"), std::string::npos)
      << r.err;
  EXPECT_TRUE(fs::is_fifo(s / "pipe.png"));
  fs::create_directories(s / "dir.png");
  r = cli(args + (s / "dir.png"));
  EXPECT_EQ(r.code, 1) << r.err;
  EXPECT_NE(r.err.find(quoted(s / "dir.png") + " is a directory; choose a regular file"), std::string::npos) << r.err;
  EXPECT_TRUE(fs::is_directory(s / "dir.png"));
  // As root, a device node like /dev/full (made here, so that a regression replaces nothing of the system's).
  if (geteuid() == 0 && mknod((s / "full").c_str(), S_IFCHR | 0666, makedev(1, 7)) == 0) {
    r = cli(args + (s / "full"));
    EXPECT_EQ(r.code, 1) << r.err;
    EXPECT_NE(r.err.find(quoted(s / "full") + " is a character device; choose a regular file"), std::string::npos)
        << r.err;
    EXPECT_TRUE(fs::is_character_file(s / "full"));
  }
  std::ofstream(s / "real.png") << "old";
  ASSERT_EQ(symlink("real.png", (s / "link.png").c_str()), 0);
  r = cli(args + (s / "link.png"));
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(fs::is_symlink(s / "link.png"));
  EXPECT_EQ(io::read_image(s / "real.png").width, 16);  // the picture went to the file the link names
  for (const auto& e : fs::directory_iterator(s.dir))  // and no temporary file was left behind
    EXPECT_NE(e.path().filename().string()[0], '.') << e.path();
}

// An output that is one of the command's own inputs is refused before anything is drawn, whatever the spelling.
TEST(CliOutputs, AnOutputThatIsAnInputIsRefused) {
  Scratch s;
  const std::string img = test_image(s), before = slurp(img);
  fs::create_directories(s / "sub");
  ASSERT_EQ(link(img.c_str(), (s / "hard.png").c_str()), 0);
  for (const std::string& out : {img, s / "sub/../input.png", s / "hard.png"}) {
    SCOPED_TRACE(out);
    const CliResult r = cli("create -m " + kModel + " -p hi --steps 1 -t 1 -i " + img + " -o " + out);
    EXPECT_EQ(r.code, 1) << r.err;
    EXPECT_NE(r.err.find("is the input " + quoted(img)), std::string::npos) << r.err;
    EXPECT_EQ(slurp(img), before);
  }
  // write: doc.html, doc.md and doc_N.png; an earlier document's picture given as -i is among them.
  fs::copy_file(img, s / "doc_1.png");
  CliResult r = cli("write -m " + kModel + " -p 'Write about <image>' --steps 1 -n 8 -t 1 -i " + (s / "doc_1.png") +
                    " -o " + (s / "doc.html"));
  EXPECT_EQ(r.code, 1) << r.err;
  EXPECT_NE(r.err.find(quoted(s / "doc_1.png") + " is the input"), std::string::npos) << r.err;
  EXPECT_EQ(slurp(s / "doc_1.png"), before);
  EXPECT_FALSE(fs::exists(s / "doc.html"));
  // -o doc.md: the Markdown twin would overwrite the HTML file.
  r = cli("write -m " + kModel + " -p hi --steps 1 -n 4 -t 1 -o " + (s / "doc.md"));
  EXPECT_EQ(r.code, 1) << r.err;
  EXPECT_NE(r.err.find("are the same file"), std::string::npos) << r.err;
  // The model's own files (a copy of the model, so that a regression damages nothing).
  fs::copy(kModel, s / "model", fs::copy_options::recursive);
  const std::string config = slurp(s / "model/config.json");
  r = cli("create -m " + (s / "model") + " -p hi --steps 1 -t 1 -o " + (s / "model/config.json"));
  EXPECT_EQ(r.code, 1) << r.err;
  EXPECT_NE(r.err.find("is the input '"), std::string::npos) << r.err;
  EXPECT_EQ(slurp(s / "model/config.json"), config);
}

// chat survives every bad message: each is reported, the conversation is as it was before it, and /reset works.
TEST(CliChat, SurvivesBadMessagesAndGoesOnAsIfTheyHadNotBeenSent) {
  std::string many;
  for (int i = 0; i < 160; ++i) many += "word ";  // 480 tokens: fits alone, not after a turn
  const std::string script = "hello\nlook at <image>\n" + many + many + "\n" + many + "\n" +
                             std::string((size_t(1) << 20) + 10, 'x') + "\n/image /no/such.png\n/bogus\nagain\n";
  const CliResult r = cli("chat -m " + kModel + " -q -n 4 -t 1", script);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.err.find("dreamllm chat: error: the prompt has 1 <image> placeholder(s) but 0 image(s)"),
            std::string::npos) << r.err;
  EXPECT_NE(r.err.find("tokens; the model's context holds 512 (write a shorter message)"), std::string::npos)
      << r.err;
  EXPECT_NE(r.err.find("tokens; the model's context holds 512 (start a new conversation"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("the line is longer than 1048576 bytes"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("/no/such.png"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("unknown command '/bogus'"), std::string::npos) << r.err;
  // Only the good messages were answered, and exactly as a session that never saw the bad ones answers.
  const CliResult clean = cli("chat -m " + kModel + " -q -n 4 -t 1", "hello\nagain\n");
  ASSERT_EQ(clean.code, 0) << clean.err;
  EXPECT_EQ(r.out, clean.out);
  // After a conversation too long to continue, /reset starts afresh: the answer is a fresh session's.
  const CliResult reset = cli("chat -m " + kModel + " -q -n 4 -t 1", "hello\n" + many + "\n" + many + "\n/reset\nagain\n");
  ASSERT_EQ(reset.code, 0) << reset.err;
  const CliResult fresh = cli("chat -m " + kModel + " -q -n 4 -t 1", "again\n");
  EXPECT_EQ(reset.out.substr(reset.out.size() - fresh.out.size()), fresh.out);
}

// Sizes and steps that cannot work are refused before the weights are read, with the estimate that says why.
TEST(CliDrawing, SizesAndStepsAreCheckedBeforeAnyWork) {
  Scratch s;
  CliResult r = cli("create -m " + kModel + " -p hi -W 8192 -H 8192 --steps 1 -t 1 -o " + (s / "big.png"));
  EXPECT_EQ(r.code, 1) << r.err;
  EXPECT_NE(r.err.find("image size 8192x8192 is larger than 4096 pixels per side"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("would need an estimated "), std::string::npos) << r.err;
  EXPECT_NE(r.err.find(" of memory (UNet sampling "), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(s / "big.png"));
  // Within 4096 px and memory, but self-attention over 1024 x 1024 latent pixels (the tiny model's VAE factor is 2)
  // would run for days: refused with the figures, as are 50 steps at 1024 px.
  r = cli("create -m " + kModel + " -p hi -W 2048 -H 2048 --steps 1 -t 1 -o " + (s / "big.png"));
  EXPECT_EQ(r.code, 1) << r.err;
  EXPECT_NE(r.err.find("image size 2048x2048 with 1 step: self-attention would compute 1.5e+13 query-key scores "
                       "(1.3e+13 per denoising step, 1.1e+12 in the VAE decoder), more than the 1e+13 this build "
                       "draws"),
            std::string::npos)
      << r.err;
  r = cli("create -m " + kModel + " -p hi -W 1024 -H 1024 --steps 50 -t 1 -o " + (s / "big.png"));
  EXPECT_EQ(r.code, 1) << r.err;
  EXPECT_NE(r.err.find("choose a smaller size or fewer steps"), std::string::npos) << r.err;
  for (const char* sampler : {"ddpm", "ddim", "pndm"}) {
    r = cli("create -m " + kModel + " -p hi --steps 1000 --sampler " + sampler + " -t 1 -o " + (s / "s.png"));
    EXPECT_EQ(r.code, 1) << r.err;
    EXPECT_NE(r.err.find(std::string(sampler) + ": 1000 steps with timestep_spacing 'leading' and steps_offset 1 "
                                                "would reach timestep 1000"),
              std::string::npos)
        << r.err;
    EXPECT_NE(r.err.find("use at most 999 steps"), std::string::npos) << r.err;
  }
  r = cli("write -m " + kModel + " -p hi --steps 1000 --sampler ddim -t 1 -o " + (s / "d.html"));
  EXPECT_EQ(r.code, 1) << r.err;
  EXPECT_NE(r.err.find("use at most 999 steps"), std::string::npos) << r.err;
  // A model whose UNet is far wider than any machine's memory allows at this size (only the config is read: its
  // weights would not even match).
  fs::copy(kModel, s / "wide", fs::copy_options::recursive);
  std::string unet = slurp(s / "wide/unet/config.json");
  const size_t at = unet.find("\"block_out_channels\"");
  ASSERT_NE(at, std::string::npos);
  unet = unet.substr(0, at) + "\"block_out_channels\": [65536, 65536]," +
         unet.substr(unet.find(']', at) + 2);
  std::ofstream(s / "wide/unet/config.json") << unet;
  r = cli("create -m " + (s / "wide") + " -p hi -W 4096 -H 4096 --steps 1 -t 1 -o " + (s / "w.png"));
  EXPECT_EQ(r.code, 1) << r.err;
  EXPECT_NE(r.err.find("image size 4096x4096 needs an estimated"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("available now (MemAvailable); choose a smaller size"), std::string::npos) << r.err;
}

// What an input that is a FIFO is refused with.
std::string fifo_refused(const std::string& path) {
  std::string m = "'";  // appended, not "'" + path: GCC 12 at -O3 warns falsely (-Wrestrict) on that
  return m.append(path).append("' is a FIFO, not a regular file");
}

// Inputs are opened without blocking: a FIFO given as a picture, as training data, or in place of any file of a
// model directory is refused at once by name (a plain open() waited for a writer forever). `timeout` turns a
// regression into a failure (exit 124) instead of a hung suite.
TEST(CliInputs, FifosAreRefusedByNameNotWaitedOn) {
  Scratch s;
  const std::string kTimeout = "timeout 60 ";
  const std::string pipe = s / "pipe.png";
  ASSERT_EQ(mkfifo(pipe.c_str(), 0644), 0);
  const std::string refused = fifo_refused(pipe);
  CliResult r = cli("ask -m " + kModel + " -p hi -n 1 -t 1 -i " + pipe, "", kTimeout);
  EXPECT_EQ(r.code, 1) << r.err;
  EXPECT_NE(r.err.find(refused), std::string::npos) << r.err;
  r = cli("chat -m " + kModel + " -q -n 1 -t 1", "/image " + pipe + "\n", kTimeout);
  EXPECT_EQ(r.code, 0) << r.err;  // a bad message, not the end of the session
  EXPECT_NE(r.err.find(refused), std::string::npos) << r.err;

  const std::string data = s / "data.jsonl";
  ASSERT_EQ(mkfifo(data.c_str(), 0644), 0);
  for (const std::string& spec : {data, data + ":pair"}) {  // format detection reads the file too
    r = cli("train --stage II -m " + kModel + " --data " + spec + " -o " + (s / "run") + " --max-steps 1 -t 1", "",
            kTimeout);
    EXPECT_EQ(r.code, 1) << r.err;
    EXPECT_NE(r.err.find(fifo_refused(data)), std::string::npos) << r.err;
  }

  const std::string shard = s / "data.tar";
  ASSERT_EQ(mkfifo(shard.c_str(), 0644), 0);
  r = cli("train --stage II -m " + kModel + " --data " + shard + " -o " + (s / "run") + " --max-steps 1 -t 1", "",
          kTimeout);
  EXPECT_EQ(r.code, 1) << r.err;
  EXPECT_NE(r.err.find(fifo_refused(shard)), std::string::npos) << r.err;
  // A picture of the training data that is a FIFO skips its sample with a warning; training goes on.
  const std::string good = test_image(s);
  std::ofstream(s / "pairs.jsonl") << "{\"image\": \"" << pipe << "\", \"caption\": \"a pipe\"}\n"
                                   << "{\"image\": \"" << good << "\", \"caption\": \"a picture\"}\n";
  r = cli("train --stage II -m " + kModel + " --data " + (s / "pairs.jsonl") + " -o " + (s / "run") +
              " --max-steps 2 -t 1",
          "", kTimeout);
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.err.find(fifo_refused(pipe)), std::string::npos) << r.err;
  r = cli("world score -i " + pipe + " -p 'a large red circle at the top left'", "", kTimeout);
  EXPECT_EQ(r.code, 1) << r.err;
  EXPECT_NE(r.err.find(fifo_refused(pipe)), std::string::npos) << r.err;

  for (const char* file : {"config.json", "tokenizer.model", "added_tokens.json", "special_tokens_map.json",
                           "tokenizer_config.json", "pytorch_model.bin", "clip_vision_embedding.bin"}) {
    SCOPED_TRACE(file);
    const fs::path model = s.dir / "model";
    fs::remove_all(model);
    fs::copy(kModel, model, fs::copy_options::recursive);
    fs::remove(model / file);
    ASSERT_EQ(mkfifo((model / file).c_str(), 0644), 0);
    r = cli("ask -m " + model.string() + " -p hi -n 1 -t 1", "", kTimeout);
    EXPECT_EQ(r.code, 1) << r.err;
    EXPECT_NE(r.err.find(fifo_refused((model / file).string())), std::string::npos) << r.err;
  }
}

// A model path that is a symbolic-link loop is an input error (exit 1) with the system's words, not an escaped
// std::filesystem exception (exit 3).
TEST(CliInputs, ASymbolicLinkLoopModelIsAnInputError) {
  Scratch s;
  ASSERT_EQ(symlink("loop", (s / "loop").c_str()), 0);
  const CliResult r = cli("ask -m " + (s / "loop") + " -p hi");
  EXPECT_EQ(r.code, 1) << r.err;
  EXPECT_NE(r.err.find("model '" + (s / "loop") + "': Too many levels of symbolic links"), std::string::npos)
      << r.err;
}

// A data record over --max-record-bytes is skipped with a warning naming the limit and counted; training goes on
// with the others.
TEST(CliInputs, AnOversizedJsonlRecordIsSkippedAndCounted) {
  Scratch s;
  const std::string img = test_image(s);
  {
    std::ofstream f(s / "pairs.jsonl");
    f << "{\"image\": \"" << img << "\", \"caption\": \"a picture\"}\n";
    f << "{\"image\": \"" << img << "\", \"caption\": \"" << std::string(5000, 'x') << "\"}\n";
    f << "{\"image\": \"" << img << "\", \"caption\": \"another picture\"}\n";
  }
  const CliResult r = cli("train --stage II -m " + kModel + " --data " + (s / "pairs.jsonl") + " -o " + (s / "run") +
                          " --max-steps 4 -t 1 --max-record-bytes 4096");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.err.find((s / "pairs.jsonl") + ":2: record is longer than the limit of 4096 bytes (--max-record-bytes)"),
            std::string::npos)
      << r.err;
  EXPECT_NE(r.err.find("step 4/4"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("skipped 1"), std::string::npos) << r.err;
  EXPECT_TRUE(fs::exists(s / "run/config.json"));
  // The option is usage-checked like the others.
  EXPECT_EQ(cli("train --stage II -m " + kModel + " --data " + (s / "pairs.jsonl") + " -o " + (s / "run2") +
                " --max-record-bytes 0").code,
            2);
}

// Pictures larger than --max-image-pixels (default: Pillow's 89,478,485) are refused from their header, naming the
// size, the limit and the option, on every command that reads pictures.
TEST(CliInputs, PicturesOverThePixelLimitAreRefused) {
  Scratch s;
  const std::string img = test_image(s);  // 30 x 40 = 1200 pixels
  CliResult r = cli("ask -m " + kModel + " -p hi -n 1 -t 1 -i " + img + " --max-image-pixels 1199");
  EXPECT_EQ(r.code, 1) << r.err;
  EXPECT_NE(r.err.find("image too large: 30x40 = 1200 pixels, over the limit of 1199 pixels (--max-image-pixels)"),
            std::string::npos)
      << r.err;
  EXPECT_EQ(cli("ask -m " + kModel + " -p hi -n 1 -t 1 -i " + img + " --max-image-pixels 1200").code, 0);
  r = cli("create -m " + kModel + " -p hi --steps 1 -t 1 -i " + img + " -o " + (s / "c.png") +
          " --max-image-pixels 1000");
  EXPECT_EQ(r.code, 1) << r.err;
  EXPECT_NE(r.err.find("over the limit of 1000 pixels"), std::string::npos) << r.err;
  r = cli("chat -m " + kModel + " -q -n 1 -t 1 --max-image-pixels 1000", "/image " + img + "\n");
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.err.find("over the limit of 1000 pixels"), std::string::npos) << r.err;
  for (const char* cmd : {"ask", "chat", "create", "write", "train", "world score", "world eval-vae",
                          "world eval-vqa", "world eval-caption"})
    EXPECT_NE(cli(std::string(cmd) + " --help").out.find("--max-image-pixels"), std::string::npos) << cmd;
}

}  // namespace
}  // namespace dl
