"""Imported releases reproduce the authors' inference (issue: released checkpoints give the authors' results).

The reference below is written from the release's documented math (docs/method.md, "Inference" and
"Released checkpoint layout"), with raw diffusers modules and no stablemotion code: latent
mean x 0.18215 of inputs in [-1, 1], condition order [mask, image, noise] / [image, noise],
DDIM with trailing spacing keeping ``prev_sample`` on every step, ``decode * 50`` of channels
0-1, RSC flow upsampled bilinearly with ``align_corners=True`` and u, v scaled by W/w, H/h,
``grid_sample`` (bilinear, ``align_corners=True``) on the [0, 1] image with border / zeros
padding, and ``aes.py`` (8-bit members, ``np.median``, minimum in a 20 px band, truncated).
The package imports tiny random-weight releases in the authors' layout (``unet_ema/``,
accelerate's ``vae/model.safetensors``) and must agree with it on the same noise.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel

from stablemotion.core.ensemble import ensemble_images
from stablemotion.core.flow import RELEASED_FLOW_RESIZE, resize_flow, warp
from stablemotion.core.image_processing import to_mask_batch
from stablemotion.model import (
    RELEASED_INFERENCE,
    import_released_checkpoint,
    load_released_vae,
    tiny_components,
    tiny_pipeline,
)
from stablemotion.model.pipeline import StableMotionPipeline

SCALE = 0.18215
GAMMA = 50.0
BAND = 20


# --------------------------------------------------------------------------- the authors' layout
def write_release(root: Path, task: str, seed: int, vae_layout: str | None = "accelerate") -> tuple[Path, dict]:
    """A released task folder: ``unet_ema/`` (diffusers) and, for SIR, a fine-tuned ``vae/``.

    ``vae_layout``: ``"accelerate"`` (``accelerator.save_model``: model.safetensors, no config),
    ``"accelerate-bin"`` (pytorch_model.bin), ``"accelerate-sharded"`` (index + shards),
    ``"diffusers"`` or ``None`` (no vae/).
    """
    from accelerate import Accelerator

    comps = tiny_components(task, seed=seed)
    folder = root / f"StableMotion_{task.upper()}"
    comps["unet"].save_pretrained(folder / "unet_ema")
    if vae_layout == "diffusers":
        comps["vae"].save_pretrained(folder / "vae")
    elif vae_layout is not None:
        acc = Accelerator(cpu=True)
        kw = {"accelerate-bin": {"safe_serialization": False}, "accelerate-sharded": {"max_shard_size": "100KB"}}
        acc.save_model(comps["vae"], folder / "vae", **kw.get(vae_layout, {}))
    return folder, comps


def _to01(x: np.ndarray) -> torch.Tensor:
    """``ToTensor``: uint8 (H, W, C) -> float (1, C, H, W) in [0, 1]."""
    return torch.from_numpy(x).permute(2, 0, 1).float().div(255.0).unsqueeze(0)


def _released_warp(img01: torch.Tensor, flow: torch.Tensor, padding: str) -> torch.Tensor:
    _, _, h, w = img01.shape
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    gx = 2 * (xs + flow[:, 0]) / (w - 1) - 1
    gy = 2 * (ys + flow[:, 1]) / (h - 1) - 1
    grid = torch.stack([gx, gy], dim=-1)
    return F.grid_sample(img01, grid, mode="bilinear", padding_mode=padding, align_corners=True)


@torch.no_grad()
def released_reference(
    unet: UNet2DConditionModel,
    vae: AutoencoderKL,
    scheduler_config: dict,
    embedding: torch.Tensor,
    condition: np.ndarray,
    noise: torch.Tensor,
    padding: str,
    mask: np.ndarray | None = None,
    full: np.ndarray | None = None,
    steps: int = 1,
) -> tuple[list[torch.Tensor], np.ndarray]:
    """The release's inference: member flows at the warped image's size and the AES result (uint8)."""
    sched = DDIMScheduler.from_config({**scheduler_config, "timestep_spacing": "trailing"})

    def enc(x01: torch.Tensor) -> torch.Tensor:
        return vae.encode(x01 * 2 - 1).latent_dist.mean * SCALE

    cond = [enc(_to01(mask))] if mask is not None else []
    cond = torch.cat(cond + [enc(_to01(condition))], dim=1)
    target = condition if full is None else full
    th, tw = target.shape[:2]
    flows, members = [], []
    for e in range(noise.shape[0]):
        sched.set_timesteps(steps)
        z = noise[e : e + 1]
        for t in sched.timesteps:
            v = unet(torch.cat([cond, z], dim=1), t, encoder_hidden_states=embedding).sample
            z = sched.step(v, t, z).prev_sample  # kept on the last step too
        flow = vae.decode(z / SCALE).sample[:, :2] * GAMMA
        h, w = flow.shape[-2:]
        if (h, w) != (th, tw):  # upsample2d_flow_as
            flow = F.interpolate(flow, size=(th, tw), mode="bilinear", align_corners=True)
            flow = torch.stack([flow[:, 0] * tw / w, flow[:, 1] * th / h], dim=1)
        flows.append(flow)
        out = _released_warp(_to01(target), flow, padding)[0].permute(1, 2, 0).numpy()
        members.append((out * 255.0).round().clip(0, 255).astype(np.uint8))
    stack = np.stack(members).astype(np.float64)
    result = np.median(stack, axis=0)
    if len(members) > 1:
        low = stack.min(axis=0)
        result[:BAND], result[-BAND:] = low[:BAND], low[-BAND:]
        result[:, :BAND], result[:, -BAND:] = low[:, :BAND], low[:, -BAND:]
        return flows, result.astype(np.uint8)
    return flows, _released_warp(_to01(target), flows[0], padding)[0].permute(1, 2, 0).numpy()


def _psnr_float(a: np.ndarray, b: np.ndarray) -> float:
    a = a.astype(np.float64) / (255.0 if a.dtype == np.uint8 else 1.0)
    b = b.astype(np.float64) / (255.0 if b.dtype == np.uint8 else 1.0)
    mse = float(((a - b) ** 2).mean())
    return float("inf") if mse == 0 else 10 * np.log10(1.0 / mse)


def _soft_mask(h: int, w: int) -> np.ndarray:
    """A stitched-image mask as DIR-D stores it: 3-channel, JPEG-like grey values at the edge."""
    m = np.zeros((h, w), np.float32)
    m[6 : h - 4, 5 : w - 7] = 255
    m[:, w // 2 :] = np.maximum(m[:, w // 2 :], 0)
    m = torch.from_numpy(m)[None, None]
    m = F.avg_pool2d(F.pad(m, (1, 1, 1, 1), mode="replicate"), 3, stride=1)[0, 0].numpy()
    rgb = np.stack([m, m * 0.98, m], axis=-1)
    return rgb.round().astype(np.uint8)


# --------------------------------------------------------------------------- agreement
@pytest.mark.parametrize("ensemble", [1, 3])
def test_sir_import_matches_the_release(tiny_base: Path, tmp_path: Path, photo: np.ndarray, ensemble: int) -> None:
    folder, comps = write_release(tmp_path / "rel", "sir", seed=5)
    out = import_released_checkpoint(folder, tmp_path / "pipe", base=tiny_base)
    pipe = StableMotionPipeline.from_pretrained(out)
    h, w = 48, 64
    image = np.ascontiguousarray(photo[:h, :w])
    mask = _soft_mask(h, w)
    assert len(np.unique(mask)) > 2  # non-binary values: fed as read, never thresholded
    noise = torch.randn(ensemble, 4, h // 2, w // 2, generator=torch.Generator().manual_seed(3))
    res = pipe(image, mask=mask, latents=noise, ensemble_size=ensemble, processing_resolution=0,
               output_type="np", return_members=True, show_progress_bar=False)
    sched_cfg = json.loads((tiny_base / "scheduler" / "scheduler_config.json").read_text())
    flows, expected = released_reference(comps["unet"], comps["vae"], sched_cfg, pipe.text_embedding.embedding,
                                         image, noise, "border", mask=mask)
    ref = torch.cat(flows)  # (E, 2, H, W)
    assert float(ref.abs().mean()) > 0.05  # a real flow, not a trivial zero
    got = res.members[0]
    assert float((got - ref).abs().max()) <= 0.01
    assert _psnr_float(res.image[0], expected) >= 60.0


@pytest.mark.parametrize("ensemble", [1, 3])
def test_rsc_import_matches_the_release(tiny_base: Path, tmp_path: Path, photo: np.ndarray, ensemble: int) -> None:
    folder, comps = write_release(tmp_path / "rel", "rsc", seed=6, vae_layout=None)
    out = import_released_checkpoint(folder, tmp_path / "pipe", base=tiny_base)
    pipe = StableMotionPipeline.from_pretrained(out)
    base_vae = AutoencoderKL.from_pretrained(tiny_base / "vae")  # RSC uses the stock VAE
    full = np.ascontiguousarray(photo[:72, :96])
    import cv2

    condition = cv2.resize(full, (32, 32), interpolation=cv2.INTER_AREA)  # the npz's stored 256x256 input, in miniature
    noise = torch.randn(ensemble, 4, 16, 16, generator=torch.Generator().manual_seed(4))
    res = pipe(full, processing_image=condition, latents=noise, ensemble_size=ensemble, output_type="np",
               return_members=True, show_progress_bar=False)
    sched_cfg = json.loads((tiny_base / "scheduler" / "scheduler_config.json").read_text())
    flows, expected = released_reference(comps["unet"], base_vae, sched_cfg, pipe.text_embedding.embedding,
                                         condition, noise, "zeros", full=full)
    ref = torch.cat(flows)
    assert float((res.members[0] - ref).abs().max()) <= 0.01
    assert _psnr_float(res.image[0], expected) >= 60.0


def test_prev_sample_is_the_release_path_and_x0_differs(tiny_base: Path, tmp_path: Path, photo: np.ndarray) -> None:
    """One step keeps 0.99958 x0 + 0.029 eps (SD2's set_alpha_to_one=False): not the x0 estimate."""
    folder, _ = write_release(tmp_path / "rel", "rsc", seed=6, vae_layout=None)
    pipe = StableMotionPipeline.from_pretrained(import_released_checkpoint(folder, tmp_path / "p", base=tiny_base))
    noise = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    img = photo[:32, :32]
    a = pipe(img, latents=noise, show_progress_bar=False, processing_resolution=32).flow
    b = pipe(img, latents=noise, show_progress_bar=False, processing_resolution=32, final_step="x0").flow
    assert pipe.config.default_final_step == "prev_sample"
    assert float((a - b).abs().mean()) > 1e-3
    with pytest.raises(ValueError, match="final_step"):
        pipe(img, latents=noise, final_step="last", show_progress_bar=False)


# --------------------------------------------------------------------------- the VAE layouts
@pytest.mark.parametrize("layout", ["accelerate", "accelerate-bin", "accelerate-sharded", "diffusers"])
def test_every_released_vae_layout_is_loaded(tiny_base: Path, tmp_path: Path, layout: str) -> None:
    folder, comps = write_release(tmp_path / "rel", "sir", seed=9, vae_layout=layout)
    if layout == "accelerate-sharded":
        assert len(list((folder / "vae").glob("*.safetensors"))) > 1
    vae, note = load_released_vae(folder / "vae", tiny_base)
    want = comps["vae"].state_dict()
    assert all(torch.equal(vae.state_dict()[k], want[k]) for k in want)
    assert ("diffusers layout" if layout == "diffusers" else "accelerate layout") in note
    lines: list[str] = []
    import_released_checkpoint(folder, tmp_path / "pipe", base=tiny_base, log=lines.append)
    assert any(line.startswith("vae: ") and "fine-tuned" in line for line in lines), lines
    assert [line.split(":")[0] for line in lines] == ["unet", "vae", "scheduler", "text embedding"]


def test_unreadable_vae_folder_fails_clearly(tiny_base: Path, tmp_path: Path) -> None:
    folder, _ = write_release(tmp_path / "rel", "sir", seed=9)
    weights = folder / "vae" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])  # truncated download
    with pytest.raises(ValueError, match=r"cannot read the weights .*model\.safetensors"):
        import_released_checkpoint(folder, tmp_path / "a", base=tiny_base)
    weights.unlink()
    with pytest.raises(FileNotFoundError, match="holds no VAE weights"):
        import_released_checkpoint(folder, tmp_path / "b", base=tiny_base)
    # weights of another architecture: refused, never half-loaded
    other = tiny_components("sir", seed=1, vae_channels=(16, 16))["vae"]
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(weights))
    with pytest.raises(ValueError, match="do not fit the VAE architecture"):
        import_released_checkpoint(folder, tmp_path / "c", base=tiny_base)
    assert not (tmp_path / "a").exists() and not (tmp_path / "c").exists()


