"""The tiny UNet's global-context option (``model.tiny.global_context``): builds, trains, saves, loads."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import UNet2DConditionModel

from stablemotion.model.components import GlobalContextUNet
from stablemotion.model.loading import load_pipeline
from stablemotion.model.pipeline import StableMotionPipeline
from stablemotion.model.tiny import tiny_components, tiny_pipeline

ARCH = {"unet_channels": [32, 64], "unet_attention": [False, False], "vae_channels": [16, 32], "vae_attention": False}


def _run(pipe: StableMotionPipeline, image: np.ndarray) -> torch.Tensor:
    return pipe(image, latents=torch.zeros(1, 4, 16, 16), show_progress_bar=False).flow


@pytest.mark.parametrize("on", [False, True])
def test_global_context_on_and_off_build_save_and_load(tmp_path, on):
    pipe = tiny_pipeline("rsc", global_context=on, **ARCH)
    assert isinstance(pipe.unet, GlobalContextUNet) is on
    with torch.no_grad():  # the path's last layer starts at zero: give it weights so the round trip is tested
        for p in pipe.unet.parameters():
            p.add_(torch.randn_like(p) * 0.01, alpha=1)
    image = np.random.default_rng(0).random((32, 32, 3), dtype=np.float32)
    before = _run(pipe, image)
    pipe.save_pretrained(tmp_path / "pipe")
    index = json.loads((tmp_path / "pipe" / "model_index.json").read_text())
    assert index["unet"] == (["stablemotion.model.components", "GlobalContextUNet"] if on
                             else ["diffusers", "UNet2DConditionModel"])
    assert list((tmp_path / "pipe" / "unet").glob("*.safetensors")) and not list((tmp_path / "pipe" / "unet").glob("*.bin"))
    for loaded in (StableMotionPipeline.from_pretrained(tmp_path / "pipe"), load_pipeline(tmp_path / "pipe", progress=False)):
        assert type(loaded.unet) is type(pipe.unet)
        assert torch.allclose(_run(loaded, image), before, atol=1e-3)


def test_the_path_sees_the_whole_frame_and_starts_as_the_plain_unet():
    plain = tiny_components("rsc", **ARCH)
    ctx = tiny_components("rsc", global_context=True, **ARCH)
    # Same seed, same draws: the plain weights (and the VAE built after the UNet) are unchanged.
    ctx_state = ctx["unet"].state_dict()
    for k, v in plain["unet"].state_dict().items():
        assert torch.equal(v, ctx_state[k]), k
    assert all(torch.equal(v, ctx["vae"].state_dict()[k]) for k, v in plain["vae"].state_dict().items())
    x, emb = torch.randn(2, 8, 16, 16), plain["text_embedding"](2)
    with torch.no_grad():
        assert torch.allclose(plain["unet"](x, 999, encoder_hidden_states=emb).sample,
                              ctx["unet"](x, 999, encoder_hidden_states=emb).sample, atol=1e-6)
    # Trained, a change far away in the frame reaches every output pixel through the pooled path
    # (the plain UNet without attention sees only its receptive field).
    unet = ctx["unet"]
    torch.nn.init.normal_(unet.global_context[2].weight, std=0.1)
    x2 = x.clone()
    x2[:, :, 0, 0] += 5.0
    with torch.no_grad():
        diff = (unet(x2, 999, encoder_hidden_states=emb).sample - unet(x, 999, encoder_hidden_states=emb).sample).abs()
    assert float(diff[:, :, -1, -1].min()) > 0  # the opposite corner moved


def test_gradients_reach_the_global_path_when_training(tmp_path):
    unet = tiny_components("rsc", global_context=True, **ARCH)["unet"].train()
    out = unet(torch.randn(2, 8, 16, 16), 999, encoder_hidden_states=torch.randn(2, 2, 32)).sample
    out.square().mean().backward()
    assert float(unet.global_context[2].weight.grad.abs().sum()) > 0


def test_an_old_pipeline_folder_without_the_path_still_loads(tmp_path):
    """A folder written by a plain UNet pipeline (as every released/bundled one is) loads as before."""
    pipe = tiny_pipeline("rsc", **ARCH)
    pipe.save_pretrained(tmp_path / "old")
    config = json.loads((tmp_path / "old" / "unet" / "config.json").read_text())
    assert config["_class_name"] == "UNet2DConditionModel"
    loaded = load_pipeline(tmp_path / "old", progress=False)
    assert type(loaded.unet) is UNet2DConditionModel and not hasattr(loaded.unet, "global_context")


def test_an_e2e_run_with_global_context_trains_it_and_exports_a_loadable_pipeline(tmp_path, photo):
    from stablemotion.training import Trainer
    from stablemotion.training.config import load_config
    from test_training import _config, _make_sir_folder

    data = _make_sir_folder(tmp_path / "data", photo)
    cfg = _config(tmp_path, data, **{"loss.objective": "e2e", "loss.weights": {"epe": 1.0, "photo": 1.0, "vgg": 0.0},
                                     "model.tiny": {"global_context": True}, "train.max_steps": 3})
    trainer = Trainer(load_config(cfg))
    start = trainer.unet.global_context[2].weight.detach().clone()
    result = trainer.train(show_progress=False)
    assert not torch.equal(trainer.unet.global_context[2].weight, start)  # the path learns from zero
    loaded = load_pipeline(result.pipeline_dir, progress=False)
    assert isinstance(loaded.unet, GlobalContextUNet)
    assert loaded.unet.global_context[2].weight.abs().sum() > 0  # the exported (EMA) weights hold the trained path


def test_fine_tuning_an_existing_pipeline_adds_the_path_and_starts_from_its_outputs(tmp_path, photo):
    from stablemotion.model.components import with_global_context
    from stablemotion.training import Trainer
    from stablemotion.training.config import load_config
    from test_training import _config, _make_sir_folder

    plain = tiny_pipeline("sir")
    plain.save_pretrained(tmp_path / "init")
    unet = with_global_context(plain.unet)
    x, emb = torch.randn(1, 12, 16, 16), plain.text_embedding(1)
    with torch.no_grad():
        assert torch.allclose(unet(x, 999, encoder_hidden_states=emb).sample,
                              plain.unet(x, 999, encoder_hidden_states=emb).sample, atol=1e-6)
    data = _make_sir_folder(tmp_path / "data", photo)
    cfg = _config(tmp_path, data, **{"model": {"base": "tiny", "init": str(tmp_path / "init"),
                                               "tiny": {"global_context": True}}})
    trainer = Trainer(load_config(cfg))
    assert isinstance(trainer.pipe.unet, GlobalContextUNet)
