#!/usr/bin/env bash
# The main job on the embedded default: installs what is missing, builds, and runs the committed tiny DreamLLM of
# the shapes world (models/shapes-world, trained from nothing by scripts/world_recipe.sh) on its richest task:
# a free-form document in which the model decides itself where the pictures go, then a question about a picture.
# Output: out/demo.html (self-contained; open it in a browser), out/demo.md and out/demo_N.png.
# Extra arguments go to `dreamllm write` (e.g. -p "Show how to draw ... step by step.").
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build.sh -DDL_BUILD_BENCH=OFF > /dev/null
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
echo "== open out/demo.html to read the document with its pictures"
