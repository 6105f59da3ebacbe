"""The rectify form: its fields, the uploaded files' checks and decoding, and the ``auto`` task choice.

Validation happens before any inference, in a thread pool (so it is answered while a slow
inference runs): at most ``max_upload_bytes`` per file, formats PNG/JPEG/WebP/BMP/TIFF/GIF
by content (not by file name), one frame per file (animated GIF/WebP and multi-page TIFF
are refused, the CLI's rule: :func:`~stablemotion.io.images.check_single_frame`), at most
``max_side`` pixels per side (checked from the header, before decoding), RGB only (the
library's rule: grey and real transparency are refused with a message in the page's
terms), a SIR mask of the image's size, no mask for tasks without one, ``steps`` /
``ensemble`` in range, ``always_correct`` a checkbox value (``1``/``on``/``true``, or
``0``/``off``/``false``/empty: the correction gate applies). Every refusal is an :class:`~stablemotion.app.errors._InputError`
(400, 413 or 415; 422 when ``auto`` finds no task to run).

**Automatic task choice** (``task=auto``): on the inference worker, after validation,
:func:`~stablemotion.model.task_choice.choose_task` looks at the image (a flat empty border
means SIR, otherwise the bundled task classifier) and the request runs as if that task had
been chosen. An uploaded mask is accepted only when SIR is chosen. An image that needs no
correction (the choice's task ``"none"``) or whose task cannot be told is returned unchanged,
with the reason (not refused).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from starlette.datastructures import UploadFile
from starlette.requests import Request

from ..core.image_processing import prepare_mask
from ..io.images import check_single_frame, image_to_rgb, mask_array
from ..tasks import MASK_CONDITIONS, get_task
from .admission import AppLimits
from .errors import _InputError, _mb
from .models import AUTO

__all__ = ["ACCEPTED_FORMATS"]

log = logging.getLogger(__name__)

#: PIL format name -> what the page calls it.
ACCEPTED_FORMATS = {"PNG": "PNG", "JPEG": "JPEG", "WEBP": "WebP", "BMP": "BMP", "TIFF": "TIFF", "GIF": "GIF"}


@dataclass
class _Params:
    """The rectify request's parameters (``steps`` / ``ensemble`` None: the pipeline's defaults)."""

    task: str
    steps: int | None
    ensemble: int | None
    seed: int
    always_correct: bool = False


def _int_field(form: Mapping[str, Any], key: str, label: str, low: int, high: int) -> int | None:
    raw = form.get(key)
    if raw is None or (isinstance(raw, str) and raw.strip() == ""):
        return None
    if not isinstance(raw, str):
        raise _InputError(f"{label} must be a number, not a file")
    try:
        value = int(raw.strip())
    except ValueError:
        raise _InputError(f"{label} must be a whole number, got {raw.strip()[:20]!r}") from None
    if not low <= value <= high:
        raise _InputError(f"{label} must be between {low} and {high}, got {value}")
    return value


def _parse_params(form: Mapping[str, Any], tasks: list[str], limits: AppLimits) -> _Params:
    """The form's ``task`` (default: the first of ``tasks``), ``steps``, ``ensemble``, ``seed`` (default 0) and
    ``always_correct`` (the correction gate off; default False), checked.

    Example:
        >>> _parse_params({"task": "rsc", "steps": "4", "always_correct": "1"}, ["sir", "rsc"], AppLimits())
        _Params(task='rsc', steps=4, ensemble=None, seed=0, always_correct=True)
    """
    task = form.get("task") or tasks[0]
    if not isinstance(task, str) or task not in (*tasks, AUTO):
        raise _InputError(f"unknown task {str(task)[:20]!r}; this server has {', '.join(tasks)} (or {AUTO})")
    steps = _int_field(form, "steps", "steps", 1, limits.max_steps)
    ensemble = _int_field(form, "ensemble", "ensemble size", 1, limits.max_ensemble)
    seed = _int_field(form, "seed", "seed", 0, 2**32 - 1)
    return _Params(task, steps, ensemble, 0 if seed is None else seed, _bool_field(form, "always_correct"))


def _bool_field(form: Mapping[str, Any], key: str) -> bool:
    """A checkbox: ``1``/``on``/``true``/``yes`` -> True; absent, empty, ``0``/``off``/``false``/``no`` -> False.

    Example:
        >>> _bool_field({"always_correct": "on"}, "always_correct"), _bool_field({}, "always_correct")
        (True, False)
    """
    raw = form.get(key)
    if raw is None:
        return False
    if not isinstance(raw, str):
        raise _InputError(f"{key} must be a checkbox value, not a file")
    value = raw.strip().lower()
    if value in ("1", "on", "true", "yes"):
        return True
    if value in ("", "0", "off", "false", "no"):
        return False
    raise _InputError(f"{key} must be 1/on/true or 0/off/false, got {raw.strip()[:20]!r}")


async def _read_upload(form: Mapping[str, Any], key: str, label: str, limits: AppLimits) -> bytes | None:
    item = form.get(key)
    if item is None or (isinstance(item, str) and item == ""):
        return None
    if not isinstance(item, UploadFile):
        raise _InputError(f"{label} must be sent as a file upload (form field {key!r})")
    data = await item.read(limits.max_upload_bytes + 1)
    if len(data) > limits.max_upload_bytes:
        raise _InputError(f"the {label} file is larger than the {_mb(limits.max_upload_bytes)} limit", 413)
    if not data:
        raise _InputError(f"the {label} file is empty")
    return data


def _accepted() -> str:
    return ", ".join(ACCEPTED_FORMATS.values())


def _open_image(data: bytes, label: str, limits: AppLimits) -> Image.Image:
    """Decode an upload after checking its type (by content) and size (from its header)."""
    try:
        im = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        raise _InputError(f"the {label} has too many pixels (limit {limits.max_side}x{limits.max_side})", 413) from None
    except (UnidentifiedImageError, OSError):
        raise _InputError(f"the {label} file is not an image of an accepted type ({_accepted()})", 415) from None
    if im.format not in ACCEPTED_FORMATS:
        raise _InputError(f"{im.format} images are not accepted; upload {_accepted()}", 415)
    w, h = im.size
    if w > limits.max_side or h > limits.max_side:
        raise _InputError(
            f"the {label} is {w}x{h} px; the limit is {limits.max_side}x{limits.max_side} px (W x H)", 413)
    if w < limits.min_side or h < limits.min_side:
        raise _InputError(f"the {label} is {w}x{h} px; it must be at least {limits.min_side} px on each side")
    try:
        check_single_frame(im, f"the {label} file")  # an animation: which frame was meant is unknown
    except ValueError as exc:
        raise _InputError(str(exc)) from None
    except (OSError, SyntaxError) as exc:  # counting the frames read a corrupt one
        raise _InputError(f"the {label} file is corrupt or truncated ({im.format}: {exc})") from None
    try:
        im.load()
        return ImageOps.exif_transpose(im)  # as the browser shows it
    except (OSError, ValueError, SyntaxError) as exc:
        raise _InputError(f"the {label} file is corrupt or truncated ({im.format}: {exc})") from None


def _to_rgb(im: Image.Image) -> np.ndarray:
    """The upload as RGB by the package's one rule (:func:`~stablemotion.io.images.image_to_rgb`), refusals worded for the page.

    The library's messages name command-line options (``--grey convert``, ``--mask alpha``);
    which rule refused is found by retrying with that rule relaxed, and the page's own words
    are used instead.
    """
    try:
        return image_to_rgb(im, name="the image")[0]
    except ValueError as refused:
        for grey, alpha, message in (
            ("convert", "refuse", "the image is a grey (single-channel) picture; the models take colour (RGB) "
                                  "images: save it as RGB and upload it again"),
            ("refuse", "drop", "the image has transparent pixels (an alpha channel); save it without transparency "
                               "and upload it again (for SIR, upload the empty area as the mask file: "
                               "white = content, black = empty)"),
            ("convert", "drop", "the image is a grey picture with transparent pixels; save it as RGB without "
                                "transparency and upload it again"),
        ):
            try:
                image_to_rgb(im, name="the image", grey=grey, alpha=alpha)
            except ValueError:
                continue
            raise _InputError(message) from None
        raise _InputError(str(refused)) from None


def _needs_mask(task: str) -> bool:
    return any(c in MASK_CONDITIONS for c in get_task(task).conditions)


def _decode_inputs(
    image_data: bytes, mask_data: bytes | None, task: str | None, limits: AppLimits
) -> tuple[np.ndarray, np.ndarray | None]:
    """-> image uint8 (H, W, 3), the uploaded mask as read (uint8 (H, W[, 3]), white = valid) or None.

    ``task`` None (auto: not chosen yet): an uploaded mask is read whatever the task turns out to be;
    otherwise a task without a mask refuses one before reading it.
    """
    image = _to_rgb(_open_image(image_data, "image", limits))
    if task is not None and mask_data is not None and not _needs_mask(task):
        raise _InputError(f"the {task} task takes no mask; remove the mask file")
    return image, None if mask_data is None else mask_array(_open_image(mask_data, "mask", limits))


def _task_mask(image: np.ndarray, given: np.ndarray | None, task: str, why: str = "") -> tuple[np.ndarray | None, str]:
    """-> the mask ``task`` runs with (SIR: ``given`` checked, or derived from the empty border; else None)
    and a note on it. ``why`` ends the "takes no mask" message (auto: how the task was chosen)."""
    if not _needs_mask(task):
        if given is not None:
            raise _InputError(f"the {task} task takes no mask; remove the mask file{why}")
        return None, ""
    try:
        mask, note = prepare_mask(image, given)
    except ValueError as exc:
        raise _InputError(str(exc)) from None
    return mask, note.replace("derived mask from", "mask derived from")


def _choose_task(image: np.ndarray, tasks: Sequence[str], threshold: float | None) -> Any:
    """Run on the inference worker: :func:`~stablemotion.model.task_choice.choose_task` for ``image``.

    Returns its :class:`~stablemotion.model.task_choice.TaskChoice` when it names a task of this
    server, or says the image needs none (``task == "none"``) or cannot be told (``task is None``:
    both are returned unchanged, :func:`_unchanged_choice`); otherwise raises a 422 saying why.
    """
    from ..model.task_choice import choose_task

    choice = choose_task(image, threshold=threshold)
    log.info("auto: task %s (%.0f%%): %s", choice.task or "undecided", 100 * choice.confidence, choice.reason)
    if choice.task is None or choice.task == "none":
        return choice
    if choice.task not in tasks:
        raise _InputError(f"the image looks like a {choice.task} task ({choice.confidence:.0%}) but this server has "
                          f"no {choice.task} model (it has {', '.join(tasks)}); choose a task to rectify it anyway", 422)
    return choice


def _unchanged_choice(choice: Any) -> str:
    """Why an ``auto`` image whose choice names no task is returned unchanged (one line), or ``""``.

    Example:
        >>> from types import SimpleNamespace
        >>> _unchanged_choice(SimpleNamespace(task=None, best="rsc", confidence=0.4, reason=""))
        'cannot tell the task (best guess rsc at 40%): the image is returned unchanged; choose a task to rectify it'
    """
    if choice.task is None:
        return (f"cannot tell the task (best guess {choice.best} at {choice.confidence:.0%}): the image is returned "
                "unchanged; choose a task to rectify it")
    if choice.task == "none":
        why = f" ({choice.reason})" if getattr(choice, "reason", "") else ""
        return f"no correction needed{why}: the image is returned unchanged; choose a task to rectify it anyway"
    return ""


async def _read_form(request: Request, tasks: list[str], limits: AppLimits) -> tuple[_Params, bytes, bytes | None]:
    """-> the request's parameters, its image file and its mask file (None when not sent), still compressed."""
    async with request.form(max_files=2, max_fields=8) as form:
        params = _parse_params(form, tasks, limits)
        image_data = await _read_upload(form, "image", "image", limits)
        mask_data = await _read_upload(form, "mask", "mask", limits)
    if image_data is None:
        raise _InputError("no image uploaded (form field 'image')")
    return params, image_data, mask_data


def _decode_upload(image_data: bytes, mask_data: bytes | None, task: str, limits: AppLimits) -> tuple[
        np.ndarray, np.ndarray | None, np.ndarray | None, str]:
    """Run in the decode pool: -> image uint8 (H, W, 3), the uploaded mask as read (or None), the
    mask ``task`` runs with and a note on it (with ``auto``: None and "", the task is not chosen yet)."""
    auto = task == AUTO
    image, given = _decode_inputs(image_data, mask_data, None if auto else task, limits)
    mask, note = (None, "") if auto else _task_mask(image, given, task)
    return image, given, mask, note
