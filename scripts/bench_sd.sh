#!/usr/bin/env bash
# Creation against stable-diffusion.cpp (issue 34): one guided UNet step (batch 2), one VAE decode and one whole
# picture, by dreamllm, by stable-diffusion.cpp and (UNet and VAE) by PyTorch, on the same random SD 2.1-base F16
# weights (bench/sd_peer/make_sd_weights.py, written once), alternating sides ROUNDS times, then a Markdown table
# (bench/sd_peer/report.py) with the ratios and each process's peak RSS.
#
#   scripts/bench_sd.sh PEER_BIN
#
# PEER_BIN is stable-diffusion.cpp's CLI (sd-cli), built outside this repository (see docs/benchmarks.md, "Creation
# against stable-diffusion.cpp"). Per round, thread count and size:
#   dreamllm: `dreamllm bench unet --cfg` and `bench vae` (REPS timed repetitions after a warm-up) and `bench create`
#             (one picture, PEER_STEPS euler steps, cfg 7.5, no warm-up);
#   the peer: one `sd-cli -M img_gen` run with the same steps, sampler and guidance; from its own log: the fastest
#             step's s/it (a guided step: both branches), the VAE decode's time, the whole picture's time;
#   PyTorch:  bench/sd_peer/torch_unet_peer.py, the diffusers-semantics references of the parity fixtures (F32).
# Peak RSS is each process's (/usr/bin/time), so dreamllm's is per part and the peer's is a whole picture's.
# Environment: BUILD_DIR (default build), OUT_DIR (default $BUILD_DIR/bench_sd: the weights, 6 GB, the raw logs and
# table.md), THREADS (default 1,2), SIZES (default 256,512), ROUNDS (default 2), REPS (default 2), PEER_STEPS
# (default 2), TORCH (default 1; 0 skips PyTorch), CREATE (default 1; 0 skips the whole-picture rows), APPEND
# (default 0; 1 adds to the raw files of earlier runs instead of starting afresh, and the table covers them all).
# Run it on an idle machine (the team's: under `flock /tmp/dl-build.lock`); about 25 minutes a round at the defaults.
set -euo pipefail
cd "$(dirname "$0")/.."
PEER_BIN=${1:-}
if [ -z "$PEER_BIN" ] || [ ! -x "$PEER_BIN" ]; then
  cat >&2 <<'EOF'
