"""``StableMotionPipeline``: one-step flow estimation and rectification (a diffusers pipeline).

Components: ``unet`` (conv_in expanded for the task's conditions), ``vae``, ``scheduler``
(DDIM, trailing spacing, v-prediction) and ``text_embedding`` (the stored empty prompt,
:class:`~stablemotion.model.components.EmptyTextEmbedding`). The pipeline config holds the task
description and the recommended inference settings; ``None`` arguments fall back to them.

Inference (docs/method.md, "Inference"): the input and its condition images are resized to the
processing resolution, encoded once with the VAE mean (times ``scaling_factor``) and shared
by the E ensemble members; each member starts from Gaussian noise at t = 999 and follows
the scheduler (1 step by default). The final latent is either the last step's x0 estimate
(``final_step="x0"``) or, as in the released code, the DDIM ``prev_sample`` of the last
step (``"prev_sample"``: with SD2's ``set_alpha_to_one=False`` that is
``sqrt(a_0) * x0 + sqrt(1 - a_0) * eps``, ``a_0 = alphas_cumprod[0]``); the checkpoint's
config says which. It is decoded to a flow (``vae.decode(z / scale) * gamma``, first two
channels), upsampled to the input size with the released rule (bilinear,
``align_corners=True``, magnitudes scaled by ``W/w``, ``H/h``), and applied with
:func:`stablemotion.core.flow.warp` to the input in [0, 1] (so zeros padding leaves black). The
members are combined with the Adaptive Ensemble Strategy (:mod:`stablemotion.core.ensemble`).

A multi-task model (config ``tasks``: several task dicts) serves each of its tasks: its UNet takes
the union of the tasks' conditions (:func:`stablemotion.tasks.union_conditions`), a condition the
chosen task lacks is fed as a constant (an all-valid mask, or mid grey:
:func:`stablemotion.tasks.missing_condition_value`), and ``text_embedding`` is a
:class:`~stablemotion.model.components.TaskEmbedding` whose row for the task replaces the empty prompt.
``pipe(image, task="lens")`` picks the task; the flow normalisation and the warp padding are
the chosen task's.

As in diffusers' Marigold, the pipeline, its input handling and its output stand apart: the
argument checks and input conversion in :mod:`stablemotion.model.pipeline_inputs`, the output
(:class:`StableMotionOutput`, ``"pt"``/``"np"``/``"pil"``) in :mod:`stablemotion.model.pipeline_output`.
``__call__`` runs the named steps ``resolve_settings`` -> ``check_inputs`` -> ``prepare_inputs`` ->
``check_prepared_inputs`` -> ``estimate_flows`` (``prepare_condition_latents``, ``prepare_latents``,
``denoise``, ``decode``) -> ``assess_members`` (the correction gate's scores,
:mod:`stablemotion.model.correction_gate`) -> ``project_members`` (``flow_projection="motion_model"``)
-> ``ensemble`` -> ``apply_gate`` -> ``format_output``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler, DiffusionPipeline, UNet2DConditionModel
from diffusers.utils import replace_example_docstring
from diffusers.utils.torch_utils import randn_tensor

from ..core.constants import FINAL_STEPS, FLOW_PROJECTIONS, FLOW_REGULARIZATIONS
from ..core.ensemble import (
    ENSEMBLE_MODES,
    ENSEMBLE_ROUNDINGS,
    ensemble_flows,
    ensemble_images,
    flow_uncertainty,
    median,
)
from ..core.flow import RELEASED_FLOW_RESIZE, mesh_regularize, resize_flow, warp
from ..core.image_processing import (
    MASK_ENCODINGS,
    ImageInput,
    resize_image,
    resize_mask,
    to_vae_range,
)
from ..tasks import MASK_CONDITIONS, TaskSpec, missing_condition_value
from .components import EmptyTextEmbedding, TaskEmbedding, decode_flow_latents, encode_latents
from .correction_gate import apply_gate, assess_members, check_gate, gate_reason, project_members
from .pipeline_inputs import (
    PipelineInputsMixin,
    check_choice,
    check_task_resolutions,
    merge_mask,
    model_tasks,
)
from .pipeline_output import OUTPUT_TYPES as OUTPUT_TYPES  # the old home of the name
from .pipeline_output import StableMotionOutput, format_output
from .windows import estimate_in_windows, plan_windows

__all__ = ["StableMotionOutput", "StableMotionPipeline"]

EXAMPLE_DOC_STRING = """
    Examples:
        >>> import numpy as np
        >>> import torch
        >>> from stablemotion.model.tiny import tiny_pipeline
        >>> pipe = tiny_pipeline("sir")                         # random weights, about 1 s on a CPU
        >>> image = np.random.default_rng(0).random((24, 32, 3), dtype=np.float32)  # (H, W, 3) in [0, 1]
        >>> mask = np.ones((24, 32), np.float32)                # 1 = valid content
        >>> out = pipe(image, mask=mask, generator=torch.Generator().manual_seed(0), show_progress_bar=False)
        >>> out.flow.shape, out.image.shape                     # flow in pixels, image in [0, 1]
        (torch.Size([1, 2, 24, 32]), torch.Size([1, 3, 24, 32]))
        >>> out.settings["processing_resolution"], out.settings["ensemble_size"]
        ([32, 32], 1)
