"""Optional metrics of an evaluation: FID (pytorch-fid) and LPIPS, computed only when their packages
and network weights are available offline (:func:`optional_metrics`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..io.images import load_image, save_image
from .protocol import EvalSet

__all__ = ["optional_metrics", "FID_WEIGHTS", "LPIPS_BACKBONE"]


def _hub_checkpoint(filename: str) -> Path | None:
    p = Path(torch.hub.get_dir()) / "checkpoints" / filename
    return p if p.is_file() else None


FID_WEIGHTS = "pt_inception-2015-12-05-6726825d.pth"
LPIPS_BACKBONE = "alexnet-owt-7be5be79.pth"


def optional_metrics(which: Sequence[str], eval_set: EvalSet, results: Path, names: Sequence[str],
                     device: torch.device | str = "cpu") -> dict[str, dict[str, Any]]:
    """FID / LPIPS of the results (and the identity baseline) when available offline.

    Nothing is downloaded: each metric needs its package (``pytorch-fid``, ``lpips``) and its
    network weights already in the torch hub cache (``torch.hub.get_dir()/checkpoints``).
    When something is missing the entry is ``{"note": "<what is missing and how to get it>"}``.

    Returns:
        ``{"fid": {"method": float, "identity": float} | {"note": str}, "lpips": ...}``.
    """
    out: dict[str, dict[str, Any]] = {}
    for m in which:
        if m not in ("fid", "lpips"):
            raise ValueError(f"unknown extra metric {m!r}: use fid or lpips")
        pkg = {"fid": "pytorch_fid", "lpips": "lpips"}[m]
        weights = {"fid": FID_WEIGHTS, "lpips": LPIPS_BACKBONE}[m]
        try:
            module = __import__(pkg)
        except ImportError:
            out[m] = {"note": f"not computed: package {pkg.replace('_', '-')} is not installed "
                              f"(pip install {pkg.replace('_', '-')})"}
            continue
        ckpt = _hub_checkpoint(weights)
        if ckpt is None:
            out[m] = {"note": f"not computed: its weights {weights} are not in {Path(torch.hub.get_dir()) / 'checkpoints'} "
                              "and downloads are disabled; fetch them once on a machine with internet"}
            continue
        try:
            out[m] = _fid(eval_set, results, names, device) if m == "fid" else _lpips(module, eval_set, results, names, device)
        except Exception as exc:  # a broken optional dependency must not lose the PSNR/SSIM results
            out[m] = {"note": f"failed: {type(exc).__name__}: {exc}"}
    return out


def _lpips(module: Any, eval_set: EvalSet, results: Path, names: Sequence[str], device: Any) -> dict[str, Any]:
    net = module.LPIPS(net="alex", verbose=False).to(device).eval()

    def t(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a).permute(2, 0, 1)[None].float().div(127.5).sub(1).to(device)

    vals, ident = [], []
    with torch.no_grad():
        for n in names:
            s = eval_set.get(n)
            vals.append(float(net(t(load_image(results / f"{n}.png")), t(s.gt))))
            if s.image.shape == s.gt.shape:
                ident.append(float(net(t(s.image), t(s.gt))))
    return {"method": float(np.mean(vals)), "identity": float(np.mean(ident)) if ident else math.nan}


def _fid(eval_set: EvalSet, results: Path, names: Sequence[str], device: Any) -> dict[str, Any]:
    import tempfile

    from pytorch_fid.fid_score import calculate_fid_given_paths

    with tempfile.TemporaryDirectory() as tmp:
        gt_dir, in_dir = Path(tmp) / "gt", Path(tmp) / "input"
        for n in names:
            s = eval_set.get(n)
            save_image(s.gt, gt_dir / f"{n}.png")
            save_image(s.image, in_dir / f"{n}.png")
        dev = str(device)
        fid = calculate_fid_given_paths([str(results), str(gt_dir)], 8, dev, 2048, num_workers=0)
        ident = calculate_fid_given_paths([str(in_dir), str(gt_dir)], 8, dev, 2048, num_workers=0)
    return {"method": float(fid), "identity": float(ident)}


