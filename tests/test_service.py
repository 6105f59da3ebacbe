"""The rectify service (:mod:`stablemotion.model.service`): the mask rule, the unchanged gate, the
non-finite check, the file writing, and the same image and flow from the CLI, the app and evaluation."""

from __future__ import annotations

import io
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from stablemotion.app.server import create_app
from stablemotion.cli import main
from stablemotion.core.flow import read_flow
from stablemotion.core.image_processing import mask_valid
from stablemotion.data.synth import write_rectangling_dataset
from stablemotion.evaluation.runner import EvalSettings, open_eval_set, run_inference
from stablemotion.io.images import load_image, save_image
from stablemotion.model.loading import load_pipeline
from stablemotion.model.service import (
    NonFiniteFlowError,
    RectifyRequest,
    prepare_request,
    rectify,
    rectify_image,
    rectify_many,
    resolve_task,
    takes_mask,
    unchanged_reason,
    unchanged_result,
    write_results,
)
from stablemotion.model.tiny import tiny_pipeline

SEED, STEPS = 7, 1


@pytest.fixture(scope="module")
def sir_folder_and_pipe(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    """A tiny SIR pipeline folder (``stablemotion tiny-model``) and the pipeline loaded from it."""
    folder = tmp_path_factory.mktemp("models") / "sir"
    assert main(["tiny-model", "--task", "sir", "--out", str(folder)]) == 0
    pipe = load_pipeline(folder, progress=False)
    pipe.set_progress_bar_config(disable=True)
    return folder, pipe


@pytest.fixture(scope="module")
def dird(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("dird")
    write_rectangling_dataset(root, 1, size=(32, 48), split="testing", seed=0)
    return root


def _bordered(h: int = 32, w: int = 48) -> np.ndarray:
    image = np.random.default_rng(0).integers(40, 220, (h, w, 3), dtype=np.uint8)
    image[:5] = 0
    image[:, -4:] = 0
    return image


# --------------------------------------------------------------------------- the mask rule
def test_the_mask_is_derived_from_the_border_only_for_tasks_that_take_one() -> None:
    image = _bordered()
    req = prepare_request(image, task="sir")
    assert req.mask is not None and not req.mask_given and "derived mask from the black border" in req.note
    assert not mask_valid(req.mask)[:5].any() and mask_valid(req.mask)[10:, :40].all()
    assert prepare_request(image, task="rsc").mask is None
    with pytest.raises(ValueError, match="rsc task takes no mask"):
        prepare_request(image, np.full((32, 48), 255, np.uint8), task="rsc")
    assert takes_mask("sir") and not takes_mask("rsc")


def test_a_given_mask_is_checked_and_kept_as_read() -> None:
    image = _bordered()
    given = np.full((32, 48, 3), 200, np.uint8)
    req = prepare_request(image, given, task="sir")
    assert req.mask is given and req.mask_given
    with pytest.raises(ValueError, match="is 10x10 px but the image is 48x32 px"):
        prepare_request(image, np.full((10, 10), 255, np.uint8), task="sir")
    with pytest.raises(ValueError, match="no valid pixel"):
        prepare_request(image, np.zeros((32, 48), np.uint8), task="sir")


def test_a_derived_mask_without_border_leaves_the_image_unchanged_and_never_calls_the_model() -> None:
    image = np.full((16, 24, 3), 100, np.uint8)

    def refuse(*args, **kwargs):
        raise AssertionError("the model ran")

    res = rectify_image(refuse, image, task="sir")
    assert res.unchanged and res.reason == unchanged_reason(prepare_request(image, task="sir"))
    assert (res.image == image).all() and not res.flow.any() and res.flow_max == 0.0 and res.spread is None
    # a given mask forces a run, whatever it holds
    assert not unchanged_reason(prepare_request(image, np.full((16, 24), 255, np.uint8), task="sir"))


# --------------------------------------------------------------------------- running
def test_rectify_image_is_rectify_of_the_prepared_request() -> None:
    pipe = tiny_pipeline("sir")
    image = _bordered()
    a = rectify_image(pipe, image, seed=SEED, num_inference_steps=STEPS)
    b = rectify(pipe, prepare_request(image, task="sir"), seed=SEED, num_inference_steps=STEPS)
    assert a.task == "sir" and not a.unchanged and a.work_size == (32, 48)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.flow, b.flow) and np.array_equal(a.mask, b.mask)
    many = list(rectify_many(pipe, [prepare_request(image, task="sir")] * 2, seed=SEED, num_inference_steps=STEPS))
    assert all(np.array_equal(r.flow, a.flow) for r in many)  # each image its own generator of the same seed


def test_large_images_run_at_the_working_size() -> None:
    res = rectify_image(tiny_pipeline("rsc"), np.full((96, 128, 3), 90, np.uint8), max_work_pixels=48 * 64)
    assert res.work_size == (48, 64) and res.image.shape == (96, 128, 3) and res.flow.shape == (96, 128, 2)
    assert res.pipe_seconds > 0 and res.seconds >= res.pipe_seconds


def test_a_non_finite_flow_is_refused() -> None:
    def nan_pipe(image, mask=None, **kwargs):
        h, w = image.shape[:2]
        return SimpleNamespace(image=np.zeros((1, h, w, 3), np.float32),
                               flow=np.full((1, h, w, 2), np.nan, np.float32), uncertainty=None)

    req = RectifyRequest(np.zeros((8, 8, 3), np.uint8), task="rsc")
    with pytest.raises(NonFiniteFlowError, match="non-finite flow"):
        rectify(nan_pipe, req)


def test_resolve_task_of_pipelines_and_stand_ins() -> None:
    assert resolve_task(tiny_pipeline("rsc")).name == "rsc"
    assert resolve_task(lambda *a: None, "lens").name == "lens"
    assert resolve_task(lambda *a: None).name == "sir"


# --------------------------------------------------------------------------- writing
def test_write_results_names_the_files_as_the_caller_says(tmp_path: Path) -> None:
    res = rectify_image(tiny_pipeline("sir"), _bordered(), seed=SEED, num_inference_steps=STEPS, ensemble_size=2)
    paths = {"image": tmp_path / "r.png", "flow_color": tmp_path / "f.png", "flow": tmp_path / "f.flo",
             "mask": tmp_path / "m.png", "uncertainty": tmp_path / "u.npy", "uncertainty_color": tmp_path / "u.png"}
    assert write_results(res, paths, png_compress_level=1) == list(paths.values())
    assert np.array_equal(load_image(tmp_path / "r.png"), res.image)
    assert np.allclose(read_flow(tmp_path / "f.flo"), res.flow)
    assert np.array_equal(np.load(tmp_path / "u.npy"), res.spread)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in paths.values())  # no temporaries
    with pytest.raises(ValueError, match="unknown result files"):
        write_results(res, {"picture": tmp_path / "x.png"})


