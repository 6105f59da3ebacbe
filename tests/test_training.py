from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from stablemotion.core.flow import mesh_to_flow, rigid_mesh, warp, write_flow
from stablemotion.training import Trainer, find_checkpoints, latest_checkpoint
from stablemotion.training.config import ConfigError, load_config

H, W = 32, 32


def _make_sir_folder(root: Path, photo: np.ndarray, n: int = 4, seed: int = 0) -> Path:
    """A tiny SIR dataset in the DIR-D split layout with exact flows: gt = warp(input, flow)."""
    rng = np.random.default_rng(seed)
    for sub in ("input", "mask", "gt", "flow"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    import cv2

    for i in range(n):
        y, x = rng.integers(0, photo.shape[0] - H), rng.integers(0, photo.shape[1] - W)
        img = np.ascontiguousarray(photo[y : y + H, x : x + W])
        img = cv2.resize(photo, (W, H), interpolation=cv2.INTER_AREA) if i % 2 else img
        mesh = rigid_mesh(2, 2, H, W)
        mesh[1, 1] += rng.normal(0, 2.0, size=2)
        flow = mesh_to_flow(mesh, H, W)
        gt = warp(torch.from_numpy(img).permute(2, 0, 1), flow).permute(1, 2, 0).numpy()
        name = f"{i:05d}"
        Image.fromarray(img).save(root / "input" / f"{name}.png")
        Image.fromarray(np.full((H, W, 3), 255, np.uint8)).save(root / "mask" / f"{name}.png")
        Image.fromarray(gt).save(root / "gt" / f"{name}.png")
        write_flow(root / "flow" / f"{name}.npy", flow)
    return root


def _config(tmp_path: Path, data: Path, **overrides) -> Path:
    cfg = {
        "task": "sir",
        "data": {"format": "dird", "train": str(data), "val": str(data), "flows": str(data / "flow"),
                 "resolution": [H, W], "num_workers": 0, "val_samples": 2},
        "model": {"base": "tiny"},
        "loss": {"vgg_weights": None, "weights": {"vgg": 0.1}},
        "optim": {"lr": 1e-3},
        "train": {"batch_size": 2, "max_steps": 6, "ema_decay": 0.9, "device": "cpu"},
        "checkpoint": {"output_dir": str(tmp_path / "run"), "every": 3, "keep": 2},
        "logging": {"every": 1, "tensorboard": False},
        "validation": {"every": 0},
    }
    for key, val in overrides.items():
        node = cfg
        parts = key.split(".")
        for p in parts[:-1]:
            node = node[p]
        node[parts[-1]] = val
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture
def sir_data(tmp_path, photo) -> Path:
    return _make_sir_folder(tmp_path / "data", photo)


def _unet_state(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.acc.unwrap_model(trainer.unet).state_dict().items()}


def test_losses_are_finite_and_training_runs_and_exports(tmp_path, sir_data):
    cfg = load_config(_config(tmp_path, sir_data))
    trainer = Trainer(cfg)
    batch = next(iter(trainer._loader(0)))
    assert set(batch) >= {"image", "mask", "gt", "flow"} and batch["image"].shape == (2, 3, H, W)
    losses = trainer.compute_losses(batch, 0)
    assert set(losses) == {"v", "warp", "mask", "vgg", "total"}
    assert all(torch.isfinite(v) for v in losses.values())
    losses["total"].backward()
    grads = [p.grad for p in trainer.unet.parameters() if p.grad is not None]
    assert grads and sum(float(g.abs().sum()) for g in grads) > 0  # the task losses reach the UNet
    trainer.optimizer.zero_grad()
    result = trainer.train(show_progress=False)
    assert result.step == 6 and result.pipeline_dir is not None
    assert (result.pipeline_dir / "model_index.json").is_file()
    assert [s for s, _ in find_checkpoints(tmp_path / "run")] == [6, 3]  # keep=2
    metrics = trainer.validate()
    assert set(metrics) == {"val/psnr", "val/ssim", "val/psnr_identity", "val/ssim_identity"}
    assert list((tmp_path / "run" / "validation").glob("*.png"))

    from stablemotion.model.pipeline import StableMotionPipeline

    pipe = StableMotionPipeline.from_pretrained(result.pipeline_dir)
    assert pipe.task.name == "sir" and list(pipe.config.default_processing_resolution) == [H, W]


def test_resume_reproduces_uninterrupted_run(tmp_path, sir_data):
    full = Trainer(load_config(_config(tmp_path / "a", sir_data, **{"checkpoint.output_dir": str(tmp_path / "a/run")})))
    full.train(show_progress=False)
    reference = _unet_state(full)

    cfg_b = _config(tmp_path / "b", sir_data, **{"checkpoint.output_dir": str(tmp_path / "b/run")})
    first = Trainer(load_config(cfg_b))
    first.train(max_steps=3, show_progress=False)  # "killed" after the step-3 checkpoint
    assert latest_checkpoint(tmp_path / "b/run").name == "checkpoint-3"
    del first
    second = Trainer(load_config(cfg_b))
    result = second.train(resume=True, show_progress=False)
    assert result.step == 6
    resumed = _unet_state(second)
    for k in reference:
        assert torch.allclose(reference[k], resumed[k], atol=1e-6), k


def test_corrupt_checkpoint_is_skipped_with_warning(tmp_path, sir_data, capsys):
    cfg_path = _config(tmp_path, sir_data, **{"train.max_steps": 3, "checkpoint.every": 3})
    Trainer(load_config(cfg_path)).train(show_progress=False)
    run = tmp_path / "run"
    good = run / "checkpoint-3"
    broken = run / "checkpoint-9"
    shutil.copytree(good, broken)
    (broken / "COMPLETE").unlink()  # an interrupted save
    partial = run / "checkpoint-12"
    shutil.copytree(good, partial)
    for f in partial.glob("model*.safetensors"):
        f.unlink()
    assert latest_checkpoint(run) == good
    out = capsys.readouterr().out
    assert "checkpoint-9: no COMPLETE marker" in out and "checkpoint-12: model weights missing" in out


def test_bad_configs_fail_before_compute(tmp_path, sir_data):
    with pytest.raises(ConfigError, match="unknown key optim.weight_decy.*did you mean optim.weight_decay"):
        load_config(_config(tmp_path, sir_data), overrides=["optim.weight_decy=0.1"])
    with pytest.raises(ConfigError, match="data.train folder not found: .*nowhere"):
        load_config(_config(tmp_path, sir_data), overrides=[f"data.train={tmp_path / 'nowhere'}"])
    with pytest.raises(ConfigError, match="unknown task 'sirr'"):
        load_config(_config(tmp_path, sir_data), overrides=["task=sirr"])
    with pytest.raises(ConfigError, match="train.batch_size must be int"):
        load_config(_config(tmp_path, sir_data), overrides=["train.batch_size=two"])
    with pytest.raises(ConfigError, match="mixed_precision"):
        load_config(_config(tmp_path, sir_data), overrides=["train.mixed_precision=fp8"])
    with pytest.raises(ConfigError, match="unknown loss terms"):
        load_config(_config(tmp_path, sir_data), overrides=["loss.weights={l1: 1}"])
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        load_config(tmp_path / "missing.yaml")
    cfg = load_config(_config(tmp_path, sir_data), overrides=["optim.lr=3e-4", "train.batch_size=4"])
    assert cfg.optim.lr == 3e-4 and cfg.train.batch_size == 4


def test_vae_stage_trains_decoder_only_and_exports_a_loadable_vae(tmp_path, sir_data):
    from diffusers import AutoencoderKL

    cfg = load_config(_config(tmp_path, sir_data, **{"train.stage": "vae", "train.max_steps": 4,
                                                     "checkpoint.every": 2, "data.val_samples": 2}))
    trainer = Trainer(cfg)
    enc0 = {k: v.clone() for k, v in trainer.vae.encoder.state_dict().items()}
    dec0 = {k: v.clone() for k, v in trainer.vae.decoder.state_dict().items()}
    unet0 = {k: v.clone() for k, v in trainer.unet.state_dict().items()}
    before = trainer.validate()
    result = trainer.train(show_progress=False)
    assert set(result.last_losses) == {"flow", "warp", "total"}
    assert all(torch.equal(enc0[k], v) for k, v in trainer.vae.encoder.state_dict().items())
    assert all(torch.equal(unet0[k], v) for k, v in trainer.unet.state_dict().items())
    assert any(not torch.equal(dec0[k], v) for k, v in trainer.vae.decoder.state_dict().items())
    assert result.pipeline_dir == tmp_path / "run" / "vae"
    vae = AutoencoderKL.from_pretrained(result.pipeline_dir)
    assert vae.config.latent_channels == 4
    assert set(before) == {"val/codec_epe", "val/codec_warp_psnr", "val/exact_flow_warp_psnr"}
    # A UNet run picks the fine-tuned VAE up through model.vae; a stage mismatch on resume is refused.
    cfg2 = load_config(_config(tmp_path / "u", sir_data, **{"model.vae": str(result.pipeline_dir),
                                                            "checkpoint.output_dir": str(tmp_path / "run")}))
    unet_trainer = Trainer(cfg2)
    dec = unet_trainer.vae.decoder.state_dict()
    assert all(torch.allclose(dec[k], v) for k, v in vae.decoder.state_dict().items())
    with pytest.raises(ValueError, match="'vae' stage run"):
        unet_trainer.load_checkpoint(latest_checkpoint(tmp_path / "run"))


def test_two_stage_tiny_training_beats_identity_on_its_training_samples(tmp_path):
    """The whole stack learns: flow codec (VAE stage), then the one-step UNet."""
    from stablemotion.core.metrics import psnr_torch
    from stablemotion.data.synth import write_rectangling_dataset
    from stablemotion.model.pipeline import StableMotionPipeline

    write_rectangling_dataset(tmp_path / "d", 4, size=(32, 32), split="training", seed=3, ext="png", max_inset=0.2)
    data = tmp_path / "d" / "training"
    common = {"data.val": None, "data.val_samples": 4, "optim.lr": 2e-3, "train.batch_size": 4,
              "train.ema_decay": 0.95, "checkpoint.every": 10_000, "loss.weights": {"vgg": 0.0}}
    vae_cfg = _config(tmp_path / "vae", data, **common, **{
        "train.stage": "vae", "train.max_steps": 150, "checkpoint.output_dir": str(tmp_path / "vae/run")})
    vae_result = Trainer(load_config(vae_cfg)).train(show_progress=False)
    vae_dir = vae_result.pipeline_dir
    assert _mean(vae_result.history[-20:], "flow") < _mean(vae_result.history[:20], "flow")
    unet_cfg = _config(tmp_path / "unet", data, **common, **{
        "train.max_steps": 200, "model.vae": str(vae_dir), "loss.timesteps": [999, 999],
        "checkpoint.output_dir": str(tmp_path / "unet/run")})
    trainer = Trainer(load_config(unet_cfg))
    result = trainer.train(show_progress=False)
    for term in ("v", "warp"):
        assert _mean(result.history[-20:], term) < _mean(result.history[:20], term), term

    pipe = StableMotionPipeline.from_pretrained(result.pipeline_dir)
    ds = trainer.train_ds
    images = torch.stack([(ds[i]["image"] + 1) / 2 for i in range(len(ds))])
    masks = torch.stack([(ds[i]["mask"] + 1) / 2 for i in range(len(ds))])
    gts = torch.stack([ds[i]["gt"] for i in range(len(ds))])
    out = pipe(images, mask=masks, generator=torch.Generator().manual_seed(0), show_progress_bar=False)
    pred = out.image * 2 - 1
    model_psnr = psnr_torch(pred, gts).mean().item()
    identity_psnr = psnr_torch(images * 2 - 1, gts).mean().item()
    assert model_psnr > identity_psnr + 1.0, (model_psnr, identity_psnr)


def _mean(rows: list[dict[str, float]], key: str) -> float:
    return float(np.mean([r[key] for r in rows]))


def test_mixed_precision_accumulation_checkpointing_and_tensorboard(tmp_path, sir_data):
    cfg = load_config(_config(tmp_path, sir_data, **{
        "train.mixed_precision": "bf16", "train.grad_accum": 2, "train.gradient_checkpointing": True,
        "train.max_steps": 2, "logging.tensorboard": True, "validation.every": 2, "optim.lr_schedule": "cosine",
        "optim.warmup_steps": 1}))
    trainer = Trainer(cfg)
    result = trainer.train(show_progress=False)
    assert result.step == 2 and len(result.history) == 2
    assert all(np.isfinite(v) for v in result.last_losses.values())
    assert list((tmp_path / "run" / "logs").rglob("events.out.tfevents*"))
    assert (tmp_path / "run" / "validation" / "step-0000002.png").is_file()


@pytest.mark.parametrize("name", sorted(p.name for p in (Path(__file__).resolve().parents[1] / "configs").glob("*.yaml")))
def test_shipped_configs_are_valid(name):
    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / name, check_paths=False)
    if name in ("sir.yaml", "rsc.yaml"):  # the released recipes (docs/method.md, "Training")
        assert cfg.model.base == "stabilityai/stable-diffusion-2" and cfg.optim.lr == 1e-5
        assert cfg.optim.weight_decay == 1e-2 and cfg.optim.grad_clip == 1.0 and cfg.train.ema
        assert cfg.loss.pyramid_noise and cfg.loss.timesteps == [0, 999]
        assert cfg.resolution == cfg.task_spec.resolution


