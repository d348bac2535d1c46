#!/usr/bin/env bash
# The main job on the embedded default: installs what is missing, builds, and runs the committed tiny DreamLLM of
# the shapes world (models/shapes-world, trained from nothing by scripts/world_recipe.sh) on its richest task:
# a free-form document in which the model decides itself where the pictures go, then a question about a picture.
# Output: out/demo.html (self-contained; open it in a browser), out/demo.md and out/demo_N.png. Then, so that one
# document and one answer are not taken for the model's quality, the figures measured on its held-out scenes and a
# fresh small sample of held-out scenes scored here (about half a minute on two cores).
# Extra arguments go to `dreamllm write` (e.g. -p "Show how to draw ... step by step.").
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Only what the main job needs: the tests and benchmarks need the packages of `setup.sh --test`.
bash scripts/build.sh -DDL_BUILD_TESTS=OFF -DDL_BUILD_BENCH=OFF > /dev/null
D=./build/bin/dreamllm
M=models/shapes-world
mkdir -p out
rm -f out/demo_*.png  # pictures of an earlier, longer document
echo "== dreamllm write: the model writes and draws (images are placed by the model itself)"
$D write -m "$M" -o out/demo.html --steps 25 --sampler dpmpp2m --cfg-scale 3 --max-images 3 \
  -p "Show how to draw a large red circle at the top left and a small blue square at the bottom right step by step." \
  "$@"
echo "== dreamllm ask: a question about a picture of the world"
# At the pictures' size the model was trained on (36 px; a 32 px picture is resized and read worse).
$D world render --size 36 -p "a large yellow triangle at the center and a small green cross at the top right" \
  -o out/scene.png
$D ask -m "$M" --template train -i out/scene.png -p "What colour is the triangle?" -n 8
echo "(the truth: yellow) and the model's caption of the same picture:"
$D ask -m "$M" -i out/scene.png --caption -n 40
echo "== what to expect: this model on scenes it never saw in training"
echo "measured on the 500 held-out scenes (docs/shapes_world.md): creation 99 of 100 one-shape and 100 of 100"
echo "two-shape prompts whole; questions 90.5% exact (relations 61%, colour 86%); captions 93.5% whole; written"
echo "documents 24 of 30 agree with their text. So the document and the answer above are wrong some of the time."
echo "A fresh sample of held-out scenes, scored now (seed ${DEMO_SEED:-7}):"
rm -rf out/heldout
$D world gen -o out/heldout --train 0 --test 40 --seed "${DEMO_SEED:-7}" > /dev/null 2>&1
$D world eval-vqa -m "$M" --vqa out/heldout/test/vqa.json --limit 20 2> /dev/null | head -1
$D world eval-create -m "$M" --scenes out/heldout/test/scenes.jsonl --limit 10 2> /dev/null | grep "^all prompts"
$D world eval-write -m "$M" --instruct out/heldout/test/instruct.jsonl --limit 5 2> /dev/null | head -1
echo "== open out/demo.html to read the document with its pictures"
