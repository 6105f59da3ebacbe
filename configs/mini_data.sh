#!/usr/bin/env bash
# Data of the stablemotion-mini recipe (offline, ~10 min): training samples from the bundled
# training photos, the Debian photo pool's training split and procedural scenes; test samples
# from held-out photos never used in training (stablemotion.data.synth.HELD_OUT_PHOTOS and the pool's
# test split). The pool needs `bash configs/install_photos.sh` once (apt-get; docs/photo_pools.md).
# Splits that already exist are kept.
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
# Stage 4 (SIR, configs/mini_sir_pano.yaml): half panorama outlines as stitching software makes
# them, a quarter stitched outlines, a quarter inset borders; JPEG; Debian photos.
P='debian-train+bundled-train*3+procedural*40'
[ -d data/mini_sir_pano/training/flow ] || { $S synth rectangling data/mini_sir_pano --split training --num 1500 --size 96x128 --ext jpg --quality 92 --photos "$P" --style panorama --white-fraction 0.3 --seed 6 --workers "$W" && $S synth rectangling data/mini_sir_pano --split training --num 750 --start 1500 --size 96x128 --ext jpg --quality 92 --photos "$P" --style stitched --white-fraction 0.3 --seed 7 --workers "$W" --force && $S synth rectangling data/mini_sir_pano --split training --num 750 --start 2250 --size 96x128 --ext jpg --quality 92 --photos "$P" --seed 8 --workers "$W" --force; }
[ -d data/mini_sir_pano/testing/flow ] || $S synth rectangling data/mini_sir_pano --split testing --num 64 --size 96x128 --ext jpg --quality 92 --photos 'debian-test+bundled-test' --style panorama --white-fraction 0.3 --seed 1 --workers "$W"
# Stage 3 (RSC, configs/mini_rsc_camera.yaml): a 3-D camera pose per row, street scenes.
[ -d data/mini_rsc_camera/train/npz ] || $S synth rolling-shutter data/mini_rsc_camera --split train --num 3000 --size 96x128 --photos 'bundled-train+procedural*4+urban*6' --motion camera --seed 5 --workers "$W"
[ -d data/mini_rsc_camera/test/npz ] || $S synth rolling-shutter data/mini_rsc_camera --split test --num 64 --size 96x128 --photos bundled-test --motion camera --seed 1 --workers "$W"
# Rotation and lens-distortion correction (the multi-task mini, configs/mini_multi.yaml).
[ -d data/mini_rotation/train/flow ] || $S synth rotation data/mini_rotation --split train --num 2000 --size 96x128 --ext jpg --quality 92 --photos "$P" --seed 9 --workers "$W"
[ -d data/mini_rotation/test/flow ] || $S synth rotation data/mini_rotation --split test --num 64 --size 96x128 --ext jpg --quality 92 --photos bundled-test --seed 1 --workers "$W"
[ -d data/mini_lens/train/flow ] || $S synth lens data/mini_lens --split train --num 2000 --size 96x128 --ext jpg --quality 92 --photos "$P" --seed 10 --workers "$W"
[ -d data/mini_lens/test/flow ] || $S synth lens data/mini_lens --split test --num 64 --size 96x128 --ext jpg --quality 92 --photos bundled-test --seed 1 --workers "$W"
