"""Data commands: ``synth`` (synthetic datasets) and ``label-flows`` (pseudo flows).

Examples::

    stablemotion synth rectangling /tmp/dird --num 500 --size 384x512 --split training
    stablemotion synth rolling-shutter /tmp/rs --num 200 --size 480x640 --npz-size 256x256 --split test
    stablemotion label-flows /data/DIR-D --split training --out /data/DIR-D/training/flow
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from ..constants import DIS_PRESET_NAMES, RECTANGLING_STYLE_NAMES, RS_MOTION_NAMES
from ._options import size_arg


def _min_size(minimum: int, what: str) -> Any:
    """``size_arg`` (the one size rule of the command line) with a lower bound per side."""
    parse = size_arg(what)

    def check(text: str) -> tuple[int, int]:
        size = parse(text)
        if min(size) < minimum:
            raise argparse.ArgumentTypeError(f"{what} must be at least {minimum}x{minimum}, got {text!r}")
        return size

    return check


_size = _min_size(8, "--size")
_cells = _min_size(1, "--mesh")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("synth", help="make a synthetic dataset with exact flows from ordinary photos")
    kinds = p.add_subparsers(dest="kind", metavar="KIND", required=True)
    for kind, help_text in (
        ("rectangling", "stitched-image rectangling samples in the DIR-D layout (input, mask, gt, flow)"),
        ("rolling-shutter", "rolling-shutter samples in the RS-Real layout (npz with condition, out_flow, gs)"),
    ):
        k = kinds.add_parser(kind, help=help_text)
        k.add_argument("out", type=Path, help="dataset root to write (the split folder goes inside)")
        k.add_argument("--num", type=int, default=100, help="number of samples (default 100)")
        default_size = "384x512" if kind == "rectangling" else "256x256"
        k.add_argument("--size", type=_size, default=_size(default_size), help=f"HxW in pixels (default {default_size})")
        default_split = "training" if kind == "rectangling" else "train"
        k.add_argument("--split", default=default_split, help=f"split folder name (default {default_split})")
        k.add_argument("--seed", type=int, default=0, help="sample i depends only on (seed, i)")
        k.add_argument("--start", type=int, default=0, help="index of the first sample (to extend a dataset)")
        k.add_argument("--photos", default=None,
                       help="a photo folder, or sources joined by '+': bundled, bundled-train, bundled-test, "
                            "procedural, urban, or an installed photo pool (debian, debian-train, debian-test, ...: "
                            "see `stablemotion photos` and configs/install_photos.sh); weight with '*N', e.g. "
                            "debian-train+procedural*10; default: bundled")
        k.add_argument("--ext", choices=("jpg", "png"), default="jpg", help="image format (jpg as the real datasets)")
        k.add_argument("--quality", type=int, default=95, help="JPEG quality (default 95)")
        k.add_argument("--workers", type=int, default=2, help="processes (default 2)")
        k.add_argument("--force", action="store_true", help="write into non-empty folders")
        if kind == "rectangling":
            k.add_argument("--max-inset", type=float, default=0.12, help="largest boundary inset, fraction of size")
            k.add_argument("--mesh", type=_cells, default=None,
                           help="mesh cells ROWSxCOLS (default 6x8 for inset, 12x16 for stitched)")
            k.add_argument("--style", choices=RECTANGLING_STYLE_NAMES, default="inset",
                           help="border shapes: inset (smooth irregular insets), stitched (outlines of 2-4 "
                                "projectively warped views) or panorama (views of a turning camera on the sphere, "
                                "as stitching software makes them)")
            k.add_argument("--white-fraction", type=float, default=0.0,
                           help="share of samples whose empty area is white instead of black (default 0)")
        else:
            k.add_argument("--npz-size", type=_size, default=None,
                           help="HxW of the arrays in the npz files (default: --size); flows are rescaled")
            k.add_argument("--max-translation", type=float, default=0.08, help="translation over the readout, fraction of size")
            k.add_argument("--max-rotation", type=float, default=3.0, help="rotation over the readout, degrees")
            k.add_argument("--motion", choices=RS_MOTION_NAMES, default="planar",
                           help="camera motion: planar (in-plane shift and rotation, --max-translation/--max-rotation) "
                                "or camera (3-D rotation and translation per row over a tilted plane, "
                                "--max-displacement)")
            k.add_argument("--max-displacement", type=float, default=0.1,
                           help="camera motion: largest displacement, fraction of the width (default 0.1)")
            k.add_argument("--full-res-jpg", action=argparse.BooleanOptionalAction, default=None,
                           help="also write jpg/ and jpg_gt/ full-resolution images (default: for split 'test')")
        k.set_defaults(func=_synth)

    p = sub.add_parser("label-flows", help="estimate pseudo flows (.npy) for (input, gt) pairs, with a quality report")
    p.add_argument("dataset", type=Path, help="folder with input/ and gt/ (and mask/), or a DIR-D root")
    p.add_argument("--out", type=Path, required=True, help="flow folder to write NNNNN.npy into")
    p.add_argument("--split", default=None, help="split inside DATASET (default: DATASET itself, else training)")
    p.add_argument("--workers", type=int, default=2, help="processes (default 2)")
    p.add_argument("--overwrite", action="store_true", help="re-label pairs whose flow exists (default: skip them)")
    p.add_argument("--limit", type=int, default=None, help="label only the first N pairs")
    p.add_argument("--preset", choices=DIS_PRESET_NAMES, default="medium",
                   help="DIS optical-flow preset (default medium)")
    p.add_argument("--cell", type=int, default=32, help="final mesh cell size in pixels (default 32)")
    p.add_argument("--padding", choices=("border", "zeros"), default="border", help="warp padding for scoring")
    p.add_argument("--report", type=Path, default=None, help="CSV report path (default OUT/labelling_report.csv)")
    p.set_defaults(func=_label)


def _synth(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..synth import write_rectangling_dataset, write_rolling_shutter_dataset

    if args.workers < 1:
        raise ValueError(f"--workers must be at least 1, got {args.workers}")
    def progress(it: Iterable[str], total: int) -> Iterable[str]:
        return tqdm(it, total=total, desc=f"synth {args.kind}", unit="sample")

    common = {
        "num": args.num, "size": args.size, "split": args.split, "seed": args.seed, "photos": args.photos,
        "ext": args.ext, "quality": args.quality, "start": args.start, "workers": args.workers,
        "overwrite": args.force, "progress": progress,
    }
    if args.kind == "rectangling":
        mesh = args.mesh or ((6, 8) if args.style == "inset" else (12, 16))
        names = write_rectangling_dataset(
            args.out, rows=mesh[0], cols=mesh[1], max_inset=args.max_inset, style=args.style,
            white_fraction=args.white_fraction, **common
        )
        layout = f"{args.out}/{args.split}/{{input,mask,gt,flow}}"
    else:
        names = write_rolling_shutter_dataset(
            args.out, npz_size=args.npz_size, full_res_jpg=args.full_res_jpg,
            max_translation=args.max_translation, max_rotation=args.max_rotation, motion_model=args.motion,
            max_displacement=args.max_displacement, **common,
        )
        layout = f"{args.out}/{args.split}/npz"
    print(f"wrote {len(names)} samples ({names[0]}..{names[-1]}) to {layout}")
    return 0


def _label(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..labelling import LabelConfig, label_flows

    if args.workers < 1:
        raise ValueError(f"--workers must be at least 1, got {args.workers}")
    config = LabelConfig(preset=args.preset, cell=args.cell, padding=args.padding)
    def progress(it: Iterable[dict[str, object]], total: int) -> Iterator[dict[str, object]]:
        with tqdm(it, total=total, desc="labelling", unit="img") as bar:
            for row in bar:
                bar.set_postfix(psnr=f"{float(row['psnr']):.2f}")  # type: ignore[arg-type]
                yield row

    report = label_flows(args.dataset, args.out, split=args.split, config=config, workers=args.workers,
                         overwrite=args.overwrite, limit=args.limit, progress=progress, report=args.report)
    s = report.summary()
    print(f"{s['images']} pairs ({s['labelled']} labelled, {s['skipped']} already done) -> {args.out}")
    print(f"warp(input, flow) vs gt: PSNR {report.mean_psnr:.2f} dB, SSIM {report.mean_ssim:.4f}  "
          f"(identity: {report.mean_identity_psnr:.2f} dB, {report.mean_identity_ssim:.4f})")
    report_path = args.report if args.report is not None else args.out / "labelling_report.csv"
    print(f"report: {report_path}")
    return 0