"""


class StableMotionPipeline(PipelineInputsMixin, DiffusionPipeline):
    """Single-image motion estimation for image rectification (StableMotion).

    Args:
        unet: conditional UNet with ``4 * (len(task.conditions) + 1)`` input channels.
        vae: ``AutoencoderKL`` (the SD2 one or a fine-tuned copy).
        scheduler: ``DDIMScheduler``; used as given (build it with
            :func:`stablemotion.model.components.make_scheduler`: trailing spacing, v-prediction).
        text_embedding: the stored empty-prompt embedding (1, L, cross_attention_dim), or for
            a multi-task model the per-task prompts (:class:`~stablemotion.model.components.TaskEmbedding`).
        task: the task as a dict (:meth:`TaskSpec.to_dict`), a registered name, or ``None``
            to infer it from the UNet's channel count (for a multi-task model: the default task,
            the first of ``tasks``).
        tasks: a multi-task model's tasks (dicts or names), in the order of ``text_embedding``'s
            rows; ``None`` for a single-task model.
        default_denoising_steps: steps when ``num_inference_steps=None`` (1).
        default_ensemble_size: members when ``ensemble_size=None`` (1).
        default_ensemble_mode: ``"image"`` (released AES), ``"flow"`` or ``"latent"`` (see ``__call__``).
        default_processing_resolution: ``[H, W]``; ``None`` = the task's resolution.
        default_border_band: AES border band in px (20), at 384x512 and scaled with the
            image size when ``scale_border_band`` is true, else in pixels of the image.
        default_final_step: ``"x0"`` (the last step's x0 estimate) or ``"prev_sample"`` (the
            DDIM step's output, the released code's path); see :data:`FINAL_STEPS`.
        mask_encoding: how a given mask enters the network: ``"binary"`` (thresholded) or
            ``"as_read"`` (per channel, no threshold: the released models).
        ensemble_rounding: ``"none"`` or ``"release"`` (AES members and result in 8 bits,
            the median truncated, as the released ``aes.py``).
        scale_border_band: scale the AES band with the image size (``False``: the released
            fixed width in pixels).
        default_flow_regularization: ``"none"`` or ``"mesh"`` (see :data:`FLOW_REGULARIZATIONS`).
        mesh_cells: ``[rows, cols]`` of the ``"mesh"`` regularisation, at the processing resolution.
        default_flow_projection: ``"none"`` or ``"motion_model"`` (see :data:`FLOW_PROJECTIONS`).
        default_correction_gate: confidence threshold of the correction gate when a call passes
            ``correction_gate=None``; 0 (the default) = off: the pipeline corrects every image
            (``stablemotion rectify`` and the app gate at
            :data:`~stablemotion.model.correction_gate.DEFAULT_CORRECTION_GATE` unless told otherwise).
        task_resolutions: a multi-task model's per-task default processing resolution
            ``{task: [H, W]}`` (tasks trained at their own size); others use
            ``default_processing_resolution``.

    Example:
        >>> from stablemotion.model.tiny import tiny_components
        >>> pipe = StableMotionPipeline(**tiny_components("sir"), task="sir", default_processing_resolution=[32, 32])
        >>> pipe.task.name, pipe.conditions, pipe.size_multiple
        ('sir', ('mask', 'image'), 4)
    """

    model_cpu_offload_seq = "unet->vae"
    _optional_components: list[str] = []

    def __init__(
        self,
        unet: UNet2DConditionModel,
        vae: AutoencoderKL,
        scheduler: DDIMScheduler,
        text_embedding: EmptyTextEmbedding | TaskEmbedding,
        task: Mapping[str, Any] | str | None = None,
        tasks: list | None = None,
        default_denoising_steps: int = 1,
        default_ensemble_size: int = 1,
        default_ensemble_mode: str = "image",
        default_processing_resolution: Sequence[int] | None = None,
        default_border_band: float = 20.0,
        default_final_step: str = "x0",
        mask_encoding: str = "binary",
        ensemble_rounding: str = "none",
        scale_border_band: bool = True,
        default_flow_regularization: str = "none",
        mesh_cells: list[int] | tuple[int, int] = (12, 16),
        task_resolutions: dict | None = None,
        default_flow_projection: str = "none",
        default_correction_gate: float = 0.0,
    ) -> None:
        super().__init__()
        spec, specs, conditions = model_tasks(unet, text_embedding, task, tasks)
        check_choice("default_ensemble_mode", default_ensemble_mode, ENSEMBLE_MODES)
        check_choice("default_final_step", default_final_step, FINAL_STEPS)
        check_choice("mask_encoding", mask_encoding, MASK_ENCODINGS)
        check_choice("default_flow_regularization", default_flow_regularization, FLOW_REGULARIZATIONS)
        check_choice("default_flow_projection", default_flow_projection, FLOW_PROJECTIONS)
        gate = check_gate(default_correction_gate, "default_correction_gate")
        if len(mesh_cells) != 2 or min(int(c) for c in mesh_cells) < 1:
            raise ValueError(f"mesh_cells must be [rows, cols] >= 1, got {list(mesh_cells)}")
        check_choice("ensemble_rounding", ensemble_rounding, ENSEMBLE_ROUNDINGS)
        resolution = list(spec.resolution if default_processing_resolution is None else default_processing_resolution)
        own = check_task_resolutions(task_resolutions, [t.name for t in specs] or [spec.name])
        self.register_modules(unet=unet, vae=vae, scheduler=scheduler, text_embedding=text_embedding)
        self.register_to_config(
            task=spec.to_dict(),
            tasks=[t.to_dict() for t in specs] or None,
            default_denoising_steps=int(default_denoising_steps),
            default_ensemble_size=int(default_ensemble_size),
            default_ensemble_mode=default_ensemble_mode,
            default_processing_resolution=[int(r) for r in resolution],
            default_border_band=float(default_border_band),
            default_final_step=default_final_step,
            mask_encoding=mask_encoding,
            ensemble_rounding=ensemble_rounding,
            scale_border_band=bool(scale_border_band),
            default_flow_regularization=default_flow_regularization,
            mesh_cells=[int(c) for c in mesh_cells],
            task_resolutions=own or None,
            default_flow_projection=default_flow_projection,
            default_correction_gate=gate,
        )
        self.task: TaskSpec = spec
        #: The tasks this model serves, by name (one for a single-task model).
        self.tasks: dict[str, TaskSpec] = {t.name: t for t in specs} or {spec.name: spec}
        #: The UNet's condition inputs, in order (a multi-task model: the union of its tasks').
        self.conditions: tuple[str, ...] = tuple(conditions)
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)

    # ------------------------------------------------------------------ helpers
    def set_default_task(self, task: str | TaskSpec) -> StableMotionPipeline:
        """Make ``task`` (one this model serves) what calls without ``task=`` run; saved with the
        config. Returns the pipeline."""
        spec = self.resolve_task(task)
        self.task = spec
        self.register_to_config(task=spec.to_dict())
        return self

    def resolve_task(self, task: str | TaskSpec | None = None) -> TaskSpec:
        """The spec of ``task`` (a name this model serves; ``None`` = the default task)."""
        if task is None:
            return self.task
        name = task.name if isinstance(task, TaskSpec) else str(task)
        if name not in self.tasks:
            raise ValueError(f"this model serves {sorted(self.tasks)}, not {name!r}"
                             + ("" if len(self.tasks) > 1 else " (a single-task model)"))
        return self.tasks[name]

    @property
    def size_multiple(self) -> int:
        """Processing sizes must be multiples of this (VAE x UNet downsampling)."""
        return self.vae_scale_factor * 2 ** (len(self.unet.config.block_out_channels) - 1)

    @property
    def latent_scale(self) -> float:
        return float(self.vae.config.scaling_factor)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """VAE latents (encoder mean x scaling_factor) of (B, 3, h, w) images in [-1, 1] -> (B, 4, h/f, w/f)."""
        return encode_latents(self.vae, images.to(device=self._execution_device))

    def decode_flow(self, latents: torch.Tensor, decode_scale: int = 1, task: str | TaskSpec | None = None) -> torch.Tensor:
        """Flow latents (B, 4, h/f, w/f) -> flow float32, pixels of the processing resolution.

        With ``decode_scale = s > 1`` the latent is first resized (bilinear, antialiased) to
        (h/(f*s), w/(f*s)) and decoded there: about ``s**2`` times fewer decoder FLOPs, for
        smooth flows only. The result is then (B, 2, h/s, w/s) but its values stay pixels of
        the processing resolution (h, w); upsample with magnitudes scaled by ``W/w``, ``H/h``.

        Returns:
            (B, 2, h/s, w/s) float32 (``s = decode_scale``; (B, 2, h, w) by default).
        """
        if decode_scale != 1:
            lh, lw = latents.shape[-2:]
            small = (max(1, round(lh / decode_scale)), max(1, round(lw / decode_scale)))
            latents = F.interpolate(latents.float(), size=small, mode="bilinear", align_corners=False, antialias=True)
        return decode_flow_latents(self.vae, latents, self.resolve_task(task).flow_gamma)

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    @replace_example_docstring(EXAMPLE_DOC_STRING)
    def __call__(
        self,
        image: ImageInput,
        mask: ImageInput | None = None,
        conditions: Mapping[str, ImageInput] | None = None,
        num_inference_steps: int | None = None,
        ensemble_size: int | None = None,
        ensemble_mode: str | None = None,
        processing_resolution: int | Sequence[int] | None = None,
        border_band: float | None = None,
        batch_size: int | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "pt",
        show_progress_bar: bool = True,
        return_members: bool = False,
        return_dict: bool = True,
        decode_scale: int = 1,
        latents: torch.Tensor | None = None,
        final_step: str | None = None,
        processing_image: ImageInput | None = None,
        output_flow_colored: bool = False,
        flow_regularization: str | None = None,
        task: str | None = None,
        flow_projection: str | None = None,
        correction_gate: float | None = None,
        always_correct: bool = False,
        aspect_mode: str | None = None,
    ) -> StableMotionOutput | tuple:
        """Estimate the rectifying flow of ``image`` and apply it.

        Args:
            image: RGB image(s), see :mod:`stablemotion.core.image_processing` (PIL, numpy uint8
                or float [0, 1], torch float [0, 1]; single or batch).
            mask: the ``"mask"`` condition (SIR), 1 = valid content, same size as ``image``.
            conditions: other condition images by name (for user-defined tasks).
            num_inference_steps: DDIM steps (default from the config: 1 = t 999 -> x0).
            ensemble_size: members E (default from the config: 1).
            ensemble_mode: ``"image"`` (released AES: median of warped images, minimum in
                the border band), ``"flow"`` (median flow, one warp) or ``"latent"``
                (median x0 latent, one decode and one warp: the fast mode; no member flows
                or uncertainty).
            processing_resolution: network resolution ``(H, W)``, an int (square) or 0
                (the input's size rounded to a valid multiple); default from the config.
            border_band: AES border band in px (at 384x512, scaled with the image size,
                unless the config's ``scale_border_band`` is false).
            batch_size: UNet/VAE samples per forward pass (``None`` = all B x E at once).
            generator: seeds the initial noise (one generator, or one per B x E sample).
            output_type: ``"pt"``, ``"np"`` or ``"pil"`` (see :class:`StableMotionOutput`).
            show_progress_bar: show a progress bar over the denoising steps (diffusers'
                ``self.progress_bar``: ``set_progress_bar_config`` applies).
            return_members: also return the member flows (B, E, 2, H, W) (not in
                ``"latent"`` mode, where members are never decoded).
            decode_scale: decode the flow latent at 1/``decode_scale`` of the processing
                resolution (about ``decode_scale**2`` fewer decoder FLOPs; for smooth flows)
                and upsample the flow with magnitude scaling. 1 = full resolution (default).
            latents: the initial noise, (B x E, 4, h/f, w/f) (sample-major: row ``i * E + e``
                is member ``e`` of image ``i``); replaces ``generator``. For comparing runs
                with another implementation on the same noise.
            final_step: ``"x0"`` or ``"prev_sample"`` (see :data:`FINAL_STEPS`); default
                from the config.
            processing_image: the network's input image, already at the processing
                resolution (single-condition tasks; the released RS-Real protocol feeds the
                dataset's stored 256x256 ``condition``). The flow is still applied to ``image``.
            flow_regularization: ``"none"`` or ``"mesh"``: project every member flow onto a
                smooth mesh of per-cell homographies (``mesh_cells`` of the config) before the
                ensemble, so straight lines stay straight; default from the config.
            output_flow_colored: also return the flow's colour picture (``flow_colored``;
                visualisation costs time at full resolution, so it is off by default).
            task: which of a multi-task model's tasks to run (``self.tasks``); ``None`` = the
                default task (``self.task``, the only one of a single-task model).
            flow_projection: ``"none"`` or ``"motion_model"``: replace every member flow by its
                robust fit of the task's motion family (``TaskSpec.motion_model``,
                :mod:`stablemotion.core.motion_models`; SIR has none and is kept); default from
                the config.
            correction_gate: confidence threshold in [0, 1] (0 = off; default from the config,
                ``default_correction_gate``): an image whose correction is less supported
                (:mod:`stablemotion.model.correction_gate`) comes back unchanged, zero flow,
                with its reason in ``gate_reason``. The confidence is always reported.
            always_correct: apply every correction whatever its confidence (the gate off).
            aspect_mode: ``"auto"``, ``"windows"`` or ``"squeeze"``: how an image far wider or taller
                than the processing resolution is seen (:mod:`stablemotion.model.windows`: overlapping
                windows of the network's aspect ratio, blended; ``"auto"`` = windows for tasks with a
                local flow, SIR); default from the config (``default_aspect_mode``, else ``"auto"``).

        Returns:
            :class:`StableMotionOutput` (or a tuple ``(flow, image, flow_colored, uncertainty)``).

        Examples:
        """
        spec = self.resolve_task(task)
        s = self.resolve_settings(spec, num_inference_steps, ensemble_size, ensemble_mode, processing_resolution,
                                  final_step, decode_scale, border_band, flow_regularization, flow_projection,
                                  0.0 if always_correct else correction_gate, aspect_mode)
        conds_in = merge_mask(mask, conditions)
        ens, mode = s["ensemble_size"], s["ensemble_mode"]
        self.check_inputs(conds_in, s["num_inference_steps"], ens, mode, batch_size, output_type, decode_scale,
                          s["final_step"], s["flow_regularization"], processing_image, return_members, spec)
        images, conds, proc = self.prepare_inputs(image, conds_in, processing_image, spec)
        self.check_prepared_inputs(images, conds, proc, s["processing_resolution"], ens, decode_scale, generator, latents)
        size = self.resolve_processing_size(images, proc, s["processing_resolution"])
        s["processing_resolution"] = list(size)
        n = images.shape[0]
        conds = {name: t.expand(n, -1, -1, -1) for name, t in conds.items()}  # a single condition serves the batch
        layout = plan_windows(tuple(images.shape[-2:]), size, s["aspect_mode"], spec, proc, latents)
        s["windows"] = len(layout) if layout else 0
        if layout is None:
            member_flows_lr = self.estimate_flows(images, conds, size, s, proc, batch_size, generator, latents,
                                                  show_progress_bar, spec)
        else:
            member_flows_lr = estimate_in_windows(self, images, conds, size, s, layout, batch_size, generator,
                                                  show_progress_bar, spec)
        supports = assess_members(member_flows_lr, spec, tuple(self.config.mesh_cells))
        if s["flow_projection"] == "motion_model":
            member_flows_lr = project_members(member_flows_lr, spec)
        flow, rect, uncertainty, members = self.ensemble(images, member_flows_lr, mode, s["border_band"], spec)
        reasons = [gate_reason(sup, s["correction_gate"]) for sup in supports]
        flow, rect, uncertainty = apply_gate(reasons, images, flow, rect, uncertainty)
        self.maybe_free_model_hooks()
        return format_output(flow, rect, uncertainty, members if return_members else None, s, output_type,
                             output_flow_colored, return_dict, confidence=[sup.confidence for sup in supports],
                             gate_reason=reasons)

    def estimate_flows(
        self,
        images: torch.Tensor,
        conds: Mapping[str, torch.Tensor],
        size: tuple[int, int],
        settings: Mapping[str, Any],
        processing_image: torch.Tensor | None = None,
        batch_size: int | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        show_progress_bar: bool = True,
        task: TaskSpec | None = None,
    ) -> torch.Tensor:
        """The model's part of ``__call__``: condition latents, noise, denoising, decoding (and the
        ``"mesh"`` regularisation) of every member, at the processing size ``size`` (h, w).

        Args:
            images: (B, 3, H, W) in [0, 1]; conds: the other conditions (B, C, H, W).
            settings: :meth:`resolve_settings`' dict (steps, ensemble size and mode, final step,
                decode scale, flow regularisation).

        Returns:
            (B, E', 2, h', w'): member flows in pixels of the decoded grid (h/s, w/s for
            ``decode_scale = s``); E' = 1 after the latent median of ``ensemble_mode="latent"``.
        """
        spec = task or self.task
        n, ens = images.shape[0], settings["ensemble_size"]
        latent_mode = settings["ensemble_mode"] == "latent" and ens > 1
        cond_latents = self.prepare_condition_latents(images, conds, size, processing_image, batch_size, spec)
        noise = self.prepare_latents(n * ens, cond_latents.shape[-2:], generator, latents)
        final = self.denoise(cond_latents, noise, ens, settings["num_inference_steps"], settings["final_step"],
                             batch_size, show_progress_bar=show_progress_bar, task=spec)
        if latent_mode:  # median final latent of the members, one decode per image
            final = median(final.float().unflatten(0, (n, ens)), dim=1).to(final.dtype)
        flow_lr = self.decode(final, size, settings["decode_scale"], batch_size, spec)
        if settings["flow_regularization"] == "mesh":
            region = self.content_region(conds, size, n, ens, latent_mode, spec)
            flow_lr = mesh_regularize(flow_lr, tuple(self.config.mesh_cells), valid=region)
        return flow_lr.unflatten(0, (n, 1 if latent_mode else ens))

    def content_region(self, conds: Mapping[str, torch.Tensor], size: tuple[int, int], n: int, ensemble_size: int,
                       latent_mode: bool, task: TaskSpec | None = None) -> torch.Tensor | None:
        """Where the input has content, at the processing size: (members, h, w) bool, or None when
        the task has no mask condition. A processing pixel counts when three quarters of it are valid
        (area-averaged mask >= 0.75): with the snap's half-pixel margin the mesh boundary stays on
        content at full size without giving up a band of content along the outline (at >= 0.99 the
        rectangle kept ~1.5% less of the input; at 0.5 more border was left on OpenCV stitches)."""
        names = [c for c in (task or self.task).conditions if c in MASK_CONDITIONS]
        if not names:
            return None
        mask = (conds[names[0]].float().mean(1, keepdim=True) >= 0.5).float()
        small = F.interpolate(mask, size=tuple(size), mode="area")[:, 0] >= 0.75
        return small if latent_mode else small.repeat_interleave(ensemble_size, dim=0)

    # ------------------------------------------------------------------ the named steps of __call__
    def prepare_condition_latents(
        self,
        images: torch.Tensor,
        conds: Mapping[str, torch.Tensor],
        size: tuple[int, int],
        processing_image: torch.Tensor | None = None,
        batch_size: int | None = None,
        task: TaskSpec | None = None,
    ) -> torch.Tensor:
        """Condition latents in the model's condition order, encoded once and shared by the
        ensemble members.

        Args:
            images: (B, 3, H, W) in [0, 1]; conds: the other conditions (B, C, H, W) in [0, 1].
            size: processing resolution (h, w); processing_image: (B, 3, h, w) to use instead
                of the resized ``images``.
            task: the chosen task; a condition of the model it lacks is fed as the constant
                :func:`~stablemotion.tasks.missing_condition_value`.

        Returns:
            (B, 4k, h/f, w/f) in the UNet's dtype, k = number of the model's conditions.
        """
        n = images.shape[0]
        spec = task or self.task
        binary = self.config.mask_encoding == "binary"
        lowres = []
        for name in self.conditions:
            if name not in spec.conditions:
                lowres.append(to_vae_range(images.new_full((n, 3, *size), missing_condition_value(name))))
            elif name == "image":
                lowres.append(to_vae_range(resize_image(images, size) if processing_image is None else processing_image))
            elif name in MASK_CONDITIONS:
                lowres.append(to_vae_range(resize_mask(conds[name], size, binarize=binary)))
            else:
                lowres.append(to_vae_range(resize_image(conds[name], size)))
        k = len(lowres)
        stacked = torch.stack(lowres, dim=1).flatten(0, 1)  # (B*k, 3, h, w): sample-major, task order
        latents = torch.cat([self.encode(c) for c in stacked.split((batch_size or n) * k)])
        return latents.unflatten(0, (n, k)).flatten(1, 2).to(self.unet.dtype)

    def prepare_latents(
        self,
        total: int,
        latent_size: Sequence[int],
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The initial noise of the B x E members: (total, 4, h/f, w/f) in the UNet's dtype.

        Drawn in float32 (so a seed gives the same noise in every dtype) unless ``latents``
        are given.
        """
        device = self._execution_device
        if latents is None:
            shape = (total, int(self.unet.config.out_channels), *(int(v) for v in latent_size))
            latents = randn_tensor(shape, generator=generator, device=device, dtype=torch.float32)
        return latents.to(device=device, dtype=torch.float32).to(self.unet.dtype)

    def denoise(
        self,
        cond_latents: torch.Tensor,
        noise: torch.Tensor,
        ensemble_size: int,
        num_inference_steps: int,
        final_step: str = "x0",
        batch_size: int | None = None,
        show_progress_bar: bool = True,
        task: TaskSpec | None = None,
    ) -> torch.Tensor:
        """Run the scheduler from ``noise`` for every member (``task``: whose prompt; default the model's).

        Args:
            cond_latents: (B, 4k, h, w); member ``i * E + e`` uses row ``i``.
            noise: (B x E, 4, h, w), sample-major.
            final_step: ``"x0"`` (the last step's x0 estimate) or ``"prev_sample"``.

        Returns:
            (B x E, 4, h, w): the final latents.
        """
        device = self._execution_device
        total = noise.shape[0]
        index = torch.arange(cond_latents.shape[0], device=device).repeat_interleave(ensemble_size)
        embedding = self.prompt_embedding(task).to(device=device, dtype=self.unet.dtype)
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps
        step = batch_size or total
        finals = []
        bar = self.progress_bar(total=len(range(0, total, step)) * len(timesteps)) if show_progress_bar else None
        for start in range(0, total, step):
            sel = index[start : start + step]
            cond = cond_latents[sel]
            z = noise[start : start + len(sel)]
            for i, t in enumerate(timesteps):
                v = self.unet(
                    torch.cat([cond, z], dim=1), t, encoder_hidden_states=embedding.expand(len(sel), -1, -1),
                    return_dict=False,
                )[0]
                out = self.scheduler.step(v, t, z, return_dict=True)
                z = out.pred_original_sample if i == len(timesteps) - 1 and final_step == "x0" else out.prev_sample
                if bar is not None:
                    bar.update()
            finals.append(z)
        if bar is not None:
            bar.close()
        return torch.cat(finals)

    def prompt_embedding(self, task: str | TaskSpec | None = None) -> torch.Tensor:
        """The cross-attention input for ``task``: (1, L, D), the empty prompt of a single-task
        model or the task's row of a multi-task model's :class:`TaskEmbedding`."""
        spec = self.resolve_task(task)
        if isinstance(self.text_embedding, TaskEmbedding):
            return self.text_embedding(1, spec.name)
        return self.text_embedding(1)

    def decode(
        self, latents: torch.Tensor, size: tuple[int, int], decode_scale: int = 1, batch_size: int | None = None,
        task: TaskSpec | None = None,
    ) -> torch.Tensor:
        """Final latents (N, 4, h/f, w/f) -> flows (N, 2, h/s, w/s), pixels of the decoded size.

        ``decode_scale = s`` decodes at 1/s of the processing resolution ``size`` (see
        :meth:`decode_flow`); the values are rescaled to pixels of the decoded grid so that
        :func:`~stablemotion.core.flow.resize_flow` scales them right.
        """
        flow = torch.cat([self.decode_flow(c, decode_scale, task=task) for c in latents.split(batch_size or latents.shape[0])])
        if decode_scale != 1:
            fh, fw = flow.shape[-2:]
            flow = flow * torch.tensor([fw / size[1], fh / size[0]], device=flow.device).view(1, 2, 1, 1)
        return flow

    def ensemble(
        self, images: torch.Tensor, member_flows_lr: torch.Tensor, mode: str, band: float, task: TaskSpec | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Member flows at full resolution, the warp and the Adaptive Ensemble Strategy.

        Args:
            images: (B, 3, H, W) in [0, 1] (warped there: zeros padding leaves black, as released).
            member_flows_lr: (B, E, 2, h', w'), pixels of the decoded grid.
            mode: ``"image"``, ``"flow"`` or ``"latent"`` (E = 1 after the latent median).
            band: AES border band (see ``border_band``).
            task: whose warp padding (default the model's task).

        Returns:
            ``(flow (B, 2, H, W) px, image (B, 3, H, W) in [0, 1], uncertainty (B, 1, H, W) px or
            None, member flows (B, E, 2, H, W) px)``.
        """
        cfg = self.config
        n, ens = member_flows_lr.shape[:2]
        h, w = images.shape[-2:]
        member_flows = resize_flow(member_flows_lr.flatten(0, 1), (h, w), **RELEASED_FLOW_RESIZE).unflatten(0, (n, ens))
        full = images.to(member_flows.device)
        flow = ensemble_flows(member_flows)
        if mode == "image" and ens > 1:
            warped = warp(full.repeat_interleave(ens, 0), member_flows.flatten(0, 1), padding=(task or self.task).padding)
            if not cfg.scale_border_band:
                band = (int(round(band)), int(round(band)))  # pixels of this image, as released
            rect = ensemble_images(warped.unflatten(0, (n, ens)), band=band, rounding=cfg.ensemble_rounding)
        else:
            rect = warp(full, flow, padding=(task or self.task).padding)
        uncertainty = flow_uncertainty(member_flows, flow) if ens > 1 else None
        return flow, rect.clamp(0, 1), uncertainty, member_flows
