"""Speed of the flow core ops at the SIR resolution (384x512) on this machine.

    python benchmarks/flow_ops.py [--batch 8] [--repeats 5] [--no-write]

Reports median wall time per call and per image, and each dtype's cost relative to
float32 in the same run (ratios are what to compare across machines).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import machine_description, markdown_table, write_section  # noqa: E402
from stablemotion.core.flow import flow_to_color, mesh_to_flow, resize_flow, rigid_mesh, warp  # noqa: E402


def timeit(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--height", type=int, default=384)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--no-write", action="store_true", help="print only; do not update BENCHMARKS.md")
    args = parser.parse_args()
    b, h, w = args.batch, args.height, args.width
    g = torch.Generator().manual_seed(0)
    image = torch.rand(b, 3, h, w, generator=g)
    flow = torch.randn(b, 2, h, w, generator=g) * 10

    rows = []
    base = None
    for name, dt in (("float32", torch.float32), ("bfloat16", torch.bfloat16), ("float64", torch.float64)):
        img, fl = image.to(dt), flow.to(dt)
        t = timeit(lambda img=img, fl=fl: warp(img, fl, padding="border"), args.repeats)
        base = base or t
        rows.append([f"warp {name}", f"{b}x3x{h}x{w}", t * 1e3, t * 1e3 / b, f"{t / base:.2f}x"])
    t = timeit(lambda: warp(image, flow, check_finite=False), args.repeats)
    rows.append(["warp float32, check_finite=False", f"{b}x3x{h}x{w}", t * 1e3, t * 1e3 / b, f"{t / base:.2f}x"])

    rng = np.random.default_rng(0)
    mesh = rigid_mesh(6, 8, h, w) + rng.normal(0, 5, size=(7, 9, 2))
    t = timeit(lambda: mesh_to_flow(mesh, h, w), args.repeats)
    rows.append(["mesh_to_flow 6x8 mesh", f"1x2x{h}x{w}", t * 1e3, t * 1e3, "-"])
    small = flow[:, :, : h // 2, : w // 2].contiguous()
    t = timeit(lambda: resize_flow(small, (h, w)), args.repeats)
    rows.append(["resize_flow x2 bilinear", f"{b}x2x{h}x{w}", t * 1e3, t * 1e3 / b, "-"])
    one = flow[0].permute(1, 2, 0).numpy()
    t = timeit(lambda: flow_to_color(one), args.repeats)
    rows.append(["flow_to_color", f"{h}x{w}", t * 1e3, t * 1e3, "-"])

    table = markdown_table(["op", "shape", "ms / call", "ms / image", "vs warp float32"], rows)
    print(machine_description())
    print(table)
    if not args.no_write:
        body = (
            "Median of the repeats after one warm-up. The warp is memory-bound and negligible next to a "
            "UNet step (seconds on this CPU), so the float64 path used for float64 inputs costs nothing "
            "that matters.\n\n" + table
        )
        path = write_section("flow_ops", "Flow core ops (warp, mesh, resize, colours)", body)
        print(f"updated {path}")


if __name__ == "__main__":
    main()
