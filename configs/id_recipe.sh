#!/usr/bin/env bash
# The do-no-harm / RSC-and-rotation recipe: data with 15% identity samples for every task
# (rotation with the "straighten" target, RSC with camera motion at 128x128), then fine-tunes of
# the bundled minis: SIR (configs/id_sir.yaml), the multi-task mini (configs/id_multi.yaml) with
# the diffusion and the end-to-end objective, and the RSC levers of BENCHMARKS.md ("RSC and
# rotation levers"): objective diffusion / e2e, global context, a larger UNet
# (configs/id_rsc.yaml with -o overrides). Every run resumes from its last complete checkpoint.
#
#   bash configs/id_recipe.sh                  # CPU numbers (batch 8; hours on 2 cores: run one RUNS at a time)
#   GPU=1 OUT=/some/folder bash configs/id_recipe.sh   # the same runs with GPU numbers, all at once
#                                               # on one GPU in about 9 minutes (batch 32,
#                                               # 5.5 min budget per run), weights tarred to OUT
# Knobs: PHOTOS (training photo sources; default the Debian pool's training split + scenes,
# `bash configs/install_photos.sh` first, or a folder from configs/pack_photos.py), WORKERS,
# SCALE (multiplies sample counts, e.g. 0.02 for a smoke test), RUNS (which runs, default all; RUNS= makes the data only),
# MINUTES (per-run budget), STEPS (max steps), BENCH=1 (score the new runs: identity and levers
# tables as JSON next to the logs; PYTHON names the interpreter).
set -euo pipefail
S="${STABLEMOTION:-stablemotion}"
cd "$(dirname "$0")/.."
GPU="${GPU:-0}"
W="${WORKERS:-2}"
SCALE="${SCALE:-1}"
PHOTOS="${PHOTOS:-debian-train}"
RUNS="${RUNS-sir multi multi_e2e rsc_diffusion rsc_e2e rsc_e2e_global rsc_large}"
P="$PHOTOS+bundled-train*3+procedural*40"
PR="$PHOTOS+bundled-train*3+procedural*10+urban*30"
n() { python3 -c "print(max(8, int($1 * $SCALE)))"; }
ID=0.15

# ---- data (held-out test splits: bundled-test photos, no identity samples)
[ -d data/id_sir/training/flow ] || { $S synth rectangling data/id_sir --split training --num "$(n 1500)" --size 96x128 --ext jpg --quality 92 --photos "$P" --style panorama --white-fraction 0.3 --seed 16 --workers "$W" --identity-fraction $ID && $S synth rectangling data/id_sir --split training --num "$(n 750)" --start 20000 --size 96x128 --ext jpg --quality 92 --photos "$P" --style stitched --white-fraction 0.3 --seed 17 --workers "$W" --identity-fraction $ID --force && $S synth rectangling data/id_sir --split training --num "$(n 750)" --start 40000 --size 96x128 --ext jpg --quality 92 --photos "$P" --seed 18 --workers "$W" --identity-fraction $ID --force; }
[ -d data/id_sir/testing/flow ] || $S synth rectangling data/id_sir --split testing --num 64 --size 96x128 --ext jpg --quality 92 --photos bundled-test --style panorama --white-fraction 0.3 --seed 1 --workers "$W"
[ -d data/id_rsc/train/npz ] || $S synth rolling-shutter data/id_rsc --split train --num "$(n 4000)" --size 128x128 --photos "$PR" --motion camera --seed 15 --workers "$W" --identity-fraction $ID
[ -d data/id_rsc/test/npz ] || $S synth rolling-shutter data/id_rsc --split test --num 64 --size 128x128 --photos bundled-test --motion camera --seed 1 --workers "$W"
[ -d data/id_rotation/train/flow ] || $S synth rotation data/id_rotation --split train --num "$(n 3000)" --size 96x128 --ext jpg --quality 92 --photos "$P" --seed 19 --workers "$W" --identity-fraction $ID
[ -d data/id_rotation/test/flow ] || $S synth rotation data/id_rotation --split test --num 64 --size 96x128 --ext jpg --quality 92 --photos bundled-test --seed 1 --workers "$W"
[ -d data/id_lens/train/flow ] || $S synth lens data/id_lens --split train --num "$(n 3000)" --size 96x128 --ext jpg --quality 92 --photos "$P" --seed 20 --workers "$W" --identity-fraction $ID
[ -d data/id_lens/test/flow ] || $S synth lens data/id_lens --split test --num 64 --size 96x128 --ext jpg --quality 92 --photos bundled-test --seed 1 --workers "$W"

