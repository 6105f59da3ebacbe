"""Memory and disk limits of a training run: refuse batches that cannot fit, and say which
setting to lower when a run runs out of memory or space."""

from __future__ import annotations

import torch

from .config import TrainConfig

__all__ = ["TrainingResourceError", "batch_bytes", "check_batch_fits", "largest_resolution"]


class TrainingResourceError(ValueError):
    """The run ran out of memory or disk space; the message names the setting to lower."""


#: Bytes per pixel of one sample's tensors in a batch (float32 image, gt, flow, mask, the
#: encoded conditions and their copies on the way to the network): the floor a batch needs
#: before any activation. Used only to refuse batches that cannot fit at all.
_BATCH_BYTES_PER_PIXEL = 4 * (3 + 3 + 2 + 1) * 2


def largest_resolution(cfg: TrainConfig) -> tuple[int, int]:
    """``(H, W)`` in pixels of the run's task trained at the most pixels.

    Example:
        >>> largest_resolution(TrainConfig()) == tuple(TrainConfig().resolution)
        True
    """
    return max((cfg.task_resolution(t.name) for t in cfg.task_specs), key=lambda r: r[0] * r[1])


def batch_bytes(cfg: TrainConfig) -> int:
    """Lower bound of one process's batch memory in bytes: ``batch_size x H x W x`` the
    sample tensors (largest task resolution), before any network activation.

    Example:
        >>> cfg = TrainConfig()
        >>> h, w = largest_resolution(cfg)
        >>> batch_bytes(cfg) == cfg.train.batch_size * h * w * 72
        True
    """
    h, w = largest_resolution(cfg)
    return cfg.train.batch_size * h * w * _BATCH_BYTES_PER_PIXEL


def check_batch_fits(cfg: TrainConfig, available: int | None = None) -> None:
    """Refuse a batch whose sample tensors alone exceed the memory available (one line naming
    ``train.batch_size``). ``available``: bytes (default: free RAM, or free GPU memory on CUDA).

    Example:
        >>> from stablemotion.training.config import TrainConfig
        >>> cfg = TrainConfig()
        >>> cfg.train.batch_size = 100_000
        >>> check_batch_fits(cfg, available=8 * 2**30)
        Traceback (most recent call last):
        ...
        stablemotion.training.resources.TrainingResourceError: train.batch_size=100000 needs at least 1.4e+03 GB ...
    """
    if available is None:
        if cfg.train.device != "cpu" and torch.cuda.is_available():
            available = torch.cuda.mem_get_info()[0]
        else:
            import psutil

            available = psutil.virtual_memory().available
    need = batch_bytes(cfg)
    if need > available:
        h, w = largest_resolution(cfg)
        raise TrainingResourceError(
            f"train.batch_size={cfg.train.batch_size} needs at least {need / 1e9:.2g} GB for the batch's "
            f"{h}x{w} samples alone (before the network's activations); {available / 1e9:.2g} GB is available: "
            "lower train.batch_size (raise train.grad_accum to keep the effective batch)"
        )


def out_of_memory_error(cfg: TrainConfig, step: int, resume_from: str | None) -> TrainingResourceError:
    """The one-line error for running out of memory at optimizer step ``step`` (1-based), naming
    the settings that set memory; ``resume_from``: the checkpoint ``--resume`` would continue from."""
    h, w = largest_resolution(cfg)
    resume = f"; --resume continues from {resume_from}" if resume_from is not None else ""
    return TrainingResourceError(
        f"out of memory at step {step} (train.batch_size={cfg.train.batch_size} of {h}x{w} per "
        f"process, train.mixed_precision={cfg.train.mixed_precision}): lower train.batch_size (raise "
        "train.grad_accum to keep the effective batch), set train.gradient_checkpointing: true or "
        f"train.mixed_precision: bf16{resume}"
    )
