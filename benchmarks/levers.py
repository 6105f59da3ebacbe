"""The RSC and rotation levers, each measured on its own: objective (diffusion / end-to-end),
identity training, motion-model projection, (global context and a larger UNet when trained).

    python benchmarks/levers.py --num 32 --model "multi e2e (GPU 1 min + CPU)=runs/id_multi_e2e_cpu/pipeline"

Rows: the bundled models and every ``--model LABEL=FOLDER`` (a multi-task model serves both
tasks; a single-task one its own), each without and with ``flow_projection="motion_model"``
(the task's motion family fitted to the predicted flow). Raw model: gate off.

* **RSC**, the realistic held-out set of ``benchmarks/rsc_realistic.py`` (camera motion over
  tilted planes and street scenes, held-out photos, 96 x 128): EPE and its ratio to zero
  motion's (target <= 0.75), PSNR gain on the pixels the camera saw (target >= +1.0 dB), flow
  spread across inputs against the ground truth's (target within 2x).
* **Rotation**, held-out tilts of 2-15 degrees (``synth rotation``, straighten target, held-out
  photos): EPE and its ratio to no correction's (target <= 0.7), and the share of images whose
  angle, read from the flow by the rotation family's fit, is within 1 degree (target >= 80%).
* **A real tilted photo**: scikit-image's ``rocket`` (a launch tower: long verticals) rolled
  8 degrees (rendered without empty corners); the residual tilt of its near-vertical and
  near-horizontal lines (OpenCV Hough, length-weighted median, degrees) before and after.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gate  # noqa: E402
from _report import markdown_table, write_section  # noqa: E402
from rsc_realistic import masked_psnr, spread, test_set  # noqa: E402

SIZE = (96, 128)


def rotation_set(num: int, seed: int) -> list[dict]:
    from stablemotion.data.synth import make_sample, resolve_photos

    paths = [str(p) for p in resolve_photos("bundled-test")]
    out = []
    for i in range(num):
        s = make_sample("rotation", seed, i, SIZE, paths, min_angle=2.0, max_angle=15.0)
        out.append({"image": s.input, "gt": s.gt, "flow": s.flow, "angle": s.params["angle"]})
    return out


def line_tilt(image: np.ndarray) -> float:
    """Length-weighted median deviation (degrees) of the near-vertical and near-horizontal
    line segments of ``image`` (uint8 RGB) from the axes; signed (positive = counter-clockwise)."""
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    edges = cv2.Canny(grey, 60, 160)
    lines = cv2.HoughLinesP(edges, 1, np.pi / 720, threshold=40, minLineLength=min(grey.shape) // 5, maxLineGap=4)
    if lines is None:
        return float("nan")
    devs, weights = [], []
    for x1, y1, x2, y2 in np.asarray(lines).reshape(-1, 4).astype(float):
        ang = math.degrees(math.atan2(-(y2 - y1), x2 - x1))  # image y points down
        dev = (ang + 45.0) % 90.0 - 45.0  # deviation from the nearest axis
        if abs(dev) < 20:
            devs.append(dev)
            weights.append(math.hypot(x2 - x1, y2 - y1))
    if not devs:
        return float("nan")
    order = np.argsort(devs)
    cum = np.cumsum(np.asarray(weights)[order])
    return float(np.asarray(devs)[order][np.searchsorted(cum, cum[-1] / 2)])


def tilted_photo(angle: float, size: tuple[int, int] = (384, 512)) -> tuple[np.ndarray, np.ndarray]:
    """scikit-image's rocket, upright and rolled by ``angle`` degrees (no empty corners)."""
    from skimage import data

    from stablemotion.data.synthesis.rotation import make_rotation_sample

    photo = data.rocket()
    big = cv2.resize(photo, (photo.shape[1] * 2, photo.shape[0] * 2), interpolation=cv2.INTER_CUBIC)
    s = make_rotation_sample(big, np.random.default_rng(0), size, angle=angle, prefilter_sigma=0.0)
    return s.gt, s.input


def rsc_rows(label: str, pipe, task: str, samples: list[dict], zero_epe: float, ident_seen: float,
             gt_spread: float) -> list[dict]:
    rows = []
    for proj in ("none", "motion_model"):
        res = gate.run(pipe, task, samples, projection=proj)
        flows = [r["flow"] for r in res]
        epe = float(np.mean([np.linalg.norm(f - s["flow"], axis=-1).mean() for f, s in zip(flows, samples, strict=True)]))
        seen = float(np.mean([masked_psnr(r["image"], s["gt"], s["valid"]) for r, s in zip(res, samples, strict=True)]))
        rows.append({"model": label, "projection": proj, "epe": epe, "epe_ratio": epe / zero_epe,
                     "gain_seen": seen - ident_seen, "spread_ratio": spread(flows) / gt_spread})
        print(f"rsc      {label:40s} {proj:12s} EPE {epe:.2f} ({epe / zero_epe:.2f}x)  seen {seen - ident_seen:+.2f} dB  "
              f"spread {rows[-1]['spread_ratio']:.2f}x", flush=True)
    return rows