# ---- the runs: name, config, overrides
E2E="-o loss.objective=e2e -o loss.weights.epe=1.0 -o loss.weights.photo=5.0"
declare -A CFG=(
  [sir]="configs/id_sir.yaml"
  [multi]="configs/id_multi.yaml"
  [multi_e2e]="configs/id_multi.yaml $E2E"
  [rsc_diffusion]="configs/id_rsc.yaml"
  [rsc_e2e]="configs/id_rsc.yaml $E2E"
  [rsc_e2e_global]="configs/id_rsc.yaml $E2E -o model.tiny.global_context=true"
  [rsc_large]="configs/id_rsc_large.yaml"
)
mkdir -p runs
if [ "$GPU" = 1 ]; then
  NUM="-o train.device=null -o train.batch_size=${BATCH:-32} -o train.max_steps=${STEPS:-3000} -o train.max_minutes=${MINUTES:-5.5} -o data.num_workers=2 -o checkpoint.every=500"
else
  NUM="${STEPS:+-o train.max_steps=$STEPS}${MINUTES:+ -o train.max_minutes=$MINUTES}"
fi
pids=()
for r in $RUNS; do
  # shellcheck disable=SC2086
  if [ "$GPU" = 1 ]; then
    $S train ${CFG[$r]} $NUM -o checkpoint.output_dir=runs/id_$r --resume > runs/id_$r.log 2>&1 &
    pids+=($!)
  else
    OMP_NUM_THREADS=2 $S train ${CFG[$r]} $NUM -o checkpoint.output_dir=runs/id_$r --resume > runs/id_$r.log 2>&1 || echo "run $r failed: runs/id_$r.log" >&2
  fi
done
for p in "${pids[@]}"; do wait "$p" || echo "a run failed (see runs/id_*.log)" >&2; done
if [ "${BENCH:-0}" = 1 ]; then  # the do-no-harm and levers tables of the new runs, as JSON (BENCHMARKS.md takes them with --json)
  PY="${PYTHON:-python3}"
  cands=(); models=()
  for r in $RUNS; do
    [ -d runs/id_$r/pipeline ] && cands+=(--candidate "$r=runs/id_$r/pipeline") && models+=(--model "$r=runs/id_$r/pipeline")
  done
  if [ ${#cands[@]} -gt 0 ]; then
    $PY benchmarks/identity.py --num 8 --threads 4 "${cands[@]}" --no-write --json runs/identity.json > runs/bench_identity.log 2>&1 &
    $PY benchmarks/levers.py --num 24 --threads 4 "${models[@]}" --no-write --json runs/levers.json > runs/bench_levers.log 2>&1 &
    wait
  fi
fi
if [ -n "${OUT:-}" ]; then  # at most 8 files come back from the GPU machine: one tar per run, logs together
  mkdir -p "$OUT"
  for r in $RUNS; do
    [ -d runs/id_$r/pipeline ] && $S convert runs/id_$r/pipeline --out runs/id_${r}_fp16 --force >/dev/null && tar -czf "$OUT/$r.tgz" -C runs id_${r}_fp16
  done
  tar -czf "$OUT/logs.tgz" runs/*.log runs/*.json runs/id_*/config.yaml 2>/dev/null || true
fi
echo "done: python benchmarks/rsc_levers.py; python benchmarks/multi_task.py; python benchmarks/gate.py"
