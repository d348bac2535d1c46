#!/usr/bin/env bash
# The shapes world's tiny recipe, one command: a data set, a tokenizer, and every part of a tiny DreamLLM trained
# from nothing on this machine through `dreamllm train`, then the held-out measurements.
#   bash scripts/world_recipe.sh [OUT]          (default OUT: runs/world; --help: this text)
# Stages (docs/shapes_world.md says why this order):
#   data   dreamllm world gen: 10000 training and 500 held-out scenes of SIZE px (default 36: each cell of the 3x3
#          grid is 12 px, one CLIP patch and 3x3 latent pixels, so every shape looks the same to the patch
#          embedding and to the VAE wherever it stands)
#   init   dreamllm world init: the SentencePiece vocabulary and fresh weights (CLIP patches of PATCH px, default 12:
#          9 image tokens, one per cell, whose position embeddings start at VISION_POSITION_STD, default 0.25: the
#          patches' content no longer says where they are; UNET_TEXT_EMBEDDING=1 gives the UNet diffusers' "text"
#          addition embedding). The noise schedule is v_prediction at zero terminal SNR (SD_NOISE_SCHEDULE=1: SD
#          2.1-base's epsilon schedule). The LLM's input embeddings are tied to its output rows (TIE_EMBEDDINGS=0:
#          untied, as LLaMA): untied, it never learns to read "left" apart from "right", and the creation
#          condition barely changes with them (docs/shapes_world.md, "Mirror words"); DREAM_QUERIES dream queries
#          (default 8; the original has 64)
#   vae    the autoencoder (reconstruction + KL; each latent pixel decoded times a gain from U[0.7, 1.3], so that
#          colour is coded by a latent's direction, not its length), then the latent scale set to 1/std as SD's
#          was chosen
#   see    comprehension alignment (stage I-b) with the LLM learning language and reading a random ViT,
#          then the vision tower joins at a fifth of the rate, then the LLM reads on with the tower frozen, then
#          it answers questions four to one against captions (ASK_STEPS, default 4000; 0: skipped)
#   unet   the UNet from scratch (stage UNet, UNET_STEPS, default 3000) on the pairs' condition labels: one token per
#          shape holding its cell, kind, colour and size, as SD's UNet learned on a frozen text encoder's states (the
#          world has no pretrained text encoder; a UNet learned on the LLM's own query states mixes two shapes'
#          attributes, docs/shapes_world.md "A UNet pretrained on labels")
#   draw   creation alignment (stage I-a, DRAW_STEPS, default 1000): fresh dream queries and condition projector learn
#          to drive the frozen UNet, the LLM frozen, as the original's stage I-a
#   II     interleaved generative pretraining, the LLM learning under the frozen UNet's diffusion loss as the
#          original's stage II: first on the pairs alone (II_PAIR_STEPS, default 5000), where it learns to say which
#          shape has which attribute, then on documents and pairs weighted 1 to 2 (II_STEPS, default 1000)
#   III    supervised fine-tuning (VQA and instructions weighted twice, drawing conversations, pairs; III_STEPS,
#          default 4000), the UNet frozen as the original
#   align  optional (ALIGN_STEPS, default 0: skipped): creation alignment again with the condition projector and
#          the UNet trainable, on the pairs, the LLM and the dream queries frozen (the previous route's last stage)
#   unet, draw, II, III and align take the VAE posterior's mean as the diffusion target (POSTERIOR=sample: SD's
#   sampling; at 36 px the posterior's spread is 0.45 of the latents' and sampled targets double the UNet's loss)
#   II and III weight the diffusion loss JOINT_VM_WEIGHT (default 2, not the paper's 10: the v_prediction loss is
#   about 2.6 times the epsilon loss, and at 10 it takes the clipped gradient from the language; measured in
#   docs/shapes_world.md)
# Every stage's step count is an environment variable (VAE_STEPS, SEE_STEPS, VIT_STEPS, READ_STEPS, ASK_STEPS,
# UNET_STEPS, DRAW_STEPS, II_PAIR_STEPS, II_STEPS, III_STEPS, ALIGN_STEPS), UNET_BATCH the UNet stage's batch,
# VAE_GAIN_JITTER the VAE's gain range (0: SD's plain autoencoder), SIZE=32 PATCH=8 VISION_POSITION_STD=0.02
# POSTERIOR=sample the previous round's world; THREADS (default: all cores); FROM=stage resumes the chain at that
# stage (earlier outputs kept); SEED=n (default 0) repeats the recipe with other initial weights, data orders and
# noise (the same data). III_VQA_WEIGHT, III_DRAW_WEIGHT and III_INSTRUCT_WEIGHT weight three of III's sources
# (default 20000, 10000, 20000).
# OpenBLAS runs the kernels dreamllm names from this CPU's features (AVX-512: SkylakeX, 15-36% faster a step than
# Haswell's here), not a family preset in OPENBLAS_CORETYPE by the machine image; BLAS_CORETYPE=Haswell (or any
# family) pins one. A run is reproducible bit for bit with the same kernel family and THREADS.
set -euo pipefail
if [ "${1:-}" = --help ] || [ "${1:-}" = -h ]; then
  # The comment above is the help.
  sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
  exit 0
