// `dreamllm world`: the shapes world. `gen` writes a training / held-out data set in the formats `dreamllm train`
// reads; `score` checks pictures against descriptions (one image, a pairs file, or a scenes.jsonl ground truth);
// `render` draws the scene a full description names.
#include <algorithm>
#include <cctype>
#include <nlohmann/json.hpp>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <iterator>
#include <map>
#include <sstream>

#include "cli_common.h"
#include "output_check.h"
#include "core/error.h"
#include "core/ops.h"
#include "core/random.h"
#include "io/atomic_file.h"
#include "io/image_file.h"
#include "train/jsonl.h"
#include "nn/autograd.h"
#include "pipelines/create.h"
#include "pipelines/interleave.h"
#include "train/data.h"
#include "pipelines/comprehend.h"
#include "text/chat_template.h"
#include "io/config.h"
#include "world/recipe.h"
#include "world/generator.h"
#include "world/scorer.h"
#include "world/text.h"

namespace dl::app {

namespace {

std::vector<std::string> split_commas(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) {
    const size_t a = item.find_first_not_of(' '), b = item.find_last_not_of(' ');
    if (a != std::string::npos) out.push_back(item.substr(a, b - a + 1));
  }
  return out;
}

world::Rgb parse_rgb(const std::string& s) {
  if (s == "white") return world::kWhite;
  if (s == "black") return {0, 0, 0};
  const std::vector<std::string> parts = split_commas(s);
  DL_CHECK(parts.size() == 3, "background '", s, "' is not R,G,B (or white / black)");
  world::Rgb rgb{};
  for (size_t c = 0; c < 3; ++c) {
    int v = -1;
    try {
      size_t used = 0;
      v = std::stoi(parts[c], &used);
      if (used != parts[c].size()) v = -1;
    } catch (const std::exception&) {
      v = -1;
    }
    DL_CHECK(v >= 0 && v <= 255, "background '", s, "': '", parts[c], "' is not a value in 0..255");
    rgb[c] = uint8_t(v);
  }
  return rgb;
}

// Malformed lines of a data file are skipped, each reported on stderr with its file and line.
train::RecordReaderOptions reporting_skips() {
  train::RecordReaderOptions ro;
  ro.on_issue = [](const train::DataIssue& issue) {
    std::fprintf(stderr, "%s: skipped: %s\n", issue.where().c_str(), issue.message.c_str());
  };
  return ro;
}

// Accuracy per attribute over many scored pictures.
struct Tally {
  std::map<std::string, std::pair<int64_t, int64_t>> attributes;  // name -> (passed, checked)
  int64_t passed = 0, scored = 0;
  void add(const world::ScoreResult& r) {
    ++scored;
    passed += r.pass ? 1 : 0;
    for (const world::Check& c : r.checks) {
      auto& [ok, all] = attributes[c.attribute];
      ok += c.pass ? 1 : 0;
      ++all;
    }
  }
  void print(const char* what) const {
    std::printf("%s: %lld scored, %lld pass (%.2f%%)\n", what, static_cast<long long>(scored),
                static_cast<long long>(passed), scored ? 100.0 * double(passed) / double(scored) : 0.0);
    for (const auto& entry : attributes) {
      const auto ok = entry.second.first, all = entry.second.second;
      std::printf("  %-9s %lld/%lld (%.2f%%)\n", entry.first.c_str(), static_cast<long long>(ok),
                  static_cast<long long>(all), all ? 100.0 * double(ok) / double(all) : 0.0);
    }
  }
};

int gen_command(const world::GenerateOptions& base, const std::string& out, const std::string& kinds,
                const std::string& colours, const std::string& background, bool no_antialias) {
  world::GenerateOptions opt = base;
  if (!kinds.empty()) {
    opt.world.kinds.clear();
    for (const std::string& k : split_commas(kinds)) opt.world.kinds.push_back(world::kind_from_name(k));
  }
  if (!colours.empty()) {
    opt.world.colours.clear();
    for (const std::string& c : split_commas(colours)) opt.world.colours.push_back(world::colour_from_name(c));
  }
  opt.world.background = parse_rgb(background);
  opt.world.antialias = !no_antialias;
  opt.validate();
  const int64_t total = opt.train + opt.test;
  Progress progress("world gen", size_t(total));
  const int64_t every = std::max<int64_t>(1, total / 100);
  opt.progress = [&](int64_t done, int64_t all) {
    if (done % every == 0 || done == all) progress.update(size_t(done));
  };
  const world::GenerateSummary s = world::generate(opt, out);
  std::printf("wrote %lld scenes (%lld images, %lld questions) to %s\n", static_cast<long long>(s.scenes),
              static_cast<long long>(s.images), static_cast<long long>(s.questions), out.c_str());
  std::printf("pairs carry condition labels of a vocabulary of %d "
              "(dreamllm train --stage UNet --condition-labels %d)\n",
              world::kConditionLabels, world::kConditionLabels);
  return 0;
}

int score_command(const std::string& image, const std::string& text, const std::string& pairs,
                  const std::string& scenes, const world::ScorerOptions& options, bool verbose) {
  const int modes = int(!image.empty() || !text.empty()) + int(!pairs.empty()) + int(!scenes.empty());
  if (modes != 1 || (!image.empty() && text.empty()) || (image.empty() && !text.empty())) {
    std::fprintf(stderr,
                 "dreamllm world score: give --image and --text, or --pairs FILE.jsonl, or --scenes FILE.jsonl\n"
                 "Run 'dreamllm world score --help' for the options.\n");
    return 2;
  }
  if (!image.empty()) {
    const world::Description d = world::parse_description(text);
    const world::ScoreResult r = world::score(io::read_image(image), d, options);
    std::printf("%s", r.report().c_str());
    if (r.pass) return 0;
    // A failed check is the answer a script asks for: exit 1, as a test runner's failure.
    std::fprintf(stderr, "dreamllm world score: '%s' does not show \"%s\"\n", image.c_str(), text.c_str());
    return 1;
  }
  if (!pairs.empty()) {
    train::RecordReader reader(pairs, train::RecordFormat::Pair, reporting_skips());
    Tally tally;
    while (auto record = reader.next()) {
      const auto& p = std::get<train::PairRecord>(*record);
      const std::string where = pairs + ":" + std::to_string(reader.line());
      world::ScoreResult r;
      try {
        r = world::score(io::read_image(p.image), p.caption, options);
      } catch (const Error& e) {
        fail(where, ": ", e.what());
      }
      tally.add(r);
      if (verbose && !r.pass) std::printf("FAIL %s: %s\n%s", where.c_str(), p.caption.c_str(), r.report().c_str());
    }
    DL_CHECK(tally.scored > 0, "'", pairs, "' holds no pairs");
    tally.print("pairs");
    return 0;
  }
  const std::vector<world::SceneRecord> records = world::read_scene_records(scenes);
  DL_CHECK(!records.empty(), "'", scenes, "' holds no scenes");
  int64_t agree = 0;
  Tally tally;
  for (const world::SceneRecord& rec : records) {
    const io::Image img = io::read_image(rec.image);
    const world::ScoreResult r = world::score(img, world::describe(rec.scene), options);
    tally.add(r);
    const bool same = world::same_shapes(r.parse.scene(), rec.scene);
    agree += same ? 1 : 0;
    if (verbose && !same) {
      std::printf("DIFF %s: truth \"%s\", parsed \"%s\"\n", rec.image.c_str(),
                  world::canonical_caption(rec.scene).c_str(),
                  r.parse.detections.empty() ? "(nothing)" : world::canonical_caption(r.parse.scene()).c_str());
    }
  }
  std::printf("scenes: %lld/%lld parsed exactly (%.2f%%)\n", static_cast<long long>(agree),
              static_cast<long long>(records.size()), 100.0 * double(agree) / double(records.size()));
  tally.print("descriptions");
  return 0;
}

// The first `limit` (0: all) records of a scenes.jsonl; with full_only, whole scenes only (not the step pictures
// of documents and multi-turn drawing); with shapes > 0, only the scenes of that many shapes.
std::vector<world::SceneRecord> scene_records(const std::string& scenes, int64_t limit, bool full_only,
                                              int shapes = 0) {
  std::vector<world::SceneRecord> records;
  for (world::SceneRecord& r : world::read_scene_records(scenes))
    if ((!full_only || r.step == r.steps) && (shapes == 0 || int64_t(r.scene.shapes.size()) == shapes))
      records.push_back(std::move(r));
  DL_CHECK(!records.empty(), "'", scenes, "' holds no ", full_only ? "full scenes" : "scenes",
           shapes > 0 ? " of " + std::to_string(shapes) + " shape(s)" : std::string());
  if (limit > 0 && int64_t(records.size()) > limit) records.resize(size_t(limit));
  return records;
}

// Reconstructs held-out pictures through the model's VAE (posterior mean, decoded, as pictures are drawn) and checks
// that the scene survives: the autoencoder is what bounds creation faithfulness from above.
int eval_vae_command(const std::string& model, const std::string& scenes, int64_t limit, const std::string& save_dir,
                     bool write_scale) {
  const io::ModelDir dir = io::ModelDir::open(model);
  const pipelines::DiffusionHead head(dir);
  const int64_t R = dir.unet_config().sample_size * dir.vae_config().scale_factor();
  const std::vector<world::SceneRecord> records = scene_records(scenes, limit, false);
  if (!save_dir.empty()) std::filesystem::create_directories(save_dir);
  nn::NoGradGuard inference;
  // Diffusion samples rarely get a latent's length exactly right, so the scenes are also decoded from latents
  // scaled by these gains: a VAE that codes colour by length loses the colours here.
  const float gains[] = {0.8f, 1.2f};
  int64_t agree = 0, agree_scaled[std::size(gains)] = {};
  double sq = 0, latent_sum = 0, latent_sq = 0, latent_n = 0, pixels = 0;
  const auto to_picture = [R](const Tensor& y) {
    Tensor unit = Tensor::empty(y.shape());
    for (int64_t k = 0; k < y.numel(); ++k) unit.f32()[k] = std::clamp(y.f32()[k] / 2.f + 0.5f, 0.f, 1.f);
    return io::Image(R, R, pipelines::to_rgb8(unit)[0]);
  };
  Progress progress("eval-vae", records.size());
  for (size_t i = 0; i < records.size(); ++i) {
    progress.update(i);
    const io::Image img = io::read_image(records[i].image);
    const Tensor x = train::diffusion_pixels(img, R).reshape({1, 3, R, R});
    const Tensor mean = head.vae.encode(nn::Var(x)).mean.value().contiguous();
    for (float v : mean.to_vector()) latent_sum += v, latent_sq += double(v) * v, latent_n += 1;
    const Tensor y = head.vae.decode(nn::Var(mean)).value().contiguous();
    for (int64_t k = 0; k < y.numel(); ++k) {
      const double d = double(std::clamp(y.f32()[k], -1.f, 1.f)) - double(x.f32()[k]);
      sq += d * d;
    }
    pixels += double(y.numel());
    const io::Image rec = to_picture(y);
    if (!save_dir.empty()) io::write_png(save_dir + "/" + std::to_string(i) + ".png", rec);
    agree += world::same_shapes(world::parse_image(rec).scene(), records[i].scene) ? 1 : 0;
    for (size_t g = 0; g < std::size(gains); ++g) {
      const io::Image scaled = to_picture(head.vae.decode(nn::Var(ops::scale(mean, gains[g]))).value().contiguous());
      agree_scaled[g] += world::same_shapes(world::parse_image(scaled).scene(), records[i].scene) ? 1 : 0;
    }
  }
  progress.finish();
  const double n = double(records.size()), mu = latent_sum / latent_n;
  const double sd = std::sqrt(std::max(1e-12, latent_sq / latent_n - mu * mu));
  std::printf("reconstructions: %lld/%lld scenes parsed exactly (%.2f%%), MSE %.5f on [-1, 1]\n",
              static_cast<long long>(agree), static_cast<long long>(records.size()), 100.0 * double(agree) / n,
              sq / pixels);
  std::printf("latents scaled by %.1f / %.1f before decoding: %lld / %lld scenes parsed exactly (%.2f%% / %.2f%%)\n",
              gains[0], gains[1], static_cast<long long>(agree_scaled[0]), static_cast<long long>(agree_scaled[1]),
              100.0 * double(agree_scaled[0]) / n, 100.0 * double(agree_scaled[1]) / n);
  std::printf("latent mean %.4f std %.4f: scaling_factor 1/std = %.5f (configured %.5f)\n", mu, sd, 1.0 / sd,
              dir.vae_config().scaling_factor);
  if (write_scale) {
    // As SD's 0.18215 was chosen: diffusion then runs on latents of unit variance.
    const std::string path = (std::filesystem::path(model) / "vae" / "config.json").string();
    nlohmann::ordered_json config;
    try {
      config = nlohmann::ordered_json::parse(io::read_text_file(path, size_t(1) << 20));
    } catch (const nlohmann::json::exception& e) {
      fail("'", path, "': invalid JSON (", e.what(), ")");
    }
    config["scaling_factor"] = 1.0 / sd;
    io::write_file_atomically(path, [&](std::ostream& out) { out << config.dump(1) << "\n"; });
    std::printf("wrote scaling_factor %.5f to %s\n", 1.0 / sd, path.c_str());
  }
  return 0;
}

// Creation faithfulness on held-out scenes: each full scene's caption is drawn from its prompt alone (the raw
// prompt, as `dreamllm create` and the original pipeline), and the picture is scored against the caption;
// results are split by the number of shapes, as the issue's targets are.
int eval_create_command(const std::string& model, const std::string& scenes, int64_t limit, int shapes,
                        const DrawOptions& draw, const std::string& save_dir) {
  const Model m(model, true);
  const std::vector<world::SceneRecord> records = scene_records(scenes, limit, true, shapes);
  if (!save_dir.empty()) std::filesystem::create_directories(save_dir);
  const auto latent = draw.latent_size(m);
  const int64_t lh = latent.first, lw = latent.second, C = m.head->unet.config().in_channels;
  Tensor uncond;
  if (draw.cfg_scale > 1.f) {
    const std::vector<int32_t> neg = m.tokenizer.encode(draw.negative);
    uncond = pipelines::prompt_conditions(m.llm, Tensor::from_vector_i32(neg, {1, int64_t(neg.size())}), Tensor());
  }
  std::map<size_t, Tally> by_count;
  Tally all;
  Progress progress("eval-create", records.size());
  for (size_t i = 0; i < records.size(); ++i) {
    const std::string& caption = records[i].caption;
    const std::vector<int32_t> ids = m.tokenizer.encode(caption);
    const Tensor cond =
        pipelines::prompt_conditions(m.llm, Tensor::from_vector_i32(ids, {1, int64_t(ids.size())}), Tensor());
    Rng rng(uint64_t(draw.seed) + i);
    const Tensor noise = rng.randn({1, C, lh, lw});
    const Tensor latents = pipelines::sample_latents(m.head->unet, m.head->scheduler, cond, uncond, noise,
                                                     draw.sampling(), [&](size_t) { return rng.randn({1, C, lh, lw}); });
    const Tensor image = pipelines::decode_latents(m.head->vae, latents, draw.tiled);
    const io::Image picture(image.size(3), image.size(2), pipelines::to_rgb8(image)[0]);
    if (!save_dir.empty()) io::write_png(save_dir + "/" + std::to_string(i) + ".png", picture);
    const world::ScoreResult r = world::score(picture, caption);
    all.add(r);
    by_count[records[i].scene.shapes.size()].add(r);
    progress.update(i + 1);
  }
  for (const auto& [n, t] : by_count) t.print((std::to_string(n) + "-shape prompts").c_str());
  all.print("all prompts");
  return 0;
}

// Free-form writing on held-out instructions: each instruction of an instruct.jsonl ("Show how to draw ... step by
// step.") is written as `dreamllm write` writes (vicuna template, greedy text, the model placing its own images),
// and every image is scored against the text before it, parsed in the world's grammar: a document agrees with its
// text when it drew at least one image and every image shows exactly what its text has described so far.
int eval_write_command(const std::string& model, const std::string& file, int64_t limit, const DrawOptions& draw,
                       const std::string& save_dir, int64_t show) {
  const Model m(model, true);
  if (!save_dir.empty()) std::filesystem::create_directories(save_dir);
  const auto latent = draw.latent_size(m);
  train::RecordReader reader(file, train::RecordFormat::Interleaved, reporting_skips());
  pipelines::WriteOptions o;
  o.text.max_new_tokens = 160;
  o.text.eos_token_id = m.tokenizer.eos_id();
  o.drawing = draw.sampling();
  o.latent_height = latent.first;
  o.latent_width = latent.second;
  o.negative_ids = m.tokenizer.encode(draw.negative);
  int64_t documents = 0, agreeing = 0, images = 0, images_ok = 0, without_image = 0, unparsable = 0;
  Tally tally;
  // The count is known only when --limit gives it (the file is streamed).
  std::unique_ptr<Progress> progress;
  if (limit > 0) progress = std::make_unique<Progress>("eval-write", size_t(limit));
  while (auto record = reader.next()) {
    if (limit > 0 && documents >= limit) break;
    if (progress) progress->update(size_t(documents));
    const auto* doc = std::get_if<train::InterleavedRecord>(&*record);
    if (doc == nullptr || !doc->instruction) continue;
    ++documents;
    text::Conversation conv(text::VicunaVariant::Train);
    conv.append_user(*doc->instruction);
    conv.append_assistant(std::nullopt);
    o.max_images = int64_t(doc->images.size()) + 1;
    o.seed = uint64_t(draw.seed) + uint64_t(documents) * 1000;
    const pipelines::Document written = pipelines::write_document(
        m.llm, *m.head, m.tokenizer, m.clip_preprocess, m.tokenizer.encode(conv.generation_prompt()), Tensor(), o);
    std::string text_so_far;
    bool all_ok = true;
    int64_t drawn = 0;
    std::string failures;  // what --show-errors prints of this document
    for (const auto& block : written.blocks) {
      if (!block.is_image) {
        text_so_far += block.text;
        continue;
      }
      ++drawn;
      ++images;
      if (!save_dir.empty())
        io::write_png(save_dir + "/" + std::to_string(documents - 1) + "_" + std::to_string(drawn) + ".png",
                      block.image);
      bool ok = false;
      try {
        const world::ScoreResult r = world::score(block.image, text_so_far);
        tally.add(r);
        ok = r.pass;
        if (!ok && show > 0)
          failures += "  image " + std::to_string(drawn) + " after \"" + text_so_far + "\":\n" + r.report();
      } catch (const Error& e) {
        ++unparsable;  // text outside the world's grammar (or describing no shape) cannot be checked
        if (show > 0) failures += "  image " + std::to_string(drawn) + ": " + e.what() + "\n";
      }
      images_ok += ok;
      all_ok = all_ok && ok;
    }
    const bool agrees = drawn > 0 && all_ok;
    without_image += drawn == 0;
    agreeing += agrees;
    if (!agrees && show > 0) {
      --show;
      std::printf("document %lld: %s\n", static_cast<long long>(documents - 1), doc->instruction->c_str());
      for (const auto& block : written.blocks) std::printf("%s", block.is_image ? " [image]" : block.text.c_str());
      std::printf("\n%s", drawn == 0 ? "  no image\n" : failures.c_str());
    }
  }
  if (progress) progress->finish();
  DL_CHECK(documents > 0, "'", file, "' holds no instruction documents");
  std::printf("documents: %lld written, %lld agree with their text (%.2f%%), %lld without an image\n",
              static_cast<long long>(documents), static_cast<long long>(agreeing),
              100.0 * double(agreeing) / double(documents), static_cast<long long>(without_image));
  std::printf("images: %lld drawn, %lld agree (%.2f%%), %lld after text outside the grammar\n",
              static_cast<long long>(images), static_cast<long long>(images_ok),
              images ? 100.0 * double(images_ok) / double(images) : 0.0, static_cast<long long>(unparsable));
  tally.print("scored images");
  return 0;
}

// Greedy text after `prompt` (with the image spans of `pixels`), up to `max_tokens`, decoded.
std::string greedy_answer(const Model& m, const std::vector<int32_t>& prompt, const Tensor& pixels, int64_t max_tokens) {
  pipelines::GenerationConfig gc;
  gc.max_new_tokens = max_tokens;
  gc.eos_token_id = m.tokenizer.eos_id();
  pipelines::GenerationCallbacks cb;
  cb.decode = [&](const std::vector<int32_t>& t) { return m.tokenizer.decode(t); };
  return pipelines::generate_text(m.llm, {prompt}, pixels, gc, cb).texts[0];
}

std::string normalised(std::string s) {
  while (!s.empty() && (s.back() == '.' || std::isspace(static_cast<unsigned char>(s.back())))) s.pop_back();
  size_t a = 0;
  while (a < s.size() && std::isspace(static_cast<unsigned char>(s[a]))) ++a;
  s = s.substr(a);
  for (char& c : s) c = char(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

// VQA exact match on held-out pictures: each conversation of vqa.json is replayed in its training layout (vicuna
// v1.1, the picture in the first turn), earlier answers given, and each answer decoded greedily.
int eval_vqa_command(const std::string& model, const std::string& vqa_path, int64_t limit, int64_t show) {
  const Model m(model, false);
  nlohmann::json all;
  try {
    // Parsed whole: nlohmann's tree takes about ten times the text, so the file is bounded well below memory.
    all = nlohmann::json::parse(io::read_text_file(vqa_path, size_t(256) << 20));
  } catch (const nlohmann::json::exception& e) {
    fail("'", vqa_path, "': invalid JSON (", e.what(), ")");
  }
  DL_CHECK(all.is_array() && !all.empty(), "'", vqa_path, "' is not a JSON array of conversations");
  const std::filesystem::path base = std::filesystem::path(vqa_path).parent_path();
  std::map<std::string, std::pair<int64_t, int64_t>> by_type;
  int64_t right = 0, asked = 0, done = 0;
  const size_t conversations = limit > 0 ? std::min(all.size(), size_t(limit)) : all.size();
  Progress progress("eval-vqa", conversations);
  // A conversation missing a field, or with one of another type, is an error in the file, named as such.
  try {
    for (const auto& conv : all) {
      if (limit > 0 && done >= limit) break;
      progress.update(size_t(done));
      ++done;
      const auto& turns = conv.at("conversations");
      const std::vector<std::string> types =
          conv.contains("types") ? conv["types"].get<std::vector<std::string>>() : std::vector<std::string>{};
      const Tensor pixels = load_pixels(m, {(base / conv.at("image").get<std::string>()).string()});
      text::Conversation c(text::VicunaVariant::Train);
      for (size_t t = 0; t + 1 < turns.size(); t += 2) {
        std::string question = turns[t].at("value").get<std::string>();
        if (t == 0) question = place_images(m, question, 1);
        const std::string truth = turns[t + 1].at("value").get<std::string>();
        c.append_user(question);
        c.append_assistant(std::nullopt);
        const std::string answer = greedy_answer(m, m.tokenizer.encode(c.generation_prompt()), pixels, 8);
        const bool ok = normalised(answer) == normalised(truth);
        if (!ok && show > 0) {
          --show;
          std::printf("%s | Q: %s | expected '%s', answered '%s'\n", conv.at("image").get<std::string>().c_str(),
                      turns[t].at("value").get<std::string>().c_str(), truth.c_str(), answer.c_str());
        }
        right += ok;
        ++asked;
        auto& [r, n] = by_type[t / 2 < types.size() ? types[t / 2] : "?"];
        r += ok;
        ++n;
        c.set_last_message(truth);  // the next question sees the true answer, as in training
      }
    }
  } catch (const nlohmann::json::exception& e) {
    fail("'", vqa_path, "': conversation ", done, " is not {\"image\", \"conversations\": [{\"value\"}, ...]} (",
         e.what(), ")");
  }
  progress.finish();
  DL_CHECK(asked > 0, "'", vqa_path, "' holds no questions");
  std::printf("VQA exact match: %lld/%lld (%.2f%%)\n", static_cast<long long>(right), static_cast<long long>(asked),
              100.0 * double(right) / double(asked));
  for (const auto& [type, rn] : by_type)
    std::printf("  %-12s %lld/%lld (%.2f%%)\n", type.c_str(), static_cast<long long>(rn.first),
                static_cast<long long>(rn.second), rn.second ? 100.0 * double(rn.first) / double(rn.second) : 0.0);
  return 0;
}

// Caption attribute accuracy: each held-out picture is captioned as the image-to-text pairs trained it
// (<s> image span, then the caption) and the true picture is scored against the caption.
int eval_caption_command(const std::string& model, const std::string& scenes, int64_t limit) {
  const Model m(model, false);
  const std::vector<world::SceneRecord> records = scene_records(scenes, limit, true);
  Tally tally;
  int64_t unparsable = 0;
  Progress progress("eval-caption", records.size());
  for (const world::SceneRecord& rec : records) {
    progress.update(size_t(tally.scored));
    const Tensor pixels = load_pixels(m, {rec.image});
    const std::vector<int32_t> prompt = m.tokenizer.encode(place_images(m, "", 1));
    const std::string caption = greedy_answer(m, prompt, pixels, 64);
    try {
      tally.add(world::score(io::read_image(rec.image), caption));
    } catch (const Error&) {
      ++unparsable;  // a caption outside the world's grammar describes nothing checkable
      ++tally.scored;
    }
  }
  progress.finish();
  tally.print("captions");
  std::printf("  unparsable %lld\n", static_cast<long long>(unparsable));
  return 0;
}

int render_command(const std::string& text, const std::string& out, int64_t size, const std::string& background,
                   bool no_antialias) {
  const world::Scene scene = world::scene_from_description(world::parse_description(text), size, parse_rgb(background));
  io::write_png(out, world::render(scene, !no_antialias));
  std::printf("%s\n", out.c_str());
  return 0;
}

}  // namespace

// The picture side of the committed model (models/shapes-world: 9x9 latents, VAE factor 4), the default of the
// data commands so that what they write is what that model reads.
constexpr int64_t kWorldSize = 36;

int world_main(int argc, char** argv) {
  CLI::App app("The shapes world: generate training data, score pictures against descriptions.", "world");
  app.require_subcommand(1);

  world::GenerateOptions gen;
  gen.world.image_size = kWorldSize;
  std::string gen_out, kinds, colours, background = "white";
  bool no_antialias = false;
  CLI::App* g = app.add_subcommand("gen", "write a data set: OUT/{train,test}/ images and every training file");
  g->add_option("-o,--output", gen_out, "output directory")->required();
  g->add_option("--train", gen.train, "training scenes")
      ->capture_default_str()
      ->check(CLI::Range(int64_t(0), int64_t(10'000'000)));
  g->add_option("--test", gen.test, "held-out scenes")
      ->capture_default_str()
      ->check(CLI::Range(int64_t(0), int64_t(10'000'000)));
  g->add_option("--seed", gen.seed, "seed (same seed and options: identical files)")->capture_default_str()
      ->check(CLI::Range(uint64_t(0), uint64_t(INT64_MAX)));
  g->add_option("--size", gen.world.image_size, "image side in pixels")
      ->capture_default_str()
      ->check(CLI::Range(int64_t(24), int64_t(1024)));
  g->add_option("--min-shapes", gen.world.min_shapes, "fewest shapes per scene")
      ->capture_default_str()
      ->check(CLI::Range(1, 3));
  g->add_option("--max-shapes", gen.world.max_shapes, "most shapes per scene")
      ->capture_default_str()
      ->check(CLI::Range(1, 3));
  g->add_option("--kinds", kinds, "shape kinds, comma-separated (default: circle,square,triangle,diamond,cross)");
  g->add_option("--colours", colours, "colours, comma-separated (default: red,green,blue,yellow,purple,orange)");
  g->add_option("--background", background, "background colour: R,G,B, white or black");
  g->add_option("--questions", gen.questions, "VQA questions per image")
      ->capture_default_str()
      ->check(CLI::Range(1, 8));
  g->add_flag("--no-antialias", no_antialias, "hard edges instead of 8x8 supersampling");

  std::string image, text, pairs, scenes;
  bool verbose = false;
  world::ScorerOptions scorer;
  CLI::App* s = app.add_subcommand("score", "check pictures against descriptions");
  s->add_option("-i,--image", image, "picture to score (with --text)")->check(CLI::ExistingFile);
  s->add_option("-p,--prompt", text, "its description, e.g. \"a large red circle at the top left\" (exit 1 when the "
                                     "picture does not show it)");
  hidden_alias(*s, "--text", text);
  s->add_option("--pairs", pairs, "score every {\"image\", \"caption\"} line of a JSONL file")
      ->check(CLI::ExistingFile);
  s->add_option("--scenes", scenes, "parse every image of a scenes.jsonl and compare with its ground truth")
      ->check(CLI::ExistingFile);
  s->add_option("--size", scorer.expected_size, "refuse images of another side")
      ->check(CLI::Range(int64_t(0), int64_t(1024)));
  s->add_flag("-v,--verbose", verbose, "batch modes: print every failure");
  add_image_limit_option(*s);

  std::string render_text, render_out = "scene.png";
  int64_t render_size = kWorldSize;
  CLI::App* r = app.add_subcommand("render", "draw the scene that a full description names");
  r->add_option("-p,--prompt", render_text, "description naming size, colour, kind and position of every shape");
  hidden_alias(*r, "--text", render_text);
  r->add_option("-o,--output", render_out, "PNG file to write")->capture_default_str();
  r->add_option("--size", render_size, "image side in pixels")
      ->capture_default_str()
      ->check(CLI::Range(int64_t(24), int64_t(1024)));
  r->add_option("--background", background, "background colour: R,G,B, white or black");
  r->add_flag("--no-antialias", no_antialias, "hard edges instead of 8x8 supersampling");

  std::string init_data, init_out;
  int64_t init_size = kWorldSize, init_seed = 0;
  world::TinyModelOptions init_options;
  int vocab = 512;
  CLI::App* in = app.add_subcommand("init", "a fresh tiny DreamLLM for the world: tokenizer trained on DATA/train, "
                                            "random weights initialised as the original libraries do");
  in->add_option("-d,--data", init_data, "a directory written by world gen")->required()->check(CLI::ExistingDirectory);
  in->add_option("-o,--output", init_out, "model directory to write")->required();
  in->add_option("--size", init_size,
                 "picture side, 24-64 px (36: each grid cell is one 12 px CLIP patch and 3x3 latent pixels)")
      ->capture_default_str();
  in->add_option("--vocab", vocab, "SentencePiece vocabulary (>= 260: byte pieces + merges)")->capture_default_str();
  in->add_option("--seed", init_seed, "seed of the initial weights")->capture_default_str()
      ->check(CLI::Range(int64_t(0), INT64_MAX));
  in->add_option("--patch", init_options.patch_size,
                 "CLIP patch side in pixels (default: a quarter of the picture, 16 patches)")
      ->check(kNonNegativeNumber);
  in->add_option("--vision-position-std", init_options.vision_position_std,
                 "standard deviation of the fresh CLIP position embeddings (HF's 0.02; with one grid cell per patch "
                 "the patches' content does not say where they are)")
      ->capture_default_str();
  in->add_option("--dream-queries", init_options.dream_queries,
                 "learned dream queries, the UNet's condition length (the original has 64)")
      ->capture_default_str();
  in->add_flag("--tie-embeddings", init_options.tie_embeddings,
               "tie the LLM's input embeddings to its output rows (tie_word_embeddings): it then reads a word with "
               "what it learned writing it");
  in->add_flag("--unet-text-embedding", init_options.unet_text_embedding,
               "give the UNet diffusers' addition_embed_type \"text\": the condition, attention-pooled, joins the "
               "time embedding of every resnet");
  in->add_option("--latent-downsampling", init_options.latent_downsampling,
                 "the VAE's downsampling factor: 4 (8x8 latents at 32 px) or 2 (16x16 latents, a three-level UNet)")
      ->capture_default_str()
      ->check(CLI::IsMember({2, 4}));
  in->add_flag("--sd-noise-schedule", init_options.sd_noise_schedule,
               "SD 2.1-base's noise schedule (epsilon prediction, terminal SNR 0.0047) instead of v_prediction with "
               "zero terminal SNR");

  std::string ev_model, ev_scenes, ev_save;
  int64_t ev_limit = 200;
  CLI::App* ev = app.add_subcommand("eval-vae", "reconstruct held-out pictures through a model's VAE and check the "
                                                "scenes survive; prints the latent scale");
  ev->add_option("-m,--model", ev_model, "model directory")->required()->check(CLI::ExistingDirectory);
  ev->add_option("--scenes", ev_scenes, "a scenes.jsonl (e.g. DATA/test/scenes.jsonl)")->required()
      ->check(CLI::ExistingFile);
  hidden_alias(*ev, "-n", ev_limit);  // the limit's earlier name; -n is max tokens elsewhere
  ev->add_option("--limit", ev_limit, "pictures to reconstruct (0: all)")->capture_default_str();
  ev->add_option("--save", ev_save, "directory to write the reconstructions to");
  bool ev_write_scale = false;
  ev->add_flag("--write-scale", ev_write_scale, "set the model's VAE scaling_factor to 1/std of the latents");
  add_image_limit_option(*ev);

  std::string ec_model, ec_scenes, ec_save;
  int64_t ec_limit = 100;
  int ec_shapes = 0;
  // The world's models sample at guidance 3: at 7.5 a zero-terminal-SNR model overshoots, with darker colours and
  // extra shapes (docs/shapes_world.md).
  constexpr float kWorldCfgScale = 3.f;
  DrawOptions ec_draw;
  ec_draw.steps = 25;
  ec_draw.sampler = "dpmpp2m";
  ec_draw.cfg_scale = kWorldCfgScale;
  CLI::App* ec = app.add_subcommand("eval-create", "draw every held-out scene from its caption and score the "
                                                   "pictures against it (by number of shapes)");
  ec->add_option("-m,--model", ec_model, "model directory or converted NAME.gguf")->required()->check(CLI::ExistingPath);
  ec->add_option("--scenes", ec_scenes, "a scenes.jsonl (e.g. DATA/test/scenes.jsonl)")->required()
      ->check(CLI::ExistingFile);
  hidden_alias(*ec, "-n", ec_limit);
  ec->add_option("--limit", ec_limit, "scenes to draw (0: all)")->capture_default_str();
  ec->add_option("--shapes", ec_shapes, "only the scenes of this many shapes (0: any)")
      ->check(CLI::Range(0, 9))->capture_default_str();
  ec->add_option("--save", ec_save, "directory to write the pictures to");
  ec_draw.add_to(*ec);

  std::string eq_model, eq_file;
  int64_t eq_limit = 100;
  CLI::App* eq = app.add_subcommand("eval-vqa", "answer the held-out VQA conversations; exact match by type");
  eq->add_option("-m,--model", eq_model, "model directory or converted NAME.gguf")->required()->check(CLI::ExistingPath);
  eq->add_option("--vqa", eq_file, "a vqa.json (e.g. DATA/test/vqa.json)")->required()->check(CLI::ExistingFile);
  hidden_alias(*eq, "-n", eq_limit);
  eq->add_option("--limit", eq_limit, "conversations (0: all)")->capture_default_str();
  int64_t eq_show = 0;
  eq->add_option("--show-errors", eq_show, "print the first N wrong answers")->capture_default_str();
  add_image_limit_option(*eq);
  std::string ew_model, ew_file, ew_save;
  int64_t ew_limit = 50;
  DrawOptions ew_draw;
  ew_draw.steps = 25;
  ew_draw.sampler = "dpmpp2m";
  ew_draw.cfg_scale = kWorldCfgScale;
  CLI::App* ew = app.add_subcommand("eval-write", "write documents for held-out instructions and check every image "
                                                  "against the text before it");
  ew->add_option("-m,--model", ew_model, "model directory or converted NAME.gguf")->required()->check(CLI::ExistingPath);
  ew->add_option("--instruct", ew_file, "an instruct.jsonl (e.g. DATA/test/instruct.jsonl)")->required()
      ->check(CLI::ExistingFile);
  hidden_alias(*ew, "-n", ew_limit);
  ew->add_option("--limit", ew_limit, "documents (0: all)")->capture_default_str();
  ew->add_option("--save", ew_save, "directory to write the drawn pictures to");
  int64_t ew_show = 0;
  ew->add_option("--show-errors", ew_show, "print the first N documents that disagree, with the failed checks")
      ->capture_default_str();
  ew_draw.add_to(*ew);
  std::string ecap_model, ecap_scenes;
  int64_t ecap_limit = 100;
  CLI::App* ecap = app.add_subcommand("eval-caption", "caption held-out pictures and score the pictures against "
                                                      "the captions, attribute by attribute");
  ecap->add_option("-m,--model", ecap_model, "model directory or converted NAME.gguf")->required()->check(CLI::ExistingPath);
  ecap->add_option("--scenes", ecap_scenes, "a scenes.jsonl (e.g. DATA/test/scenes.jsonl)")->required()
      ->check(CLI::ExistingFile);
  hidden_alias(*ecap, "-n", ecap_limit);
  ecap->add_option("--limit", ecap_limit, "pictures (0: all)")->capture_default_str();
  add_image_limit_option(*ecap);

  if (auto code = parse_or_exit(app, argc, argv)) return *code;
  if (eq->parsed()) return eval_vqa_command(eq_model, eq_file, eq_limit, eq_show);
  if (ecap->parsed()) return eval_caption_command(ecap_model, ecap_scenes, ecap_limit);
  if (ev->parsed()) return eval_vae_command(ev_model, ev_scenes, ev_limit, ev_save, ev_write_scale);
  if (ec->parsed()) return eval_create_command(ec_model, ec_scenes, ec_limit, ec_shapes, ec_draw, ec_save);
  if (ew->parsed()) return eval_write_command(ew_model, ew_file, ew_limit, ew_draw, ew_save, ew_show);
  if (in->parsed()) {
    world::init_model(init_data, init_out, init_size, vocab, uint64_t(init_seed), init_options);
    std::printf("%s\n", init_out.c_str());
    return 0;
  }
  if (g->parsed()) {
    if (gen.world.min_shapes > gen.world.max_shapes) {
      std::fprintf(stderr, "dreamllm world gen: --min-shapes %d is more than --max-shapes %d\n", gen.world.min_shapes,
                   gen.world.max_shapes);
      return 2;
    }
    return gen_command(gen, gen_out, kinds, colours, background, no_antialias);
  }
  if (s->parsed()) return score_command(image, text, pairs, scenes, scorer, verbose);
  if (render_text.empty()) {
    std::fprintf(stderr, "dreamllm world render: -p/--prompt is required\nRun 'dreamllm world render --help' for the "
                         "options.\n");
    return 2;
  }
  check_output_directory(render_out);
  return render_command(render_text, render_out, render_size, background, no_antialias);
}

}  // namespace dl::app
