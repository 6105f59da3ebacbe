#!/usr/bin/env bash
# Data of the stablemotion-mini recipe (offline, ~1 min): training samples from the bundled
# training photos and procedural scenes; test samples from held-out photos never used in
# training (stablemotion.synth.HELD_OUT_PHOTOS). Splits that already exist are kept.
set -euo pipefail
S="${STABLEMOTION:-stablemotion}"
W="${WORKERS:-2}"
TRAIN='bundled-train+procedural*10'
[ -d data/mini_sir/training/flow ] || $S synth rectangling data/mini_sir --split training --num 2000 --size 96x128 --ext png --photos "$TRAIN" --workers "$W"
[ -d data/mini_sir/testing/flow ] || $S synth rectangling data/mini_sir --split testing --num 64 --size 96x128 --ext png --photos bundled-test --seed 1 --workers "$W"
[ -d data/mini_rsc/train/npz ] || $S synth rolling-shutter data/mini_rsc --split train --num 2000 --size 96x128 --photos "$TRAIN" --workers "$W"
[ -d data/mini_rsc/test/npz ] || $S synth rolling-shutter data/mini_rsc --split test --num 64 --size 96x128 --photos bundled-test --seed 1 --workers "$W"
# Stage 3 (SIR fine-tune): half stitched-panorama outlines (30% white empty areas), half inset borders.
[ -d data/mini_sir_mix/training/flow ] || { $S synth rectangling data/mini_sir_mix --split training --num 1000 --size 96x128 --ext png --photos "$TRAIN" --style stitched --white-fraction 0.3 --seed 2 --workers "$W" && $S synth rectangling data/mini_sir_mix --split training --num 1000 --start 1000 --size 96x128 --ext png --photos "$TRAIN" --seed 3 --workers "$W" --force; }
[ -d data/mini_sir_mix/testing/flow ] || $S synth rectangling data/mini_sir_mix --split testing --num 64 --size 96x128 --ext png --photos bundled-test --style stitched --white-fraction 0.3 --seed 1 --workers "$W"
