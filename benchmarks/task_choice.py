"""Accuracy of the automatic task choice (``rectify --task auto``) on held-out synthetic samples.

    python benchmarks/task_choice.py [--num 200] [--num-sir 30] [--classifier DIR] [--write]

Samples are made in memory with the held-out seed (:data:`stablemotion.model.task_choice.TEST_SEED`,
never used for training) from test photos only: ``bundled-test``, plus ``debian-test`` when
that pool is installed (``--photos`` overrides). Classes: ``sir`` (stitched / panorama / inset
borders), ``none`` (an untilted, undistorted photo crop), ``rsc`` (camera-motion rolling
shutter), ``rotation`` (default tilts, 1-12 degrees) and ``lens`` (default strengths).

Two tables: per task, the classifier's accuracy alone (argmax over its classes, on the
non-SIR samples), the whole rule's accuracy (SIR border rule, then the classifier with the
threshold; undecided counts as wrong) and its undecided rate; then the whole rule's
confusion matrix (rows: truth, columns: choice). ``--write`` puts them in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import markdown_table, write_section  # noqa: E402

TRUTH = ("sir", "none", "rsc", "rotation", "lens")


def default_photos() -> str:
    from stablemotion.data.synth import resolve_photos

    try:
        resolve_photos("debian-test")
        return "bundled-test+debian-test"
    except (ValueError, FileNotFoundError, KeyError):
        return "bundled-test"


def evaluate(num: int, num_sir: int, photos: str, classifier_dir: str | None, threshold: float,
             seed: int, min_empty: float | None = None) -> tuple[str, dict[str, float]]:
    import numpy as np

    from stablemotion.data.synth import resolve_photos
    from stablemotion.model.task_choice import (
        MIN_EMPTY_FRACTION,
        _probabilities,
        choose_task,
        classifier_sample,
        load_task_classifier,
    )

    min_empty = MIN_EMPTY_FRACTION if min_empty is None else min_empty

    clf = load_task_classifier(classifier_dir)
    paths = resolve_photos(photos)
    cols = [*TRUTH, "undecided"]
    confusion = {t: dict.fromkeys(cols, 0) for t in TRUTH}
    clf_right: dict[str, list[bool]] = {t: [] for t in TRUTH}
    for truth in TRUTH:
        for i in range(num_sir if truth == "sir" else num):
            image = classifier_sample(truth, seed, i, paths)
            choice = choose_task(image, clf, threshold, min_empty)
            confusion[truth][choice.task or "undecided"] += 1
            if truth != "sir":
                probs = _probabilities(clf, image)
                clf_right[truth].append(max(probs, key=probs.__getitem__) == truth)
    rows, summary = [], {}
    for truth in TRUTH:
        n = sum(confusion[truth].values())
        acc = confusion[truth][truth] / n
        und = confusion[truth]["undecided"] / n
        clf_acc = f"{np.mean(clf_right[truth]):.1%}" if clf_right[truth] else "(rule)"
        rows.append([truth, n, clf_acc, f"{acc:.1%}", f"{und:.1%}"])
        summary[truth] = acc
    non_sir = [x for t in TRUTH[1:] for x in clf_right[t]]
    total = sum(sum(c.values()) for c in confusion.values())
    whole = sum(confusion[t][t] for t in TRUTH) / total
    rows.append(["all", total, f"{np.mean(non_sir):.1%}", f"{whole:.1%}",
                 f"{sum(c['undecided'] for c in confusion.values()) / total:.1%}"])
    table = markdown_table(["true task", "samples", "classifier alone", f"whole rule (threshold {threshold:g})",
                            "undecided"], rows)
    matrix = markdown_table(["truth \\ choice", *cols], [[t, *(confusion[t][c] for c in cols)] for t in TRUTH])
    body = (f"Held-out synthetic samples (seed {seed}, photos `{photos}`, 192x256); SIR rule: an empty "
            f"border of at least {min_empty:.1%} of the pixels.\n\n{table}\n\n"
            f"Confusion matrix of the whole rule:\n\n{matrix}\n")
    return body, summary


def main(argv: list[str] | None = None) -> int:
    from stablemotion.model.task_choice import TEST_SEED

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--num", type=int, default=200, help="samples per non-SIR class (default 200)")
    p.add_argument("--num-sir", type=int, default=30, help="SIR samples (default 30; slower to make)")
    p.add_argument("--photos", default=None, help="photo sources (default bundled-test [+debian-test])")
    p.add_argument("--classifier", default=None, help="classifier folder (default: the bundled one)")
    p.add_argument("--threshold", type=float, default=0.6)
    p.add_argument("--seed", type=int, default=TEST_SEED)
    p.add_argument("--min-empty", type=float, default=None,
                   help="least empty-border fraction that means SIR (default: the library's, 0.005)")
    p.add_argument("--write", action="store_true", help="write the section of BENCHMARKS.md")
    args = p.parse_args(argv)
    t0 = time.time()
    body, _ = evaluate(args.num, args.num_sir, args.photos or default_photos(), args.classifier, args.threshold,
                       args.seed, args.min_empty)
    print(body)
    print(f"({time.time() - t0:.0f} s)")
    if args.write:
        write_section("task_choice", "Automatic task choice (rectify --task auto)", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