fi
if [ $# -gt 1 ] || [ "${1:-}" != "${1#-}" ]; then
  echo "world_recipe.sh: usage: bash scripts/world_recipe.sh [OUT] (settings are environment variables; --help)" >&2
  exit 2
fi
cd "$(dirname "$0")/.."
OUT=${1:-runs/world}
D=${DREAMLLM:-build/bin/dreamllm}
T=${THREADS:-0}
unset OPENBLAS_CORETYPE
[ -n "${BLAS_CORETYPE:-}" ] && export OPENBLAS_CORETYPE="$BLAS_CORETYPE"
stages=(data init vae see unet draw II III align)
from=${FROM:-data}
if [[ " ${stages[*]} " != *" $from "* ]]; then
  echo "world_recipe.sh: FROM=$from is not a stage; the stages are: ${stages[*]}" >&2
  exit 2
fi
[ -x "$D" ] || BUILD_DIR=build bash scripts/build.sh
mkdir -p "$OUT"
LOG="$OUT/recipe.log"
started=0
run_stage() {  # run_stage NAME: true when NAME is at or after FROM
  local s
  for s in "${stages[@]}"; do
    [ "$s" = "$from" ] && started=1
    [ "$s" = "$1" ] && break
  done
  [ "$started" = 1 ]
}
t0=$SECONDS
say() { echo "== $* ($(( (SECONDS - t0) / 60 )) min $(( (SECONDS - t0) % 60 )) s)" | tee -a "$LOG"; }
SEED=${SEED:-0}
# A failing stage stops the chain (pipefail). SEED shifts every stage's seed (its --seed, else the trainer's 42)
# and the initial weights', for repeats of the recipe; SEED=0 is the recipe's run.
train() {
  local args=() a shift_next=0 seeded=0
  for a in "$@"; do
    if [ "$shift_next" = 1 ]; then
      args+=("$((a + SEED))")
      shift_next=0
      continue
    fi
    [ "$a" = --seed ] && shift_next=1 && seeded=1
    args+=("$a")
  done
  [ "$seeded" = 1 ] || args+=(--seed "$((42 + SEED))")
  # The trainer's progress, one line per 100 steps and the last (it writes a line per step into a pipe).
  "$D" train -t "$T" "${args[@]}" 2>&1 |
    awk '$1 == "step" { split($2, s, "/"); if (s[1] % 100 != 0 && s[1] != s[2]) next } { print; fflush() }' |
    tee -a "$LOG"
}

W="$OUT/data"
if run_stage data; then
  say "data"
  rm -rf "$W"
  "$D" world gen -o "$W" --train "${SCENES:-10000}" --test 500 --seed 1 --size "${SIZE:-36}" | tee -a "$LOG"
fi
if run_stage init; then
  say "init"
  rm -rf "$OUT/init"
  init_options=()
  [ "${UNET_TEXT_EMBEDDING:-0}" = 1 ] && init_options+=(--unet-text-embedding)
  [ "${SD_NOISE_SCHEDULE:-0}" = 1 ] && init_options+=(--sd-noise-schedule)
  [ "${TIE_EMBEDDINGS:-1}" = 1 ] && init_options+=(--tie-embeddings)
  init_options+=(--dream-queries "${DREAM_QUERIES:-8}")
  "$D" world init -d "$W" -o "$OUT/init" --size "${SIZE:-36}" --patch "${PATCH:-12}" --seed "$SEED" \
    --vision-position-std "${VISION_POSITION_STD:-0.25}" "${init_options[@]}" | tee -a "$LOG"
fi
if run_stage vae; then
  say "vae"
  rm -rf "$OUT/vae"
  train --stage VAE -m "$OUT/init" --data "$W/train/pairs.jsonl" -o "$OUT/vae" -b 16 \
    --max-steps "${VAE_STEPS:-1500}" --lr 3e-3 --warmup-ratio 0.02 --latent-gain-jitter "${VAE_GAIN_JITTER:-0.3}"
  "$D" world eval-vae -m "$OUT/vae" --scenes "$W/test/scenes.jsonl" -n 200 --write-scale | tee -a "$LOG"
fi
if run_stage see; then
  say "see: language and vision"
  rm -rf "$OUT/see0" "$OUT/see1" "$OUT/see2" "$OUT/see"
  train --stage I-b -m "$OUT/vae" --data "$W/train/vqa.json" --data "$W/train/pairs.jsonl" -o "$OUT/see0" -b 16 \
    --max-steps "${SEE_STEPS:-1500}" --trainable llm,vision_projector --reinit none --lr 1e-3 --warmup-ratio 0.03
  train --stage I-b -m "$OUT/see0" --data "$W/train/vqa.json" --data "$W/train/pairs.jsonl" -o "$OUT/see1" -b 16 \
    --max-steps "${VIT_STEPS:-1000}" --trainable llm,vision_projector,vision_tower --lr-scale vision_tower=0.2 \
    --reinit none --lr 5e-4 --warmup-ratio 0.03 --seed 7
  # Kinds are learned last: caption kind 29% after the two steps above, 89-93% after this (docs/shapes_world.md).
  train --stage I-b -m "$OUT/see1" --data "$W/train/vqa.json" --data "$W/train/pairs.jsonl:pair" -o "$OUT/see2" -b 16 \
    --max-steps "${READ_STEPS:-2500}" --trainable llm,vision_projector --reinit none --lr 1e-3 --warmup-ratio 0.03 \
    --seed 11
  # Questions, four to one against captions: colour counts and "is there" answered the prior until here (always
  # "one", mostly "yes"), and are learned in this step (docs/shapes_world.md, "Questions the model never answered").
  ask_steps=${ASK_STEPS:-4000}
  if [ "$ask_steps" = 0 ]; then
    cp -r "$OUT/see2" "$OUT/see"
  else
    train --stage I-b -m "$OUT/see2" --data "$W/train/vqa.json:conversation:8000" \
      --data "$W/train/pairs.jsonl:pair:2000" -o "$OUT/see" -b 16 --max-steps "$ask_steps" \
      --trainable llm,vision_projector --reinit none --lr 1e-3 --warmup-ratio 0.03 --seed 13
  fi
fi
if run_stage unet; then
  say "unet: the UNet on the pictures' labels"
  rm -rf "$OUT/unet"
  train --stage UNet -m "$OUT/see" --data "$W/train/pairs.jsonl:pair" --condition-labels 22 -o "$OUT/unet" \
    -b "${UNET_BATCH:-16}" --max-steps "${UNET_STEPS:-3000}" --lr 1e-3 --warmup-ratio 0.02 --cond-dropout 0.1 \
    --posterior "${POSTERIOR:-mode}"
fi
if run_stage draw; then
  say "draw: creation alignment"
  rm -rf "$OUT/draw"
  train --stage I-a -m "$OUT/unet" --data "$W/train/pairs.jsonl:pair" -o "$OUT/draw" -b 16 \
    --max-steps "${DRAW_STEPS:-1000}" --lr 1e-3 --warmup-ratio 0.02 --cond-dropout 0.1 --posterior "${POSTERIOR:-mode}"
fi
if run_stage II; then
  say "stage II"
  rm -rf "$OUT/II-pairs" "$OUT/II"
  # First on pairs alone (II_PAIR_STEPS, default 5000): the LLM learns under the frozen UNet to say which shape has
  # which attribute, which needs many text-to-image pictures (docs/shapes_world.md, "A UNet pretrained on labels").
  train --stage II -m "$OUT/draw" --data "$W/train/pairs.jsonl:pair" -o "$OUT/II-pairs" -b 16 \
    --max-steps "${II_PAIR_STEPS:-5000}" --reinit none --lr 3e-4 --warmup-ratio 0.03 --cond-dropout 0.1 \
    --vm-weight "${JOINT_VM_WEIGHT:-2}" --posterior "${POSTERIOR:-mode}" \
    --trainable llm,dream_queries,condition_projector
  train --stage II -m "$OUT/II-pairs" --data "$W/train/interleaved.jsonl" --data "$W/train/pairs.jsonl:pair:20000" \
    -o "$OUT/II" -b 16 --max-steps "${II_STEPS:-1000}" --reinit none --lr 3e-4 --warmup-ratio 0.03 --cond-dropout 0.1 \
    --vm-weight "${JOINT_VM_WEIGHT:-2}" --posterior "${POSTERIOR:-mode}" \
    --trainable llm,vision_projector,dream_queries,condition_projector
fi
if run_stage III; then
  say "stage III"
  rm -rf "$OUT/sft"
  # III_VQA_WEIGHT and III_INSTRUCT_WEIGHT (default 20000 each, twice their record counts) and III_DRAW_WEIGHT
  # (default: its record count, 10000) weight the questions, the instructions and the drawing conversations in the
  # mixture.
  # Instructions weighted once wrote two shapes into one cell and ignored "two shapes" (write 17 of 30 documents);
  # twice, 24 of 30 (docs/shapes_world.md, "Instructions weighted twice").
  vqa_data="$W/train/vqa.json:conversation:${III_VQA_WEIGHT:-20000}"
  draw_data="$W/train/draw.json"
  [ -n "${III_DRAW_WEIGHT:-}" ] && draw_data+=":conversation:$III_DRAW_WEIGHT"
  instruct_data="$W/train/instruct.jsonl:interleaved:${III_INSTRUCT_WEIGHT:-20000}"
  train --stage III -m "$OUT/II" --data "$vqa_data" --data "$draw_data" \
    --data "$instruct_data" --data "$W/train/pairs.jsonl" -o "$OUT/sft" -b 8 --max-steps "${III_STEPS:-4000}" \
    --reinit none --lr 2e-4 --warmup-ratio 0.03 --cond-dropout 0.1 --vm-weight "${JOINT_VM_WEIGHT:-2}" \
    --posterior "${POSTERIOR:-mode}"
fi
if run_stage align; then
  say "align: the UNet to the final LLM's conditions"
  rm -rf "$OUT/model"
  align_steps=${ALIGN_STEPS:-0}
  if [ "$align_steps" = 0 ]; then
    cp -r "$OUT/sft" "$OUT/model"
  else
    train --stage I-a -m "$OUT/sft" --data "$W/train/pairs.jsonl:pair" -o "$OUT/model" -b 16 \
      --max-steps "$align_steps" --trainable condition_projector,unet --reinit none --lr 5e-4 \
      --warmup-ratio 0.02 --cond-dropout 0.1 --posterior "${POSTERIOR:-mode}"
  fi
fi
say "trained: $OUT/model"
"$D" world eval-vqa -m "$OUT/model" --vqa "$W/test/vqa.json" -n 200 | tee -a "$LOG"
"$D" world eval-caption -m "$OUT/model" --scenes "$W/test/scenes.jsonl" -n 200 | tee -a "$LOG"
"$D" world eval-create -m "$OUT/model" --scenes "$W/test/scenes.jsonl" -n 100 | tee -a "$LOG"
"$D" world eval-create -m "$OUT/model" --scenes "$W/test/scenes.jsonl" -n 100 --shapes 1 | tee -a "$LOG"
"$D" world eval-create -m "$OUT/model" --scenes "$W/test/scenes.jsonl" -n 100 --shapes 2 | tee -a "$LOG"
"$D" world eval-write -m "$OUT/model" --instruct "$W/test/instruct.jsonl" -n 30 | tee -a "$LOG"
say "done"
