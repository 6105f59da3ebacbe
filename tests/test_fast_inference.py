"""Fast-inference paths of the pipeline: latent-space AES (one decode) and reduced-resolution flow decode."""

from __future__ import annotations

import pytest
import torch
from diffusers.models.autoencoders.vae import DecoderOutput

from stablemotion.core.ensemble import median
from stablemotion.model import tiny_pipeline


@pytest.fixture(scope="module")
def pipe():
    p = tiny_pipeline("sir", seed=0)
    p.set_progress_bar_config(disable=True)
    return p


def _inputs(h: int = 32, w: int = 48) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.rand(1, 3, h, w, generator=g), torch.ones(1, 1, h, w)


def test_latent_mode_decodes_the_median_member_latent_once(pipe, monkeypatch: pytest.MonkeyPatch) -> None:
    image, mask = _inputs(32, 40)  # within 1.4x of the square network: one frame, not windows
    seen: list[torch.Tensor] = []
    orig = pipe.decode_flow

    def spy(latents: torch.Tensor, decode_scale: int = 1, task=None) -> torch.Tensor:
        seen.append(latents.clone())
        return orig(latents, decode_scale)

    monkeypatch.setattr(pipe, "decode_flow", spy)
    gens = [torch.Generator().manual_seed(s) for s in (1, 2, 3)]
    out = pipe(image, mask=mask, ensemble_size=3, ensemble_mode="latent", generator=gens, show_progress_bar=False)
    assert len(seen) == 1 and seen[0].shape[0] == 1  # one decode of one latent
    assert out.uncertainty is None and out.flow.shape == (1, 2, 32, 40)
    members = []
    for s in (1, 2, 3):  # the same members one at a time (a list of generators seeds each member alone)
        seen.clear()
        pipe(image, mask=mask, generator=[torch.Generator().manual_seed(s)], show_progress_bar=False)
        members.append(seen[0])
    seen.clear()
    gens = [torch.Generator().manual_seed(s) for s in (1, 2, 3)]  # fresh: the first call advanced them
    pipe(image, mask=mask, ensemble_size=3, ensemble_mode="latent", generator=gens, show_progress_bar=False)
    torch.testing.assert_close(seen[0], median(torch.cat(members)[None], dim=1), atol=1e-5, rtol=1e-5)
    # one member: the latent mode is the plain path
    a = pipe(image, mask=mask, ensemble_mode="latent", generator=torch.Generator().manual_seed(4), show_progress_bar=False)
    b = pipe(image, mask=mask, generator=torch.Generator().manual_seed(4), show_progress_bar=False)
    torch.testing.assert_close(a.flow, b.flow)
    with pytest.raises(ValueError, match="return_members"):
        pipe(image, mask=mask, ensemble_size=2, ensemble_mode="latent", return_members=True, show_progress_bar=False)


def test_reduced_resolution_decode_keeps_flow_magnitudes(pipe, monkeypatch: pytest.MonkeyPatch) -> None:
    """A decoder answering a constant flow (10, -4) px of the processing resolution at any size."""
    gamma = pipe.task.flow_gamma
    sizes = []

    def fake_decode(z: torch.Tensor, return_dict: bool = True) -> DecoderOutput:
        b, _, h, w = z.shape
        sizes.append((h, w))
        img = torch.ones(b, 3, 2 * h, 2 * w, dtype=z.dtype)  # the tiny VAE upsamples by 2
        img[:, 0] = 10.0 / gamma
        img[:, 1] = -4.0 / gamma
        return DecoderOutput(sample=img)

    monkeypatch.setattr(pipe.vae, "decode", fake_decode)
    image, mask = _inputs()
    res = (32, 32)  # processing 32x32, input 32x48: u scales by 48/32
    full = pipe(image, mask=mask, processing_resolution=res, show_progress_bar=False, aspect_mode="squeeze")
    half = pipe(image, mask=mask, processing_resolution=res, decode_scale=2, show_progress_bar=False,
                aspect_mode="squeeze")
    assert sizes == [(16, 16), (8, 8)]  # latent 16x16 decoded at full, then at 1/2
    for out in (full, half):
        torch.testing.assert_close(out.flow[:, 0], torch.full((1, 32, 48), 15.0), atol=1e-4, rtol=0)
        torch.testing.assert_close(out.flow[:, 1], torch.full((1, 32, 48), -4.0), atol=1e-4, rtol=0)


def test_decode_scale_is_validated(pipe) -> None:
    image, mask = _inputs()
    for bad in (0, 1.5, 3):  # 3 does not divide the 16x16 latent
        with pytest.raises(ValueError, match="decode_scale"):
            pipe(image, mask=mask, decode_scale=bad, show_progress_bar=False)
