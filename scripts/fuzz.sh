#!/usr/bin/env bash
# Builds the libFuzzer targets with clang (ASan + UBSan) and runs each for FUZZ_SECONDS (default 20) over its seed
# corpus (tests/fixtures files of the right kind) plus any earlier findings kept in tests/fixtures/fuzz_regressions.
# A crash leaves its input in build-fuzz/findings/ and fails the script: copy it into
# tests/fixtures/fuzz_regressions/<target>/ so the unit tests replay it forever.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_TARGET=${FUZZ_SECONDS:-20}
if [ ! -f build-fuzz/build.ninja ]; then
  CC=clang CXX=clang++ cmake -S . -B build-fuzz -G Ninja -DDL_FUZZ=ON -DDL_BUILD_TESTS=OFF -DDL_BUILD_BENCH=OFF \
    -DCMAKE_BUILD_TYPE=RelWithDebInfo > /dev/null
fi
cmake --build build-fuzz -j "${DL_BUILD_JOBS:-2}"
mkdir -p build-fuzz/findings
seed_dir() {  # target -> a fresh corpus directory seeded from committed files
  local target=$1 dir=build-fuzz/corpus/$1
  mkdir -p "$dir"
  case $target in
    safetensors) cp tests/fixtures/*.safetensors tests/fixtures/torch_bin/*.safetensors "$dir"/ 2>/dev/null || true ;;
    torch_bin) cp tests/fixtures/torch_bin/*.bin "$dir"/ ;;
    pickle) for f in tests/fixtures/torch_bin/*.bin; do
              unzip -p "$f" '*/data.pkl' > "$dir/$(basename "$f").pkl" 2>/dev/null || true
            done ;;
    config) find tests/fixtures -name '*.json' -size -64k -exec cp {} "$dir"/ \; 2>/dev/null || true
            echo '{"vocab_size":40,"hidden_size":16,"intermediate_size":24,"num_hidden_layers":2,"num_attention_heads":4}' > "$dir/llama.json" ;;
    gguf) find tests/fixtures -name '*.gguf' -size -256k -exec cp {} "$dir"/ \; 2>/dev/null || true ;;
    webdataset) cp tests/fixtures/webdataset/*.tar "$dir"/ ;;
    jsonl) cp tests/fixtures/documents/*.json* "$dir"/ ;;
    chat) printf 'hello\n/image x\nwhat is in <image>?\n/reset\nagain\n' > "$dir/conversation"
          printf 'look at <image>\n/bogus\n/help\n<im_start><im_patch><im_end>\nhi\n/quit\nafter\n' > "$dir/bad_lines" ;;
  esac
  if [ -d "tests/fixtures/fuzz_regressions/$target" ]; then cp tests/fixtures/fuzz_regressions/"$target"/* "$dir"/ 2>/dev/null || true; fi
  echo "$dir"
}
status=0
for bin in build-fuzz/bin/fuzz_*; do
  target=${bin##*/fuzz_}
  corpus=$(seed_dir "$target")
  echo "== fuzz_$target for ${SECONDS_PER_TARGET}s =="
  if ! "$bin" -max_total_time="$SECONDS_PER_TARGET" -timeout=10 -rss_limit_mb=4096 -print_final_stats=1 \
        -artifact_prefix="build-fuzz/findings/$target-" "$corpus" 2>&1 | tail -n 12; then
    status=1
  fi
done
exit $status
