#!/usr/bin/env bash
# Data of the stablemotion-mini recipe (offline): training samples from the bundled training
# photos and procedural scenes; test samples from held-out photos never used in training.
set -euo pipefail
S="${STABLEMOTION:-stablemotion}"
W="${WORKERS:-2}"
$S synth rectangling data/mini_sir --split training --num 2000 --size 96x128 --ext png --photos 'bundled-train+procedural*10' --workers "$W"
$S synth rectangling data/mini_sir --split testing --num 64 --size 96x128 --ext png --photos bundled-test --seed 1 --workers "$W"
$S synth rolling-shutter data/mini_rsc --split train --num 2000 --size 96x128 --photos 'bundled-train+procedural*10' --workers "$W"
$S synth rolling-shutter data/mini_rsc --split test --num 64 --size 96x128 --photos bundled-test --seed 1 --workers "$W"