def test_import_refuses_a_unet_of_the_wrong_task(tiny_base: Path, tmp_path: Path) -> None:
    folder, _ = write_release(tmp_path / "rel", "rsc", seed=2, vae_layout=None)
    with pytest.raises(ValueError, match="wrong checkpoint"):
        import_released_checkpoint(folder, tmp_path / "x", base=tiny_base, task="sir")


# --------------------------------------------------------------------------- the single fixes
def test_rsc_zero_padding_is_black_in_the_pipeline(photo: np.ndarray) -> None:
    pipe = tiny_pipeline("rsc", seed=0)
    img = np.full((32, 32, 3), 200, np.uint8)
    res = pipe(img, output_type="np", show_progress_bar=False)
    flow = torch.from_numpy(res.flow[0]).permute(2, 0, 1)
    outside = ~warp(torch.ones(1, 32, 32), flow, padding="zeros", return_mask=True)[1][0]
    if outside.any():
        assert float(res.image[0][outside.numpy()].max()) < 200 / 255  # never lifted to mid-grey
    # the rule itself: zeros padding of a [0, 1] image gives black; fill=-1 gives the same in [-1, 1]
    shift = torch.zeros(1, 2, 8, 8)
    shift[:, 0] = 100.0
    x = torch.rand(1, 3, 8, 8)
    assert float(warp(x, shift, padding="zeros").abs().max()) == 0.0
    assert torch.allclose(warp(x * 2 - 1, shift, padding="zeros", fill=-1.0), warp(x, shift, padding="zeros") * 2 - 1)
    half = torch.full((1, 2, 8, 8), 0.5)
    assert torch.allclose(warp(x * 2 - 1, half, padding="zeros", fill=-1.0), warp(x, half, padding="zeros") * 2 - 1,
                          atol=1e-6)


