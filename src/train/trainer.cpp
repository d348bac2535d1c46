#include "train/trainer.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <unordered_map>

#include "core/error.h"
#include "core/file.h"
#include "core/ops.h"
#include "io/atomic_file.h"
#include "io/model_dir.h"
#include "io/safetensors.h"
#include "models/dreamllm.h"
#include "models/unet.h"
#include "models/vae.h"
#include "nn/functional.h"
#include "text/tokenizer.h"
#include "train/checkpoint.h"
#include "train/run_dir.h"

namespace dl::train {

namespace fs = std::filesystem;

namespace {

const std::string kHead = "stable_diffusion_head.";
// Draws from the data stream one sample may take before the run stops (every one unusable).
constexpr int kMaxAttempts = 10000;

// A writable F32 master copy of a parameter (bf16 release weights, memory-mapped files).
void make_writable_f32(nn::Var v) {
  if (v.value().dtype() == DType::F32 && v.value().is_contiguous() && v.value().storage()->is_writable()) return;
  v.set_value(v.value().to(DType::F32).clone());
}

// HF Trainer's decay split: no weight decay on biases and on normalisation weights.
bool decays(const std::string& name) { return !name.ends_with("bias") && !name.ends_with("norm.weight"); }

// Every option that changes what a run computes: a checkpoint records them, and --resume refuses a checkpoint
// made with other values (naming them), so that a resumed run is the same run. Options that change only where,
// how often or how fast things happen (-o, --save-every, --save-total-limit, threads, the posterior cache,
// --grad-checkpointing: the same gradients) are left out.
nlohmann::json fixed_options(const TrainOptions& o) {
  auto canonical = [](const std::string& path) {
    std::error_code ec;
    const fs::path p = fs::weakly_canonical(path, ec);
    return ec ? path : p.string();
  };
  nlohmann::json data = nlohmann::json::array();
  for (const DatasetSpec& d : o.data)
    data.push_back({{"path", canonical(d.path)}, {"format", data_format_name(d.format)}, {"size", d.size}});
  nlohmann::json trainable = nlohmann::json::array(), reinit = nlohmann::json::array(),
                 lr_scale = nlohmann::json::object();
  for (Group g : o.stage.trainable) trainable.push_back(group_name(g));
  for (Reinit r : o.stage.reinit) reinit.push_back(reinit_name(r));
  for (const auto& [g, factor] : o.lr_scale) lr_scale[group_name(g)] = factor;
  return {{"stage", o.stage.name},
          {"micro_batch", o.micro_batch},
          {"grad_accum", o.grad_accum},
          {"seed", o.seed},
          {"max_length", o.max_length},
          {"shuffle_buffer", o.shuffle_buffer},
          {"data", data},
          {"model", canonical(o.model)},
          {"lr", o.learning_rate},
          {"weight_decay", o.weight_decay},
          {"lr_scale", lr_scale},
          {"warmup_ratio", o.warmup_ratio},
          {"max_grad_norm", o.max_grad_norm},
          {"max_steps", o.max_steps},
          {"epochs", o.epochs},
          {"cond_dropout", o.condition_dropout},
          {"posterior", o.posterior_mode ? "mode" : "sample"},
          {"whiten_condition", o.whiten_condition},
          {"condition_labels", o.condition_labels},
          {"trainable", trainable},
          {"reinit", reinit},
          {"lm_weight", o.stage.weights.lm},
          {"vm_weight", o.stage.weights.vm},
          {"snr_gamma", o.stage.weights.snr_gamma},
          {"kl_weight", o.stage.kl_weight},
          {"latent_gain_jitter", o.stage.latent_gain_jitter}};
}

}  // namespace

Tensor whitening_matrix(const std::vector<double>& rows, int64_t C, double eps_ratio) {
  DL_CHECK(C >= 1 && rows.size() % size_t(C) == 0, "whitening: ", rows.size(), " values are not rows of ", C);
  const int64_t N = int64_t(rows.size()) / C;
  DL_CHECK(N >= 2, "whitening needs at least 2 rows, got ", N);
  DL_CHECK(eps_ratio > 0 && eps_ratio < 1, "whitening: eps_ratio ", eps_ratio, " is outside (0, 1)");
  std::vector<double> mean(size_t(C), 0.0), cov(size_t(C * C), 0.0);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t i = 0; i < C; ++i) mean[size_t(i)] += rows[size_t(n * C + i)] / double(N);
  for (int64_t n = 0; n < N; ++n) {
    const double* x = rows.data() + n * C;
    for (int64_t i = 0; i < C; ++i)
      for (int64_t j = 0; j <= i; ++j) cov[size_t(i * C + j)] += (x[i] - mean[size_t(i)]) * (x[j] - mean[size_t(j)]);
  }
  for (int64_t i = 0; i < C; ++i)
    for (int64_t j = 0; j <= i; ++j) cov[size_t(j * C + i)] = cov[size_t(i * C + j)] /= double(N - 1);
  std::vector<double> values(static_cast<size_t>(C)), vectors(static_cast<size_t>(C * C));
  ops::symmetric_eigen(C, cov.data(), values.data(), vectors.data());
  const double top = values.back();
  DL_CHECK(std::isfinite(top) && top > 0, "whitening: the rows do not vary (largest variance ", top, ")");
  std::vector<double> gain(static_cast<size_t>(C));
  for (int64_t k = 0; k < C; ++k)
    gain[size_t(k)] = 1.0 / std::sqrt(std::max(values[size_t(k)], 0.0) + eps_ratio * top);
  Tensor S = Tensor::zeros({C, C});
  float* out = S.f32();
  for (int64_t i = 0; i < C; ++i)
    for (int64_t j = 0; j < C; ++j) {
      double v = 0;
      for (int64_t k = 0; k < C; ++k) v += vectors[size_t(k * C + i)] * gain[size_t(k)] * vectors[size_t(k * C + j)];
      out[i * C + j] = float(v);
    }
  return S;
}

