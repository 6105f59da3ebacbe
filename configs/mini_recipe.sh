#!/usr/bin/env bash
# The whole stablemotion-mini recipe on a CPU (`make mini-models`): data, the shared mini VAE,
# then the SIR and RSC motion UNets side by side (one core each), then the SIR fine-tunes on
# stitched-panorama borders (stage 3) and on panoramas as stitching software makes them, over
# the Debian photo pool (stage 4), then the fp16 copies that the package ships. Every stage
# resumes from its last complete checkpoint if interrupted. Needs the photo pool installed once:
# `bash configs/install_photos.sh` (apt-get; docs/photo_pools.md).
# ABLATION=1 also trains the two regression baselines of BENCHMARKS.md afterwards.
# Measured on a 2-core CPU: VAE ~35 min (2 threads), then both UNets ~50 min side by side.
set -euo pipefail
S="${STABLEMOTION:-stablemotion}"
cd "$(dirname "$0")/.."
STABLEMOTION="$S" bash configs/mini_data.sh
mkdir -p runs
OMP_NUM_THREADS=2 $S train configs/mini_vae.yaml --resume
OMP_NUM_THREADS=1 $S train configs/mini_sir.yaml --resume > runs/mini_sir.log 2>&1 &
sir=$!
OMP_NUM_THREADS=1 $S train configs/mini_rsc.yaml --resume > runs/mini_rsc.log 2>&1 &
rsc=$!
wait $sir && wait $rsc || { echo "a UNet run failed: see runs/mini_sir.log, runs/mini_rsc.log" >&2; exit 1; }
# Stage 3 (SIR): fine-tune on half stitched-panorama outlines, half inset borders (~12 min, 2 threads).
OMP_NUM_THREADS=2 $S train configs/mini_sir_finetune.yaml --resume
# Stage 4 (SIR): panorama outlines, JPEG, Debian photos (~25 min at 2 threads, 1500 steps).
OMP_NUM_THREADS=2 $S train configs/mini_sir_pano.yaml --resume
# The smooth flow codec (decoder only, ~12 min) and stage 5: the SIR UNet re-fitted to it (~15 min).
OMP_NUM_THREADS=2 $S train configs/mini_vae_smooth.yaml --resume
OMP_NUM_THREADS=2 $S train configs/mini_sir_smooth.yaml --resume
$S convert runs/mini_sir_smooth/pipeline --out src/stablemotion/weights/stablemotion-mini-sir --force
$S convert runs/mini_rsc/pipeline --out src/stablemotion/weights/stablemotion-mini-rsc --force
if [ "${ABLATION:-0}" = 1 ]; then
  OMP_NUM_THREADS=1 $S train configs/mini_sir_regression.yaml --resume > runs/mini_sir_regression.log 2>&1 &
  OMP_NUM_THREADS=1 $S train configs/mini_rsc_regression.yaml --resume > runs/mini_rsc_regression.log 2>&1 &
  wait
fi
echo "done: python benchmarks/mini_models.py [--sir-regressor runs/mini_sir_regression/regressor --rsc-regressor runs/mini_rsc_regression/regressor]"
