// One process-wide pool of worker threads. Ops split work with parallel_for over a static partition, so which
// thread computes which element never changes the result: each output element is produced by the same code
// path whatever the thread count.
#pragma once
#include <cstdint>
#include <functional>

namespace dl {

// Number of threads ops may use (the caller included). Defaults to the hardware concurrency.
int num_threads();
// Resizes the pool; n <= 0 selects the hardware concurrency.
void set_num_threads(int n);

// Calls fn(begin, end) on disjoint ranges covering [0, n). Ranges hold at least `grain` items (except the last).
// Runs inline when n is small, when one thread is configured, or when called from inside a parallel region.
void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn);

// True inside a parallel_for body running on any thread.
bool in_parallel_region();

}  // namespace dl