void reinitialise(const std::vector<Reinit>& what, const models::ParameterSet& params,
                  const io::DreamLLMConfig& config, uint64_t seed) {
  for (Reinit r : what) {
    Rng rng(derive_seed(seed, 0x696e6974, uint64_t(r)));
    auto normal = [&](const std::string& name) {
      nn::Var v = params.at(name);
      make_writable_f32(v);
      float* p = v.value().f32();
      for (int64_t i = 0; i < v.value().numel(); ++i) p[i] = 0.02f * rng.normal();
    };
    // PyTorch's Linear.reset_parameters: kaiming_uniform(a = sqrt 5) is U(+-1/sqrt(fan_in)), the bias too.
    auto linear = [&](const std::string& prefix, bool bias) {
      nn::Var w = params.at(prefix + "weight");
      make_writable_f32(w);
      const int64_t fan_in = w.shape()[1];
      const double bound = 1.0 / std::sqrt(double(fan_in));
      float* p = w.value().f32();
      for (int64_t i = 0; i < w.value().numel(); ++i) p[i] = float((2.0 * rng.uniform() - 1.0) * bound);
      if (!bias) return;
      nn::Var b = params.at(prefix + "bias");
      make_writable_f32(b);
      float* q = b.value().f32();
      for (int64_t i = 0; i < b.value().numel(); ++i) q[i] = float((2.0 * rng.uniform() - 1.0) * bound);
    };
    switch (r) {
      case Reinit::kDreamQueries: normal("model.dream_embedding.dream_queries"); break;
      case Reinit::kVisionProjector: linear("model.clip_vision_embedding.projector.projector.", true); break;
      case Reinit::kConditionProjector: linear(kHead + "projector.projector.", false); break;
      case Reinit::kNewTokenRows: {
        // [PAD] and the additional special tokens are the rows resize_token_embeddings adds.
        std::vector<int64_t> rows{config.token_id("[PAD]")};
        for (const char* t : {"<image>", "<im_patch>", "<im_start>", "<im_end>", "<dream>", "<dream_start>",
                              "<dream_end>"})
          rows.push_back(config.token_id(t));
        for (const std::string name : {"model.embed_tokens.weight", "lm_head.weight"}) {
          if (!params.contains(name)) continue;  // tied embeddings
          nn::Var v = params.at(name);
          make_writable_f32(v);
          const int64_t D = v.shape()[1];
          for (int64_t row : rows) {
            DL_CHECK(row >= 0 && row < v.shape()[0], "token id ", row, " is outside ", name);
            float* p = v.value().f32() + row * D;
            for (int64_t i = 0; i < D; ++i) p[i] = 0.02f * rng.normal();
          }
        }
        break;
      }
    }
  }
}

