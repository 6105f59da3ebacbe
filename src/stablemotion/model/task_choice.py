"""Automatic task choice: which warping task an image needs (``rectify --task auto``).

Two stages:

1. **The SIR rule.** A stitched panorama has a flat black (or white) border connected to
   the image edge. When :func:`stablemotion.core.image_processing.derive_mask` finds such an
   empty border covering at least :data:`MIN_EMPTY_FRACTION` of the pixels, the task is
   ``sir`` with confidence 1.
2. **A tiny classifier** (:class:`TaskClassifier`, 64k parameters) over the other
   tasks: ``rsc`` (rolling shutter), ``rotation`` (a tilted photo), ``lens`` (barrel /
   fisheye-like distortion) and ``none`` (an ordinary undistorted photo). It sees the
   image resized to 128x176 (grey level and its two gradients) and is trained on exact
   synthetic samples (:func:`train_task_classifier`, ``stablemotion train-task-classifier``).
   When its top probability is below ``threshold`` the choice is undecided (``task=None``)
   and the caller asks the user to pass ``--task``.

The bundled classifier lives in ``stablemotion/weights/task-classifier``
(:data:`stablemotion.model.catalog.BUNDLED_TASK_CLASSIFIER`); its accuracy on held-out synthetic
samples is measured by ``benchmarks/task_choice.py``.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

__all__ = [
    "TaskChoice",
    "TaskClassifier",
    "CLASSIFIER_TASKS",
    "MIN_EMPTY_FRACTION",
    "TRAIN_SEED",
    "TEST_SEED",
    "choose_task",
    "empty_fraction",
    "classifier_input",
    "load_task_classifier",
    "classifier_sample",
    "train_task_classifier",
]

#: The classes of the classifier; ``none`` = an ordinary photo that needs no correction.
CLASSIFIER_TASKS = ("none", "rsc", "rotation", "lens")
#: An empty border must cover at least this fraction of the pixels to mean SIR.
MIN_EMPTY_FRACTION = 0.02
#: Seeds of the training and of the held-out synthetic samples.
TRAIN_SEED = 1601
TEST_SEED = 1602
#: Sample size (H, W) of the synthetic training / test images.
SAMPLE_SIZE = (192, 256)
#: The classifier's input size (H, W) of new classifiers (a saved one keeps its own).
INPUT_SIZE = (128, 176)
#: How each class's synthetic sample is made: (generator, options, index offset).
_RECIPES: dict[str, tuple[str, dict[str, Any], int]] = {
    "none": ("rotation", {"min_angle": 0.0, "max_angle": 0.0}, 1_000_000),  # an untilted crop
    "rsc": ("rolling_shutter", {"motion_model": "camera"}, 0),
    "rotation": ("rotation", {}, 0),
    "lens": ("lens", {}, 0),
}


@dataclass
class TaskChoice:
    """What :func:`choose_task` decided.

    Attributes:
        task: ``"sir"``, ``"rsc"``, ``"rotation"``, ``"lens"``, ``"none"`` (no correction
            needed) or None (undecided: below the threshold).
        confidence: in [0, 1]: 1 for the SIR rule, else the classifier's top probability.
        reason: one line saying why.
        probabilities: per task (the classifier's softmax; ``{"sir": 1.0}`` for the rule).
        best: the most probable task even when undecided.
    """

    task: str | None
    confidence: float
    reason: str
    probabilities: dict[str, float] = field(default_factory=dict)
    best: str | None = None


class TaskClassifier(ModelMixin, ConfigMixin):
    """A tiny CNN: (B, 3, H, W) grey + gradients (``input_size``) -> logits over ``class_names``."""

    config_name = "config.json"

    @register_to_config
    def __init__(self, class_names: Sequence[str] = CLASSIFIER_TASKS, width: int = 16,
                 input_size: Sequence[int] = INPUT_SIZE) -> None:
        super().__init__()
        w = int(width)
        chans = [3, w, 2 * w, 4 * w, 4 * w]
        layers: list[nn.Module] = []
        for cin, cout in zip(chans[:-1], chans[1:], strict=True):
            layers += [nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.GroupNorm(4, cout), nn.SiLU()]
        self.features = nn.Sequential(*layers)
        # a coarse 3x4 layout is kept: lens distortion and shutter skew depend on where lines are
        self.pool = nn.AdaptiveAvgPool2d((3, 4))
        self.head = nn.Sequential(nn.Dropout(0.3), nn.Linear(chans[-1] * 12, len(class_names)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.features(x)).flatten(1))

    @property
    def class_names(self) -> list[str]:
        return list(self.config.class_names)


def classifier_input(image: np.ndarray, size: Sequence[int] = INPUT_SIZE) -> np.ndarray:
    """uint8 (H, W, 3) RGB -> float32 (3, h, w): standardised grey level and its x / y gradients."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected a uint8 (H, W, 3) RGB image, got {getattr(image, 'shape', type(image))}")
    h, w = int(size[0]), int(size[1])
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    small = cv2.resize(grey, (w, h), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
    small = (small - small.mean()) / (small.std() + 0.05)
    gx = cv2.Sobel(small, cv2.CV_32F, 1, 0, ksize=3) / 4.0
    gy = cv2.Sobel(small, cv2.CV_32F, 0, 1, ksize=3) / 4.0
    return np.stack([small, gx, gy]).astype(np.float32)


def empty_fraction(image: np.ndarray) -> float:
    """Fraction of the pixels in a flat empty border (the SIR mask rule)."""
    from ..core.image_processing import derive_mask

    return float((derive_mask(image) == 0).mean())


@functools.lru_cache(maxsize=2)
def _load_cached(path: str) -> TaskClassifier:
    model = TaskClassifier.from_pretrained(path)
    model.eval()
    return model


def load_task_classifier(path: str | Path | None = None) -> TaskClassifier:
    """The classifier saved in ``path`` (default: the bundled one), in eval mode; cached."""
    if path is None:
        from .catalog import bundled_task_classifier_path

        path = bundled_task_classifier_path()
    return _load_cached(str(path))


def _probabilities(classifier: Any, image: np.ndarray) -> dict[str, float]:
    if callable(getattr(classifier, "predict_proba", None)):  # a stub or another model
        return {str(k): float(v) for k, v in classifier.predict_proba(image).items()}
    x = torch.from_numpy(classifier_input(image, classifier.config.input_size))[None]
    with torch.no_grad():
        p = torch.softmax(classifier(x.to(classifier.device, classifier.dtype)).float(), -1)[0].cpu().numpy()
    return {name: float(v) for name, v in zip(classifier.class_names, p, strict=True)}


def choose_task(image: np.ndarray, classifier: Any | None = None, threshold: float = 0.6,
                min_empty: float = MIN_EMPTY_FRACTION) -> TaskChoice:
    """Choose the task for one uint8 (H, W, 3) RGB image (see the module doc).

    Args:
        image: uint8 (H, W, 3) RGB.
        classifier: a :class:`TaskClassifier`, or any object with ``predict_proba(image) ->
            {task: probability}``; default: the bundled classifier.
        threshold: below this top probability the choice is None (undecided).
        min_empty: the least fraction of empty-border pixels that means SIR.
    """
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    empty = empty_fraction(image)
    if empty >= min_empty:
        return TaskChoice("sir", 1.0, f"flat empty border ({empty:.1%} of the pixels)", {"sir": 1.0}, "sir")
    if classifier is None:
        classifier = load_task_classifier()
    probs = _probabilities(classifier, image)
    best = max(probs, key=probs.__getitem__)
    conf = float(min(max(probs[best], 0.0), 1.0))
    if conf < threshold:
        return TaskChoice(None, conf, f"classifier unsure: best guess {best} at {conf:.0%} < {threshold:.0%}",
                          probs, best)
    return TaskChoice(best, conf, f"classifier ({'no distortion seen' if best == 'none' else best})", probs, best)


# --------------------------------------------------------------------------- training
def classifier_sample(label: str, seed: int, index: int, photos: Sequence[str],
                      size: tuple[int, int] = SAMPLE_SIZE) -> np.ndarray:
    """The uint8 (H, W, 3) synthetic input of class ``label`` (``sir`` too: a stitched panorama)."""
    from ..data.synthesis import make_sample

    if label == "sir":
        style = ("panorama", "stitched", "inset")[index % 3]
        return make_sample("rectangling", seed, index, size, photos, style=style).input
    gen, options, offset = _RECIPES[label]
    sample = make_sample(gen, seed, index + offset, size, photos, **options)
    return sample.rs if gen == "rolling_shutter" else sample.input


def _sample_job(job: tuple[str, int, int, Sequence[str]]) -> list[tuple[np.ndarray, str]]:
    """One sample's classifier inputs with labels. A rolling-shutter or lens sample also gives
    its undistorted truth as a ``none`` example: the pair differs only by the distortion, so the
    classifier cannot tell the classes apart by photo content."""
    from ..data.synthesis import make_sample

    label, seed, index, photos = job
    if label == "sir":
        return [(classifier_input(classifier_sample(label, seed, index, photos)), label)]
    gen, options, offset = _RECIPES[label]
    sample = make_sample(gen, seed, index + offset, SAMPLE_SIZE, photos, **options)
    if gen == "rolling_shutter":
        return [(classifier_input(sample.rs), label), (classifier_input(sample.gs), "none")]
    out = [(classifier_input(sample.input), label)]
    if label == "lens":
        out.append((classifier_input(sample.gt), "none"))
    return out


def make_classifier_data(num_per_task: int, seed: int, photos: Sequence[str], workers: int = 1,
                         classes: Sequence[str] = CLASSIFIER_TASKS) -> tuple[np.ndarray, np.ndarray]:
    """(N, 3, H, W) float16 inputs and (N,) int64 labels: ``num_per_task`` samples of each
    distortion class; ``none`` gets ``num_per_task`` untilted crops plus the undistorted truth
    of every rolling-shutter and lens sample."""
    jobs = [(label, seed, i, list(photos)) for label in classes for i in range(num_per_task)]
    if workers > 1:
        from ..data.synthesis import pool_context

        with pool_context().Pool(workers) as pool:
            results = pool.map(_sample_job, jobs, chunksize=8)
    else:
        results = [_sample_job(j) for j in jobs]
    pairs = [pair for result in results for pair in result]
    return np.stack([x.astype(np.float16) for x, _ in pairs]), np.array([list(classes).index(lab) for _, lab in pairs], np.int64)


def train_task_classifier(
    out_dir: str | Path | None,
    num_per_task: int = 400,
    steps: int = 2000,
    seed: int = TRAIN_SEED,
    photos: str | Sequence[str] | None = "bundled-train+procedural*3+urban*2",
    batch_size: int = 64,
    lr: float = 2e-3,
    width: int = 16,
    workers: int = 1,
    log: Callable[[str], None] | None = print,
) -> TaskClassifier:
    """Train a :class:`TaskClassifier` on synthetic samples made in memory, with Adam on CPU.

    Args:
        out_dir: where to save it (``save_pretrained``, safetensors); None = do not save.
        num_per_task: samples of each class (``none``, ``rsc``, ``rotation``, ``lens``).
        steps: optimiser steps (batches of ``batch_size``, random horizontal flips).
        seed: the samples' seed (keep it apart from :data:`TEST_SEED`) and the torch seed.
        photos: a ``--photos`` spec (:func:`stablemotion.data.synth.resolve_photos`) or a list.
        workers: processes generating samples.
    """
    from ..data.synthesis import resolve_photos

    if num_per_task < 1 or steps < 1:
        raise ValueError(f"num_per_task and steps must be >= 1, got {num_per_task}, {steps}")
    paths = resolve_photos(photos) if photos is None or isinstance(photos, str) else list(photos)
    t0 = time.time()
    x_np, y_np = make_classifier_data(num_per_task, seed, paths, workers)
    if log:
        log(f"made {len(y_np)} samples ({num_per_task} per distortion, the rest undistorted) in "
            f"{time.time() - t0:.0f} s")
    torch.manual_seed(seed)
    model = TaskClassifier(width=width)
    x, y = torch.from_numpy(x_np), torch.from_numpy(y_np)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s / steps, 1.0))))
    gen = torch.Generator().manual_seed(seed)
    counts = torch.bincount(y, minlength=len(CLASSIFIER_TASKS)).clamp(min=1).float()
    weights = 1.0 / counts[y]  # every class is drawn equally often
    model.train()
    running = 0.0
    for step in range(1, steps + 1):
        idx = torch.multinomial(weights, min(batch_size, len(y)), replacement=True, generator=gen)
        xb = x[idx].float()
        flip = torch.rand(len(idx), generator=gen) < 0.5
        if flip.any():  # a mirrored image needs the same task; the x gradient changes sign
            xb[flip] = xb[flip].flip(-1) * torch.tensor([1.0, -1.0, 1.0]).view(1, 3, 1, 1)
        flip = torch.rand(len(idx), generator=gen) < 0.5
        if flip.any():  # upside down too; the y gradient changes sign
            xb[flip] = xb[flip].flip(-2) * torch.tensor([1.0, 1.0, -1.0]).view(1, 3, 1, 1)
        loss = nn.functional.cross_entropy(model(xb), y[idx], label_smoothing=0.05)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        running = 0.98 * running + 0.02 * loss.item() if step > 1 else loss.item()
        if log and (step % max(1, steps // 10) == 0 or step == steps):
            log(f"step {step}/{steps}: loss {running:.3f} ({time.time() - t0:.0f} s)")
    model.eval()
    if out_dir is not None:
        model.save_pretrained(str(out_dir))
        if log:
            log(f"saved the task classifier -> {out_dir}")
    return model