def rotation_rows(label: str, pipe, task: str, samples: list[dict], zero_epe: float) -> list[dict]:
    from stablemotion.core.motion_models import fit_motion_model

    rows = []
    for proj in ("none", "motion_model"):
        res = gate.run(pipe, task, samples, projection=proj)
        epe = float(np.mean([np.linalg.norm(r["flow"] - s["flow"], axis=-1).mean() for r, s in zip(res, samples, strict=True)]))
        est = [fit_motion_model(r["flow"], "rotation").derived["angle_deg"] for r in res]
        within = float(np.mean([abs(e - s["angle"]) <= 1.0 for e, s in zip(est, samples, strict=True)]))
        rows.append({"model": label, "projection": proj, "epe": epe, "epe_ratio": epe / zero_epe, "within_1deg": within,
                     "angle_error": float(np.mean([abs(e - s["angle"]) for e, s in zip(est, samples, strict=True)]))})
        print(f"rotation {label:40s} {proj:12s} EPE {epe:.2f} ({epe / zero_epe:.2f}x)  within 1 deg {within:.0%}  "
              f"mean |angle error| {rows[-1]['angle_error']:.2f}", flush=True)
    return rows


def real_photo_row(label: str, pipe, task: str, angle: float) -> dict:
    upright, tilted = tilted_photo(angle)
    out = pipe(tilted, generator=torch.Generator().manual_seed(0), output_type="np", show_progress_bar=False,
               correction_gate=0.0, flow_projection="motion_model", task=task if len(pipe.tasks) > 1 else None)
    image = (out.image[0] * 255.0).round().astype(np.uint8)
    from stablemotion.core.motion_models import fit_motion_model

    est = fit_motion_model(out.flow[0], "rotation").derived["angle_deg"]
    row = {"model": label, "upright": line_tilt(upright), "tilted": line_tilt(tilted), "output": line_tilt(image),
           "estimated": float(est), "angle": angle}
    print(f"real     {label:40s} line tilt: upright {row['upright']:+.2f}, tilted {row['tilted']:+.2f}, output "
          f"{row['output']:+.2f} deg; estimated roll {est:+.2f} (true {angle:+.1f})", flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--num", type=int, default=32)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--model", action="append", default=[], metavar="LABEL=FOLDER")
    ap.add_argument("--angle", type=float, default=8.0, help="roll of the real photo, degrees")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--note", default="")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from stablemotion.model import bundled_model_path, load_pipeline

    t0 = time.perf_counter()
    models = [("bundled rsc mini (e2e, identity samples)", str(bundled_model_path("rsc"))),
              ("bundled multi mini (diffusion, blend rotation)", str(bundled_model_path("rotation")))]
    models += [tuple(m.split("=", 1)) for m in args.model]
    rsc = test_set(args.num, SIZE, args.seed, "bundled-test", 0.25, 0.1)
    zero_rsc = float(np.mean([np.linalg.norm(s["flow"], axis=-1).mean() for s in rsc]))
    ident_seen = float(np.mean([masked_psnr(s["image"], s["gt"], s["valid"]) for s in rsc]))
    gt_spread = spread([s["flow"] for s in rsc])
    rot = rotation_set(args.num, args.seed)
    zero_rot = float(np.mean([np.linalg.norm(s["flow"], axis=-1).mean() for s in rot]))
    rsc_table, rot_table, real = [], [], []
    for label, folder in models:
        pipe = load_pipeline(folder, torch.float32, progress=False)
        if "rsc" in pipe.tasks:
            rsc_table += rsc_rows(label, pipe, "rsc", rsc, zero_rsc, ident_seen, gt_spread)
        if "rotation" in pipe.tasks:
            rot_table += rotation_rows(label, pipe, "rotation", rot, zero_rot)
            real.append(real_photo_row(label, pipe, "rotation", args.angle))
    print(f"{time.perf_counter() - t0:.0f} s")
    if args.json:
        args.json.write_text(json.dumps({"rsc": rsc_table, "rotation": rot_table, "real": real}, indent=1))
    if args.no_write:
        return
    body = (
        f"Raw models (gate off), {args.num} held-out samples per task at {SIZE[0]}x{SIZE[1]}.\n\n"
        f"**RSC** (realistic camera motion, mean |gt flow| {zero_rsc:.2f} px; targets: EPE ratio <= 0.75, "
        "gain on seen pixels >= +1.0 dB, spread ratio within 0.5-2):\n\n"
        + markdown_table(["model", "projection", "EPE (px)", "EPE / zero motion's", "gain, seen pixels (dB)",
                          "spread / gt's"],
                         [[r["model"], r["projection"], f"{r['epe']:.2f}", f"{r['epe_ratio']:.2f}",
                           f"{r['gain_seen']:+.2f}", f"{r['spread_ratio']:.2f}"] for r in rsc_table])
        + f"\n\n**Rotation** (tilts 2-15 degrees, straighten target, mean |gt flow| {zero_rot:.2f} px; targets: EPE "
        "ratio <= 0.7, angle within 1 degree >= 80%):\n\n"
        + markdown_table(["model", "projection", "EPE (px)", "EPE / no correction's", "angle within 1 deg",
                          "mean angle error (deg)"],
                         [[r["model"], r["projection"], f"{r['epe']:.2f}", f"{r['epe_ratio']:.2f}",
                           f"{r['within_1deg']:.0%}", f"{r['angle_error']:.2f}"] for r in rot_table])
        + f"\n\n**A real photo rolled {args.angle:g} degrees** (scikit-image's rocket, 384x512, projection on; line "
        "tilt = length-weighted median deviation of near-axis Hough lines; target: output within 1 degree):\n\n"
        + markdown_table(["model", "upright photo (deg)", "tilted input (deg)", "output (deg)", "estimated roll (deg)"],
                         [[r["model"], f"{r['upright']:+.2f}", f"{r['tilted']:+.2f}", f"{r['output']:+.2f}",
                           f"{r['estimated']:+.2f}"] for r in real])
        + (f"\n\n{args.note}" if args.note else "")
    )
    write_section("levers", "RSC and rotation levers (objective, identity, projection)", body)


if __name__ == "__main__":
    main()