usage: scripts/bench_sd.sh PEER_BIN   (stable-diffusion.cpp's sd-cli)

Build the peer outside this repository (a CPU release build), e.g.:
  git clone --recursive https://github.com/leejet/stable-diffusion.cpp /work/peers/sd.cpp
  cd /work/peers/sd.cpp && mkdir -p build && cd build
  cmake .. -G Ninja -DCMAKE_BUILD_TYPE=Release -DSD_BUILD_EXAMPLES=ON -DSD_WEBP=OFF -DSD_WEBM=OFF
  nice -n 19 ninja -j1 sd-cli          # then: scripts/bench_sd.sh /work/peers/sd.cpp/build/bin/sd-cli
docs/benchmarks.md ("Creation against stable-diffusion.cpp") has the commit measured and the offline steps.
EOF
  exit 2
fi
PEER_BIN=$(realpath "$PEER_BIN")
BUILD_DIR=${BUILD_DIR:-build}
OUT_DIR=${OUT_DIR:-$BUILD_DIR/bench_sd}
THREADS=${THREADS:-1,2}
SIZES=${SIZES:-256,512}
ROUNDS=${ROUNDS:-2}
REPS=${REPS:-2}
PEER_STEPS=${PEER_STEPS:-2}
TORCH=${TORCH:-1}
CREATE=${CREATE:-1}
PY=/usr/bin/python3
TIME=/usr/bin/time
[ -x "$TIME" ] || { echo "bench_sd.sh: $TIME (Debian package 'time') is needed for the peak RSS" >&2; exit 1; }

if [ ! -f "$BUILD_DIR/build.ninja" ]; then
  cmake -S . -B "$BUILD_DIR" -G Ninja
fi
cmake --build "$BUILD_DIR" --target dreamllm -j "${DL_BUILD_JOBS:-2}"
OURS="$BUILD_DIR/bin/dreamllm"

WEIGHTS="$OUT_DIR/weights"
if [ ! -f "$WEIGHTS/sd21.safetensors" ] || [ ! -f "$WEIGHTS/dreamllm/config.json" ]; then
  rm -rf "$WEIGHTS.partial"
  mkdir -p "$OUT_DIR"
  "$PY" bench/sd_peer/make_sd_weights.py "$WEIGHTS.partial"
  rm -rf "$WEIGHTS"
  mv "$WEIGHTS.partial" "$WEIGHTS"
fi
RUNS="$OUT_DIR/runs"
# APPEND=1 keeps earlier runs' files, so that a long measurement can be taken in pieces (one thread count or size at
# a time, each short enough to hold the machine for) and reported together; round numbers continue from the last.
if [ "${APPEND:-0}" != 1 ]; then
  rm -rf "$RUNS"
fi
mkdir -p "$RUNS"
FIRST_ROUND=1
if [ "${APPEND:-0}" = 1 ]; then
  last=$(find "$RUNS" -name '*.r*.*' -printf '%f\n' | sed -n 's/.*\.r\([0-9]*\)\..*/\1/p' | sort -n | tail -1)
  FIRST_ROUND=$(( ${last:-0} + 1 ))
fi

# dreamllm names the OpenBLAS kernel family from the CPU's features; a family preset by the machine image would
# override that (as in scripts/bench_llm.sh).
unset OPENBLAS_CORETYPE
read -r load1 load5 load15 _ < /proc/loadavg
if awk -v l="$load1" 'BEGIN { exit !(l > 0.5) }'; then
  echo "warning: 1-minute load average is $load1; other work on the machine will distort the results" >&2
fi
{
  echo "cpu=$(lscpu | sed -n 's/^Model name: *//p' | head -1), $(nproc) cores"
  echo "date=$(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "load_at_start=$load1 $load5 $load15"
  echo "ours_commit=$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src apps || echo '+uncommitted')"
  echo "peer_commit=$(git -C "$(dirname "$PEER_BIN")/../.." rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "piece=THREADS=$THREADS SIZES=$SIZES, rounds $FIRST_ROUND-$((FIRST_ROUND + ROUNDS - 1))"
  echo "reps=$REPS"
  echo "peer_steps=$PEER_STEPS"
} >> "$RUNS/machine.txt"

run_ours() {  # threads size round
  local t=$1 s=$2 r=$3 part
  for part in unet vae; do
    local extra=""
    [ "$part" = unet ] && extra="--cfg"
    "$TIME" -f "%M" -o "$RUNS/ours.$part.$s.t$t.r$r.rss" "$OURS" bench "$part" -m "$WEIGHTS/dreamllm" -W "$s" -H "$s" \
      $extra -t "$t" -r "$REPS" --json > "$RUNS/ours.$part.$s.t$t.r$r.json"
  done
  if [ "$CREATE" = 1 ]; then
    "$TIME" -f "%M" -o "$RUNS/ours.create.$s.t$t.r$r.rss" "$OURS" bench create -m "$WEIGHTS/dreamllm" -W "$s" -H "$s" \
      --steps "$PEER_STEPS" --sampler euler --cfg-scale 7.5 --seed 42 -t "$t" -r 1 --json \
      > "$RUNS/ours.create.$s.t$t.r$r.json"
  fi
}

run_peer() {
  local t=$1 s=$2 r=$3
  "$TIME" -v -o "$RUNS/peer.$s.t$t.r$r.time" "$PEER_BIN" -M img_gen -m "$WEIGHTS/sd21.safetensors" \
    -p "a red circle on a white background" -W "$s" -H "$s" --steps "$PEER_STEPS" --cfg-scale 7.5 \
    --sampling-method euler -t "$t" --seed 42 -o "$RUNS/peer.$s.t$t.r$r.png" > "$RUNS/peer.$s.t$t.r$r.log" 2>&1
}

run_torch() {
  [ "$TORCH" = 1 ] || return 0
  local t=$1 s=$2 r=$3 part
  for part in unet vae; do
    "$PY" bench/sd_peer/torch_unet_peer.py "$WEIGHTS/dreamllm" --part "$part" --size "$s" --threads "$t" \
      --reps "$REPS" > "$RUNS/torch.$part.$s.t$t.r$r.json"
  done
}

for r in $(seq "$FIRST_ROUND" $((FIRST_ROUND + ROUNDS - 1))); do
  for t in ${THREADS//,/ }; do
    for s in ${SIZES//,/ }; do
      echo "round $r, $t thread(s), ${s}x$s" >&2
      if [ $((r % 2)) = 1 ]; then
        run_ours "$t" "$s" "$r"; run_peer "$t" "$s" "$r"; run_torch "$t" "$s" "$r"
      else
        run_torch "$t" "$s" "$r"; run_peer "$t" "$s" "$r"; run_ours "$t" "$s" "$r"
      fi
    done
  done
done

"$PY" bench/sd_peer/report.py "$RUNS" | tee "$OUT_DIR/table.md"
