#!/usr/bin/env bash
# The multi-task mini and its single-task baselines on a CPU (~45 min on 2 cores, the two
# branches side by side, one core each). Data: configs/mini_data.sh (SIR panoramas, RSC, rotation
# and lens sets). Both branches start from the bundled SIR mini (stage 5) re-mapped to their
# task(s) (model.retarget) and resume from their last complete checkpoint if interrupted.
# Then `python benchmarks/multi_task.py` scores them (BENCHMARKS.md, "Multi-task").
set -euo pipefail
S="${STABLEMOTION:-stablemotion}"
cd "$(dirname "$0")/.."
STABLEMOTION="$S" bash configs/mini_data.sh
mkdir -p runs
OMP_NUM_THREADS=1 $S train configs/mini_multi.yaml --resume > runs/mini_multi.log 2>&1 &
multi=$!
(
  set -e
  OMP_NUM_THREADS=1 $S train configs/mini_single.yaml --resume
  for t in rsc:rsreal:data/mini_rsc/train:data/mini_rsc/test \
           rotation:folder:data/mini_rotation/train:data/mini_rotation/test \
           lens:folder:data/mini_lens/train:data/mini_lens/test; do
    IFS=: read -r task fmt train val <<< "$t"
    OMP_NUM_THREADS=1 $S train configs/mini_single.yaml --resume -o task="$task" -o data.format="$fmt" \
      -o data.train="$train" -o data.val="$val" -o checkpoint.output_dir="runs/single_$task"
  done
) > runs/mini_single.log 2>&1 &
single=$!
wait $multi && wait $single || { echo "a run failed: see runs/mini_multi.log, runs/mini_single.log" >&2; exit 1; }
$S convert runs/mini_multi/pipeline --out src/stablemotion/weights/stablemotion-mini-multi --force
