"""The trainer's validation (on the main process, with the EMA weights in place).

The image metrics are :func:`stablemotion.core.metrics.psnr_torch` and
:func:`~stablemotion.core.metrics.ssim_torch` on tensors in [-1, 1]; the flow metric is
:func:`stablemotion.core.flow.end_point_error` (pixels).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..core.flow import decode_flow, encode_flow, end_point_error, flow_to_color, warp
from ..core.metrics import psnr_torch, ssim_torch
from ..data import Augment
from ..io.images import save_image
from ..tasks import TaskSpec
from .sampling import mask_keys

if TYPE_CHECKING:
    from .trainer import Trainer

__all__ = ["validate_codec", "validate_task", "validate_tasks"]

#: (trainer, sample, task, sample index) -> (prediction (1, 3, H, W) in [-1, 1], flow (1, 2, H, W) in pixels)
Predict = Callable[["Trainer", Any, TaskSpec, int], tuple[torch.Tensor, torch.Tensor]]


def validate_tasks(tr: Trainer, limit: int, predict: Predict) -> dict[str, float]:
    """Every task's :func:`validate_task` on up to ``limit`` samples; a multi-task run reports
    each task under ``val/<task>/``."""
    out: dict[str, float] = {}
    for name, ds in tr.val_sets.items():
        n = min(len(ds), limit)  # type: ignore[arg-type]
        if n == 0:
            continue
        res = validate_task(tr, ds, tr.tasks[name], n, predict, grid_name=f"{name}-" if tr.multi else "")
        out.update({k.replace("val/", f"val/{name}/") if tr.multi else k: v for k, v in res.items()})
    return out


def validate_task(tr: Trainer, ds: Dataset, task: TaskSpec, n: int, predict: Predict,
                  grid_name: str = "") -> dict[str, float]:
    """One task's validation on the first ``n`` samples of ``ds``: mean PSNR (dB) / SSIM of the
    prediction and of the identity (input vs gt), and the image grid (input | prediction | gt |
    flow colours) ``validation/<grid_name>step-N.png``."""
    aug = Augment(tr.cfg.task_resolution(task.name), 0.0, 0.0, mask_keys=mask_keys(task))
    rows, grid = [], []
    for i in range(n):
        s = aug(ds[i])
        gt, inp = s["gt"][None], s["image"][None]
        pred, flow = predict(tr, s, task, i)
        rows.append([
            float(psnr_torch(pred, gt)), float(ssim_torch(pred, gt)),
            float(psnr_torch(inp, gt)), float(ssim_torch(inp, gt)),
        ])
        if i < tr.cfg.validation.grid_samples:
            col = torch.from_numpy(flow_to_color(flow[0])).permute(2, 0, 1).float() / 127.5 - 1
            grid.append(torch.cat([inp[0], pred[0], gt[0], col], dim=2))
    r = np.asarray(rows)
    metrics = {"val/psnr": r[:, 0].mean(), "val/ssim": r[:, 1].mean(),
               "val/psnr_identity": r[:, 2].mean(), "val/ssim_identity": r[:, 3].mean()}
    if grid:
        _save_grid(tr, grid, grid_name)
    return {k: float(v) for k, v in metrics.items()}


def _save_grid(tr: Trainer, rows: list[torch.Tensor], grid_name: str) -> None:
    """Stack the (3, H, 4W) rows in [-1, 1] into ``validation/<grid_name>step-N.png`` (and tensorboard)."""
    img = ((torch.cat(rows, dim=1).clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    save_image(img, tr.out / "validation" / f"{grid_name}step-{tr.step:07d}.png")
    for tracker in tr.acc.trackers:
        if tracker.name == "tensorboard":
            tracker.writer.add_image(f"val/{grid_name}grid", img, tr.step, dataformats="HWC")


def validate_codec(tr: Trainer, n: int) -> dict[str, float]:
    """VAE stage validation on the first ``n`` samples: mean end-point error (pixels) of the flow
    round trip, and PSNR (dB) of the warp with the round-tripped flow vs with the exact flow."""
    if n == 0:
        return {}
    aug = Augment(tr.cfg.resolution, 0.0, 0.0, mask_keys=mask_keys(tr.task))
    codec = tr.acc.unwrap_model(tr.model)
    gamma, pad, dev = tr.task.flow_gamma, tr.task.padding, tr.acc.device
    rows = []
    for i in range(n):
        s = aug(tr.val_ds[i])
        flow = s["flow"][None].to(dev)
        rec = decode_flow(codec(encode_flow(flow, gamma)), gamma).float()
        inp, gt = s["image"][None].to(dev), s["gt"][None].to(dev)
        rows.append([float(end_point_error(rec, flow)[0]),
                     float(psnr_torch(warp(inp, rec, padding=pad, fill=-1.0), gt)),
                     float(psnr_torch(warp(inp, flow, padding=pad, fill=-1.0), gt))])
    r = np.asarray(rows)
    return {"val/codec_epe": float(r[:, 0].mean()), "val/codec_warp_psnr": float(r[:, 1].mean()),
            "val/exact_flow_warp_psnr": float(r[:, 2].mean())}