StepLosses optimizer_step(const LossFunction& loss, const std::vector<Batch>& micro_batches, nn::AdamW& optimizer,
                          float lr, float max_grad_norm) {
  DL_CHECK(!micro_batches.empty(), "optimizer_step: no micro-batches");
  const float share = 1.f / float(micro_batches.size());
  StepLosses out;
  double lm_sum = 0, vm_sum = 0, rec_sum = 0, kl_sum = 0;
  int64_t lm_n = 0, vm_n = 0, ae_n = 0;
  for (const Batch& b : micro_batches) {
    const LossTerms t = loss(b);
    out.loss += t.loss.value().f32()[0] * share;
    if (!std::isnan(t.lm_loss) && t.lm_tokens > 0) lm_sum += t.lm_loss, ++lm_n;
    if (t.dream_images > 0 && !std::isnan(t.vm_loss)) vm_sum += t.vm_loss, ++vm_n;
    if (t.dream_images > 0) rec_sum += t.rec_loss, kl_sum += t.kl_loss, ++ae_n;
    out.lm_tokens += t.lm_tokens;
    // A micro-batch with nothing to learn (a text-to-image pair in a comprehension stage) has no graph.
    if (t.loss.requires_grad()) nn::scale(t.loss, share).backward();
  }
  out.lm_loss = lm_n ? float(lm_sum / double(lm_n)) : 0.f;
  out.vm_loss = vm_n ? float(vm_sum / double(vm_n)) : 0.f;
  out.rec_loss = ae_n ? float(rec_sum / double(ae_n)) : 0.f;
  out.kl_loss = ae_n ? float(kl_sum / double(ae_n)) : 0.f;
  out.grad_norm = nn::clip_grad_norm(optimizer.params(), max_grad_norm > 0.f ? max_grad_norm : INFINITY);
  optimizer.step(lr);
  return out;
}

StepLosses optimizer_step(const DreamLLMObjective& objective, const std::vector<Batch>& micro_batches,
                          const LossWeights& weights, nn::AdamW& optimizer, float lr, float max_grad_norm) {
  return optimizer_step([&](const Batch& b) { return objective(b, weights, false); }, micro_batches, optimizer, lr,
                        max_grad_norm);
}

std::unique_ptr<nn::AdamW> make_optimizer(const std::vector<nn::Var>& params, const std::vector<std::string>& names,
                                          float lr, float weight_decay) {
  DL_CHECK(params.size() == names.size(), "make_optimizer: ", params.size(), " parameters but ", names.size(),
           " names");
  auto opt = std::make_unique<nn::AdamW>(params, nn::AdamWConfig{lr, 0.9f, 0.999f, 1e-8f, weight_decay});
  for (size_t i = 0; i < params.size(); ++i) opt->set_weight_decay(i, decays(names[i]) ? weight_decay : 0.f);
  return opt;
}

struct Trainer::Impl {
  TrainOptions opt;
  TrainEvents events;
  RunDirectory run_dir;   // locked for the trainer's life: one trainer per output directory
  std::string start_dir;  // the model directory the weights came from (a checkpoint when resuming)
  io::ModelDir dir;
  models::DreamLLM model;
  models::ParameterSet head_params;
  models::UNet unet;
  models::Vae vae;
  text::Tokenizer tokenizer;
  DocumentBuilder builder;
  ImagePrep prep;
  MixedStream stream;
  DreamLLMObjective objective;
  AutoencoderObjective autoencoder;
  models::ParameterSet label_params;  // the label encoder (kLabelConditioned only)
  std::unique_ptr<LabelConditionedObjective> labelled;
  std::unique_ptr<nn::AdamW> optimizer;
  // The frozen VAE's posterior of each dream picture, encoded once per run: the encoder is deterministic and the
  // DreamLLM objective never trains it, so a picture's moments do not change. The encoder's arithmetic is per
  // picture (convolutions, group norms and attention never mix pictures), so moments do not depend on the batch
  // that first met a picture, and a resumed run (whose cache starts empty) stays bit-identical. Past
  // opt.posterior_cache_bytes, further pictures are encoded each time they come.
  struct Moments {
    Tensor mean, logvar;  // [1, C, h, w]
  };
  std::unordered_map<std::string, Moments> posteriors;
  size_t posterior_bytes = 0;
  std::vector<std::string> trainable_names;
  unsigned rewrite = 0;  // components whose weights train
  int64_t total = 0, start = 0, skipped_samples = 0;

