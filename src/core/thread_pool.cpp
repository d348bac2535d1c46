#include "core/thread_pool.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <exception>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace dl {

namespace {

thread_local bool t_in_region = false;

class Pool {
 public:
  explicit Pool(int n) { resize(n); }
  ~Pool() { stop_workers(); }

  int size() const { return n_threads_; }

  void resize(int n) {
    if (n <= 0) n = std::max(1u, std::thread::hardware_concurrency());
    std::lock_guard run_lock(run_mutex_);
    if (n == n_threads_) return;
    stop_workers();
    n_threads_ = n;
    stopping_ = false;
    // New workers start at the current generation so they never pick up a finished job.
    for (int i = 1; i < n; ++i) workers_.emplace_back([this, i, g = generation_] { worker_loop(i, g); });
  }

  void run(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn) {
    int64_t max_parts = std::max<int64_t>(1, n / std::max<int64_t>(1, grain));
    int parts = int(std::min<int64_t>(n_threads_, max_parts));
    if (parts <= 1 || t_in_region) {
      bool outer = t_in_region;
      t_in_region = true;
      try {
        fn(0, n);
      } catch (...) {
        t_in_region = outer;
        throw;
      }
      t_in_region = outer;
      return;
    }
    std::lock_guard run_lock(run_mutex_);  // one parallel region at a time
    {
      std::lock_guard lk(mutex_);
      job_ = &fn;
      job_n_ = n;
      job_parts_ = parts;
      pending_ = parts - 1;
      error_ = nullptr;
      ++generation_;
    }
    cv_.notify_all();
    run_part(0);
    std::unique_lock lk(mutex_);
    done_cv_.wait(lk, [this] { return pending_ == 0; });
    job_ = nullptr;
    if (error_) std::rethrow_exception(error_);
  }

 private:
  void run_part(int part) {
    int64_t begin = job_n_ * part / job_parts_;
    int64_t end = job_n_ * (part + 1) / job_parts_;
    t_in_region = true;
    try {
      if (begin < end) (*job_)(begin, end);
    } catch (...) {
      std::lock_guard lk(mutex_);
      if (!error_) error_ = std::current_exception();
    }
    t_in_region = false;
  }

  void worker_loop(int index, uint64_t seen) {
    for (;;) {
      std::unique_lock lk(mutex_);
      cv_.wait(lk, [&] { return stopping_ || generation_ != seen; });
      if (stopping_) return;
      seen = generation_;
      if (index >= job_parts_) continue;
      lk.unlock();
      run_part(index);
      lk.lock();
      if (--pending_ == 0) done_cv_.notify_one();
    }
  }

  void stop_workers() {
    {
      std::lock_guard lk(mutex_);
      stopping_ = true;
    }
    cv_.notify_all();
    for (auto& t : workers_) t.join();
    workers_.clear();
  }

  std::mutex run_mutex_;
  std::mutex mutex_;
  std::condition_variable cv_, done_cv_;
  std::vector<std::thread> workers_;
  int n_threads_ = 0;
  bool stopping_ = false;
  uint64_t generation_ = 0;
  const std::function<void(int64_t, int64_t)>* job_ = nullptr;
  int64_t job_n_ = 0;
  int job_parts_ = 0;
  int pending_ = 0;
  std::exception_ptr error_;
};

Pool& pool() {
  static Pool p(0);
  return p;
}

}  // namespace

int num_threads() { return pool().size(); }
void set_num_threads(int n) { pool().resize(n); }
bool in_parallel_region() { return t_in_region; }

void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  pool().run(n, grain, fn);
}

}  // namespace dl
