#!/usr/bin/env bash
# Whole-system memory benchmark (issue #33, "Speed and memory"): the DreamLLM-7B shape, q4_k_m LLM + F16 companion
# (CLIP, UNet, VAE), writing a document with exactly one 512x512 image; peak RSS from /usr/bin/time -v.
#
#   OUT_DIR=build/bench_system LAYERS=32 bash scripts/bench_system.sh
#
# Env: OUT_DIR (default build/bench_system), LAYERS (LLM layers, default 32 = the 7B; smaller for quick tries),
# THREADS (default: all cores), STEPS (diffusion steps, default 2), KEEP_MODEL=1 keeps the model files.
# The random-weight model is made once (bench/make_release_model.py) and converted once; results go to
# OUT_DIR/results.md, OUT_DIR/*.time (time -v) and OUT_DIR/*.rss (VmRSS / RssAnon / RssFile sampled every 0.5 s).
# Random weights write nonsense, so --image-bias makes the model open <dream_start> at once and --max-images 1
# stops after one image.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT_DIR=${OUT_DIR:-build/bench_system}
LAYERS=${LAYERS:-32}
STEPS=${STEPS:-2}
THREADS=${THREADS:-$(nproc)}
PY=${PY:-/usr/bin/python3}
BIN=${BIN:-build/bin/dreamllm}
MODEL="$OUT_DIR/model-L$LAYERS"
GGUF="$MODEL-q4_k_m.gguf"
COMPANION="$MODEL-q4_k_m.mmproj.gguf"
RESULTS="$OUT_DIR/results.md"
mkdir -p "$OUT_DIR"

[[ -x "$BIN" ]] || { echo "bench_system: $BIN is missing; build first (scripts/build.sh)" >&2; exit 1; }
[[ -x /usr/bin/time ]] || { echo "bench_system: /usr/bin/time (GNU time) is required" >&2; exit 1; }

# Samples the resident set of the program started under /usr/bin/time (its child) until it exits.
sample_rss() {  # TIME_PID LOG
  local tpid=$1 log=$2 pid="" t0
  t0=$(date +%s.%N)
  echo "t_s VmRSS_kB RssAnon_kB RssFile_kB" >"$log"
  while kill -0 "$tpid" 2>/dev/null; do
    [[ -n "$pid" ]] || pid=$(pgrep -P "$tpid" | head -1 || true)
    if [[ -n "$pid" && -r /proc/$pid/status ]]; then
      awk -v now="$(date +%s.%N)" -v t0="$t0" \
        '/^VmRSS/{r=$2} /^RssAnon/{a=$2} /^RssFile/{f=$2} END{if (r) printf "%.1f %d %d %d\n", now - t0, r, a, f}' \
        /proc/"$pid"/status >>"$log" 2>/dev/null || true
    fi
    sleep 0.5
  done
}

# Runs a command under time -v with RSS sampling: NAME CMD...
measure() {
  local name=$1
  shift
  /usr/bin/time -v -o "$OUT_DIR/$name.time" "$@" >"$OUT_DIR/$name.log" 2>&1 &
  local tpid=$!
  sample_rss "$tpid" "$OUT_DIR/$name.rss" &
  local spid=$!
  local rc=0
  wait "$tpid" || rc=$?
  wait "$spid" || true
  if [[ $rc -ne 0 ]]; then
    echo "bench_system: $name failed (exit $rc); see $OUT_DIR/$name.log" >&2
    tail -20 "$OUT_DIR/$name.log" >&2
    exit 1
  fi
}

peak_kb() { awk -F': ' '/Maximum resident set size/{print $2}' "$OUT_DIR/$1.time"; }
wall() { awk -F': ' '/Elapsed \(wall clock\)/{print $2}' "$OUT_DIR/$1.time"; }
gib() { awk -v k="$1" 'BEGIN{printf "%.2f GiB", k / 1048576}'; }
size_of() { awk -v b="$(stat -c %s "$1")" 'BEGIN{printf "%.2f GiB", b / 1073741824}'; }
# Largest RssAnon / RssFile seen by the sampler (they need not peak together).
peak_parts() {
  awk 'NR > 1 {if ($3 > a) a = $3; if ($4 > f) f = $4} END{printf "anon %.2f / file %.2f GiB", a / 1048576, f / 1048576}' \
    "$OUT_DIR/$1.rss"
}