  // The output directory, checked before anything is written into it (the lock file included).
  static const std::string& output_of(const TrainOptions& o) {
    DL_CHECK(!o.out.empty(), "no output directory given");
    std::error_code ec;
    DL_CHECK(!fs::equivalent(o.out, o.model, ec), "the output directory '", o.out,
             "' is the model directory being trained: choose another one");
    return o.out;
  }
  // Where the weights come from: the newest checkpoint when resuming one, else the model. A fresh run needs a
  // directory without an earlier run's files, or --overwrite to remove them.
  static std::string resolve_start(const TrainOptions& o) {
    remove_partial_checkpoints(o.out);
    if (o.resume) {
      const std::string ck = latest_checkpoint(o.out);
      if (!ck.empty()) return ck;
    }
    std::vector<std::string> earlier = earlier_run_files(o.out);
    // A run killed before its first checkpoint left only its metrics: --resume starts it again.
    if (o.resume) std::erase(earlier, std::string("metrics.jsonl"));
    if (!earlier.empty() && !o.overwrite) {
      std::error_code ec;
      DL_CHECK(!fs::exists(o.out + "/trainer_state.json", ec), "the output directory '", o.out,
               "' is a checkpoint of another run, not a run's directory: to continue that run, pass the directory "
               "holding its checkpoints with --resume; to train from it, pass it as -m");
      std::string names;
      for (size_t i = 0; i < earlier.size() && i < 4; ++i) names += (i ? ", " : "") + earlier[i];
      if (earlier.size() > 4) names += ", ... (" + std::to_string(earlier.size()) + " entries)";
      fail("the output directory '", o.out, "' already holds an earlier run or model (", names, ")",
           o.resume ? " but no checkpoint to resume from" : "",
           ": continue its run with --resume, replace it with --overwrite, or choose another -o");
    }
    if (o.overwrite) clear_earlier_run(o.out);
    return o.model;
  }
  static models::ParameterSet head_of(const io::ModelDir& d) {
    models::ParameterSet p;
    p.adopt(d.load(io::kDiffusion), kHead);
    return p;
  }
  static DocumentOptions doc_options(const TrainOptions& o, const models::DreamLLM& m) {
    DocumentOptions d;
    d.image_tokens = int(m.image_tokens());
    d.dream_queries = int(m.dream_queries());
    d.max_length = int(std::min<int64_t>(o.max_length, m.llm().config().max_position_embeddings));
    d.comprehension = o.stage.comprehension;
    d.creation = o.stage.creation;
    return d;
  }

  Impl(TrainOptions o, TrainEvents e)
      : opt(std::move(o)),
        events(std::move(e)),
        run_dir(output_of(opt)),
        start_dir(resolve_start(opt)),
        dir(io::ModelDir::open(start_dir)),
        model(models::DreamLLM::load(dir)),
        head_params(head_of(dir)),
        unet(dir.unet_config(), head_params, kHead + "unet."),
        vae(dir.vae_config(), head_params, kHead + "vae."),
        tokenizer(text::Tokenizer::load(start_dir)),
        builder(tokenizer, doc_options(opt, model)),
        prep{io::clip_preprocess_config(dir), dir.unet_config().sample_size * dir.vae_config().scale_factor()},
        stream(opt.data, opt.seed, opt.shuffle_buffer,
               [this](const DataIssue& i) { warn(i.where() + ": " + i.message + " (skipped)"); }),
        objective(model, unet, dir.scheduler_config()),
        autoencoder(vae) {
    DL_CHECK(opt.micro_batch >= 1 && opt.grad_accum >= 1, "micro-batch and accumulation must be >= 1");
    DL_CHECK(opt.condition_dropout >= 0.f && opt.condition_dropout < 1.f, "condition dropout ", opt.condition_dropout,
             " is outside [0, 1)");
    if (opt.learning_rate <= 0.f) opt.learning_rate = opt.stage.learning_rate;
    model.set_gradient_checkpointing(opt.gradient_checkpointing);
    const int64_t per_step = opt.micro_batch * opt.grad_accum;
    total = opt.max_steps > 0 ? opt.max_steps
                              : std::max<int64_t>(1, int64_t(std::ceil(opt.epochs * double(stream.epoch_size()) /
                                                                       double(per_step))));
    const bool resumed = start_dir != opt.model;
    if (!resumed) reinitialise(opt.stage.reinit, model.parameters(), dir.config(), opt.seed);
    DL_CHECK(opt.whiten_condition >= 0, "--whiten-condition must be >= 0, not ", opt.whiten_condition);
    if (!resumed && opt.whiten_condition > 0) whiten_condition_projector();

    // The trainable set, in state-dict order (the label encoder first).
    std::set<Group> groups(opt.stage.trainable.begin(), opt.stage.trainable.end());
    std::vector<nn::Var> params;
    if (opt.stage.objective == Objective::kLabelConditioned) {
      const nn::Var table = label_encoder();
      params.push_back(table);
      trainable_names.push_back(kLabelEmbeddingName);
      labelled =
          std::make_unique<LabelConditionedObjective>(unet, table, model.dream_queries(), dir.scheduler_config());
    }
    std::vector<std::pair<std::string, nn::Var>> candidates(model.parameters().all().begin(),
                                                            model.parameters().all().end());
    for (const auto& [name, v] : head_params.all())
      if (!model.parameters().contains(name)) candidates.emplace_back(name, v);  // the projector lives LLM-side
    for (const auto& [name, v] : candidates) {
      if (!groups.count(group_of(name))) continue;
      nn::Var p = v;
      make_writable_f32(p);
      p.set_requires_grad(true);
      params.push_back(p);
      trainable_names.push_back(name);
      rewrite |= component_of(name);
    }
    DL_CHECK(!params.empty(), "stage ", opt.stage.name, " has no trainable parameters");
    // Re-initialised parts change even when they do not train.
    for (Reinit r : opt.stage.reinit)
      rewrite |= r == Reinit::kDreamQueries       ? io::kDream
                 : r == Reinit::kVisionProjector  ? io::kClip
                 : r == Reinit::kConditionProjector ? io::kDiffusion
                                                    : io::kLLM;
    if (opt.whiten_condition > 0) rewrite |= io::kDiffusion;
    optimizer = make_optimizer(params, trainable_names, opt.learning_rate, opt.weight_decay);
    for (size_t i = 0; i < trainable_names.size(); ++i)
      for (const auto& [group, factor] : opt.lr_scale)
        if (trainable_names[i] != kLabelEmbeddingName && group_of(trainable_names[i]) == group)
          optimizer->set_lr_scale(i, factor);

    fs::create_directories(opt.out);
    if (resumed) {
      const CheckpointState st = read_checkpoint_state(start_dir);
      const nlohmann::json now = fixed_options(opt);
      const std::vector<std::string> differ = differing_options(st.options, now);
      if (!differ.empty()) {
        std::string list;
        for (const std::string& d : differ) list += (list.empty() ? "" : ", ") + d;
        fail("cannot resume from '", start_dir, "': it belongs to a run with other options: ", list,
             ". Resume with the run's options, or start a new run with --overwrite or another -o");
      }
      DL_CHECK(st.step <= total, "checkpoint step ", st.step, " is beyond the run's ", total, " steps");
      load_optimizer_state(start_dir, *optimizer, st.step);
      // Each sample takes at most kMaxAttempts draws (next_sample): a larger position is a damaged state file,
      // and replaying it would take practically forever.
      const double most_drawn = double(st.step) * double(opt.micro_batch * opt.grad_accum) * double(kMaxAttempts);
      DL_CHECK(double(st.samples_drawn) <= most_drawn, "'", start_dir, "/trainer_state.json': samples_drawn ",
               st.samples_drawn, " is more than ", st.step, " steps can have drawn (the file is damaged)");
      stream.skip(st.samples_drawn);
      start = st.step;
      if (st.metrics.is_object() && st.metrics.contains("skipped_samples"))
        skipped_samples = st.metrics["skipped_samples"].get<int64_t>();
      trim_metrics(start);
    } else {
      std::error_code ec;
      fs::remove(opt.out + "/metrics.jsonl", ec);
    }
  }

