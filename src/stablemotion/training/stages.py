"""What differs between the training stages: one object per ``train.stage``.

* ``"unet"`` (:class:`UnetStage`): the motion model, a UNet trained with the v-prediction loss
  (plus the warp / mask / perceptual terms of its one-step flow), or with ``loss.objective: e2e``
  end to end on the decoded one-step flow (:mod:`stablemotion.training.e2e`); exported as a pipeline.
* ``"vae"`` (:class:`VaeStage`): the VAE as a flow codec (its decoder, and the encoder when
  asked); exported as a diffusers ``AutoencoderKL`` folder.
* ``"regression"`` (:class:`RegressionStage`): a plain network regressing the flow from the
  conditions (the baseline); exported as a :class:`~stablemotion.model.FlowRegressor` folder.

Each stage says which modules are trained (:meth:`Stage.build_model`), the losses of a batch
(:meth:`Stage.losses`), how validation predicts and what is exported. The
:class:`~stablemotion.training.trainer.Trainer` holds the run's state and calls its stage.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from ..core.flow import encode_flow, warp
from ..model.components import decode_flow_latents, encode_latents
from ..model.regression import FlowRegressor
from ..tasks import TaskSpec
from .e2e import e2e_losses
from .losses import (
    LossWeights,
    flow_smoothness_loss,
    gt_valid_region,
    mask_loss,
    pyramid_noise_like,
    v_target,
    warp_loss,
    x0_from_v,
)
from .validation import validate_codec, validate_tasks

if TYPE_CHECKING:
    from .trainer import Trainer

__all__ = ["RegressionStage", "Stage", "UnetStage", "VaeStage", "stage_for"]

Batch = Mapping[str, torch.Tensor]


class _PromptedUNet(torch.nn.Module):
    """A multi-task model's trained parts, one module for ``accelerate.prepare`` (DDP): the
    UNet and the per-task prompts it reads through cross-attention."""

    def __init__(self, unet: torch.nn.Module, prompts: torch.nn.Module) -> None:
        super().__init__()
        self.unet, self.prompts = unet, prompts

    def forward(self, x: torch.Tensor, t: torch.Tensor, task: str) -> torch.Tensor:
        emb = self.prompts(x.shape[0], task).to(x.dtype)
        return self.unet(x, t, encoder_hidden_states=emb, return_dict=False)[0]


class _FlowCodec(torch.nn.Module):
    """VAE round trip (B, 3, H, W) -> (B, 3, H, W): decode(encoder mean).

    A module of its own so that ``accelerate.prepare`` (DDP) sees a ``forward``; gradients
    reach the encoder only when it is trained too."""

    def __init__(self, vae: torch.nn.Module, train_encoder: bool = False) -> None:
        super().__init__()
        self.vae = vae
        self.train_encoder = train_encoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.set_grad_enabled(self.train_encoder and torch.is_grad_enabled()):
            z = self.vae.encode(x.to(self.vae.dtype)).latent_dist.mean
        return self.vae.decode(z).sample


def stack_conditions(batch: Batch, task: TaskSpec) -> torch.Tensor:
    """(B, C, H, W): the task's conditions in order, as the regressor takes them.

    Example:
        >>> from stablemotion.tasks import get_task
        >>> batch = {"image": torch.zeros(2, 3, 8, 8), "mask": torch.ones(2, 1, 8, 8)}
        >>> stack_conditions(batch, get_task("sir")).shape  # sir: the image (3 channels) and its mask (1)
        torch.Size([2, 4, 8, 8])
    """
    return torch.cat([batch[name] for name in task.conditions], 1)


def image_losses(
    batch: Batch, flow: torch.Tensor, losses: dict[str, torch.Tensor], task: TaskSpec, w: LossWeights,
    perceptual: torch.nn.Module | None,
) -> dict[str, torch.Tensor]:
    """Add the warp / mask / perceptual terms of a predicted flow (B, 2, H, W, pixels) to ``losses``
    and their weighted sum as ``"total"``."""
    pad = task.padding
    valid = gt_valid_region(batch["flow"]) if task.valid_region_loss else None
    if w.warp:
        losses["warp"] = warp_loss(batch["image"], flow, batch["gt"], padding=pad, valid=valid)
    if w.mask:
        losses["mask"] = mask_loss(batch["mask"], flow, padding=pad)
    if w.vgg and perceptual is not None:
        pred = warp(batch["image"], flow, padding=pad, check_finite=False, fill=-1.0)
        target = batch["gt"]
        if valid is not None:
            pred, target = pred * valid, target * valid
        losses["vgg"] = perceptual(pred, target)
    losses["total"] = sum(getattr(w, k) * v for k, v in losses.items())
    return losses


class Stage:
    """One training stage: what is trained, its losses, validation and export.

    Example:
        >>> stage_for("vae").export_folder, stage_for("regression").label
        ('vae', 'regression baseline')
    """

    name = ""
    #: The default export folder under the run's output folder, and what it holds (in words).
    export_folder = ""
    label = ""
    #: Whether the stage's losses can use the perceptual (VGG) term.
    uses_perceptual = False

    def build_model(self, tr: Trainer) -> torch.nn.Module:
        """Set which of ``tr.pipe``'s modules train and return the module the optimizer steps."""
        raise NotImplementedError

    def after_prepare(self, tr: Trainer) -> None:
        """After ``accelerate.prepare`` wrapped ``tr.model``."""

    def losses(self, tr: Trainer, batch: Batch, spec: TaskSpec, step: int) -> dict[str, torch.Tensor]:
        """All loss terms of one batch of task ``spec`` (on the device), with ``"total"``."""
        raise NotImplementedError

    def after_eval(self, tr: Trainer) -> None:
        """Back in training mode after validation or export (modules that stay in eval mode)."""

    def validate(self, tr: Trainer, limit: int) -> dict[str, float]:
        """Validation metrics on up to ``limit`` samples per task (with the EMA weights in place)."""
        return validate_tasks(tr, limit, self.predict)

    def predict(self, tr: Trainer, sample: Batch, task: TaskSpec, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The rectified image (1, 3, H, W, [-1, 1]) and flow (1, 2, H, W, pixels) of one validation sample."""
        raise NotImplementedError

    def save(self, tr: Trainer, folder: Path) -> None:
        """Write the trained result (with the EMA weights in place) to ``folder``."""
        raise NotImplementedError


class UnetStage(Stage):
    """The motion model: the UNet (and, multi-task, the per-task prompts)."""

    name, export_folder, label, uses_perceptual = "unet", "pipeline", "pipeline", True

    def build_model(self, tr: Trainer) -> torch.nn.Module:
        tr.unet.requires_grad_(True)
        tr.unet.train()
        if tr.cfg.train.gradient_checkpointing:
            tr.unet.enable_gradient_checkpointing()
        if not tr.multi:
            return tr.unet
        tr.pipe.text_embedding.embedding.requires_grad_(True)  # the per-task prompts are learned with the UNet
        return _PromptedUNet(tr.unet, tr.pipe.text_embedding)

    def after_prepare(self, tr: Trainer) -> None:
        if not tr.multi:
            tr.unet = tr.model

    def losses(self, tr: Trainer, batch: Batch, spec: TaskSpec, step: int) -> dict[str, torch.Tensor]:
        """The v-prediction MSE at a random timestep (seeded by ``(seed, step, process)``), plus the
        image terms of the one-step flow when the task weights them; with ``loss.objective: e2e``
        the end-to-end losses of the one-step flow instead (:func:`~stablemotion.training.e2e.e2e_losses`)."""
        g = torch.Generator().manual_seed((tr.cfg.train.seed * 7_919 + step * 104_729 + tr.acc.process_index) % (2**63))
        with torch.no_grad():
            cond = condition_latents(tr.vae, batch, tr.conditions)
        if tr.cfg.loss.objective == "e2e":
            return e2e_losses(tr, batch, spec, cond, g)
        with torch.no_grad():
            z0 = encode_latents(tr.vae, encode_flow(batch["flow"], spec.flow_gamma))
        t, noise = self._timesteps_and_noise(tr, z0, g)
        sa = tr.alphas_cumprod[t].view(-1, 1, 1, 1).to(z0.dtype)
        z_t = sa.sqrt() * z0 + (1 - sa).sqrt() * noise
        with tr.acc.autocast():
            if tr.multi:
                v_hat = tr.model(torch.cat([cond, z_t], 1), t, spec.name)
            else:
                emb = tr.embedding.expand(z0.shape[0], -1, -1)
                v_hat = tr.unet(torch.cat([cond, z_t], 1), t, encoder_hidden_states=emb, return_dict=False)[0]
        losses = {"v": F.mse_loss(v_hat.float(), v_target(z0, noise, tr.alphas_cumprod, t).float())}
        w = tr.task_weights[spec.name]
        if w.warp or w.mask or w.vgg:
            z0_hat = x0_from_v(z_t.float(), v_hat.float(), tr.alphas_cumprod, t)
            with tr.acc.autocast():
                flow_hat = decode_flow_latents(tr.vae, z0_hat, spec.flow_gamma)
            return image_losses(batch, flow_hat, losses, spec, w, tr.perceptual)
        losses["total"] = w.v * losses["v"]
        return losses

    @staticmethod
    def _timesteps_and_noise(tr: Trainer, z0: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(B,) timesteps (a ``loss.one_step_fraction`` share at the last one) and noise like ``z0``
        (pyramid noise when configured), both on the device, drawn from ``g``."""
        loss, b, dev = tr.cfg.loss, z0.shape[0], tr.acc.device
        t_min, t_max = (int(v) for v in loss.timesteps)
        t_max = min(t_max, tr.num_train_timesteps - 1)
        t = torch.randint(t_min, t_max + 1, (b,), generator=g)
        if loss.one_step_fraction > 0:
            t = torch.where(torch.rand(b, generator=g) < loss.one_step_fraction, t_max, t)
        t = t.to(dev)
        if loss.pyramid_noise:
            strength = loss.pyramid_strength * t.float().cpu() / tr.num_train_timesteps
            noise = pyramid_noise_like(z0.cpu().float(), strength, loss.pyramid_levels, generator=g)
        else:
            noise = torch.randn(z0.shape, generator=g)
        return t, noise.to(dev, z0.dtype)

    def validate(self, tr: Trainer, limit: int) -> dict[str, float]:
        tr.pipe.unet = unet_module(tr)
        return super().validate(tr, limit)

    def predict(self, tr: Trainer, sample: Batch, task: TaskSpec, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        conds = {k: (sample[k][None] + 1) / 2 for k in task.conditions if k != "image"}
        latents = None
        if tr.cfg.loss.objective == "e2e" and tr.cfg.loss.e2e_noise == "zeros":  # the input it was trained on
            f = tr.pipe.vae_scale_factor
            h, w = tr.cfg.task_resolution(task.name)
            latents = torch.zeros(1, int(tr.pipe.unet.config.out_channels), h // f, w // f)
        out = tr.pipe(
            (sample["image"][None] + 1) / 2, conditions=conds, num_inference_steps=tr.cfg.validation.steps,
            generator=torch.Generator().manual_seed(i), show_progress_bar=False, output_type="pt", task=task.name,
            latents=latents,
        )
        return out.image.to(torch.float32) * 2 - 1, out.flow

    def save(self, tr: Trainer, folder: Path) -> None:
        tr.pipe.unet = unet_module(tr)
        tr.pipe.save_pretrained(str(folder))


class VaeStage(Stage):
    """The VAE as a flow codec: the decoder, and the encoder only when ``train.vae_train_encoder``."""

    name, export_folder, label = "vae", "vae", "flow VAE"

    def build_model(self, tr: Trainer) -> torch.nn.Module:
        tr.unet.requires_grad_(False)
        tr.unet.eval()
        tr.vae.decoder.requires_grad_(True).train()
        tr.vae.post_quant_conv.requires_grad_(True)
        if tr.cfg.train.vae_train_encoder:
            tr.vae.encoder.requires_grad_(True).train()
            tr.vae.quant_conv.requires_grad_(True)
        if tr.cfg.train.gradient_checkpointing:
            tr.vae.enable_gradient_checkpointing()
        return _FlowCodec(tr.vae, train_encoder=tr.cfg.train.vae_train_encoder)

    def losses(self, tr: Trainer, batch: Batch, spec: TaskSpec, step: int) -> dict[str, torch.Tensor]:
        """MSE of the decoded flow (in gamma units) + the task's warp loss (+ the smoothness term
        ``flow_smooth``, pixels, when weighted); with a trained encoder also the reconstruction MSE
        of the images (input and gt), so image latents stay meaningful. One forward over flows and
        images together (DDP-safe)."""
        task, w = tr.task, tr.weights
        gamma = task.flow_gamma
        target = encode_flow(batch["flow"], gamma)
        b = target.shape[0]
        images = [batch["image"], batch["gt"]] if tr.cfg.train.vae_train_encoder else []
        with tr.acc.autocast():
            out = tr.model(torch.cat([target, *images]) if images else target)
        rec = out[:b]
        losses = {"flow": F.mse_loss(rec[:, :2].float(), target[:, :2].float())}
        if images:
            losses["image"] = F.mse_loss(out[b:].float(), torch.cat(images).float())
        flow = rec[:, :2].float() * gamma
        if w.warp:
            valid = gt_valid_region(batch["flow"]) if task.valid_region_loss else None
            losses["warp"] = warp_loss(batch["image"], flow, batch["gt"], padding=task.padding, valid=valid)
        if w.flow_smooth:  # pixels: the Laplacian of the decoded flow against the gt's
            losses["flow_smooth"] = flow_smoothness_loss(flow, target[:, :2].float() * gamma)
        losses["total"] = (w.flow * losses["flow"] + w.image * losses.get("image", 0.0) + w.warp * losses.get("warp", 0.0)
                           + w.flow_smooth * losses.get("flow_smooth", 0.0))
        return losses

    def after_eval(self, tr: Trainer) -> None:
        if not tr.cfg.train.vae_train_encoder:
            tr.vae.encoder.eval()

    def validate(self, tr: Trainer, limit: int) -> dict[str, float]:
        return validate_codec(tr, min(len(tr.val_ds), limit))  # type: ignore[arg-type]

    def save(self, tr: Trainer, folder: Path) -> None:
        tr.vae.save_pretrained(str(folder))


class RegressionStage(Stage):
    """The regression baseline: a :class:`~stablemotion.model.FlowRegressor` built from ``model.tiny``."""

    name, export_folder, label, uses_perceptual = "regression", "regressor", "regression baseline", True

    def build_model(self, tr: Trainer) -> torch.nn.Module:
        tr.unet.requires_grad_(False)
        model = FlowRegressor.for_task(tr.task, seed=tr.cfg.model.seed, **tr.cfg.model.tiny).train()
        if tr.cfg.train.gradient_checkpointing:
            model.net.enable_gradient_checkpointing()
        return model

    def losses(self, tr: Trainer, batch: Batch, spec: TaskSpec, step: int) -> dict[str, torch.Tensor]:
        """The warp / mask / perceptual terms of the regressed flow."""
        with tr.acc.autocast():
            flow = tr.model(stack_conditions(batch, tr.task))
        return image_losses(batch, flow.float(), {}, tr.task, tr.task_weights[tr.task.name], tr.perceptual)

    def predict(self, tr: Trainer, sample: Batch, task: TaskSpec, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        cond = stack_conditions({k: sample[k][None] for k in task.conditions}, tr.task).to(tr.acc.device)
        flow = tr.acc.unwrap_model(tr.model)(cond).float().cpu()
        return warp(sample["image"][None], flow, padding=task.padding, fill=-1.0).clamp(-1, 1), flow

    def save(self, tr: Trainer, folder: Path) -> None:
        tr.acc.unwrap_model(tr.model).save_pretrained(str(folder))


_STAGES: dict[str, type[Stage]] = {"unet": UnetStage, "vae": VaeStage, "regression": RegressionStage}


def stage_for(name: str) -> Stage:
    """The stage object of ``train.stage`` ``name`` (``"unet"``, ``"vae"`` or ``"regression"``)."""
    return _STAGES[name]()


def condition_latents(vae: Any, batch: Batch, conditions: tuple[str, ...]) -> torch.Tensor:
    """(B, 4k, h, w): the model's ``conditions`` (k of them, in order; masks repeated to 3
    channels) encoded in one VAE batch."""
    imgs = []
    for name in conditions:
        x = batch[name]
        imgs.append(x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x)
    b, k = imgs[0].shape[0], len(imgs)
    lat = encode_latents(vae, torch.stack(imgs, 1).flatten(0, 1))
    return lat.unflatten(0, (b, k)).flatten(1, 2)


def unet_module(tr: Trainer) -> torch.nn.Module:
    """The trained UNet itself (unwrapped from DDP and, multi-task, from its prompts)."""
    module = tr.acc.unwrap_model(tr.model)
    return module.unet if isinstance(module, _PromptedUNet) else module
