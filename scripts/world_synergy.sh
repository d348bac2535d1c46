#!/usr/bin/env bash
# The shapes world's synergy experiment (docs/shapes_world.md): the same compute budget, the same parameters and
# the same optimiser, trained on
#   (a) creation only       text-to-image pairs                               (stage I-a's data)
#   (b) comprehension only  VQA conversations + image-to-text pairs           (stage I-b's data)
#   (c) jointly             VQA conversations + pairs in both directions      (stage II's data)
#   and (c) again with the diffusion term weighted 1 instead of 10
# from one starting point: a recipe run's tokenizer and trained VAE, everything else as initialised (the vision
# tower stays at its random initialisation, as in the recipe's first comprehension step). Each run trains the LLM,
# the vision projector, the dream queries, the condition projector and the UNet with LM weight 1 and diffusion
# weight 10 (the paper's), so the runs differ only in their data. Then every model is measured on the same held-out
# VQA, captions and creation prompts, and the table is written to OUT/synergy.md.
#   bash scripts/world_synergy.sh [RUN] [OUT]     (defaults: runs/world, RUN/synergy)
# Environment: STEPS (default 1000, batch 16 each), THREADS, N_VQA / N_CAPTIONS / N_CREATE (held-out sizes),
# START (the model every arm starts from; default RUN/vae, e.g. RUN/see for a model that already reads), ARMS
# (a subset of: creation comprehension joint joint_vm1).
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${1:-runs/world}
OUT=${2:-$RUN/synergy}
D=${DREAMLLM:-build/bin/dreamllm}
T=${THREADS:-0}
STEPS=${STEPS:-1000}
W="$RUN/data"
[ -x "$D" ] || BUILD_DIR=build bash scripts/build.sh
START=${START:-$RUN/vae}
for need in "$W/train/pairs.jsonl" "$W/train/vqa.json" "$W/test/scenes.jsonl" "$START/config.json"; do
  [ -e "$need" ] || { echo "world_synergy: $need is missing (run scripts/world_recipe.sh first)" >&2; exit 1; }
done
mkdir -p "$OUT"
LOG="$OUT/synergy.log"
common=(-t "$T" -q -m "$START" -b 16 --max-steps "$STEPS" --lr 1e-3 --warmup-ratio 0.03 --reinit none
  --trainable llm,vision_projector,dream_queries,condition_projector,unet --lm-weight 1
  --cond-dropout 0.1 --snr-gamma 5 --seed 11)
# joint_vm1 is the joint run with the diffusion term weighted 1 instead of the paper's 10 (the LM's share of the
# shared LLM's gradient is what that weight sets; a single-loss run is nearly indifferent to it under AdamW).
declare -A stage=([creation]=I-a [comprehension]=I-b [joint]=II [joint_vm1]=II)
declare -A vm=([creation]=10 [comprehension]=10 [joint]=10 [joint_vm1]=1)
both="$W/train/vqa.json $W/train/pairs.jsonl:pair"
declare -A data=([creation]="$W/train/pairs.jsonl:pair" [comprehension]="$both" [joint]="$both" [joint_vm1]="$both")
read -r -a runs <<< "${ARMS:-creation comprehension joint joint_vm1}"
for r in "${runs[@]}"; do
  if [ -f "$OUT/$r/config.json" ] && [ -z "${FORCE:-}" ]; then echo "== $r: kept (FORCE=1 retrains)" | tee -a "$LOG"; continue; fi
  rm -rf "${OUT:?}/$r"
  args=()
  for d in ${data[$r]}; do args+=(--data "$d"); done
  echo "== $r: stage ${stage[$r]}, diffusion weight ${vm[$r]}, $STEPS steps" | tee -a "$LOG"
  start=$SECONDS
  "$D" train --stage "${stage[$r]}" "${args[@]}" -o "$OUT/$r" "${common[@]}" --vm-weight "${vm[$r]}" 2>&1 | tee -a "$LOG"
  echo "$r trained in $((SECONDS - start)) s" | tee -a "$LOG"
done
for r in "${runs[@]}"; do
  [ -f "$OUT/$r.create.txt" ] && [ -z "${FORCE:-}" ] && continue  # measured before (FORCE=1 measures again)
  "$D" world eval-vqa -m "$OUT/$r" --vqa "$W/test/vqa.json" -n "${N_VQA:-100}" > "$OUT/$r.vqa.txt"
  "$D" world eval-caption -m "$OUT/$r" --scenes "$W/test/scenes.jsonl" -n "${N_CAPTIONS:-100}" > "$OUT/$r.caption.txt"
  "$D" world eval-create -m "$OUT/$r" --scenes "$W/test/scenes.jsonl" -n "${N_CREATE:-60}" > "$OUT/$r.create.txt"
done
# The table: one row per run. The sample counts come from each run's metrics.jsonl.
# A figure of an evaluation's output: the percentage on the line of ATTRIBUTE after the line HEADER (pct), or on the
# HEADER line itself (head_pct); "-" where the output has none (e.g. captions that all fall outside the grammar).
pct() { v=$(grep -m1 -A20 "$2" "$1" | grep -m1 "^  *$3 " | sed -E 's/.*\(([0-9.]+)%\).*/\1/'); echo "${v:--}"; }
head_pct() { v=$(grep -m1 "$2" "$1" | sed -E 's/.*\(([0-9.]+)%\).*/\1/'); echo "${v:--}"; }
{
  echo "| run | diffusion weight | images read | images drawn | VQA exact | VQA shape | VQA colour | caption colour | caption kind | caption position | unparsable captions | creation colour | creation kind | creation position | 1-shape prompts whole |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
  for r in "${runs[@]}"; do
    seen=$(/usr/bin/awk -F'"images":' '{split($2,a,","); s+=a[1]} END {print s}' "$OUT/$r/metrics.jsonl")
    drawn=$(/usr/bin/awk -F'"dream_images":' '{split($2,a,","); s+=a[1]} END {print s}' "$OUT/$r/metrics.jsonl")
    unparsable=$(grep -m1 "unparsable" "$OUT/$r.caption.txt" | awk '{print $2}')
    echo "| $r | ${vm[$r]} | $seen | $drawn | $(head_pct "$OUT/$r.vqa.txt" "VQA exact") | $(pct "$OUT/$r.vqa.txt" "VQA exact" shape) | $(pct "$OUT/$r.vqa.txt" "VQA exact" colour) | $(pct "$OUT/$r.caption.txt" "captions:" colour) | $(pct "$OUT/$r.caption.txt" "captions:" kind) | $(pct "$OUT/$r.caption.txt" "captions:" position) | ${unparsable:-0} | $(pct "$OUT/$r.create.txt" "all prompts" colour) | $(pct "$OUT/$r.create.txt" "all prompts" kind) | $(pct "$OUT/$r.create.txt" "all prompts" position) | $(head_pct "$OUT/$r.create.txt" "1-shape prompts") |"
  done
} > "$OUT/synergy.md"
cat "$OUT/synergy.md" | tee -a "$LOG"
