"""Image and mask handling for the pipeline: conversion, validation, resizing, masks.

Kept apart from model code. Conventions:

* An **image** batch is a float32 tensor ``(B, 3, H, W)`` in ``[0, 1]`` (RGB). Accepted
  inputs: a PIL image (mode ``RGB``), a numpy array ``(H, W, 3)`` / ``(B, H, W, 3)``
  (uint8 in [0, 255] or float in [0, 1]), a torch tensor ``(3, H, W)`` / ``(B, 3, H, W)``
  (float in [0, 1] or uint8), or a list of those (all the same size). Grey and RGBA inputs
  are rejected with a message saying how to convert them: silently dropping an alpha
  channel (often the stitched image's validity mask) or inventing colour is a decision
  for the caller.
* A **mask** batch is a float32 tensor ``(B, 1, H, W)`` with values ``{0, 1}``, 1 = valid
  content. Accepted inputs: PIL (any mode; colour is averaged), numpy ``(H, W)``,
  ``(H, W, 1)``, ``(H, W, 3)`` or ``(B, H, W, 1|3)``, torch ``(H, W)``, ``(1|3, H, W)``,
  ``(B, 1|3, H, W)``, or a list; uint8 (0..255), bool, or float in [0, 1]. Masks are thresholded at
  half range, so JPEG-compressed masks (DIR-D's are 3-channel JPEGs) come out binary.
* :func:`derive_mask` makes a SIR mask from a stitched image's empty border, as
  :func:`stablemotion.core.borders.detect_empty_border` finds it (and only when it finds one).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..io.images import image_to_rgb
from .borders import EmptyBorder, detect_empty_border

__all__ = [
    "ImageInput",
    "to_image_batch",
    "to_mask_batch",
    "MASK_ENCODINGS",
    "pil_to_rgb",
    "resize_image",
    "resize_mask",
    "to_vae_range",
    "processing_size",
    "background_color",
    "derive_mask",
    "find_border",
    "prepare_mask",
    "MASK_THRESHOLD",
    "mask_valid",
]

#: The one mask rule of the package: a pixel is valid content when the mean of its
#: channels is at least half the range (128 of 255), so JPEG noise and grey edges of a
#: black/white mask fall on the right side and an RGB mask pixel means the same everywhere
#: (training data, evaluation, the pipeline, the command line and the app).
MASK_THRESHOLD = 0.5


def mask_valid(mask: np.ndarray) -> np.ndarray:
    """uint8/bool/float mask (H, W) or (H, W, C) -> bool (H, W), True = valid content
    (channel mean >= :data:`MASK_THRESHOLD` of the range).

    Example:
        >>> mask_valid(np.array([[0, 200], [127, 255]], np.uint8)).tolist()  # valid from 128 of 255
        [[False, True], [False, True]]
    """
    m = np.asarray(mask)
    if m.dtype == bool and m.ndim == 2:
        return m.copy()
    if m.dtype == np.uint8 and m.ndim == 2:  # integer rule, 1 byte a pixel: mean >= 127.5 of 255
        return m >= 128
    if m.dtype == bool:
        m = m.astype(np.float32)
    elif m.dtype == np.uint8:
        m = m.astype(np.float32) / 255.0
    else:
        m = m.astype(np.float32)
    if m.ndim == 3:
        m = m.mean(axis=2)
    if m.ndim != 2:
        raise ValueError(f"a mask must be (H, W) or (H, W, C), got shape {np.asarray(mask).shape}")
    return m >= MASK_THRESHOLD

_Single = Image.Image | np.ndarray | torch.Tensor
#: One image or a batch: PIL, numpy, torch, or a list of those.
ImageInput = _Single | Sequence[_Single]


def _describe(x: object) -> str:
    if isinstance(x, Image.Image):
        return f"PIL image mode {x.mode} {x.width}x{x.height}"
    if isinstance(x, (np.ndarray, torch.Tensor)):
        return f"{type(x).__name__} {tuple(x.shape)} {x.dtype}"
    return type(x).__name__


def _channel_error(name: str, channels: int, what: str) -> ValueError:
    if channels == 1:
        hint = "it is grey (1 channel); convert it to RGB first (PIL: image.convert('RGB'))"
    elif channels == 4:
        hint = (
            "it is RGBA (4 channels); drop or use the alpha channel explicitly "
            "(PIL: image.convert('RGB'); the alpha may serve as a SIR mask)"
        )
    else:
        hint = f"it has {channels} channels"
    return ValueError(f"{name} must be an RGB image (3 channels), but {hint}; got {what}")


def _single_image(x: object, name: str) -> torch.Tensor:
    """One image -> float32 (3, H, W) in [0, 1]."""
    what = _describe(x)
    if isinstance(x, Image.Image):
        if x.mode != "RGB":
            channels = {"L": 1, "1": 1, "I": 1, "F": 1, "I;16": 1, "LA": 2, "RGBA": 4, "CMYK": 4, "P": 0}
            if x.mode == "P":
                raise ValueError(f"{name} is a palette image; convert it first (PIL: image.convert('RGB')); got {what}")
            raise _channel_error(name, channels.get(x.mode, len(x.getbands())), what)
        x = np.array(x)
    if isinstance(x, np.ndarray):
        if x.ndim == 2:
            raise _channel_error(name, 1, what)
        if x.ndim != 3:
            raise ValueError(f"{name} must be (H, W, 3) as a numpy array, got {what}")
        if x.shape[2] != 3:
            raise _channel_error(name, x.shape[2], what)
        t = torch.from_numpy(np.ascontiguousarray(x)).permute(2, 0, 1)
    elif isinstance(x, torch.Tensor):
        if x.ndim == 2:
            raise _channel_error(name, 1, what)
        if x.ndim != 3:
            raise ValueError(f"{name} must be (3, H, W) as a torch tensor, got {what}")
        if x.shape[0] != 3:
            raise _channel_error(name, x.shape[0], what)
        t = x.detach().cpu()
    else:
        raise TypeError(f"{name} must be a PIL image, numpy array or torch tensor, got {what}")
    if t.dtype == torch.uint8:
        return t.float() / 255.0
    if t.dtype == torch.bool or not t.is_floating_point():
        raise ValueError(f"{name} must be uint8 (0..255) or float (0..1), got {what}")
    t = t.float()
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or infinite values")
    lo, hi = float(t.min()), float(t.max())
    if lo < -1e-3 or hi > 1 + 1e-3:
        raise ValueError(f"float {name} values must lie in [0, 1], got [{lo:.3g}, {hi:.3g}] ({what})")
    return t.clamp(0, 1)


def _split_batch(x: object, name: str, item_ndim: int) -> list:
    if isinstance(x, (list, tuple)):
        if len(x) == 0:
            raise ValueError(f"{name} is an empty list")
        return list(x)
    if isinstance(x, np.ndarray) and x.ndim == item_ndim + 1:
        return list(x)
    if isinstance(x, torch.Tensor) and x.ndim == item_ndim + 1:
        return list(x)
    return [x]


def to_image_batch(image: ImageInput, name: str = "image") -> torch.Tensor:
    """Convert image input(s) to a float32 (B, 3, H, W) tensor in [0, 1] on the CPU.

    Raises ``ValueError`` naming ``name`` for grey, RGBA, wrongly shaped, out-of-range or
    differently sized images.

    Example:
        >>> batch = to_image_batch([np.zeros((4, 6, 3), np.uint8)] * 2)
        >>> tuple(batch.shape), batch.dtype
        ((2, 3, 4, 6), torch.float32)
    """
    items = _split_batch(image, name, item_ndim=3)
    out = [_single_image(x, f"{name}[{i}]" if len(items) > 1 else name) for i, x in enumerate(items)]
    sizes = {tuple(t.shape[-2:]) for t in out}
    if len(sizes) > 1:
        raise ValueError(f"all {name}s of a batch must have the same size (H, W), got {sorted(sizes)}")
    if min(out[0].shape[-2:]) < 2:
        raise ValueError(f"{name} is too small: {tuple(out[0].shape[-2:])} (H, W)")
    return torch.stack(out)


def pil_to_rgb(image: Image.Image, name: str = "image", grey: str = "refuse", alpha: str = "refuse") -> np.ndarray:
    """A decoded PIL image -> uint8 (H, W, 3) RGB array by the one reading rule of the package
    (:func:`stablemotion.io.images.image_to_rgb`: palette, CMYK and 16-bit converted, an opaque
    alpha dropped; grey and real alpha refused with a message naming ``name`` unless
    ``grey="convert"`` / ``alpha="drop"``).

    Example:
        >>> pil_to_rgb(Image.new("RGB", (3, 2), (1, 2, 3)))[0, 0].tolist()
        [1, 2, 3]
    """
    return image_to_rgb(image, name=name, grey=grey, alpha=alpha)[0]


def _single_mask(x: object, name: str, binarize: bool = True) -> torch.Tensor:
    """One mask -> float32 (1, H, W) with values {0, 1}; unbinarised: (1|3, H, W) in [0, 1]."""
    what = _describe(x)
    if isinstance(x, Image.Image):
        if binarize or x.mode not in ("L", "1", "RGB"):
            x = x.convert("L") if x.mode not in ("L", "1") else x
        x = np.array(x)
    if isinstance(x, np.ndarray):
        t = torch.from_numpy(np.ascontiguousarray(x))
        if t.ndim == 3:
            t = t.permute(2, 0, 1)
        elif t.ndim == 2:
            t = t.unsqueeze(0)
    elif isinstance(x, torch.Tensor):
        t = x.detach().cpu()
        if t.ndim == 2:
            t = t.unsqueeze(0)
    else:
        raise TypeError(f"{name} must be a PIL image, numpy array or torch tensor, got {what}")
    if t.ndim != 3 or t.shape[0] not in (1, 3):
        raise ValueError(f"{name} must be (H, W), (H, W, 1|3) numpy or (1|3, H, W) torch, got {what}")
    if t.dtype == torch.bool:
        t = t.float()
    elif t.dtype == torch.uint8:
        t = t.float() / 255.0
    elif t.is_floating_point():
        t = t.float()
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{name} contains NaN or infinite values")
        if float(t.min()) < -1e-3 or float(t.max()) > 1 + 1e-3:
            raise ValueError(f"float {name} values must lie in [0, 1] (1 = valid), got {what}")
    else:
        raise ValueError(f"{name} must be bool, uint8 or float in [0, 1], got {what}")
    if not binarize:
        return t.clamp(0, 1)
    return (t.mean(dim=0, keepdim=True) >= MASK_THRESHOLD).float()  # the rule of mask_valid


#: How a pipeline turns a given mask into its network input: ``"binary"`` (channel mean
#: thresholded at 0.5, this package's models) or ``"as_read"`` (the values as read, per
#: channel, no threshold: what the released models were trained and evaluated on).
MASK_ENCODINGS = ("binary", "as_read")


def to_mask_batch(mask: ImageInput, name: str = "mask", encoding: str = "binary") -> torch.Tensor:
    """Convert mask input(s) to a float32 tensor (1 = valid).

    ``encoding="binary"``: (B, 1, H, W) of {0, 1}. ``"as_read"``: (B, C, H, W) in [0, 1]
    with the input's own channels (C = 1, or 3 for an RGB mask such as DIR-D's JPEGs),
    no threshold, as the released ``ToTensor`` reads them; a batch mixing 1- and 3-channel
    masks is expanded to 3 channels.

    Example:
        >>> mask = to_mask_batch(np.array([[0, 255], [255, 200]], np.uint8))
        >>> tuple(mask.shape), mask[0, 0].tolist()
        ((1, 1, 2, 2), [[0.0, 1.0], [1.0, 1.0]])
    """
    if encoding not in MASK_ENCODINGS:
        raise ValueError(f"mask encoding must be one of {MASK_ENCODINGS}, got {encoding!r}")
    binarize = encoding == "binary"
    if isinstance(mask, (np.ndarray, torch.Tensor)) and mask.ndim == 4:
        items = list(mask)  # (B, H, W, C) numpy / (B, C, H, W) torch
    else:
        items = _split_batch(mask, name, item_ndim=99)
    out = [_single_mask(x, f"{name}[{i}]" if len(items) > 1 else name, binarize) for i, x in enumerate(items)]
    sizes = {tuple(t.shape[-2:]) for t in out}
    if len(sizes) > 1:
        raise ValueError(f"all {name}s of a batch must have the same size (H, W), got {sorted(sizes)}")
    if len({t.shape[0] for t in out}) > 1:
        out = [t.expand(3, -1, -1) for t in out]
    return torch.stack(out)


def to_vae_range(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] -> [-1, 1] (the VAE's input range); a (B, 1, H, W) mask becomes 3 channels
    (a 3-channel mask keeps its channels, as the release feeds it).

    Example:
        >>> to_vae_range(torch.tensor([0.0, 0.5, 1.0]).view(1, 1, 1, 3))[0, :, 0].tolist()  # 1 -> 3 channels
        [[-1.0, 0.0, 1.0], [-1.0, 0.0, 1.0], [-1.0, 0.0, 1.0]]
    """
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return x * 2.0 - 1.0