def test_training_warp_loss_pads_black() -> None:
    from stablemotion.training.losses import warp_loss

    img = torch.zeros(1, 3, 8, 8)  # mid-grey in [-1, 1]
    flow = torch.zeros(1, 2, 8, 8)
    flow[:, 0] = 100.0  # everything sampled from outside
    black = torch.full((1, 3, 8, 8), -1.0)
    assert float(warp_loss(img, flow, black, padding="zeros")) == 0.0


def test_released_flow_upsampling_rule() -> None:
    flow = torch.randn(1, 2, 4, 5)
    up = resize_flow(flow, (8, 15), **RELEASED_FLOW_RESIZE)
    ref = F.interpolate(flow, size=(8, 15), mode="bilinear", align_corners=True)
    assert torch.allclose(up[:, 0], ref[:, 0] * 3.0) and torch.allclose(up[:, 1], ref[:, 1] * 2.0)
    assert torch.allclose(up[..., 0, 0], flow[..., 0, 0] * torch.tensor([[3.0, 2.0]]))  # corners map to corners


def test_masks_as_read_versus_binary() -> None:
    m = np.zeros((4, 4, 3), np.uint8)
    m[..., 0] = 200
    m[..., 1] = 10
    m[..., 2] = 10
    raw = to_mask_batch(m, encoding="as_read")
    assert raw.shape == (1, 3, 4, 4) and torch.allclose(raw[0, :, 0, 0], torch.tensor([200, 10, 10]) / 255.0)
    assert to_mask_batch(m).shape == (1, 1, 4, 4) and float(to_mask_batch(m).max()) == 0.0  # mean 73 < 128
    with pytest.raises(ValueError, match="mask encoding"):
        to_mask_batch(m, encoding="soft")


