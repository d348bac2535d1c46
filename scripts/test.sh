#!/usr/bin/env bash
# The whole test suite: installs what is missing, builds with warnings as errors, runs CTest. Under CI (CI=true)
# or with DL_SANITIZE=1 it also gives every libFuzzer target a short run (FUZZ_SECONDS each, default 10) and
# then builds a second tree with AddressSanitizer + UBSan and runs the whole suite again.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
bash scripts/setup_tests.sh  # node, the server tests' npm packages (npm ci from the lockfile)
# Tests and benchmarks on explicitly: the main job (scripts/demo.sh) configures the same tree without them.
BUILD_DIR=build bash scripts/build.sh -DDL_WERROR=ON -DDL_BUILD_TESTS=ON -DDL_BUILD_BENCH=ON
# The suite runs on the kernels the loader names from the CPU (src/core/kernels/gemm.cpp), not on a kernel family
# some machine images preset in OPENBLAS_CORETYPE; users keep their own setting.
unset OPENBLAS_CORETYPE
ctest --test-dir build --output-on-failure -j 2
if [ "${CI:-}" = "true" ] || [ "${DL_SANITIZE:-0}" = "1" ]; then
  echo "== short fuzzing run =="
  FUZZ_SECONDS=${FUZZ_SECONDS:-10} bash scripts/fuzz.sh
  echo "== sanitizer build (ASan + UBSan) =="
  BUILD_DIR=build-asan bash scripts/build.sh -DDL_WERROR=ON -DDL_SANITIZE=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DDL_BUILD_BENCH=OFF
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    ctest --test-dir build-asan --output-on-failure -j 2
fi