def test_an_unchanged_image_writes_zero_flow_and_spread(tmp_path: Path) -> None:
    image = np.full((6, 9, 3), 70, np.uint8)
    res = unchanged_result(RectifyRequest(image, np.full((6, 9), 255, np.uint8), "sir"))
    written = write_results(res, {"image": tmp_path / "a.png", "flow": tmp_path / "a.npy",
                                  "uncertainty": tmp_path / "u.npy", "mask": tmp_path / "m.png"})
    assert [p.name for p in written] == ["a.png", "a.npy", "u.npy", "m.png"]
    assert not np.load(tmp_path / "a.npy").any() and not np.load(tmp_path / "u.npy").any()


# --------------------------------------------------------------------------- one result whoever asks
def test_the_cli_the_app_and_evaluation_give_the_same_image_and_flow(
        sir_folder_and_pipe: tuple[Path, Any], dird: Path, tmp_path: Path) -> None:
    sir_model, sir_pipe = sir_folder_and_pipe
    eval_set = open_eval_set(dird, task="sir")
    name = eval_set.names[0]
    sample = eval_set.get(name)
    assert sample.mask is not None
    mask = sample.mask[..., 0]  # the dataset's mask as read (a JPEG, grey levels): the files' grey PNG
    assert (sample.mask == mask[..., None]).all() and not mask_valid(mask).all()
    service = rectify_image(sir_pipe, sample.image, sample.mask, seed=SEED, num_inference_steps=STEPS,
                            ensemble_size=1)

    # evaluation
    run_inference(sir_pipe, eval_set, tmp_path / "eval", EvalSettings(steps=STEPS, ensemble=1, seed=SEED),
                  save_flow=True)
    assert np.array_equal(load_image(tmp_path / "eval" / "results" / f"{name}.png"), service.image)
    assert np.array_equal(np.load(tmp_path / "eval" / "flows" / f"{name}.npy"), service.flow)

    # the command line
    save_image(sample.image, tmp_path / "in" / "a.png")
    save_image(mask, tmp_path / "masks" / "a.png")
    assert main(["rectify", str(tmp_path / "in" / "a.png"), "--model", str(sir_model), "--mask",
                 str(tmp_path / "masks" / "a.png"), "--out", str(tmp_path / "cli"), "--save-flow",
                 "--steps", str(STEPS), "--ensemble", "1", "--seed", str(SEED), "--always-correct",
                 "--no-channels-last"]) == 0  # channels_last convolutions round differently
    assert np.array_equal(load_image(tmp_path / "cli" / "a.png"), service.image)
    assert np.array_equal(np.load(tmp_path / "cli" / "a_flow.npy"), service.flow)

    # the web app
    def png(array: np.ndarray) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(array).save(buf, format="PNG")
        return buf.getvalue()

    (tmp_path / "app").mkdir()
    app = create_app({"sir": sir_pipe}, result_root=tmp_path / "app", allowed_hosts=["testserver"])
    with TestClient(app) as client:
        r = client.post("/api/rectify", data={"task": "sir", "steps": str(STEPS), "ensemble": "1",
                                              "seed": str(SEED), "always_correct": "1"},
                        files={"image": ("a.png", png(sample.image), "image/png"),
                               "mask": ("m.png", png(mask), "image/png")})
        assert r.status_code == 200, r.text
        urls = r.json()["urls"]
        image = np.array(Image.open(io.BytesIO(client.get(urls["rectified.png"]).content)))
        flow = np.load(io.BytesIO(client.get(urls["flow.npy"]).content))
    assert np.array_equal(image, service.image) and np.array_equal(flow, service.flow)
