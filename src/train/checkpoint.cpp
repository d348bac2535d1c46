#include "train/checkpoint.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>

#include "core/error.h"
#include "io/atomic_file.h"
#include "io/config.h"
#include "io/gguf_model.h"
#include "io/safetensors.h"

namespace dl::train {

namespace fs = std::filesystem;

namespace {

bool is_weight_file(const std::string& name) {
  return name.ends_with(".safetensors") || name.ends_with(".bin") || name.ends_with(".index.json") ||
         name.ends_with(".pt") || name.ends_with(".pth");
}

// Big unchanged weight files are hard-linked when the file system allows (they are never written in place: every
// write replaces a file by rename); small files are copied. The destination is removed first, so a destination
// that is itself a link to the source is never truncated.
void copy_file_to(const fs::path& from, const fs::path& to, bool link) {
  std::error_code ec;
  fs::remove(to, ec);
  if (link) {
    fs::create_hard_link(from, to, ec);
    if (!ec) return;
  }
  fs::copy_file(from, to, ec);
  DL_CHECK(!ec, "cannot copy '", from.string(), "' to '", to.string(), "': ", ec.message());
}

// Every file name a component's weights may have, the one we write first, so a rewritten directory never keeps a
// stale twin that the loader would prefer.
std::vector<std::string> weight_names(io::Component c) {
  switch (c) {
    case io::kLLM:
      return {"model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json"};
    case io::kClip: return {"clip_vision_embedding.safetensors", "clip_vision_embedding.bin"};
    case io::kDream: return {"dream_embedding.safetensors", "dream_embedding.bin"};
    default: return {"stable_diffusion_head.safetensors", "stable_diffusion_head.bin"};
  }
}

void sync_path(const std::string& path, bool directory) {
  const int fd = ::open(path.c_str(), (directory ? O_DIRECTORY : 0) | O_RDONLY | O_CLOEXEC);
  const bool ok = fd >= 0 && ::fsync(fd) == 0;
  if (fd >= 0) ::close(fd);
  DL_CHECK(ok, "cannot flush '", path, "' to disk");
}

// A parameter's name inside its component's file.
std::string name_in_file(const std::string& n) {
  for (const std::string prefix : {"model.clip_vision_embedding.", "model.dream_embedding.", "stable_diffusion_head."})
    if (n.starts_with(prefix)) return n.substr(prefix.size());
  return n;
}

std::string checkpoint_name(int64_t step) { return "checkpoint-" + std::to_string(step); }

// The checkpoint-N directories under `out`, by step.
std::vector<std::pair<int64_t, fs::path>> checkpoints(const std::string& out) {
  std::vector<std::pair<int64_t, fs::path>> all;
  for (const auto& e : fs::directory_iterator(out)) {
    const std::string name = e.path().filename().string();
    if (!e.is_directory() || !name.starts_with("checkpoint-")) continue;
    const std::string digits = name.substr(11);
    if (digits.empty() || digits.size() > 15 || !std::all_of(digits.begin(), digits.end(), ::isdigit)) continue;
    all.emplace_back(std::stoll(digits), e.path());
  }
  std::sort(all.begin(), all.end());
  return all;
}

}  // namespace

io::Component component_of(const std::string& n) {
  if (n.starts_with("model.clip_vision_embedding.")) return io::kClip;
  if (n.starts_with("model.dream_embedding.")) return io::kDream;
  if (n.starts_with("stable_diffusion_head.")) return io::kDiffusion;
  return io::kLLM;
}

void write_model_files(const std::string& dir, const io::ModelDir& source, const ModelWeights& weights,
                       unsigned rewrite) {
  DL_CHECK(weights.model && weights.head, "write_model_files: no weights");
  if (source.gguf()) {
    // A converted model (NAME.gguf + companion) trains into a model directory: the configs and tokenizer files
    // embedded in the companion come out as files, and every component is written, since there is no weight file
    // in the directory layout to link. Quantized frozen weights are stored as F32, which holds their values exactly.
    const io::GgufModel& g = *source.gguf();
    DL_CHECK(g.companion, "'", source.path(), "' has no companion file ('", io::companion_path(source.path()),
             "'): training needs the configs and tokenizer files it holds");
    for (const std::string& rel : g.embedded_files()) {
      DL_CHECK(rel.find("..") == std::string::npos && !rel.starts_with("/"), "'", g.companion_path,
               "': embedded file name '", rel, "' leaves the model directory");
      const fs::path to = fs::path(dir) / rel;
      fs::create_directories(to.parent_path());
      const std::string text = *g.embedded(rel);
      io::write_file_atomically(to.string(), [&](std::ostream& f) { f << text; }, false);
    }
    for (io::Component c : {io::kLLM, io::kClip, io::kDream, io::kDiffusion})
      if (source.has(c)) rewrite |= c;
  }
  // Configs, tokenizer and base configs: everything in the source that is not a weight file or a checkpoint.
  if (!source.gguf()) {
    for (const auto& e : fs::directory_iterator(source.path())) {
      const std::string name = e.path().filename().string();
      // A run's own files (its metrics, a checkpoint's state, locks and other hidden files) are not the model's.
      const bool run_file = name == "metrics.jsonl" || name == "trainer_state.json" || name.starts_with(".");
      if (e.is_regular_file() && !is_weight_file(name) && !run_file) {
        copy_file_to(e.path(), fs::path(dir) / name, false);
      } else if (e.is_directory() && (name == "clip_vision" || name == "unet" || name == "vae" || name == "scheduler")) {
        fs::create_directories(fs::path(dir) / name);
        for (const auto& f : fs::directory_iterator(e.path()))
          if (f.is_regular_file() && !is_weight_file(f.path().filename().string()))
            copy_file_to(f.path(), fs::path(dir) / name / f.path().filename(), false);
      }
    }
  }
  std::map<io::Component, std::map<std::string, Tensor>> files;
  auto add = [&](const models::ParameterSet& set, bool head_side) {
    for (const auto& [n, v] : set.all()) {
      const io::Component c = component_of(n);
      if (!(rewrite & c)) continue;
      // Both sides hold the condition projector; the LLM side's copy is the one that trains.
      if (head_side && n == "stable_diffusion_head.projector.projector.weight" && weights.model->contains(n)) continue;
      const Tensor& t = v.value();
      files[c][name_in_file(n)] = dtype_info(t.dtype()).is_quantized ? t.to(DType::F32) : t;
    }
  };
  add(*weights.model, false);
  add(*weights.head, true);
  if (weights.labels != nullptr) {
    std::map<std::string, Tensor> labels;
    for (const auto& [n, v] : weights.labels->all()) labels[n] = v.value();
    io::write_safetensors(dir + "/" + kLabelEncoderFile, labels, {{"format", "pt"}});
  }
  for (io::Component c : {io::kLLM, io::kClip, io::kDream, io::kDiffusion}) {
    const std::vector<std::string> sources = (rewrite & c) ? std::vector<std::string>{} : source.weight_files(c);
    std::error_code ec;
    for (const std::string& n : weight_names(c))
      if (fs::exists(fs::path(dir) / n) && std::find_if(sources.begin(), sources.end(), [&](const std::string& s) {
                                             return fs::equivalent(s, fs::path(dir) / n, ec);
                                           }) == sources.end())
        fs::remove(fs::path(dir) / n, ec);
    if (rewrite & c) {
      const std::string file = weight_names(c).front();
      DL_CHECK(files.count(c), "write_model_files: no weights for ", file);
      io::write_safetensors(dir + "/" + file, files[c], {{"format", "pt"}});
    } else {
      for (const std::string& f : sources) {
        const fs::path to = fs::path(dir) / fs::path(f).filename();
        if (!fs::equivalent(f, to, ec)) copy_file_to(f, to, true);  // already the same file: writing in place
      }
    }
  }
}

std::string save_checkpoint(const std::string& out, const io::ModelDir& source, const ModelWeights& weights,
                            unsigned rewrite, const nn::AdamW& optimizer, const CheckpointState& state) {
  const std::string final_dir = out + "/" + checkpoint_name(state.step);
  const std::string tmp = out + "/." + checkpoint_name(state.step) + ".tmp";
  std::error_code ec;
  fs::remove_all(tmp, ec);
  try {
    fs::create_directories(tmp);
    write_model_files(tmp, source, weights, rewrite);
    std::map<std::string, Tensor> opt;
    for (size_t i = 0; i < optimizer.params().size(); ++i) {
      const std::string& n = optimizer.params()[i].name();
      opt["exp_avg/" + n] = optimizer.exp_avg()[i];
      opt["exp_avg_sq/" + n] = optimizer.exp_avg_sq()[i];
      opt["steps/" + n] = Tensor::from_vector_i64({optimizer.parameter_steps(i)}, {1});
    }
    io::write_safetensors(tmp + "/optimizer.safetensors", opt);
    nlohmann::json js = {{"step", state.step},
                         {"optimizer_steps", optimizer.steps()},
                         {"samples_drawn", state.samples_drawn},
                         {"options", state.options},
                         {"metrics", state.metrics}};
    io::write_file_atomically(tmp + "/trainer_state.json", [&](std::ostream& f) { f << js.dump(1) << "\n"; });
    sync_path(tmp, true);
    // A checkpoint of the same step written before is moved aside, not deleted in place: a kill in the middle of a
    // deletion would leave a checkpoint directory missing some of its files.
    const std::string replaced = out + "/." + checkpoint_name(state.step) + ".old";
    fs::remove_all(replaced, ec);
    if (fs::exists(final_dir)) fs::rename(final_dir, replaced);
    fs::rename(tmp, final_dir);
    sync_path(out, true);
    fs::remove_all(replaced, ec);
  } catch (const std::exception& e) {
    fs::remove_all(tmp, ec);
    fail("could not save checkpoint ", final_dir, " (the earlier checkpoints are intact): ", e.what());
  }
  return final_dir;
}

std::string latest_checkpoint(const std::string& out) {
  std::error_code ec;
  if (!fs::is_directory(out, ec)) return "";
  const auto all = checkpoints(out);
  for (auto it = all.rbegin(); it != all.rend(); ++it)
    if (fs::exists(it->second / "trainer_state.json")) return it->second.string();  // complete ones only
  return "";
}

CheckpointState read_checkpoint_state(const std::string& dir) {
  const std::string p = dir + "/trainer_state.json";
  return parse_checkpoint_state(io::read_text_file(p), "'" + p + "'");
}

CheckpointState parse_checkpoint_state(const std::string& text, const std::string& what) {
  nlohmann::json js;
  try {
    js = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    fail(what, ": invalid JSON (", e.what(), ")");
  }
  DL_CHECK(js.is_object() && js.contains("step") && js["step"].is_number_integer() && js.contains("samples_drawn") &&
               js["samples_drawn"].is_number_integer(),
           what, " lacks step / samples_drawn");
  CheckpointState s;
  s.step = js["step"].get<int64_t>();
  s.samples_drawn = js["samples_drawn"].get<int64_t>();
  DL_CHECK(s.step >= 0 && s.samples_drawn >= 0, what, ": negative step or position");
  if (js.contains("options")) s.options = js["options"];
  if (js.contains("metrics")) s.metrics = js["metrics"];
  // Resume reads the count of skipped samples back from the metrics.
  if (s.metrics.is_object() && s.metrics.contains("skipped_samples")) {
    const nlohmann::json& n = s.metrics["skipped_samples"];
    DL_CHECK(n.is_number_integer() && n.get<int64_t>() >= 0, what, ": metrics.skipped_samples is not a count");
  }
  return s;
}

void load_optimizer_state(const std::string& dir, nn::AdamW& optimizer, int64_t step) {
  const io::SafetensorsFile f = io::read_safetensors(dir + "/optimizer.safetensors");
  auto get = [&](const std::string& n) -> const Tensor& {
    auto it = f.tensors.find(n);
    DL_CHECK(it != f.tensors.end(), "'", dir, "/optimizer.safetensors' has no '", n,
             "' (was the checkpoint made with another set of trainable parameters?)");
    return it->second;
  };
  for (size_t i = 0; i < optimizer.params().size(); ++i) {
    const std::string& n = optimizer.params()[i].name();
    const Tensor& steps = get("steps/" + n);
    DL_CHECK(steps.dtype() == DType::I64 && steps.numel() == 1, "'", dir, "/optimizer.safetensors': steps/", n,
             " is not one I64");
    optimizer.load_state(i, get("exp_avg/" + n), get("exp_avg_sq/" + n), steps.data<int64_t>()[0]);
  }
  optimizer.set_steps(step);
}

void prune_checkpoints(const std::string& out, int keep, const std::string& in_use) {
  if (keep <= 0) return;
  const auto all = checkpoints(out);
  std::error_code ec;
  for (size_t i = 0; i + size_t(keep) < all.size(); ++i) {
    if (!in_use.empty() && fs::equivalent(all[i].second, in_use, ec)) continue;
    // Renamed first (atomic), then deleted: a kill during the deletion leaves a hidden .checkpoint-N.old, which the
    // next run removes, never a checkpoint-N that lacks files.
    std::string hidden = all[i].second.filename().string();
    hidden.insert(0, 1, '.');
    const fs::path doomed = fs::path(out) / (hidden + ".old");
    fs::remove_all(doomed, ec);
    fs::rename(all[i].second, doomed, ec);
    const fs::path victim = ec ? all[i].second : doomed;
    fs::remove_all(victim, ec);
  }
}

}  // namespace dl::train
