#!/usr/bin/env bash
# stablemotion-mini at the paper's resolutions (issue 14, item 4): SIR at 192x256, RSC at 256x256,
# on a factor-4 VAE so the motion UNet's latents stay 48x64 / 64x64 (the 96x128 minis' UNet cost).
# Meant for a GPU (`train.device: null` picks it); on this project's 2-core CPU the VAE stage
# alone would take ~3 hours. Data: the realistic generators over the Debian photo pool
# (`bash configs/install_photos.sh` first). Every stage resumes from its last complete checkpoint.
#   bash configs/hr_recipe.sh            # then: stablemotion convert runs/hr_sir/pipeline --out ...
set -euo pipefail
S="${STABLEMOTION:-stablemotion}"
W="${WORKERS:-8}"
cd "$(dirname "$0")/.."
P='debian-train+bundled-train*3+procedural*40'
[ -d data/hr_sir/training/flow ] || { $S synth rectangling data/hr_sir --split training --num 3000 --size 192x256 --ext jpg --quality 92 --photos "$P" --style panorama --white-fraction 0.3 --seed 6 --workers "$W" && $S synth rectangling data/hr_sir --split training --num 1500 --start 3000 --size 192x256 --ext jpg --quality 92 --photos "$P" --style stitched --white-fraction 0.3 --seed 7 --workers "$W" --force && $S synth rectangling data/hr_sir --split training --num 1500 --start 4500 --size 192x256 --ext jpg --quality 92 --photos "$P" --seed 8 --workers "$W" --force; }
[ -d data/hr_sir/testing/flow ] || $S synth rectangling data/hr_sir --split testing --num 64 --size 192x256 --ext jpg --quality 92 --photos 'debian-test+bundled-test' --style panorama --white-fraction 0.3 --seed 1 --workers "$W"
[ -d data/hr_rsc/train/npz ] || $S synth rolling-shutter data/hr_rsc --split train --num 6000 --size 256x256 --photos 'debian-train+bundled-train*3+procedural*20+urban*60' --motion camera --seed 5 --workers "$W"
[ -d data/hr_rsc/test/npz ] || $S synth rolling-shutter data/hr_rsc --split test --num 64 --size 256x256 --photos 'debian-test+bundled-test' --motion camera --seed 1 --workers "$W"
mkdir -p runs
$S train configs/hr_vae.yaml --resume
$S train configs/hr_sir.yaml --resume
$S train configs/hr_rsc.yaml --resume
echo "done: python benchmarks/rsc_realistic.py --model runs/hr_rsc/pipeline --size 256x256 --no-write"
