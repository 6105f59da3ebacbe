"""``stablemotion demo``: the project's main job on bundled data, offline, on CPU.

For now it shows the motion representation end to end: a bundled photo is warped by a
known smooth mesh flow (the kind of motion a rectangling model predicts), and the
input, the warped image, the flow file and its colour picture are written out.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
import torch

from .._io import save_image
from ..flow import flow_to_color, mesh_to_flow, rigid_mesh, warp, write_flow
from ..metrics import psnr, ssim


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the offline demo and write its outputs")
    p.add_argument("--out", type=Path, default=Path("outputs/demo"), help="output folder (default outputs/demo)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_demo)


def _bundled_photo(height: int = 384, width: int = 512) -> np.ndarray:
    from skimage import data  # ships its sample photos inside the package: no download

    photo = data.chelsea()
    return cv2.resize(photo, (width, height), interpolation=cv2.INTER_AREA)


def _demo(args: argparse.Namespace) -> int:
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    photo = _bundled_photo()
    h, w = photo.shape[:2]
    rng = np.random.default_rng(args.seed)
    mesh = rigid_mesh(6, 8, h, w)
    mesh[1:-1, 1:-1] += rng.normal(0.0, 8.0, size=mesh[1:-1, 1:-1].shape)
    flow = mesh_to_flow(mesh, h, w)
    warped = warp(torch.from_numpy(photo).permute(2, 0, 1), flow, padding="border").permute(1, 2, 0).numpy()

    save_image(photo, out / "input.png")
    save_image(warped, out / "warped.png")
    save_image(flow_to_color(flow), out / "flow_color.png")
    write_flow(out / "flow.flo", flow)
    mag = flow.norm(dim=0)
    print(f"warped a {w}x{h} photo with a 6x8 mesh flow (max {mag.max():.1f} px, mean {mag.mean():.1f} px)")
    print(f"input vs warped: PSNR {psnr(warped, photo):.2f} dB, SSIM {ssim(warped, photo):.3f}")
    print(f"wrote {out}/input.png, warped.png, flow.flo, flow_color.png")
    return 0
