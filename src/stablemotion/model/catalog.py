"""Names and places of the models the package knows, without importing torch or diffusers.

The command line imports these constants directly (so ``stablemotion --help`` stays fast);
:mod:`stablemotion.model` loads what they name.
"""

from __future__ import annotations

from pathlib import Path

from ..tasks import TaskSpec, get_task

__all__ = ["DEFAULT_BASE", "RELEASED_REPO", "RELEASED_SUBFOLDERS", "BUNDLED_MODELS", "BUNDLED_LIMITS",
           "bundled_model_path", "BUNDLED_TASK_CLASSIFIER", "bundled_task_classifier_path", "BUNDLED_MULTI_TASK",
           "bundled_multi_task_path"]

#: Default Stable Diffusion checkpoint (768-v, v-prediction).
DEFAULT_BASE = "stabilityai/stable-diffusion-2"
#: Hub repository of the authors' released checkpoints and its task subfolders.
RELEASED_REPO = "ivowang/StableMotion"
RELEASED_SUBFOLDERS = {"sir": "StableMotion_SIR", "rsc": "StableMotion_RSC"}
#: The ``stablemotion-mini`` pipelines shipped inside the package (fp16 safetensors), by task.
#: Trained on synthetic data by the recipe in ``configs/mini_*.yaml`` (see the README). Rotation and
#: lens correction are served by the multi-task mini (:data:`BUNDLED_MULTI_TASK`); SIR and RSC keep
#: their single-task minis, which score at least as well on their tasks (BENCHMARKS.md, "Multi-task").
#: The bundled multi-task mini: one model, a learned prompt per task for sir, rsc, rotation and lens
#: (configs/mini_multi.yaml). Tasks without a single-task mini map to it in :data:`BUNDLED_MODELS`.
BUNDLED_MULTI_TASK = "stablemotion-mini-multi"
BUNDLED_MODELS = {"sir": "stablemotion-mini-sir", "rsc": "stablemotion-mini-rsc",
                  "rotation": "stablemotion-mini-multi", "lens": "stablemotion-mini-multi"}
#: What a bundled model cannot do well, said in one line wherever it is used (rectify, serve, demo).
BUNDLED_LIMITS = {
    "rsc": (
        "the bundled stablemotion-mini-rsc model does not correct rolling shutter (it leaves frames nearly unchanged: "
        "+0.04 dB on held-out realistic camera motion); for real frames import the released model: "
        f"stablemotion import-checkpoint {RELEASED_REPO} --subfolder StableMotion_RSC --out models/rsc"
    ),
    "rotation": (
        "the bundled stablemotion-mini-multi model does not correct rotation (on held-out tilted photos its flow is "
        "5% further from the truth than no correction); train a rotation model on your data (docs/tasks.md)"
    ),
}
#: The task classifier of ``rectify --task auto`` (:mod:`stablemotion.model.task_choice`), shipped in the package.
#: Trained by ``stablemotion train-task-classifier`` (see the README).
BUNDLED_TASK_CLASSIFIER = "task-classifier"
_WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"


def bundled_task_classifier_path() -> Path:
    """Folder of the bundled task classifier (no download)."""
    path = _WEIGHTS_DIR / BUNDLED_TASK_CLASSIFIER
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"the bundled task classifier is missing from {path}; reinstall stablemotion or retrain it with "
            f"`stablemotion train-task-classifier --out {path}`"
        )
    return path


def bundled_multi_task_path() -> Path | None:
    """Folder of the bundled multi-task mini, or None when this install has none."""
    path = _WEIGHTS_DIR / BUNDLED_MULTI_TASK
    return path if (path / "model_index.json").is_file() else None


def bundled_model_path(task: str | TaskSpec = "sir") -> Path:
    """Folder of the bundled ``stablemotion-mini`` pipeline for ``task`` (no download)."""
    spec = get_task(task)
    if spec.name not in BUNDLED_MODELS:
        raise ValueError(
            f"no bundled model for task {spec.name!r} (bundled: {', '.join(sorted(BUNDLED_MODELS))}); pass --model"
        )
    path = _WEIGHTS_DIR / BUNDLED_MODELS[spec.name]
    if not (path / "model_index.json").is_file():
        raise FileNotFoundError(
            f"the bundled model {BUNDLED_MODELS[spec.name]} is missing from {path}; reinstall stablemotion "
            "or rebuild it with `make mini-models` (README: Reproduce the mini models)"
        )
    return path