def test_vae_stage_can_train_the_encoder_with_image_reconstruction(tmp_path, sir_data):
    cfg = load_config(_config(tmp_path, sir_data, **{"train.stage": "vae", "train.vae_train_encoder": True,
                                                     "train.max_steps": 2, "train.ema": False}))
    trainer = Trainer(cfg)
    enc0 = {k: v.clone() for k, v in trainer.vae.encoder.state_dict().items()}
    result = trainer.train(show_progress=False)
    assert set(result.last_losses) == {"flow", "image", "warp", "total"}
    assert any(not torch.equal(enc0[k], v) for k, v in trainer.vae.encoder.state_dict().items())
    with pytest.raises(ConfigError, match="vae_train_encoder applies to train.stage 'vae' only"):
        load_config(_config(tmp_path, sir_data), overrides=["train.vae_train_encoder=true"])


def test_mini_configs_share_one_architecture_and_vae():
    root = Path(__file__).resolve().parents[1] / "configs"
    cfgs = {n: load_config(root / f"mini_{n}.yaml", check_paths=False)
            for n in ("vae", "sir", "rsc", "sir_regression", "rsc_regression")}
    arch_keys = ("unet_channels", "unet_layers", "unet_attention", "vae_channels", "vae_layers", "vae_attention")
    archs = {n: {k: c.model.tiny.get(k) for k in arch_keys} for n, c in cfgs.items()}
    assert all(a == archs["vae"] for a in archs.values())
    assert cfgs["sir"].model.vae == cfgs["rsc"].model.vae == cfgs["vae"].checkpoint.output_dir + "/vae"
    for task in ("sir", "rsc"):  # the ablation gets the same data, batch and step budget
        a, b = cfgs[task], cfgs[f"{task}_regression"]
        assert b.train.stage == "regression" and a.data == b.data
        assert (a.train.batch_size, a.train.max_steps) == (b.train.batch_size, b.train.max_steps)