  // P <- S P, S the whitening of the conditions of the first opt.whiten_condition pair captions (as creation
  // prompts: <s> caption <dream_start> queries <dream_end>), pooled over the queries.
  void whiten_condition_projector() {
    DL_CHECK(opt.stage.creation, "--whiten-condition needs a stage that trains creation (stage ", opt.stage.name,
             " reads pairs only as image to text)");
    nn::NoGradGuard no_grad;
    std::vector<double> rows;
    int64_t captions = 0, C = 0;
    for (const DatasetSpec& spec : opt.data) {
      auto source = open_source(spec, [](const DataIssue&) {});
      while (captions < opt.whiten_condition) {
        const std::optional<Record> r = source->next();
        if (!r) break;
        const auto* pair = std::get_if<PairRecord>(&*r);
        if (pair == nullptr) continue;
        const Sample s = builder.pair(*pair, 0.0);  // uniform 0: text to image whenever the stage creates
        std::vector<int64_t> ids(s.input_ids.begin(), s.input_ids.end());
        const int64_t T = int64_t(ids.size());
        const Tensor c = model.forward(Tensor::from_vector_i64(ids, {1, T}), Tensor(), Tensor()).conditions.value();
        C = c.size(2);
        const Tensor cf = c.to(DType::F32).contiguous();
        rows.insert(rows.end(), cf.f32(), cf.f32() + cf.numel());
        ++captions;
      }
    }
    DL_CHECK(captions >= 2, "--whiten-condition needs pair records (image-text pairs) in the data: found ", captions);
    const Tensor S = whitening_matrix(rows, C);
    nn::Var p = model.parameters().at(kHead + "projector.projector.weight");
    make_writable_f32(p);
    const Tensor whitened = ops::matmul(S, p.value());  // p is F32 and contiguous now
    std::copy(whitened.f32(), whitened.f32() + whitened.numel(), p.value().f32());
  }

