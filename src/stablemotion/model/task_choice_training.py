"""Training and calibrating the task classifier of :mod:`stablemotion.model.task_choice`.

Samples are made in memory by the synthetic generators
(:func:`stablemotion.data.synthesis.make_sample`) from three disjoint photo splits:

* ``train`` (:data:`TRAIN_PHOTOS`): the Debian training pool (when installed), scikit-image's
  training photos, procedural and street scenes;
* ``calibration`` and ``test`` (:func:`held_out_photos`): the held-out photos (``debian-test``
  when installed, ``bundled-test``) alternately split in two, plus new procedural / street scenes.
  The temperature and the threshold are fitted on ``calibration``; ``benchmarks/task_choice.py``
  reports on ``test``.

Classes and magnitudes (:func:`classifier_sample`): ``none`` is an ordinary photo, drawn
through every generator's own resampling so that resampling alone says nothing (a plain crop,
a photo tilted by at most :data:`NONE_MAX_ANGLE` degrees, the rectilinear target of a lens
sample, a lens of strength at most :data:`NONE_MAX_STRENGTH`, the global-shutter image of a
rolling-shutter sample); ``rotation`` and ``lens`` train at the magnitudes that are visible
(:data:`TRAIN_MAGNITUDES`) and are tested over the models' whole default range;
``rsc`` mixes planar and camera motion; ``sir`` is a stitched panorama. Every sample gets a
random size (aspect), JPEG, blur and noise, the same for every class.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from .task_choice import (
    CLASSIFIER_TASKS,
    INPUT_SIZE,
    MAX_WARPED_SHARE,
    TaskClassifier,
    choose_threshold,
    classifier_input,
    fit_temperature,
)

__all__ = [
    "TRAIN_SEED",
    "CALIBRATION_SEED",
    "TEST_SEED",
    "TRAIN_PHOTOS",
    "TRAIN_MAGNITUDES",
    "held_out_photos",
    "classifier_sample",
    "make_classifier_data",
    "classifier_logits",
    "train_task_classifier",
]

#: Seeds of the three splits (the generated scenes differ with the seed; the photos by split).
TRAIN_SEED = 1601
TEST_SEED = 1602
CALIBRATION_SEED = 1603
#: The photo sources of the training split (``debian-train`` is dropped when not installed).
TRAIN_PHOTOS = "debian-train+bundled-train*3+procedural*20+urban*30"
#: Magnitudes of the training samples: rotation tilt (degrees) and lens strength k; the
#: calibration and test splits use the generators' default ranges (rotation 1-12, lens 0.05-0.35).
TRAIN_MAGNITUDES = {"rotation": (2.0, 12.0), "lens": (0.07, 0.35)}
#: The largest tilt (degrees) and lens strength of a ``none`` sample.
NONE_MAX_ANGLE = 0.5
NONE_MAX_STRENGTH = 0.015
#: Sample sizes (H, W) drawn per sample: the classifier sees every aspect resized to 3:4.
SAMPLE_SIZES = ((192, 256), (192, 256), (256, 192), (160, 288), (224, 224), (176, 264))
_HELD_OUT_EXTRA = ("procedural", "procedural", "urban", "urban", "urban")


def _resolve(spec: str) -> list[str]:
    from ..data.synthesis import resolve_photos

    parts = []
    for part in spec.split("+"):
        try:
            resolve_photos(part)
            parts.append(part)
        except (ValueError, FileNotFoundError, KeyError):  # a pool that is not installed
            continue
    if not parts:
        raise ValueError(f"none of the photo sources {spec!r} is available")
    return resolve_photos("+".join(parts))


def held_out_photos(split: str) -> list[str]:
    """Photo sources of the ``calibration`` or ``test`` split: the held-out photos (``debian-test``
    when installed, then ``bundled-test``), sorted and dealt alternately, plus generated scenes.

    Example:
        >>> cal, test = held_out_photos("calibration"), held_out_photos("test")
        >>> not {p for p in cal if "." in p} & {p for p in test if "." in p}  # no photo in both
        True
    """
    if split not in ("calibration", "test"):
        raise ValueError(f"split must be 'calibration' or 'test', got {split!r}")
    photos = sorted(set(_resolve("debian-test+bundled-test")))
    mine = photos[0::2] if split == "calibration" else photos[1::2]
    return [*mine, *_HELD_OUT_EXTRA]


def _augment(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The same random degradations for every class: contrast / brightness, blur, noise, JPEG."""
    img = image.astype(np.float32)
    if rng.random() < 0.5:
        img = (img - 128.0) * rng.uniform(0.75, 1.25) + 128.0 + rng.uniform(-20, 20)
    if rng.random() < 0.3:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.3, 1.2))
    if rng.random() < 0.3:
        img = img + rng.normal(0.0, rng.uniform(1.0, 5.0), img.shape).astype(np.float32)
    out = np.clip(np.round(img), 0, 255).astype(np.uint8)
    if rng.random() < 0.5:
        ok, buf = cv2.imencode(".jpg", out[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(55, 96))])
        out = cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1] if ok else out
    return np.ascontiguousarray(out)