def test_regression_stage_trains_the_regressor_and_exports_it(tmp_path, sir_data):
    from stablemotion.model import FlowRegressor

    cfg = load_config(_config(tmp_path, sir_data, **{"train.stage": "regression", "train.max_steps": 3,
                                                     "validation.every": 3}))
    trainer = Trainer(cfg)
    unet0 = _unet_state(trainer)
    batch = next(iter(trainer._loader(0)))
    losses = trainer.compute_losses(batch, 0)
    assert set(losses) == {"warp", "mask", "vgg", "total"} and all(torch.isfinite(v) for v in losses.values())
    result = trainer.train(show_progress=False)
    assert result.pipeline_dir == tmp_path / "run" / "regressor"
    net = FlowRegressor.from_pretrained(result.pipeline_dir)
    assert net.config.in_channels == 4  # mask (1) + image (3)
    flow = net(torch.zeros(1, 4, H, W))
    assert flow.shape == (1, 2, H, W) and torch.isfinite(flow).all()
    assert all(torch.equal(v, unet0[k]) for k, v in _unet_state(trainer).items())  # the motion UNet is untouched
    assert set(trainer.validate()) == {"val/psnr", "val/ssim", "val/psnr_identity", "val/ssim_identity"}
    with pytest.raises(ConfigError, match="builds its network from model.tiny"):
        load_config(_config(tmp_path, sir_data, **{"train.stage": "regression"}),
                    overrides=["model.base=stabilityai/stable-diffusion-2"], check_paths=False)


