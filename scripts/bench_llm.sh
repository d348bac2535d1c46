#!/usr/bin/env bash
# The LLM end to end against llama.cpp: one random-weight LLaMA of Vicuna-7B's widths (bench/llm_peer/make_llama.py;
# LAYERS of its 32 layers, default 8), run by dreamllm (bench/bench_llm.cpp, Google Benchmark) and by llama.cpp
# through the node-llama-cpp npm package, pinned at 3.21.1, on the same GGUF file and token ids, alternating ROUNDS
# times (default 2; each case the best of 3 repetitions in each), then per weight type a Markdown table of both and
# their ratio, and whether the two compute the same model. Each file is `dreamllm convert --type T` of make_llama.py's
# Hugging Face directory (given the tiny fixture's tokenizer, which convert pads to the 32000-token vocabulary), which
# llama.cpp loads as its own files (the F16 one is byte-identical to make_llama.py's own llama.cpp-layout file).
# Environment: BUILD_DIR (default build), OUT_DIR (default $BUILD_DIR/bench_llm: the models, 1.8 GB at F16 and
# 0.5 GB at Q4_0 per 4 layers, the raw results and table.md), LAYERS, ROUNDS, THREADS (default 1,2), TYPES
# (default f16,q8_0,q4_0,q4_k).
# The first run installs node-llama-cpp into $BUILD_DIR/llm_peer from the npm registry (a benchmark-only peer; no
# dreamllm program downloads anything).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build}
OUT_DIR=${OUT_DIR:-$BUILD_DIR/bench_llm}
LAYERS=${LAYERS:-8}
THREADS=${THREADS:-1,2}
PY=/usr/bin/python3
PEER_VERSION=3.21.1

if [ ! -f "$BUILD_DIR/build.ninja" ]; then
  cmake -S . -B "$BUILD_DIR" -G Ninja -DDL_BUILD_BENCH=ON
elif ! grep -q '^DL_BUILD_BENCH:BOOL=ON' "$BUILD_DIR/CMakeCache.txt"; then
  cmake "$BUILD_DIR" -DDL_BUILD_BENCH=ON > /dev/null
fi
cmake --build "$BUILD_DIR" --target dl_bench_llm dreamllm -j "${DL_BUILD_JOBS:-2}"
TYPES=${TYPES:-f16,q8_0,q4_0,q4_k}

PEER_DIR="$BUILD_DIR/llm_peer"
if [ ! -f "$PEER_DIR/node_modules/node-llama-cpp/package.json" ] ||
   [ "$(node -p "require('./$PEER_DIR/node_modules/node-llama-cpp/package.json').version")" != "$PEER_VERSION" ]; then
  mkdir -p "$PEER_DIR"
  [ -f "$PEER_DIR/package.json" ] || echo '{"private": true}' > "$PEER_DIR/package.json"
  (cd "$PEER_DIR" && npm install --no-audit --no-fund "node-llama-cpp@$PEER_VERSION")
fi

MODEL="$OUT_DIR/model-$LAYERS"
if [ ! -f "$MODEL/prompt.json" ]; then
  rm -rf "$MODEL"
  "$PY" bench/llm_peer/make_llama.py "$MODEL.partial" --layers "$LAYERS"
  mv "$MODEL.partial" "$MODEL"
fi

# dreamllm names the OpenBLAS kernel family from the CPU's features; a family preset by the machine image
# (OPENBLAS_CORETYPE) would override that, as llama.cpp's own choice of CPU backend is not overridden either.
unset OPENBLAS_CORETYPE
read -r load1 _ < /proc/loadavg
if awk -v l="$load1" 'BEGIN { exit !(l > 0.5) }'; then
  echo "warning: 1-minute load average is $load1; other work on the machine will distort the results" >&2
fi
filter="/t:($(echo "$THREADS" | sed 's/,/|/g'))/"
model_file() { echo "$MODEL/model-$1.gguf"; }
for f in tokenizer.model tokenizer_config.json special_tokens_map.json added_tokens.json; do
  cp tests/fixtures/tiny_full/$f "$MODEL/hf/"
done
for type in ${TYPES//,/ }; do
  file=$(model_file "$type")
  [ -f "$file" ] || "$BUILD_DIR/bin/dreamllm" convert -m "$MODEL/hf" -o "$file" --type "$type" > /dev/null
done
for round in $(seq 1 "${ROUNDS:-2}"); do
  for type in ${TYPES//,/ }; do
    file=$(model_file "$type")
    "$BUILD_DIR/bin/dl_bench_llm" --model="$file" --prompt="$MODEL/prompt.json" --check="$OUT_DIR/ours_check.$type.json" \
      --benchmark_filter="$filter" --benchmark_repetitions=3 --benchmark_out="$OUT_DIR/ours.$type.$round.json" \
      --benchmark_out_format=json >&2
    NODE_LLAMA_CPP_DIR="$PWD/$PEER_DIR" node bench/llm_peer/llama_cpp_peer.mjs "$file" "$MODEL/prompt.json" \
      --threads "$THREADS" > "$OUT_DIR/peer.$type.$round.json"
  done
done

{
  echo "CPU: $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(nproc) cores; $(date -u '+%Y-%m-%d %H:%M UTC');" \
    "model: Vicuna-7B widths, $LAYERS layers; best of ${ROUNDS:-2} rounds"
  for type in ${TYPES//,/ }; do
    file=$(model_file "$type")
    echo
    echo "### $type ($(du -m "$file" | cut -f1) MiB)"
    echo
    "$PY" bench/llm_peer/report.py --ours "$OUT_DIR"/ours."$type".*.json --peer "$OUT_DIR"/peer."$type".*.json \
      --ours-check "$OUT_DIR/ours_check.$type.json" --gguf "$file"
  done
} | tee "$OUT_DIR/table.md"