def classifier_sample(label: str, seed: int, index: int, photos: Sequence[str],
                      magnitudes: dict[str, tuple[float, float]] | None = None) -> tuple[np.ndarray, float]:
    """Synthetic input ``index`` of class ``label`` and its magnitude.

    Args:
        label: a class of :data:`~stablemotion.model.task_choice.CLASSIFIER_TASKS`.
        seed, index: the sample depends on these (and ``photos``) only.
        photos: photo sources (:func:`stablemotion.data.synthesis.resolve_photos`).
        magnitudes: ``{"rotation": (lo, hi), "lens": (lo, hi)}`` ranges (None: the generators'
            defaults, rotation 1-12 degrees, lens 0.05-0.35).

    Returns:
        uint8 (H, W, 3) RGB of a random size and aspect, and the magnitude: the tilt's
        magnitude (degrees) for rotation, the strength k for lens, else 0.

    Example:
        >>> img, angle = classifier_sample("rotation", 0, 0, ["procedural"])
        >>> img.dtype.name, 1.0 <= angle <= 12.0
        ('uint8', True)
    """
    from ..data.synthesis import make_sample

    if label not in CLASSIFIER_TASKS:
        raise ValueError(f"unknown class {label!r}; choose from {list(CLASSIFIER_TASKS)}")
    rng = np.random.default_rng([int(seed), int(index), CLASSIFIER_TASKS.index(label), 77])
    size = SAMPLE_SIZES[int(rng.integers(len(SAMPLE_SIZES)))]
    mags = magnitudes or {}
    magnitude = 0.0
    if label == "sir":
        style = ("panorama", "stitched", "inset")[index % 3]
        image = make_sample("rectangling", seed, index, size, photos, style=style).input
    elif label == "rsc":
        options = {"motion_model": "camera"} if index % 2 else {}
        image = make_sample("rolling_shutter", seed, index, size, photos, **options).rs
    elif label == "rotation":
        lo, hi = mags.get("rotation", (1.0, 12.0))
        s = make_sample("rotation", seed, index, size, photos, min_angle=lo, max_angle=hi)
        image, magnitude = s.input, abs(float(s.params["angle"]))
    elif label == "lens":
        lo, hi = mags.get("lens", (0.05, 0.35))
        s = make_sample("lens", seed, index, size, photos, min_strength=lo, max_strength=hi)
        image, magnitude = s.input, float(s.params["strength"])
    else:  # none: an ordinary photo, through each generator's resampling in turn
        kind = index % 5
        if kind == 0:
            from ..data.synthesis.photos import draw_photo, random_photo_crop

            image = random_photo_crop(draw_photo(rng, list(photos), size), size, rng,
                                      prefilter_sigma=float(rng.uniform(0.0, 1.0)))
        elif kind == 1:
            image = make_sample("rotation", seed, index, size, photos, min_angle=0.0, max_angle=NONE_MAX_ANGLE).input
        elif kind == 2:
            image = make_sample("lens", seed, index, size, photos).gt
        elif kind == 3:
            image = make_sample("lens", seed, index, size, photos, min_strength=0.0,
                                max_strength=NONE_MAX_STRENGTH).input
        else:
            image = make_sample("rolling_shutter", seed, index, size, photos).gs
    return _augment(image, rng), magnitude


