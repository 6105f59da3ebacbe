"""The automatic task choice (``rectify --task auto``) on held-out test photos: does it leave
ordinary photos alone, and which distortions does it recognise?

    python benchmarks/task_choice.py [--num 300] [--num-sir 100] [--classifier DIR] [--workers 2] [--write]

Samples are made in memory with the test seed (:data:`stablemotion.model.task_choice_training.TEST_SEED`)
from the test split of the held-out photos (:func:`~stablemotion.model.task_choice_training.held_out_photos`:
``debian-test`` when installed and ``bundled-test``, dealt alternately between the calibration
split, which set the classifier's temperature and threshold, and this test split; plus new
procedural and street scenes). Classes: ``none`` (an ordinary photo through each generator's
resampling), ``sir`` (stitched / panorama / inset borders), ``rsc`` (planar and camera
rolling shutter), ``rotation`` (tilts of 1-12 degrees, the generator's default) and ``lens``
(strengths 0.05-0.35, the default). Each goes through the whole rule: the strict empty-border
detector, then the calibrated classifier and its threshold (anything not sure enough is "none").

Tables: targets vs measured; the confusion matrix; recall by magnitude; calibration (ECE and
a reliability table of the classifier's calibrated top-class probability); scikit-image's
photos (all must come back "none"). ``--write`` puts them in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import markdown_table, write_section  # noqa: E402

CLASSES = ("none", "sir", "rsc", "rotation", "lens")
#: Real photos shipped with scikit-image: ordinary photos that must come back "none".
REAL_PHOTOS = ("astronaut", "chelsea", "coffee", "camera", "rocket", "stereo_motorcycle", "immunohistochemistry")
#: (class, low, high, label) magnitude buckets for the recall table.
BUCKETS = (("rotation", 1.0, 2.0, "1-2 deg"), ("rotation", 2.0, 3.0, "2-3 deg"), ("rotation", 3.0, 6.0, "3-6 deg"),
           ("rotation", 6.0, 12.01, "6-12 deg"), ("lens", 0.05, 0.1, "k 0.05-0.10"), ("lens", 0.1, 0.2, "k 0.10-0.20"),
           ("lens", 0.2, 0.351, "k 0.20-0.35"))
#: The targets: ordinary photos warped at most 2%; lens and rotation recall at least 80%
#: at the visible magnitudes (rotation >= 3 degrees, lens k >= 0.1).
VISIBLE = {"rotation": 3.0, "lens": 0.1}


def _job(job: tuple[str, int, int, list[str]]) -> tuple[np.ndarray, bool, float]:
    from stablemotion.core.borders import detect_empty_border
    from stablemotion.model.task_choice import classifier_input
    from stablemotion.model.task_choice_training import classifier_sample

    label, seed, index, photos = job
    image, magnitude = classifier_sample(label, seed, index, photos)
    return classifier_input(image), bool(detect_empty_border(image).found), magnitude


def make_test_set(num: int, num_sir: int, seed: int, workers: int) -> dict[str, np.ndarray]:
    """The test samples: classifier inputs, labels, the detector's verdicts and magnitudes."""
    from stablemotion.model.task_choice_training import held_out_photos

    photos = held_out_photos("test")
    jobs = [(c, seed, i, photos) for c in CLASSES for i in range(num_sir if c == "sir" else num)]
    if workers > 1:
        from stablemotion.data.synthesis import pool_context

        with pool_context().Pool(workers) as pool:
            out = pool.map(_job, jobs, chunksize=8)
    else:
        out = [_job(j) for j in jobs]
    return {"x": np.stack([o[0] for o in out]), "y": np.array([CLASSES.index(j[0]) for j in jobs]),
            "border": np.array([o[1] for o in out]), "m": np.array([o[2] for o in out], np.float32)}


def _pct(num: int, den: int) -> str:
    return f"{num / den:.1%} ({num}/{den})" if den else "n/a"


