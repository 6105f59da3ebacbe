"""One input file -> its result files: the single copy of "rectify one image" for every rectify engine.

``stablemotion rectify`` runs it in its own process(es) (``--engine local``, also under
``accelerate launch``) and in Ray actors (``--engine ray``, :mod:`stablemotion.batch`), so the
same image, settings and seed give byte-identical files whichever engine runs it:

* :class:`FileOptions`: what is done with each file besides the model (input rules, mask
  rule, seed, pipeline options, which side files in which format).
* :func:`output_paths`: the names of an image's result files in the output folder.
* :func:`settings_record`: everything that changes an image's outputs, as the folder's
  manifest records it (its :func:`~stablemotion.io.outdir.settings_key` decides what a rerun skips).
* :func:`read_input` (CPU only: reading and decoding) then :func:`rectify_decoded` (the model
  through :func:`stablemotion.model.service.rectify`, then
  :func:`~stablemotion.model.service.write_results`, each file written atomically).

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> import numpy as np
    >>> from stablemotion.io.images import save_image
    >>> from stablemotion.model.tiny import tiny_pipeline
    >>> folder = Path(tempfile.mkdtemp())
    >>> path = save_image(np.full((24, 32, 3), 90, np.uint8), folder / "in" / "a.png")
    >>> options = FileOptions(max_work_pixels=32 * 32)
    >>> outputs = output_paths(folder / "out", "a", options, with_mask=False, ensemble=1)
    >>> pipe = tiny_pipeline("rsc")
    >>> res = rectify_decoded(pipe, pipe.resolve_task(None), read_input(path, options), outputs, options)
    >>> sorted(p.name for p in (folder / "out").iterdir())
    ['a.png', 'a_flow.png']
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..core.large_image import MAX_WORK_PIXELS
from ..io.images import DEFAULT_MAX_PIXELS, SIDE_FILE_SUFFIXES, PathLike

__all__ = ["DecodedInput", "FileOptions", "output_paths", "read_input", "rectify_decoded", "settings_record"]


@dataclass(frozen=True)
class FileOptions:
    """What rectify does with each input file, besides running the model.

    Attributes:
        grey: grey inputs: ``"refuse"`` or ``"convert"`` (:func:`stablemotion.io.images.image_to_rgb`).
        alpha: inputs with transparent pixels: ``"refuse"`` or ``"drop"``.
        mask: ``None`` (masks derived from the empty border, or given per file), ``"alpha"`` (each
            input's alpha channel is its SIR mask), or the ``--mask`` argument as given (a file or folder).
        mask_background, mask_tolerance: how masks are derived (colour of the empty border; 0-255 distance).
        max_pixels: inputs larger than this many pixels are refused (``None``: no limit).
        max_work_pixels: the network runs at most at this many pixels (0: no cap).
        seed: the noise seed of every image.
        pipe_kwargs: pipeline options (``num_inference_steps``, ``correction_gate`` ...), ``None`` values left out.
        image_ext, save_flow, flow_format, save_mask: which result files, in which format.
        jpeg_quality: quality (1-100) of a JPEG rectified image (``image_ext="jpg"``).

    Example:
        >>> FileOptions(seed=3).seed
        3
    """

    grey: str = "refuse"
    alpha: str = "refuse"
    mask: str | None = None
    mask_background: str = "auto"
    mask_tolerance: int = 24
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    max_work_pixels: int = MAX_WORK_PIXELS
    seed: int = 0
    pipe_kwargs: dict[str, Any] = field(default_factory=dict)
    image_ext: str = "png"
    jpeg_quality: int = 95
    save_flow: bool = False
    flow_format: str = "npy"
    save_mask: bool = False


def output_paths(out: Path, stem: str, options: FileOptions, with_mask: bool, ensemble: int) -> dict[str, Path]:
    """The result files of input ``stem`` in ``out``, by :data:`~stablemotion.model.service.RESULT_KEYS` key:
    ``NAME.png`` (``image_ext``), ``NAME_flow.png``, ``NAME_flow.npy``/``.flo`` (``save_flow``),
    ``NAME_mask.png`` (``save_mask``, tasks with a mask), ``NAME_uncertainty.npy``/``.png`` (``ensemble`` > 1).

    Example:
        >>> sorted(p.name for p in output_paths(Path("out"), "a", FileOptions(save_flow=True), False, 2).values())
        ['a.png', 'a_flow.npy', 'a_flow.png', 'a_uncertainty.npy', 'a_uncertainty.png']
    """
    out = Path(out)
    flow, mask, spread = (f"{stem}{sfx}" for sfx in SIDE_FILE_SUFFIXES)
    paths = {"image": out / f"{stem}.{options.image_ext}", "flow_color": out / f"{flow}.png"}
    if options.save_flow:
        paths["flow"] = out / f"{flow}.{options.flow_format}"
    if with_mask and options.save_mask:
        paths["mask"] = out / f"{mask}.png"
    if ensemble > 1:
        paths["uncertainty"] = out / f"{spread}.npy"
        paths["uncertainty_color"] = out / f"{spread}.png"
    return paths


def settings_record(model: str, options: FileOptions, kwargs: dict[str, Any], dtype: str) -> dict[str, Any]:
    """Everything that changes an image's outputs, as the output folder's manifest records it: the model,
    seed, mask option, every inference option in ``kwargs`` (``None`` = the model's default), the dtype
    that ran and the work-size cap.

    Example:
        >>> settings_record("bundled:sir", FileOptions(), {"num_inference_steps": None}, "fp32")["dtype"]
        'fp32'
    """
    record = {"model": model, "seed": options.seed, "mask": options.mask, **dict(kwargs), "dtype": dtype,
              "max_work_pixels": options.max_work_pixels}
    if options.image_ext == "jpg":  # only JPEG outputs depend on it (PNG/TIFF folders keep their records)
        record["jpeg_quality"] = options.jpeg_quality
    return record


@dataclass
class DecodedInput:
    """An input file read for the model (CPU work only).

    Attributes:
        image: (H, W, 3) uint8 RGB (the model's input).
        original: the input at its own bit depth when it is 16-bit (uint16 (H, W, 3)): warped at full
            size, so the result stays 16-bit; ``None`` for 8-bit inputs.
        metadata: the input's EXIF (orientation reset), ICC profile and XMP, carried to the rectified image.
        alpha: (H, W) uint8 alpha mask (255 = valid) when ``FileOptions.mask == "alpha"`` and the file has
            transparent pixels, else ``None``.
        mask: the given mask file's content (uint8 (H, W) or (H, W, 3)), or ``None``.
        note: what was converted while reading ("" when nothing was).
        name: the input's name in messages (its path or URI).
        mask_name: the mask file's name in messages, or ``""``.

    Example:
        >>> DecodedInput(np.zeros((2, 2, 3), np.uint8)).mask is None
        True
    """

    image: np.ndarray
    alpha: np.ndarray | None = None
    mask: np.ndarray | None = None
    note: str = ""
    name: str = ""
    mask_name: str = ""
    original: np.ndarray | None = None
    metadata: Any = None


def read_input(path: PathLike, options: FileOptions, mask: PathLike | None = None,
               name: str | None = None) -> DecodedInput:
    """Read and decode input ``path`` (and its mask file ``mask``) by ``options``' input rules
    (:func:`stablemotion.io.images.read_rgb`); ``name``: how messages call it (default: the path).

    Raises:
        ValueError / FileNotFoundError: a file that cannot be read, decoded or is refused (naming it).

    Example:
        >>> import tempfile
        >>> from stablemotion.io.images import save_image
        >>> path = save_image(np.zeros((4, 6), np.uint8), Path(tempfile.mkdtemp()) / "grey.png")
        >>> read_input(path, FileOptions(grey="convert")).note
        'grey (L) converted to RGB'
    """
    from ..io.images import load_image
    from ..io.metadata import read_image_with_metadata, to_model_input

    image, alpha, note, meta = read_image_with_metadata(
        path, grey=options.grey, alpha="mask" if options.mask == "alpha" else options.alpha,
        max_pixels=options.max_pixels)
    original = image if image.dtype != np.uint8 else None
    if original is not None:
        image = to_model_input(original)
    given = None if mask is None else load_image(mask, "mask")
    return DecodedInput(image, alpha, given, note, str(path) if name is None else name,
                        "" if mask is None else str(mask), original, meta)


def rectify_decoded(pipe: Any, spec: Any, decoded: DecodedInput, outputs: dict[str, Path], options: FileOptions,
                    stem: str = "", log: Callable[[str], None] | None = None) -> Any:
    """Rectify one decoded input with ``pipe`` running task ``spec`` and write its result files ``outputs``
    (each atomically) -> the :class:`~stablemotion.model.service.RectifyResult` (its ``unchanged`` and
    ``reason`` say whether it was left as it is). Notes for the user go to ``log`` (prefixed ``stem:``).

    The mask rule is :func:`stablemotion.model.service.prepare_request`'s; the model runs through
    :func:`stablemotion.model.service.rectify` (at most at ``options.max_work_pixels``, seeded by
    ``options.seed``).

    Raises:
        ValueError: ``--mask alpha`` on an input without transparent pixels, a bad mask, a non-finite flow.
        OSError: a result file that cannot be written.
    """
    from ..model.service import (
        NonFiniteFlowError,
        RectifyRequest,
        prepare_request,
        rectify,
        takes_mask,
        unchanged_reason,
        write_results,
    )

    def say(text: str) -> None:
        if log is not None:
            log(f"{stem}: {text}")

    if decoded.original is not None and outputs["image"].suffix.lower() in (".jpg", ".jpeg"):  # before the model runs
        raise ValueError(f"{decoded.name} is a 16-bit image and JPEG holds 8 bits: use --image-ext png or tif")
    if decoded.note:
        say(decoded.note)
    alpha_mask = options.mask == "alpha"
    needs_mask = takes_mask(spec)
    image = decoded.image
    request = RectifyRequest(image, task=spec)
    if needs_mask:
        if alpha_mask and decoded.alpha is None:
            raise ValueError(f"--mask alpha but {decoded.name} has no transparent pixel; pass a mask file or "
                             "drop --mask to derive one from the empty border")
        given = decoded.alpha if alpha_mask else decoded.mask
        request = prepare_request(image, given, task=spec, background=options.mask_background,
                                  tolerance=options.mask_tolerance,
                                  source="alpha channel" if alpha_mask else f"mask {decoded.mask_name or None}")
    request.original = decoded.original
    if needs_mask and decoded.mask is None and not unchanged_reason(request):
        say(request.note)
    try:
        res = rectify(pipe, request, max_work_pixels=options.max_work_pixels, seed=options.seed,
                      **options.pipe_kwargs)
    except NonFiniteFlowError as exc:
        raise ValueError(f"{decoded.name}: {exc}; try --dtype fp32") from None
    if res.unchanged:
        hint = "--always-correct applies it anyway" if res.confidence is not None else "pass --mask to force a run"
        say(f"{res.reason}, written unchanged ({hint})")
    if res.work_size != image.shape[:2]:
        say(f"{image.shape[1]}x{image.shape[0]} px, over --max-work-pixels: the model ran at "
            f"{res.work_size[1]}x{res.work_size[0]}, the flow was applied at full size")
    del image, request
    write_results(res, outputs, metadata=decoded.metadata, jpeg_quality=options.jpeg_quality)
    return res
