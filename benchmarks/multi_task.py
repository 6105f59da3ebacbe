"""One model for four tasks against one model per task, on held-out synthetic test sets.

    python benchmarks/multi_task.py [--multi runs/mini_multi/pipeline] [--single 'runs/single_{task}/pipeline']

Models (all the stablemotion-mini architecture, 4 M parameters, 1 step, their own defaults):

* multi-task -- ``configs/mini_multi.yaml``: one UNet with a learned prompt per task, trained
  round-robin on the four tasks (default: the bundled ``stablemotion-mini-multi`` when it
  exists, else ``runs/mini_multi/pipeline``);
* single-task -- ``configs/mini_single.yaml`` per task: the same start, data, batch and
  schedule with a quarter of the steps, so each sees as many batches of its task as the
  multi-task model (``--single``, a folder pattern with ``{task}``);
* the bundled single-task minis where there is one (``sir``, ``rsc``; longer, other budgets).

Test sets, made in memory exactly as ``configs/mini_data.sh`` writes the test splits (seed 1,
96 x 128, photos never used in training; PNG-exact, where the disk copies are JPEG): SIR with
panorama-shaped borders on ``debian-test+bundled-test`` (``bundled-test`` alone when the photo
pool is not installed), RSC (planar motion), rotation and lens on ``bundled-test``. PSNR/SSIM
of the output against the ground truth (uint8, whole frame), gain over the identity, and the
flow's mean end-point error against the exact synthetic flow. The target: the multi-task model
within 0.5 dB of the single-task one on every task.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import write_section  # noqa: E402
from mini_models import quality_table, run_pipeline, score  # noqa: E402

TASKS = ("sir", "rsc", "rotation", "lens")
TOLERANCE_DB = 0.5


def pool_photos() -> str:
    """Held-out real photos: the Debian pool's test split with the bundled ones when the pool is
    installed (configs/install_photos.sh), else the bundled test photos."""
    from stablemotion.data.synth import resolve_photos

    try:
        resolve_photos("debian-test")
        return "debian-test+bundled-test"
    except (ValueError, FileNotFoundError, KeyError):
        return "bundled-test"


def test_set(task: str, num: int, size: tuple[int, int], seed: int) -> tuple[list[dict[str, np.ndarray]], str]:
    """``num`` held-out samples of ``task`` -> (samples, photo sources used)."""
    from stablemotion.data.synth import make_sample, resolve_photos

    photos, options = "bundled-test", {}
    if task == "sir":
        options = {"style": "panorama", "white_fraction": 0.3}
        photos = pool_photos()
    paths = [str(p) for p in resolve_photos(photos)]
    out = []
    for i in range(num):
        s = make_sample(task, seed, i, size, paths, **options)
        if task == "sir":
            out.append({"image": s.input, "mask": s.mask, "gt": s.gt, "flow": s.flow})
        elif task == "rsc":
            out.append({"image": s.rs, "gt": s.gs, "flow": s.flow})
        else:
            out.append({"image": s.input, "gt": s.gt, "flow": s.flow})
    return out, photos


def opencv_lens_set(num: int, size: tuple[int, int], seed: int, photos: str) -> list[dict[str, np.ndarray]]:
    """Barrel distortion as OpenCV models a real lens (Brown-Conrady polynomial, ``k1`` in
    [-0.4, -0.15], ``k2 = 0.1 k1^2``, focal length = the image width), not our generator's
    division model, on held-out photos at ``size``. The gt is the rectilinear scene scaled to
    fill the frame (the lens task's convention); the flow ``gt(p) = input(p + flow(p))`` is exact.
    """
    import cv2

    from stablemotion.data.synth import resolve_photos
    from stablemotion.io.images import load_image

    h, w = size
    c = np.array([(w - 1) / 2.0, (h - 1) / 2.0])
    f = float(w)
    rng = np.random.default_rng(seed)
    paths = [str(p) for p in resolve_photos(photos)]
    out = []
    for i in range(num):
        k1 = rng.uniform(-0.4, -0.15)
        coeffs = np.array([k1, 0.1 * k1 * k1, 0.0, 0.0, 0.0])
        cam = np.array([[f, 0, c[0]], [0, f, c[1]], [0, 0, 1]])

        def distort(u: np.ndarray, k: np.ndarray = coeffs) -> np.ndarray:  # rectilinear -> distorted pixels
            v = (u - c) / f
            r2 = (v**2).sum(-1, keepdims=True)
            return c + f * v * (1 + k[0] * r2 + k[1] * r2 * r2)

        qs = np.stack(np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64)), -1)
        und = cv2.undistortPoints(qs.reshape(-1, 1, 2), cam, coeffs, P=cam).reshape(h, w, 2)  # U(q)
        reach = np.abs(und - c).max(axis=(0, 1)) + 2.0  # half extent of the scene the input sees
        photo = load_image(paths[i % len(paths)], mode="RGB")
        sh, sw = int(np.ceil(2 * reach[1])) + 1, int(np.ceil(2 * reach[0])) + 1
        scale = max(sh / photo.shape[0], sw / photo.shape[1])
        big = cv2.resize(photo, (int(np.ceil(photo.shape[1] * scale)), int(np.ceil(photo.shape[0] * scale))),
                         interpolation=cv2.INTER_AREA)
        origin = np.array([(big.shape[1] - 1) / 2.0, (big.shape[0] - 1) / 2.0]) - c  # scene pixel of frame pixel 0

        def sample(points: np.ndarray, big: np.ndarray = big, origin: np.ndarray = origin) -> np.ndarray:
            m = (points + origin).astype(np.float32)
            return cv2.remap(big, m[..., 0], m[..., 1], cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)

        image = sample(und)
        edge = np.concatenate([qs[0], qs[-1], qs[:, 0], qs[:, -1]]) - c
        lo, hi = 0.05, 2.0
        for _ in range(40):  # the largest fill scale whose frame stays inside the distorted image
            mid = 0.5 * (lo + hi)
            q = distort(c + mid * edge)
            ok = (q[:, 0] >= 0).all() and (q[:, 0] <= w - 1).all() and (q[:, 1] >= 0).all() and (q[:, 1] <= h - 1).all()
            lo, hi = (mid, hi) if ok else (lo, mid)
        rect = c + lo * (qs - c)
        gt = sample(rect)
        flow = (distort(rect) - qs).astype(np.float32)
        out.append({"image": image, "gt": gt, "flow": flow})
    return out


def score_models(label: str, task: str, samples: list[dict[str, np.ndarray]],
                 models: list[tuple[str, object]]) -> list[dict]:
    """Score rows for the identity and each ``(name, pipeline)`` on ``samples`` of ``task`` (one
    step; a multi-task pipeline runs ``task``); ``label`` is the rows' task column."""
    results = [("identity", ([s["image"] for s in samples], [np.zeros_like(s["flow"]) for s in samples]))]
    for name, pipe in models:
        pipe.set_progress_bar_config(disable=True)
        results.append((name, run_pipeline(pipe, samples, 1, 1, task=task if len(pipe.tasks) > 1 else None)))
    rows, ident = [], None
    for name, (preds, flows) in results:
        p, s, e = score(preds, flows, samples)
        ident = p if ident is None else ident
        rows.append({"task": label, "method": name, "psnr": p, "ssim": s, "gain_db": p - ident, "epe": e})
        print(f"{label:14s} {name:56s} PSNR {p:6.2f} ({p - ident:+5.2f})  SSIM {s:.4f}  EPE {e:.2f}", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--multi", default=None, help="multi-task pipeline folder (default: bundled, else runs/mini_multi)")
    ap.add_argument("--single", default="runs/single_{task}/pipeline",
                    help="single-task pipeline folders, '{task}' replaced by the task name")
    ap.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    ap.add_argument("--num", type=int, default=64, help="test samples per task (default 64)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--opencv-lens", type=int, default=32,
                    help="also score lens correction on this many held-out photos at 384x512 distorted by OpenCV's "
                         "polynomial lens model (0: skip)")
    ap.add_argument("--opencv-size", default="384x512", help="HxW of the OpenCV lens samples")
    ap.add_argument("--note", default="", help="a line added under the tables")
    ap.add_argument("--section", default="multi_task", help="BENCHMARKS.md section to (re)write")
    ap.add_argument("--title", default="Multi-task mini: one model for four tasks vs one model per task")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows here")
    ap.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from stablemotion.model import load_pipeline
    from stablemotion.model.catalog import (
        BUNDLED_MODELS,
        BUNDLED_MULTI_TASK,
        bundled_model_path,
        bundled_multi_task_path,
    )

    bundled_multi = bundled_multi_task_path() if args.multi is None else None
    multi_dir = args.multi or str(bundled_multi or "runs/mini_multi/pipeline")
    multi_label = f"multi-task (bundled {BUNDLED_MULTI_TASK})" if bundled_multi else f"multi-task ({multi_dir})"
    multi = load_pipeline(multi_dir, torch.float32, progress=False)
    size = (96, 128)
    rows, sources = [], {}
    singles = {}  # task -> its single-task pipeline, loaded once
    for task in args.tasks:
        t0 = time.perf_counter()
        samples, sources[task] = test_set(task, args.num, size, args.seed)
        models = []
        single_dir = Path(args.single.format(task=task))
        if (single_dir / "model_index.json").is_file():
            singles[task] = load_pipeline(single_dir, torch.float32, progress=False)
            models.append((f"single-task ({single_dir})", singles[task]))
        bundled_single = BUNDLED_MODELS.get(task)
        if bundled_single is not None and bundled_single != BUNDLED_MULTI_TASK:
            models.append((f"bundled {bundled_single}", load_pipeline(bundled_model_path(task), torch.float32,
                                                                   progress=False)))
        models.append((multi_label, multi))
        rows += score_models(task, task, samples, models)
        print(f"{task}: {time.perf_counter() - t0:.0f} s", flush=True)
    cv_rows = []
    cv_note = ""
    if args.opencv_lens and "lens" in args.tasks:
        cv_size = tuple(int(v) for v in args.opencv_size.lower().split("x"))
        photos = pool_photos()
        samples = opencv_lens_set(args.opencv_lens, cv_size, args.seed, photos)
        models = [(f"single-task ({args.single.format(task='lens')})", singles["lens"])] if "lens" in singles else []
        cv_rows = score_models("lens (OpenCV)", "lens", samples, models + [(multi_label, multi)])
        cv_note = (f"\n\nLens correction on distortion our generator did not make: {args.opencv_lens} held-out photos "
                   f"({photos}) at {cv_size[0]}x{cv_size[1]} (the models run at 96x128 and their flow is upsampled), "
                   "barrel-distorted with OpenCV's polynomial lens model (`cv2.undistortPoints`; k1 in [-0.4, -0.15], "
                   "k2 = 0.1 k1^2, focal length = width); the gt is the rectilinear scene scaled to fill the frame.\n\n"
                   + quality_table(cv_rows, method="model"))
    if args.json:
        args.json.write_text(json.dumps(rows + cv_rows, indent=1))
    verdicts = []
    for task in args.tasks:
        by = {r["method"].split(" (")[0]: r for r in rows if r["task"] == task}
        if "single-task" in by and "multi-task" in by:
            d = by["multi-task"]["psnr"] - by["single-task"]["psnr"]
            de = by["multi-task"]["epe"] - by["single-task"]["epe"]
            ok = d >= -TOLERANCE_DB
            verdicts.append(f"- {task}: multi-task {d:+.2f} dB, EPE {de:+.2f} px against single-task "
                            f"(target >= -{TOLERANCE_DB} dB: {'met' if ok else 'missed'})")
    if args.no_write:
        print("\n".join(verdicts))
        return
    body = (
        f"Held-out synthetic test sets: {args.num} samples per task at {size[0]}x{size[1]}, seed {args.seed}, "
        f"photos never used in training ({'; '.join(f'{t}: {p}' for t, p in sources.items())}); SIR borders shaped as "
        "stitching software makes panoramas, RSC planar motion, rotation 1-12 degrees, lens division-model "
        "strengths. One step, each model's own defaults (mesh regularisation). PSNR/SSIM against the ground truth "
        "(uint8, whole frame), gain = PSNR minus the identity's, EPE = mean end-point error of the flow against the "
        "exact synthetic flow (px).\n\n"
        + quality_table(rows, method="model")
        + "\n\nTarget (the multi-task model within 0.5 dB of the single-task model of the same size and budget):\n\n"
        + "\n".join(verdicts)
        + cv_note
        + "\n\nThe automatic task choice that picks the task for `rectify --task auto` is measured in the section "
        "\"Automatic task choice\"."
        + (f"\n\n{args.note}" if args.note else "")
    )
    write_section(args.section, args.title, body)


if __name__ == "__main__":
    main()
