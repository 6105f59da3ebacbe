#!/usr/bin/env bash
# The GPU recipe: configs/id_recipe.sh with its GPU numbers (batch 32, every run at once on one
# GPU, 5 minutes of training each) - the data, the bundled minis' fine-tunes (SIR, multi-task)
# and the RSC levers - then the do-no-harm and levers tables of the new weights (JSON), in about
# 9 minutes on one modern GPU; weights (fp16, one .tgz per run), logs and JSON written to OUT.
# From a checkout on a machine with a GPU:
#
#   OUT=gpu_out bash configs/gpu_recipe.sh
#
# On a bare machine without this package's dependencies, carry wheels (diffusers,
# importlib_metadata) in .whl/ and the training photos in .gpu_photos/
# (`python configs/pack_photos.py .gpu_photos`): both are picked up when present. Bring the
# weights back with `tar -xzf OUT/RUN.tgz -C runs`, then score them (BENCHMARKS.md, "RSC and
# rotation levers": python benchmarks/levers.py).
set -euo pipefail
cd "$(dirname "$0")/.."
: "${OUT:?set OUT to the folder the weights and logs go to}"
PY="${PYTHON:-python3}"
if [ -d .whl ] && compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="$PWD/src:/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
fi
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
"$PY" -c "import torch, diffusers, stablemotion; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'diffusers', diffusers.__version__)"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
PHOTOS_DEFAULT=debian-train
[ -d .gpu_photos ] && PHOTOS_DEFAULT=.gpu_photos
t0=$(date +%s)
GPU=1 WORKERS="${WORKERS:-$(nproc)}" PHOTOS="${PHOTOS:-$PHOTOS_DEFAULT}" STABLEMOTION="$PY -m stablemotion" OUT="$OUT" \
  MINUTES="${MINUTES:-5}" BENCH="${BENCH:-1}" PYTHON="$PY" bash configs/id_recipe.sh
echo "gpu recipe: $(( $(date +%s) - t0 )) s"
ls -la "$OUT"
