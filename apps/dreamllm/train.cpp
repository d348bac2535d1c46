// `dreamllm train`: DreamLLM's training stages (I-a creation alignment, I-b comprehension alignment, II interleaved
// generative pretraining, III SFT) on data files, with a live progress line, a JSONL metrics log, release-layout
// checkpoints and exact resume.
#include <unistd.h>

#include <cmath>
#include <csignal>
#include <cstdio>

#include "cli_common.h"
#include "core/error.h"
#include "core/thread_pool.h"
#include "train/trainer.h"

namespace dl::app {

namespace {

std::string clock(double seconds) {
  const long s = long(seconds + 0.5);
  char buf[32];
  std::snprintf(buf, sizeof buf, "%02ld:%02ld:%02ld", s / 3600, (s / 60) % 60, s % 60);
  return buf;
}

}  // namespace

int train_main(int argc, char** argv) {
  CLI::App app(
      "Train DreamLLM: a stage preset (trainable parts, loss weights, learning rate, data modes, fresh\n"
      "initialisations as the original) on interleaved documents, image-text pairs and conversations.",
      "train");
  std::string stage = "II", model, out, trainable, reinit, metrics;
  std::vector<std::string> data;
  train::TrainOptions o;
  std::optional<float> lr, lm_weight, vm_weight, snr_gamma;
  int threads = 0;
  bool quiet = false;
  app.add_option("--stage", stage, "I-a (creation alignment), I-b (comprehension alignment), II (interleaved "
                                   "pretraining), III (SFT), VAE (the autoencoder, for models built from scratch), "
                                   "UNet (the UNet from scratch on pairs with condition_labels)")
      ->capture_default_str();
  app.add_option("-m,--model", model, "model directory to start from (official release layout)")->required();
  app.add_option("--data", data,
                 "dataset PATH[:FORMAT][:SIZE], repeatable; FORMAT interleaved (MMC4 JSONL), pair (image-text JSONL), "
                 "conversation (LLaVA JSON/JSONL), wds (webdataset .tar) or auto; SIZE weights the mixture "
                 "(default: the record count)")
      ->required();
  app.add_option("-o,--out", o.out, "output directory: checkpoint-N/, the final model, metrics.jsonl")->required();
  int64_t max_record_bytes = train::kDefaultMaxRecordBytes;
  app.add_option("--max-record-bytes", max_record_bytes,
                 "longest data record (a JSON line or array element, a webdataset text member) read; longer ones are "
                 "skipped with a warning and counted")
      ->capture_default_str()->check(kPositiveNumber);
  add_image_limit_option(app);
  app.add_option("--lr", lr, "peak learning rate (default: the stage's: I 2e-3, II 2e-5, III 4e-5)")
      ->check(kPositiveNumber);
  app.add_option("--weight-decay", o.weight_decay, "AdamW weight decay (biases and norms are exempt)")
      ->capture_default_str()->check(kNonNegativeNumber);
  app.add_option("--warmup-ratio", o.warmup_ratio, "fraction of the steps spent warming up")->capture_default_str()
      ->check(CLI::Range(0.0, 1.0));
  app.add_option("--max-grad-norm", o.max_grad_norm, "gradient-norm clipping (0: off)")->capture_default_str()
      ->check(kNonNegativeNumber);
  app.add_option("-b,--micro-batch", o.micro_batch, "samples per micro-batch")->capture_default_str()
      ->check(CLI::Range(1, 1 << 16));
  app.add_option("--grad-accum", o.grad_accum, "micro-batches per optimizer step")->capture_default_str()
      ->check(CLI::Range(1, 1 << 16));
  app.add_option("--max-steps", o.max_steps, "optimizer steps (default: --epochs over the mixture)")
      ->check(kNonNegativeNumber);
  app.add_option("--epochs", o.epochs, "passes over the mixture's declared size")->capture_default_str()
      ->check(kPositiveNumber);
  app.add_option("--max-length", o.max_length, "token limit per sample (whole spans are dropped beyond it)")
      ->capture_default_str()->check(CLI::Range(8, 1 << 20));
  app.add_option("--shuffle-buffer", o.shuffle_buffer, "records held per dataset for shuffling")
      ->capture_default_str()->check(CLI::Range(1, 1 << 24));
  app.add_option("--seed", o.seed, "seed of the data order, noise and initialisations")->capture_default_str()
      ->check(CLI::Range(uint64_t(0), uint64_t(INT64_MAX)));
  app.add_option("--save-every", o.save_every, "checkpoint every N steps (0: at the end only)")
      ->check(kNonNegativeNumber);
  app.add_option("--save-total-limit", o.save_total_limit, "checkpoints kept (0: all)")->capture_default_str()
      ->check(kNonNegativeNumber);
  app.add_option("--cond-dropout", o.condition_dropout,
                 "probability of training a dream span on the unconditional condition (classifier-free guidance; "
                 "0 as the released configs)")
      ->check(CLI::Range(0.0, 0.99));
  std::string posterior = "sample";
  app.add_option("--posterior", posterior,
                 "diffusion targets: 'sample' the VAE posterior (the original's latent_dist.sample()) or take its "
                 "'mode' (the mean)")
      ->check(CLI::IsMember({"sample", "mode"}))
      ->capture_default_str();
  app.add_option("--trainable", trainable,
                 "override the stage's trainable groups: comma list of llm, vision_projector, dream_queries, "
                 "condition_projector, vision_tower, unet, vae");
  app.add_option("--reinit", reinit,
                 "override the stage's fresh initialisations: comma list of dream_queries, vision_projector, "
                 "condition_projector, new_token_rows, or none");
  std::string lr_scale;
  app.add_option("--lr-scale", lr_scale,
                 "learning-rate factors of trainable groups, e.g. vision_tower=0.1,vision_projector=2 (applied to "
                 "the schedule's rate and the weight decay, as a PyTorch parameter group's own lr)");
  std::optional<float> kl_weight;
  app.add_option("--kl-weight", kl_weight, "stage VAE: weight of the KL term (default 1e-6, as SD's autoencoder)")
      ->check(kNonNegativeNumber);
  std::optional<float> latent_gain_jitter;
  app.add_option("--latent-gain-jitter", latent_gain_jitter,
                 "stage VAE: decode each latent pixel times a gain from U[1-J, 1+J], so that colour is coded by a "
                 "latent's direction, not its length (default 0, as SD's autoencoder)")
      ->check(CLI::Range(0.0, 0.9));
  app.add_option("--condition-labels", o.condition_labels,
                 "stage UNet: size of the label vocabulary of the pairs' condition_labels (the world's: "
                 "`dreamllm world gen` prints it)")
      ->check(CLI::Range(int64_t(1), int64_t(1) << 20));
  app.add_option("--lm-weight", lm_weight, "weight of the LM loss (default: the stage's)")
      ->check(kNonNegativeNumber);
  app.add_option("--vm-weight", vm_weight, "weight of the diffusion loss (default: the stage's)")
      ->check(kNonNegativeNumber);
  app.add_option("--snr-gamma", snr_gamma,
                 "Min-SNR-gamma weighting of the diffusion loss (e.g. 5; 0: off, the original's plain mean)")
      ->check(kNonNegativeNumber);
  int64_t stop_after = -1;
  app.add_option("--stop-after", stop_after,
                 "stop (with a checkpoint) after this optimizer step, e.g. to split a run into time slices; "
                 "continue with --resume")
      ->check(kPositiveNumber);
  size_t posterior_cache_mb = o.posterior_cache_bytes >> 20;
  app.add_option("--posterior-cache-mb", posterior_cache_mb,
                 "memory for the frozen VAE's posterior of each dream picture, kept after its first encoding "
                 "(0: encode every time; the results are the same)")
      ->capture_default_str();
  app.add_option("--whiten-condition", o.whiten_condition,
                 "before the first step, whiten the condition projector on the conditions of the first N pair "
                 "captions (identity covariance; 0: off, the original)")
      ->check(kNonNegativeNumber);
  app.add_flag("--grad-checkpointing", o.gradient_checkpointing,
               "recompute each LLM layer during backward: the same gradients with far less activation memory");
  app.add_flag("--resume", o.resume, "continue the run in --out from its newest checkpoint (bit-identical for the "
                                     "same thread count; the run's options must be the same)");
  app.add_flag("--overwrite", o.overwrite, "start a new run in an --out that holds an earlier run: its checkpoints "
                                           "and metrics are removed first");
  app.add_option("-t,--threads", threads, "threads (default: all cores)")->check(kNonNegativeNumber);
  app.add_flag("-q,--quiet", quiet, "no progress line");
  if (auto code = parse_or_exit(app, argc, argv)) return *code;
  set_num_threads(threads);
  // A file-size limit (ulimit -f) then fails the write with EFBIG, which the checkpoint writer reports, instead of
  // killing the process halfway through a checkpoint.
  std::signal(SIGXFSZ, SIG_IGN);

  o.posterior_cache_bytes = posterior_cache_mb << 20;
  o.posterior_mode = posterior == "mode";
  o.model = model;
  // Names and lists in the options (stage, groups, data specs) are usage: an unknown one exits 2, as CLI11's own.
  try {
    o.stage = train::stage_preset(stage);
    if (lr) o.learning_rate = *lr;
    if (lm_weight) o.stage.weights.lm = *lm_weight;
    if (vm_weight) o.stage.weights.vm = *vm_weight;
    if (snr_gamma) o.stage.weights.snr_gamma = *snr_gamma;
    if (kl_weight) o.stage.kl_weight = *kl_weight;
    if (latent_gain_jitter) {
      if (o.stage.objective != train::Objective::kAutoencoder) {
        std::fprintf(stderr, "dreamllm train: --latent-gain-jitter applies to stage VAE only, not '%s'\n",
                     stage.c_str());
        return 2;
      }
      o.stage.latent_gain_jitter = *latent_gain_jitter;
    }
    if (o.condition_labels != 0 && o.stage.objective != train::Objective::kLabelConditioned) {
      std::fprintf(stderr, "dreamllm train: --condition-labels applies to stage UNet only, not '%s'\n",
                   stage.c_str());
      return 2;
    }
    if (!trainable.empty()) {
      o.stage.trainable.clear();
      for (const std::string& g : split_list(trainable)) o.stage.trainable.push_back(train::parse_group(g));
    }
    if (!reinit.empty()) {
      o.stage.reinit.clear();
      if (reinit != "none")
        for (const std::string& r : split_list(reinit)) o.stage.reinit.push_back(train::parse_reinit(r));
    }
    for (const std::string& item : split_list(lr_scale)) {
      const size_t eq = item.find('=');
      float factor = -1.f;
      if (eq != std::string::npos) {
        try {
          size_t used = 0;
          factor = std::stof(item.substr(eq + 1), &used);
          if (used != item.size() - eq - 1) factor = -1.f;
        } catch (const std::exception&) {
          factor = -1.f;
        }
      }
      if (!(factor >= 0.f && std::isfinite(factor))) {
        std::fprintf(stderr, "dreamllm train: --lr-scale '%s' is not GROUP=FACTOR with a factor >= 0\n",
                     item.c_str());
        return 2;
      }
      o.lr_scale.emplace_back(train::parse_group(item.substr(0, eq)), factor);
    }
    for (const std::string& d : data) {
      o.data.push_back(train::parse_dataset_spec(d));
      o.data.back().max_record_bytes = max_record_bytes;
    }
  } catch (const Error& e) {
    std::fprintf(stderr, "dreamllm train: %s\nRun 'dreamllm train --help' for the options.\n", e.what());
    return 2;
  }

  const bool tty = isatty(2);
  int64_t warnings = 0;
  double elapsed = 0;
  train::TrainEvents events;
  events.on_warning = [&](const std::string& message) {
    // The first warnings in full; after that a count in the progress line and the metrics.
    if (++warnings <= 20) std::fprintf(stderr, "%swarning: %s\n", tty ? "\r\033[K" : "", message.c_str());
    if (warnings == 20) std::fprintf(stderr, "warning: further warnings are counted, not shown\n");
  };
  int64_t start = 0;
  events.on_step = [&](const train::StepReport& r) {
    elapsed += r.seconds;
    if (quiet) return;
    const double per_step = elapsed / double(r.step - start);
    char line[512], terms[96];
    if (o.stage.objective == train::Objective::kAutoencoder)
      std::snprintf(terms, sizeof terms, "rec %.4f, kl %.1f", r.rec_loss, r.kl_loss);
    else
      std::snprintf(terms, sizeof terms, "lm %.4f, vm %.4f", r.lm_loss, r.vm_loss);
    std::snprintf(line, sizeof line,
                  "step %lld/%lld | loss %.4f (%s) | lr %.3g | |g| %.3g | %.0f tok/s | %.2f img/s | "
                  "skipped %lld | ETA %s",
                  static_cast<long long>(r.step), static_cast<long long>(r.total_steps), r.loss, terms, r.lr, r.grad_norm, double(r.tokens) / std::max(r.seconds, 1e-9),
                  double(r.images + r.dream_images) / std::max(r.seconds, 1e-9),
                  static_cast<long long>(r.skipped_samples + r.skipped_records),
                  clock(per_step * double(r.total_steps - r.step)).c_str());
    if (tty)
      std::fprintf(stderr, "\r\033[K%s", line);
    else
      std::fprintf(stderr, "%s\n", line);
    std::fflush(stderr);
  };
  events.on_checkpoint = [&](const std::string& path) {
    if (!quiet) std::fprintf(stderr, "%ssaved %s\n", tty ? "\r\033[K" : "", path.c_str());
  };

  train::Trainer trainer(o, events);
  start = trainer.start_step();
  if (!quiet) {
    std::fprintf(stderr, "stage %s: %s\n", o.stage.name.c_str(), o.stage.description.c_str());
    std::fprintf(stderr, "%zu trainable tensors; %lld steps%s\n", trainer.trainable().size(),
                 static_cast<long long>(trainer.total_steps()),
                 start > 0 ? (", resuming after step " + std::to_string(start)).c_str() : "");
  }
  trainer.run(stop_after);
  if (!quiet && tty) std::fprintf(stderr, "\n");
  std::printf("%s\n", o.out.c_str());
  return 0;
}

}  // namespace dl::app
