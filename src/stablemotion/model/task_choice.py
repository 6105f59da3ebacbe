"""Automatic task choice: which warping task an image needs (``rectify --task auto``), and
"none" whenever it is not sure: an ordinary photo must come back unchanged.

Two stages:

1. **The SIR rule.** A stitched panorama has a flat empty border connected to the image edge.
   When the strict detector :func:`stablemotion.core.borders.detect_empty_border` finds one,
   the task is ``sir`` with confidence 1 (:func:`empty_fraction` reads the same rule).
2. **A calibrated classifier** (:class:`TaskClassifier`, a ~1 M-parameter CNN over the image
   resized to 120x160: RGB plus the grey level's two gradients) over five classes: ``none``
   (an ordinary photo that needs no correction), ``sir`` (a fallback for stitched images the
   strict detector did not accept), ``rsc`` (rolling shutter), ``rotation`` (a tilted photo)
   and ``lens`` (barrel / fisheye-like distortion). Its logits are divided by a temperature
   fitted on held-out calibration photos (:func:`fit_temperature`), and a task is chosen only
   when its calibrated probability exceeds the classifier's ``threshold``, chosen on the same
   calibration photos so that at most 2% of ordinary photos are warped
   (:func:`choose_threshold`). Otherwise the answer is ``none``: the caller copies the image
   unchanged and reports it.

The bundled classifier lives in ``stablemotion/weights/task-classifier`` (``config.json``
with the class names, temperature and threshold; ``model.safetensors``, read weights-only);
``stablemotion train-task-classifier`` retrains it
(:func:`stablemotion.model.task_choice_training.train_task_classifier`) and
``benchmarks/task_choice.py`` measures it on held-out test photos.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import nn

__all__ = [
    "TaskChoice",
    "TaskClassifier",
    "CLASSIFIER_TASKS",
    "DEFAULT_THRESHOLD",
    "MAX_WARPED_SHARE",
    "INPUT_SIZE",
    "choose_task",
    "decide",
    "empty_fraction",
    "classifier_input",
    "load_task_classifier",
    "fit_temperature",
    "choose_threshold",
    "expected_calibration_error",
    "reliability_table",
]

#: The classifier's classes; ``none`` = an ordinary photo that needs no correction.
CLASSIFIER_TASKS = ("none", "sir", "rsc", "rotation", "lens")
#: The classifier's input size (H, W): any image is resized to it (3:4, as most photos).
INPUT_SIZE = (120, 160)
#: The threshold of a classifier that names none (a stub): act above this calibrated probability.
DEFAULT_THRESHOLD = 0.9
#: The largest share of ordinary photos the threshold may let be warped (on the calibration split).
MAX_WARPED_SHARE = 0.02
#: The weights file and the config file of a saved classifier.
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
_WIDTHS = (24, 48, 96, 160, 224)


@dataclass
class TaskChoice:
    """What :func:`choose_task` decided.

    Attributes:
        task: ``"sir"``, ``"rsc"``, ``"rotation"``, ``"lens"`` or ``"none"`` (no correction:
            an ordinary photo, or no task sure enough). Never None from :func:`choose_task`
            (the field keeps None for callers that still test for "undecided").
        confidence: in [0, 1]: 1 for the SIR rule, else the calibrated probability of ``task``.
        reason: one line saying why.
        probabilities: per class, calibrated (``{"sir": 1.0}`` for the SIR rule).
        best: the most probable class, even when it was not sure enough to act on.
    """

    task: str | None
    confidence: float
    reason: str
    probabilities: dict[str, float] = field(default_factory=dict)
    best: str | None = None


# --------------------------------------------------------------------------- the SIR rule
def empty_fraction(image: np.ndarray) -> float:
    """Fraction of the pixels in an empty border, by the strict detector (0 when none is found).

    Args:
        image: uint8 (H, W, 3) RGB.

    Example:
        >>> img = np.full((48, 64, 3), 128, np.uint8)
        >>> img[:, :16] = 0  # a flat black band along the left edge: a quarter of the frame
        >>> 0.0 <= empty_fraction(img) <= 1.0
        True
    """
    from ..core.borders import detect_empty_border

    border = detect_empty_border(image)
    return float(border.fraction) if border.found else 0.0


# --------------------------------------------------------------------------- the classifier
def classifier_input(image: np.ndarray, size: Sequence[int] = INPUT_SIZE) -> np.ndarray:
    """uint8 (H, W, 3) RGB -> uint8 (h, w, 3): the image resized (area) to the classifier's input size.

    Example:
        >>> classifier_input(np.zeros((300, 400, 3), np.uint8)).shape
        (120, 160, 3)
    """
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected a uint8 (H, W, 3) RGB image, got {getattr(image, 'shape', type(image))} "
                         f"{getattr(image, 'dtype', '')}")
    h, w = int(size[0]), int(size[1])
    if image.shape[:2] == (h, w):
        return image
    interp = cv2.INTER_AREA if image.shape[0] >= h and image.shape[1] >= w else cv2.INTER_LINEAR
    return cv2.resize(np.ascontiguousarray(image), (w, h), interpolation=interp)


def _conv(cin: int, cout: int, stride: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.SiLU()]


class TaskClassifier(nn.Module):
    """A CNN: (B, 3, H, W) RGB in [0, 1] -> logits (B, classes) over ``class_names``.

    It standardises each image and adds the grey level's x / y gradients (5 channels), then
    nine 3x3 convolutions (five of stride 2) and a head over a 2x2 layout of the features
    (where lines bend or lean matters for lens distortion and shutter skew).

    Args:
        class_names: the classes, ``none`` first.
        widths: channels of the five resolution levels.
        input_size: (H, W) the images are resized to (:func:`classifier_input`).
        temperature: the logits' divisor for calibrated probabilities (:func:`fit_temperature`).
        threshold: the least calibrated probability of a task to act on (:func:`choose_threshold`).

    Example:
        >>> clf = TaskClassifier(widths=(4, 4, 8, 8, 8)).eval()
        >>> clf(torch.rand(2, 3, 120, 160)).shape
        torch.Size([2, 5])
        >>> sorted(clf.predict_proba(np.zeros((60, 80, 3), np.uint8)))
        ['lens', 'none', 'rotation', 'rsc', 'sir']
    """

    def __init__(self, class_names: Sequence[str] = CLASSIFIER_TASKS, widths: Sequence[int] = _WIDTHS,
                 input_size: Sequence[int] = INPUT_SIZE, temperature: float = 1.0,
                 threshold: float = DEFAULT_THRESHOLD) -> None:
        super().__init__()
        names = [str(c) for c in class_names]
        if len(names) < 2 or names[0] != "none" or len(set(names)) != len(names):
            raise ValueError(f"class_names must be distinct with 'none' first, got {names}")
        if len(widths) != 5 or min(int(w) for w in widths) < 1:
            raise ValueError(f"widths must be five positive channel counts, got {list(widths)}")
        w = [int(v) for v in widths]
        self.config: dict[str, Any] = {"class_names": names, "widths": w, "input_size": [int(v) for v in input_size],
                                       "temperature": float(temperature), "threshold": float(threshold)}
        layers = _conv(5, w[0], 2) + _conv(w[0], w[1], 2) + _conv(w[1], w[1], 1) + _conv(w[1], w[2], 2)
        layers += _conv(w[2], w[2], 1) + _conv(w[2], w[3], 2) + _conv(w[3], w[3], 1) + _conv(w[3], w[4], 2)
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d((2, 2))
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.2), nn.Linear(4 * w[4], 128), nn.SiLU(),
                                  nn.Linear(128, len(names)))
        sobel = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 4.0
        self.register_buffer("sobel", torch.stack([sobel, sobel.T])[:, None], persistent=False)

    @property
    def class_names(self) -> list[str]:
        return list(self.config["class_names"])

    @property
    def temperature(self) -> float:
        return float(self.config["temperature"])

    @property
    def threshold(self) -> float:
        return float(self.config["threshold"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) RGB in [0, 1] -> (B, classes) logits (before the temperature)."""
        grey = (0.299 * x[:, :1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
        mean, std = grey.mean((2, 3), keepdim=True), grey.std((2, 3), keepdim=True) + 0.05
        grey = (grey - mean) / std
        grads = nn.functional.conv2d(nn.functional.pad(grey, (1, 1, 1, 1), mode="replicate"), self.sobel.to(x))
        rgb = (x - x.mean((1, 2, 3), keepdim=True)) / std
        return self.head(self.pool(self.features(torch.cat([rgb, grads], 1))))

    @torch.no_grad()
    def predict_proba(self, image: np.ndarray) -> dict[str, float]:
        """Calibrated class probabilities of one uint8 (H, W, 3) RGB image."""
        x = torch.from_numpy(classifier_input(image, self.config["input_size"])).permute(2, 0, 1)[None]
        p = self.calibrated(self(x.float().div(255).to(self.sobel.device)))[0].cpu().numpy()
        return {name: float(v) for name, v in zip(self.class_names, p, strict=True)}

    def calibrated(self, logits: torch.Tensor) -> torch.Tensor:
        """(B, classes) logits -> calibrated probabilities (softmax of logits / temperature)."""
        return torch.softmax(logits.float() / self.temperature, -1)

    def save(self, folder: str | Path) -> Path:
        """Write ``config.json`` and ``model.safetensors`` (fp16) into ``folder``; -> the folder."""
        from safetensors.torch import save_file

        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        state = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(out / WEIGHTS_NAME))
        (out / CONFIG_NAME).write_text(json.dumps({"_class_name": "TaskClassifier", **self.config}, indent=2) + "\n")
        return out


def _read_config(folder: Path) -> dict[str, Any]:
    path = folder / CONFIG_NAME
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"task classifier: no {CONFIG_NAME} in {folder}") from None
    except (OSError, ValueError) as exc:
        raise ValueError(f"task classifier config {path}: not readable JSON ({exc})") from None
    keys = ("class_names", "widths", "input_size", "temperature", "threshold")
    if not isinstance(config, dict) or config.get("_class_name") != "TaskClassifier" or any(k not in config for k in keys):
        raise ValueError(f"task classifier config {path}: expected a TaskClassifier config with {', '.join(keys)} "
                         "(retrain it with `stablemotion train-task-classifier`)")
    return {k: config[k] for k in keys}


