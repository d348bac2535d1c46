#!/usr/bin/env bash
# Builds dl_bench, runs it and the PyTorch CPU peer back to back, and prints a Markdown table of ours against
# OpenBLAS and PyTorch. Extra arguments go to dl_bench (e.g. --benchmark_filter=gemm).
# Environment: BUILD_DIR (default build), OUT_DIR for the raw results (default $BUILD_DIR/bench),
# DL_BUILD_JOBS (default 2), SKIP_TORCH=1 to leave the PyTorch column empty, TORCH_FILTER (a regular expression
# on the case names, for torch_peer.py as --benchmark_filter is for dl_bench), ROUNDS (default 1): run both
# programs this many times, alternating, and keep each case's best; on a shared machine a neighbour's burst of
# work then spoils one round of a case rather than the result (about 2 minutes a round on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build}
OUT_DIR=${OUT_DIR:-$BUILD_DIR/bench}
# Debian's python3-torch lives in the system interpreter, which a python3 earlier on PATH would hide.
PY=/usr/bin/python3

if [ ! -f "$BUILD_DIR/build.ninja" ]; then
  cmake -S . -B "$BUILD_DIR" -G Ninja -DDL_BUILD_BENCH=ON
elif ! grep -q '^DL_BUILD_BENCH:BOOL=ON' "$BUILD_DIR/CMakeCache.txt"; then
  cmake "$BUILD_DIR" -DDL_BUILD_BENCH=ON > /dev/null
fi
cmake --build "$BUILD_DIR" --target dl_bench -j "${DL_BUILD_JOBS:-2}"
mkdir -p "$OUT_DIR"

# OpenBLAS 0.3.21 takes newer Xeons for a Prescott and runs its SSE3 kernels. dreamllm picks the family from the
# CPU's features before it loads OpenBLAS (src/core/kernels/gemm.cpp); dl_bench's direct OpenBLAS peer and
# PyTorch load it at start-up, so they get the same choice from the environment, as a user would set it.
if [ -z "${OPENBLAS_CORETYPE:-}" ]; then
  flags=$(grep -m1 '^flags' /proc/cpuinfo || true)
  has() { [[ " $flags " == *" $1 "* ]]; }
  if has avx512f && has avx512bw && has avx512vl && has avx512dq; then export OPENBLAS_CORETYPE=SkylakeX
  elif has avx2 && has fma; then export OPENBLAS_CORETYPE=Haswell; fi
fi
echo "OpenBLAS kernels: ${OPENBLAS_CORETYPE:-as OpenBLAS detects them}"

# Both processes want every core; anything else running skews the numbers, the 2-thread ones most.
read -r load1 _ < /proc/loadavg
if awk -v l="$load1" 'BEGIN { exit !(l > 0.5) }'; then
  echo "warning: 1-minute load average is $load1; other work on the machine will distort the results" >&2
fi

run_torch=0
if [ "${SKIP_TORCH:-0}" != "1" ]; then
  if "$PY" -c 'import torch' 2> /dev/null; then
    run_torch=1
  else
    echo "warning: $PY has no torch (apt-get install python3-torch); PyTorch column left empty" >&2
  fi
fi
rm -f "$OUT_DIR"/dl_bench.*.json "$OUT_DIR"/torch_peer.*.jsonl
report_args=()
for round in $(seq 1 "${ROUNDS:-1}"); do
  "$BUILD_DIR/bin/dl_bench" --benchmark_out="$OUT_DIR/dl_bench.$round.json" --benchmark_out_format=json "$@" >&2
  report_args+=("$OUT_DIR/dl_bench.$round.json")
  if [ "$run_torch" = 1 ]; then
    "$PY" bench/torch_peer.py --filter "${TORCH_FILTER:-}" > "$OUT_DIR/torch_peer.$round.jsonl"
    report_args+=(--torch "$OUT_DIR/torch_peer.$round.jsonl")
  fi
done

{
  echo "CPU: $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(nproc) cores; $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo
  "$PY" bench/report.py "${report_args[@]}"
} | tee "$OUT_DIR/table.md"
