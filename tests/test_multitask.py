"""One model, several tasks: task prompts, the union of conditions, training and loading."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from stablemotion.model import build_pipeline, load_pipeline, retarget_pipeline
from stablemotion.model.components import EmptyTextEmbedding, TaskEmbedding, adapt_conv_in
from stablemotion.model.tiny import tiny_pipeline
from stablemotion.tasks import MISSING_MASK_VALUE, missing_condition_value, union_conditions
from stablemotion.training.config import ConfigError, apply_overrides, load_config

TASKS = ["sir", "rsc", "rotation", "lens"]


def _run(pipe, image, task=None, mask=None, seed=0):
    return pipe(image, mask=mask, task=task, generator=torch.Generator().manual_seed(seed), show_progress_bar=False)


# --------------------------------------------------------------------------- tasks and components
def test_union_of_conditions_is_in_a_fixed_order_and_missing_ones_are_documented_constants():
    assert union_conditions(TASKS) == ("mask", "image")
    assert union_conditions(["rsc", "sir"]) == ("image", "mask")  # the tasks' order decides
    assert union_conditions(["rsc", "lens"]) == ("image",)
    assert missing_condition_value("mask") == MISSING_MASK_VALUE == 1.0  # an all-valid mask
    assert missing_condition_value("depth") == 0.5
    with pytest.raises(ValueError, match="at least one task"):
        union_conditions([])


def test_task_embedding_rows_and_errors():
    emb = TaskEmbedding.from_empty(["sir", "lens"], torch.randn(1, 2, 8), noise=0.1, seed=0)
    assert emb(3, "lens").shape == (3, 2, 8)
    assert not torch.equal(emb(1, "sir"), emb(1, "lens"))  # the tasks start apart
    assert torch.equal(emb(2, ["lens", "sir"])[0], emb(1, "lens")[0])
    assert torch.equal(emb(1), emb(1, "sir"))  # None = the first task
    with pytest.raises(ValueError, match=r"serves the tasks \['sir', 'lens'\], not 'rsc'"):
        emb(1, "rsc")
    with pytest.raises(ValueError, match="distinct"):
        TaskEmbedding(task_names=["sir", "sir"])


def test_adapt_conv_in_copies_shared_slots_and_zeros_new_ones():
    pipe = tiny_pipeline("sir")  # conditions (mask, image) + flow
    old = pipe.unet.conv_in.weight.detach().clone()
    adapt_conv_in(pipe.unet, ["mask", "image"], ["image"])
    new = pipe.unet.conv_in.weight
    assert new.shape[1] == 8 and pipe.unet.config.in_channels == 8
    assert torch.equal(new[:, :4], old[:, 4:8]) and torch.equal(new[:, 4:], old[:, 8:])
    adapt_conv_in(pipe.unet, ["image"], ["depth", "image"])
    assert torch.count_nonzero(pipe.unet.conv_in.weight[:, :4]) == 0
    with pytest.raises(ValueError, match="not 4 x"):
        adapt_conv_in(pipe.unet, ["image"], ["image"])


# --------------------------------------------------------------------------- the pipeline
@pytest.fixture(scope="module")
def multi():
    return tiny_pipeline(TASKS, seed=0)


def test_multi_task_pipeline_runs_each_task_with_its_prompt(multi, photo):
    image = torch.from_numpy(photo[:32, :32]).permute(2, 0, 1).float()[None] / 255
    assert multi.conditions == ("mask", "image") and multi.unet.config.in_channels == 12
    assert list(multi.tasks) == TASKS and multi.task.name == "sir"
    flows = {t: _run(multi, image, t).flow for t in ("rsc", "rotation", "lens")}
    assert not torch.allclose(flows["rotation"], flows["lens"])  # the prompt changes the result
    assert _run(multi, image, "lens").settings["task"] == "lens"
    # A task without a mask is fed an all-valid mask: the same as passing one to SIR, but the SIR prompt
    full = torch.ones(1, 1, 32, 32)
    sir = _run(multi, image, "sir", mask=full).flow
    assert not torch.allclose(sir, flows["rsc"])
    with pytest.raises(ValueError, match="needs the condition 'mask'"):
        _run(multi, image, "sir")
    with pytest.raises(ValueError, match=r"task 'rsc' takes conditions \['image'\]"):
        _run(multi, image, "rsc", mask=full)
    with pytest.raises(ValueError, match="serves"):
        _run(multi, image, "nope")


def test_multi_task_constant_condition_is_what_the_unet_sees(multi, photo, monkeypatch):
    image = torch.from_numpy(photo[:32, :32]).permute(2, 0, 1).float()[None] / 255
    seen = []
    real = multi.encode
    monkeypatch.setattr(multi, "encode", lambda x: (seen.append(x.clone()), real(x))[1])
    _run(multi, image, "lens")
    stacked = seen[0]  # (B * k, 3, h, w), the model's conditions in order: mask, image
    assert torch.all(stacked[0] == 1.0)  # the all-valid mask in the VAE's range


def test_multi_task_pipeline_saves_and_loads(multi, photo, tmp_path):
    image = torch.from_numpy(photo[:32, :32]).permute(2, 0, 1).float()[None] / 255
    multi.save_pretrained(tmp_path / "m")
    back = load_pipeline(tmp_path / "m", progress=False)
    assert isinstance(back.text_embedding, TaskEmbedding) and list(back.tasks) == TASKS
    assert torch.equal(back.text_embedding.embedding, multi.text_embedding.embedding)
    assert torch.allclose(_run(back, image, "rotation").flow, _run(multi, image, "rotation").flow, atol=1e-3)


def test_single_task_pipelines_are_unchanged(photo):
    pipe = tiny_pipeline("rsc")
    image = torch.from_numpy(photo[:32, :32]).permute(2, 0, 1).float()[None] / 255
    assert isinstance(pipe.text_embedding, EmptyTextEmbedding) and pipe.config.tasks is None
    assert torch.equal(_run(pipe, image).flow, _run(pipe, image, "rsc").flow)
    with pytest.raises(ValueError, match="single-task model"):
        _run(pipe, image, "lens")


def test_multi_task_pipeline_refuses_mismatched_parts():
    from stablemotion.model.pipeline import StableMotionPipeline

    single = tiny_pipeline("sir")
    with pytest.raises(ValueError, match="needs a TaskEmbedding with one row per task"):
        StableMotionPipeline(single.unet, single.vae, single.scheduler, single.text_embedding, tasks=["sir", "rsc"])
    emb = TaskEmbedding.from_empty(["rsc", "lens"], single.text_embedding)
    with pytest.raises(ValueError, match="need a UNet with 8 input channels"):
        StableMotionPipeline(single.unet, single.vae, single.scheduler, emb, tasks=["rsc", "lens"])


def test_retarget_turns_a_single_task_model_into_a_multi_task_one(photo):
    sir = tiny_pipeline("sir", seed=2)
    w = sir.unet.conv_in.weight.detach().clone()
    multi = retarget_pipeline(sir, TASKS)
    assert multi.conditions == ("mask", "image") and torch.equal(multi.unet.conv_in.weight, w)
    assert isinstance(multi.text_embedding, TaskEmbedding)
    back = retarget_pipeline(multi, "lens")  # and back to one task: that task's prompt
    assert back.conditions == ("image",) and back.task.name == "lens"
    assert torch.equal(back.text_embedding.embedding[0], multi.text_embedding.embedding[3])
    assert retarget_pipeline(back, "lens") is back


def test_build_pipeline_encodes_each_task_description_with_the_base_text_encoder(tiny_base):
    pipe = build_pipeline(tiny_base, ["rotation", "lens"], local_files_only=True)
    assert pipe.conditions == ("image",) and pipe.unet.config.in_channels == 8
    emb = pipe.text_embedding.embedding
    assert emb.shape[0] == 2 and emb.shape[2] == pipe.unet.config.cross_attention_dim
    assert not torch.allclose(emb[0], emb[1])  # two descriptions, two encodings


# --------------------------------------------------------------------------- training
def _task_folder(root: Path, photo: np.ndarray, n: int = 3, shift: float = 1.5) -> Path:
    """A tiny task-folder dataset (input, gt, flow) with a constant exact flow."""
    from stablemotion.core.flow import warp, write_flow
    from stablemotion.io.images import save_image

    for sub in ("input", "gt", "flow"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img = np.ascontiguousarray(photo[i * 8 : i * 8 + 32, i * 8 : i * 8 + 32])
        flow = torch.full((2, 32, 32), shift)
        gt = warp(torch.from_numpy(img).permute(2, 0, 1), flow).permute(1, 2, 0).numpy()
        save_image(img, root / "input" / f"{i:05d}.png")
        save_image(gt, root / "gt" / f"{i:05d}.png")
        write_flow(root / "flow" / f"{i:05d}.npy", flow.permute(1, 2, 0).numpy())
    return root


def _multi_config(tmp_path: Path, photo: np.ndarray, **extra) -> Path:
    from tests.test_training import _make_sir_folder

    sir = _make_sir_folder(tmp_path / "sir", photo)
    lens = _task_folder(tmp_path / "lens", photo)
    cfg = {
        "task": ["sir", "lens"],
        "data": {"tasks": {"sir": {"format": "dird", "train": str(sir), "val": str(sir)},
                           "lens": {"format": "folder", "train": str(lens), "val": str(lens), "weight": 2}},
                 "resolution": [32, 32], "num_workers": 0, "val_samples": 1},
        "model": {"base": "tiny"},
        "loss": {"vgg_weights": None, "weights": {"vgg": 0.0}},
        "optim": {"lr": 1e-3},
        "train": {"batch_size": 2, "max_steps": 6, "ema_decay": 0.9, "device": "cpu"},
        "checkpoint": {"output_dir": str(tmp_path / "run"), "every": 3, "keep": 2},
        "logging": {"every": 1, "tensorboard": False},
        "validation": {"every": 0},
    }
    apply_overrides(cfg, [f"{k}={v}" for k, v in extra.items()])
    path = tmp_path / "multi.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_multi_task_training_goes_round_robin_learns_the_prompts_and_exports(tmp_path, photo, monkeypatch):
    from stablemotion.training import Trainer

    trainer = Trainer(load_config(_multi_config(tmp_path, photo)))
    emb0 = trainer.pipe.text_embedding.embedding.detach().clone()
    seen = []
    real = trainer.compute_losses
    monkeypatch.setattr(trainer, "compute_losses",
                        lambda batch, step: (seen.append((batch["task"][0], "mask" in batch and
                                                          bool((batch["mask"] == 1).all()))), real(batch, step))[1])
    result = trainer.train(show_progress=False)
    # weights sir 1, lens 2: sir, lens, lens, sir, lens, lens; lens batches get an all-valid mask
    assert [t for t, _ in seen] == ["sir", "lens", "lens"] * 2
    assert all(full for t, full in seen if t == "lens")
    assert not torch.equal(trainer.pipe.text_embedding.embedding.detach(), emb0)  # the prompts are learned
    pipe = load_pipeline(result.pipeline_dir, progress=False)
    assert list(pipe.tasks) == ["sir", "lens"] and isinstance(pipe.text_embedding, TaskEmbedding)
    metrics = trainer.validate()
    assert {"val/sir/psnr", "val/lens/psnr", "val/lens/psnr_identity"} <= set(metrics)


def test_multi_task_resume_reproduces_the_uninterrupted_run(tmp_path, photo):
    from stablemotion.training import Trainer

    full = Trainer(load_config(_multi_config(tmp_path / "a", photo)))
    full.train(show_progress=False)
    part = Trainer(load_config(_multi_config(tmp_path / "b", photo)))
    part.train(max_steps=3, show_progress=False)
    again = Trainer(load_config(_multi_config(tmp_path / "b", photo)))
    again.train(resume=True, show_progress=False)
    for (k, a), b in zip(full.pipe.unet.state_dict().items(), again.pipe.unet.state_dict().values(), strict=True):
        assert torch.allclose(a, b, atol=1e-5), k
    assert torch.allclose(full.pipe.text_embedding.embedding, again.pipe.text_embedding.embedding, atol=1e-5)
    single = Trainer(load_config(_multi_config(tmp_path / "c", photo), overrides=[
        "task=sir", "data.tasks={}", "data.format=dird", f"data.train={tmp_path / 'b' / 'sir'}"]))
    with pytest.raises(ValueError, match="was trained for task 'sir\\+lens'"):
        single.resume(tmp_path / "b" / "run")


@pytest.mark.parametrize("overrides, message", [
    (["data.tasks.rsc={format: rsreal, train: x}"], r"data.tasks has entries for \['rsc'\]"),
    (["data.tasks.lens.format=rsreal", "task=[sir, lens, sir]"], "distinct"),
    (["train.stage=vae"], "trains the UNet only"),
    (["data.tasks.lens.weight=0"], r"data.tasks.lens.weight must be an integer >= 1"),
    (["data.tasks.lens.trian=x"], r"unknown key data.tasks.lens.trian \(did you mean data.tasks.lens.train\?\)"),
    (["data.tasks.lens.train=/nowhere"], "data.tasks.lens.train folder not found"),
])
def test_multi_task_config_errors_name_the_key(tmp_path, photo, overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(_multi_config(tmp_path, photo), overrides=overrides)


def test_a_task_without_data_is_refused(tmp_path, photo):
    path = _multi_config(tmp_path, photo)
    with pytest.raises(ConfigError, match="data.tasks has no entry for task 'rsc'"):
        load_config(path, overrides=["task=[sir, lens, rsc]"])


def test_model_init_of_another_task_needs_retarget(tmp_path, photo):
    from stablemotion.training import Trainer

    tiny_pipeline("sir", seed=1).save_pretrained(tmp_path / "start")
    path = _multi_config(tmp_path, photo, **{"model.init": str(tmp_path / "start")})
    with pytest.raises(ValueError, match="set model.retarget: true"):
        Trainer(load_config(path))
    trainer = Trainer(load_config(path, overrides=["model.retarget=true"]))
    assert list(trainer.pipe.tasks) == ["sir", "lens"]


def test_set_default_task_is_what_calls_without_task_run_and_is_saved(photo, tmp_path):
    pipe = tiny_pipeline(["sir", "lens"], seed=0)
    image = torch.from_numpy(photo[:32, :32]).permute(2, 0, 1).float()[None] / 255
    pipe.set_default_task("lens")
    assert pipe.task.name == "lens"
    assert torch.equal(_run(pipe, image).flow, _run(pipe, image, "lens").flow)  # no mask needed: lens
    pipe.save_pretrained(tmp_path / "m")
    assert load_pipeline(tmp_path / "m", progress=False).task.name == "lens"
    with pytest.raises(ValueError, match="serves"):
        pipe.set_default_task("rsc")


def test_multi_task_mini_and_its_baselines_share_start_data_and_budget():
    """configs/mini_multi.yaml vs configs/mini_single.yaml: what BENCHMARKS.md's comparison claims."""
    root = Path(__file__).resolve().parents[1] / "configs"
    multi = load_config(root / "mini_multi.yaml", check_paths=False)
    single = load_config(root / "mini_single.yaml", check_paths=False)
    names = [t.name for t in multi.task_specs]
    assert names == TASKS and multi.model.init == single.model.init and multi.model.retarget and single.model.retarget
    assert multi.optim == single.optim and multi.loss == single.loss and multi.data.resolution == single.data.resolution
    assert multi.train.batch_size == single.train.batch_size and multi.train.ema_decay == single.train.ema_decay
    weights = [multi.task_data(n).weight for n in names]
    assert multi.train.max_steps == single.train.max_steps * sum(weights) and set(weights) == {1}
    assert multi.task_data("sir").train == single.data.train  # the recipe overrides the others' data per task
    recipe = (root / "mini_multi_recipe.sh").read_text()
    for name in names[1:]:
        td = multi.task_data(name)
        assert f"{name}:{td.format}:{td.train}:{td.val}" in recipe