def evaluate(data: dict[str, np.ndarray], classifier_dir: str | None) -> tuple[str, dict[str, float]]:
    import torch

    from stablemotion.model.task_choice import (
        decide,
        expected_calibration_error,
        load_task_classifier,
        reliability_table,
    )
    from stablemotion.model.task_choice_training import classifier_logits

    clf = load_task_classifier(classifier_dir)
    if tuple(clf.class_names) != CLASSES:
        raise ValueError(f"the classifier's classes are {clf.class_names}, expected {list(CLASSES)}")
    logits = torch.from_numpy(classifier_logits(clf, data["x"]))
    probs, raw = clf.calibrated(logits).numpy(), torch.softmax(logits, -1).numpy()
    y, border, mag = data["y"], data["border"], data["m"]
    chosen = np.array([CLASSES.index("sir") if b else CLASSES.index(decide(dict(zip(CLASSES, p, strict=True)),
                                                                               clf.threshold)[0])
                       for p, b in zip(probs, border, strict=True)])
    alone = np.array([CLASSES.index(decide(dict(zip(CLASSES, p, strict=True)), clf.threshold)[0]) for p in probs])
    none = y == 0
    warped, warped_clf, warped_border = int((chosen[none] != 0).sum()), int((alone[none] != 0).sum()), int(border[none].sum())
    summary: dict[str, float] = {"warped": warped / max(int(none.sum()), 1)}
    rows = [["ordinary photos warped (whole rule)", "<= 2%", _pct(warped, int(none.sum()))],
            ["  of which: empty-border detector", "", _pct(warped_border, int(none.sum()))],
            ["  of which: classifier above threshold", "", _pct(warped_clf, int(none.sum()))]]
    for c in ("rotation", "lens", "rsc", "sir"):
        k = CLASSES.index(c)
        sel = y == k
        hit = int((chosen[sel] == k).sum())
        summary[c] = hit / max(int(sel.sum()), 1)
        if c in VISIBLE:
            vis = sel & (mag >= VISIBLE[c])
            unit = "deg" if c == "rotation" else ""
            rows.append([f"{c} recall, visible ({'>=' if unit else 'k >='} {VISIBLE[c]:g}{' ' + unit if unit else ''})",
                         ">= 80%", _pct(int((chosen[vis] == k).sum()), int(vis.sum()))])
            summary[f"{c}_visible"] = float((chosen[vis] == k).mean()) if vis.any() else 0.0
        rows.append([f"{c} recall, all test magnitudes", "(as measured)", _pct(hit, int(sel.sum()))])
    targets = markdown_table(["quantity", "target", "measured"], rows)
    matrix = markdown_table(["truth \\ choice", *CLASSES],
                            [[c, *(int(((y == k) & (chosen == j)).sum()) for j in range(len(CLASSES)))]
                             for k, c in enumerate(CLASSES)])
    bucket_rows = []
    for c, lo, hi, label in BUCKETS:
        k = CLASSES.index(c)
        sel = (y == k) & (mag >= lo) & (mag < hi)
        bucket_rows.append([c, label, int(sel.sum()), _pct(int((chosen[sel] == k).sum()), int(sel.sum())),
                            _pct(int((chosen[sel] == 0).sum()), int(sel.sum()))])
    buckets = markdown_table(["class", "magnitude", "samples", "recall", "left as none"], bucket_rows)
    ece, ece_raw = expected_calibration_error(probs, y), expected_calibration_error(raw, y)
    summary["ece"] = ece
    reliability = markdown_table(["confidence", "samples", "mean confidence", "accuracy"],
                                 [list(r) for r in reliability_table(probs, y)])
    acc = float((probs.argmax(1) == y).mean())
    body = (f"Test split: {len(y)} samples (seed {data['seed']}, held-out test photos never used in training or "
            f"calibration); classifier `{classifier_dir or 'bundled'}` ({sum(p.numel() for p in clf.parameters()) / 1e6:.2f} M "
            f"parameters), temperature {clf.temperature:.3f} and threshold {clf.threshold:.4f} fitted on the "
            f"calibration split. A task is chosen only above the threshold; otherwise the image is \"none\" "
            f"(copied unchanged).\n\n{targets}\n\n"
            f"Confusion matrix of the whole rule (detector, then classifier and threshold; rows: truth):\n\n{matrix}\n\n"
            f"Recall by magnitude (the models correct rotation 1-12 degrees and lens k 0.05-0.35; the smallest are "
            f"barely visible, and \"none\" for them is no harm):\n\n{buckets}\n\n"
            f"Calibration of the classifier's top-class probability on the test split (argmax accuracy {acc:.1%}): "
            f"ECE {ece:.3f} after temperature scaling ({ece_raw:.3f} before), 10 bins:\n\n{reliability}\n")
    return body, summary


def real_photos(classifier_dir: str | None) -> tuple[str, int]:
    """Table of scikit-image's photos through :func:`choose_task`; -> (table, how many were not "none")."""
    from skimage import data as skdata

    from stablemotion.model.task_choice import choose_task, load_task_classifier

    clf = load_task_classifier(classifier_dir)
    rows, bad = [], 0
    for name in REAL_PHOTOS:
        image = getattr(skdata, name)()
        image = image[0] if isinstance(image, tuple) else image  # stereo_motorcycle: (left, right, disparity)
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=2)
        image = np.ascontiguousarray(image[..., :3]).astype(np.uint8)
        choice = choose_task(image, clf)
        bad += choice.task != "none"
        rows.append([f"`{name}()`", f"{image.shape[1]}x{image.shape[0]}", choice.task, f"{choice.confidence:.0%}",
                     choice.reason])
    return markdown_table(["photo", "size", "choice", "confidence", "reason"], rows), bad


def main(argv: list[str] | None = None) -> int:
    from stablemotion.model.task_choice_training import TEST_SEED

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--num", type=int, default=300, help="test samples per class (default 300)")
    p.add_argument("--num-sir", type=int, default=100, help="SIR test samples (default 100)")
    p.add_argument("--classifier", default=None, help="classifier folder (default: the bundled one)")
    p.add_argument("--seed", type=int, default=TEST_SEED)
    p.add_argument("--workers", type=int, default=1, help="processes making the samples (default 1)")
    p.add_argument("--cache", type=Path, default=None, help="an .npz keeping the test samples for a rerun")
    p.add_argument("--write", action="store_true", help="write the section of BENCHMARKS.md")
    args = p.parse_args(argv)
    t0 = time.time()
    data: dict[str, Any]
    if args.cache is not None and args.cache.is_file():
        with np.load(args.cache) as f:
            data = dict(f)
    else:
        data = make_test_set(args.num, args.num_sir, args.seed, args.workers)
        if args.cache is not None:
            np.savez(args.cache, **data)
    data["seed"] = args.seed
    body, summary = evaluate(data, args.classifier)
    table, bad = real_photos(args.classifier)
    body += (f"\nscikit-image's photos, whole images through `choose_task` ({bad} of {len(REAL_PHOTOS)} not \"none\"; "
             f"`astronaut`, `rocket`, `stereo_motorcycle` and `immunohistochemistry` are training photos, the others held out):\n\n{table}\n")
    print(body)
    print(f"({time.time() - t0:.0f} s)")
    if args.write:
        write_section("task_choice", "Automatic task choice (rectify --task auto)",
                      body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
