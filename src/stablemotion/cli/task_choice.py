"""``stablemotion train-task-classifier``: train the classifier of ``rectify --task auto``.

See :mod:`stablemotion.model.task_choice`: a CNN telling ordinary photos, stitched panoramas,
rolling shutter, tilt and lens distortion apart, trained on synthetic samples made in memory
(CPU: about an hour at one thread; ``--device cuda``: minutes), then calibrated on held-out photos: a temperature
and the threshold that lets at most 2% of ordinary photos be warped. The bundled one lives in
``stablemotion/weights/task-classifier``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ._options import float_arg, int_arg, seed_arg


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train-task-classifier", help="train the task classifier of `rectify --task auto` (CPU)",
                       description=__doc__.split("\n\n", 1)[1] if __doc__ else None)
    p.add_argument("--out", type=Path, required=True, help="output folder (config.json + model.safetensors)")
    p.add_argument("--num", type=int_arg(1, 1_000_000), default=3000,
                   help="training samples per class (default 3000; sir gets half)")
    p.add_argument("--num-calibration", type=int_arg(1, 1_000_000), default=400,
                   help="calibration samples per class from held-out photos (default 400; sir gets half)")
    p.add_argument("--steps", type=int_arg(1, 10_000_000), default=5000, help="AdamW steps, batches of 48 (default 5000)")
    p.add_argument("--photos", default=None,
                   help="training photo sources, as for `synth --photos` (default "
                        "debian-train+bundled-train*3+procedural*20+urban*30, without the pools not installed)")
    p.add_argument("--seed", type=seed_arg, default=None, help="sample / training seed (default: the training seed)")
    p.add_argument("--workers", type=int_arg(1, 256), default=1, help="processes generating samples (default 1)")
    p.add_argument("--cache", type=Path, default=None,
                   help="folder keeping the generated samples (train.npz, calibration.npz) for a rerun")
    p.add_argument("--max-warped", type=float_arg(0.0, 1.0), default=0.02,
                   help="largest share of held-out ordinary photos the threshold may let be warped (default 0.02)")
    p.add_argument("--device", default="cpu", help="where to train: cpu (default; about an hour at one thread) or cuda")
    p.set_defaults(func=_train)


def _train(args: argparse.Namespace) -> int:
    from ..model.task_choice_training import TRAIN_SEED, train_task_classifier

    train_task_classifier(args.out, num_per_class=args.num, num_calibration=args.num_calibration, steps=args.steps,
                          seed=TRAIN_SEED if args.seed is None else args.seed, photos=args.photos,
                          workers=args.workers, cache=args.cache, max_warped=args.max_warped, device=args.device)
    return 0
