"""Full-size results within bounded memory: the strip-wise flow, 16-bit warps, streamed flow files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from stablemotion.core.flow import RELEASED_FLOW_RESIZE, resize_flow, warp
from stablemotion.core.large_image import StripFlow, flow_colours, rectify_capped, upsample_flow, warp_strips
from stablemotion.io.flow_files import read_flow, write_flow
from stablemotion.model.tiny import tiny_pipeline


@pytest.mark.parametrize(("small", "size"), [((5, 7), (37, 53)), ((9, 4), (200, 90)), ((1, 6), (3, 40)),
                                             ((6, 1), (30, 2))])
def test_strip_flow_equals_the_pipelines_upsampling(small: tuple[int, int], size: tuple[int, int]) -> None:
    rng = np.random.default_rng(0)
    flow = rng.normal(0, 3, (*small, 2)).astype(np.float32)
    lazy = StripFlow(flow, size)
    eager = resize_flow(torch.from_numpy(flow).permute(2, 0, 1)[None], size, **RELEASED_FLOW_RESIZE)[0]
    eager = eager.permute(1, 2, 0).numpy()
    assert lazy.shape == (*size, 2) and len(lazy) == size[0]
    np.testing.assert_allclose(np.asarray(lazy), eager, atol=1e-4)
    np.testing.assert_allclose(lazy[3:size[0] - 1], eager[3:size[0] - 1], atol=1e-4)  # any band of rows alone
    np.testing.assert_allclose(lazy[2, 1], eager[2, 1], atol=1e-4)


def test_warp_and_colours_from_a_strip_flow_match_the_full_array() -> None:
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (60, 90, 3), dtype=np.uint8)
    small = rng.normal(0, 2, (6, 9, 2)).astype(np.float32)
    lazy, full = StripFlow(small, (60, 90)), upsample_flow(small, (60, 90))
    a = warp_strips(image, lazy, "border", strip_pixels=300)
    b = warp_strips(image, full, "border", strip_pixels=300)
    assert np.abs(a.astype(int) - b).max() <= 1
    (ca, ma), (cb, mb) = flow_colours(lazy), flow_colours(full)
    assert abs(ma - mb) < 1e-3 and np.abs(ca.astype(int) - cb).max() <= 1


def test_sixteen_bit_images_warp_to_sixteen_bits() -> None:
    rng = np.random.default_rng(2)
    image = rng.integers(0, 65536, (20, 30, 3), dtype=np.uint16)
    flow = np.zeros((20, 30, 2), np.float32)
    flow[..., 0] = 0.5
    out = warp_strips(image, flow, "border")
    assert out.dtype == np.uint16
    ref = warp(torch.from_numpy(image.astype(np.float32) / 65535).permute(2, 0, 1)[None],
               torch.from_numpy(flow).permute(2, 0, 1)[None], "border")[0].permute(1, 2, 0).numpy() * 65535
    assert np.abs(out.astype(np.float64) - ref).max() <= 1.0  # exact up to rounding: no 8-bit detour
    assert len(np.unique(out)) > 256
    with pytest.raises(ValueError, match="uint8 or uint16"):
        warp_strips(image.astype(np.float32), flow, "border")


@pytest.mark.parametrize("suffix", [".npy", ".flo"])
def test_a_strip_flow_is_written_without_materialising_it(tmp_path: Path, suffix: str) -> None:
    small = np.random.default_rng(3).normal(0, 1, (4, 5, 2)).astype(np.float32)
    lazy = StripFlow(small, (700, 40))  # more rows than one written chunk
    write_flow(tmp_path / f"f{suffix}", lazy)
    np.testing.assert_allclose(read_flow(tmp_path / f"f{suffix}"), np.asarray(lazy), atol=0)
    bad = StripFlow(np.full((2, 2, 2), np.nan, np.float32), (10, 10))
    with pytest.raises(ValueError, match="NaN"):
        write_flow(tmp_path / f"bad{suffix}", bad)
    assert not (tmp_path / f"bad{suffix}").exists()


def test_capped_rectify_returns_a_strip_flow_for_large_images() -> None:
    pipe = tiny_pipeline("rsc")
    image = np.random.default_rng(4).integers(0, 256, (96, 128, 3), dtype=np.uint8)
    out = rectify_capped(pipe, image, None, "zeros", max_work_pixels=32 * 32)
    assert isinstance(out.flow, StripFlow) and out.flow.shape == (96, 128, 2)
    assert out.image.shape == image.shape and np.isfinite(np.asarray(out.flow)).all()
    whole = rectify_capped(pipe, image, None, "zeros", max_work_pixels=96 * 128)
    assert isinstance(whole.flow, np.ndarray)


def test_a_sixteen_bit_request_gives_a_sixteen_bit_result_with_its_metadata(tmp_path: Path) -> None:
    from stablemotion.io.metadata import ImageMetadata, read_image_with_metadata, to_model_input
    from stablemotion.model.service import RectifyRequest, rectify, unchanged_result, write_results

    rng = np.random.default_rng(5)
    original = rng.integers(0, 65536, (40, 60, 3), dtype=np.uint16)
    request = RectifyRequest(to_model_input(original), task="rsc", original=original)
    meta = ImageMetadata(xmp=b'<x:xmpmeta GPano:ProjectionType="cylindrical"/>')
    for max_work in (32 * 32, None):  # capped (strip warp) and whole (the pipeline's own size)
        res = rectify(tiny_pipeline("rsc"), request, max_work_pixels=max_work, always_correct=True)
        assert res.image.dtype == np.uint16 and res.image.shape == original.shape
        out = write_results(res, {"image": tmp_path / "a.png"}, metadata=meta)[0]
        back, _, _, got = read_image_with_metadata(out)
        assert back.dtype == np.uint16 and np.array_equal(back, res.image) and got.has_panorama_tags
    kept = unchanged_result(request, "a test")
    assert kept.image is original
    with pytest.raises(ValueError, match="jpeg_quality"):
        write_results(kept, {"image": tmp_path / "b.jpg"}, jpeg_quality=0)
