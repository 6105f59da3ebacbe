"""Quality of the bundled stablemotion-mini models on held-out synthetic test sets.

    python benchmarks/mini_models.py \\
        --sir-regressor runs/mini_sir_regression/regressor --rsc-regressor runs/mini_rsc_regression/regressor

The test sets are the ones ``configs/mini_data.sh`` writes (seed 1, 96 x 128, made from
:data:`stablemotion.data.synth.HELD_OUT_PHOTOS`, which no training sample uses), rebuilt here in
memory. Rows, PSNR/SSIM of the output against the ground truth (uint8, scikit-image
protocol, whole frame) and the mean end-point error of the method's flow against the synthetic
ground-truth flow (pixels; for AES the member-median flow):

* identity -- the input itself;
* exact flow -- the input warped by the synthetic ground-truth flow. For SIR it is the
  ceiling set by bilinear re-sampling; for RSC it scores *below* the identity in PSNR, because
  the whole-frame protocol charges the zero-padded pixels the rolling-shutter camera never saw
  (a flow that smears edge content into them scores higher), so EPE and SSIM are the measures
  that say whether an RSC model reads the motion;
* pseudo-flow labeller -- ``stablemotion label-flows``' estimator, which *sees the ground
  truth* (an upper reference for a flow that a mesh can express, not a competitor);
* stablemotion-mini with 1 step, 4 steps and AES-4 (4 one-step members, the released
  image-median rule), with the model's own final step (``default_final_step`` in its config),
  and 1 step with the other final step (``x0`` estimate vs the released ``prev_sample``) and with
  the other flow regularisation (``mesh``: per-cell homographies, vs ``none``);
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
from _report import markdown_table, write_section  # noqa: E402
from stablemotion.core.constants import RECTANGLING_STYLE_NAMES  # noqa: E402
from stablemotion.core.flow import warp  # noqa: E402
from stablemotion.data._common import mask_to_tensor  # noqa: E402
from stablemotion.data.labelling import LabelConfig, estimate_flow, warp_numpy  # noqa: E402
from stablemotion.data.synth import bundled_photo_paths, make_sample  # noqa: E402
from stablemotion.evaluation.score import ScoreItem  # noqa: E402
from stablemotion.evaluation.score import score as score_set  # noqa: E402
from stablemotion.io.images import image_to_tensor, tensor_to_image  # noqa: E402

SYNTH = {"sir": "rectangling", "rsc": "rolling_shutter"}


def test_set(task: str, num: int, size: tuple[int, int], seed: int, **options: object) -> list[dict[str, np.ndarray]]:
    """Held-out samples (photos no training sample uses); ``options`` go to the generator."""
    photos = [str(p) for p in bundled_photo_paths("bundled-test")]
    out = []
    for i in range(num):
        s = make_sample(SYNTH[task], seed, i, size, photos, **options)
        if task == "sir":
            out.append({"image": s.input, "mask": s.mask, "gt": s.gt, "flow": s.flow})
        else:
            out.append({"image": s.rs, "gt": s.gs, "flow": s.flow})
    return out


def score(preds: list[np.ndarray], flows: list[np.ndarray],
          samples: list[dict[str, np.ndarray]]) -> tuple[float, float, float]:
    """Mean PSNR (dB), SSIM and flow end-point error against the synthetic gt flow (pixels, all pixels),
    by the one scoring path (:func:`stablemotion.evaluation.score.score`). Flows are (H, W, 2), pixels."""
    items = [ScoreItem(str(i), p, s["gt"], f, s["flow"]) for i, (p, f, s) in enumerate(zip(preds, flows, samples, strict=True))]
    table = score_set(items)
    return table.mean_psnr, table.mean_ssim, table.mean_epe


def run_pipeline(pipe, samples, steps: int, ensemble: int, final_step: str | None = None,
                 flow_regularization: str | None = None, task: str | None = None
                 ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Run ``pipe`` on each sample (seeded by its index); ``task``: which task of a multi-task model."""
    images, flows = [], []
    for i, s in enumerate(samples):
        res = pipe(s["image"], mask=s.get("mask"), num_inference_steps=steps, ensemble_size=ensemble,
                   generator=torch.Generator().manual_seed(i), output_type="np", show_progress_bar=False,
                   final_step=final_step, flow_regularization=flow_regularization, task=task)
        images.append((res.image[0] * 255.0).round().astype(np.uint8))
        flows.append(res.flow[0])
    return images, flows


@torch.no_grad()
def run_regressor(folder: str, task: str, samples, padding: str) -> tuple[list[np.ndarray], list[np.ndarray]]:
    from stablemotion.model import FlowRegressor
    from stablemotion.tasks import get_task

    net = FlowRegressor.from_pretrained(folder).eval()
    conditions = get_task(task).conditions
    images, flows = [], []
    for s in samples:
        image = image_to_tensor(s["image"])[None]
        parts = {"image": image}
        if "mask" in s:
            parts["mask"] = mask_to_tensor(s["mask"])[None]
        flow = net(torch.cat([parts[c] for c in conditions], 1))
        images.append(tensor_to_image(warp(image, flow, padding=padding, fill=-1.0).clamp(-1, 1)[0]))  # zeros = black
        flows.append(flow[0].permute(1, 2, 0).numpy())
    return images, flows


def quality_table(rows: list[dict], method: str = "method") -> str:
    """The markdown table of score rows (task, method, psnr, gain_db, ssim, epe)."""
    return markdown_table(["task", method, "PSNR (dB)", "gain (dB)", "SSIM", "flow EPE (px)"],
                          [[r["task"], r["method"], f"{r['psnr']:.2f}", f"{r['gain_db']:+.2f}", f"{r['ssim']:.4f}",
                            f"{r['epe']:.2f}"] for r in rows])


