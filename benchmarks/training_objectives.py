"""Training step cost of the objectives at the mini size: diffusion vs end-to-end, global context off/on.

    python benchmarks/training_objectives.py [--steps 8] [--batch 8] [--threads 1] [--no-write]

Trains the ``configs/mini_rsc.yaml`` architecture (``model.tiny`` of that file; random weights,
a random VAE of the same shape as the mini VAE) on synthetic 96x128 RSC-shaped samples (an image,
its ground truth and a smooth flow) for ``--steps`` timed steps after 2 warm-up steps, and reports
steps/s and seconds per step of each ``loss.objective`` with ``model.tiny.global_context`` off and
on. Both decode a flow through the VAE decoder inside the graph and back-propagate through it
(``diffusion`` as mini_rsc configures it keeps the task's warp term; ``e2e`` has epe + photo):
the ratio is what budgets a GPU run. Rows run one after the other: on a loaded machine compare
rows of one run only.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import markdown_table, write_section  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


class _Samples(torch.utils.data.Dataset):
    """``n`` RSC-shaped samples: image and gt in [-1, 1] (3, H, W), a smooth flow (2, H, W) in pixels."""

    def __init__(self, n: int, size: tuple[int, int]) -> None:
        g = torch.Generator().manual_seed(0)
        h, w = size
        self.items = []
        for i in range(n):
            image = torch.nn.functional.interpolate(torch.rand(1, 3, h // 8, w // 8, generator=g), size=size,
                                                    mode="bilinear")[0] * 2 - 1
            ys = torch.linspace(-1, 1, h).view(1, h, 1).expand(1, h, w)
            flow = torch.cat([ys * 4.0 * (i % 3 + 1), torch.zeros(1, h, w)])
            self.items.append({"image": image, "gt": image.clone(), "flow": flow, "name": f"{i:05d}"})

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]


def measure(steps: int, batch: int) -> list[list[object]]:
    from stablemotion.training import Trainer
    from stablemotion.training.config import TrainConfig

    mini = yaml.safe_load((ROOT / "configs" / "mini_rsc.yaml").read_text())
    size = tuple(mini["data"]["resolution"])
    data = _Samples(16, size)
    rows = []
    for objective in ("diffusion", "e2e"):
        for context in (False, True):
            with tempfile.TemporaryDirectory() as tmp:
                loss = {"vgg_weights": None, "weights": {"vgg": 0.0}, "objective": objective}
                if objective == "e2e":
                    loss["weights"] = {"vgg": 0.0, "warp": 0.0, "epe": 1.0, "photo": 1.0}
                else:
                    loss |= {"timesteps": mini["loss"]["timesteps"], "one_step_fraction": mini["loss"]["one_step_fraction"]}
                cfg = TrainConfig.from_dict({
                    "task": "rsc",
                    "data": {"format": "rsreal", "train": tmp, "resolution": list(size), "num_workers": 0},
                    "model": {"base": "tiny", "tiny": {**mini["model"]["tiny"], "global_context": context}},
                    "loss": loss,
                    "train": {"batch_size": batch, "max_steps": steps + 2, "device": "cpu"},
                    "checkpoint": {"output_dir": str(Path(tmp) / "run"), "every": 10**9},
                    "logging": {"every": 10**9, "tensorboard": False},
                    "validation": {"every": 0},
                })
                trainer = Trainer(cfg, train_dataset=data)
                trainer.train(max_steps=2, show_progress=False)  # warm-up
                t0 = time.perf_counter()
                trainer.train(max_steps=steps + 1, show_progress=False)
                dt = (time.perf_counter() - t0) / (steps - 1)
                rows.append([objective, "on" if context else "off", batch, f"{size[0]}x{size[1]}", steps - 1,
                             f"{1 / dt:.3f}", f"{dt:.2f}"])
                print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = measure(args.steps, args.batch)
    table = markdown_table(["loss.objective", "global_context", "batch", "size", "timed steps", "steps/s", "s/step"], rows)
    print(table)
    if not args.no_write:
        body = (f"configs/mini_rsc.yaml's UNet (random weights), CPU, {args.threads} torch thread(s), EMA on, "
                "no validation or checkpoints; rows run one after the other, so other jobs on the machine's cores "
                f"can slow rows unequally (load average at the end: {os.getloadavg()[0]:.1f}).\n\n" + table)
        print(f"updated {write_section('training_objectives', 'Training step cost: diffusion vs e2e objective', body)}")


if __name__ == "__main__":
    main()
