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
