"""End-to-end one-step training (``loss.objective: e2e``; E2E-FT, arXiv 2409.11355; Lotus, arXiv 2409.18124).

The UNet is run exactly as one-step inference runs it (:meth:`StableMotionPipeline.denoise`
with one step): the condition latents next to the initial latent (Gaussian noise, as the
pipeline draws it, or zeros with ``loss.e2e_noise: zeros``), the one timestep of the trailing
schedule (t = 999), and the scheduler's own DDIM step whose output is the final latent by the
pipeline's ``default_final_step`` rule (``"x0"``: ``pred_original_sample``; ``"prev_sample"``).
That latent is decoded to a flow by the frozen VAE inside the graph, so the gradients of the
losses on what the user sees - the flow's end-point error and the warped image - flow through
the decoder into the UNet. Nothing here differs between training and inference but the
gradient.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from diffusers import DDIMScheduler

from ..model.components import decode_flow_latents
from ..tasks import TaskSpec
from .losses import flow_epe_loss, gt_valid_region, warp_loss

if TYPE_CHECKING:
    from .trainer import Trainer

__all__ = ["one_step_scheduler", "one_step_final_latent", "one_step_flow", "e2e_losses", "initial_latents"]

Batch = Mapping[str, torch.Tensor]


def one_step_scheduler(scheduler: Any) -> DDIMScheduler:
    """A copy of the pipeline's scheduler set to one inference step (the pipeline's own is left alone).

    Example:
        >>> from stablemotion.model.components import make_scheduler
        >>> int(one_step_scheduler(make_scheduler({"num_train_timesteps": 1000})).timesteps[0])  # trailing: t = 999
        999
    """
    sched = DDIMScheduler.from_config(scheduler.config)
    sched.set_timesteps(1)
    return sched


def one_step_final_latent(
    scheduler: DDIMScheduler, model_output: torch.Tensor, latent: torch.Tensor, final_step: str
) -> torch.Tensor:
    """The final latent of a one-step run: the scheduler's DDIM step from ``latent`` at its one timestep
    (differentiable), ``pred_original_sample`` for ``final_step="x0"``, else ``prev_sample``.

    Args:
        scheduler: from :func:`one_step_scheduler`.
        model_output: (B, 4, h, w) the UNet's v-prediction; latent: (B, 4, h, w) its input latent.
        final_step: ``"x0"`` or ``"prev_sample"`` (the pipeline's ``default_final_step``).

    Returns:
        (B, 4, h, w), float32.

    Example:
        >>> from stablemotion.model.components import make_scheduler
        >>> s = one_step_scheduler(make_scheduler({"num_train_timesteps": 1000}))
        >>> z, v = torch.zeros(1, 4, 2, 2), torch.ones(1, 4, 2, 2)
        >>> x0 = one_step_final_latent(s, v, z, "x0")   # sqrt(a) z - sqrt(1 - a) v
        >>> bool(torch.allclose(x0, -(1 - s.alphas_cumprod[999]).sqrt() * v))
        True
    """
    t = scheduler.timesteps[0]
    out = scheduler.step(model_output.float(), t, latent.float(), return_dict=True)
    return out.pred_original_sample if final_step == "x0" else out.prev_sample


def initial_latents(shape: tuple[int, ...], noise: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """The latent one-step inference starts from: (B, 4, h, w) float32 Gaussian noise drawn from
    ``generator`` (``noise="gaussian"``, what the pipeline draws) or zeros (``"zeros"``).

    Example:
        >>> initial_latents((1, 4, 2, 2), "zeros").abs().sum().item()
        0.0
    """
    if noise == "zeros":
        return torch.zeros(shape)
    return torch.randn(shape, generator=generator)


def one_step_flow(tr: Trainer, cond: torch.Tensor, spec: TaskSpec, g: torch.Generator | None = None) -> torch.Tensor:
    """The flow one-step inference gives for ``cond``, differentiable in the UNet: (B, 2, H, W) pixels.

    Args:
        tr: the trainer (its UNet / prompted model, VAE, pipeline scheduler and config).
        cond: (B, 4k, h, w) condition latents of the model's conditions.
        spec: the task (its prompt in a multi-task model, its flow normalisation).
        g: draws the Gaussian initial latent (``loss.e2e_noise: gaussian``).
    """
    sched = one_step_scheduler(tr.pipe.scheduler)  # a fresh copy: cheap next to the UNet
    b = cond.shape[0]
    z = initial_latents((b, int(tr.pipe.unet.config.out_channels), *cond.shape[-2:]), tr.cfg.loss.e2e_noise, g)
    z = z.to(cond.device, cond.dtype)
    t = sched.timesteps[0].to(cond.device).expand(b)
    with tr.acc.autocast():
        if tr.multi:
            v_hat = tr.model(torch.cat([cond, z], 1), t, spec.name)
        else:
            emb = tr.embedding.expand(b, -1, -1)
            v_hat = tr.unet(torch.cat([cond, z], 1), t, encoder_hidden_states=emb, return_dict=False)[0]
    final = one_step_final_latent(sched, v_hat, z, tr.pipe.config.default_final_step)
    with tr.acc.autocast():
        return decode_flow_latents(tr.vae, final, spec.flow_gamma)


def e2e_losses(tr: Trainer, batch: Batch, spec: TaskSpec, cond: torch.Tensor, g: torch.Generator) -> dict[str, torch.Tensor]:
    """All loss terms of one batch under the end-to-end objective, with their weighted sum ``"total"``.

    Args:
        tr: the trainer (its UNet / prompted model, VAE, pipeline config and loss weights).
        batch: the task's tensors on the device (images in [-1, 1], ``"flow"`` in pixels).
        cond: (B, 4k, h, w) condition latents; g: the step's generator (the Gaussian latent).

    Returns:
        ``{"epe": px, "photo": L1, ... (warp / mask / vgg when weighted), "total"}``.
    """
    from .stages import image_losses  # the warp / mask / vgg terms, one copy

    flow = one_step_flow(tr, cond, spec, g)
    w = tr.task_weights[spec.name]
    valid = gt_valid_region(batch["flow"]) if spec.valid_region_loss else None
    losses: dict[str, torch.Tensor] = {}
    if w.epe:
        losses["epe"] = flow_epe_loss(flow, batch["flow"], valid)
    if w.photo:
        losses["photo"] = warp_loss(batch["image"], flow, batch["gt"], padding=spec.padding, valid=valid, norm="l1")
    return image_losses(batch, flow, losses, spec, w, tr.perceptual)
