"""Argument checking and input conversion of :class:`~stablemotion.model.pipeline.StableMotionPipeline`.

The pipeline runs them in this order before any compute (diffusers' ``check_inputs`` convention):
:meth:`~PipelineInputsMixin.resolve_settings` (``None`` -> the config's defaults),
:meth:`~PipelineInputsMixin.check_inputs` (the arguments; validates only),
:meth:`~PipelineInputsMixin.prepare_inputs` (images and conditions -> float32 tensors) and
:meth:`~PipelineInputsMixin.check_prepared_inputs` (sizes, batches, masks, noise). The checks of the
pipeline's own config (:func:`model_tasks`, :func:`check_task_resolutions`, :func:`check_choice`) live here too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from diffusers import UNet2DConditionModel

from ..core.constants import ASPECT_MODES, FINAL_STEPS, FLOW_PROJECTIONS, FLOW_REGULARIZATIONS
from ..core.ensemble import ENSEMBLE_MODES
from ..core.image_processing import MASK_THRESHOLD, ImageInput, processing_size, to_image_batch, to_mask_batch
from ..tasks import MASK_CONDITIONS, TaskSpec, get_task, union_conditions
from .components import EmptyTextEmbedding, TaskEmbedding, infer_task
from .correction_gate import check_gate
from .pipeline_output import OUTPUT_TYPES

__all__ = ["PipelineInputsMixin", "check_choice", "merge_mask", "model_tasks", "check_count",
           "check_task_resolutions"]


def check_choice(name: str, value: Any, choices: Sequence[Any]) -> None:
    """Raise ``ValueError`` unless ``value`` is one of ``choices`` (``name`` is the argument's name)."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def check_count(name: str, value: Any, hint: str = "") -> None:
    """Raise ``ValueError`` unless ``value`` is an int >= 1."""
    if not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1{hint}, got {value!r}")


def model_tasks(
    unet: UNet2DConditionModel,
    text_embedding: EmptyTextEmbedding | TaskEmbedding,
    task: Mapping[str, Any] | str | None,
    tasks: list | None,
) -> tuple[TaskSpec, list[TaskSpec], tuple[str, ...]]:
    """The default task, the model's task list (empty for a single-task model) and the UNet's
    conditions, checked against the UNet's input channels and the text embedding."""
    in_channels = int(unet.config.in_channels)
    specs = [get_task(t) for t in tasks] if tasks else []
    if specs:
        names = [t.name for t in specs]
        if len(set(names)) != len(specs):
            raise ValueError(f"tasks must be distinct, got {names}")
        spec = specs[0] if task is None else get_task(task)
        if spec.name not in names:
            raise ValueError(f"the default task {spec.name!r} is not one of the model's tasks {names}")
        conditions = union_conditions(specs)
        rows = getattr(text_embedding, "task_names", None)
        if rows != names:
            raise ValueError(
                f"a multi-task model needs a TaskEmbedding with one row per task {names}, "
                f"got {type(text_embedding).__name__}" + (f" for {rows}" if rows else "")
            )
    else:
        spec = infer_task(in_channels) if task is None else get_task(task)
        conditions = spec.conditions
    if 4 * (len(conditions) + 1) != in_channels:
        what = f"tasks {[t.name for t in specs]}" if specs else f"task {spec.name!r}"
        raise ValueError(
            f"{what} need a UNet with {4 * (len(conditions) + 1)} input channels (conditions "
            f"{list(conditions)} + flow, 4 each) but this UNet has {in_channels}: wrong checkpoint for the task"
        )
    if unet.config.cross_attention_dim != text_embedding.config.embedding_dim:
        raise ValueError(
            f"text embedding dim {text_embedding.config.embedding_dim} does not match the UNet's "
            f"cross_attention_dim {unet.config.cross_attention_dim}"
        )
    return spec, specs, tuple(conditions)


def check_task_resolutions(task_resolutions: Mapping | None, names: list[str]) -> dict[str, list[int]]:
    """``{task: [H, W]}`` with int sizes, checked against the model's task ``names``."""
    own = {str(k): [int(v) for v in r] for k, r in dict(task_resolutions or {}).items()}
    for name, r in own.items():
        if name not in names or len(r) != 2 or min(r) < 1:
            raise ValueError(f"task_resolutions must map the model's tasks {names} to [H, W], got {name!r}: {r}")
    return own


def merge_mask(mask: ImageInput | None, conditions: Mapping[str, ImageInput] | None) -> dict[str, ImageInput]:
    """``conditions`` with ``mask`` (the ``mask=`` argument) added under ``"mask"``."""
    merged = dict(conditions or {})
    if mask is not None:
        if "mask" in merged:
            raise ValueError("pass the mask either as mask= or in conditions, not both")
        merged["mask"] = mask
    return merged




class PipelineInputsMixin:
    """The input steps of :class:`~stablemotion.model.pipeline.StableMotionPipeline` (a mixin: it uses the
    pipeline's ``config``, ``task``, ``conditions``, ``scheduler``, ``unet``, ``vae_scale_factor`` and
    ``size_multiple``)."""

    def check_inputs(
        self,
        conditions: Mapping[str, ImageInput],
        num_inference_steps: int,
        ensemble_size: int,
        ensemble_mode: str,
        batch_size: int | None,
        output_type: str,
        decode_scale: int = 1,
        final_step: str = "x0",
        flow_regularization: str = "none",
        processing_image: ImageInput | None = None,
        return_members: bool = False,
        task: TaskSpec | None = None,
    ) -> None:
        """Check the call's arguments before any conversion or compute (``task``: the chosen task,
        default the model's). Validates only: the inputs' sizes and values are checked once
        converted (:meth:`prepare_inputs`, :meth:`check_prepared_inputs`).

        Raises:
            ValueError: naming the argument and what it must be.

        Example:
            >>> from stablemotion.model.tiny import tiny_pipeline
            >>> pipe = tiny_pipeline("sir")
            >>> pipe.check_inputs({"mask": None}, 1, 1, "image", None, "pt")  # doctest: +ELLIPSIS
            Traceback (most recent call last):
            ...
            ValueError: task 'sir' needs the condition 'mask' (1 = valid content; ...); pass mask=...
        """
        check_choice("flow_regularization", flow_regularization, FLOW_REGULARIZATIONS)
        check_choice("final_step", final_step, FINAL_STEPS)
        check_count("num_inference_steps", num_inference_steps)
        if num_inference_steps > self.scheduler.config.num_train_timesteps:
            raise ValueError(f"num_inference_steps must be <= {self.scheduler.config.num_train_timesteps}")
        check_count("ensemble_size", ensemble_size)
        check_choice("ensemble_mode", ensemble_mode, ENSEMBLE_MODES)
        check_count("decode_scale", decode_scale, " (1 = full-resolution flow decode)")
        if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
            raise ValueError(f"batch_size must be None or an int >= 1, got {batch_size!r}")
        check_choice("output_type", output_type, OUTPUT_TYPES)
        if return_members and ensemble_mode == "latent" and ensemble_size > 1:
            raise ValueError('return_members needs decoded members: use ensemble_mode "image" or "flow", not "latent"')
        spec = task or self.task
        unknown = set(conditions) - set(spec.conditions) - {"image"}
        if unknown:
            raise ValueError(f"task {spec.name!r} takes conditions {list(spec.conditions)}, got unknown {sorted(unknown)}")
        for name in spec.conditions:
            if name != "image" and conditions.get(name) is None:
                hint = (
                    " (1 = valid content; derive one from the empty border with "
                    "stablemotion.core.image_processing.derive_mask, or `stablemotion rectify` does it)"
                    if name in MASK_CONDITIONS
                    else ""
                )
                raise ValueError(f"task {spec.name!r} needs the condition {name!r}{hint}; pass {name}=...")
        if processing_image is not None and len(self.conditions) > 1:
            raise ValueError(
                f"processing_image is for single-condition models (the released RS-Real protocol); this model "
                f"takes conditions {list(self.conditions)}: pass processing_resolution instead"
            )

    def prepare_inputs(
        self,
        image: ImageInput,
        conditions: Mapping[str, ImageInput],
        processing_image: ImageInput | None = None,
        task: TaskSpec | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor | None]:
        """The inputs as float32 CPU tensors (after :meth:`check_inputs`; ``task``: default the model's).

        The converters of :mod:`stablemotion.core.image_processing` refuse unreadable values (grey,
        RGBA, NaN, out of range) with a ``ValueError`` naming the input.

        Returns:
            ``(images (B, 3, H, W) in [0, 1], {condition: (b, C, H, W) in [0, 1]} (b = 1 or B; masks
            encoded by the config's ``mask_encoding``), processing image (B', 3, h, w) or None)``.
        """
        spec = task or self.task
        images = to_image_batch(image, "image")
        conds: dict[str, torch.Tensor] = {}
        for name in spec.conditions:
            if name in MASK_CONDITIONS:
                conds[name] = to_mask_batch(conditions[name], name, encoding=self.config.mask_encoding)
            elif name != "image":
                conds[name] = to_image_batch(conditions[name], name)
        proc = None if processing_image is None else to_image_batch(processing_image, "processing_image")
        return images, conds, proc

    def check_prepared_inputs(
        self,
        images: torch.Tensor,
        conds: Mapping[str, torch.Tensor],
        processing_image: torch.Tensor | None,
        processing_resolution: int | Sequence[int],
        ensemble_size: int,
        decode_scale: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
    ) -> None:
        """Check the converted inputs (:meth:`prepare_inputs`) against each other and the model:
        condition sizes and batches, masks with a valid pixel, the processing size, ``decode_scale``,
        the generators and the given noise. Validates only; raises ``ValueError``."""
        n, (h, w) = images.shape[0], tuple(images.shape[-2:])
        for name, t in conds.items():
            if tuple(t.shape[-2:]) != (h, w):
                raise ValueError(
                    f"{name} size {tuple(t.shape[-2:])} (H, W) differs from the image size {(h, w)}: "
                    f"the {name} must be pixel-aligned with the image"
                )
            if t.shape[0] not in (1, n):
                raise ValueError(f"{name} batch size {t.shape[0]} differs from the image batch size {n}")
            if name in MASK_CONDITIONS and bool((t.mean(dim=1) < MASK_THRESHOLD).flatten(1).all(dim=1).any()):
                raise ValueError(f"{name} has no valid pixel (white = valid content, black = empty)")  # one mask rule
        if processing_image is not None:
            if processing_image.shape[0] != n:
                raise ValueError(f"processing_image batch size {processing_image.shape[0]} differs from the image batch size {n}")
            ph, pw = processing_image.shape[-2:]
            if ph % self.size_multiple or pw % self.size_multiple:
                raise ValueError(
                    f"processing_image size {(ph, pw)} (H, W) must be a multiple of {self.size_multiple} for this model"
                )
        size = self.resolve_processing_size(images, processing_image, processing_resolution)
        f = self.vae_scale_factor
        if decode_scale > 1 and (size[0] // f) % decode_scale + (size[1] // f) % decode_scale:
            raise ValueError(
                f"decode_scale {decode_scale} must divide the latent size {(size[0] // f, size[1] // f)} "
                f"(processing resolution {size} / {f})"
            )
        if isinstance(generator, list) and len(generator) != n * ensemble_size:
            raise ValueError(
                f"a list of generators needs one per sample (batch {n} x ensemble {ensemble_size} = "
                f"{n * ensemble_size}), got {len(generator)}"
            )
        if latents is not None:
            want = (n * ensemble_size, int(self.unet.config.out_channels), size[0] // f, size[1] // f)
            if not isinstance(latents, torch.Tensor) or tuple(latents.shape) != want:
                got = tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__
                raise ValueError(
                    f"latents (the initial noise) must be a tensor of shape {want} (batch {n} x ensemble "
                    f"{ensemble_size}, latent channels, processing size {size} / {f}), got {got}"
                )
            if not bool(torch.isfinite(latents).all()):
                raise ValueError("latents contain NaN or infinite values")

    def resolve_processing_size(self, images: torch.Tensor, processing_image: torch.Tensor | None,
                        processing_resolution: int | Sequence[int]) -> tuple[int, int]:
        """The network resolution (h, w) for (B, 3, H, W) ``images``: ``processing_image``'s size when
        given, else ``processing_resolution`` resolved by :func:`~stablemotion.core.image_processing.processing_size`."""
        res = processing_resolution if processing_image is None else tuple(processing_image.shape[-2:])
        return processing_size(tuple(images.shape[-2:]), res, self.size_multiple)

    def resolve_settings(
        self,
        task: TaskSpec,
        num_inference_steps: int | None = None,
        ensemble_size: int | None = None,
        ensemble_mode: str | None = None,
        processing_resolution: int | Sequence[int] | None = None,
        final_step: str | None = None,
        decode_scale: int = 1,
        border_band: float | None = None,
        flow_regularization: str | None = None,
        flow_projection: str | None = None,
        correction_gate: float | None = None,
        aspect_mode: str | None = None,
    ) -> dict[str, Any]:
        """The call's inference settings, ``None`` replaced by the config's defaults (a multi-task
        model's ``task_resolutions`` first); what :attr:`StableMotionOutput.settings` reports.

        Example:
            >>> from stablemotion.model.tiny import tiny_pipeline
            >>> pipe = tiny_pipeline("sir")
            >>> s = pipe.resolve_settings(pipe.task, ensemble_size=3)
            >>> s["num_inference_steps"], s["ensemble_size"], s["processing_resolution"], s["final_step"]
            (1, 3, [32, 32], 'x0')
        """
        cfg = self.config
        projection = cfg.get("default_flow_projection", "none") if flow_projection is None else flow_projection
        check_choice("flow_projection", projection, FLOW_PROJECTIONS)
        gate = cfg.get("default_correction_gate", 0.0) if correction_gate is None else correction_gate
        aspect = cfg.get("default_aspect_mode", "auto") if aspect_mode is None else aspect_mode
        check_choice("aspect_mode", aspect, ASPECT_MODES)
        res = processing_resolution
        if res is None:
            res = (cfg.get("task_resolutions") or {}).get(task.name, cfg.default_processing_resolution)
        return {
            "num_inference_steps": cfg.default_denoising_steps if num_inference_steps is None else num_inference_steps,
            "ensemble_size": cfg.default_ensemble_size if ensemble_size is None else ensemble_size,
            "ensemble_mode": cfg.default_ensemble_mode if ensemble_mode is None else ensemble_mode,
            "processing_resolution": res,
            "final_step": cfg.default_final_step if final_step is None else final_step,
            "decode_scale": decode_scale,
            "mask_encoding": cfg.mask_encoding,
            "border_band": cfg.default_border_band if border_band is None else border_band,
            "ensemble_rounding": cfg.ensemble_rounding,
            "flow_regularization": (cfg.default_flow_regularization if flow_regularization is None
                                    else flow_regularization),
            "flow_projection": projection,
            "correction_gate": check_gate(gate),
            "aspect_mode": aspect,
            "task": task.name,
        }
