"""Pseudo-flow labelling quality and speed on synthetic pairs with exact flows.

Generates ``--num`` synthetic rectangling pairs (DIR-D size, 384 x 512) and ``--num``
rolling-shutter pairs (256 x 256, the RSC network size) with :mod:`stablemotion.data.synth`,
labels them with :func:`stablemotion.data.labelling.estimate_flow` in ``--workers`` processes
(as ``stablemotion label-flows`` does), and reports:

* end-point error (EPE) of the pseudo flow against the exact flow, pixels (mean over the
  pixels where the exact flow is defined; per-image mean, median and 95th percentile);
* warp PSNR (uint8, data range 255) of ``warp(input, flow)`` against the target for the
  identity (no warp), the pseudo flow and the exact flow; whole image for rectangling,
  the region the RS camera saw for rolling shutter;
* throughput in images per second (labelling only, wall clock, all workers).

Results go to the ``labelling`` section of BENCHMARKS.md (``--no-write`` to skip).

    python benchmarks/labelling.py            # 100 + 100 pairs, 2 workers
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import markdown_table, write_section  # noqa: E402
from stablemotion.data.labelling import LabelConfig, estimate_flow, warp_numpy  # noqa: E402
from stablemotion.data.synth import make_sample, pool_context  # noqa: E402

SEED = 2024
# Filled before the worker pool forks, so the workers see the samples without pickling.
_SAMPLES: list[dict[str, np.ndarray | None]] = []


def _make(task: str, index: int, size: tuple[int, int]) -> dict[str, np.ndarray | None]:
    s = make_sample(task, SEED, index, size)
    if task == "rectangling":
        return {"input": s.input, "gt": s.gt, "mask": s.mask, "flow": s.flow, "valid": np.ones(size, bool)}
    return {"input": s.rs, "gt": s.gs, "mask": None, "flow": s.flow, "valid": s.valid}


def _make_job(args: tuple[str, int, tuple[int, int]]) -> dict[str, np.ndarray | None]:
    return _make(*args)


def _label(index: int) -> tuple[int, np.ndarray, str, float]:
    s = _SAMPLES[index]
    start = time.perf_counter()
    res = estimate_flow(s["input"], s["gt"], s["mask"], LabelConfig())  # type: ignore[arg-type]
    return index, res.flow, res.method, time.perf_counter() - start


def _init() -> None:
    torch.set_num_threads(1)
    cv2.setNumThreads(1)


def _masked_psnr(a: np.ndarray, b: np.ndarray, valid: np.ndarray) -> float:
    diff = (a.astype(np.float64) - b.astype(np.float64)) ** 2
    mse = diff[valid].mean()
    return math.inf if mse == 0 else 10.0 * math.log10(255.0**2 / mse)


def run_task(task: str, num: int, size: tuple[int, int], workers: int) -> dict[str, float]:
    global _SAMPLES
    ctx = pool_context()
    jobs = [(task, i, size) for i in range(num)]
    with ctx.Pool(workers, initializer=_init) as pool:
        _SAMPLES = pool.map(_make_job, jobs, chunksize=4)
    start = time.perf_counter()
    with ctx.Pool(workers, initializer=_init) as pool:
        results = list(pool.imap_unordered(_label, range(num), chunksize=1))
    wall = time.perf_counter() - start
    epes, ps_id, ps_pseudo, ps_exact, mags, lat = [], [], [], [], [], []
    dense = 0
    for index, flow, method, seconds in results:
        s = _SAMPLES[index]
        valid = s["valid"]
        truth = s["flow"]
        epes.append(float(np.linalg.norm(flow - truth, axis=-1)[valid].mean()))
        mags.append(float(np.linalg.norm(truth, axis=-1)[valid].mean()))
        ps_id.append(_masked_psnr(s["input"], s["gt"], valid))
        ps_pseudo.append(_masked_psnr(warp_numpy(s["input"], flow), s["gt"], valid))
        ps_exact.append(_masked_psnr(warp_numpy(s["input"], truth), s["gt"], valid))
        dense += method == "dense"
        lat.append(seconds)
    e = np.array(epes)
    return {
        "num": num, "size": f"{size[1]}x{size[0]}", "flow_mag": float(np.mean(mags)),
        "epe_mean": float(e.mean()), "epe_median": float(np.median(e)), "epe_p95": float(np.percentile(e, 95)),
        "psnr_identity": float(np.mean(ps_id)), "psnr_pseudo": float(np.mean(ps_pseudo)),
        "psnr_exact": float(np.mean(ps_exact)), "dense": dense,
        "ips": num / wall, "latency": float(np.mean(lat)), "workers": workers,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num", type=int, default=100, help="pairs per task (default 100)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = parser.parse_args(argv)

    rows, stats, loads = [], {}, [os.getloadavg()[0]]
    for task, label, size in (("rectangling", "rectangling (SIR)", (384, 512)),
                              ("rolling_shutter", "rolling shutter (RSC)", (256, 256))):
        t0 = time.perf_counter()
        r = run_task(task, args.num, size, args.workers)
        stats[task] = r
        loads.append(os.getloadavg()[0])
        print(f"{label}: {r} ({time.perf_counter() - t0:.0f} s)", flush=True)
        rows.append([
            label, r["num"], r["size"], f"{r['flow_mag']:.2f}", f"{r['epe_mean']:.3f}", f"{r['epe_median']:.3f}",
            f"{r['epe_p95']:.3f}", f"{r['psnr_identity']:.2f}", f"{r['psnr_pseudo']:.2f}", f"{r['psnr_exact']:.2f}",
            f"{r['dense']}/{r['num']}", f"{r['ips']:.2f}", f"{r['latency']:.2f}",
        ])
    table = markdown_table(
        ["task", "pairs", "W x H", "mean exact flow (px)", "EPE mean (px)", "EPE median (px)", "EPE p95 (px)",
         "PSNR identity (dB)", "PSNR pseudo flow (dB)", "PSNR exact flow (dB)", "polished chosen",
         f"images/s ({args.workers} proc.)", "s/image/proc."],
        rows,
    )
    body = (
        "Pseudo-flow labelling (`stablemotion label-flows`, default `LabelConfig`: DIS medium, "
        "mesh fits with 96 px then 32 px cells, polishing sigma 3 px) on synthetic pairs from "
        "`stablemotion.data.synth` whose exact flow is known (bundled scikit-image photos, seed "
        f"{SEED}). EPE is the per-image mean end-point error against the exact flow over the "
        "pixels where it is defined, summarised over images. PSNR is uint8, data range 255, of "
        "`warp(input, flow)` against the target: the whole image for rectangling, the region the "
        "rolling-shutter camera saw for RSC. \"PSNR exact flow\" is the ceiling set by bilinear "
        "re-sampling. Throughput counts the labelling only (no file I/O), wall clock over all "
        "worker processes; s/image/proc. is the mean time of one image in one process. "
        f"1-minute load average at the start/after each task: {', '.join(f'{x:.1f}' for x in loads)} "
        "(a load above the core count means other jobs shared the CPU and the speed is understated).\n\n"
        + table
    )
    if not args.no_write:
        path = write_section("labelling", "Pseudo-flow labelling (benchmarks/labelling.py)", body)
        print(f"wrote the labelling section of {path}")
    else:
        print(body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
