"""Conventions shared by the core math and the task descriptions (no imports, so the command
line can read them without loading torch)."""

from __future__ import annotations

__all__ = ["FLOW_GAMMA", "PADDING_MODES", "DIS_PRESET_NAMES"]

#: Flow normalisation of the VAE encoding: channels are ``u / 50, v / 50, 1 / 50``.
FLOW_GAMMA = 50.0
#: :func:`stablemotion.flow.warp` paddings: ``border`` (SIR), ``zeros`` (RSC), ``reflection``.
PADDING_MODES = ("border", "zeros", "reflection")
#: OpenCV DIS optical-flow presets the pseudo-flow labeller offers (:mod:`stablemotion.labelling`).
DIS_PRESET_NAMES = ("ultrafast", "fast", "medium")
