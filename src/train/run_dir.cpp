#include "train/run_dir.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>

#include "core/error.h"

namespace dl::train {

namespace fs = std::filesystem;

namespace {

bool is_checkpoint_name(const std::string& name) {
  if (!name.starts_with("checkpoint-") || name.size() == 11) return false;
  return std::all_of(name.begin() + 11, name.end(), [](char c) { return c >= '0' && c <= '9'; });
}

// A checkpoint being written (.checkpoint-N.tmp) or deleted (.checkpoint-N.old) when its run was killed.
bool is_partial_checkpoint_name(const std::string& name) {
  return name.starts_with(".checkpoint-") && (name.ends_with(".tmp") || name.ends_with(".old"));
}

// The files a run writes besides the model itself: what --overwrite removes.
bool is_run_artifact(const std::string& name) {
  return is_checkpoint_name(name) || is_partial_checkpoint_name(name) || name == "metrics.jsonl" ||
         name == "trainer_state.json" || name == "optimizer.safetensors";
}

std::vector<fs::path> entries(const std::string& out) {
  std::vector<fs::path> all;
  std::error_code ec;
  fs::directory_iterator it(out, ec), end;
  DL_CHECK(!ec, "cannot list the output directory '", out, "': ", ec.message());
  for (; it != end; it.increment(ec)) {
    DL_CHECK(!ec, "cannot list the output directory '", out, "': ", ec.message());
    all.push_back(it->path());
  }
  std::sort(all.begin(), all.end());
  return all;
}

std::string flag_of(const std::string& key) {
  std::string flag = "--" + key;
  std::replace(flag.begin(), flag.end(), '_', '-');
  return flag;
}

// Values as a user typed them: floats recorded from single precision print as 2e-05, not 1.9999999494757503e-05.
std::string shown(const nlohmann::json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_number_float()) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.7g", v.get<double>());
    return buf;
  }
  return v.dump();
}

}  // namespace

RunDirectory::RunDirectory(std::string out) : out_(std::move(out)) {
  DL_CHECK(!out_.empty(), "no output directory given");
  std::error_code ec;
  fs::create_directories(out_, ec);
  DL_CHECK(!ec, "cannot create the output directory '", out_, "': ", ec.message());
  DL_CHECK(fs::is_directory(out_, ec), "the output '", out_, "' is not a directory");
  const std::string lock = out_ + "/" + kRunLockFile;
  fd_ = ::open(lock.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK, 0644);
  DL_CHECK(fd_ >= 0, "cannot write in the output directory '", out_, "': ", std::strerror(errno));
  if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
    const int err = errno;
    char buf[32] = {};
    const ssize_t n = ::pread(fd_, buf, sizeof buf - 1, 0);
    ::close(fd_);
    fd_ = -1;
    DL_CHECK(err == EWOULDBLOCK, "cannot lock the output directory '", out_, "': ", std::strerror(err));
    std::string pid(buf, size_t(std::max<ssize_t>(n, 0)));
    while (!pid.empty() && (pid.back() == '\n' || pid.back() == ' ')) pid.pop_back();
    fail("the output directory '", out_, "' is in use by another trainer (pid ", pid.empty() ? "unknown" : pid,
         "): wait for it to finish, or choose another -o");
  }
  const std::string pid = std::to_string(::getpid()) + "\n";
  if (::ftruncate(fd_, 0) != 0 || ::pwrite(fd_, pid.data(), pid.size(), 0) != ssize_t(pid.size())) {
    const int err = errno;
    ::close(fd_);
    fd_ = -1;
    fail("cannot write the lock file '", lock, "': ", std::strerror(err));
  }
}

RunDirectory::~RunDirectory() {
  if (fd_ >= 0) ::close(fd_);  // closing drops the lock
}

std::vector<std::string> earlier_run_files(const std::string& out) {
  std::error_code ec;
  if (!fs::exists(out, ec)) return {};
  std::vector<std::string> found;
  for (const fs::path& p : entries(out)) {
    const std::string name = p.filename().string();
    if (name == kRunLockFile || is_partial_checkpoint_name(name)) continue;
    found.push_back(name);
  }
  // A run's own files first: they say best what the directory holds.
  std::stable_partition(found.begin(), found.end(), is_run_artifact);
  return found;
}

void clear_earlier_run(const std::string& out) {
  for (const fs::path& p : entries(out)) {
    if (!is_run_artifact(p.filename().string())) continue;
    std::error_code ec;
    fs::remove_all(p, ec);
    DL_CHECK(!ec, "cannot remove '", p.string(), "' of the earlier run: ", ec.message());
  }
}

void remove_partial_checkpoints(const std::string& out) {
  for (const fs::path& p : entries(out)) {
    if (!is_partial_checkpoint_name(p.filename().string())) continue;
    std::error_code ec;
    fs::remove_all(p, ec);
    DL_CHECK(!ec, "cannot remove the partial checkpoint '", p.string(), "': ", ec.message());
  }
}

std::vector<std::string> differing_options(const nlohmann::json& recorded, const nlohmann::json& now) {
  std::vector<std::string> out;
  if (!recorded.is_object() || !now.is_object()) return out;
  for (auto it = recorded.begin(); it != recorded.end(); ++it) {
    if (!now.contains(it.key()) || now[it.key()] == it.value()) continue;
    out.push_back(flag_of(it.key()) + " " + shown(it.value()) + " (now " + shown(now[it.key()]) + ")");
  }
  return out;
}

}  // namespace dl::train