  // The label embedding table [condition_labels, C]: the starting directory's (a checkpoint, or a model that went
  // through this stage before), else fresh at N(0, 0.5^2), so that a token of four labels has unit variance per
  // channel, as the states of a layer-normed text encoder have.
  nn::Var label_encoder() {
    DL_CHECK(opt.condition_labels >= 1, "stage ", opt.stage.name,
             " needs the size of the label vocabulary (--condition-labels N, the records' condition_labels ids)");
    const int64_t V = opt.condition_labels, C = dir.unet_config().cross_attention_dim;
    Tensor table;
    std::error_code ec;  // not the throwing fs::exists: a symbolic-link loop there is read and reported by name
    if (const std::string path = start_dir + "/" + kLabelEncoderFile; fs::exists(fs::symlink_status(path, ec))) {
      const io::SafetensorsFile f = io::read_safetensors(path);
      const auto it = f.tensors.find(kLabelEmbeddingName);
      DL_CHECK(it != f.tensors.end(), "'", path, "' has no '", kLabelEmbeddingName, "'");
      DL_CHECK(it->second.shape() == Shape({V, C}), "'", path, "': ", kLabelEmbeddingName, " is ",
               it->second.describe(), ", not [", V, ", ", C, "] (--condition-labels ", V, ")");
      table = it->second.to(DType::F32).clone();
    } else {
      Rng rng(derive_seed(opt.seed, 0x6c61626c));
      std::vector<float> w(size_t(V * C));
      for (float& x : w) x = 0.5f * rng.normal();
      table = Tensor::from_vector(w, {V, C});
    }
    io::StateDict d{{kLabelEmbeddingName, table}};
    label_params.adopt(d, "");
    nn::Var v = label_params.at(kLabelEmbeddingName);
    v.set_requires_grad(true);
    return v;
  }

  void warn(const std::string& message) {
    if (events.on_warning) events.on_warning(message);
  }

  // Keeps the metrics of steps up to `step` (a resumed run rewrites what came after its checkpoint).
  void trim_metrics(int64_t step) {
    const std::string path = opt.out + "/metrics.jsonl";
    // Read without blocking (not a FIFO) and bounded: one line a step, a few hundred bytes each.
    const std::optional<std::string> text = read_file_if_exists(path, size_t(1) << 30);
    if (!text) return;
    std::istringstream in(*text);
    std::string kept, line;
    while (std::getline(in, line)) {
      try {
        const auto j = nlohmann::json::parse(line);
        if (j.contains("step") && j["step"].get<int64_t>() <= step) kept += line + "\n";
      } catch (const nlohmann::json::exception&) {
      }
    }
    io::write_file_atomically(path, [&](std::ostream& f) { f << kept; });
  }

  // Builds the next usable sample: records whose images cannot be read are skipped with a warning.
  PreparedSample next_sample() {
    for (int attempts = 0;; ++attempts) {
      DL_CHECK(attempts < kMaxAttempts, kMaxAttempts,
               " consecutive samples had unreadable images: check the dataset paths");
      MixedStream::Item item = stream.next();
      Rng coin(derive_seed(opt.seed, 0x73616d70, uint64_t(item.index)));
      PreparedSample p;
      try {
        p.sample = builder.build(item.record, coin);
        for (const ImageRef& r : p.sample.images) p.pixels.push_back(io::clip_preprocess(load_image(r.path), prep.clip));
        for (const ImageRef& r : p.sample.dream_images) p.dm_pixels.push_back(diffusion_pixels(load_image(r.path), prep.resolution));
      } catch (const Error& e) {
        ++skipped_samples;
        warn("sample " + std::to_string(item.index) + " of '" + stream.datasets()[item.dataset].path +
             "' skipped: " + e.what());
        continue;
      }
      return p;
    }
  }

  // The posterior moments [M, C, h, w] of a batch's dream pictures (refs[m] is the file of pictures[m]); the ones
  // not cached yet are encoded one at a time. A picture's posterior must not depend on which other pictures were
  // still uncached: encoded together, OpenBLAS's Haswell kernels round a picture's rows differently with the
  // batch's size, and a resumed run (whose cache starts empty) or a cached one drifted from an uninterrupted one in
  // the last bits.
  std::pair<Tensor, Tensor> posteriors_of(const std::vector<std::string>& refs, const Tensor& pictures) {
    const int64_t M = pictures.size(0);
    std::vector<Moments> got(static_cast<size_t>(M));
    std::vector<int64_t> misses;
    std::vector<Tensor> rows;
    for (int64_t m = 0; m < M; ++m) {
      if (const auto it = posteriors.find(refs[size_t(m)]); it != posteriors.end()) {
        got[size_t(m)] = it->second;
      } else {
        misses.push_back(m);
        rows.push_back(pictures.slice(0, m, m + 1));
      }
    }
    if (!misses.empty()) {
      // The cache holds only while the encoder stays fixed: a VAE listed as trainable is encoded every time.
      const bool vae_moves = std::find(opt.stage.trainable.begin(), opt.stage.trainable.end(), Group::kVAE) !=
                             opt.stage.trainable.end();
      for (size_t i = 0; i < misses.size(); ++i) {
        const auto post = vae.encode(nn::Var(rows[i]));
        Moments& mm = got[size_t(misses[i])];
        mm = {post.mean.value().contiguous(), post.logvar.value().contiguous()};
        const std::string& ref = refs[size_t(misses[i])];
        const size_t bytes = size_t(mm.mean.numel() + mm.logvar.numel()) * sizeof(float) + ref.size();
        if (!vae_moves && posterior_bytes + bytes <= opt.posterior_cache_bytes && posteriors.emplace(ref, mm).second)
          posterior_bytes += bytes;
      }
    }
    std::vector<Tensor> means, logvars;
    for (const Moments& mm : got) {
      means.push_back(mm.mean);
      logvars.push_back(mm.logvar);
    }
    return {ops::concat(means, 0), ops::concat(logvars, 0)};
  }

