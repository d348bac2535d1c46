// The output directory of a training run (`dreamllm train -o OUT`): one trainer at a time, one run per directory.
//
// A trainer holds an exclusive lock on OUT for its whole life (flock on OUT/.dreamllm-train.lock, which records the
// holder's pid), so a second trainer on the same directory stops at once instead of interleaving checkpoints and
// metrics. The kernel drops the lock when the holder dies, even by kill -9: there is no stale lock to clean up.
//
// A fresh run refuses a directory that already holds a run (checkpoints, metrics, a checkpoint's own state) unless
// told to overwrite it; then the earlier run's files are removed first, so its checkpoints can never be mistaken for
// the new run's (the pruner keeps the highest step numbers, and --resume takes the newest).
#pragma once
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace dl::train {

inline constexpr const char* kRunLockFile = ".dreamllm-train.lock";

class RunDirectory {
 public:
  // Creates `out` if needed and takes its lock; throws dl::Error naming the holder's pid when another process holds
  // it, and naming the path when it cannot be created or locked.
  explicit RunDirectory(std::string out);
  ~RunDirectory();
  RunDirectory(const RunDirectory&) = delete;
  RunDirectory& operator=(const RunDirectory&) = delete;
  const std::string& path() const { return out_; }

 private:
  std::string out_;
  int fd_ = -1;
};

// What an earlier run left in `out` (checkpoint-N/, metrics.jsonl, trainer_state.json, optimizer.safetensors),
// by file name; empty for a new or empty directory.
std::vector<std::string> earlier_run_files(const std::string& out);
// Removes those files and any half-written or half-deleted checkpoint an interrupted run left behind.
void clear_earlier_run(const std::string& out);
// Removes the half-written (.checkpoint-N.tmp) and half-deleted (.checkpoint-N.old) checkpoints a killed run left
// behind; complete ones stay.
void remove_partial_checkpoints(const std::string& out);

// The options of a run whose checkpoint differ from the options now, as "--flag CHECKPOINT (now NOW)" items; keys
// that the checkpoint does not record (an older format) are not compared.
std::vector<std::string> differing_options(const nlohmann::json& recorded, const nlohmann::json& now);

}  // namespace dl::train