def targets(rows: list[dict]) -> str:
    """The issue's targets, checked against the 1-step rows: SIR >= 10 dB over the identity and
    no more than 1 dB under the regression ablation (when it was run); RSC >= 2 dB over identity."""
    lines = ["Targets (1 step, computed from the rows above):", ""]
    for task, need in (("sir", 10.0), ("rsc", 2.0)):
        by = {r["method"]: r for r in rows if r["task"] == task}
        one = next((r for m, r in by.items() if m.endswith(", 1 step")), None)
        if one is None:
            continue
        line = f"- {task}: gain {one['gain_db']:+.2f} dB (target >= +{need:.0f}: {'met' if one['gain_db'] >= need else 'missed'})"
        reg = by.get("regression ablation (same size, data, budget)")
        if task == "sir" and reg is not None:
            d = one["psnr"] - reg["psnr"]
            line += f"; vs the regression ablation {d:+.2f} dB (target >= -1: {'met' if d >= -1 else 'missed'})"
        exact = by.get("exact flow (the gt flow)")
        if exact is not None and exact["gain_db"] < need:
            line += f"; the exact gt flow itself scores {exact['gain_db']:+.2f} dB under this protocol"
        lines.append(line)
    return "\n".join(lines)


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
    ap.add_argument("--rsc-motion", type=float, nargs=2, default=None, metavar=("TRANSLATION", "ROTATION"),
                    help="RSC test motion: largest translation (fraction of the size) and rotation (degrees) over "
                         "the readout (default: the generator's 0.08 and 3)")
    ap.add_argument("--sir-style", choices=RECTANGLING_STYLE_NAMES, default="inset", help="SIR test border style")
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
        options = {}
        if task == "rsc" and args.rsc_motion is not None:
            options = {"max_translation": args.rsc_motion[0], "max_rotation": args.rsc_motion[1]}
        if task == "sir" and args.sir_style != "inset":
            options = {"style": args.sir_style, "rows": 12, "cols": 16, "white_fraction": 0.3}
        samples = test_set(task, args.num, size, args.seed, **options)
        padding = get_task(task).padding
        model = getattr(args, f"{task}_model") or bundled_model_path(task)
        pipe = load_pipeline(model, torch.float32, progress=False)
        pipe.set_progress_bar_config(disable=True)
        results: list[tuple[str, tuple[list[np.ndarray], list[np.ndarray]]]] = [
            ("identity", ([s["image"] for s in samples], [np.zeros_like(s["flow"]) for s in samples])),
            ("exact flow (the gt flow)", ([warp_numpy(s["image"], s["flow"], padding) for s in samples],
                                          [s["flow"] for s in samples])),
        ]
        cfg = LabelConfig(padding=padding)
        labelled = [estimate_flow(s["image"], s["gt"], s.get("mask"), cfg).flow for s in samples]
        results.append(("pseudo-flow labeller (sees the gt)", ([warp_numpy(s["image"], f, padding) for s, f in
                                                                zip(samples, labelled, strict=True)], labelled)))
        name = args.label or (BUNDLED_MODELS[task] if getattr(args, f"{task}_model") is None else str(model))
        default_last = pipe.config.default_final_step
        other_last = "prev_sample" if default_last == "x0" else "x0"
        own_reg = pipe.config.get("default_flow_regularization", "none")
        other_reg = "none" if own_reg == "mesh" else "mesh"
        for label, steps, ens, last, flow_reg in (
            ("1 step", 1, 1, None, None), ("4 steps", 4, 1, None, None), ("AES-4", 1, 4, None, None),
            (f"1 step, final step {other_last}", 1, 1, other_last, None),
            (f"1 step, flow regularisation {other_reg}", 1, 1, None, other_reg),
        ):
            results.append((f"{name}, {label}", run_pipeline(pipe, samples, steps, ens, last, flow_reg)))
        reg = getattr(args, f"{task}_regressor")
        if reg:
            results.append(("regression ablation (same size, data, budget)", run_regressor(reg, task, samples, padding)))
        ident = None
        for label, (preds, flows) in results:
            p, s, e = score(preds, flows, samples)
            ident = p if ident is None else ident  # the first row is the identity
            rows.append({"task": task, "method": label, "psnr": p, "ssim": s, "gain_db": p - ident, "epe": e})
            print(f"{task:4s} {label:48s} PSNR {p:6.2f} dB ({p - ident:+5.2f})  SSIM {s:.4f}  EPE {e:.2f} px",
                  flush=True)
        print(f"{task}: {time.perf_counter() - t0:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    if args.no_write:
        return
    motion = "" if args.rsc_motion is None else (
        f"RSC motion: translation up to {args.rsc_motion[0]:.0%} of the size, rotation up to {args.rsc_motion[1]:g} "
        "degrees over the readout. ")
    style = "" if args.sir_style == "inset" else f"SIR borders: {args.sir_style}. "
    body = (
        motion + style
        + f"Held-out synthetic test sets: {args.num} samples per task at {size[0]}x{size[1]}, seed {args.seed}, made "
        "from photos never used in training (`HELD_OUT_PHOTOS`). PSNR/SSIM against the ground truth, uint8, "
        "whole frame; gain = PSNR minus identity; flow EPE = mean end-point error against the exact synthetic flow. "
        "The labeller sees the ground truth (a reference, not a competitor). For RSC, warping by the exact flow scores "
        "below the identity in PSNR (the zero-padded pixels the rolling-shutter camera never saw are charged), so "
        "EPE and SSIM say whether a model reads the motion.\n\n"
        + quality_table(rows)
        + "\n\n" + targets(rows)
        + (f"\n\n{args.note}" if args.note else "")
    )
    write_section(args.section, args.title, body)


if __name__ == "__main__":
    main()