  // One micro-batch with its diffusion targets: VAE posterior samples x scaling factor, noise and timesteps from a
  // generator derived from the micro-batch's global index.
  Batch next_batch(int64_t micro_index, StepReport& r) {
    std::vector<PreparedSample> samples;
    for (int64_t i = 0; i < opt.micro_batch; ++i) samples.push_back(next_sample());
    Collated c = collate(samples, int32_t(dir.config().token_id("[PAD]")));
    Rng rng(derive_seed(opt.seed, 0x6e6f6973, uint64_t(micro_index)));
    Batch& b = c.batch;
    r.samples += opt.micro_batch;
    r.tokens += int64_t(ops::sum_all(b.attention_mask));
    r.images += b.pixel_values.defined() ? b.pixel_values.size(0) : 0;
    if (opt.stage.objective == Objective::kAutoencoder) {
      if (c.dm_images.defined()) {
        const int64_t f = dir.vae_config().scale_factor();
        b.dm_images = c.dm_images;
        const int64_t n = c.dm_images.size(0), h = c.dm_images.size(2) / f, w = c.dm_images.size(3) / f;
        b.posterior_noise = rng.randn({n, dir.vae_config().latent_channels, h, w});
        if (const float j = opt.stage.latent_gain_jitter; j > 0.f) {
          std::vector<float> gain(size_t(n * h * w));
          for (float& g : gain) g = float(1.0 + j * (2.0 * rng.uniform() - 1.0));
          b.latent_gain = Tensor::from_vector(gain, {n, 1, h, w});
        }
        r.dream_images += c.dm_images.size(0);
      }
      return b;
    }
    if (c.dm_images.defined() && opt.stage.weights.vm != 0.f) {
      const int64_t M = c.dm_images.size(0);
      Tensor latents;
      {
        nn::NoGradGuard frozen;
        std::vector<std::string> refs;
        for (const PreparedSample& p : samples)
          for (const ImageRef& ref : p.sample.dream_images) refs.push_back(ref.path);
        DL_CHECK(int64_t(refs.size()) == M, "the batch has ", M, " diffusion picture(s) for ", refs.size(),
                 " dream image reference(s)");
        const auto [mean, logvar] = posteriors_of(refs, c.dm_images);
        // latent_dist.sample() times the scaling factor, as the original encodes (or the mode, on request; the
        // sample's noise is drawn either way, so the rest of the batch does not depend on the choice).
        const Tensor eps = rng.randn(mean.shape());
        latents = ops::scale(opt.posterior_mode ? mean : ops::gaussian_sample(mean, logvar, eps),
                             dir.vae_config().scaling_factor);
      }
      b.dm_latents = latents;
      b.noise = rng.randn(latents.shape());
      const int64_t T = dir.scheduler_config().num_train_timesteps;
      for (int64_t m = 0; m < M; ++m) b.timesteps.push_back(int64_t(rng.below(uint64_t(T))));
      if (opt.condition_dropout > 0.f)
        for (int64_t m = 0; m < M; ++m) b.drop_condition.push_back(rng.uniform() < opt.condition_dropout);
      if (opt.stage.objective == Objective::kLabelConditioned) b.condition_labels = condition_labels(samples);
      r.dream_images += M;
    }
    return b;
  }

  // The batch's condition labels [M, S, K] (-1 padded), from each dream picture's record.
  static Tensor condition_labels(const std::vector<PreparedSample>& samples) {
    std::vector<const ImageRef*> refs;
    int64_t S = 1, K = 1;
    for (const PreparedSample& p : samples)
      for (const ImageRef& ref : p.sample.dream_images) {
        DL_CHECK(!ref.condition_labels.empty(), "the picture '", ref.path,
                 "' has no condition_labels: the label-conditioned stage trains on pair records that carry them");
        refs.push_back(&ref);
        S = std::max<int64_t>(S, int64_t(ref.condition_labels.size()));
        for (const auto& token : ref.condition_labels) K = std::max<int64_t>(K, int64_t(token.size()));
      }
    const int64_t M = int64_t(refs.size());
    std::vector<int32_t> ids(size_t(M * S * K), -1);
    for (int64_t m = 0; m < M; ++m)
      for (size_t s = 0; s < refs[size_t(m)]->condition_labels.size(); ++s) {
        const auto& token = refs[size_t(m)]->condition_labels[s];
        std::copy(token.begin(), token.end(), ids.begin() + (m * S + int64_t(s)) * K);
      }
    return Tensor::from_vector_i32(ids, {M, S, K});
  }

