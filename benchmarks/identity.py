"""Do no harm, before and after identity training: does a model leave a correct photo alone?

For each task (sir, rsc, rotation, lens) and each model (the bundled one and candidates) it runs
the raw model (gate off, no projection) on

* **ordinary photos** that need no correction (held-out ``bundled-test`` crops and scikit-image's
  photos, :func:`gate.undistorted_set`) at 384 x 512: the mean predicted flow (px at 384 x 512;
  target < 0.5 px) and the output's PSNR against the input (dB, capped at 60). SIR is given an
  all-content mask (no empty border) so that the model itself is tested, not the border rule;
* **distorted held-out samples** of the task (:func:`gate.distorted_set`) at 96 x 128: PSNR of
  the output against the ground truth (dB) and the flow's EPE (px). Target: at most 0.3 dB
  below the bundled model.

    python benchmarks/identity.py --num 12 --candidate sir=runs/gpu/id_sir_fp16 \
        --candidate multi=runs/gpu/id_multi_fp16 --candidate multi_e2e=runs/gpu/id_multi_e2e_fp16

A candidate named ``multi*`` serves every task; any other serves the task of its name's prefix
(``sir``, ``rsc``...). Writes the ``identity`` section of BENCHMARKS.md unless ``--no-write``.
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
import gate  # noqa: E402
from _report import markdown_table, write_section  # noqa: E402

TASKS = ("sir", "rsc", "rotation", "lens")
PHOTO_SIZE = (384, 512)


def ordinary_photos(num: int, seed: int) -> list[dict[str, np.ndarray]]:
    """``num`` ordinary photos at :data:`PHOTO_SIZE` (gate.undistorted_set at that size)."""
    return gate.undistorted_set(num, seed, PHOTO_SIZE)


def bundled_models() -> dict[str, str]:
    from stablemotion.model import bundled_model_path

    return {"sir": str(bundled_model_path("sir")), "rsc": str(bundled_model_path("rsc")),
            "rotation": str(bundled_model_path("rotation")), "lens": str(bundled_model_path("lens"))}


def serves(name: str, task: str) -> bool:
    return name.startswith("multi") or name.split("_")[0] == task


def score(pipe, task: str, photos: list[dict], distorted: list[dict]) -> dict:
    ph = gate.run(pipe, task, photos)
    di = gate.run(pipe, task, distorted)
    return {
        "flow_photos": float(np.mean([np.linalg.norm(r["flow"], axis=-1).mean() for r in ph])),
        "psnr_photos": float(np.mean([gate.psnr(r["image"], s["image"]) for r, s in zip(ph, photos, strict=True)])),
        "psnr_distorted": float(np.mean([gate.psnr(r["image"], s["gt"]) for r, s in zip(di, distorted, strict=True)])),
        "psnr_input": float(np.mean([gate.psnr(s["image"], s["gt"]) for s in distorted])),
        "epe": float(np.mean([np.linalg.norm(r["flow"] - s["flow"], axis=-1).mean()
                              for r, s in zip(di, distorted, strict=True)])),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--num", type=int, default=12, help="images per task and group (default 12)")
    ap.add_argument("--seed", type=int, default=7000, help="held-out sample seed (default 7000)")
    ap.add_argument("--candidate", action="append", default=[], metavar="NAME=FOLDER",
                    help="a pipeline folder to compare with the bundled model (NAME multi* serves every task)")
    ap.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--note", default="")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from stablemotion.model import load_pipeline

    candidates = dict(c.split("=", 1) for c in args.candidate)
    bundled = bundled_models()
    photos = ordinary_photos(args.num, args.seed)
    rows, cache = [], {}
    t0 = time.perf_counter()
    for task in args.tasks:
        distorted = gate.distorted_set(task, args.num, args.seed)
        models = [("bundled", bundled[task])] + [(n, f) for n, f in candidates.items() if serves(n, task)]
        for name, folder in models:
            pipe = cache.setdefault(folder, load_pipeline(folder, torch.float32, progress=False))
            r = {"task": task, "model": name, **score(pipe, task, photos, distorted)}
            rows.append(r)
            print(f"{task:9s} {name:12s} photos: flow {r['flow_photos']:6.2f} px, PSNR {r['psnr_photos']:5.2f} | "
                  f"distorted: PSNR {r['psnr_input']:5.2f} -> {r['psnr_distorted']:5.2f}, EPE {r['epe']:.2f}", flush=True)
    print(f"{time.perf_counter() - t0:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    if args.no_write:
        return
    base = {r["task"]: r for r in rows if r["model"] == "bundled"}
    table = markdown_table(
        ["task", "model", "ordinary photos: mean flow (px, 384x512)", "photos: output vs input (dB)",
         "distorted: input (dB)", "distorted: output (dB)", "vs bundled (dB)", "distorted: EPE (px)"],
        [[r["task"], r["model"], f"{r['flow_photos']:.2f}", f"{r['psnr_photos']:.2f}", f"{r['psnr_input']:.2f}",
          f"{r['psnr_distorted']:.2f}", f"{r['psnr_distorted'] - base[r['task']]['psnr_distorted']:+.2f}",
          f"{r['epe']:.2f}"] for r in rows],
    )
    body = (f"{args.num} ordinary photos (held-out crops and scikit-image's, PSNR capped at 60 dB) and "
            f"{args.num} distorted held-out samples per task, raw model (gate off, no projection). Targets: mean flow "
            "on ordinary photos < 0.5 px at 384x512; distorted sets at most 0.3 dB below the bundled model.\n\n"
            + table + (f"\n\n{args.note}" if args.note else ""))
    write_section("identity", "Do no harm: identity training (ordinary photos left alone)", body)


if __name__ == "__main__":
    main()
