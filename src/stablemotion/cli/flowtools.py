"""Flow utilities on the command line: ``warp``, ``flow-vis``, ``score``."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from ..io.images import DEFAULT_MAX_PIXELS
from ._options import float_arg, max_pixels_arg

# flow-vis refuses flows with a displacement longer than this many times the flow's larger side:
# no image pair gives one, so it means a broken file (and its colours would be one flat hue).
MAX_FLOW_FACTOR = 100


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("warp", help="backward-warp an image with a flow file: out(p) = image(p + flow(p))")
    p.add_argument("image", type=Path)
    p.add_argument("flow", type=Path, help=".flo, .npy (H, W, 2) or 16-bit .png flow, pixels")
    p.add_argument("--out", type=Path, required=True, help="output image path")
    p.add_argument("--padding", choices=("border", "zeros", "reflection"), default="border")
    p.add_argument("--max-pixels", type=max_pixels_arg, default=DEFAULT_MAX_PIXELS,
                   help=f"refuse images larger than this many pixels, checked from the file header "
                        f"(default {DEFAULT_MAX_PIXELS / 1e6:.0f} megapixels; 0 = no limit)")
    p.add_argument("--force", action="store_true", help="overwrite an existing output")
    p.set_defaults(func=_warp)

    p = sub.add_parser(
        "flow-vis", help="colour-code a flow file (Middlebury colour wheel)",
        description=(
            "Colour-code a flow file (Middlebury colour wheel: hue = direction, saturation = length). "
            "Flows with NaN or infinite values are refused, and so are flows with a displacement longer "
            f"than {MAX_FLOW_FACTOR}x the flow's larger side (e.g. 1e30 px): no image pair gives one, so "
            "the file is broken, and its picture would be one flat colour."
        ),
    )
    p.add_argument("flow", type=Path, help=".flo, .npy (H, W, 2) or 16-bit .png flow, pixels")
    p.add_argument("--out", type=Path, required=True, help="output .png")
    p.add_argument("--max-radius", type=float_arg(0.0, open_low=True, what="a finite number of pixels"),
                   default=None,
                   help="displacement drawn at full saturation, pixels (a finite number > 0; default: the "
                        "flow's own largest); longer vectors are drawn darker")
    p.add_argument("--force", action="store_true", help="overwrite an existing output")
    p.set_defaults(func=_flow_vis)

    p = sub.add_parser("score", help="PSNR/SSIM of a results folder against a ground-truth folder (released protocol)")
    p.add_argument("results", type=Path)
    p.add_argument("gt", type=Path)
    p.add_argument("--csv", type=Path, default=None, help="write per-image rows here")
    p.add_argument("--common-only", action="store_true", help="score names present in both folders instead of failing")
    p.add_argument("--inputs", type=Path, default=None,
                   help="folder of the method's inputs: also score the identity baseline (input vs gt) on the same images")
    p.add_argument("--markdown", type=Path, default=None, help="write the summary table (paper layout) here")
    p.set_defaults(func=_score)


def _warp(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from ..core.flow import read_flow, warp
    from ..io.images import load_image, save_image

    image = load_image(args.image, max_pixels=args.max_pixels or None)
    flow = read_flow(args.flow)
    bad = int((~np.isfinite(flow)).sum())
    if bad:
        raise ValueError(f"flow {args.flow} has {bad} non-finite values (NaN/inf); a flow must be finite pixels")
    if flow.shape[:2] != image.shape[:2]:
        raise ValueError(
            f"flow {args.flow} is {flow.shape[1]}x{flow.shape[0]} but image {args.image} is "
            f"{image.shape[1]}x{image.shape[0]} (W x H)"
        )
    img_t = torch.from_numpy(image).permute(2, 0, 1)
    flow_t = torch.from_numpy(flow).permute(2, 0, 1)
    out = warp(img_t, flow_t, padding=args.padding)
    save_image(out.permute(1, 2, 0).numpy(), args.out, overwrite=args.force)
    print(f"wrote {args.out}")
    return 0


def _flow_vis(args: argparse.Namespace) -> int:
    import numpy as np

    from ..core.flow import flow_to_color, read_flow
    from ..io.images import save_image

    if args.max_radius is not None and not (math.isfinite(args.max_radius) and args.max_radius > 0):
        raise ValueError(f"--max-radius must be a finite number > 0 (pixels), got {args.max_radius}")
    if args.out.exists() and not args.force:  # before reading a large flow
        raise FileExistsError(f"{args.out} already exists; pass --force to overwrite it")
    flow = read_flow(args.flow)
    bad = int((~np.isfinite(flow)).sum())
    if bad:
        raise ValueError(f"flow {args.flow} has {bad} NaN or infinite values (of {flow.size}); it cannot be drawn")
    mag = np.hypot(flow[..., 0].astype(np.float64), flow[..., 1].astype(np.float64))
    limit = MAX_FLOW_FACTOR * max(flow.shape[:2])
    biggest = float(mag.max(initial=0.0))
    if biggest > limit:
        raise ValueError(
            f"flow {args.flow} has displacements up to {biggest:.3g} px, more than {MAX_FLOW_FACTOR}x its "
            f"{flow.shape[1]}x{flow.shape[0]} size ({limit} px): not a flow of these pixels (a broken file?)"
        )
    save_image(flow_to_color(flow, max_radius=args.max_radius), args.out, overwrite=args.force)
    print(f"wrote {args.out} (max |flow| {biggest:.2f} px, mean {mag.mean():.2f} px)")
    return 0


def _score(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..core.metrics import evaluate_folder
    from ..evaluation.runner import score_folders, summary_markdown, write_rows_csv
    from ..io.images import atomic_path

    if args.inputs is None and args.markdown is None:
        result = evaluate_folder(
            args.results, args.gt, strict=not args.common_only, progress=lambda it: tqdm(it, desc="scoring", unit="img")
        )
        if args.csv is not None:
            result.write_csv(args.csv)
            print(f"wrote {args.csv}")
        print(f"{len(result)} images  PSNR {result.mean_psnr:.4f} dB  SSIM {result.mean_ssim:.4f}")
        return 0
    summary = score_folders(args.results, args.gt, inputs=args.inputs, strict=not args.common_only)
    m = summary.means
    if args.csv is not None:
        write_rows_csv(summary.rows, args.csv)
        print(f"wrote {args.csv}")
    if args.markdown is not None:
        with atomic_path(args.markdown) as tmp:
            tmp.write_text(summary_markdown(summary, title=f"Scores of {args.results}"))
        print(f"wrote {args.markdown}")
    line = f"{len(summary)} images  PSNR {m['psnr']:.4f} dB  SSIM {m['ssim']:.4f}"
    if args.inputs is not None:
        line += f"  (identity: PSNR {m['identity_psnr']:.4f} dB  SSIM {m['identity_ssim']:.4f})"
    print(line)
    return 0
