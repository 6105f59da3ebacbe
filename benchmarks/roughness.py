"""Flow roughness at the image border and the mesh regularisation (issue: real photos).

    python benchmarks/roughness.py [--num 32] [--out-size 384x512] [--vae runs/mini_vae_smooth/vae]

On the held-out synthetic SIR and RSC test sets of ``benchmarks/mini_models.py`` (photos no
training sample uses), for the bundled model of each task, it measures the **roughness** of a
flow -- the mean magnitude of its discrete Laplacian (5-point, both components, pixels) -- in
the outer band (8% of the height / width on each side) and in the centre, at the output
resolution ``--out-size`` (the flow upsampled there with the pipeline's rule, as it is applied
to a real photo), for:

* the ground-truth flow;
* the flow codec alone: the ground truth encoded and decoded by the model's VAE (no UNet);
* the model's prediction (1 step), and the same with ``flow_regularization="mesh"``
  (:func:`stablemotion.core.flow.mesh_regularize`).

``--vae FOLDER`` (repeatable) measures the same rows again with that VAE (an ``AutoencoderKL``
folder, e.g. a decoder fine-tuned by ``configs/mini_vae_smooth.yaml``) swapped into both
models, in the same run; it is rounded to fp16 first, as the bundled weights are stored.

``--suspects`` adds one cheap measurement per suspect of the border roughness (a second table):

* asymmetric right/bottom padding of the stride-2 downsamplers (VAE encoder): the round trip of
  each flow and of its mirrored copy (mirrored back after decoding), roughness in the left /
  right / top / bottom strips at the network's resolution. Grouped by the side of the *network*
  a strip went through (right: the direct right strip + the mirrored path's left strip), the
  right/left and bottom/top ratios are ~1 unless the padding shapes the border;
* resize alignment: band/centre of the ground truth and of the round trip at the network's
  resolution (no resize), and at the output size with the released rule (align_corners=True)
  and with align_corners=False;
* the mask's border (SIR): the model's band/centre with the real mask and with an all-valid mask;
* the warp's border padding in the losses: share of band pixels where the flow samples outside
  the input (where the warp loss's border/zeros padding, and its flat gradient, applies).

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
from stablemotion.core.flow import RELEASED_FLOW_RESIZE, encode_flow, resize_flow  # noqa: E402
from stablemotion.core.metrics import epe, psnr, ssim  # noqa: E402
from stablemotion.data.labelling import warp_numpy  # noqa: E402

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


def side_roughness(flow: torch.Tensor, band: float = BAND) -> dict[str, float]:
    """(2, H, W) pixels -> mean |Laplacian| in the left / right / top / bottom strips (``band`` wide)."""
    f = flow.double()
    lap = (f[:, 1:-1, 2:] + f[:, 1:-1, :-2] + f[:, 2:, 1:-1] + f[:, :-2, 1:-1] - 4 * f[:, 1:-1, 1:-1]).abs().sum(0)
    h, w = lap.shape
    bh, bw = max(1, round(band * (h + 2))), max(1, round(band * (w + 2)))
    return {"left": float(lap[:, :bw].mean()), "right": float(lap[:, w - bw :].mean()),
            "top": float(lap[:bh].mean()), "bottom": float(lap[h - bh :].mean())}


def mirror(flow: torch.Tensor, axis: str) -> torch.Tensor:
    """The flow of the mirrored image pair: (B, 2, H, W) flipped left-right ("h") or top-bottom
    ("v"), with the mirrored component negated. Its own inverse."""
    if axis == "h":
        out = flow.flip(-1).clone()
        out[:, 0] = -out[:, 0]
    else:
        out = flow.flip(-2).clone()
        out[:, 1] = -out[:, 1]
    return out


def outside_share(flow: torch.Tensor, band: float = BAND) -> float:
    """Share of the outer-band pixels of (2, H, W) whose sample point ``p + flow(p)`` lies outside
    the input frame (where a warp's border/zeros padding applies)."""
    _, h, w = flow.shape
    ys, xs = torch.meshgrid(torch.arange(h, dtype=flow.dtype), torch.arange(w, dtype=flow.dtype), indexing="ij")
    x, y = xs + flow[0], ys + flow[1]
    out = (x < 0) | (x > w - 1) | (y < 0) | (y > h - 1)
    bh, bw = max(1, round(band * h)), max(1, round(band * w))
    ring = torch.ones(h, w, dtype=torch.bool)
    ring[bh : h - bh, bw : w - bw] = False
    return float(out[ring].float().mean())


def _up(flow: torch.Tensor, size: tuple[int, int], **resize) -> torch.Tensor:
    return resize_flow(flow[None].float(), size, **(resize or RELEASED_FLOW_RESIZE))[0]


def load_vae(folder: str, fp16: bool = True):
    """An ``AutoencoderKL`` folder as float32, rounded through fp16 first (as the bundled weights are stored)."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(folder)
    if fp16:
        vae = vae.to(torch.float16)
    return vae.to(torch.float32).eval()


def stitched_test_set(num: int, size: tuple[int, int], seed: int, style: str = "stitched",
                      photos: str = "bundled-test") -> list[dict[str, np.ndarray]]:
    """Held-out SIR samples with the "stitched" border style (outlines of real stitched panoramas)
    or the "panorama" style (outlines as stitching software makes them), on held-out ``photos``
    (synth --photos syntax), a third with white empty areas."""
    from stablemotion.data.synth import make_sample, resolve_photos

    sources = resolve_photos(photos)
    out = []
    for i in range(num):
        s = make_sample(SYNTH["sir"], seed, i, size, sources, style=style, rows=12, cols=16, white_fraction=0.3)
        out.append({"image": s.input, "mask": s.mask, "gt": s.gt, "flow": s.flow})
    return out


def border_left(mask: np.ndarray, flow: np.ndarray, frame: int = 4) -> float:
    """Share of the output's outer ``frame``-px frame that samples the empty area (warped mask < 0.5)."""
    m = torch.from_numpy((mask > 127).astype(np.float32))[None]
    f = torch.from_numpy(flow).permute(2, 0, 1)
    from stablemotion.core.flow import warp

    valid = warp(m, f, padding="border")[0].numpy() >= 0.5
    ring = np.ones_like(valid)
    ring[frame:-frame, frame:-frame] = False
    return float((~valid[ring]).mean())


@torch.no_grad()
def measure(task: str, num: int, out_size: tuple[int, int], seed: int, style: str = "inset",
            model: str | None = None, vaes: list[tuple[str, str]] | None = None, fp16: bool = True,
            suspects: bool = False, photos: str = "bundled-test") -> tuple[list[dict], list[dict]]:
    """Rows of the main table (one set per VAE: "bundled" and each ``vaes`` (label, folder)) and
    of the suspects table."""
    from stablemotion.model import load_bundled_pipeline, load_pipeline
    from stablemotion.tasks import get_task

    pipe = load_bundled_pipeline(task) if model is None else load_pipeline(model, torch.float32, progress=False)
    pipe.set_progress_bar_config(disable=True)
    padding = get_task(task).padding
    gamma = pipe.task.flow_gamma
    size = tuple(pipe.config.default_processing_resolution)
    samples = stitched_test_set(num, size, seed, style, photos) if style != "inset" else test_set(task, num, size, seed)
    task_label = f"{task} ({style} borders)" if task == "sir" else task
    variants = [("bundled", pipe.vae)] + [(label, load_vae(folder, fp16)) for label, folder in (vaes or [])]

    def codec(flow: torch.Tensor) -> torch.Tensor:
        return pipe.decode_flow(pipe.encode(encode_flow(flow, gamma)))

    rows_out: list[dict] = []
    sus_out: list[dict] = []
    gt_acc: dict[str, list] = {"band": [], "centre": []}
    for s_ in samples:
        band, centre = roughness(_up(torch.from_numpy(s_["flow"]).permute(2, 0, 1).float(), out_size))
        gt_acc["band"].append(band)
        gt_acc["centre"].append(centre)
    gt_ratio = np.mean(gt_acc["band"]) / np.mean(gt_acc["centre"])
    gt_rough = np.mean(gt_acc["band"] + gt_acc["centre"])
    for vae_label, vae in variants:
        pipe.vae = vae
        acc: dict[str, dict[str, list]] = {}
        sus: dict[str, list] = {}
        for i, s in enumerate(samples):
            gt_flow = torch.from_numpy(s["flow"]).permute(2, 0, 1).float()
            rt = codec(gt_flow[None])[0].cpu()
            rows = {"flow codec round trip (VAE only)": (rt, None)}
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
                if flow_np is None:
                    rec["epe"].append(float((flow - gt_flow).norm(dim=0).mean()))
                else:
                    pred = warp_numpy(s["image"], flow_np, padding)
                    rec["psnr"].append(psnr(pred, s["gt"]))
                    rec["ssim"].append(ssim(pred, s["gt"]))
                    rec["epe"].append(epe(flow_np, s["flow"]))
                    rec["identity"].append(psnr(s["image"], s["gt"]))
                    if "mask" in s:
                        rec["left"].append(border_left(s["mask"], flow_np))
            if suspects:
                _suspects(sus, s, i, gt_flow, rt, rows["model, 1 step"][0], codec, pipe, out_size)
        if vae_label == "bundled":
            rows_out.append(_row(task_label, "-", "ground truth", gt_acc, gt_ratio, gt_rough))
        for label, rec in acc.items():
            rows_out.append(_row(task_label, vae_label, label, rec, gt_ratio, gt_rough))
        if suspects:
            sus_out.append(_suspect_row(task_label, vae_label, sus))
    pipe.vae = variants[0][1]
    return rows_out, sus_out


def _row(task_label: str, vae_label: str, label: str, rec: dict, gt_ratio: float, gt_rough: float) -> dict:
    band, centre = float(np.mean(rec["band"])), float(np.mean(rec["centre"]))
    return {
        "task": task_label, "vae": vae_label, "flow": label, "band": band, "centre": centre, "ratio": band / centre,
        "ratio_vs_gt": band / centre / gt_ratio,
        "rough_vs_gt": float(np.mean(rec["band"] + rec["centre"])) / gt_rough,
        "psnr": float(np.mean(rec["psnr"])) if rec.get("psnr") else None,
        "ssim": float(np.mean(rec["ssim"])) if rec.get("ssim") else None,
        "epe": float(np.mean(rec["epe"])) if rec.get("epe") else None,
        "gain": float(np.mean(rec["psnr"]) - np.mean(rec["identity"])) if rec.get("psnr") else None,
        "left": float(np.mean(rec["left"])) if rec.get("left") else None,
    }


def _suspects(sus: dict, s: dict, i: int, gt_flow: torch.Tensor, rt: torch.Tensor, pred: torch.Tensor,
              codec, pipe, out_size: tuple[int, int]) -> None:
    """Accumulate one sample's measurements of the suspects (see the module docstring)."""
    add = lambda k, v: sus.setdefault(k, []).append(v)  # noqa: E731
    # asymmetric padding: the network's right/bottom side vs its left/top side, at the network resolution
    direct = side_roughness(rt)
    mh = side_roughness(mirror(codec(mirror(gt_flow[None], "h")), "h")[0].cpu())
    mv = side_roughness(mirror(codec(mirror(gt_flow[None], "v")), "v")[0].cpu())
    for k in ("left", "right", "top", "bottom"):
        add(f"direct_{k}", direct[k])
    add("net_right", direct["right"] + mh["left"])
    add("net_left", direct["left"] + mh["right"])
    add("net_bottom", direct["bottom"] + mv["top"])
    add("net_top", direct["top"] + mv["bottom"])
    # resize alignment: band and centre at the network resolution, released rule, align_corners=False
    for name, flow in (("gt", gt_flow), ("rt", rt)):
        for rule, f in (("native", flow), ("released", _up(flow, out_size)),
                        ("ac_false", _up(flow, out_size, mode="bilinear", align_corners=False))):
            b, c = roughness(f)
            add(f"{name}_{rule}_band", b)
            add(f"{name}_{rule}_centre", c)
    # the mask's border: the same prediction with an all-valid mask
    if "mask" in s:
        full = np.full_like(s["mask"], 255)
        out = pipe(s["image"], mask=full, generator=torch.Generator().manual_seed(i), output_type="np",
                   show_progress_bar=False, flow_regularization="none")
        for name, flow in (("mask", pred), ("nomask", torch.from_numpy(out.flow[0]).permute(2, 0, 1))):
            b, c = roughness(_up(flow, out_size))
            add(f"{name}_band", b)
            add(f"{name}_centre", c)
    # the warp's padding: band pixels sampling outside the input
    add("outside_gt", outside_share(gt_flow))
    add("outside_rt", outside_share(rt))
    add("outside_pred", outside_share(pred))


def _suspect_row(task_label: str, vae_label: str, sus: dict) -> dict:
    m = {k: float(np.mean(v)) for k, v in sus.items()}

    def ratio(prefix: str) -> float:
        return m[f"{prefix}_band"] / m[f"{prefix}_centre"]

    return {
        "task": task_label, "vae": vae_label,
        "direct": (m["direct_left"], m["direct_right"], m["direct_top"], m["direct_bottom"]),
        "net_rl": m["net_right"] / m["net_left"], "net_bt": m["net_bottom"] / m["net_top"],
        "content_rl": m["direct_right"] / m["direct_left"], "content_bt": m["direct_bottom"] / m["direct_top"],
        "gt_native": ratio("gt_native"), "gt_released": ratio("gt_released"), "gt_ac_false": ratio("gt_ac_false"),
        "rt_native": ratio("rt_native"), "rt_released": ratio("rt_released"), "rt_ac_false": ratio("rt_ac_false"),
        "native": (m["rt_native_band"], m["rt_native_centre"], m["gt_native_band"], m["gt_native_centre"]),
        "mask": ratio("mask") if "mask_band" in m else None, "nomask": ratio("nomask") if "nomask_band" in m else None,
        "outside": (m["outside_gt"], m["outside_rt"], m["outside_pred"]),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", nargs="+", default=["sir", "rsc"])
    ap.add_argument("--num", type=int, default=32, help="held-out samples per task (default 32)")
    ap.add_argument("--seed", type=int, default=1, help="test-set seed (default 1, as configs/mini_data.sh)")
    ap.add_argument("--out-size", default="384x512", help="HxW the flows are measured at (default 384x512)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--stitched", action="store_true", help="also SIR samples with stitched-panorama borders")
    ap.add_argument("--panorama", action="store_true",
                    help="also SIR samples with panorama borders (as stitching software makes them) on --photos")
    ap.add_argument("--photos", default="bundled-test",
                    help="held-out photos of the --panorama rows (synth --photos syntax, e.g. debian-test+bundled-test)")
    ap.add_argument("--sir-model", default=None, help="SIR pipeline folder (default: the bundled model)")
    ap.add_argument("--rsc-model", default=None, help="RSC pipeline folder (default: the bundled model)")
    ap.add_argument("--vae", action="append", default=[], metavar="[LABEL=]FOLDER",
                    help="also measure with this AutoencoderKL folder swapped into both models (repeatable)")
    ap.add_argument("--vae-full-precision", action="store_true",
                    help="use --vae weights as stored (default: rounded to fp16, as the bundled weights are)")
    ap.add_argument("--suspects", action="store_true", help="also the measurements of the suspects (second table)")
    ap.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md")
    ap.add_argument("--markdown", default=None, help="also write the tables to this markdown file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out_size = tuple(int(v) for v in args.out_size.lower().split("x"))
    models = {"sir": args.sir_model, "rsc": args.rsc_model}
    vaes = [tuple(v.split("=", 1)) if "=" in v else (Path(v).parent.name or v, v) for v in args.vae]
    opts = {"vaes": vaes, "fp16": not args.vae_full_precision, "suspects": args.suspects}
    rows, sus = [], []
    jobs = [(task, "inset", models[task]) for task in args.tasks]
    if args.stitched and "sir" in args.tasks:
        jobs.append(("sir", "stitched", args.sir_model))
    if args.panorama and "sir" in args.tasks:
        jobs.append(("sir", "panorama", args.sir_model))
    for task, style, model in jobs:
        photos = args.photos if style == "panorama" else "bundled-test"
        r, s_ = measure(task, args.num, out_size, args.seed, style=style, model=model, photos=photos, **opts)
        rows += r
        sus += s_

    def fmt(v: float | None, spec: str) -> str:
        return "-" if v is None else format(v, spec)

    with_vae = bool(vaes)
    table = [[r["task"], *([r["vae"]] if with_vae else []), r["flow"], fmt(r["band"], ".3f"), fmt(r["centre"], ".3f"),
              fmt(r["ratio"], ".2f"), fmt(r["ratio_vs_gt"], ".2f"), fmt(r["rough_vs_gt"], ".1f"), fmt(r["psnr"], ".2f"),
              fmt(r["gain"], "+.2f"), fmt(r["ssim"], ".4f"), fmt(r["epe"], ".2f"),
              "-" if r["left"] is None else f"{100 * r['left']:.2f}"]
             for r in rows]
    headers = ["task", *(["VAE"] if with_vae else []), "flow", "band (px)", "centre (px)", "band/centre",
               "ratio / gt's", "roughness / gt's", "PSNR (dB)", "gain (dB)", "SSIM", "EPE (px)", "border left (%)"]
    text = markdown_table(headers, table)
    if sus:
        sus_table = [[r["task"], r["vae"], " / ".join(f"{v:.3f}" for v in r["native"]),
                      f"{(r['native'][0] + r['native'][1]) / (r['native'][2] + r['native'][3]):.1f}",
                      " / ".join(f"{v:.3f}" for v in r["direct"]),
                      f"{r['content_rl']:.2f} / {r['content_bt']:.2f}", f"{r['net_rl']:.2f} / {r['net_bt']:.2f}",
                      f"{r['gt_native']:.2f} / {r['gt_released']:.2f} / {r['gt_ac_false']:.2f}",
                      f"{r['rt_native']:.2f} / {r['rt_released']:.2f} / {r['rt_ac_false']:.2f}",
                      "-" if r["mask"] is None else f"{r['mask']:.2f} / {r['nomask']:.2f}",
                      " / ".join(f"{100 * v:.1f}" for v in r["outside"])] for r in sus]
        sus_headers = ["task", "VAE", "network res.: round trip band / centre, gt band / centre (px)",
                       "network res.: round trip roughness / gt's",
                       "round trip L / R / T / B strip (px, network res.)",
                       "R/L, B/T (strips as decoded)", "R/L, B/T (network side, mirror test)",
                       "gt band/centre: native / released resize / align_corners=False",
                       "round trip band/centre: native / released / align_corners=False",
                       "model band/centre: real mask / all-valid mask",
                       "band sampling outside (%): gt / round trip / model"]
        text += "\n\nSuspects:\n\n" + markdown_table(sus_headers, sus_table)
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")
    if args.no_write:
        return
    body = (
        f"Held-out synthetic test sets of `benchmarks/mini_models.py` ({args.num} samples per task, seed {args.seed}), "
        f"bundled models; roughness = mean |5-point Laplacian| of the flow (px, u + v) at {out_size[0]}x{out_size[1]} "
        f"(the flow upsampled as the pipeline applies it), band = outer {BAND:.0%} of each side. "
        "PSNR/SSIM/EPE of the warped input against the ground truth at the test-set size (round trip: EPE only); "
        "gain = PSNR minus the identity's; border left = share of the output's outer 4-px frame sampled from the "
        "empty area (SIR). `stitched` rows: held-out samples whose borders are the outlines of real stitched panoramas "
        "(`synth rectangling --style stitched`); `panorama` rows: outlines as stitching software makes them "
        f"(`--style panorama`) on `{args.photos}`."
        + (" VAE: `bundled` = the VAE in the bundled folders; others swapped into both models (rounded to fp16)."
           if with_vae else "") + "\n\n" + text
    )
    write_section("roughness", "Flow roughness at the border, the flow codec, and the mesh regularisation", body)


if __name__ == "__main__":
    main()
