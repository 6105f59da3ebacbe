"""``stablemotion train CONFIG``: fine-tune a StableMotion model (1 CPU to many GPUs).

Multi-GPU: ``accelerate launch -m stablemotion train CONFIG`` (every process runs the
same command; each takes its slice of every batch).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a StableMotion model from a YAML experiment config")
    p.add_argument("config", type=Path, help="experiment YAML (see configs/)")
    p.add_argument("--override", "-o", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. -o optim.lr=5e-5 -o train.batch_size=8 (repeatable)")
    p.add_argument("--resume", nargs="?", const=True, default=False, metavar="CHECKPOINT",
                   help="continue from the newest readable checkpoint in the output folder (a damaged one is "
                        "skipped with a warning), or from CHECKPOINT (a checkpoint-N folder, or a run folder)")
    p.add_argument("--max-steps", type=int, default=None, help="stop at this step (checkpointing) without exporting")
    p.add_argument("--check", action="store_true",
                   help="validate the config (keys, types, value ranges) and the data, then exit")
    p.set_defaults(func=_train)


def _train(args: argparse.Namespace) -> int:
    from ..training.config import load_config

    if args.max_steps is not None and args.max_steps < 1:
        raise ValueError(f"--max-steps must be an integer >= 1, got {args.max_steps}")
    if args.resume not in (True, False) and not Path(args.resume).exists():  # cheap checks before any loading
        raise FileNotFoundError(f"--resume: checkpoint folder not found: {args.resume}")
    cfg = load_config(args.config, overrides=args.override)
    if args.check:
        from ..training.trainer import build_dataset, check_batch_fits

        check_batch_fits(cfg)
        ds = build_dataset(cfg, "train")
        print(f"config OK: task {cfg.task_spec.name}, {len(ds)} training samples, output {cfg.checkpoint.output_dir}")
        return 0
    from ..training.trainer import Trainer

    trainer = Trainer(cfg)
    result = trainer.train(resume=args.resume, max_steps=args.max_steps)
    last = ", ".join(f"{k} {v:.4g}" for k, v in result.last_losses.items())
    print(f"finished at step {result.step} ({last})")
    d = result.pipeline_dir
    if d is not None and cfg.train.stage == "unet":
        print(f"pipeline: {d}  (use: stablemotion rectify IMAGE --model {d})")
    elif d is not None and cfg.train.stage == "vae":
        print(f"flow VAE: {d}  (use: model.vae: {d} in a UNet config)")
    elif d is not None:
        print(f"regression baseline: {d}  (score it with benchmarks/mini_models.py --{cfg.task_spec.name}-regressor {d})")
    return 0
