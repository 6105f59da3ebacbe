"""``stablemotion train-task-classifier``: train the classifier of ``rectify --task auto``.

See :mod:`stablemotion.model.task_choice`: a tiny CNN telling rolling shutter, tilt, lens
distortion and undistorted photos apart, trained on exact synthetic samples made in memory
(CPU, minutes). The bundled one lives in ``stablemotion/weights/task-classifier``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ._options import int_arg, seed_arg


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train-task-classifier", help="train the task classifier of `rectify --task auto` (CPU)",
                       description=__doc__.split("\n\n", 1)[1] if __doc__ else None)
    p.add_argument("--out", type=Path, required=True, help="output folder (config.json + safetensors)")
    p.add_argument("--num", type=int_arg(1, 1_000_000), default=400, help="synthetic samples per class (default 400)")
    p.add_argument("--steps", type=int_arg(1, 10_000_000), default=2000, help="Adam steps, batches of 64 (default 2000)")
    p.add_argument("--photos", default="bundled-train+procedural*3+urban*2",
                   help="photo sources, as for `synth --photos` (default bundled-train+procedural*3+urban*2)")
    p.add_argument("--seed", type=seed_arg, default=None, help="sample / training seed (default: the training seed)")
    p.add_argument("--workers", type=int_arg(1, 256), default=1, help="processes generating samples (default 1)")
    p.set_defaults(func=_train)


def _train(args: argparse.Namespace) -> int:
    from ..model.task_choice import TEST_SEED, TRAIN_SEED, train_task_classifier

    seed = TRAIN_SEED if args.seed is None else args.seed
    if seed == TEST_SEED:
        raise ValueError(f"--seed {seed} is the held-out test seed; choose another")
    train_task_classifier(args.out, num_per_task=args.num, steps=args.steps, seed=seed, photos=args.photos,
                          workers=args.workers)
    return 0
