#!/usr/bin/env bash
# Builds the libFuzzer targets with clang (ASan + UBSan) and runs each (or those named as arguments) for FUZZ_SECONDS
# (default 20) over its seed corpus (tests/fixtures files of the right kind, tests/fixtures/fuzz_seeds for the
# formats without fixtures) plus any earlier findings kept in tests/fixtures/fuzz_regressions. docs/fuzzing.md
# lists the targets and the campaign figures.
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
    gguf_model) cp tests/fixtures/fuzz_seeds/gguf_model/* "$dir"/ ;;  # tools/fixtures/make_gguf_model_seeds.py
    jsonl) cp tests/fixtures/documents/*.json* "$dir"/ ;;
    chat) printf 'hello\n/image x\nwhat is in <image>?\n/reset\nagain\n' > "$dir/conversation"
          printf 'look at <image>\n/bogus\n/help\n<im_start><im_patch><im_end>\nhi\n/quit\nafter\n' > "$dir/bad_lines" ;;
    image) cp tests/fixtures/fuzz_seeds/image/* "$dir"/
           for f in tests/fixtures/images/files/*.{png,jpg,bmp}; do cp "$f" "$dir/fixture_${f##*/}"; done ;;
    tokenizer)  # tokenizer_config.json NUL special_tokens_map.json NUL added_tokens.json NUL prompt NUL tokenizer.model
      local t=tests/fixtures/tokenizer prompt='Hi <im_start><im_patch><im_end> there</s>  <dream_start>x'
      { cat $t/tokenizer_config.json; printf '\0'; cat $t/special_tokens_map.json; printf '\0'
        cat $t/added_tokens.json; printf '\0%s\0' "$prompt"; cat $t/tokenizer.model; } > "$dir/full"
      { printf '\0\0\0%s\0' "$prompt"; cat $t/tokenizer.model; } > "$dir/model_only"
      { printf '{"legacy": false}\0'; cat $t/special_tokens_map.json; printf '\0'; cat $t/added_tokens.json
        printf '\0 \xe2\x96\x81a<im_start> b\0'; cat $t/tokenizer.model; } > "$dir/non_legacy" ;;
    model_dir)  # index NUL config.json NUL clip_vision NUL unet NUL vae NUL scheduler NUL preprocessor_config.json
      local m=tests/fixtures/tiny_full s=tests/fixtures/fuzz_seeds/model_dir
      { cat $s/model.safetensors.index.json; printf '\0'; cat $m/config.json; printf '\0'
        cat $m/clip_vision/config.json; printf '\0'; cat $m/unet/config.json; printf '\0'; cat $m/vae/config.json
        printf '\0'; cat $m/scheduler/scheduler_config.json; printf '\0'; cat $s/preprocessor_config.json
      } > "$dir/tiny_full"
      { printf '\0'; cat $m/config.json; printf '\0\0\0\0\0'; } > "$dir/defaults" ;;
    checkpoint)  # trainer_state.json NUL optimizer.safetensors
      for f in tests/fixtures/fuzz_seeds/checkpoint/*.json; do
        { cat "$f"; printf '\0'; cat "${f%/*}/optimizer.safetensors"; } > "$dir/${f##*/}"
      done ;;
    serve_api)  # route byte (0 chat, 1 images, 2 documents, 3 data URI) + body
      local png
      png=$(base64 -w0 tests/fixtures/images/files/rgb.png)
      printf '\0{"model":"m","messages":[{"role":"system","content":"s"},{"role":"user","content":[{"type":"image_url","image_url":{"url":"data:image/png;base64,%s"}},{"type":"text","text":"What is it?"}]}],"temperature":0.5,"top_p":0.9,"max_tokens":8,"seed":3,"stop":["a","b"],"n":2,"stream":true,"stream_options":{"include_usage":true}}' "$png" > "$dir/chat"
      printf '\1{"model":"m","prompt":"a red circle","n":2,"size":"64x32","response_format":"b64_json","seed":9,"steps":20,"sampler":"dpmpp2m","guidance":3,"negative_prompt":"x"}' > "$dir/images"
      printf '\2{"model":"m","prompt":"Write.","raw":true,"max_images":2,"text_seed":4,"image_bias":1.5,"stream":false}' > "$dir/documents"
      printf '\3data:image/png;base64,%s' "$png" > "$dir/data_uri" ;;
    data_spec)
      local i=0
      for s in docs.jsonl a/b.jsonl:interleaved:100 shards/00.tar:wds c:/x.json:pair:5 mmc4:12 llava.json:llava \
               /data/shard-00012.tar::1536:48211 dir/abc.0.JPG 'x::1:2:3' ':wds'; do
        printf '%s' "$s" > "$dir/spec$((i++))"
      done ;;
  esac
  if [ -d "tests/fixtures/fuzz_regressions/$target" ]; then cp tests/fixtures/fuzz_regressions/"$target"/* "$dir"/ 2>/dev/null || true; fi
  echo "$dir"
}
status=0
# Targets named on the command line (e.g. `scripts/fuzz.sh image tokenizer`), or all of them.
if [ $# -gt 0 ]; then bins=("${@/#/build-fuzz/bin/fuzz_}"); else bins=(build-fuzz/bin/fuzz_*); fi
for bin in "${bins[@]}"; do
  target=${bin##*/fuzz_}
  corpus=$(seed_dir "$target")
  echo "== fuzz_$target for ${SECONDS_PER_TARGET}s =="
  if ! "$bin" -max_total_time="$SECONDS_PER_TARGET" -timeout=10 -rss_limit_mb=4096 -print_final_stats=1 \
        -artifact_prefix="build-fuzz/findings/$target-" "$corpus" 2>&1 | tail -n 12; then
    status=1
  fi
done
exit $status
