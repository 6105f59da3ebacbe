"""Throughput of ``stablemotion rectify``: the local engine against Ray with 1 and 2 CPU actors, same images, one run.

Each configuration rectifies the same N images (smooth random textures, bundled stablemotion-mini-rsc model,
fp32, seed 0) into its own folder through the command line (``stablemotion.cli.main``), timed from the
command's start to its end; the Ray cluster is started once before (``ray.init(num_cpus=CPUs)``: its
start-up is reported apart, a long run pays it once). The local engine runs with 1 thread and with all
threads; each Ray actor runs torch on 1 thread. Ray's per-image overhead is (Ray 1 actor - local
1 thread) / N: what the decode tasks, object store and actor hops add to an image on the same compute.
Every file of every configuration is compared byte for byte with the local 1-thread run.

    python benchmarks/throughput.py            # 200 images of 96x128, writes BENCHMARKS.md "throughput"
    python benchmarks/throughput.py --images 20 --no-write
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import markdown_table, write_section  # noqa: E402


def _images(folder: Path, n: int, size: tuple[int, int]) -> None:
    import cv2

    from stablemotion.io.images import save_image

    rng = np.random.default_rng(0)
    for i in range(n):
        small = rng.integers(0, 256, (size[0] // 8, size[1] // 8, 3), dtype=np.uint8)
        save_image(cv2.resize(small, (size[1], size[0]), interpolation=cv2.INTER_CUBIC), folder / f"im{i:04d}.png")


def _rectify(inputs: Path, out: Path, extra: list[str]) -> float:
    from stablemotion.cli import main

    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        code = main(["rectify", str(inputs), "--task", "rsc", "--out", str(out), "--dtype", "fp32", *extra])
    seconds = time.perf_counter() - t0
    if code != 0:
        raise SystemExit(f"rectify {' '.join(extra)} exited {code}")
    return seconds


def _differing(a: Path, b: Path) -> int:
    """Files of ``a`` missing from ``b`` or with other bytes."""
    names = [p.name for p in a.iterdir() if not p.name.startswith(".")]
    return sum(not (b / n).is_file() or (a / n).read_bytes() != (b / n).read_bytes() for n in names)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--size", type=int, nargs=2, default=(96, 128), metavar=("H", "W"))
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    args = parser.parse_args()

    import ray
    import torch

    cpus = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        _images(root / "in", args.images, tuple(args.size))
        t0 = time.perf_counter()
        ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False, logging_level="warning")
        start_up = time.perf_counter() - t0
        configs = [("local engine, 1 thread", 1, []), (f"local engine, {cpus} threads", cpus, []),
                   ("Ray, 1 CPU actor (1 thread)", 1, ["--engine", "ray", "--actors", "1"]),
                   ("Ray, 2 CPU actors (1 thread each)", 1, ["--engine", "ray", "--actors", "2"])]
        rows, wall = [], {}
        try:
            for i, (name, threads, extra) in enumerate(configs):
                torch.set_num_threads(threads)
                out = root / f"out{i}"
                wall[name] = _rectify(root / "in", out, extra)
                rows.append([name, round(wall[name], 1), round(args.images / wall[name], 2),
                             _differing(root / "out0", out) if i else 0])
                print(rows[-1], flush=True)
        finally:
            ray.shutdown()
    local1, local_all = wall[configs[0][0]], wall[configs[1][0]]
    ray1, ray2 = wall[configs[2][0]], wall[configs[3][0]]
    overhead = (ray1 - local1) / args.images
    ratio = local_all / ray2
    table = markdown_table(["configuration", "wall s", "images/s", "files differing from local 1 thread"], rows)
    body = (f"{args.images} images of {args.size[0]}x{args.size[1]} px, bundled stablemotion-mini-rsc, fp32, "
            f"`stablemotion rectify --task rsc` (default correction gate), each configuration into its own folder.\n\n"
            f"{table}\n\nRay cluster start-up (`ray.init`, paid once per run, not in the rows): {start_up:.1f} s. "
            f"Ray's overhead per image (1 actor against the local engine on 1 thread): {overhead * 1000:.0f} ms "
            f"(actor start and model load included, spread over {args.images} images). "
            f"Ray with 2 actors reaches {ratio:.0%} of the local engine's throughput on all {cpus} threads "
            f"(target: within 15%, i.e. at least 85%): "
            f"{'met' if ratio >= 0.85 else 'missed'}. The machine is shared with other work while it runs, so "
            "single runs vary by several percent.")
    print(body)
    if not args.no_write:
        write_section("throughput", "Throughput: local engine against Ray actors", body)


if __name__ == "__main__":
    main()
