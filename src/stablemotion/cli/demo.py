"""``stablemotion demo``: the project's main job on bundled data, offline, on CPU.

Makes held-out synthetic examples (SIR and RSC by default, ``--task`` for lens and rotation), rectifies them with the bundled
``stablemotion-mini`` models and writes an HTML report (see :mod:`stablemotion.app.demo`).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..tasks import available_tasks
from ._options import int_arg, seed_arg


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="rectify held-out examples with the bundled models and write an HTML report")
    p.add_argument("--out", type=Path, default=Path("outputs/demo"), help="output folder (default outputs/demo)")
    p.add_argument("--num", type=int_arg(1, 1000), default=4, help="examples per task (default 4)")
    p.add_argument("--seed", type=seed_arg, default=None, help="sample seed (default: the demo's fixed seed)")
    p.add_argument("--task", nargs="+", default=["sir", "rsc"], choices=available_tasks(),
                   help="tasks to show (default sir rsc; lens and rotation use the bundled multi-task model)")
    p.set_defaults(func=_demo)


def _demo(args: argparse.Namespace) -> int:
    from ..app.demo import DEMO_SEED, run_demo
    from ..model.catalog import BUNDLED_LIMITS

    t0 = time.perf_counter()
    rep = run_demo(args.out, num=args.num, tasks=args.task, seed=DEMO_SEED if args.seed is None else args.seed)
    for task in dict.fromkeys(r.task for r in rep.rows):
        ident, model = rep.mean(task, "psnr_identity"), rep.mean(task, "psnr_model")
        print(f"{task}: PSNR identity {ident:.2f} dB -> stablemotion-mini {model:.2f} dB ({model - ident:+.2f} dB)")
        if task in BUNDLED_LIMITS:
            print(f"note: {BUNDLED_LIMITS[task]}")
    print(f"wrote {len(rep.rows)} examples in {time.perf_counter() - t0:.1f} s")
    print(f"report: {rep.report.resolve()}")
    return 0
