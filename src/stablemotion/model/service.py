"""The rectify service: one image -> its rectified image, flow and side files, for every caller.

``stablemotion rectify`` (:mod:`stablemotion.cli.rectify`), the web app
(:mod:`stablemotion.app.server`) and evaluation (:mod:`stablemotion.evaluation.runner`)
rectify images through these functions, so that the same image, mask, task and seed give
the same image and flow whichever of them runs it:

* :func:`prepare_request` applies the mask rule: a task that takes a mask (SIR) uses the
  given one (checked against the image) or one derived from the stitched image's empty
  border (:func:`stablemotion.core.image_processing.prepare_mask`); other tasks take none.
* :func:`rectify` runs one :class:`RectifyRequest` through the bounded-memory path of
  :func:`stablemotion.core.large_image.rectify_capped` (the network at most at
  ``max_work_pixels``, the full-size warp in strips), refuses a non-finite flow, and returns a
  :class:`RectifyResult` at the input's size. :func:`rectify_image` does both in one call and
  :func:`rectify_many` a batch of requests.
* :mod:`stablemotion.model.rectify_folder` holds what a run over files and folders checks and
  plans before any model loads (inputs, headers, the output folder, resuming).
* :func:`write_results` writes a result's files atomically under the names the caller
  chooses (:data:`RESULT_KEYS`): the CLI's ``NAME.png`` / ``NAME_flow.png`` / ..., the app's
  ``rectified.png`` / ``flow.png`` / ... in a request folder, evaluation's ``results/NAME.png``.

Whether an image is corrected at all is decided in one place, :func:`unchanged_reason`: a SIR
image whose derived mask has no empty border is returned as it is, with a zero flow, before
the model runs; after it runs, the correction gate's verdict on the prediction
(:func:`stablemotion.model.correction_gate.gate_reason`, applied by the pipeline when
``correction_gate`` is set and reported as ``gate_reason``) leaves an image whose correction is
not supported unchanged, with its reason. ``always_correct=True`` turns the gate off.

Example:
    >>> import numpy as np
    >>> from stablemotion.model.tiny import tiny_pipeline
    >>> image = np.full((40, 56, 3), 128, np.uint8)
    >>> image[:4] = 0                                   # an empty border to rectangle
    >>> res = rectify_image(tiny_pipeline("sir"), image, task="sir", seed=0)
    >>> res.image.shape, res.flow.shape, res.mask.shape, res.unchanged
    ((40, 56, 3), (40, 56, 2), (40, 56), False)
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..core.constants import DEFAULT_CORRECTION_GATE
from ..core.image_processing import mask_valid, prepare_mask
from ..core.large_image import MAX_WORK_PIXELS, CappedResult
from ..io.images import PathLike, atomic_path
from ..tasks import MASK_CONDITIONS, TaskSpec, get_task

if TYPE_CHECKING:
    from ..io.metadata import ImageMetadata

__all__ = [
    "RESULT_KEYS", "NonFiniteFlowError", "RectifyRequest", "RectifyResult", "prepare_request", "rectify",
    "rectify_image", "rectify_many", "resolve_task", "takes_mask", "unchanged_reason", "unchanged_result",
    "write_results", "DEFAULT_CORRECTION_GATE",
]

#: The files :func:`write_results` can write, by key: the rectified image, the flow's colour
#: picture, the flow (``.npy``/``.flo``/``.png`` by the path's suffix), the mask, the ensemble
#: spread (``.npy``, pixels) and its colour picture.
RESULT_KEYS = ("image", "flow_color", "flow", "mask", "uncertainty", "uncertainty_color")


class NonFiniteFlowError(ValueError):
    """The model produced a flow with NaN or infinite values (often a float16 overflow)."""


def takes_mask(task: TaskSpec | str) -> bool:
    """Whether ``task`` (a spec or a registered name) is conditioned on a mask.

    Example:
        >>> takes_mask("sir"), takes_mask("rsc")
        (True, False)
    """
    spec = get_task(task) if isinstance(task, str) else task
    return any(c in MASK_CONDITIONS for c in spec.conditions)


def resolve_task(pipe: Any, task: TaskSpec | str | None = None) -> TaskSpec:
    """The spec of the task ``pipe`` runs for ``task`` (``None``: the pipeline's default task).

    A :class:`~stablemotion.model.pipeline.StableMotionPipeline` resolves it (refusing a task it
    does not serve); a stand-in with a ``tasks`` mapping looks it up there; otherwise the
    registered task of that name (default ``"sir"``).

    Example:
        >>> from stablemotion.model.tiny import tiny_pipeline
        >>> resolve_task(tiny_pipeline("rsc")).name
        'rsc'
    """
    resolve = getattr(pipe, "resolve_task", None)
    if callable(resolve):
        return resolve(task)
    if isinstance(task, TaskSpec):
        return task
    served = getattr(pipe, "tasks", None)
    spec = served.get(task) if isinstance(served, Mapping) and task is not None else None
    return spec or get_task(task or "sir")


@dataclass
class RectifyRequest:
    """One image ready for the model.

    Attributes:
        image: (H, W, 3) uint8 RGB.
        mask: the mask the model is given, uint8 (H, W) or (H, W, 3), white = valid content,
            or ``None`` (tasks without a mask).
        task: the task to run (a name or spec; ``None``: the pipeline's default task).
        mask_given: the mask came from the caller (``False``: derived from the empty border).
        note: one line on the mask for the user (what was used, % empty), or ``""``.
        original: the input at its own bit depth when that is not 8 bits (uint16 (H, W, 3), e.g. a
            16-bit PNG or TIFF; ``image`` is then its 8-bit copy for the model): the full-size warp
            uses it, so the result is 16-bit too. ``None``: ``image`` is the input.

    Example:
        >>> import numpy as np
        >>> req = RectifyRequest(np.zeros((8, 8, 3), np.uint8), task="rsc")
        >>> req.mask is None, req.mask_given
        (True, False)
    """

    image: np.ndarray
    mask: np.ndarray | None = None
    task: TaskSpec | str | None = None
    mask_given: bool = False
    note: str = ""
    original: np.ndarray | None = None


@dataclass
class RectifyResult(CappedResult):
    """What :func:`rectify` returns, all at the input's size (H, W): the fields of
    :class:`~stablemotion.core.large_image.CappedResult` (``image`` (H, W, 3) uint8, ``flow`` (H, W, 2)
    float32 pixels, ``flow_colours``, ``flow_max`` px, ``spread`` (H, W) px or ``None``,
    ``work_size``, ``seconds`` of inference and full-size warp), and:

    Attributes:
        mask: the mask the model was given (as in :class:`RectifyRequest`), or ``None``.
        pipe_seconds: wall time of the pipeline call alone (CUDA synchronised).
        unchanged: the image was returned as it is (zero flow), for ``reason``.
        reason: why it was left unchanged, or ``""``.
        task: the name of the task that ran.
        confidence: the correction gate's confidence in the prediction, in [0, 1]
            (:mod:`stablemotion.model.correction_gate`), or ``None`` when the model did not run.

    Example:
        >>> import numpy as np
        >>> res = unchanged_result(RectifyRequest(np.zeros((4, 6, 3), np.uint8), task="rsc"), "a test")
        >>> res.flow.shape, res.flow_max, res.spread_max, res.seconds
        ((4, 6, 2), 0.0, 0.0, 0.0)
    """

    mask: np.ndarray | None = None
    pipe_seconds: float = 0.0
    unchanged: bool = False
    reason: str = ""
    task: str = ""
    confidence: float | None = None

    @property
    def spread_max(self) -> float:
        """Largest ensemble spread in pixels (0 without an ensemble)."""
        return 0.0 if self.spread is None else float(self.spread.max(initial=0.0))


def prepare_request(
    image: np.ndarray,
    mask: np.ndarray | None = None,
    *,
    task: TaskSpec | str | None = None,
    source: str = "the mask",
    background: str = "auto",
    tolerance: int = 24,
) -> RectifyRequest:
    """The mask rule: ``image`` with the mask ``task`` runs with.

    A task that takes a mask (SIR) uses ``mask`` checked against the image (same size, some
    valid pixel), or without one a mask derived from the empty border (``background``,
    ``tolerance``: see :func:`stablemotion.core.image_processing.derive_mask`). Other tasks take
    none, and refuse one. ``task`` ``None`` means ``"sir"``.

    Raises:
        ValueError: a mask for a task without one; a mask of another size or with no valid pixel.

    Example:
        >>> import numpy as np
        >>> image = np.full((20, 30, 3), 90, np.uint8)
        >>> image[:, :3] = 0
        >>> req = prepare_request(image, task="sir")
        >>> req.mask.shape, req.mask_given, req.note
        ((20, 30), False, 'derived mask from the black border (10.0% empty)')
    """
    spec = get_task(task or "sir") if not isinstance(task, TaskSpec) else task
    if not takes_mask(spec):
        if mask is not None:
            raise ValueError(f"the {spec.name} task takes no mask")
        return RectifyRequest(image, None, task, False, "")
    used, note = prepare_mask(image, mask, source=source, background=background, tolerance=tolerance)
    return RectifyRequest(image, used, task, mask is not None, note)


def unchanged_reason(request: RectifyRequest, gate_reason: str = "") -> str:
    """Why ``request`` is returned unchanged instead of rectified, or ``""`` (rectify it).

    The one place that decides whether an image is corrected at all: before the model runs, a
    derived mask without an empty border leaves nothing to rectangle; after it runs,
    ``gate_reason`` is the correction gate's verdict on the prediction (the pipeline's
    ``gate_reason``: :func:`stablemotion.model.correction_gate.gate_reason`, ``""`` = supported).

    Example:
        >>> import numpy as np
        >>> unchanged_reason(prepare_request(np.full((8, 8, 3), 99, np.uint8), task="sir"))
        'no empty border found: nothing to rectangle'
        >>> unchanged_reason(RectifyRequest(np.zeros((8, 8, 3), np.uint8), task="rsc"), "left unchanged: a test")
        'left unchanged: a test'
    """
    if request.mask is not None and not request.mask_given and bool(mask_valid(request.mask).all()):
        return "no empty border found: nothing to rectangle"
    return str(gate_reason or "")


def unchanged_result(request: RectifyRequest, reason: str = "") -> RectifyResult:
    """``request``'s image as its own result: zero flow, no ensemble spread.

    Example:
        >>> import numpy as np
        >>> unchanged_result(RectifyRequest(np.ones((2, 3, 3), np.uint8), task="rsc")).image.sum()
        np.uint64(18)
    """
    from ..core.large_image import MAX_WORK_PIXELS, StripFlow, flow_colours

    h, w = request.image.shape[:2]
    zero = np.zeros((2, 2, 2), np.float32)
    # as for a rectified image: larger than the working size, the flow comes by strips (no 800 MB of zeros)
    zero = StripFlow(zero, (h, w)) if h * w > MAX_WORK_PIXELS else np.zeros((h, w, 2), np.float32)
    task = request.task if isinstance(request.task, str) else getattr(request.task, "name", "")
    image = request.image if request.original is None else request.original
    return RectifyResult(image, zero, flow_colours(zero)[0], 0.0, None, (h, w), 0.0, request.mask,
                         unchanged=True, reason=reason, task=task or "")


class _Checked:
    """``pipe`` whose call is timed (CUDA synchronised) and refuses a non-finite flow."""

    def __init__(self, pipe: Any) -> None:
        self.pipe, self.seconds = pipe, 0.0
        self.gate_reason, self.confidence = "", None  # the correction gate's verdict (first image)
        self.config = getattr(pipe, "config", None)  # what rectify_capped reads of the pipeline
        device = getattr(pipe, "_execution_device", None)
        self.cuda = getattr(device, "type", None) == "cuda"
        self.device = device

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        import torch

        if self.cuda:
            torch.cuda.synchronize(self.device)
        t0 = time.perf_counter()
        out = self.pipe(*args, **kwargs)
        if self.cuda:
            torch.cuda.synchronize(self.device)
        self.seconds += time.perf_counter() - t0
        if not np.isfinite(out.flow).all():
            raise NonFiniteFlowError("the model produced a non-finite flow (NaN/inf)")
        reasons, confidence = getattr(out, "gate_reason", None), getattr(out, "confidence", None)
        self.gate_reason = str(reasons[0]) if reasons else ""
        self.confidence = float(confidence[0]) if confidence else None
        return out


def rectify(
    pipe: Any,
    request: RectifyRequest,
    *,
    max_work_pixels: int | None = MAX_WORK_PIXELS,
    seed: int = 0,
    correction_gate: float | None = None,
    always_correct: bool = False,
    **pipe_kwargs: Any,
) -> RectifyResult:
    """Rectify one prepared image with ``pipe`` -> :class:`RectifyResult` at the input's size.

    The network runs at most at ``max_work_pixels`` pixels (``0``/``None``: no cap, the whole
    image goes through the pipeline), as
    :func:`stablemotion.core.large_image.rectify_capped` describes; the noise comes from
    ``torch.Generator().manual_seed(seed)``. ``pipe`` is called with ``task=`` when it serves
    tasks by name. ``pipe_kwargs`` go to the pipeline (``num_inference_steps``,
    ``ensemble_size``, ...). A flow holding NaN/inf raises :class:`NonFiniteFlowError` (before
    the full-size warp).

    ``correction_gate``: the gate's confidence threshold in [0, 1] (``None``: the pipeline's
    ``default_correction_gate``, 0 = off, for the bundled models; ``stablemotion rectify`` and
    the app pass :data:`DEFAULT_CORRECTION_GATE`); ``always_correct=True`` turns it off. An image
    the gate leaves unchanged comes back as :func:`unchanged_result` (the input itself, zero
    flow) with the gate's reason; ``confidence`` is reported either way.

    Example:
        >>> import numpy as np
        >>> from stablemotion.model.tiny import tiny_pipeline
        >>> req = RectifyRequest(np.full((48, 64, 3), 100, np.uint8), task="rsc")
        >>> res = rectify(tiny_pipeline("rsc"), req, max_work_pixels=32 * 32, seed=3)
        >>> res.image.shape, res.work_size, res.task
        ((48, 64, 3), (27, 36), 'rsc')
    """
    import torch

    from ..core import large_image  # looked up at call time: tests replace rectify_capped

    spec = resolve_task(pipe, request.task)
    reason = unchanged_reason(request)
    if reason:
        return unchanged_result(request, reason)
    kwargs = dict(pipe_kwargs)
    if getattr(pipe, "tasks", None) is not None:  # a pipeline serving tasks by name runs the one asked for
        kwargs["task"] = spec.name
    if correction_gate is not None:
        kwargs["correction_gate"] = correction_gate
    if always_correct:
        kwargs["always_correct"] = True
    image = request.image
    checked = _Checked(pipe)
    res = large_image.rectify_capped(checked, image, request.mask, spec.padding,
                                     max_work_pixels or image.shape[0] * image.shape[1],
                                     generator=torch.Generator().manual_seed(seed), warp_image=request.original,
                                     **kwargs)
    reason = unchanged_reason(request, checked.gate_reason)
    if reason:
        kept = unchanged_result(request, reason)
        kept.task, kept.confidence, kept.pipe_seconds, kept.seconds = spec.name, checked.confidence, \
            checked.seconds, res.seconds
        return kept
    return RectifyResult(res.image, res.flow, res.flow_colours, res.flow_max, res.spread, res.work_size,
                         res.seconds, request.mask, checked.seconds, task=spec.name, confidence=checked.confidence)


def rectify_image(
    pipe: Any,
    image: np.ndarray,
    mask: np.ndarray | None = None,
    *,
    task: TaskSpec | str | None = None,
    max_work_pixels: int | None = MAX_WORK_PIXELS,
    seed: int = 0,
    correction_gate: float | None = None,
    always_correct: bool = False,
    **pipe_kwargs: Any,
) -> RectifyResult:
    """Rectify a uint8 (H, W, 3) image: :func:`prepare_request` (the mask rule), then :func:`rectify`.

    ``task`` ``None``: the pipeline's default task. ``correction_gate`` / ``always_correct``: the
    correction gate (see :func:`rectify`).

    Example:
        >>> import numpy as np
        >>> from stablemotion.model.tiny import tiny_pipeline
        >>> image = np.full((32, 48, 3), 120, np.uint8)    # no empty border: returned unchanged
        >>> res = rectify_image(tiny_pipeline("sir"), image)
        >>> res.unchanged, res.reason, bool((res.image == image).all())
        (True, 'no empty border found: nothing to rectangle', True)
    """
    spec = resolve_task(pipe, task)
    request = prepare_request(image, mask, task=spec)
    return rectify(pipe, request, max_work_pixels=max_work_pixels, seed=seed, correction_gate=correction_gate,
                   always_correct=always_correct, **pipe_kwargs)


def rectify_many(pipe: Any, requests: Iterable[RectifyRequest], **kwargs: Any) -> Iterator[RectifyResult]:
    """:func:`rectify` each request in turn (same ``kwargs``, so the same seed for each image).

    Example:
        >>> import numpy as np
        >>> from stablemotion.model.tiny import tiny_pipeline
        >>> reqs = [RectifyRequest(np.full((24, 24, 3), v, np.uint8), task="rsc") for v in (50, 200)]
        >>> [r.image.shape for r in rectify_many(tiny_pipeline("rsc"), reqs)]
        [(24, 24, 3), (24, 24, 3)]
    """
    for request in requests:
        yield rectify(pipe, request, **kwargs)


def _save_array_image(array: np.ndarray, path: Path, png_compress_level: int | None) -> None:
    """A uint8 image array written atomically; format from the suffix (PNG at ``png_compress_level``)."""
    from PIL import Image

    from ..io.images import save_image

    if png_compress_level is None or path.suffix.lower() != ".png":
        save_image(array, path)
        return
    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG", compress_level=png_compress_level)


def _save_npy(array: np.ndarray, path: Path) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array)


def write_results(
    result: RectifyResult,
    paths: Mapping[str, PathLike],
    *,
    png_compress_level: int | None = None,
    metadata: ImageMetadata | None = None,
    jpeg_quality: int = 95,
) -> list[Path]:
    """Write the files of ``result`` named in ``paths`` (keys of :data:`RESULT_KEYS`), each atomically.

    The rectified ``"image"`` keeps the input's bit depth (a 16-bit result goes to PNG or TIFF)
    and carries the input's ``metadata`` (:class:`~stablemotion.io.metadata.ImageMetadata`: EXIF
    with the orientation reset, ICC profile, XMP panorama tags); JPEG at ``jpeg_quality`` (1-100).

    ``"flow"`` is written by its suffix (``.npy``/``.flo``/``.png``, pixels); ``"mask"`` only
    when the result has one; ``"uncertainty"`` (``.npy``, pixels) and ``"uncertainty_color"``
    only with an ensemble spread, or as zeros for an unchanged image (no member ran).
    ``png_compress_level``: zlib level of PNG files (``None``: PIL's default). Files are written
    in the order of ``paths``.

    Returns:
        The paths written, in the order of ``paths``.

    Example:
        >>> import numpy as np, tempfile
        >>> from pathlib import Path
        >>> res = unchanged_result(RectifyRequest(np.zeros((4, 6, 3), np.uint8), task="rsc"))
        >>> out = Path(tempfile.mkdtemp())
        >>> [p.name for p in write_results(res, {"image": out / "a.png", "flow": out / "a_flow.npy",
        ...                                      "mask": out / "a_mask.png"})]
        ['a.png', 'a_flow.npy']
    """
    from ..core.flow import write_flow
    from ..core.large_image import uncertainty_colours
    from ..io.metadata import save_image_with_metadata

    unknown = set(paths) - set(RESULT_KEYS)
    if unknown:
        raise ValueError(f"unknown result files {sorted(unknown)}: use {RESULT_KEYS}")
    spread = result.spread
    if spread is None and result.unchanged:
        spread = np.zeros(result.image.shape[:2], np.float32)
    written: list[Path] = []
    for key, where in paths.items():
        path = Path(where)
        if key == "image" and (metadata is not None or result.image.dtype != np.uint8
                               or path.suffix.lower() in (".jpg", ".jpeg", ".tif", ".tiff")):
            save_image_with_metadata(result.image, path, metadata, jpeg_quality=jpeg_quality)
        elif key == "image":
            _save_array_image(result.image, path, png_compress_level)
        elif key == "flow_color":
            _save_array_image(result.flow_colours, path, png_compress_level)
        elif key == "flow":
            write_flow(path, result.flow)
        elif key == "mask" and result.mask is not None:
            _save_array_image(result.mask, path, png_compress_level)
        elif key == "uncertainty" and spread is not None:
            _save_npy(spread, path)
        elif key == "uncertainty_color" and spread is not None:
            _save_array_image(uncertainty_colours(spread)[0], path, png_compress_level)
        else:
            continue
        written.append(path)
    return written