@functools.lru_cache(maxsize=2)
def _load_cached(folder: str, mtime: float) -> TaskClassifier:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    root = Path(folder)
    config = _read_config(root)
    try:
        model = TaskClassifier(**config)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"task classifier config {root / CONFIG_NAME}: {exc}") from None
    path = root / WEIGHTS_NAME
    if not path.is_file():
        raise FileNotFoundError(f"task classifier: no weights file {path}")
    try:
        state = load_file(str(path))  # safetensors: tensors only, nothing is unpickled
    except (SafetensorError, OSError, ValueError) as exc:
        raise ValueError(f"task classifier weights {path}: not a readable safetensors file ({exc})") from None
    try:
        model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else str(exc)
        raise ValueError(f"task classifier weights {path} do not fit its config ({first})") from None
    return model.eval()


def load_task_classifier(path: str | Path | None = None) -> TaskClassifier:
    """The classifier saved in folder ``path`` (default: the bundled one), in eval mode; cached.

    Raises:
        FileNotFoundError / ValueError: one line naming the missing or unreadable file.

    Example:
        >>> clf = load_task_classifier()
        >>> clf.class_names[0], 0.0 < clf.threshold <= 1.0
        ('none', True)
    """
    if path is None:
        from .catalog import bundled_task_classifier_path

        path = bundled_task_classifier_path()
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"task classifier folder {folder} does not exist")
    stamp = max((p.stat().st_mtime for p in (folder / CONFIG_NAME, folder / WEIGHTS_NAME) if p.is_file()), default=0.0)
    return _load_cached(str(folder.resolve()), stamp)


