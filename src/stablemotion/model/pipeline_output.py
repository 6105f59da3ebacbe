"""What :class:`~stablemotion.model.pipeline.StableMotionPipeline` returns, and how its tensors become
that output (``"pt"``, ``"np"`` or ``"pil"``).

Kept apart from the pipeline, as diffusers' Marigold keeps its pipeline, image processor and output
apart: the pipeline computes tensors, :func:`format_output` lays them out for the caller.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from diffusers.utils import BaseOutput
from PIL import Image

from ..core.flow import flow_to_color

__all__ = ["OUTPUT_TYPES", "StableMotionOutput", "format_output"]

#: The ``output_type`` values of the pipeline.
OUTPUT_TYPES = ("pt", "np", "pil")


@dataclass
class StableMotionOutput(BaseOutput):
    """Output of :class:`~stablemotion.model.pipeline.StableMotionPipeline`.

    Attributes:
        flow: backward flow in pixels of the input resolution. ``"pt"``: float32 tensor
            (B, 2, H, W); ``"np"``/``"pil"``: float32 array (B, H, W, 2) (the ``.flo``/``.npy``
            layout).
        image: the rectified input. ``"pt"``: float32 (B, 3, H, W) in [0, 1]; ``"np"``:
            float32 (B, H, W, 3) in [0, 1]; ``"pil"``: list of RGB images. With the released
            AES (``ensemble_mode="image"``, E > 1) it combines the E member warps, so it is
            not exactly ``warp(input, flow)``; ``flow`` is then the member median.
        flow_colored: Middlebury colour picture of ``flow`` when ``output_flow_colored=True``,
            else ``None``. ``"pt"``: uint8 (B, 3, H, W); ``"np"``: uint8 (B, H, W, 3); ``"pil"``:
            list of RGB images.
        uncertainty: ensemble spread, the mean distance of the member flows from the
            ensemble flow, pixels; ``None`` for one member. ``"pt"``: (B, 1, H, W);
            otherwise (B, H, W, 1).
        members: the member flows (B, E, 2, H, W), pixels, when ``return_members=True``.
        settings: the inference settings actually used, defaults resolved
            (``num_inference_steps``, ``ensemble_size``, ``ensemble_mode``,
            ``processing_resolution`` [h, w], ``final_step``, ``decode_scale``,
            ``mask_encoding``, ``border_band``, ``ensemble_rounding``, ``flow_projection``,
            ``correction_gate`` (the threshold applied; 0 = off)).
        confidence: per image, how well the predicted correction is supported, in [0, 1]
            (:mod:`stablemotion.model.correction_gate`), a list of B floats.
        gate_reason: per image, ``""`` when corrected, else the one-line reason it was left
            unchanged (zero flow, the input as ``image``), a list of B strings.

    Example:
        >>> import numpy as np
        >>> from stablemotion.model.tiny import tiny_pipeline
        >>> out = tiny_pipeline("sir")(np.zeros((16, 24, 3), np.float32), mask=np.ones((16, 24), np.float32),
        ...                            output_type="np", show_progress_bar=False)
        >>> out.flow.shape, out.image.shape, out.uncertainty, out.gate_reason
        ((1, 16, 24, 2), (1, 16, 24, 3), None, [''])
    """

    flow: torch.Tensor | np.ndarray
    image: torch.Tensor | np.ndarray | list[Image.Image]
    flow_colored: torch.Tensor | np.ndarray | list[Image.Image] | None = None
    uncertainty: torch.Tensor | np.ndarray | None = None
    members: torch.Tensor | None = None
    settings: dict[str, Any] | None = None
    confidence: list[float] | None = None
    gate_reason: list[str] | None = None


def format_output(
    flow: torch.Tensor,
    rect: torch.Tensor,
    uncertainty: torch.Tensor | None,
    members: torch.Tensor | None,
    settings: dict[str, Any],
    output_type: str = "pt",
    output_flow_colored: bool = False,
    return_dict: bool = True,
    confidence: list[float] | None = None,
    gate_reason: list[str] | None = None,
) -> StableMotionOutput | tuple:
    """The pipeline's result tensors laid out as ``output_type`` (see :class:`StableMotionOutput`).

    Args:
        flow: (B, 2, H, W) float, pixels; rect: (B, 3, H, W) in [0, 1];
        uncertainty: (B, 1, H, W) pixels or ``None``; members: (B, E, 2, H, W) pixels or ``None``.
        settings: the resolved inference settings, returned as they are.
        output_type: ``"pt"``, ``"np"`` or ``"pil"``.
        output_flow_colored: also draw the flow's colour picture.
        return_dict: ``False`` returns the tuple ``(flow, image, flow_colored, uncertainty)``.
        confidence, gate_reason: the correction gate's per-image confidence and reason
            (:class:`StableMotionOutput`), returned as they are.

    Example:
        >>> import torch
        >>> out = format_output(torch.zeros(1, 2, 4, 6), torch.ones(1, 3, 4, 6), None, None, {}, "pil")
        >>> out.flow.shape, out.image[0].size
        ((1, 4, 6, 2), (6, 4))
    """
    colored = np.stack([flow_to_color(f) for f in flow]) if output_flow_colored else None  # (B, H, W, 3) uint8
    out_flow: Any
    out_col: Any = colored
    if output_type == "pt":
        out_flow, out_image = flow.cpu(), rect.cpu()
        if colored is not None:
            out_col = torch.from_numpy(colored).permute(0, 3, 1, 2)
        out_unc: Any = None if uncertainty is None else uncertainty.cpu()
    else:
        out_flow = flow.permute(0, 2, 3, 1).cpu().numpy().astype(np.float32)
        out_image = rect.permute(0, 2, 3, 1).cpu().numpy().astype(np.float32)
        out_unc = None if uncertainty is None else uncertainty.permute(0, 2, 3, 1).cpu().numpy()
        if output_type == "pil":
            out_image = [Image.fromarray((im * 255.0).round().astype(np.uint8)) for im in out_image]
            if colored is not None:
                out_col = [Image.fromarray(c) for c in colored]
    members = None if members is None else members.cpu()
    if not return_dict:
        return (out_flow, out_image, out_col, out_unc)
    return StableMotionOutput(flow=out_flow, image=out_image, flow_colored=out_col, uncertainty=out_unc,
                              members=members, settings=settings, confidence=confidence, gate_reason=gate_reason)
