"""Quality of the bundled stablemotion-mini models on held-out synthetic test sets.

    python benchmarks/mini_models.py \\
        --sir-regressor runs/mini_sir_regression/regressor --rsc-regressor runs/mini_rsc_regression/regressor

The test sets are the ones ``configs/mini_data.sh`` writes (seed 1, 96 x 128, made from
:data:`stablemotion.synth.HELD_OUT_PHOTOS`, which no training sample uses), rebuilt here in
memory. Rows, PSNR/SSIM of the output against the ground truth (uint8, scikit-image
protocol, whole frame):

* identity -- the input itself;
* exact flow -- the input warped by the synthetic ground-truth flow: the most any flow can
  reach under this protocol (RSC loses the pixels the rolling-shutter camera never saw);
* pseudo-flow labeller -- ``stablemotion label-flows``' estimator, which *sees the ground
  truth* (an upper reference for a flow that a mesh can express, not a competitor);
* stablemotion-mini with 1 step, 4 steps and AES-4 (4 one-step members, the released
  image-median rule);
* the regression ablation (``configs/mini_*_regression.yaml``): same data, batch and
  steps, one forward pass, warp loss -- when its folder is given.
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
from _report import command_line, machine_description, markdown_table, write_section  # noqa: E402
from stablemotion._io import image_to_tensor, tensor_to_image  # noqa: E402
from stablemotion.data._common import mask_to_tensor  # noqa: E402
from stablemotion.flow import warp  # noqa: E402
from stablemotion.labelling import LabelConfig, estimate_flow, warp_numpy  # noqa: E402
from stablemotion.metrics import psnr, ssim  # noqa: E402
from stablemotion.synth import bundled_photo_paths, make_sample  # noqa: E402

SYNTH = {"sir": "rectangling", "rsc": "rolling_shutter"}


def test_set(task: str, num: int, size: tuple[int, int], seed: int) -> list[dict[str, np.ndarray]]:
    photos = [str(p) for p in bundled_photo_paths("bundled-test")]
    out = []
    for i in range(num):
        s = make_sample(SYNTH[task], seed, i, size, photos)
        if task == "sir":
            out.append({"image": s.input, "mask": s.mask, "gt": s.gt, "flow": s.flow})
        else:
            out.append({"image": s.rs, "gt": s.gs, "flow": s.flow})
    return out


def score(preds: list[np.ndarray], samples: list[dict[str, np.ndarray]]) -> tuple[float, float]:
    return (float(np.mean([psnr(p, s["gt"]) for p, s in zip(preds, samples, strict=True)])),
            float(np.mean([ssim(p, s["gt"]) for p, s in zip(preds, samples, strict=True)])))


def run_pipeline(pipe, samples, steps: int, ensemble: int) -> list[np.ndarray]:
    out = []
    for i, s in enumerate(samples):
        res = pipe(s["image"], mask=s.get("mask"), num_inference_steps=steps, ensemble_size=ensemble,
                   generator=torch.Generator().manual_seed(i), output_type="np", show_progress_bar=False)
        out.append((res.image[0] * 255.0).round().astype(np.uint8))
    return out


@torch.no_grad()
def run_regressor(folder: str, task: str, samples, padding: str) -> list[np.ndarray]:
    from stablemotion.model import FlowRegressor
    from stablemotion.tasks import get_task

    net = FlowRegressor.from_pretrained(folder).eval()
    conditions = get_task(task).conditions
    out = []
    for s in samples:
        image = image_to_tensor(s["image"])[None]
        parts = {"image": image}
        if "mask" in s:
            parts["mask"] = mask_to_tensor(s["mask"])[None]
        flow = net(torch.cat([parts[c] for c in conditions], 1))
        out.append(tensor_to_image(warp(image, flow, padding=padding).clamp(-1, 1)[0]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", nargs="+", default=["sir", "rsc"], choices=sorted(SYNTH))
    ap.add_argument("--num", type=int, default=64, help="test samples per task (default 64)")
    ap.add_argument("--seed", type=int, default=1, help="test-set seed (default 1, as configs/mini_data.sh)")
    ap.add_argument("--size", default="96x128", help="HxW of the test samples")
    ap.add_argument("--sir-model", default=None, help="SIR pipeline folder (default: the bundled model)")
    ap.add_argument("--rsc-model", default=None, help="RSC pipeline folder (default: the bundled model)")
    ap.add_argument("--sir-regressor", default=None, help="FlowRegressor folder of the SIR ablation")
    ap.add_argument("--rsc-regressor", default=None, help="FlowRegressor folder of the RSC ablation")
    ap.add_argument("--note", default="", help="a line added under the table (e.g. where the weights were trained)")
    ap.add_argument("--label", default=None, help="name of the models in the table (default: bundled name / folder)")
    ap.add_argument("--section", default="mini_models", help="BENCHMARKS.md section to (re)write")
    ap.add_argument("--title", default="stablemotion-mini quality (held-out synthetic test sets)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None, help="also write the rows here")
    ap.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from stablemotion.model import BUNDLED_MODELS, bundled_model_path, load_pipeline
    from stablemotion.tasks import get_task

    size = tuple(int(v) for v in args.size.lower().split("x"))
    rows = []
    for task in args.tasks:
        t0 = time.perf_counter()
        samples = test_set(task, args.num, size, args.seed)
        padding = get_task(task).padding
        model = getattr(args, f"{task}_model") or bundled_model_path(task)
        pipe = load_pipeline(model, torch.float32)
        pipe.set_progress_bar_config(disable=True)
        results: list[tuple[str, list[np.ndarray]]] = [("identity", [s["image"] for s in samples])]
        results.append(("exact flow (the protocol's ceiling)", [warp_numpy(s["image"], s["flow"], padding)
                                                                for s in samples]))
        cfg = LabelConfig(padding=padding)
        labelled = [estimate_flow(s["image"], s["gt"], s.get("mask"), cfg).flow for s in samples]
        results.append(("pseudo-flow labeller (sees the gt)", [warp_numpy(s["image"], f, padding) for s, f in
                                                               zip(samples, labelled, strict=True)]))
        name = args.label or (BUNDLED_MODELS[task] if getattr(args, f"{task}_model") is None else str(model))
        for label, steps, ens in (("1 step", 1, 1), ("4 steps", 4, 1), ("AES-4", 1, 4)):
            results.append((f"{name}, {label}", run_pipeline(pipe, samples, steps, ens)))
        reg = getattr(args, f"{task}_regressor")
        if reg:
            results.append(("regression ablation (same size, data, budget)", run_regressor(reg, task, samples, padding)))
        ident = score(results[0][1], samples)[0]
        for label, preds in results:
            p, s = score(preds, samples)
            rows.append({"task": task, "method": label, "psnr": p, "ssim": s, "gain_db": p - ident})
            print(f"{task:4s} {label:48s} PSNR {p:6.2f} dB ({p - ident:+5.2f})  SSIM {s:.4f}", flush=True)
        print(f"{task}: {time.perf_counter() - t0:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    if args.no_write:
        return
    body = (
        f"Held-out synthetic test sets: {args.num} samples per task at {size[0]}x{size[1]}, seed {args.seed}, made "
        "from photos never used in training (`HELD_OUT_PHOTOS`). PSNR/SSIM against the ground truth, uint8, "
        "whole frame; gain = PSNR minus identity. The labeller sees the ground truth (a reference, not a competitor).\n\n"
        + markdown_table(["task", "method", "PSNR (dB)", "gain (dB)", "SSIM"],
                         [[r["task"], r["method"], round(r["psnr"], 2), f"{r['gain_db']:+.2f}", round(r["ssim"], 4)]
                          for r in rows])
        + (f"\n\n{args.note}" if args.note else "")
        + f"\n\nCommand: `{command_line()}`  \nMachine: {machine_description()}\n"
    )
    write_section(args.section, args.title, body)


if __name__ == "__main__":
    main()
