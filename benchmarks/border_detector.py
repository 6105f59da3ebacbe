"""False and true positives of the strict empty-border detector (:mod:`stablemotion.core.borders`).

    python benchmarks/border_detector.py [--negatives debian+bundled] [--positives debian-test+bundled-test]

Negatives (no empty border; each must say no): real photographs (the Debian photo pools and
scikit-image's bundled photos, at their own resolution), and hard cases made from each of them:

* ``night``: darkened (gamma 2.6, gain 0.5), JPEG quality 85: dark skies and shadows touching the frame;
* ``dark edge``: the bottom quarter darkened to 4-8% (a silhouette / letterbox-like dark edge that keeps
  the scene's noise), JPEG quality 85;
* ``dark crop``: the photo cropped to the 60% window around its darkest region, so that the
  region touches the frame;
* ``clipped``: over-exposed (x1.8 + 40, clipped), JPEG quality 90: flat white skies at the frame;
* ``black-and-white``: its grey version as RGB.

Positives: panoramas stitched by OpenCV's ``Stitcher`` (PANORAMA mode) from 2-4 overlapping jittered
views of held-out photos (the builder of ``benchmarks/panoramas.py``), the stitcher's black fill kept or
replaced by white, JPEG quality 75-95. A panorama whose empty area covers less than ``--min-empty`` of it
is left out (there is nothing to find). A positive counts as found when the detector says yes; the mask
error is the share of pixels where its mask and the stitcher's empty area (before JPEG) differ.

``--astro`` also reports the telescope photographs of the ``astro`` pool (black skies; some are mosaics
with real empty wedges), outside the target.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import markdown_table, write_section  # noqa: E402
from panoramas import make_panorama  # noqa: E402
from stablemotion.core.borders import detect_empty_border  # noqa: E402
from stablemotion.data.synth import PROCEDURAL, resolve_photos  # noqa: E402
from stablemotion.io.images import load_image  # noqa: E402

NEGATIVE_KINDS = ("photo", "night", "dark edge", "dark crop", "clipped", "black-and-white")


def jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    """``image`` (uint8 RGB) after a JPEG round trip at ``quality``."""
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(image[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    assert ok
    return np.ascontiguousarray(cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1])


def hard_case(photo: np.ndarray, kind: str) -> np.ndarray:
    """The negative ``kind`` (one of :data:`NEGATIVE_KINDS`) made from ``photo`` (uint8 RGB)."""
    f = photo.astype(np.float32) / 255.0
    if kind == "photo":
        return photo
    if kind == "night":
        return jpeg(np.clip(255 * 0.5 * f**2.6, 0, 255).astype(np.uint8), 85)
    if kind == "dark edge":
        h = photo.shape[0]
        gain = np.ones((h, 1, 1), np.float32)
        gain[h - h // 4:] = np.linspace(0.08, 0.04, h // 4)[:, None, None]
        return jpeg(np.clip(255 * f * gain, 0, 255).astype(np.uint8), 85)
    if kind == "dark crop":
        h, w = photo.shape[:2]
        grey = cv2.blur(cv2.cvtColor(photo, cv2.COLOR_RGB2GRAY), (max(3, w // 10), max(3, h // 10)))
        y, x = np.unravel_index(int(np.argmin(grey)), grey.shape)
        ch, cw = int(h * 0.6), int(w * 0.6)
        # put the darkest point on the nearest side of the crop, so that it touches the frame
        y0 = int(np.clip(y - (0 if y < h / 2 else ch - 1), 0, h - ch))
        x0 = int(np.clip(x - (0 if x < w / 2 else cw - 1), 0, w - cw))
        return np.ascontiguousarray(photo[y0:y0 + ch, x0:x0 + cw])
    if kind == "clipped":
        return jpeg(np.clip(255 * (1.8 * f) + 40, 0, 255).astype(np.uint8), 90)
    if kind == "black-and-white":
        return np.repeat(cv2.cvtColor(photo, cv2.COLOR_RGB2GRAY)[..., None], 3, axis=2)
    raise ValueError(f"unknown negative kind {kind!r}")


def split_of(path: str) -> str:
    """``"tune"`` or ``"held-out"``: a fixed half of the photos by a hash of the file's folder and name
    (the detector's thresholds are chosen on the tuning half only)."""
    p = Path(path)
    digest = hashlib.sha1(f"{p.parent.name}/{p.name}".encode()).digest()
    return "tune" if digest[0] % 2 == 0 else "held-out"


def photo_paths(spec: str) -> list[str]:
    return [p for p in dict.fromkeys(resolve_photos(spec)) if p != PROCEDURAL]


def timed(image: np.ndarray) -> tuple[object, float]:
    t = time.perf_counter()
    result = detect_empty_border(image)
    return result, time.perf_counter() - t


def panoramas(path: str, k: int, seed: int, per_photo: int, cache: Path | None) -> list[tuple[np.ndarray, np.ndarray] | None]:
    """``per_photo`` stitched panoramas of the photo at ``path`` (uint8 RGB, empty mask), None where the
    stitcher failed; from ``cache`` (an .npz per photo and seed) when there."""
    key = hashlib.sha1(f"{path}|{seed}|{k}|{per_photo}".encode()).hexdigest()[:16]
    file = cache / f"{key}.npz" if cache is not None else None
    if file is not None and file.is_file():
        with np.load(file) as z:
            return [(z[f"pano{j}"], z[f"empty{j}"]) if f"pano{j}" in z else None for j in range(per_photo)]
    photo = load_image(path, mode="RGB")
    if max(photo.shape[:2]) > 1600:  # the stitcher's time grows with the size; 1600 px is plenty
        s = 1600 / max(photo.shape[:2])
        photo = cv2.resize(photo, None, fx=s, fy=s, interpolation=cv2.INTER_AREA)
    out: list[tuple[np.ndarray, np.ndarray] | None] = []
    for j in range(per_photo):
        try:
            out.append(make_panorama(photo, np.random.default_rng([seed, k, j])))
        except cv2.error:  # too few features for the matcher: the stitcher gives up
            out.append(None)
    if file is not None:
        file.parent.mkdir(parents=True, exist_ok=True)
        arrays = {f"{n}{j}": a for j, m in enumerate(out) if m is not None for n, a in zip(("pano", "empty"), m, strict=True)}
        np.savez(file, **arrays)
    return out


class Tally:
    """Counts of one split: negatives by kind, positives by fill, timings."""

    def __init__(self) -> None:
        self.neg: dict[str, list[int]] = {k: [0, 0] for k in NEGATIVE_KINDS}  # kind -> [flagged, images]
        self.pos: dict[str, list] = {"black": [0, 0, []], "white": [0, 0, []]}  # fill -> [found, images, errors]
        self.photos = self.sources = self.failed = self.small = 0

    def rates(self) -> tuple[int, int, int, int]:
        fp = sum(v[0] for v in self.neg.values())
        tp = sum(v[0] for v in self.pos.values())
        return fp, sum(v[1] for v in self.neg.values()), tp, sum(v[1] for v in self.pos.values())

    def rows(self, name: str) -> list[list[object]]:
        fp, n_neg, tp, n_pos = self.rates()
        rows: list[list[object]] = [[name, f"negative: {k}", v[1], v[0], f"{v[0] / max(v[1], 1):.2%}"]
                                    for k, v in self.neg.items()]
        rows.append([name, "**negatives, all**", n_neg, fp, f"**{fp / max(n_neg, 1):.2%}**"])
        for fill, v in self.pos.items():
            err = f", mask error median {np.median(v[2]):.2%}" if v[2] else ""
            rows.append([name, f"positive: stitched, {fill} fill{err}", v[1], v[0], f"{v[0] / max(v[1], 1):.2%}"])
        rows.append([name, "**positives, all**", n_pos, tp, f"**{tp / max(n_pos, 1):.2%}**"])
        return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--negatives", default="debian+bundled", help="photo sources of the negatives (synth --photos syntax)")
    ap.add_argument("--positives", default="debian-test+bundled-test+opencv+mate+plasma+lomiri",
                    help="held-out photo sources of the stitched panoramas")
    ap.add_argument("--per-photo", type=int, default=4, help="panoramas per photo (default 4)")
    ap.add_argument("--max-positive-photos", type=int, default=200)
    ap.add_argument("--min-empty", type=float, default=0.005, help="least empty share of a positive (default 0.5%%)")
    ap.add_argument("--astro", action="store_true", help="also report the astro pool (outside the target)")
    ap.add_argument("--seed", type=int, default=7, help="panorama seed of the tuning half (held-out: seed + 1)")
    ap.add_argument("--split", choices=("both", "tune", "held-out"), default="both",
                    help="which half of the photos to run (default both; only 'both' writes BENCHMARKS.md)")
    ap.add_argument("--cache", type=Path, default=None, help="keep the stitched panoramas here (.npz) and reuse them")
    ap.add_argument("--verbose", action="store_true", help="print every miss and false positive")
    ap.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md")
    args = ap.parse_args()
    cv2.setNumThreads(1)
    t0 = time.perf_counter()
    seconds, megapixels = 0.0, 0.0
    splits = ("tune", "held-out") if args.split == "both" else (args.split,)
    tally = {s: Tally() for s in splits}

    negatives = [p for p in photo_paths(args.negatives) if split_of(p) in splits]
    for path in negatives:
        t = tally[split_of(path)]
        t.photos += 1
        photo = load_image(path, mode="RGB")
        for kind in NEGATIVE_KINDS:
            image = hard_case(photo, kind)
            result, dt = timed(image)
            seconds += dt
            megapixels += image.shape[0] * image.shape[1] / 1e6
            t.neg[kind][1] += 1
            if result.found:
                t.neg[kind][0] += 1
                print(f"FALSE POSITIVE [{split_of(path)}] {kind:16s} {path}: {result.reason}", flush=True)
            elif args.verbose:
                print(f"ok {kind:16s} {Path(path).name}: {result.reason}")
    astro = [0, 0]
    if args.astro:
        for path in photo_paths("astro"):
            result, _ = timed(load_image(path, mode="RGB"))
            astro[1] += 1
            astro[0] += int(result.found)
            if result.found and args.verbose:
                print(f"astro found {Path(path).name}: {result.reason}")

    sources = photo_paths(args.positives)
    if len(sources) > args.max_positive_photos:
        sources = [sources[int(i)] for i in np.linspace(0, len(sources) - 1, args.max_positive_photos)]
    sources = [p for p in sources if split_of(p) in splits]
    image = None
    for k, path in enumerate(sources):
        split = split_of(path)
        t = tally[split]
        t.sources += 1
        seed = args.seed if split == "tune" else args.seed + 1
        for j, made in enumerate(panoramas(path, k, seed, args.per_photo, args.cache)):
            if made is None:
                t.failed += 1
                continue
            pano, empty = made
            if empty.mean() < args.min_empty:
                t.small += 1
                continue
            rng = np.random.default_rng([seed, k, j, 1])
            fill = "white" if j % 2 else "black"
            if fill == "white":
                pano = pano.copy()
                pano[empty] = 255
            image = jpeg(pano, int(rng.integers(75, 96)))
            result, dt = timed(image)
            seconds += dt
            megapixels += image.shape[0] * image.shape[1] / 1e6
            t.pos[fill][1] += 1
            if result.found:
                t.pos[fill][0] += 1
                t.pos[fill][2].append(float((result.mask != empty).mean()))
            else:
                print(f"MISSED [{split}] {fill} panorama of {Path(path).name} #{j} ({empty.mean():.1%} empty): "
                      f"{result.reason}", flush=True)
            if args.verbose:
                cv2.imwrite(f"/tmp/pano_{split}_{k}_{j}.jpg", image[..., ::-1])

    per_mp = seconds / max(megapixels, 1e-9)
    big_times = [0.0]
    if image is not None:  # one 12-megapixel image (a stitched panorama upscaled), median of 3
        big = cv2.resize(image, (4000, 3000), interpolation=cv2.INTER_LINEAR)
        big_times = sorted(timed(big)[1] for _ in range(3))
    for s, t in tally.items():
        fp, n_neg, tp, n_pos = t.rates()
        print(f"[{s}] negatives: {fp} false positives of {n_neg} ({fp / max(n_neg, 1):.2%}); positives: {tp} found "
              f"of {n_pos} ({tp / max(n_pos, 1):.2%}; {t.failed} failed to stitch, {t.small} with < "
              f"{args.min_empty:.1%} empty left out)")
    print(f"{per_mp:.3f} s per megapixel; 12 MP: {big_times[len(big_times) // 2]:.2f} s; "
          f"{time.perf_counter() - t0:.0f} s in all")
    if args.no_write or args.split != "both":
        return
    rows = tally["held-out"].rows("held-out") + tally["tune"].rows("tuning")
    if args.astro:
        rows.append(["-", "(astro pool, outside the target: detected)", astro[1], astro[0],
                     f"{astro[0] / max(astro[1], 1):.2%}"])
    fp, n_neg, tp, n_pos = tally["held-out"].rates()
    fp_rate, tp_rate = fp / max(n_neg, 1), tp / max(n_pos, 1)
    tune, held = tally["tune"], tally["held-out"]
    body = (
        f"Negatives: {len(negatives)} real photos (`{args.negatives}`) at their own resolution, each also as the "
        "hard cases of the script's doc (night, dark edge, dark crop, clipped, black-and-white). Positives: "
        f"OpenCV-stitched panoramas of {len(sources)} photos (`{args.positives}`, at most 1600 px), "
        f"{args.per_photo} per photo, black and white fill alternating, JPEG quality 75-95 "
        f"({tune.failed + held.failed} failed to stitch, {tune.small + held.small} with under {args.min_empty:.1%} "
        "empty left out). 'Flagged' is the number the detector said yes to.\n\n"
        "The photos are split in two halves by a hash of their folder and file name: the thresholds of "
        f"`stablemotion.core.borders` were chosen on the **tuning** half ({tune.photos} negative photos, "
        f"{tune.sources} panorama sources, seed {args.seed}) only; the **held-out** half ({held.photos} negative "
        f"photos, {held.sources} panorama sources, seed {args.seed + 1}) is the headline.\n\n"
        + markdown_table(["split", "set", "images", "flagged", "rate"], rows)
        + f"\n\nTargets (held-out): false positives <= 0.5%: {'met' if fp_rate <= 0.005 else 'missed'} "
        f"({fp_rate:.2%}); true positives >= 99%: {'met' if tp_rate >= 0.99 else 'missed'} ({tp_rate:.2%}).\n\n"
        f"Runtime: {per_mp:.3f} s per megapixel over all images (1 thread); a 12-megapixel image "
        f"{big_times[1]:.2f} s (median of 3)."
    )
    write_section("border_detector", "Strict empty-border detector: false and true positives", body)


if __name__ == "__main__":
    main()
