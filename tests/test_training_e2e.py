"""End-to-end one-step training (``loss.objective: e2e``): what trains, what it matches, how it is configured."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from stablemotion.training import Trainer, latest_checkpoint
from stablemotion.training.config import ConfigError, load_config
from stablemotion.training.stages import condition_latents
from test_training import _config, _make_sir_folder, _unet_state

E2E = {"loss.objective": "e2e", "loss.weights": {"epe": 1.0, "photo": 1.0, "vgg": 0.0}}


@pytest.fixture
def sir_data(tmp_path, photo) -> Path:
    return _make_sir_folder(tmp_path / "data", photo)


def _e2e_config(tmp_path: Path, data: Path, **overrides) -> Path:
    return _config(tmp_path, data, **{**E2E, **overrides})


@pytest.mark.parametrize("final_step", ["x0", "prev_sample"])
def test_e2e_gradients_reach_the_unet_not_the_vae_and_the_loss_falls(tmp_path, sir_data, final_step):
    cfg = load_config(_e2e_config(tmp_path, sir_data, **{"train.max_steps": 12, "checkpoint.every": 12,
                                                         "model.tiny": {"default_final_step": final_step}}))
    trainer = Trainer(cfg)
    losses = trainer.compute_losses(next(iter(trainer._loader(0))), 0)
    assert set(losses) == {"epe", "photo", "warp", "mask", "total"}  # sir's own warp/mask terms stay on
    assert "v" not in losses and float(losses["epe"].detach()) > 0
    losses["total"].backward()
    grads = [p.grad for p in trainer.unet.parameters() if p.grad is not None]
    assert grads and sum(float(g.abs().sum()) for g in grads) > 0
    assert all(p.grad is None and not p.requires_grad for p in trainer.vae.parameters())  # frozen decoder
    trainer.optimizer.zero_grad(set_to_none=True)
    vae_before = {k: v.clone() for k, v in trainer.vae.state_dict().items()}
    history = trainer.train(show_progress=False).history
    first, last = sum(h["total"] for h in history[:3]) / 3, sum(h["total"] for h in history[-3:]) / 3
    assert last < 0.9 * first, [round(h["total"], 3) for h in history]
    assert all(torch.equal(vae_before[k], v) for k, v in trainer.vae.state_dict().items())


@pytest.mark.parametrize("noise", ["gaussian", "zeros"])
def test_the_trained_flow_is_what_one_step_inference_gives(tmp_path, sir_data, noise):
    """Train and test agree: the e2e graph's flow equals the pipeline's one-step flow on the same latent."""
    from stablemotion.training.e2e import initial_latents, one_step_flow

    cfg = load_config(_e2e_config(tmp_path, sir_data, **{"loss.e2e_noise": noise,
                                                         "model.tiny": {"default_final_step": "prev_sample"}}))
    trainer = Trainer(cfg)
    batch = {k: v for k, v in next(iter(trainer._loader(0))).items() if isinstance(v, torch.Tensor)}
    with torch.no_grad():
        cond = condition_latents(trainer.vae, batch, trainer.conditions)
        flow = one_step_flow(trainer, cond, trainer.task, torch.Generator().manual_seed(3))
    latents = initial_latents((cond.shape[0], 4, *cond.shape[-2:]), noise, torch.Generator().manual_seed(3))
    trainer.pipe.unet.eval()
    out = trainer.pipe((batch["image"] + 1) / 2, mask=(batch["mask"] + 1) / 2, latents=latents,
                       show_progress_bar=False, output_type="pt")
    assert torch.allclose(out.flow, flow, atol=1e-3), float((out.flow - flow).abs().max())


def test_e2e_resumes_like_the_uninterrupted_run(tmp_path, sir_data):
    full = Trainer(load_config(_e2e_config(tmp_path / "a", sir_data, **{"checkpoint.output_dir": str(tmp_path / "a/run")})))
    full.train(show_progress=False)
    reference = _unet_state(full)
    cfg_b = _e2e_config(tmp_path / "b", sir_data, **{"checkpoint.output_dir": str(tmp_path / "b/run")})
    Trainer(load_config(cfg_b)).train(max_steps=3, show_progress=False)
    assert latest_checkpoint(tmp_path / "b/run").name == "checkpoint-3"
    second = Trainer(load_config(cfg_b))
    assert second.train(resume=True, show_progress=False).step == 6
    resumed = _unet_state(second)
    for k in reference:
        assert torch.allclose(reference[k], resumed[k], atol=1e-6), k


def test_zero_noise_validation_feeds_zero_latents(tmp_path, sir_data):
    cfg = load_config(_e2e_config(tmp_path, sir_data, **{"loss.e2e_noise": "zeros", "train.max_steps": 2}))
    trainer = Trainer(cfg)
    seen = []
    real = type(trainer.pipe).prepare_latents

    def spy(self, total, size, generator=None, latents=None):
        seen.append(latents)
        return real(self, total, size, generator, latents)

    type(trainer.pipe).prepare_latents = spy
    try:
        assert "val/psnr" in trainer.validate()
    finally:
        type(trainer.pipe).prepare_latents = real
    assert seen and all(z is not None and not z.any() for z in seen)


@pytest.mark.parametrize(("overrides", "message"), [
    (["loss.objective=e2ee"], "loss.objective must be one of 'diffusion', 'e2e', got 'e2ee'"),
    (["loss.e2e_noise=normal"], "loss.e2e_noise must be one of 'gaussian', 'zeros', got 'normal'"),
    (["loss.weights.epe=0", "loss.weights.photo=0", "loss.weights.warp=0", "loss.weights.mask=0"],
     "loss.objective 'e2e' needs a flow or image loss"),
    (["loss.objective=diffusion"], "loss.weights.epe and loss.weights.photo apply to loss.objective 'e2e' only"),
    (["train.stage=vae"], "loss.objective 'e2e' trains the UNet (train.stage 'unet')"),
])
def test_e2e_config_problems_are_one_line(tmp_path, sir_data, overrides, message):
    with pytest.raises(ConfigError) as err:
        load_config(_e2e_config(tmp_path, sir_data), overrides=overrides)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert str(err.value).startswith(str(tmp_path / "cfg.yaml"))
