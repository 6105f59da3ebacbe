"""Conventions shared by the core math and the task descriptions (no imports, so the command
line can read them without loading torch)."""

from __future__ import annotations

__all__ = ["ASPECT_MODES", "FLOW_GAMMA", "PADDING_MODES", "DIS_PRESET_NAMES", "ENSEMBLE_MODES", "FINAL_STEPS", "FLOW_REGULARIZATIONS",
           "FLOW_PROJECTIONS", "DEFAULT_CORRECTION_GATE", "RECTANGLING_STYLE_NAMES", "RS_MOTION_NAMES"]

#: Flow normalisation of the VAE encoding: channels are ``u / 50, v / 50, 1 / 50``.
FLOW_GAMMA = 50.0
#: :func:`stablemotion.core.flow.warp` paddings: ``border`` (SIR), ``zeros`` (RSC), ``reflection``.
PADDING_MODES = ("border", "zeros", "reflection")
#: OpenCV DIS optical-flow presets the pseudo-flow labeller offers (:mod:`stablemotion.data.labelling`).
DIS_PRESET_NAMES = ("ultrafast", "fast", "medium")
#: Ensemble (AES) rules: ``image`` (released), ``flow`` (median flow), ``latent`` (median latent).
ENSEMBLE_MODES = ("image", "flow", "latent")
#: What the last denoising step returns: the x0 estimate, or DDIM's ``prev_sample`` (the release).
FINAL_STEPS = ("x0", "prev_sample")
#: Post-processing of each member flow: none, or its projection onto a smooth mesh of per-cell
#: homographies (:func:`stablemotion.core.flow.mesh_regularize`: straight lines stay straight).
FLOW_REGULARIZATIONS = ("none", "mesh")
#: Projection of each member flow onto the task's motion family: none, or the robust fit of
#: :func:`stablemotion.core.motion_models.fit_motion_model` (``TaskSpec.motion_model``).
FLOW_PROJECTIONS = ("none", "motion_model")
#: How the pipeline sees an image of another aspect ratio than its processing resolution's:
#: ``auto`` (windows for tasks with a local flow, SIR), ``windows`` (overlapping windows of the
#: network's aspect ratio along the long side, blended) or ``squeeze`` (resized whole).
ASPECT_MODES = ("auto", "windows", "squeeze")
#: The correction gate's confidence threshold of ``stablemotion rectify`` and the app: an image
#: whose predicted correction is less supported is left unchanged
#: (:mod:`stablemotion.model.correction_gate`).
DEFAULT_CORRECTION_GATE = 0.5
#: Border styles of the synthetic SIR generator (:func:`stablemotion.data.synth.make_rectangling_sample`).
RECTANGLING_STYLE_NAMES = ("inset", "stitched", "panorama")
#: Camera-motion models of the synthetic RSC generator
#: (:func:`stablemotion.data.synth.make_rolling_shutter_sample`): ``planar`` (in-plane translation and
#: rotation, random polynomials) or ``camera`` (a 3-D camera pose per row, looking at a plane).
RS_MOTION_NAMES = ("planar", "camera")