  StepReport step(int64_t s) {
    const auto t0 = std::chrono::steady_clock::now();
    StepReport r;
    r.step = s + 1;
    r.total_steps = total;
    r.lr = float(double(opt.learning_rate) * cosine_with_warmup(s, total, warmup_steps(total, opt.warmup_ratio)));
    std::vector<Batch> batches;
    for (int64_t a = 0; a < opt.grad_accum; ++a) batches.push_back(next_batch(s * opt.grad_accum + a, r));
    StepLosses l;
    switch (opt.stage.objective) {
      case Objective::kAutoencoder:
        l = optimizer_step([&](const Batch& b) { return autoencoder(b, opt.stage.kl_weight); }, batches, *optimizer,
                           r.lr, opt.max_grad_norm);
        break;
      case Objective::kLabelConditioned:
        l = optimizer_step([&](const Batch& b) { return (*labelled)(b, opt.stage.weights); }, batches, *optimizer,
                           r.lr, opt.max_grad_norm);
        break;
      case Objective::kDreamLLM:
        l = optimizer_step(objective, batches, opt.stage.weights, *optimizer, r.lr, opt.max_grad_norm);
        break;
    }
    r.loss = l.loss;
    r.rec_loss = l.rec_loss;
    r.kl_loss = l.kl_loss;
    r.lm_loss = l.lm_loss;
    r.vm_loss = l.vm_loss;
    r.grad_norm = l.grad_norm;
    r.lm_tokens = l.lm_tokens;
    r.skipped_samples = skipped_samples;
    r.skipped_records = stream.skipped_records();
    r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return r;
  }

  nlohmann::json metrics_json(const StepReport& r) const {
    return {{"step", r.step},       {"total_steps", r.total_steps}, {"loss", r.loss},
            {"lm_loss", r.lm_loss}, {"vm_loss", r.vm_loss},         {"lr", r.lr},
            {"rec_loss", r.rec_loss}, {"kl_loss", r.kl_loss},
            {"grad_norm", r.grad_norm}, {"tokens", r.tokens},       {"lm_tokens", r.lm_tokens},
            {"images", r.images},   {"dream_images", r.dream_images}, {"samples", r.samples},
            {"skipped_samples", r.skipped_samples}, {"skipped_records", r.skipped_records},
            {"seconds", r.seconds}};
  }

  ModelWeights weights() const {
    return {&model.parameters(), &head_params, labelled ? &label_params : nullptr};
  }

  void checkpoint(const StepReport& r) {
    CheckpointState st{r.step, stream.drawn(), fixed_options(opt), metrics_json(r)};
    const std::string path = save_checkpoint(opt.out, dir, weights(), rewrite, *optimizer, st);
    // The checkpoint this run started from stays until the run is done with it: its files are the source of
    // every component that does not train (linked or copied into each new checkpoint and the final model).
    prune_checkpoints(opt.out, opt.save_total_limit, start_dir);
    if (events.on_checkpoint) events.on_checkpoint(path);
  }
};

Trainer::Trainer(TrainOptions options, TrainEvents events)
    : impl_(std::make_unique<Impl>(std::move(options), std::move(events))) {}
Trainer::~Trainer() = default;

int64_t Trainer::total_steps() const { return impl_->total; }
int64_t Trainer::start_step() const { return impl_->start; }
std::vector<std::string> Trainer::trainable() const { return impl_->trainable_names; }

StepReport Trainer::run(int64_t stop_after) {
  Impl& m = *impl_;
  const int64_t end = stop_after < 0 ? m.total : std::min(m.total, stop_after);
  StepReport last;
  for (int64_t s = m.start; s < end; ++s) {
    last = m.step(s);
    {
      std::ofstream f(m.opt.out + "/metrics.jsonl", std::ios::app);
      f << m.metrics_json(last).dump() << "\n";
      DL_CHECK(f.good(), "cannot append to '", m.opt.out, "/metrics.jsonl'");
    }
    if (m.events.on_step) m.events.on_step(last);
    // Every save_every steps, and at the end of the run or of this slice of it.
    if ((m.opt.save_every > 0 && last.step % m.opt.save_every == 0) || last.step == end) m.checkpoint(last);
  }
  m.start = end;
  if (end == m.total && m.opt.write_final) write_model_files(m.opt.out, m.dir, m.weights(), m.rewrite);
  // The run is done: every file of its starting checkpoint is linked or copied where it is needed.
  if (end == m.total) prune_checkpoints(m.opt.out, m.opt.save_total_limit);
  return last;
}

}  // namespace dl::train