def test_one_step_fraction_puts_that_share_of_samples_at_the_last_timestep(tmp_path, sir_data, monkeypatch):
    cfg = load_config(_config(tmp_path, sir_data, **{"loss.one_step_fraction": 0.5, "train.batch_size": 4}))
    trainer = Trainer(cfg)
    seen = []
    real = trainer.unet.forward

    def spy(x, t, *a, **k):
        seen.extend(int(v) for v in t)
        return real(x, t, *a, **k)

    monkeypatch.setattr(trainer.unet, "forward", spy)
    for step, batch in enumerate(trainer._loader(0)):  # max_steps = 6 batches of 4
        trainer.compute_losses(batch, step)
    frac = np.mean([t == 999 for t in seen])
    assert len(seen) == 24 and 0.25 < frac < 0.8  # ~0.5 (deterministic draws)
    with pytest.raises(ConfigError, match="one_step_fraction"):
        load_config(_config(tmp_path, sir_data), overrides=["loss.one_step_fraction=1.5"])


def test_codec_loss_weights_scale_the_vae_stage_terms(tmp_path, sir_data):
    cfg = load_config(_config(tmp_path, sir_data, **{"train.stage": "vae", "train.vae_train_encoder": True,
                                                     "loss.weights": {"flow": 100.0, "image": 0.5, "vgg": 0.0}}))
    trainer = Trainer(cfg)
    losses = trainer.compute_losses(next(iter(trainer._loader(0))), 0)
    expected = 100.0 * losses["flow"] + 0.5 * losses["image"] + trainer.weights.warp * losses["warp"]
    assert torch.allclose(losses["total"], expected)


