"""The pipeline's flow of a wide (or tall) image, estimated in overlapping windows.

``aspect_mode`` of :class:`~stablemotion.model.pipeline.StableMotionPipeline`: ``"squeeze"``
resizes any image to the processing resolution (a 4:1 panorama seen at 3:4), ``"windows"``
cuts an image whose aspect ratio is far from the network's into overlapping windows of the
network's own aspect ratio (:mod:`stablemotion.core.windows`), runs them as one batch and blends
their member flows into one flow of the whole image (with ``flow_regularization="mesh"`` then
projected onto one mesh over the whole frame, its boundary snapped onto the content), and ``"auto"`` (the default) uses windows
for tasks whose flow is local (no global motion family: SIR) and squeezes the others (a
rolling-shutter, rotation or lens flow is one motion of the whole frame).

BENCHMARKS.md, "Wide panoramas", measures windows against the squeeze on 2:1-6:1 panoramas.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ..core.constants import ASPECT_MODES
from ..core.mesh import mesh_regularize
from ..core.windows import WindowLayout, blend_window_flows, crop_windows, window_layout
from ..tasks import TaskSpec

__all__ = ["estimate_in_windows", "plan_windows"]


def plan_windows(size: tuple[int, int], processing: tuple[int, int], aspect_mode: str, task: TaskSpec,
                 processing_image: torch.Tensor | None = None, latents: torch.Tensor | None = None) -> WindowLayout | None:
    """The windows of an image of ``size`` (H, W) at the processing size (h, w), or ``None`` to run it whole.

    Never windows when the network's input is given (``processing_image``) or its noise is
    (``latents``: one tensor for the whole image), nor for tasks with a global motion family
    under ``"auto"``.

    Example:
        >>> from stablemotion.tasks import get_task
        >>> plan_windows((400, 1600), (96, 128), "auto", get_task("sir")).starts
        (0, 213, 427, 640, 854, 1067)
        >>> plan_windows((400, 1600), (96, 128), "auto", get_task("rsc")) is None
        True
    """
    if aspect_mode not in ASPECT_MODES:
        raise ValueError(f"aspect_mode must be one of {ASPECT_MODES}, got {aspect_mode!r}")
    if aspect_mode == "squeeze" or processing_image is not None or latents is not None:
        return None
    if aspect_mode == "auto" and task.motion_model is not None:
        return None
    return window_layout(tuple(size), tuple(processing))


def _window_generators(generator: Any, images: int, windows: int, members: int) -> Any:
    """A per-sample generator list (B x E) repeated for each window (image-major, then window, then member)."""
    if not isinstance(generator, list):
        return generator
    return [generator[i * members + e] for i in range(images) for _ in range(windows) for e in range(members)]


def estimate_in_windows(
    pipe: Any,
    images: torch.Tensor,
    conds: Mapping[str, torch.Tensor],
    size: tuple[int, int],
    settings: Mapping[str, Any],
    layout: WindowLayout,
    batch_size: int | None = None,
    generator: torch.Generator | list[torch.Generator] | None = None,
    show_progress_bar: bool = True,
    task: TaskSpec | None = None,
) -> torch.Tensor:
    """:meth:`~stablemotion.model.pipeline.StableMotionPipeline.estimate_flows` of a long image, window by window.

    Args:
        pipe: the pipeline.
        images: (B, 3, H, W) in [0, 1]; conds: the other conditions (B, C, H, W).
        size: the processing size (h, w) every window runs at.
        settings: the call's settings (:meth:`resolve_settings`).
        layout: the windows (:func:`plan_windows`).

    Returns:
        (B, E', 2, h', W') member flows of the whole images, pixels of a grid with the windows'
        scale (h' = the decoded height of a wide image's windows; W' = W scaled alike).

    Example:
        >>> import torch
        >>> from stablemotion.model.tiny import tiny_pipeline
        >>> pipe = tiny_pipeline("sir")
        >>> images, mask = torch.rand(1, 3, 32, 128), {"mask": torch.ones(1, 1, 32, 128)}
        >>> s = pipe.resolve_settings(pipe.task)
        >>> layout = plan_windows((32, 128), (32, 32), "auto", pipe.task)
        >>> flows = estimate_in_windows(pipe, images, mask, (32, 32), s, layout, show_progress_bar=False)
        >>> len(layout), tuple(flows.shape)
        (7, (1, 1, 2, 32, 128))
    """
    n, count = images.shape[0], len(layout)
    win_conds = {name: crop_windows(t.expand(n, -1, -1, -1), layout) for name, t in conds.items()}
    gens = _window_generators(generator, n, count, settings["ensemble_size"])
    flows = pipe.estimate_flows(crop_windows(images, layout), win_conds, size, settings, None, batch_size, gens,
                                None, show_progress_bar, task)  # (B x N, E', 2, h', w')
    members, h, w = flows.shape[1], flows.shape[-2], flows.shape[-1]
    height, width = layout.size
    if layout.axis == 1:
        out = (h, max(1, round(width * h / height)))
    else:
        out = (max(1, round(height * w / width)), w)
    ordered = flows.unflatten(0, (n, count)).transpose(1, 2).flatten(0, 2)  # (B x E' x N, 2, h', w')
    blended = blend_window_flows(ordered, layout, out)  # (B x E', 2, h', W')
    if settings["flow_regularization"] == "mesh":
        # one mesh over the whole frame, its boundary snapped onto the content: where the windows' blend
        # leaves the frame's border short of the content (a deep notch at a panorama's end), it reaches it
        rows, cols = pipe.config.mesh_cells
        cells = (rows, max(1, round(cols * out[1] / w))) if layout.axis == 1 else (max(1, round(rows * out[0] / h)), cols)
        region = pipe.content_region(conds, out, n, members, False, task)
        blended = mesh_regularize(blended, cells, valid=region)
    return blended.unflatten(0, (n, members)).to(flows.dtype)
