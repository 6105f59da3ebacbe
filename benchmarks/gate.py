"""The correction gate and the motion-model projection of the bundled models ("do no harm").

For each task (sir, rsc, rotation, lens; the bundled model that serves it: ``stablemotion-mini-sir``,
``-rsc``, ``-multi``) it runs the pipeline on two held-out groups at 96 x 128:

* **distorted**: synthetic samples of the task on photos never used in training
  (``bundled-test``; SIR with panorama-shaped borders, RSC with camera motion);
* **undistorted**: ordinary photos that need no correction (``bundled-test`` crops and
  scikit-image's sample photos); their gt is the photo itself. SIR derives their mask as
  ``rectify`` does: no empty border, so the service returns them unchanged before the model
  runs (gate on or off).

One pipeline call per image (gate off, ``correction_gate=0``) gives the output and the gate's
confidence; the gate at the threshold (default 0.5, the CLI's and the app's) keeps the output
where the confidence reaches it and returns the input otherwise, exactly what
``correction_gate=0.5`` returns for the same noise. It reports per group the share corrected and
left unchanged, PSNR (output vs gt, dB, capped at 60) with the gate off and on against the
input's, and on the distorted group the flow's EPE (px, all pixels) without and with
``flow_projection="motion_model"`` (a second call). Rerun after retraining the bundled weights.

    python benchmarks/gate.py --num 12
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import markdown_table, write_section  # noqa: E402

TASKS = ("sir", "rsc", "rotation", "lens")
SIZE = (96, 128)
PSNR_CAP = 60.0


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR of two uint8 images, dB, capped at :data:`PSNR_CAP` (identical images)."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return PSNR_CAP if mse <= 0 else min(PSNR_CAP, 10.0 * np.log10(255.0**2 / mse))


def distorted_set(task: str, num: int, seed: int) -> list[dict[str, np.ndarray]]:
    """``num`` held-out synthetic samples of ``task``: image, gt, flow (and SIR's mask)."""
    from stablemotion.data.synth import make_sample, resolve_photos

    options = {"sir": {"style": "panorama"}, "rsc": {"motion_model": "camera"}}.get(task, {})
    paths = [str(p) for p in resolve_photos("bundled-test")]
    out = []
    for i in range(num):
        s = make_sample(task, seed, i, SIZE, paths, **options)
        if task == "rsc":
            out.append({"image": s.rs, "gt": s.gs, "flow": s.flow})
        elif task == "sir":
            out.append({"image": s.input, "gt": s.gt, "flow": s.flow, "mask": s.mask})
        else:
            out.append({"image": s.input, "gt": s.gt, "flow": s.flow})
    return out


def undistorted_set(num: int, seed: int, size: tuple[int, int] = SIZE) -> list[dict[str, np.ndarray]]:
    """``num`` ordinary photos at ``size`` (H, W): held-out photo crops and scikit-image's photos."""
    import cv2
    from skimage import data

    from stablemotion.data.synth import resolve_photos
    from stablemotion.io.images import load_image

    photos = [getattr(data, n)() for n in ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry")]
    photos += [load_image(p, mode="RGB") for p in resolve_photos("bundled-test")]
    rng = np.random.default_rng(seed)
    out = []
    for i in range(num):
        photo = photos[i % len(photos)]
        if photo.ndim == 2:
            photo = np.repeat(photo[..., None], 3, -1)
        h, w = photo.shape[:2]
        scale = max(size[0] / h, size[1] / w) * rng.uniform(1.0, 1.6)
        big = cv2.resize(photo[..., :3], (max(size[1], round(w * scale)), max(size[0], round(h * scale))),
                         interpolation=cv2.INTER_AREA)
        y = int(rng.integers(0, big.shape[0] - size[0] + 1))
        x = int(rng.integers(0, big.shape[1] - size[1] + 1))
        crop = np.ascontiguousarray(big[y:y + size[0], x:x + size[1]])
        out.append({"image": crop, "gt": crop, "flow": np.zeros((*size, 2), np.float32),
                    "mask": np.full(size, 255, np.uint8)})
    return out


def run(pipe, task: str, samples: list[dict[str, np.ndarray]], projection: str = "none",
        derive_mask: bool = False) -> list[dict]:
    """The pipeline (gate off) on each sample, seeded by its index -> output, flow, confidence.

    ``derive_mask`` (SIR): the mask rule of ``rectify`` (:func:`stablemotion.model.service.prepare_request`);
    an image it leaves unchanged is its own output (confidence -1: never corrected)."""
    from stablemotion.model.service import prepare_request, unchanged_reason

    multi = len(pipe.tasks) > 1
    res = []
    for i, s in enumerate(samples):
        mask = s.get("mask") if task == "sir" else None
        if task == "sir" and derive_mask:
            request = prepare_request(s["image"], None, task="sir")
            if unchanged_reason(request):
                res.append({"image": s["image"], "flow": np.zeros((*s["image"].shape[:2], 2), np.float32),
                            "confidence": -1.0})
                continue
            mask = request.mask
        out = pipe(s["image"], mask=None if mask is None else mask.astype(np.float32) / 255.0,
                   generator=torch.Generator().manual_seed(i), output_type="np", show_progress_bar=False,
                   correction_gate=0.0, flow_projection=projection, task=task if multi else None)
        res.append({"image": (out.image[0] * 255.0).round().astype(np.uint8), "flow": out.flow[0],
                    "confidence": float(out.confidence[0])})
    return res


def summarise(task: str, group: str, samples: list[dict], results: list[dict], threshold: float,
              projected: list[dict] | None) -> dict:
    corrected = [r["confidence"] >= threshold for r in results]
    ruled_out = [r["confidence"] < 0 for r in results]  # SIR's mask rule: unchanged whatever the gate
    p_in = [psnr(s["image"], s["gt"]) for s in samples]
    p_off = [psnr(r["image"], s["gt"]) for r, s in zip(results, samples, strict=True)]
    results = [{**r, "confidence": max(r["confidence"], 0.0)} for r in results]
    p_on = [po if c else pi for po, pi, c in zip(p_off, p_in, corrected, strict=True)]
    row = {"task": task, "group": group, "n": len(samples), "corrected": float(np.mean(corrected)),
           "ruled_out": float(np.mean(ruled_out)),
           "confidence": float(np.mean([r["confidence"] for r in results])), "psnr_in": float(np.mean(p_in)),
           "psnr_off": float(np.mean(p_off)), "psnr_on": float(np.mean(p_on))}
    if projected is not None:
        row["epe"] = float(np.mean([np.linalg.norm(r["flow"] - s["flow"], axis=-1).mean()
                                    for r, s in zip(results, samples, strict=True)]))
        row["epe_proj"] = float(np.mean([np.linalg.norm(r["flow"] - s["flow"], axis=-1).mean()
                                         for r, s in zip(projected, samples, strict=True)]))
    print(f"{task:9s} {group:12s} corrected {row['corrected']:4.0%}  conf {row['confidence']:.2f}  PSNR in "
          f"{row['psnr_in']:5.2f} off {row['psnr_off']:5.2f} on {row['psnr_on']:5.2f}"
          + (f"  EPE {row['epe']:.2f} -> {row['epe_proj']:.2f} projected" if projected is not None else ""), flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--num", type=int, default=12, help="images per task and group (default 12)")
    ap.add_argument("--seed", type=int, default=7000, help="held-out sample seed (default 7000)")
    ap.add_argument("--threshold", type=float, default=None, help="gate threshold (default: the CLI's, 0.5)")
    ap.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    ap.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = ap.parse_args()
    torch.manual_seed(0)

    from stablemotion.core.constants import DEFAULT_CORRECTION_GATE
    from stablemotion.model import load_pipeline
    from stablemotion.model.catalog import BUNDLED_MODELS, bundled_model_path

    threshold = DEFAULT_CORRECTION_GATE if args.threshold is None else args.threshold
    plain = undistorted_set(args.num, args.seed)
    rows, loaded = [], {}
    for task in args.tasks:
        name = BUNDLED_MODELS[task]
        if name not in loaded:
            loaded[name] = load_pipeline(bundled_model_path(task), torch.float32, progress=False)
        pipe = loaded[name]
        samples = distorted_set(task, args.num, args.seed)
        res = run(pipe, task, samples)
        proj = run(pipe, task, samples, "motion_model")
        rows.append({**summarise(task, "distorted", samples, res, threshold, proj), "model": name})
        rows.append({**summarise(task, "undistorted", plain, run(pipe, task, plain, derive_mask=True), threshold,
                                 None), "model": name})

    table = markdown_table(
        ["task", "model", "group", "images", "corrected", "left unchanged", "mean confidence", "PSNR input",
         "PSNR gate off", "PSNR gate on", "EPE", "EPE projected"],
        [[r["task"], r["model"], r["group"], r["n"], f"{r['corrected']:.0%}", f"{1 - r['corrected']:.0%}",
          f"{r['confidence']:.2f}" + (f" ({r['ruled_out']:.0%} no border)" if r["ruled_out"] else ""),
         f"{r['psnr_in']:.2f}", f"{r['psnr_off']:.2f}", f"{r['psnr_on']:.2f}",
          f"{r['epe']:.2f}" if "epe" in r else "-", f"{r['epe_proj']:.2f}" if "epe_proj" in r else "-"]
         for r in rows])
    body = (
        f"The correction gate at threshold {threshold:g} (the default of `stablemotion rectify` and the app) and "
        f"the motion-model projection, with the bundled models at {SIZE[0]}x{SIZE[1]}, one step, one member. "
        f"**distorted**: {args.num} held-out synthetic samples per task (photos `bundled-test`, seed {args.seed}; "
        "SIR panorama borders, RSC camera motion); **undistorted**: the same number of ordinary photos "
        "(`bundled-test` crops and scikit-image's photos), gt = the photo (PSNR capped at 60 dB: an unchanged "
        "photo scores 60; SIR derives their mask as `rectify` does, and an image without an empty border is "
        "returned unchanged before the model runs, gate on or off: *no border*). *corrected* / *left unchanged*: share of images whose confidence reaches / misses "
        "the threshold. *PSNR input*: the input vs gt; *gate off*: every correction applied "
        "(`--always-correct`); *gate on*: the unsupported ones returned unchanged. *EPE*: the flow's mean "
        "end-point error (px, all pixels) with the gate off, without and with `flow_projection=\"motion_model\"` "
        "(SIR has no family: the same flow).\n\n" + table
    )
    if not args.no_write:
        write_section("gate", "Correction gate and motion-model projection (do no harm)", body)


if __name__ == "__main__":
    main()