def test_a_task_can_train_and_run_at_its_own_resolution(tmp_path, photo, monkeypatch):
    from stablemotion.training import Trainer

    path = _multi_config(tmp_path, photo, **{"train.max_steps": 3, "data.tasks.lens.resolution": "[24, 32]"})
    cfg = load_config(path)
    assert cfg.task_resolution("lens") == (24, 32) and cfg.task_resolution("sir") == (32, 32)
    trainer = Trainer(cfg)
    shapes = {}
    real = trainer.compute_losses
    monkeypatch.setattr(trainer, "compute_losses",
                        lambda batch, step: (shapes.setdefault(batch["task"][0], tuple(batch["image"].shape[-2:])),
                                             real(batch, step))[1])
    result = trainer.train(show_progress=False)
    assert shapes == {"sir": (32, 32), "lens": (24, 32)}
    pipe = load_pipeline(result.pipeline_dir, progress=False)
    assert pipe.config.task_resolutions == {"lens": [24, 32]}
    image = torch.from_numpy(photo[:48, :64]).permute(2, 0, 1).float()[None] / 255
    assert _run(pipe, image, "lens").settings["processing_resolution"] == [24, 32]
    assert _run(pipe, image, "sir", mask=torch.ones(1, 1, 48, 64)).settings["processing_resolution"] == [32, 32]
    single = retarget_pipeline(pipe, "lens")  # one task left: its own size becomes the default
    assert single.config.default_processing_resolution == [24, 32] and single.config.task_resolutions is None
    with pytest.raises(ConfigError, match=r"data.tasks.lens.resolution must be \[height, width\]"):
        load_config(path, overrides=["data.tasks.lens.resolution=[20, 32]"])
