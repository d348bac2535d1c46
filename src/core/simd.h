// Runtime SIMD dispatch for hot loops: the compiler builds AVX-512, AVX2+FMA and baseline clones of a function
// marked DL_SIMD_CLONES and the loader picks the best one the CPU supports. Loops inside are written to
// auto-vectorise ('#pragma omp simd' with -fopenmp-simd for reductions). Kernels with hand-written intrinsics
// check the CPU themselves.
#pragma once

// Sanitizer and clang (fuzzing) builds use the baseline only: ifunc resolvers and instrumentation do not mix.
#if defined(__x86_64__) && !defined(__SANITIZE_ADDRESS__) && !defined(__clang__)
#define DL_SIMD_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define DL_SIMD_CLONES
#endif