def test_aes_release_rounding_truncates_the_median() -> None:
    # two members at 3/255 and 4/255: median 3.5 -> released aes.py truncates to 3, the float rule keeps 3.5
    warped = torch.tensor([3.0, 4.0]).view(1, 2, 1, 1, 1).expand(1, 2, 1, 1, 1) / 255.0
    assert float(ensemble_images(warped, band=0, rounding="release")) * 255 == pytest.approx(3.0)
    assert float(ensemble_images(warped, band=0)) * 255 == pytest.approx(3.5)
    with pytest.raises(ValueError, match="rounding"):
        ensemble_images(warped, rounding="floor")


def test_latents_are_validated_and_replace_the_generator(photo: np.ndarray) -> None:
    pipe = tiny_pipeline("rsc", seed=0)
    img = photo[:32, :32]
    noise = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    a = pipe(img, latents=noise, ensemble_size=2, return_members=True, show_progress_bar=False).members
    b = pipe(img, latents=noise, ensemble_size=2, return_members=True, show_progress_bar=False,
             generator=torch.Generator().manual_seed(99)).members
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match=r"latents .* shape \(2, 4, 16, 16\)"):
        pipe(img, latents=noise[:1], ensemble_size=2, show_progress_bar=False)
    with pytest.raises(ValueError, match="NaN"):
        pipe(img, latents=noise[:1] * float("nan"), show_progress_bar=False)