def test_flow_smooth_weight_adds_the_codec_smoothness_term_and_trains_the_decoder_only(tmp_path, sir_data):
    from stablemotion.core.flow import encode_flow
    from stablemotion.training.losses import flow_smoothness_loss

    cfg = load_config(_config(tmp_path, sir_data, **{
        "train.stage": "vae", "train.max_steps": 2, "train.ema": False,
        "loss.weights": {"flow": 0.0, "warp": 0.0, "vgg": 0.0, "flow_smooth": 2.0}}))
    trainer = Trainer(cfg)
    batch = next(iter(trainer._loader(0)))
    losses = trainer.compute_losses(batch, 0)
    assert set(losses) == {"flow", "flow_smooth", "total"}
    # The term is the Laplacian L1 (pixels) of the round trip against the gt, weighted into the total.
    gamma = trainer.task.flow_gamma
    with torch.no_grad():
        rec = trainer.model(encode_flow(batch["flow"], gamma))[:, :2].float() * gamma
    assert torch.allclose(losses["flow_smooth"], flow_smoothness_loss(rec, batch["flow"].float()), rtol=1e-4, atol=1e-6)
    assert torch.allclose(losses["total"], 2.0 * losses["flow_smooth"])
    assert losses["flow_smooth"] > 0
    # Its gradient alone reaches the decoder (the only other terms are weighted 0); the encoder stays frozen.
    losses["total"].backward()
    dec_grads = [p.grad for p in trainer.vae.decoder.parameters() if p.grad is not None]
    assert dec_grads and sum(float(g.abs().sum()) for g in dec_grads) > 0
    assert all(p.grad is None for p in trainer.vae.encoder.parameters())
    trainer.optimizer.zero_grad(set_to_none=True)
    enc0 = {k: v.clone() for k, v in trainer.vae.encoder.state_dict().items()}
    result = trainer.train(show_progress=False)
    assert "flow_smooth" in result.last_losses
    assert all(torch.equal(enc0[k], v) for k, v in trainer.vae.encoder.state_dict().items())
    # Off by default: no term, no compute.
    plain = Trainer(load_config(_config(tmp_path / "p", sir_data, **{"train.stage": "vae", "train.ema": False})))
    assert "flow_smooth" not in plain.compute_losses(batch, 0)


def test_flow_smooth_weight_is_validated(tmp_path, sir_data):
    with pytest.raises(ConfigError, match=r"loss.weights.flow_smooth must be a finite number >= 0, got -1.0"):
        load_config(_config(tmp_path, sir_data, **{"train.stage": "vae"}),
                    overrides=["loss.weights={flow_smooth: -1}"], check_paths=False)
    with pytest.raises(ConfigError, match=r"loss.weights.flow_smooth applies to train.stage 'vae' only"):
        load_config(_config(tmp_path, sir_data), overrides=["loss.weights={flow_smooth: 1.0}"], check_paths=False)
    with pytest.raises(ConfigError, match=r"unknown loss terms \['flow_smoth'\]"):
        load_config(_config(tmp_path, sir_data, **{"train.stage": "vae"}),
                    overrides=["loss.weights={flow_smoth: 1.0}"], check_paths=False)


def test_mini_vae_smooth_config_fine_tunes_the_bundled_decoder_only():
    root = Path(__file__).resolve().parents[1]
    cfg = load_config(root / "configs" / "mini_vae_smooth.yaml", check_paths=False)
    assert cfg.train.stage == "vae" and not cfg.train.vae_train_encoder
    assert cfg.loss.weights["flow_smooth"] > 0
    # It starts from stage 3's pipeline (whose VAE is stage 1's), and stage 5 re-fits stage 4's UNet to it.
    stage3 = load_config(root / "configs" / "mini_sir_finetune.yaml", check_paths=False)
    assert cfg.model.init == stage3.checkpoint.output_dir + "/pipeline"
    stage4 = load_config(root / "configs" / "mini_sir_pano.yaml", check_paths=False)
    stage5 = load_config(root / "configs" / "mini_sir_smooth.yaml", check_paths=False)
    assert stage5.model.init == stage4.checkpoint.output_dir + "/pipeline"
    assert stage5.model.vae == cfg.checkpoint.output_dir + "/vae" and stage5.data == stage4.data
    assert cfg.resolution == tuple(load_config(root / "configs" / "mini_vae.yaml", check_paths=False).resolution)