def _job(job: tuple[str, int, int, list[str], dict[str, tuple[float, float]] | None]) -> tuple[np.ndarray, float]:
    label, seed, index, photos, mags = job
    image, magnitude = classifier_sample(label, seed, index, photos, mags)
    return classifier_input(image), magnitude


def make_classifier_data(counts: dict[str, int], seed: int, photos: Sequence[str], workers: int = 1,
                         magnitudes: dict[str, tuple[float, float]] | None = None,
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Classifier inputs for ``counts[label]`` samples of each class.

    Returns:
        uint8 (N, 120, 160, 3) images, int64 (N,) labels (indices of ``CLASSIFIER_TASKS``),
        float32 (N,) magnitudes (:func:`classifier_sample`).

    Example:
        >>> x, y, m = make_classifier_data({"none": 1, "lens": 1}, 5, ["procedural"])
        >>> x.shape, y.tolist()
        ((2, 120, 160, 3), [0, 4])
    """
    jobs = [(label, seed, i, list(photos), magnitudes) for label in CLASSIFIER_TASKS for i in range(counts.get(label, 0))]
    if workers > 1:
        from ..data.synthesis import pool_context

        with pool_context().Pool(workers) as pool:
            results = pool.map(_job, jobs, chunksize=16)
    else:
        results = [_job(j) for j in jobs]
    x = np.stack([r[0] for r in results]) if results else np.zeros((0, *INPUT_SIZE, 3), np.uint8)
    y = np.array([CLASSIFIER_TASKS.index(j[0]) for j in jobs], np.int64)
    return x, y, np.array([r[1] for r in results], np.float32)


def _batch(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(x)
    return t.permute(0, 3, 1, 2).float().div(255)


@torch.no_grad()
def classifier_logits(model: TaskClassifier, images: np.ndarray, batch_size: int = 128) -> np.ndarray:
    """float32 (N, classes) logits (before the temperature) of uint8 (N, h, w, 3) classifier inputs.

    Example:
        >>> clf = TaskClassifier(widths=(4, 4, 8, 8, 8)).eval()
        >>> classifier_logits(clf, np.zeros((3, 120, 160, 3), np.uint8)).shape
        (3, 5)
    """
    model.eval()
    out = [model(_batch(images[i:i + batch_size])).float().numpy() for i in range(0, len(images), batch_size)]
    return np.concatenate(out) if out else np.zeros((0, len(model.class_names)), np.float32)


def _load_or_make(cache: Path | None, name: str, make: Callable[[], tuple[np.ndarray, np.ndarray, np.ndarray]],
                  log: Callable[[str], None] | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    path = cache / f"{name}.npz" if cache is not None else None
    if path is not None and path.is_file():
        with np.load(path) as data:
            if log:
                log(f"{name}: {len(data['y'])} samples from {path}")
            return data["x"], data["y"], data["m"]
    t0 = time.time()
    x, y, m = make()
    if log:
        log(f"{name}: made {len(y)} samples in {time.time() - t0:.0f} s")
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, x=x, y=y, m=m)
    return x, y, m


def train_task_classifier(
    out_dir: str | Path | None,
    num_per_class: int = 3000,
    num_calibration: int = 400,
    steps: int = 5000,
    seed: int = TRAIN_SEED,
    photos: str | Sequence[str] | None = None,
    batch_size: int = 48,
    lr: float = 2e-3,
    widths: Sequence[int] = (24, 48, 96, 160, 224),
    workers: int = 1,
    cache: str | Path | None = None,
    max_warped: float = MAX_WARPED_SHARE,
    calibration_photos: Sequence[str] | None = None,
    device: str = "cpu",
    log: Callable[[str], None] | None = print,
) -> TaskClassifier:
    """Train a :class:`TaskClassifier` (AdamW, CPU), then fit its temperature and threshold on the
    calibration split; save it (``config.json`` + ``model.safetensors``) when ``out_dir`` is set.

    Args:
        out_dir: where to save it; None = do not save.
        num_per_class: training samples of each class (``sir`` gets half: the detector decides it first).
        num_calibration: calibration samples of each class (``sir`` half), from held-out photos.
        steps: optimiser steps (class-balanced batches of ``batch_size``, random horizontal flips).
        seed: the training samples' seed (not :data:`TEST_SEED` or :data:`CALIBRATION_SEED`) and the torch seed.
        photos: training photo sources (default :data:`TRAIN_PHOTOS`).
        widths: the CNN's channels per level.
        workers: processes generating samples.
        cache: a folder keeping the generated samples (``train.npz``, ``calibration.npz``) for reruns.
        max_warped: the largest share of calibration ``none`` photos the threshold lets be warped.
        calibration_photos: photo sources of the calibration split (default
            :func:`held_out_photos` ``("calibration")``); never the training photos.
        device: where to train (``"cpu"``, ``"cuda"``); the result is saved for the CPU.
    """
    if num_per_class < 1 or steps < 1 or num_calibration < 1:
        raise ValueError(f"num_per_class, num_calibration and steps must be >= 1, got {num_per_class}, "
                         f"{num_calibration}, {steps}")
    if seed in (TEST_SEED, CALIBRATION_SEED):
        raise ValueError(f"seed {seed} is a held-out seed (calibration {CALIBRATION_SEED}, test {TEST_SEED})")
    paths = _resolve(TRAIN_PHOTOS if photos is None else photos) if photos is None or isinstance(photos, str) \
        else list(photos)
    cache_dir = Path(cache) if cache is not None else None
    t0 = time.time()
    counts = {c: (num_per_class // 2 if c == "sir" else num_per_class) for c in CLASSIFIER_TASKS}
    x_np, y_np, _ = _load_or_make(cache_dir, "train", lambda: make_classifier_data(
        counts, seed, paths, workers, TRAIN_MAGNITUDES), log)
    cal_counts = {c: (max(1, num_calibration // 2) if c == "sir" else num_calibration) for c in CLASSIFIER_TASKS}
    xc, yc, _ = _load_or_make(cache_dir, "calibration", lambda: make_classifier_data(
        cal_counts, CALIBRATION_SEED, list(calibration_photos or held_out_photos("calibration")), workers), log)

    torch.manual_seed(seed)
    model = TaskClassifier(widths=widths).to(device)
    if log:
        log(f"TaskClassifier: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters")
    x, y = torch.from_numpy(x_np), torch.from_numpy(y_np)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=5e-4)
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s / steps, 1.0))))
    gen = torch.Generator().manual_seed(seed)
    weights = 1.0 / torch.bincount(y, minlength=len(CLASSIFIER_TASKS)).clamp(min=1).float()[y]
    model.train()
    running = 0.0
    for step in range(1, steps + 1):
        idx = torch.multinomial(weights, min(batch_size, len(y)), replacement=True, generator=gen)
        xb = _batch(x[idx]).to(device)
        flip = (torch.rand(len(idx), generator=gen) < 0.5).to(device)
        xb[flip] = xb[flip].flip(-1)  # a mirrored image needs the same task
        loss = nn.functional.cross_entropy(model(xb), y[idx].to(device), label_smoothing=0.02)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        running = 0.98 * running + 0.02 * loss.item() if step > 1 else loss.item()
        if log and (step % max(1, steps // 20) == 0 or step == steps):
            log(f"step {step}/{steps}: loss {running:.3f} ({time.time() - t0:.0f} s)")
    model = model.cpu().eval()
    logits = classifier_logits(model, xc)
    temperature = fit_temperature(logits, yc)
    probs = torch.softmax(torch.from_numpy(logits) / temperature, -1).numpy()
    threshold = choose_threshold(probs, yc, max_warped)
    model.config.update(temperature=temperature, threshold=threshold)
    if log:
        acc = float((logits.argmax(1) == yc).mean())
        log(f"calibration split ({len(yc)} samples): argmax accuracy {acc:.1%}, temperature {temperature:.3f}, "
            f"threshold {threshold:.4f} (at most {max_warped:.0%} of ordinary photos warped)")
    if out_dir is not None:
        model.save(out_dir)
        if log:
            log(f"saved the task classifier -> {out_dir}")
    return model
