"""``stablemotion stitch``: overlapping photos -> OpenCV's stitch -> the SIR model's rectangle;
``stablemotion stitch-views``: overlapping views of one photo, to try it on.

See :mod:`stablemotion.model.stitch` and ``docs/stitch.md``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ._options import add_device_options, float_arg, int_arg, max_pixels_arg, seed_arg

_STITCH_PROJECTIONS = ("spherical", "cylindrical", "plane", "mercator", "transverseMercator", "stereographic",
                       "fisheye", "affine")


def register(sub: argparse._SubParsersAction) -> None:
    from ..io.images import DEFAULT_MAX_PIXELS

    p = sub.add_parser("stitch", help="stitch overlapping photos with OpenCV, then rectangle the stitch (SIR model)",
                       description="Stitch overlapping photos with OpenCV's stitcher, then rectangle the stitch with "
                                   "a SIR model: writes OUT (the rectangle) and OUT_stitched.png (the raw stitch).")
    p.add_argument("images", nargs="+", type=Path, metavar="IMAGE",
                   help="two or more overlapping photos, and/or folders of them (sorted by name)")
    p.add_argument("--out", type=Path, required=True, help="the rectangled panorama (.png, .jpg, .tif)")
    p.add_argument("--mode", choices=("panorama", "scans"), default="panorama",
                   help="panorama: a camera turning about its centre; scans: flat documents or a camera moving "
                        "parallel to a flat scene (affine)")
    p.add_argument("--projection", choices=_STITCH_PROJECTIONS, default=None,
                   help="how the stitch is projected (default: spherical in panorama mode; scans mode is affine)")
    p.add_argument("--model", default=None,
                   help="SIR (or multi-task) pipeline folder or hub id (default: the bundled SIR mini)")
    p.add_argument("--no-rectangle", dest="rectangle", action="store_false",
                   help="only stitch: OUT is the raw stitch, no model runs")
    p.add_argument("--save-mask", action="store_true", help="also write the stitcher's mask as OUT_mask.png")
    p.add_argument("--save-flow", action="store_true", help="also write the rectangling flow as OUT_flow.npy")
    p.add_argument("--confidence", type=float_arg(0.0, 10.0), default=1.0,
                   help="OpenCV's match confidence threshold (default 1; lower it if photos are left out)")
    p.add_argument("--compose-megapixels", type=float_arg(0.01, 1000.0), default=None,
                   help="compose the stitch at about this many megapixels per photo (default: full resolution)")
    p.add_argument("--max-pixels", type=max_pixels_arg, default=DEFAULT_MAX_PIXELS,
                   help=f"refuse photos larger than this (default {DEFAULT_MAX_PIXELS:.0e}; 0 = no limit)")
    p.add_argument("--max-work-pixels", type=int_arg(0), default=None, metavar="N",
                   help="the network's largest working size in pixels (default: the rectify default; 0 = no cap)")
    p.add_argument("--seed", type=seed_arg, default=0, help="noise seed")
    add_device_options(p)
    p.set_defaults(func=_stitch)

    v = sub.add_parser("stitch-views", help="cut overlapping views of a photo (to try `stablemotion stitch`)",
                       description="Write N overlapping views of PHOTO, left to right, each under a small "
                                   "random homography, as OUT/view_1.png ...")
    v.add_argument("photo", nargs="?", type=Path, default=None,
                   help="the photo (default: a bundled photo the models never saw, scikit-image's chelsea)")
    v.add_argument("--out", type=Path, required=True, help="folder to write the views into")
    v.add_argument("--views", type=int_arg(3, 12), default=3,
                   help="how many views, 3 to 12 (default 3; each overlaps the next by a third or more)")
    v.add_argument("--seed", type=seed_arg, default=0, help="random seed of the views (default 0)")
    v.set_defaults(func=_views)


def _inputs(paths: list[Path]) -> list[Path]:
    from ..io.images import list_images

    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(list_images(path).values())
            if not found:
                raise ValueError(f"no images (.png, .jpg, ...) in the folder {path}")
            files += found
        elif not path.exists():
            raise FileNotFoundError(f"{path} does not exist")
        else:
            files.append(path)
    return files


def _stitch(args: argparse.Namespace) -> int:
    from ..model.stitch import rectangle_stitch, stitch, write_stitch

    files = _inputs(args.images)
    if args.out.resolve() in {f.resolve() for f in files}:
        raise ValueError(f"--out {args.out} is one of the photos; choose another file")
    max_pixels = None if args.max_pixels <= 0 else int(args.max_pixels)
    res = stitch(files, mode=args.mode, projection=args.projection, rectangle=False, confidence=args.confidence,
                 compose_megapixels=args.compose_megapixels, max_pixels=max_pixels)
    h, w = res.stitched.shape[:2]
    print(f"stitched {len(res.used)} of {len(files)} photos ({res.mode}, {res.projection}): {w} x {h}, "
          f"{100 * (1 - res.mask.mean()):.1f}% empty, {res.stitch_seconds:.1f} s")
    if res.left_out:
        print(f"warning: OpenCV left out {', '.join(res.left_out)} (no confident match with the others; "
              "lower --confidence or add overlap)")
    if args.rectangle:
        pipe = _load(args)
        from ..core.large_image import MAX_WORK_PIXELS

        work = MAX_WORK_PIXELS if args.max_work_pixels is None else args.max_work_pixels
        rectangle_stitch(res, pipe, max_work_pixels=work, seed=args.seed)
        note = f" ({res.rectified.reason})" if res.rectified is not None and res.rectified.unchanged else ""
        print(f"rectangled in {res.rectangle_seconds:.1f} s{note}")
    out = args.out
    written = write_stitch(res, out, mask=out.with_name(f"{out.stem}_mask.png") if args.save_mask else None,
                           flow=out.with_name(f"{out.stem}_flow.npy") if args.save_flow and args.rectangle else None)
    for path in written:
        print(f"wrote {path}")
    return 0


def _load(args: argparse.Namespace) -> object:
    from ._options import load_model, prepare_for_inference, resolve_device, resolve_dtype

    device = resolve_device(args.device)
    pipe = load_model(args.model, "sir", resolve_dtype(args.dtype, device))
    prepare_for_inference(pipe, device, args.channels_last)
    return pipe


def _views(args: argparse.Namespace) -> int:
    import numpy as np

    from ..core.stitching import overlapping_views
    from ..data.synthesis.photos import bundled_photo_paths
    from ..io.images import load_image, save_image

    photo_path = args.photo or next(p for p in bundled_photo_paths("bundled-test") if p.name == "chelsea.png")
    photo = load_image(photo_path)
    scale = max(1.0, 400 / min(photo.shape[:2]))  # views of at least ~250 px a side match reliably
    if scale > 1:
        import cv2

        photo = cv2.resize(photo, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
    args.out.mkdir(parents=True, exist_ok=True)
    for i, view in enumerate(overlapping_views(photo, args.views, np.random.default_rng(args.seed))):
        print(f"wrote {save_image(view, args.out / f'view_{i + 1}.png')}")
    return 0
