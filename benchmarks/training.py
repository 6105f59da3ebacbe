"""Training cost: tiny-recipe throughput on this machine, and the FLOPs of one SD2-size step.

    python benchmarks/training.py [--steps 30] [--batch 4] [--size 64] [--no-write]

Part 1 trains the tiny random-weight model on a small synthetic SIR set for ``--steps``
steps (after 3 warm-up steps) and reports samples/s and peak resident memory.
Part 2 counts (``torch.utils.flop_counter``, on the meta device: exact counts, no memory,
no download) the FLOPs of one SIR training sample at 384x512 with the SD2 architecture:

    F_step = 3 F_enc + F_unet + F_unet_bwd + F_dec + F_dec_bwd(input only) + 2 F_vgg + F_vgg_bwd(input only)

(three VAE encodes: mask, image, flow; the UNet trains; the VAE decoder and VGG are frozen
but the task losses back-propagate through them to the UNet).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import machine_description, markdown_table, write_section  # noqa: E402
from _sd2 import sd2_unet, sd2_vae  # noqa: E402


def count_sd2_step(height: int = 384, width: int = 512) -> list[list[object]]:
    from torch.utils.flop_counter import FlopCounterMode

    from stablemotion.training.losses import PerceptualLoss

    with torch.device("meta"):
        unet, vae = sd2_unet(12), sd2_vae()
        vgg = PerceptualLoss(weights=None).features
    vae.requires_grad_(False)
    vgg.requires_grad_(False)
    lh, lw = height // 8, width // 8
    meta = {"device": "meta"}

    def flops(fn) -> float:
        with FlopCounterMode(display=False) as fc:
            fn()
        return fc.get_total_flops()

    img = torch.randn(1, 3, height, width, **meta)
    f_enc = flops(lambda: vae.encode(img).latent_dist.mean)
    x = torch.randn(1, 12, lh, lw, **meta)
    emb = torch.randn(1, 2, 1024, **meta)
    t = torch.tensor([500], **meta)
    f_unet = flops(lambda: unet(x, t, encoder_hidden_states=emb).sample)
    f_unet_all = flops(lambda: unet(x, t, encoder_hidden_states=emb).sample.sum().backward())
    z = torch.randn(1, 4, lh, lw, requires_grad=True, **meta)
    f_dec = flops(lambda: vae.decode(z).sample)
    f_dec_all = flops(lambda: vae.decode(z).sample.sum().backward())
    y = torch.randn(1, 3, height, width, requires_grad=True, **meta)
    f_vgg = flops(lambda: vgg(y))
    f_vgg_all = flops(lambda: vgg(y).sum().backward())
    parts = [
        ("VAE encode x3 (mask, image, flow)", 3 * f_enc),
        ("UNet forward", f_unet),
        ("UNet backward (weights + input)", f_unet_all - f_unet),
        ("VAE decode forward", f_dec),
        ("VAE decode backward (input only)", f_dec_all - f_dec),
        ("VGG relu2_2 forward x2", 2 * f_vgg),
        ("VGG backward (input only)", f_vgg_all - f_vgg),
    ]
    total = sum(v for _, v in parts)
    rows = [[name, v / 1e12, f"{100 * v / total:.1f}%"] for name, v in parts]
    rows.append(["**total per sample**", total / 1e12, "100%"])
    return rows


def tiny_throughput(steps: int, batch: int, size: int) -> list[list[object]]:
    import cv2
    from PIL import Image
    from skimage import data as skdata

    from stablemotion.core.flow import mesh_to_flow, rigid_mesh, warp, write_flow
    from stablemotion.training import Trainer
    from stablemotion.training.config import load_config

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        for sub in ("input", "mask", "gt", "flow"):
            (root / sub).mkdir(parents=True)
        rng = np.random.default_rng(0)
        photo = cv2.resize(skdata.astronaut(), (2 * size, 2 * size), interpolation=cv2.INTER_AREA)
        for i in range(16):
            y, x = rng.integers(0, size, size=2)
            img = np.ascontiguousarray(photo[y : y + size, x : x + size])
            mesh = rigid_mesh(2, 2, size, size)
            mesh[1, 1] += rng.normal(0, size / 16, size=2)
            flow = mesh_to_flow(mesh, size, size)
            gt = warp(torch.from_numpy(img).permute(2, 0, 1), flow).permute(1, 2, 0).numpy()
            Image.fromarray(img).save(root / "input" / f"{i:05d}.png")
            Image.fromarray(np.full_like(img, 255)).save(root / "mask" / f"{i:05d}.png")
            Image.fromarray(gt).save(root / "gt" / f"{i:05d}.png")
            write_flow(root / "flow" / f"{i:05d}.npy", flow)
        for precision in ("no", "bf16"):
            cfg = {
                "task": "sir",
                "data": {"format": "dird", "train": str(root), "flows": str(root / "flow"), "resolution": [size, size],
                         "num_workers": 0},
                "model": {"base": "tiny"},
                "loss": {"vgg_weights": None},
                "train": {"batch_size": batch, "max_steps": steps + 3, "device": "cpu", "mixed_precision": precision},
                "checkpoint": {"output_dir": str(Path(tmp) / f"run-{precision}"), "every": 10**9},
                "logging": {"every": 10**9, "tensorboard": False},
                "validation": {"every": 0},
            }
            (Path(tmp) / "cfg.yaml").write_text(yaml.safe_dump(cfg))
            trainer = Trainer(load_config(Path(tmp) / "cfg.yaml"))
            trainer.train(max_steps=3, show_progress=False)  # warm-up
            t0 = time.perf_counter()
            trainer.train(max_steps=steps + 2, show_progress=False)
            dt = time.perf_counter() - t0
            n = (steps - 1) * batch
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            rows.append([f"tiny SIR {size}x{size}, {precision}", batch, steps - 1, n / dt, dt / (steps - 1), f"{peak:.0f}"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    thr = tiny_throughput(args.steps, args.batch, args.size)
    t1 = markdown_table(["recipe", "batch", "steps", "samples/s", "s/step", "peak RSS MB (process)"], thr)
    flops = count_sd2_step()
    t2 = markdown_table(["part of one SIR training sample, SD2 at 384x512", "TFLOP", "share"], flops)
    print(machine_description())
    print(t1)
    print()
    print(t2)
    if not args.no_write:
        body = (
            "Tiny recipe: random-weight tiny UNet/VAE (`model.base: tiny`), synthetic SIR samples, all loss terms "
            "(VGG with random weights), EMA on, CPU. Peak RSS is the process maximum so far. "
            f"Load average at the end: {os.getloadavg()[0]:.1f} (other jobs on the two cores slow every row).\n\n" + t1 +
            "\n\nFLOPs of one SD2-size SIR training sample (counted on the meta device; multiply by the global batch "
            "for a step):\n\n`F_step = 3 F_enc + F_unet + F_unet_bwd + F_dec + F_dec_bwd(input) + 2 F_vgg + "
            "F_vgg_bwd(input)`\n\n" + t2
        )
        print(f"updated {write_section('training', 'Training throughput and cost', body)}")


if __name__ == "__main__":
    main()
