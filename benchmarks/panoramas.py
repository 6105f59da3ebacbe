"""The bundled SIR model on real-looking stitched panoramas (no ground truth).

    python benchmarks/panoramas.py [--photos bundled-test] [--per-photo 3] [--pictures /tmp/panos]

Each panorama is made the way a user makes one: 2-4 overlapping views of a held-out photo
(photos no training sample uses), each seen under its own small homography (a hand-held camera
turning), stitched by OpenCV's ``Stitcher`` (feature matching, bundle adjustment, spherical
projection, seam finding, blending). Its empty area is the stitcher's black, or white for a
third of them; the result is JPEG-compressed (quality 85-95). The model then runs as
``stablemotion rectify`` runs it: the mask derived from the empty border
(:func:`stablemotion.core.image_processing.derive_mask`), the model's default settings, the output at
the panorama's size.

Measures (no ground truth exists for these):

* border left: share of the output's outer 4-px frame sampled from the empty area (the
  stitcher's own empty mask, before JPEG), the issue's <= 1% target;
* roughness (mean |5-point Laplacian| of the flow, px) in the outer 8% band and in the centre at
  the panorama's size, and their ratio, against the same figures for the ground truth of the
  synthetic stitched-border samples (``synth rectangling --style stitched``) at the same size.

``--pictures DIR`` writes each panorama and its output side by side, to look at.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import markdown_table, write_section  # noqa: E402
from roughness import BAND, roughness  # noqa: E402
from roughness import border_left as _border_left  # noqa: E402
from stablemotion.core.flow import resize_flow  # noqa: E402
from stablemotion.core.image_processing import derive_mask  # noqa: E402
from stablemotion.core.stitching import overlapping_views  # noqa: E402
from stablemotion.data.synth import PROCEDURAL, make_sample, resolve_photos  # noqa: E402
from stablemotion.io.images import load_image  # noqa: E402


def laplacian_roughness(flow: np.ndarray, band: float = BAND) -> tuple[float, float]:
    """Mean |5-point Laplacian| of ``flow`` (H, W, 2), px (u + v), in the outer band and the centre
    (:func:`roughness.roughness`, the measure of the roughness benchmark)."""
    return roughness(torch.from_numpy(np.ascontiguousarray(flow)).permute(2, 0, 1), band)


def border_left(empty: np.ndarray, flow: np.ndarray, frame: int = 4) -> float:
    """Share of the output's outer ``frame``-px frame whose flow (H, W, 2) samples an ``empty``
    (H, W) bool pixel (:func:`roughness.border_left` with the empty area as the mask)."""
    return _border_left(np.where(empty, 0, 255).astype(np.uint8), np.ascontiguousarray(flow, np.float32), frame)


def views(photo: np.ndarray, rng: np.random.Generator, n: int) -> list[np.ndarray]:
    """``n`` overlapping views across ``photo`` (uint8 RGB), each under a small random homography."""
    return overlapping_views(photo, n, rng)


def make_panorama(photo: np.ndarray, rng: np.random.Generator, min_side: int = 360) -> tuple[np.ndarray, np.ndarray] | None:
    """A stitched panorama of views of ``photo`` and its empty mask (bool), or None if OpenCV fails."""
    scale = max(1.0, min_side / min(photo.shape[:2]))
    if scale > 1:
        photo = cv2.resize(photo, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
    stitcher = cv2.Stitcher_create(cv2.Stitcher_PANORAMA)
    status, pano = stitcher.stitch([np.ascontiguousarray(v[..., ::-1]) for v in views(photo, rng, int(rng.integers(2, 5)))])
    if status != cv2.Stitcher_OK or pano is None or min(pano.shape[:2]) < 64:
        return None
    pano = np.ascontiguousarray(pano[..., ::-1])
    return pano, stitcher_empty(pano)


def stitcher_empty(pano: np.ndarray) -> np.ndarray:
    """The stitcher's empty area of ``pano`` (uint8 RGB, before any JPEG): its exact zeros connected to
    the frame, bool (H, W). (Not :func:`derive_mask`, which decides whether there is a border at all.)"""
    _, labels = cv2.connectedComponents((pano.max(axis=2) == 0).astype(np.uint8), connectivity=8)
    edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    return np.isin(labels, edge[edge > 0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="SIR pipeline folder (default: the bundled model)")
    ap.add_argument("--photos", default="bundled-test", help="held-out photo sources (synth --photos syntax)")
    ap.add_argument("--per-photo", type=int, default=3, help="panoramas per photo (default 3)")
    ap.add_argument("--max-photos", type=int, default=40, help="use at most this many photos (evenly spaced)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--pictures", type=Path, default=None, help="write input|output pictures here")
    ap.add_argument("--speed-threads", type=int, default=0,
                    help="also time one 512x384 panorama with this many threads (0: skip)")
    ap.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    from stablemotion.model import BUNDLED_MODELS, bundled_model_path, load_pipeline

    folder = args.model or str(bundled_model_path("sir"))
    pipe = load_pipeline(folder, torch.float32, progress=False)
    pipe.set_progress_bar_config(disable=True)
    photos = [p for p in dict.fromkeys(resolve_photos(args.photos)) if p != PROCEDURAL]
    if len(photos) > args.max_photos:
        photos = [photos[int(i)] for i in np.linspace(0, len(photos) - 1, args.max_photos)]
    if args.pictures:
        args.pictures.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    recs, failed, gt_recs = [], 0, []
    for k, path in enumerate(photos):
        photo = load_image(path, mode="RGB")
        for j in range(args.per_photo):
            rng = np.random.default_rng([args.seed, k, j])
            made = make_panorama(photo, rng)
            if made is None:
                failed += 1
                continue
            pano, empty = made
            white = j % 3 == 2
            if white:
                pano = pano.copy()
                pano[empty] = 255
            ok, buf = cv2.imencode(".jpg", pano[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(85, 96))])
            jpeg = np.ascontiguousarray(cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1])
            mask = derive_mask(jpeg)
            last_jpeg = jpeg
            res = pipe(jpeg, mask=mask, output_type="np", generator=torch.Generator().manual_seed(j),
                       show_progress_bar=False)
            flow = res.flow[0]
            band, centre = laplacian_roughness(flow)
            recs.append({"band": band, "centre": centre, "left": border_left(empty, flow),
                         "empty": float(empty.mean()), "mask_error": float(((mask == 0) != empty).mean()),
                         "size": pano.shape[:2], "white": white})
            # The synthetic stitched-border ground truth at the same size, for reference.
            s = make_sample("rectangling", args.seed + 100, len(gt_recs), (96, 128), [path], style="stitched",
                            rows=12, cols=16)
            gt = resize_flow(torch.from_numpy(s.flow).permute(2, 0, 1)[None], pano.shape[:2], align_corners=True)
            gt_recs.append(laplacian_roughness(gt[0].permute(1, 2, 0).numpy()))
            if args.pictures:
                out = (res.image[0] * 255).round().astype(np.uint8)
                name = f"{Path(path).stem}_{j}.jpg"
                cv2.imwrite(str(args.pictures / name), np.hstack([jpeg, out])[..., ::-1])
            print(f"{Path(path).name:32s} {pano.shape[1]}x{pano.shape[0]} {'white' if white else 'black'} "
                  f"empty {empty.mean():.1%} left {recs[-1]['left']:.2%} band {band:.3f} centre {centre:.3f}",
                  flush=True)
    if not recs:
        raise SystemExit("no panorama could be stitched")
    speed = ""
    if args.speed_threads:  # seconds per 512x384 stitched image, in-process pipeline call, median of 5
        torch.set_num_threads(args.speed_threads)
        image = cv2.resize(last_jpeg, (512, 384), interpolation=cv2.INTER_AREA)
        mask = derive_mask(image)
        times = {}
        for reg in ("mesh", "none"):
            runs = []
            for _ in range(6):
                t = time.perf_counter()
                pipe(image, mask=mask, output_type="np", show_progress_bar=False, flow_regularization=reg)
                runs.append(time.perf_counter() - t)
            times[reg] = float(np.median(runs[1:]))
        speed = (f"\n\nSpeed ({args.speed_threads} threads, one 512x384 stitched image, pipeline call in-process, median "
                 f"of 5 after a warm-up): {times['mesh']:.2f} s with the default mesh regularisation, "
                 f"{times['none']:.2f} s without; the issue's budget is 2 s.")
        print(speed.strip())
    # Medians: a few panoramas the stitcher bent wildly (half of the frame empty) would dominate means.
    band = float(np.median([r["band"] for r in recs]))
    centre = float(np.median([r["centre"] for r in recs]))
    ratio = float(np.median([r["band"] / max(r["centre"], 1e-9) for r in recs]))
    gband, gcentre = float(np.median([g[0] for g in gt_recs])), float(np.median([g[1] for g in gt_recs]))
    gratio = float(np.median([g[0] / max(g[1], 1e-9) for g in gt_recs]))
    left = [r["left"] for r in recs]
    print(f"{len(recs)} panoramas ({failed} failed to stitch), {time.perf_counter() - t0:.0f} s; border left: mean "
          f"{np.mean(left):.2%}, median {np.median(left):.2%}; roughness band/centre {ratio:.2f} "
          f"(synthetic gt {gratio:.2f})")
    if args.no_write:
        return
    name = args.model or BUNDLED_MODELS["sir"]
    sizes = np.array([r["size"] for r in recs])
    rows = [
        [f"{name} (default settings)", len(recs), f"{np.mean(left):.2%}", f"{np.median(left):.2%}",
         f"{np.max(left):.2%}", f"{np.mean([v <= 0.01 for v in left]):.0%}", f"{band:.3f}", f"{centre:.3f}",
         f"{ratio:.2f}"],
        ["synthetic stitched-border ground truth, same sizes", len(gt_recs), "-", "-", "-", "-", f"{gband:.3f}",
         f"{gcentre:.3f}", f"{gratio:.2f}"],
    ]
    body = (
        f"{len(recs)} panoramas ({failed} of {len(recs) + failed} failed to stitch) of {len(photos)} held-out photos "
        f"(`{args.photos}`), {args.per_photo} per photo, seed {args.seed}; sizes {sizes[:, 1].min()}-{sizes[:, 1].max()} "
        f"x {sizes[:, 0].min()}-{sizes[:, 0].max()} px; empty area {np.mean([r['empty'] for r in recs]):.1%} on average "
        f"(a third white); derived mask vs the stitcher's empty area: {np.mean([r['mask_error'] for r in recs]):.2%} "
        "of pixels differ. Border left = share of the output's 4-px frame sampled from the empty area; roughness at "
        "the panorama's size.\n\n"
        + markdown_table(["model", "panoramas", "border left, mean", "median", "worst", "panoramas <= 1%",
                          "roughness band (px)", "centre (px)", "band/centre"], rows)
        + "\n\nRoughness columns are medians over the panoramas (a few that the stitcher bent wildly, with up to "
        "two thirds of the frame empty, would dominate means); the border-left mean includes them."
        + f"\n\nTarget: border left <= 1%: {'met' if np.mean(left) <= 0.01 else 'missed'} (mean {np.mean(left):.2%})."
        + speed
    )
    write_section("panoramas", "SIR on real-looking stitched panoramas (OpenCV stitcher, held-out photos)", body)


if __name__ == "__main__":
    main()
