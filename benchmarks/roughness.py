"""Flow roughness at the image border and the mesh regularisation (issue: real photos).

    python benchmarks/roughness.py [--num 32] [--out-size 384x512]

On the held-out synthetic SIR and RSC test sets of ``benchmarks/mini_models.py`` (photos no
training sample uses), for the bundled model of each task, it measures the **roughness** of a
flow -- the mean magnitude of its discrete Laplacian (5-point, both components, pixels) -- in
the outer band (8% of the height / width on each side) and in the centre, at the output
resolution ``--out-size`` (the flow upsampled there with the pipeline's rule, as it is applied
to a real photo), for:

* the ground-truth flow;
* the flow codec alone: the ground truth encoded and decoded by the model's VAE (no UNet);
* the model's prediction (1 step), and the same with ``flow_regularization="mesh"``
  (:func:`stablemotion.flow.mesh_regularize`).

The band/centre ratio says whether the border is rougher than the inside; the issue's target
is the prediction's ratio within 1.2x of the ground truth's and the round trip's roughness
within 2x of the ground truth's. PSNR/SSIM (whole frame, uint8) and flow EPE against the
ground truth say what the regularisation costs or gains.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import markdown_table, write_section  # noqa: E402
from mini_models import SYNTH, test_set  # noqa: E402
from stablemotion.flow import RELEASED_FLOW_RESIZE, encode_flow, resize_flow  # noqa: E402
from stablemotion.labelling import warp_numpy  # noqa: E402
from stablemotion.metrics import psnr, ssim  # noqa: E402

BAND = 0.08


def roughness(flow: torch.Tensor, band: float = BAND) -> tuple[float, float]:
    """(2, H, W) pixels -> mean |Laplacian| (pixels) in the outer band and in the centre."""
    f = flow.double()
    lap = (f[:, 1:-1, 2:] + f[:, 1:-1, :-2] + f[:, 2:, 1:-1] + f[:, :-2, 1:-1] - 4 * f[:, 1:-1, 1:-1]).abs().sum(0)
    h, w = lap.shape
    bh, bw = max(1, round(band * (h + 2))), max(1, round(band * (w + 2)))
    inner = torch.zeros_like(lap, dtype=torch.bool)
    inner[bh : h - bh, bw : w - bw] = True
    return float(lap[~inner].mean()), float(lap[inner].mean())


def _up(flow: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return resize_flow(flow[None].float(), size, **RELEASED_FLOW_RESIZE)[0]


def stitched_test_set(num: int, size: tuple[int, int], seed: int) -> list[dict[str, np.ndarray]]:
    """Held-out SIR samples with the "stitched" border style (outlines of real stitched panoramas)."""
    from stablemotion.synth import bundled_photo_paths, make_sample

    photos = [str(p) for p in bundled_photo_paths("bundled-test")]
    out = []
    for i in range(num):
        s = make_sample(SYNTH["sir"], seed, i, size, photos, style="stitched", rows=12, cols=16, white_fraction=0.3)
        out.append({"image": s.input, "mask": s.mask, "gt": s.gt, "flow": s.flow})
    return out


def border_left(mask: np.ndarray, flow: np.ndarray, frame: int = 4) -> float:
    """Share of the output's outer ``frame``-px frame that samples the empty area (warped mask < 0.5)."""
    m = torch.from_numpy((mask > 127).astype(np.float32))[None]
    f = torch.from_numpy(flow).permute(2, 0, 1)
    from stablemotion.flow import warp

    valid = warp(m, f, padding="border")[0].numpy() >= 0.5
    ring = np.ones_like(valid)
    ring[frame:-frame, frame:-frame] = False
    return float((~valid[ring]).mean())


