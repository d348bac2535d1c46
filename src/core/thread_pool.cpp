#include "core/thread_pool.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <exception>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace dl {

namespace {

thread_local bool t_in_region = false;

// A training step issues thousands of small parallel regions. Waking a sleeping thread costs a futex call on each
// side and tens of microseconds before it runs, longer than many of the regions themselves, so both sides first
// spin this long on an atomic and only then sleep on the condition variable.
constexpr auto kSpin = std::chrono::microseconds(150);

inline void cpu_relax() {
#if defined(__x86_64__)
  _mm_pause();
#endif
}

// Spins until ready() or kSpin has passed; returns ready()'s last value.
template <class Ready>
bool spin_until(Ready ready) {
  auto deadline = std::chrono::steady_clock::now() + kSpin;
  for (;;) {
    for (int i = 0; i < 64; ++i) {
      if (ready()) return true;
      cpu_relax();
    }
    if (std::chrono::steady_clock::now() >= deadline) return ready();
  }
}

class Pool {
 public:
  explicit Pool(int n) { resize(n); }
  ~Pool() { stop_workers(); }

  int size() const { return n_threads_; }

  void resize(int n) {
    if (n <= 0) n = std::max(1u, std::thread::hardware_concurrency());
    n = std::min(n, int(kPartMask));
    std::lock_guard run_lock(run_mutex_);
    if (n == n_threads_) return;
    stop_workers();
    n_threads_ = n;
    stopping_.store(false, std::memory_order_relaxed);
    // New workers start at the current generation so they never pick up a finished job.
    for (int i = 1; i < n; ++i) workers_.emplace_back([this, i, g = generation_.load()] { worker_loop(i, g); });
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
      pending_.store(parts - 1, std::memory_order_relaxed);
      error_ = nullptr;
      // Publishes the job to spinning workers. The part count travels in the same word as the generation, so a
      // worker that sits this job out and wakes late cannot pair a newer generation with this job's part count.
      uint64_t next = ((generation_.load(std::memory_order_relaxed) >> kPartBits) + 1) << kPartBits;
      generation_.store(next | uint64_t(parts), std::memory_order_release);
    }
    cv_.notify_all();  // no system call when every worker is still spinning
    run_part(0, parts);
    auto all_done = [this] { return pending_.load(std::memory_order_acquire) == 0; };
    if (!spin_until(all_done)) {
      std::unique_lock lk(mutex_);
      done_cv_.wait(lk, all_done);
    }
    job_ = nullptr;
    if (error_) std::rethrow_exception(error_);
  }

 private:
  void run_part(int part, int parts) {
    int64_t begin = job_n_ * part / parts;
    int64_t end = job_n_ * (part + 1) / parts;
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
      auto news = [&] {
        return stopping_.load(std::memory_order_acquire) || generation_.load(std::memory_order_acquire) != seen;
      };
      if (!spin_until(news)) {
        std::unique_lock lk(mutex_);
        cv_.wait(lk, news);
      }
      if (stopping_.load(std::memory_order_acquire)) return;
      seen = generation_.load(std::memory_order_acquire);
      int parts = int(seen & kPartMask);
      if (index >= parts) continue;  // job_ and job_n_ may already belong to a later job
      run_part(index, parts);
      if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
        // Under the mutex, so that the caller cannot test pending_ and go to sleep between the decrement and the
        // notification.
        std::lock_guard lk(mutex_);
        done_cv_.notify_one();
      }
    }
  }

  void stop_workers() {
    {
      std::lock_guard lk(mutex_);
      stopping_.store(true, std::memory_order_release);
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
  std::atomic<bool> stopping_{false};
  // (job counter << kPartBits) | the job's part count.
  static constexpr int kPartBits = 16;
  static constexpr uint64_t kPartMask = (uint64_t(1) << kPartBits) - 1;
  std::atomic<uint64_t> generation_{0};
  const std::function<void(int64_t, int64_t)>* job_ = nullptr;
  int64_t job_n_ = 0;
  std::atomic<int> pending_{0};
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