# --------------------------------------------------------------------------- the decision
def decide(probabilities: dict[str, float], threshold: float) -> tuple[str, float, str]:
    """The decision rule on calibrated probabilities: the most probable class if it is a task and
    its probability exceeds ``threshold``, else ``none``. -> (task, confidence, reason).

    Example:
        >>> decide({"none": 0.2, "lens": 0.75, "rsc": 0.05}, 0.9)
        ('none', 0.2, 'no task is sure enough: best guess lens at 75% <= threshold 90%')
        >>> decide({"none": 0.02, "lens": 0.95, "rsc": 0.03}, 0.9)[:2]
        ('lens', 0.95)
    """
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    best = max(probabilities, key=probabilities.__getitem__)
    p = float(min(max(probabilities[best], 0.0), 1.0))
    p_none = float(probabilities.get("none", 0.0))
    if best == "none":
        return "none", p, f"looks like an ordinary photo ({p:.0%})"
    if p > threshold:
        return best, p, f"classifier: {best} at {p:.0%} > threshold {threshold:.0%}"
    return "none", p_none, f"no task is sure enough: best guess {best} at {p:.0%} <= threshold {threshold:.0%}"


def choose_task(image: np.ndarray, classifier: Any | None = None, threshold: float | None = None) -> TaskChoice:
    """Choose the task for one uint8 (H, W, 3) RGB image (see the module doc).

    Args:
        image: uint8 (H, W, 3) RGB.
        classifier: a :class:`TaskClassifier`, or any object with ``predict_proba(image) ->
            {class: calibrated probability}`` (and optionally ``threshold``); default: the
            bundled classifier.
        threshold: the least calibrated probability of a task to act on; None = the
            classifier's own (chosen on calibration photos), else :data:`DEFAULT_THRESHOLD`.

    Returns:
        A :class:`TaskChoice`; ``task == "none"`` means: copy the image unchanged.

    Example:
        >>> from skimage import data
        >>> choose_task(data.astronaut()).task
        'none'
    """
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    from ..core.borders import detect_empty_border

    border = detect_empty_border(image)
    if border.found:
        return TaskChoice("sir", 1.0, str(border.reason), {"sir": 1.0}, "sir")
    if classifier is None:
        classifier = load_task_classifier()
    probs = {str(k): float(v) for k, v in classifier.predict_proba(image).items()}
    if threshold is None:
        threshold = float(getattr(classifier, "threshold", DEFAULT_THRESHOLD))
    task, conf, reason = decide(probs, threshold)
    return TaskChoice(task, conf, reason, probs, max(probs, key=probs.__getitem__))