# --------------------------------------------------------------------------- issue 15: bad input, damaged checkpoints
def test_unparsable_override_is_a_one_line_error_naming_it(tmp_path, sir_data, capsys):
    from stablemotion.cli import main

    cfg = _config(tmp_path, sir_data)
    with pytest.raises(ConfigError, match=r"override 'optim.lr=\[1,'.*not valid YAML.*optim.lr expects float"):
        load_config(cfg, overrides=["optim.lr=[1,"])
    capsys.readouterr()
    assert main(["train", str(cfg), "-o", "optim.lr=[1,", "--check"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: override 'optim.lr=[1,'") and err.count("\n") == 1 and "Traceback" not in err
    # An empty section in the file ("optim:") still takes overrides.
    cfg.write_text(cfg.read_text().replace("optim:\n  lr: 0.001\n", "optim:\n"))
    assert "optim:\n" in cfg.read_text()
    assert load_config(cfg, overrides=["optim.lr=2e-3"]).optim.lr == 2e-3


@pytest.mark.parametrize("override, message", [
    ("optim.lr=nan", r"optim.lr must be a finite number > 0, got nan"),
    ("optim.lr=.inf", r"optim.lr must be a finite number > 0, got inf"),
    ("optim.lr=0", r"optim.lr must be a finite number > 0, got 0.0"),
    ("optim.lr=-1e-4", r"optim.lr must be a finite number > 0, got -0.0001"),
    ("optim.betas=[0.9, 1.5]", r"optim.betas\[1\] must be a finite number in \[0, 1\), got 1.5"),
    ("optim.betas=[0.9]", r"optim.betas must be two numbers"),
    ("optim.eps=0", r"optim.eps must be a finite number > 0"),
    ("optim.weight_decay=-1", r"optim.weight_decay must be a finite number >= 0"),
    ("train.batch_size=0", r"train.batch_size must be an integer >= 1, got 0"),
    ("train.max_steps=-5", r"train.max_steps must be an integer >= 1, got -5"),
    ("train.ema_decay=1.01", r"train.ema_decay must be a finite number in \[0, 1\], got 1.01"),
    ("train.ema_decay=nan", r"train.ema_decay must be a finite number in \[0, 1\], got nan"),
    ("loss.weights={warp: nan}", r"loss.weights.warp must be a finite number >= 0, got nan"),
    ("loss.weights={vgg: -1}", r"loss.weights.vgg must be a finite number >= 0, got -1.0"),
    ("data.hflip=2", r"data.hflip must be a finite number in \[0, 1\] \(a probability\), got 2.0"),
    ("checkpoint.every=0", r"checkpoint.every must be an integer >= 1, got 0"),
    ("data.resolution=[32, 32, 3]", r"data.resolution must be \[height, width\]"),
])
def test_config_values_are_range_checked_on_load(tmp_path, sir_data, override, message):
    with pytest.raises(ConfigError, match=r"cfg.yaml: " + message):
        load_config(_config(tmp_path, sir_data), overrides=[override], check_paths=False)


def test_train_check_refuses_bad_values_in_one_line(tmp_path, sir_data, capsys):
    from stablemotion.cli import main

    cfg = _config(tmp_path, sir_data)
    assert main(["train", str(cfg), "-o", "optim.lr=nan", "--check"]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {cfg}: optim.lr must be a finite number > 0, got nan\n"
    assert main(["train", str(cfg), "--check"]) == 0
    assert "config OK" in capsys.readouterr().out


def test_trainer_validates_configs_built_in_code(tmp_path, sir_data):
    cfg = load_config(_config(tmp_path, sir_data))
    cfg.train.ema_decay = 2.0
    with pytest.raises(ConfigError, match=r"train.ema_decay must be a finite number in \[0, 1\], got 2.0"):
        Trainer(cfg)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> tuple[Path, Path]:
    """A 6-step tiny run with checkpoints 3 and 6 and the exported pipeline, written under umask 022.

    Returns ``(config path, run folder)``; tests that damage checkpoints work on a copy."""
    import cv2
    from skimage import data as skdata

    root = tmp_path_factory.mktemp("finished")
    photo = cv2.resize(skdata.astronaut(), (128, 96), interpolation=cv2.INTER_AREA)
    cfg = _config(root, _make_sir_folder(root / "data", photo))
    old = os.umask(0o022)
    try:
        Trainer(load_config(cfg)).train(show_progress=False)
    finally:
        os.umask(old)
    return cfg, root / "run"


def test_checkpoint_and_export_files_get_the_umask_mode(finished_run):
    _, run = finished_run
    files = [p for d in (run / "checkpoint-6", run / "pipeline") for p in d.rglob("*") if p.is_file()]
    assert any(p.suffix == ".safetensors" for p in files) and any(p.name == "optimizer.bin" for p in files)
    modes = {str(p.relative_to(run)): oct(p.stat().st_mode & 0o777) for p in files}
    assert set(modes.values()) == {"0o644"}, modes  # safetensors alone would leave 0o600


def _copy_run(finished_run, tmp_path) -> tuple[Trainer, Path]:
    cfg, run = finished_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    return Trainer(load_config(cfg, overrides=[f"checkpoint.output_dir={copy}"])), copy


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.mark.parametrize("damage, reason", [
    ("truncated_weights", r"model.safetensors is truncated \(\d+ of \d+ bytes\)"),
    ("missing_ema", r"EMA state missing \(ema_unet.safetensors\) but this run uses EMA"),
    ("corrupt_optimizer", r"cannot be read \(.*\)"),
])
def test_resume_falls_back_past_an_unreadable_newest_checkpoint(finished_run, tmp_path, capsys, damage, reason):
    from safetensors.torch import load_file

    trainer, run = _copy_run(finished_run, tmp_path)
    newest = run / "checkpoint-6"
    if damage == "truncated_weights":
        _truncate(newest / "model.safetensors")
    elif damage == "missing_ema":
        (newest / "ema_unet.safetensors").unlink()
    else:
        (newest / "optimizer.bin").write_bytes(b"\x00not a torch file" * 64)
    assert (newest / "COMPLETE").is_file()  # marked complete, but damaged afterwards
    capsys.readouterr()
    assert trainer.resume(True) == run / "checkpoint-3" and trainer.step == 3
    out = capsys.readouterr().out
    assert re.search(r"warning: skipping checkpoint .*checkpoint-6: " + reason, out), out
    # Nothing of the damaged checkpoint stays loaded: the model is checkpoint-3's.
    saved = load_file(run / "checkpoint-3" / "model.safetensors")
    state = trainer.acc.unwrap_model(trainer.model).state_dict()
    assert saved and all(torch.equal(state[k], v) for k, v in saved.items())


class _RunsCode:
    """A pickle payload that calls a function when loaded (the classic checkpoint attack)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pwned"))


@pytest.mark.parametrize("target", ["ema_unet.pt", "optimizer.bin", "random_states_0.pkl"])
def test_resume_never_runs_code_from_a_checkpoint(finished_run, tmp_path, capsys, target):
    """A pickle planted in the newest checkpoint neither runs nor is skipped over silently:
    the run stops with one line naming the file (issue 26, item 1)."""
    from stablemotion.cli import main
    from stablemotion.training.checkpoint_files import UnsafeCheckpointError

    trainer, run = _copy_run(finished_run, tmp_path)
    newest = run / "checkpoint-6"
    marker = tmp_path / "marker"
    if target == "ema_unet.pt":  # a legacy-named EMA file beside (or instead of) the safetensors one
        (newest / "ema_unet.safetensors").unlink()
    torch.save({"state": _RunsCode(marker)}, newest / target)
    with pytest.raises(UnsafeCheckpointError, match=rf"refusing to load .*checkpoint-6/{target}: it holds pickled"):
        trainer.resume(True)
    assert not marker.exists()
    cfg, _ = finished_run
    capsys.readouterr()
    assert main(["train", str(cfg), "-o", f"checkpoint.output_dir={run}", "--resume"]) != 0
    err = capsys.readouterr().err
    assert not marker.exists()
    assert f"{target}" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_legacy_pickled_ema_state_still_resumes(finished_run, tmp_path):
    """Checkpoints written before the safetensors EMA file (plain tensors in ``ema_unet.pt``) still load."""
    from stablemotion.training.checkpoint_files import load_ema_state

    trainer, run = _copy_run(finished_run, tmp_path)
    newest = run / "checkpoint-6"
    state = load_ema_state(newest)
    torch.save(state, newest / "ema_unet.pt")
    (newest / "ema_unet.safetensors").unlink()
    assert trainer.resume(True) == newest and trainer.step == 6
    assert all(torch.equal(a, b) for a, b in zip(trainer.ema.shadow_params, state["shadow_params"], strict=True))


def test_resume_with_no_readable_checkpoint_or_a_missing_path_says_so(finished_run, tmp_path, capsys):
    from stablemotion.cli import main
    from stablemotion.training import CheckpointError

    trainer, run = _copy_run(finished_run, tmp_path)
    for ckpt in ("checkpoint-3", "checkpoint-6"):
        _truncate(run / ckpt / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"no readable checkpoint in .*run \(checkpoint-6: model.safetensors is "
                                              r"truncated.*; checkpoint-3: model.safetensors is truncated"):
        trainer.resume(True)
    # A named checkpoint is not replaced by another: its problem is the error.
    with pytest.raises(CheckpointError, match=r"cannot resume from .*checkpoint-6: model.safetensors is truncated"):
        trainer.resume(run / "checkpoint-6")
    with pytest.raises(FileNotFoundError, match=r"checkpoint folder not found: .*nowhere"):
        trainer.resume(tmp_path / "nowhere")
    cfg, _ = finished_run
    capsys.readouterr()
    assert main(["train", str(cfg), "--resume", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert err == f"error: --resume: checkpoint folder not found: {tmp_path / 'nowhere'}\n"


def test_pruning_keeps_good_checkpoints_when_a_newer_one_was_skipped(finished_run, tmp_path):
    trainer, run = _copy_run(finished_run, tmp_path)
    broken = run / "checkpoint-9"
    shutil.copytree(run / "checkpoint-6", broken)
    _truncate(broken / "model.safetensors")
    trainer.resume(True)  # falls back to checkpoint-6
    assert trainer.step == 6
    trainer.save_checkpoint()  # keep=2: the broken checkpoint-9 must not push out checkpoint-3
    assert [s for s, _ in find_checkpoints(run)] == [9, 6, 3]


def test_model_init_fine_tunes_an_existing_pipeline(tmp_path) -> None:
    """model.init starts from a pipeline folder's weights and settings (the SIR stage-3 fine-tune)."""
    from stablemotion.data.synth import write_rectangling_dataset
    from stablemotion.model.tiny import tiny_pipeline
    from stablemotion.training import Trainer
    from stablemotion.training.config import ConfigError, load_config

    start = tiny_pipeline("sir", seed=3, default_flow_regularization="mesh")
    start.save_pretrained(tmp_path / "start")
    write_rectangling_dataset(tmp_path / "d", 4, size=(32, 32), ext="png", style="stitched", rows=4, cols=4)
    cfg_text = f"""
task: sir
data: {{format: dird, train: {tmp_path / 'd' / 'training'}, resolution: [32, 32], num_workers: 0}}
model: {{base: tiny, init: {tmp_path / 'start'}}}
loss: {{vgg_weights: null, weights: {{vgg: 0.0}}}}
train: {{batch_size: 2, max_steps: 1, device: cpu}}
checkpoint: {{output_dir: {tmp_path / 'run'}, every: 1}}
logging: {{every: 1, tensorboard: false}}
"""
    (tmp_path / "c.yaml").write_text(cfg_text)
    trainer = Trainer(load_config(tmp_path / "c.yaml"))
    assert trainer.pipe.config.default_flow_regularization == "mesh"
    s0 = {k: v.clone() for k, v in trainer.pipe.unet.state_dict().items()}
    assert all(torch.equal(s0[k], v) for k, v in start.unet.state_dict().items())  # its weights, not new ones
    (tmp_path / "bad.yaml").write_text(cfg_text.replace(str(tmp_path / "start"), str(tmp_path / "nowhere")))
    with pytest.raises(ConfigError, match="model.init"):
        load_config(tmp_path / "bad.yaml")


def test_paper_resolution_configs_keep_the_minis_latent_size():
    """configs/hr_*.yaml: SIR 192x256 and RSC 256x256 on a factor-4 VAE, so the motion UNet
    sees the latent sizes the 96x128 minis' UNet sees (48x64) or the square equivalent."""
    root = Path(__file__).resolve().parents[1] / "configs"
    mini = load_config(root / "mini_sir.yaml", check_paths=False)
    for name, res in (("hr_vae", (192, 256)), ("hr_sir", (192, 256)), ("hr_rsc", (256, 256))):
        cfg = load_config(root / f"{name}.yaml", check_paths=False)
        assert tuple(cfg.resolution) == res
        factor = 2 ** (len(cfg.model.tiny["vae_channels"]) - 1)
        assert factor == 4
        assert res[0] // factor * res[1] // factor <= 64 * 64
        assert cfg.model.tiny["unet_channels"] == mini.model.tiny["unet_channels"] or name == "hr_vae"
    assert (192 // 4, 256 // 4) == (mini.resolution[0] // 2, mini.resolution[1] // 2)


def test_a_batch_that_cannot_fit_is_refused_before_training(tmp_path, sir_data, capsys):
    """``train --check`` and the trainer refuse a batch whose samples alone exceed memory (issue 26, item 11)."""
    from stablemotion.cli import main
    from stablemotion.training import TrainingResourceError, batch_bytes, check_batch_fits

    cfg_path = _config(tmp_path, sir_data)
    huge = ["-o", "train.batch_size=100000000"]
    assert main(["train", str(cfg_path), *huge, "--check"]) == 2
    err = capsys.readouterr().err
    assert re.fullmatch(r"error: train.batch_size=100000000 needs at least .* GB .*lower train.batch_size.*\n", err), err
    assert main(["train", str(cfg_path), *huge]) == 2
    assert not (tmp_path / "run").exists() or not find_checkpoints(tmp_path / "run")
    cfg = load_config(cfg_path)
    check_batch_fits(cfg, available=batch_bytes(cfg))  # exactly fits: passes
    with pytest.raises(TrainingResourceError, match="train.batch_size=2 needs"):
        check_batch_fits(cfg, available=batch_bytes(cfg) - 1)


def test_out_of_memory_in_a_step_names_what_to_lower(tmp_path, sir_data, monkeypatch, capsys):
    from stablemotion.cli import main

    def oom(self, batch, micro):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(Trainer, "compute_losses", oom)
    assert main(["train", str(_config(tmp_path, sir_data))]) == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert "out of memory at step 1 (train.batch_size=2 of 32x32" in err and "lower train.batch_size" in err, err


def test_disk_full_while_checkpointing_keeps_the_previous_checkpoint(finished_run, tmp_path, monkeypatch):
    import errno

    from stablemotion.training import TrainingResourceError

    trainer, run = _copy_run(finished_run, tmp_path)
    trainer.resume(True)
    before = {p.name: p.read_bytes() for p in (run / "checkpoint-6").iterdir()}

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(trainer.acc, "save_state", full)
    trainer.step = 7
    with pytest.raises(TrainingResourceError, match=r"no space left .* while writing checkpoint-7 \(the previous "
                                                    r"checkpoint checkpoint-6 is intact\): free space"):
        trainer.save_checkpoint()
    assert [s for s, _ in find_checkpoints(run)] == [6, 3]
    assert not list(run.glob(".checkpoint-*"))  # the partial folder is gone
    assert {p.name: p.read_bytes() for p in (run / "checkpoint-6").iterdir()} == before
