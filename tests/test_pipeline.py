"""StableMotionPipeline on tiny random components (CPU, offline)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from stablemotion.core.ensemble import ensemble_flows, ensemble_images, flow_uncertainty
from stablemotion.core.flow import RELEASED_FLOW_RESIZE, resize_flow, warp
from stablemotion.core.image_processing import resize_image
from stablemotion.model import tiny_components, tiny_pipeline
from stablemotion.model.pipeline import StableMotionOutput, StableMotionPipeline
from stablemotion.tasks import TaskSpec


@pytest.fixture(scope="module")
def sir_pipe() -> StableMotionPipeline:
    pipe = tiny_pipeline("sir", seed=0)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def inputs() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    mask = np.full((32, 32), 255, np.uint8)
    mask[:4, :10] = 0
    return image, mask


def _seed(s: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(s)


def test_output_shapes_and_types(sir_pipe: StableMotionPipeline, inputs: tuple) -> None:
    image, mask = inputs
    out = sir_pipe(image, mask=mask, generator=_seed(), show_progress_bar=False, output_flow_colored=True)
    assert isinstance(out, StableMotionOutput)
    assert out.flow.shape == (1, 2, 32, 32) and out.flow.dtype == torch.float32
    assert out.image.shape == (1, 3, 32, 32) and 0 <= float(out.image.min()) and float(out.image.max()) <= 1
    assert out.flow_colored.shape == (1, 3, 32, 32) and out.flow_colored.dtype == torch.uint8
    assert out.uncertainty is None
    npo = sir_pipe(image, mask=mask, generator=_seed(), output_type="np", show_progress_bar=False)
    assert npo.flow.shape == (1, 32, 32, 2) and npo.image.shape == (1, 32, 32, 3)
    assert np.allclose(npo.flow, out.flow.permute(0, 2, 3, 1).numpy())
    pil = sir_pipe(Image.fromarray(image), mask=Image.fromarray(mask), generator=_seed(), output_type="pil",
                   show_progress_bar=False, output_flow_colored=True)
    assert isinstance(pil.image[0], Image.Image) and pil.image[0].size == (32, 32)
    assert isinstance(pil.flow_colored[0], Image.Image)
    flow, img, col, unc = sir_pipe(image, mask=mask, generator=_seed(), return_dict=False, show_progress_bar=False)
    assert torch.equal(flow, out.flow)


@pytest.mark.parametrize("steps, expected", [(1, [999]), (2, [999, 499]), (4, [999, 749, 499, 249])])
def test_trailing_timesteps_reach_the_unet(sir_pipe: StableMotionPipeline, inputs: tuple, steps: int,
                                           expected: list[int]) -> None:
    seen: list[int] = []
    hook = sir_pipe.unet.register_forward_pre_hook(lambda m, args: seen.append(int(args[1])))
    try:
        sir_pipe(*inputs, num_inference_steps=steps, generator=_seed(), show_progress_bar=False)
    finally:
        hook.remove()
    assert seen == expected


def test_one_step_is_the_closed_form_x0(sir_pipe: StableMotionPipeline, inputs: tuple) -> None:
    image, mask = inputs
    out = sir_pipe(image, mask=mask, generator=_seed(5), processing_resolution=(32, 32), show_progress_bar=False)
    # By hand: latents of [mask, image] in [-1, 1] (VAE mean x scale), noise, v, x0, decode.
    scale = sir_pipe.vae.config.scaling_factor
    img = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 127.5 - 1
    msk = torch.from_numpy(mask >= 128).float()[None, None].expand(1, 3, -1, -1) * 2 - 1
    with torch.no_grad():
        cond = torch.cat([sir_pipe.vae.encode(x).latent_dist.mean * scale for x in (msk, img)], dim=1)
        z = randn_tensor((1, 4, 16, 16), generator=_seed(5), dtype=torch.float32)
        emb = sir_pipe.text_embedding.embedding
        v = sir_pipe.unet(torch.cat([cond, z], 1), 999, encoder_hidden_states=emb).sample
        a = sir_pipe.scheduler.alphas_cumprod[999]
        x0 = a.sqrt() * z - (1 - a).sqrt() * v
        flow = sir_pipe.vae.decode(x0 / scale).sample[:, :2] * 50.0
    assert torch.allclose(out.flow, flow, atol=1e-4, rtol=1e-4)
    expected_image = (warp(img, out.flow, padding="border") + 1) / 2
    assert torch.allclose(out.image, expected_image.clamp(0, 1), atol=1e-5)


def test_seeded_determinism(sir_pipe: StableMotionPipeline, inputs: tuple) -> None:
    a = sir_pipe(*inputs, generator=_seed(1), ensemble_size=2, show_progress_bar=False)
    b = sir_pipe(*inputs, generator=_seed(1), ensemble_size=2, show_progress_bar=False)
    c = sir_pipe(*inputs, generator=_seed(2), ensemble_size=2, show_progress_bar=False)
    assert torch.equal(a.flow, b.flow) and torch.equal(a.image, b.image)
    assert not torch.allclose(a.flow, c.flow)


def test_ensemble_rules_and_shared_condition_encoding(sir_pipe: StableMotionPipeline, inputs: tuple) -> None:
    image, mask = inputs
    calls: list[int] = []
    hook = sir_pipe.vae.encoder.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[0]))
    try:
        out = sir_pipe(image, mask=mask, generator=_seed(3), ensemble_size=4, return_members=True,
                       show_progress_bar=False)
    finally:
        hook.remove()
    assert calls == [2]  # mask + image encoded once, in one VAE batch, for all 4 members
    members = out.members
    assert members.shape == (1, 4, 2, 32, 32)
    assert not torch.allclose(members[:, 0], members[:, 1])  # members differ (different noise)
    img = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 127.5 - 1
    warped = warp(img.expand(4, -1, -1, -1), members[0], padding="border")
    expected = (ensemble_images(warped[None], band=20.0) + 1) / 2
    assert torch.allclose(out.image, expected.clamp(0, 1), atol=1e-5)
    assert torch.allclose(out.flow, ensemble_flows(members))
    assert torch.allclose(out.uncertainty, flow_uncertainty(members), atol=1e-5)
    fl = sir_pipe(image, mask=mask, generator=_seed(3), ensemble_size=4, ensemble_mode="flow", show_progress_bar=False)
    assert torch.allclose(fl.flow, out.flow)
    flow_img = (warp(img, ensemble_flows(members), padding="border") + 1) / 2
    assert torch.allclose(fl.image, flow_img.clamp(0, 1), atol=1e-5)
    assert not torch.allclose(fl.image, out.image)


def test_batch_size_chunks_match_one_batch(sir_pipe: StableMotionPipeline, inputs: tuple) -> None:
    image, mask = inputs
    imgs = np.stack([image, image[::-1]])
    a = sir_pipe(imgs, mask=mask, generator=_seed(4), ensemble_size=3, show_progress_bar=False)
    b = sir_pipe(imgs, mask=mask, generator=_seed(4), ensemble_size=3, batch_size=2, show_progress_bar=False)
    assert a.flow.shape == (2, 2, 32, 32)
    assert torch.allclose(a.flow, b.flow, atol=1e-3)


def test_processing_resolution_upsamples_flow_with_magnitude_scaling(sir_pipe: StableMotionPipeline) -> None:
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    mask = np.full((48, 64), 255, np.uint8)
    out = sir_pipe(image, mask=mask, processing_resolution=(32, 32), generator=_seed(), show_progress_bar=False)
    assert out.flow.shape == (1, 2, 48, 64)
    small = resize_image(torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255.0, (32, 32))
    low = sir_pipe(small, mask=np.full((32, 32), 255, np.uint8), processing_resolution=(32, 32), generator=_seed(),
                   show_progress_bar=False)
    assert torch.allclose(out.flow, resize_flow(low.flow, (48, 64), **RELEASED_FLOW_RESIZE), atol=1e-3)
    full = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 127.5 - 1
    assert torch.allclose(out.image, ((warp(full, out.flow, padding="border") + 1) / 2).clamp(0, 1), atol=1e-5)
    native = sir_pipe(image, mask=mask, processing_resolution=0, generator=_seed(), show_progress_bar=False)
    assert native.flow.shape == (1, 2, 48, 64)


def test_save_load_round_trip(sir_pipe: StableMotionPipeline, inputs: tuple, tmp_path: Path) -> None:
    sir_pipe.save_pretrained(tmp_path / "pipe")
    names = {p.name for p in (tmp_path / "pipe").iterdir()}
    assert {"unet", "vae", "scheduler", "text_embedding", "model_index.json"} <= names
    assert not {"tokenizer", "text_encoder"} & names
    loaded = StableMotionPipeline.from_pretrained(tmp_path / "pipe")
    assert loaded.task == sir_pipe.task
    assert loaded.config.default_processing_resolution == [32, 32]
    assert loaded.scheduler.config.timestep_spacing == "trailing"
    a = sir_pipe(*inputs, generator=_seed(9), ensemble_size=2, show_progress_bar=False)
    b = loaded(*inputs, generator=_seed(9), ensemble_size=2, show_progress_bar=False)
    assert torch.equal(a.flow, b.flow) and torch.equal(a.image, b.image)


def test_config_defaults_are_used(inputs: tuple) -> None:
    pipe = tiny_pipeline("sir", default_ensemble_size=3, default_denoising_steps=2)
    seen: list[int] = []
    hook = pipe.unet.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[0]))
    out = pipe(*inputs, generator=_seed(), show_progress_bar=False)
    hook.remove()
    assert seen == [3, 3] and out.uncertainty is not None


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_reduced_precision_on_cpu(tmp_path: Path, inputs: tuple, dtype: torch.dtype,
                                  sir_pipe: StableMotionPipeline) -> None:
    sir_pipe.save_pretrained(tmp_path / "pipe")
    low = StableMotionPipeline.from_pretrained(tmp_path / "pipe", torch_dtype=dtype)
    assert low.unet.dtype == dtype and low.text_embedding.embedding.dtype == dtype
    ref = sir_pipe(*inputs, generator=_seed(), show_progress_bar=False)
    out = low(*inputs, generator=_seed(), show_progress_bar=False)
    assert out.flow.dtype == torch.float32 and torch.isfinite(out.flow).all()
    scale = float(ref.flow.abs().max())
    assert float((out.flow - ref.flow).abs().max()) < 0.1 * scale  # same noise, only rounding differs


def test_user_task_round_trips_without_registration(tmp_path: Path) -> None:
    task = TaskSpec("tilt", conditions=("image",), padding="zeros", resolution=(32, 32))
    pipe = tiny_pipeline(task)
    pipe.save_pretrained(tmp_path / "p")
    loaded = StableMotionPipeline.from_pretrained(tmp_path / "p")
    assert loaded.task == task
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    out = loaded(image, generator=_seed(), show_progress_bar=False)
    assert out.flow.shape == (1, 2, 32, 32)


# --------------------------------------------------------------------------- bad inputs
@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"image": np.zeros((32, 32), np.uint8)}, "grey"),
        ({"image": np.zeros((32, 32, 4), np.uint8)}, "RGBA"),
        ({"mask": np.ones((16, 32), np.uint8)}, "pixel-aligned"),
        ({"mask": None}, "needs the condition 'mask'"),
        ({"conditions": {"depth": np.zeros((32, 32, 3), np.uint8)}}, "unknown"),
        ({"num_inference_steps": 0}, "num_inference_steps"),
        ({"ensemble_size": 0}, "ensemble_size"),
        ({"ensemble_mode": "mean"}, "ensemble_mode"),
        ({"output_type": "jpg"}, "output_type"),
        ({"processing_resolution": (30, 32)}, "multiples of 4"),
        ({"batch_size": 0}, "batch_size"),
        ({"generator": [torch.Generator()] * 3}, "one per sample"),
    ],
)
def test_bad_inputs_fail_before_compute(sir_pipe: StableMotionPipeline, inputs: tuple, kwargs: dict,
                                        match: str) -> None:
    image, mask = inputs
    call = {"image": image, "mask": mask, "show_progress_bar": False, **kwargs}
    called: list[int] = []
    hook = sir_pipe.vae.encoder.register_forward_hook(lambda *a: called.append(1))
    try:
        with pytest.raises(ValueError, match=match):
            sir_pipe(**call)
    finally:
        hook.remove()
    assert not called


def test_wrong_channel_checkpoint_is_rejected() -> None:
    comps = tiny_components("rsc")  # 8-channel UNet
    with pytest.raises(ValueError, match="wrong checkpoint"):
        StableMotionPipeline(**comps, task="sir")
    assert StableMotionPipeline(**comps).task.name == "rsc"  # inferred from the channel count


@pytest.mark.parametrize(
    ("task", "flow_slice", "image_slice"),
    [
        ("sir", [25.0644, 22.5978, 3.4479, 4.7187, -4.5802, -3.7231, -3.5033, 15.5431],
         [0.1877, 0.8442, 0.6749, 0.5343, 0.6028, 0.7308, 0.4596, 0.6081, 0.2312]),
        ("rsc", [-1.2644, -6.357, 7.3733, 4.9849, -10.9252, -9.8352, -13.1615, -7.0969],
         [0.0, 0.0, 0.6301, 0.0, 0.0, 0.3465, 0.0, 0.0, 0.4993]),
    ],
)
def test_expected_slice(task: str, flow_slice: list[float], image_slice: list[float]) -> None:
    """A seeded tiny pipeline gives these numbers: a silent change of the noise, scheduler,
    initialisation, codec, upsampling or warp fails here (as diffusers' pipeline tests do)."""
    from stablemotion.model.tiny import tiny_pipeline

    pipe = tiny_pipeline(task, seed=0)
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    kwargs = {"mask": np.full((32, 32), 255, np.uint8)} if task == "sir" else {}
    out = pipe(image, generator=torch.Generator().manual_seed(0), show_progress_bar=False, **kwargs)
    np.testing.assert_allclose(out.flow[0, :, 10, 8:12].flatten().numpy(), flow_slice, atol=2e-3)
    np.testing.assert_allclose(out.image[0, :, 5, 5:8].flatten().numpy(), image_slice, atol=2e-3)
    assert out.settings["num_inference_steps"] == 1 and out.settings["final_step"] == "x0"
    assert out.settings["processing_resolution"] == [32, 32] and out.flow_colored is None


def test_progress_bar_follows_diffusers_config(sir_pipe: StableMotionPipeline, inputs: tuple,
                                               capsys: pytest.CaptureFixture) -> None:
    image, mask = inputs
    sir_pipe.set_progress_bar_config(disable=False, desc="rectifying")
    sir_pipe(image, mask=mask, generator=_seed(), num_inference_steps=2)
    assert "rectifying" in capsys.readouterr().err
    sir_pipe.set_progress_bar_config(disable=True)
    sir_pipe(image, mask=mask, generator=_seed(), num_inference_steps=2)
    assert "rectifying" not in capsys.readouterr().err


def test_mesh_flow_regularization(sir_pipe: StableMotionPipeline, inputs: tuple) -> None:
    """flow_regularization="mesh" gives a smooth per-cell-homography flow and is reported in the settings."""
    image, mask = inputs
    plain = sir_pipe(image, mask=mask, generator=_seed(), show_progress_bar=False)
    meshed = sir_pipe(image, mask=mask, generator=_seed(), show_progress_bar=False, flow_regularization="mesh")
    assert meshed.settings["flow_regularization"] == "mesh" and plain.settings["flow_regularization"] == "none"

    def roughness(f: torch.Tensor) -> float:
        return float((f[..., 1:-1, 2:] + f[..., 1:-1, :-2] + f[..., 2:, 1:-1] + f[..., :-2, 1:-1]
                      - 4 * f[..., 1:-1, 1:-1]).abs().mean())

    assert roughness(meshed.flow) < 0.5 * roughness(plain.flow)
    with pytest.raises(ValueError, match="flow_regularization"):
        sir_pipe(image, mask=mask, flow_regularization="tps", show_progress_bar=False)


def test_mesh_regularization_keeps_the_output_border_on_content(sir_pipe: StableMotionPipeline, monkeypatch) -> None:
    """With a mask condition, "mesh" also moves the mesh boundary onto the content, for every
    ensemble member (the decoded flows are replaced by zero motion, which leaves the empty
    corner in the frame)."""
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    mask = np.full((2, 32, 32), 255, np.uint8)
    mask[:, :6, :12] = 0  # an empty corner at the top left
    valid = sir_pipe.content_region({"mask": torch.from_numpy(mask[:, None] / 255.0)}, (32, 32), 2, 3, False)
    assert valid.shape == (6, 32, 32) and not bool(valid[:, :6, :12].any()) and bool(valid[:, 6:, 12:].all())
    decode = sir_pipe.decode
    monkeypatch.setattr(sir_pipe, "decode", lambda *a, **k: torch.zeros_like(decode(*a, **k)))
    m = torch.from_numpy(mask[:, None] >= 128).float()
    ring = torch.ones(32, 32, dtype=torch.bool)
    ring[2:-2, 2:-2] = False

    def border_left(regularization: str) -> float:
        out = sir_pipe(list(image), mask=list(mask), generator=_seed(), show_progress_bar=False, ensemble_size=3,
                       ensemble_mode="flow", flow_regularization=regularization)
        return float((warp(m, out.flow, padding="zeros")[:, 0][:, ring] < 0.5).float().mean())

    assert border_left("none") > 0.05
    assert border_left("mesh") == 0.0