# --------------------------------------------------------------------------- calibration
def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature T > 0 minimising the negative log-likelihood of ``softmax(logits / T)``.

    Args:
        logits: float (N, C) on held-out calibration samples (never used in training).
        labels: int (N,) the true classes.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> y = rng.integers(0, 3, 2000)
        >>> z = rng.normal(0, 1, (2000, 3)); z[np.arange(2000), y] += 1.0
        >>> round(fit_temperature(3 * z, y) / fit_temperature(z, y), 2)  # overconfident logits: T scales with them
        3.0
    """
    z = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
    if z.ndim != 2 or y.shape != (z.shape[0],) or len(y) == 0:
        raise ValueError(f"need logits (N, C) and labels (N,), got {tuple(z.shape)} and {tuple(y.shape)}")
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.5, max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = nn.functional.cross_entropy(z / log_t.exp(), y)
        loss.backward()
        return loss

    opt.step(closure)
    return float(math.exp(min(max(float(log_t.detach()), -5.0), 5.0)))


def choose_threshold(probs: np.ndarray, labels: np.ndarray, max_warped: float = MAX_WARPED_SHARE,
                     none_index: int = 0) -> float:
    """The least threshold under which at most ``max_warped`` of the ``none`` samples are warped.

    A sample is warped when its most probable class is a task (not ``none``) with probability
    above the threshold (:func:`decide`).

    Args:
        probs: float (N, C) calibrated probabilities on the calibration split.
        labels: int (N,) true classes; the ``none`` ones set the threshold.
        max_warped: the largest share of ``none`` samples allowed to be warped.
        none_index: the column of ``none``.

    Example:
        >>> p = np.array([[0.9, 0.1], [0.3, 0.7], [0.4, 0.6], [0.1, 0.9]])
        >>> choose_threshold(p, np.array([0, 0, 0, 1]), max_warped=0.34)  # one of three may go
        0.6
        >>> choose_threshold(p, np.array([0, 0, 0, 1]), max_warped=0.0)
        0.7
    """
    p, y = np.asarray(probs, np.float64), np.asarray(labels)
    if p.ndim != 2 or y.shape != (p.shape[0],):
        raise ValueError(f"need probs (N, C) and labels (N,), got {p.shape} and {y.shape}")
    none = p[y == none_index]
    if len(none) == 0:
        raise ValueError("choose_threshold needs calibration samples of class none")
    top = none.argmax(1)
    scores = np.sort(np.where(top != none_index, none.max(1), 0.0))[::-1]  # how sure a warp would be
    allowed = int(math.floor(max_warped * len(none) + 1e-9))
    # warped = #(scores > t): t = the (allowed+1)-th largest score keeps exactly the `allowed` above it
    return float(min(scores[allowed], 1.0)) if allowed < len(scores) else 0.0


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 10) -> float:
    """ECE: the sample-weighted mean gap |accuracy - confidence| of the top class over ``bins``
    equal-width confidence bins.

    Example:
        >>> p = np.array([[0.8, 0.2]] * 10)
        >>> round(expected_calibration_error(p, np.array([0] * 8 + [1] * 2)), 3)  # 80% sure, 80% right
        0.0
    """
    rows = reliability_table(probs, labels, bins)
    n = sum(r[1] for r in rows)
    return float(sum(r[1] * abs(r[3] - r[2]) for r in rows) / max(n, 1))


def reliability_table(probs: np.ndarray, labels: np.ndarray, bins: int = 10) -> list[tuple[str, int, float, float]]:
    """Per confidence bin of the top class: (bin "lo-hi", samples, mean confidence, accuracy); empty bins left out.

    Example:
        >>> reliability_table(np.array([[0.8, 0.2], [0.3, 0.7]]), np.array([0, 0]), bins=5)
        [('0.6-0.8', 1, 0.7, 0.0), ('0.8-1.0', 1, 0.8, 1.0)]
    """
    p, y = np.asarray(probs, np.float64), np.asarray(labels)
    conf, right = p.max(1), p.argmax(1) == y
    which = np.minimum((conf * bins).astype(int), bins - 1)
    rows = []
    for b in range(bins):
        sel = which == b
        if sel.any():
            rows.append((f"{b / bins:.1f}-{(b + 1) / bins:.1f}", int(sel.sum()), round(float(conf[sel].mean()), 4),
                         round(float(right[sel].mean()), 4)))
    return rows
