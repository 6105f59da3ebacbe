"""Flow-consistent augmentation of sample dicts: mirrors and resizing keep ``gt(p) = image(p + flow(p))``."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..core.flow import resize_flow
from ..core.image_processing import resize_image
from ..tasks import MASK_CONDITIONS
from ._common import IMAGE_KEYS_EXCLUDED, Sample


def _image_keys(sample: Sample) -> list[str]:
    return [k for k, v in sample.items() if k not in IMAGE_KEYS_EXCLUDED and isinstance(v, torch.Tensor) and v.ndim >= 3]


def hflip_sample(sample: Sample) -> Sample:
    """Mirror a sample left-right; the flow is mirrored and its ``u`` negated.

    If ``gt(p) = image(p + f(p))`` then the mirrored images satisfy it with
    ``f'(x, y) = (-u(W-1-x, y), v(W-1-x, y))``.
    """
    out = dict(sample)
    for key in _image_keys(sample):
        out[key] = sample[key].flip(-1)
    if "flow" in sample:
        flow = sample["flow"].flip(-1).clone()
        flow[..., 0, :, :] = -flow[..., 0, :, :]
        out["flow"] = flow
    return out


def vflip_sample(sample: Sample) -> Sample:
    """Mirror a sample top-bottom; the flow's ``v`` is negated.

    Not physical for rolling shutter (it reverses the readout direction); off by default.
    """
    out = dict(sample)
    for key in _image_keys(sample):
        out[key] = sample[key].flip(-2)
    if "flow" in sample:
        flow = sample["flow"].flip(-2).clone()
        flow[..., 1, :, :] = -flow[..., 1, :, :]
        out["flow"] = flow
    return out


def resize_sample(sample: Sample, size: tuple[int, int], mask_keys: Sequence[str] = tuple(MASK_CONDITIONS)) -> Sample:
    """Resize every image, mask and flow of a sample to ``size = (H', W')``.

    Images: bilinear (antialiased when shrinking), pixel-area convention; masks: the same,
    then thresholded at 0 back to {-1, 1}; the flow: :func:`stablemotion.core.flow.resize_flow`
    with the same convention (``u`` scaled by ``W'/W``, ``v`` by ``H'/H``), which keeps
    ``gt(p) = image(p + flow(p))`` true at the new size.
    """
    th, tw = int(size[0]), int(size[1])
    out = dict(sample)
    for key in _image_keys(sample):
        t = sample[key]
        if tuple(t.shape[-2:]) == (th, tw):
            continue
        r = resize_image(t.unsqueeze(0).float(), (th, tw))[0]  # the pipeline's resize rule
        if key in mask_keys:  # {-1, 1}: 0 is the mask rule's half range
            r = torch.where(r >= 0, 1.0, -1.0)
        out[key] = r.to(t.dtype)
    if "flow" in sample and tuple(sample["flow"].shape[-2:]) != (th, tw):
        out["flow"] = resize_flow(sample["flow"], (th, tw), mode="bilinear", align_corners=False)
    return out


class Augment:
    """Random flow-consistent augmentation of sample dicts (a dataset ``transform``).

    Args:
        size: resize every sample to (H, W) first (e.g. the task resolution); None keeps it.
        hflip: probability of a left-right mirror.
        vflip: probability of a top-bottom mirror (0 by default; wrong for rolling shutter).
        mask_keys: keys that are masks (thresholded after resizing).
        generator: torch generator for reproducible draws (default: torch's global RNG,
            which ``DataLoader`` seeds per worker).
    """

    def __init__(
        self,
        size: tuple[int, int] | None = None,
        hflip: float = 0.5,
        vflip: float = 0.0,
        mask_keys: Sequence[str] = tuple(MASK_CONDITIONS),
        generator: torch.Generator | None = None,
    ) -> None:
        for name, p in (("hflip", hflip), ("vflip", vflip)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} probability must be in [0, 1], got {p}")
        if size is not None and (len(size) != 2 or min(size) < 1):
            raise ValueError(f"size must be (H, W) with positive entries, got {size}")
        self.size = None if size is None else (int(size[0]), int(size[1]))
        self.hflip, self.vflip = float(hflip), float(vflip)
        self.mask_keys = tuple(mask_keys)
        self.generator = generator

    def _coin(self, p: float) -> bool:
        return p > 0 and float(torch.rand((), generator=self.generator)) < p

    def __call__(self, sample: Sample) -> Sample:
        if self.size is not None:
            sample = resize_sample(sample, self.size, self.mask_keys)
        if self._coin(self.hflip):
            sample = hflip_sample(sample)
        if self._coin(self.vflip):
            sample = vflip_sample(sample)
        return sample

    def __repr__(self) -> str:
        return f"Augment(size={self.size}, hflip={self.hflip}, vflip={self.vflip})"