def test_released_inference_settings_are_stored(tiny_base: Path, tmp_path: Path) -> None:
    folder, _ = write_release(tmp_path / "rel", "sir", seed=5)
    out = import_released_checkpoint(folder, tmp_path / "pipe", base=tiny_base)
    config = json.loads((out / "model_index.json").read_text())
    for key, value in RELEASED_INFERENCE.items():
        assert config[key] == value
    # the package's own models keep their own defaults
    pipe = tiny_pipeline("sir")
    assert pipe.config.default_final_step == "x0" and pipe.config.mask_encoding == "binary"


def test_rsreal_evaluation_feeds_the_stored_condition(tmp_path: Path, photo: np.ndarray) -> None:
    """``evaluate`` on RS-Real gives the network the npz ``condition`` and warps the full-resolution jpg."""
    from stablemotion.evaluation import EvalSettings, open_eval_set, run_inference
    from stablemotion.io.images import save_image

    root = tmp_path / "rs"
    (root / "test" / "npz").mkdir(parents=True)
    full = np.ascontiguousarray(photo[:64, :96])
    cond = np.ascontiguousarray(np.flipud(photo[:32, :32]))  # deliberately not a resize of the jpg
    np.savez(root / "test" / "npz" / "a.npz", condition=cond, out_flow=np.zeros((32, 32, 2), np.float32), gs=cond)
    save_image(full, root / "test" / "jpg" / "a.jpg")
    save_image(full, root / "test" / "jpg_gt" / "a.jpg")
    eval_set = open_eval_set(root, task="rsc")
    sample = eval_set.get("a")
    assert sample.network_image is not None and np.array_equal(sample.network_image, cond)
    assert sample.image.shape == (64, 96, 3)
    pipe = tiny_pipeline("rsc", seed=0)
    calls = []
    original = StableMotionPipeline.__call__

    def spy(self, *args, **kwargs):
        calls.append(kwargs.get("processing_image"))
        return original(self, *args, **kwargs)

    StableMotionPipeline.__call__ = spy
    try:
        run_inference(pipe, eval_set, tmp_path / "out", EvalSettings())
    finally:
        StableMotionPipeline.__call__ = original
    assert len(calls) == 1 and np.array_equal(calls[0], cond)
    from stablemotion.io.images import load_image

    assert load_image(tmp_path / "out" / "results" / "a.png").shape == full.shape