if [[ ! -f "$MODEL/model.safetensors" ]]; then
  echo "== making the random-weight model ($LAYERS layers) in $MODEL"
  start=$(date +%s)
  "$PY" bench/make_release_model.py "$MODEL" --layers "$LAYERS"
  echo "   $(($(date +%s) - start)) s"
fi
if [[ ! -f "$GGUF" ]]; then
  echo "== dreamllm convert --type q4_k_m"
  measure convert "$BIN" convert -m "$MODEL" -o "$GGUF" --type q4_k_m -t "$THREADS"
fi

PROMPT="Write a short illustrated note about a red lighthouse."
WRITE_ARGS=(-m "$GGUF" -p "$PROMPT" --image-bias 100 --max-images 1 -n 8 --steps "$STEPS" -W 512 -H 512
  --temp 0 --seed 1 -t "$THREADS")
echo "== dreamllm write (one 512x512 image, $STEPS steps)"
measure write "$BIN" write "${WRITE_ARGS[@]}" -o "$OUT_DIR/doc.html"
tiled=0
if "$BIN" write --help 2>&1 | grep -q -- '--tiled'; then
  echo "== dreamllm write --tiled"
  measure write_tiled "$BIN" write "${WRITE_ARGS[@]}" --tiled -o "$OUT_DIR/doc_tiled.html"
  tiled=1
fi
for doc in doc doc_tiled; do
  [[ -f "$OUT_DIR/$doc.html" ]] || continue
  n=$(grep -o '<img' "$OUT_DIR/$doc.html" | wc -l)
  [[ "$n" -eq 1 ]] || { echo "bench_system: $doc.html has $n images, expected exactly 1" >&2; exit 1; }
done

"$BIN" inspect -m "$GGUF" >"$OUT_DIR/inspect.txt"
estimate=$(awk '$1 == "q4_k_m" {print $(NF-2), $(NF-1)}' "$OUT_DIR/inspect.txt" | tail -1)

{
  echo "DreamLLM-7B shape ($LAYERS LLM layers), random weights; $(nproc) cores, $THREADS threads, $(date -u +%F)"
  echo
  echo "| item | value |"
  echo "|---|---|"
  echo "| source directory (F16 safetensors) | $(du -sb "$MODEL" | awk '{printf "%.2f GiB", $1 / 1073741824}') |"
  echo "| NAME.gguf (LLM, q4_k_m) | $(size_of "$GGUF") |"
  echo "| NAME.mmproj.gguf (CLIP, UNet, VAE, projectors; F16) | $(size_of "$COMPANION") |"
  if [[ -f "$OUT_DIR/convert.time" ]]; then
    echo "| convert: peak RSS / wall | $(gib "$(peak_kb convert)") / $(wall convert) |"
  fi
  echo "| write, one 512x512 image: peak RSS | **$(gib "$(peak_kb write)")** ($(peak_parts write)) |"
  echo "| write: wall | $(wall write) |"
  if [[ $tiled -eq 1 ]]; then
    echo "| write --tiled: peak RSS | **$(gib "$(peak_kb write_tiled)")** ($(peak_parts write_tiled)) |"
    echo "| write --tiled: wall | $(wall write_tiled) |"
  fi
  echo "| dreamllm inspect estimate, q4_k_m (ctx 2048) | $estimate |"
} | tee "$RESULTS"

if [[ "${KEEP_MODEL:-0}" != 1 ]]; then
  rm -rf "$MODEL" "$GGUF" "$COMPANION"
  echo "(model files removed; KEEP_MODEL=1 keeps them)"
fi