def resize_image(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear (antialiased when shrinking) resize of (B, C, H, W) to ``size = (H', W')``.

    Example:
        >>> tuple(resize_image(torch.rand(1, 3, 8, 8), (4, 6)).shape)
        (1, 3, 4, 6)
    """
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    shrink = size[0] < image.shape[-2] or size[1] < image.shape[-1]
    return F.interpolate(image, size=size, mode="bilinear", align_corners=False, antialias=shrink)


def resize_mask(mask: torch.Tensor, size: tuple[int, int], binarize: bool = True) -> torch.Tensor:
    """Resize a mask (B, C, H, W) in [0, 1] to ``size``; re-binarise at 0.5 unless ``binarize=False``.

    Example:
        >>> resize_mask(torch.tensor([[[[1.0, 1.0, 0.0, 0.0]]]]), (1, 2)).tolist()
        [[[[1.0, 0.0]]]]
    """
    if tuple(mask.shape[-2:]) == tuple(size):
        return mask
    out = resize_image(mask, size)
    return (out >= MASK_THRESHOLD).float() if binarize else out.clamp(0, 1)


def processing_size(
    input_size: tuple[int, int], resolution: int | Sequence[int] | None, multiple: int
) -> tuple[int, int]:
    """Network resolution (H, W) for an input of ``input_size``.

    ``resolution`` is ``(H, W)``, an int (square), or ``0`` for the input's own size rounded
    to the nearest multiple. Explicit sizes must be multiples of ``multiple`` (the product
    of the VAE and UNet downsampling factors).

    Example:
        >>> processing_size((380, 500), 0, 64), processing_size((380, 500), 256, 64)
        ((384, 512), (256, 256))
    """
    if resolution is None:
        raise ValueError("processing_resolution is None and the model config has no default")
    if isinstance(resolution, (int, np.integer)):
        if resolution == 0:
            h, w = input_size
            return max(multiple, int(round(h / multiple)) * multiple), max(multiple, int(round(w / multiple)) * multiple)
        size = (int(resolution), int(resolution))
    else:
        size = tuple(int(r) for r in resolution)
        if len(size) != 2:
            raise ValueError(f"processing_resolution must be (H, W), an int or 0, got {resolution!r}")
    if min(size) < multiple or size[0] % multiple or size[1] % multiple:
        raise ValueError(f"processing_resolution {size} (H, W) must be positive multiples of {multiple} for this model")
    return size  # type: ignore[return-value]


# --------------------------------------------------------------------------- masks from the empty border
def background_color(image: np.ndarray, tolerance: int = 24) -> tuple[str, float]:
    """Which fill colour, ``"black"`` or ``"white"``, more of the outermost 1-pixel frame is close to.

    Counts the frame pixels within ``tolerance`` (max abs difference over channels, uint8 units)
    of pure black and of pure white; returns the colour with more such pixels and its fraction of
    the frame (0 when neither matches). A hint only: whether the image has an empty border at all
    is :func:`stablemotion.core.borders.detect_empty_border`'s decision.

    Example:
        >>> image = np.full((4, 4, 3), 255, np.uint8)
        >>> image[1:3, 1:3] = 90  # content inside a white frame
        >>> background_color(image)
        ('white', 1.0)
    """
    frame = _frame(image).astype(np.int16)
    black = float((frame.max(axis=-1) <= tolerance).mean())
    white = float((frame.min(axis=-1) >= 255 - tolerance).mean())
    return ("white", white) if white > black else ("black", black)


def _check_mask_options(image: np.ndarray, background: str, tolerance: int) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"derive_mask expects a uint8 (H, W, 3) RGB image, got {_describe(image)}")
    if background not in ("auto", "black", "white"):
        raise ValueError(f"background must be 'auto', 'black' or 'white', got {background!r}")
    if not 0 <= tolerance <= 255:
        raise ValueError(f"tolerance must be in [0, 255], got {tolerance}")


def find_border(
    image: np.ndarray,
    background: str = "auto",
    tolerance: int = 24,
    min_border_fraction: float = 0.02,
    open_size: int = 3,
) -> EmptyBorder:
    """:func:`stablemotion.core.borders.detect_empty_border` with :func:`derive_mask`'s options.

    ``background`` ``"auto"`` tries black and white; an empty border that covers less than
    ``min_border_fraction`` of the outermost pixel frame does not count (``found`` False).

    Example:
        >>> image = np.full((8, 10, 3), 200, np.uint8)
        >>> image[:, :3] = 0
        >>> border = find_border(image)
        >>> border.found, border.fill
        (True, (0, 0, 0))
    """
    _check_mask_options(image, background, tolerance)
    border = detect_empty_border(image, fill=None if background == "auto" else background, tolerance=tolerance,
                                 open_size=open_size)
    if border.found:
        share = float(_frame(border.mask).mean())
        if share < min_border_fraction:
            return EmptyBorder(False, np.zeros_like(border.mask), None, 0.0,
                               f"no empty border: it covers {share:.1%} of the image frame, under "
                               f"{min_border_fraction:.1%}")
    return border


def derive_mask(
    image: np.ndarray,
    background: str = "auto",
    tolerance: int = 24,
    min_border_fraction: float = 0.02,
    open_size: int = 3,
) -> np.ndarray:
    """Derive a SIR validity mask from a stitched image's empty border.

    The empty border is what :func:`stablemotion.core.borders.detect_empty_border` finds (the
    one rule of the package, strict: an exactly flat region of one fill colour touching the
    frame, outlined by straight or gently curved segments, with content along the outline that
    is not itself of that colour). Without one the whole image is valid: dark or bright scene
    regions at the frame (a black helmet, a night sky, a clipped sky) are content.

    Args:
        image: uint8 (H, W, 3) RGB.
        background: ``"auto"`` (black or white), ``"black"`` or ``"white"``: the fill colour.
        tolerance: how far (max abs difference over channels, uint8 units) a pixel of the
            border's JPEG fringe may be from the fill (default 24: JPEG quality >= ~75).
        min_border_fraction: an empty border covering less of the outermost pixel frame does
            not count.
        open_size: the valid region is opened with this square (px) to drop JPEG specks.

    Returns:
        uint8 (H, W) mask, 255 = valid content, 0 = empty (the DIR-D convention).

    Example:
        >>> image = np.full((8, 10, 3), 200, np.uint8)
        >>> image[:, :3] = 0  # a black empty border on the left
        >>> derive_mask(image)[0].tolist()
        [0, 0, 0, 255, 255, 255, 255, 255, 255, 255]
    """
    border = find_border(image, background, tolerance, min_border_fraction, open_size)
    return np.where(border.mask, np.uint8(0), np.uint8(255))  # uint8 scalars: no 8-byte-a-pixel temporary


def _frame(a: np.ndarray) -> np.ndarray:
    """The outermost 1-pixel frame of an (H, W, ...) array, flattened along its first axis."""
    return np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]], axis=0)


def prepare_mask(
    image: np.ndarray,
    mask: np.ndarray | None,
    source: str = "the mask",
    background: str = "auto",
    tolerance: int = 24,
) -> tuple[np.ndarray, str]:
    """The SIR mask for ``image``: a given one checked and kept as read, or one derived.

    A given mask (uint8 (H, W) or (H, W, 3), white = valid content) is returned unchanged,
    so the pipeline encodes it by its own ``mask_encoding`` (the released models take it as
    read, e.g. DIR-D's JPEG grey levels); it must be pixel-aligned with the image and have
    at least one valid pixel (>= 128). Without one, :func:`derive_mask` makes a binary mask
    from the empty border.

    Args:
        image: uint8 (H, W, 3) RGB.
        mask: the given mask or ``None``.
        source: how error messages and the note name the given mask (e.g. its path).

    Returns:
        ``(mask uint8, note)``: the note is one line for the user (what was used, % empty).

    Raises:
        ValueError: a given mask of another size, or with no valid pixel.

    Example:
        >>> image = np.full((8, 10, 3), 200, np.uint8)
        >>> image[:, :3] = 0  # a black empty border
        >>> prepare_mask(image, None)[1]
        'derived mask from the black border (30.0% empty)'
        >>> given = np.full((8, 10), 255, np.uint8)
        >>> prepare_mask(image, given)[1]
        'uploaded mask (0.0% empty)'
    """
    h, w = image.shape[:2]
    if mask is not None:
        if mask.shape[:2] != (h, w):
            raise ValueError(f"{source} is {mask.shape[1]}x{mask.shape[0]} px but the image is {w}x{h} px")
        valid = mask_valid(mask)
        if not valid.any():
            raise ValueError(f"{source} has no valid pixel (white = valid content, black = empty)")
        name = "uploaded mask" if source == "the mask" else source
        return mask, f"{name} ({1 - valid.mean():.1%} empty)"
    border = find_border(image, background=background, tolerance=tolerance)
    derived = np.where(border.mask, np.uint8(0), np.uint8(255))
    if not border.found:
        why = border.reason.removeprefix("no empty border: ")
        return derived, f"no empty border found ({why}): the whole image counts as content"
    colour = {(0, 0, 0): "black", (255, 255, 255): "white"}.get(border.fill, f"rgb{border.fill}")  # type: ignore[arg-type]
    return derived, f"derived mask from the {colour} border ({border.fraction:.1%} empty)"