@torch.no_grad()
def measure(task: str, num: int, out_size: tuple[int, int], seed: int, style: str = "inset",
            model: str | None = None) -> list[dict]:
    from stablemotion.model import load_bundled_pipeline, load_pipeline
    from stablemotion.tasks import get_task

    pipe = load_bundled_pipeline(task) if model is None else load_pipeline(model, torch.float32, progress=False)
    pipe.set_progress_bar_config(disable=True)
    padding = get_task(task).padding
    size = tuple(pipe.config.default_processing_resolution)
    samples = stitched_test_set(num, size, seed) if style == "stitched" else test_set(task, num, size, seed)
    task_label = f"{task} ({style} borders)" if task == "sir" else task
    acc: dict[str, list] = {}
    for i, s in enumerate(samples):
        gt_flow = torch.from_numpy(s["flow"]).permute(2, 0, 1).float()
        codec = pipe.decode_flow(pipe.encode(encode_flow(gt_flow[None], pipe.task.flow_gamma)))[0]
        rows = {"ground truth": (gt_flow, None), "flow codec round trip (VAE only)": (codec.cpu(), None)}
        for label, reg in (("model, 1 step", "none"), ("model, 1 step, mesh regularisation", "mesh")):
            out = pipe(s["image"], mask=s.get("mask"), generator=torch.Generator().manual_seed(i), output_type="np",
                       show_progress_bar=False, flow_regularization=reg)
            rows[label] = (torch.from_numpy(out.flow[0]).permute(2, 0, 1), out.flow[0])
        for label, (flow, flow_np) in rows.items():
            band, centre = roughness(_up(flow, out_size))
            rec = acc.setdefault(label, {"band": [], "centre": [], "psnr": [], "ssim": [], "epe": [], "left": [],
                                         "identity": []})
            rec["band"].append(band)
            rec["centre"].append(centre)
            if flow_np is not None:
                pred = warp_numpy(s["image"], flow_np, padding)
                rec["psnr"].append(psnr(pred, s["gt"]))
                rec["ssim"].append(ssim(pred, s["gt"]))
                rec["epe"].append(float(np.linalg.norm(flow_np - s["flow"], axis=-1).mean()))
                rec["identity"].append(psnr(s["image"], s["gt"]))
                if "mask" in s:
                    rec["left"].append(border_left(s["mask"], flow_np))
    gt_ratio = np.mean(acc["ground truth"]["band"]) / np.mean(acc["ground truth"]["centre"])
    gt_rough = np.mean(acc["ground truth"]["band"] + acc["ground truth"]["centre"])
    out = []
    for label, rec in acc.items():
        band, centre = float(np.mean(rec["band"])), float(np.mean(rec["centre"]))
        out.append({
            "task": task_label, "flow": label, "band": band, "centre": centre, "ratio": band / centre,
            "ratio_vs_gt": band / centre / gt_ratio,
            "rough_vs_gt": float(np.mean(rec["band"] + rec["centre"])) / gt_rough,
            "psnr": float(np.mean(rec["psnr"])) if rec["psnr"] else None,
            "ssim": float(np.mean(rec["ssim"])) if rec["ssim"] else None,
            "epe": float(np.mean(rec["epe"])) if rec["epe"] else None,
            "gain": float(np.mean(rec["psnr"]) - np.mean(rec["identity"])) if rec["psnr"] else None,
            "left": float(np.mean(rec["left"])) if rec["left"] else None,
        })
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", nargs="+", default=["sir", "rsc"])
    ap.add_argument("--num", type=int, default=32, help="held-out samples per task (default 32)")
    ap.add_argument("--seed", type=int, default=1, help="test-set seed (default 1, as configs/mini_data.sh)")
    ap.add_argument("--out-size", default="384x512", help="HxW the flows are measured at (default 384x512)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--stitched", action="store_true", help="also SIR samples with stitched-panorama borders")
    ap.add_argument("--sir-model", default=None, help="SIR pipeline folder (default: the bundled model)")
    ap.add_argument("--rsc-model", default=None, help="RSC pipeline folder (default: the bundled model)")
    ap.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out_size = tuple(int(v) for v in args.out_size.lower().split("x"))
    models = {"sir": args.sir_model, "rsc": args.rsc_model}
    rows = [r for task in args.tasks for r in measure(task, args.num, out_size, args.seed, model=models[task])]
    if args.stitched and "sir" in args.tasks:
        rows += measure("sir", args.num, out_size, args.seed, style="stitched", model=args.sir_model)

    def fmt(v: float | None, spec: str) -> str:
        return "-" if v is None else format(v, spec)

    table = [[r["task"], r["flow"], fmt(r["band"], ".3f"), fmt(r["centre"], ".3f"), fmt(r["ratio"], ".2f"),
              fmt(r["ratio_vs_gt"], ".2f"), fmt(r["rough_vs_gt"], ".1f"), fmt(r["psnr"], ".2f"), fmt(r["gain"], "+.2f"),
              fmt(r["ssim"], ".4f"), fmt(r["epe"], ".2f"), "-" if r["left"] is None else f"{100 * r['left']:.2f}"]
             for r in rows]
    headers = ["task", "flow", "band (px)", "centre (px)", "band/centre", "ratio / gt's", "roughness / gt's",
               "PSNR (dB)", "gain (dB)", "SSIM", "EPE (px)", "border left (%)"]
    print(markdown_table(headers, table))
    if args.no_write:
        return
    body = (
        f"Held-out synthetic test sets of `benchmarks/mini_models.py` ({args.num} samples per task, seed {args.seed}), "
        f"bundled models; roughness = mean |5-point Laplacian| of the flow (px, u + v) at {out_size[0]}x{out_size[1]} "
        f"(the flow upsampled as the pipeline applies it), band = outer {BAND:.0%} of each side. "
        "PSNR/SSIM/EPE of the warped input against the ground truth at the test-set size; gain = PSNR minus the "
        "identity's; border left = share of the output's outer 4-px frame sampled from the empty area (SIR). "
        "`stitched` rows: held-out samples whose borders are the outlines of real stitched panoramas "
        "(`synth rectangling --style stitched`), a style the bundled model was never trained on.\n\n"
        + markdown_table(headers, table)
    )
    write_section("roughness", "Flow roughness at the border, the flow codec, and the mesh regularisation", body)


if __name__ == "__main__":
    main()
