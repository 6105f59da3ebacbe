"""Synthetic task generators: exact flows, determinism, on-disk layouts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from stablemotion.core.flow import mesh_to_flow, warp
from stablemotion.data import DIRDDataset, RSRealDataset
from stablemotion.data.synth import (
    bundled_photo_paths,
    invert_flow,
    list_photos,
    make_rectangling_sample,
    make_rolling_shutter_sample,
    random_photo_crop,
    random_rectangling_mesh,
    rolling_shutter_margin,
    sample_rng,
    write_rectangling_dataset,
    write_rolling_shutter_dataset,
)
from stablemotion.io.images import load_image


def _psnr(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    diff = (a.double() - b.double()) ** 2
    if mask is not None:
        diff = diff[mask.expand_as(diff)]
    return float(10 * torch.log10(255.0**2 / diff.mean()))


def _chw(arr: np.ndarray) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(arr))
    return t.permute(2, 0, 1) if t.ndim == 3 else t[None]


def _rect_sample(seed: int, size: tuple[int, int]):
    rng = sample_rng(seed, 0, "rectangling")
    photos = bundled_photo_paths()
    photo = random_photo_crop(load_image(photos[seed % len(photos)]), size, rng, prefilter_sigma=0.7)
    return make_rectangling_sample(photo, rng)


def _rs_sample(seed: int, size: tuple[int, int]):
    rng = sample_rng(seed, 0, "rolling_shutter")
    photos = bundled_photo_paths()
    my, mx = rolling_shutter_margin(size)
    scene = random_photo_crop(load_image(photos[seed % len(photos)]), (size[0] + 2 * my, size[1] + 2 * mx), rng,
                              prefilter_sigma=0.7)
    return make_rolling_shutter_sample(scene, rng, size=size)


def test_bundled_photos_are_offline_natural_photos():
    paths = bundled_photo_paths()
    assert len(paths) >= 5
    assert list_photos(None) == paths
    for p in paths[:3]:
        img = load_image(p)
        assert img.ndim == 3 and img.shape[2] == 3 and min(img.shape[:2]) >= 256


def test_list_photos_folder(tmp_path):
    with pytest.raises(ValueError, match="no images"):
        list_photos(tmp_path)
    with pytest.raises(FileNotFoundError):
        list_photos(tmp_path / "missing")


def test_random_photo_crop_shape_and_determinism():
    photo = load_image(bundled_photo_paths()[0])
    a = random_photo_crop(photo, (48, 64), np.random.default_rng(3))
    b = random_photo_crop(photo, (48, 64), np.random.default_rng(3))
    c = random_photo_crop(photo, (48, 64), np.random.default_rng(4))
    assert a.shape == (48, 64, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_invert_flow_composes_to_identity():
    mesh = random_rectangling_mesh(np.random.default_rng(0), 48, 64, rows=3, cols=4, max_inset=0.15)
    flow = mesh_to_flow(mesh, 48, 64)
    inv, residual = invert_flow(flow)
    # q -> q + g(q) -> (q + g) + f(q + g) must return to q where the inverse exists.
    back = inv + warp(flow.double(), inv, padding="border")
    inside = residual[0] < 0.05
    assert inside.float().mean() > 0.8
    assert float(back.norm(dim=0)[inside].max()) < 1e-2
    assert float(flow.norm(dim=0).mean()) > 1.0


@pytest.mark.parametrize("size", [(48, 64), (96, 128)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rectangling_sample_satisfies_its_flow(seed, size):
    s = _rect_sample(seed, size)
    h, w = size
    assert s.input.shape == (h, w, 3) and s.gt.shape == (h, w, 3) and s.mask.shape == (h, w)
    assert s.flow.shape == (h, w, 2) and s.flow.dtype == np.float32
    content = s.mask > 0
    assert 0.6 < content.mean() < 0.995  # an irregular region, not the full canvas
    assert set(np.unique(s.mask)) <= {0, 255}
    assert (s.input[~content] == 0).all()
    flow = _chw(s.flow)
    rewarped = warp(_chw(s.input).double(), flow, padding="border")
    assert _psnr(rewarped, _chw(s.gt)) > 35.0
    assert _psnr(_chw(s.input), _chw(s.gt)) < 25.0  # the task is not trivial
    # The gt flow only samples content: the warped mask is valid everywhere.
    warped_mask = warp(_chw(s.mask).double() / 255.0, flow, padding="border")
    assert float(warped_mask.min()) > 0.5


def test_rectangling_mesh_stays_in_canvas_and_touches_edges():
    rng = np.random.default_rng(5)
    touches = 0
    for _ in range(10):
        mesh = random_rectangling_mesh(rng, 96, 128)
        assert mesh.shape == (7, 9, 2)
        assert mesh[..., 0].min() >= 0 and mesh[..., 0].max() <= 127
        assert mesh[..., 1].min() >= 0 and mesh[..., 1].max() <= 95
        touches += int(np.isclose(mesh[0, :, 1], 0).any() or np.isclose(mesh[:, 0, 0], 0).any())
    assert touches >= 5


@pytest.mark.parametrize("size", [(48, 64), (96, 128)])
@pytest.mark.parametrize("seed", [0, 3])
def test_rolling_shutter_sample_satisfies_its_flow(seed, size):
    s = _rs_sample(seed, size)
    h, w = size
    assert s.rs.shape == (h, w, 3) and s.gs.shape == (h, w, 3) and s.flow.shape == (h, w, 2)
    assert s.motion.shape == (h, 3)
    assert s.valid.mean() > 0.6
    valid = torch.from_numpy(s.valid)[None]
    rewarped = warp(_chw(s.rs).double(), _chw(s.flow), padding="zeros")
    rewarp_psnr = _psnr(rewarped, _chw(s.gs), valid)
    assert rewarp_psnr > 35.0
    assert _psnr(_chw(s.rs), _chw(s.gs), valid) < rewarp_psnr - 5.0  # the flow does real work
    assert float(np.linalg.norm(s.flow, axis=-1).mean()) > 0.3
    # Rolling shutter: the motion differs between rows (row-dependent), not a global shift.
    assert np.ptp(s.motion[:, :2], axis=0).max() > 0.5
    row_means = s.flow[..., 0].mean(axis=1)
    assert np.ptp(row_means) > 0.3


def test_generators_are_deterministic():
    a, b = _rect_sample(7, (48, 64)), _rect_sample(7, (48, 64))
    c = _rect_sample(8, (48, 64))
    assert np.array_equal(a.input, b.input) and np.array_equal(a.flow, b.flow)
    assert not np.array_equal(a.flow, c.flow)
    r1, r2 = _rs_sample(7, (48, 64)), _rs_sample(7, (48, 64))
    assert np.array_equal(r1.rs, r2.rs) and np.array_equal(r1.flow, r2.flow)


def test_sample_validation():
    with pytest.raises(ValueError, match="uint8"):
        make_rectangling_sample(np.zeros((8, 8, 3), np.float32), np.random.default_rng(0))
    with pytest.raises(ValueError, match="fit in the scene"):
        make_rolling_shutter_sample(np.zeros((8, 8, 3), np.uint8), np.random.default_rng(0), size=(16, 16))


def test_write_rectangling_dataset_layout_and_determinism(tmp_path):
    names = write_rectangling_dataset(tmp_path / "a", 3, size=(48, 64), ext="png", seed=1, workers=1)
    assert names == ["00000", "00001", "00002"]
    root = tmp_path / "a" / "training"
    for sub, ext in (("input", "png"), ("mask", "png"), ("gt", "png"), ("flow", "npy")):
        assert sorted(p.name for p in (root / sub).iterdir()) == [f"{n}.{ext}" for n in names]
    mask = load_image(root / "mask" / "00000.png")
    assert mask.shape == (48, 64, 3)  # 3-channel, as DIR-D
    # Same seed in two processes gives the same files as in one.
    write_rectangling_dataset(tmp_path / "b", 3, size=(48, 64), ext="png", seed=1, workers=2)
    for sub in ("input", "gt"):
        for n in names:
            assert np.array_equal(load_image(root / sub / f"{n}.png"),
                                  load_image(tmp_path / "b" / "training" / sub / f"{n}.png"))
    ds = DIRDDataset(tmp_path / "a", "training")
    s = ds[1]
    assert _psnr((warp(s["image"], s["flow"]) + 1) * 127.5, (s["gt"] + 1) * 127.5) > 35.0
    with pytest.raises(FileExistsError, match="already holds files"):
        write_rectangling_dataset(tmp_path / "a", 1, size=(48, 64))
    # Extending a dataset: --start continues the numbering.
    write_rectangling_dataset(tmp_path / "a", 1, size=(48, 64), ext="png", seed=1, start=3, overwrite=True)
    assert len(DIRDDataset(tmp_path / "a")) == 4


def test_write_rolling_shutter_dataset_layout(tmp_path):
    write_rolling_shutter_dataset(tmp_path, 2, size=(48, 64), npz_size=(32, 32), split="test", seed=2)
    root = tmp_path / "test"
    assert sorted(p.name for p in (root / "npz").iterdir()) == ["00000.npz", "00001.npz"]
    assert sorted(p.name for p in (root / "jpg").iterdir()) == ["00000.jpg", "00001.jpg"]
    assert sorted(p.name for p in (root / "jpg_gt").iterdir()) == ["00000.jpg", "00001.jpg"]
    with np.load(root / "npz" / "00000.npz") as z:
        assert set(z.files) == {"condition", "out_flow", "gs"}
        assert z["condition"].shape == (32, 32, 3) and z["condition"].dtype == np.uint8
        assert z["out_flow"].shape == (32, 32, 2) and z["out_flow"].dtype == np.float32
    ds = RSRealDataset(tmp_path, "test", full_res=True)
    s = ds[0]
    assert s["image"].shape == (3, 32, 32) and s["image_full"].shape == (3, 48, 64)
    # A train split gets no full-resolution jpgs by default.
    write_rolling_shutter_dataset(tmp_path, 1, size=(48, 64), split="train")
    assert not (tmp_path / "train" / "jpg").exists()
    with pytest.raises(ValueError, match="image format"):
        write_rolling_shutter_dataset(tmp_path, 1, size=(48, 64), split="x", ext="gif")


def test_resolve_photos_named_sources_and_weights(tmp_path):
    from stablemotion.data.synth import PROCEDURAL, TRAINING_PHOTOS, resolve_photos

    train = resolve_photos("bundled-train")
    assert [Path(p).name for p in train] == list(TRAINING_PHOTOS)
    mixed = resolve_photos("bundled-train+procedural*10")
    assert mixed.count(PROCEDURAL) == 10 and len(mixed) == len(train) + 10
    with pytest.raises(ValueError, match="neither a folder nor one of"):
        resolve_photos("bundled-tset")
    with pytest.raises(ValueError, match="repeat count"):
        resolve_photos("procedural*x")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.png")
    assert resolve_photos(tmp_path) == [str(tmp_path / "a.png")]


def test_procedural_scenes_are_deterministic_structured_and_usable_as_photos(tmp_path):
    from stablemotion.data.synth import procedural_scene, write_rectangling_dataset

    a = procedural_scene(np.random.default_rng(3), (48, 64))
    b = procedural_scene(np.random.default_rng(3), (48, 64))
    assert a.shape == (48, 64, 3) and a.dtype == np.uint8 and np.array_equal(a, b)
    assert a.std() > 10  # not a flat image
    names = write_rectangling_dataset(tmp_path, 2, size=(32, 48), photos="procedural", ext="png")
    assert names == ["00000", "00001"] and (tmp_path / "training" / "gt" / "00001.png").is_file()


def test_stitched_style_outlines_are_straight_edged_and_flows_exact(rng) -> None:
    """The "stitched" style: the content region is a union of a few projected rectangles (a polygon with few
    straight edges, touching all four sides), the empty area black or white, and the flow still exact."""
    import cv2

    from stablemotion.core.flow import warp
    from stablemotion.core.metrics import psnr
    from stablemotion.data.synth import make_rectangling_sample, stitched_region

    region = stitched_region(np.random.default_rng(5), 192, 384)
    ys, xs = np.nonzero(region)
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (0, 191, 0, 383)  # the union fills the bounding box
    assert 0.03 < (region == 0).mean() < 0.4
    contour = max(cv2.findContours(region, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)[0], key=cv2.contourArea)
    assert len(cv2.approxPolyDP(contour, 2.0, True)) <= 24  # straight edges, not a wiggly curve
    photo = np.random.default_rng(0).integers(0, 256, (192, 384, 3), dtype=np.uint8)
    photo = cv2.GaussianBlur(photo, (0, 0), 1.5)
    fills = set()
    for seed in range(6):
        s = make_rectangling_sample(photo, np.random.default_rng(seed), rows=12, cols=16, style="stitched",
                                    white_fraction=0.5)
        rec = warp(torch.from_numpy(s.input).permute(2, 0, 1).float(), torch.from_numpy(s.flow).permute(2, 0, 1),
                   padding="border").permute(1, 2, 0).numpy().round().clip(0, 255).astype(np.uint8)
        assert psnr(rec, s.gt) > 30
        empty = s.mask == 0
        assert empty.any()
        fills |= set(np.unique(s.input[empty]).tolist())
    assert fills == {0, 255}  # both black and white empty areas occur
    with pytest.raises(ValueError, match="style"):
        make_rectangling_sample(photo, np.random.default_rng(0), style="curvy")


def test_synth_cli_stitched_style(tmp_path) -> None:
    from stablemotion.cli import main

    assert main(["synth", "rectangling", str(tmp_path / "d"), "--num", "2", "--size", "96x128", "--style",
                 "stitched", "--white-fraction", "1", "--ext", "png", "--workers", "1"]) == 0
    from stablemotion.io.images import load_image

    img = load_image(tmp_path / "d" / "training" / "input" / "00000.png")
    mask = load_image(tmp_path / "d" / "training" / "mask" / "00000.png", mode="L")
    assert (img[mask == 0] == 255).all()


# --------------------------------------------------------------------------- camera rolling shutter
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_camera_rolling_shutter_sample_satisfies_its_flow_and_bounds(seed):
    from stablemotion.data.synth import make_sample

    s = make_sample("rolling_shutter", seed, 0, (48, 64), photos=["urban"], motion_model="camera",
                    max_displacement=0.1)
    assert s.motion.shape == (48, 6)  # rotation vector + translation per row
    valid = torch.from_numpy(s.valid)[None]
    assert s.valid.mean() > 0.6
    rewarped = warp(_chw(s.rs).double(), _chw(s.flow), padding="zeros")
    rewarp_psnr = _psnr(rewarped, _chw(s.gs), valid)
    assert rewarp_psnr > 33.0
    assert _psnr(_chw(s.rs), _chw(s.gs), valid) < rewarp_psnr - 5.0
    # Displacements stay within the requested bound (10% of the width, with the inversion's slack).
    assert np.linalg.norm(s.flow, axis=-1).max() <= 0.1 * 64 * 1.1
    # The reference (middle) row is unchanged, and the motion grows away from it.
    assert np.abs(s.flow[24]).max() < 0.3 * np.abs(s.flow).max() + 0.05


def test_camera_map_is_the_per_row_homography_of_a_plane():
    """A pure yaw over the readout shifts rows linearly in time: the top and bottom rows move
    in opposite directions, rows near the reference time hardly move; the map of each row is
    a homography (collinear points stay collinear)."""
    from stablemotion.data.synth import camera_rolling_shutter_map

    h, w = 60, 80
    src, motion = camera_rolling_shutter_map(np.random.default_rng(4), (h, w), max_displacement=0.1)
    disp = src - np.stack(np.meshgrid(np.arange(w), np.arange(h)), axis=-1)
    peak = np.linalg.norm(disp, axis=-1).max()
    assert 0.1 * 0.1 * w * 0.95 <= peak <= 0.1 * w * 1.02  # scaled to U(0.1, 1) * max_displacement * W
    mid = np.linalg.norm(disp[h // 2], axis=-1).max()
    assert mid < 0.1 * peak
    assert np.allclose(motion[int(round(0.5 * (h - 1)))], 0.0, atol=0.05 * np.abs(motion).max() + 1e-9)
    for r in (0, h - 1):  # a row of the RS image is a straight line in the GS image
        pts = src[r]
        a, b = pts[0], pts[-1]
        d = (b - a) / np.linalg.norm(b - a)
        off = np.abs((pts - a) @ np.array([-d[1], d[0]]))
        assert off.max() < 1e-6
    # Different seeds give different motions, and the model's randomness is all in the rng.
    src2, _ = camera_rolling_shutter_map(np.random.default_rng(5), (h, w))
    src3, _ = camera_rolling_shutter_map(np.random.default_rng(4), (h, w), max_displacement=0.1)
    assert not np.allclose(src, src2) and np.array_equal(src, src3)


def test_rolling_shutter_motion_model_is_validated(tmp_path):
    with pytest.raises(ValueError, match="motion_model"):
        make_rolling_shutter_sample(np.zeros((40, 40, 3), np.uint8), np.random.default_rng(0), size=(16, 16),
                                    motion_model="wobble")
    with pytest.raises(ValueError, match="max_displacement"):
        write_rolling_shutter_dataset(tmp_path, 1, size=(16, 16), motion_model="camera", max_displacement=2.0)
    assert rolling_shutter_margin((96, 128), motion_model="camera", max_displacement=0.1)[1] >= 14


def test_urban_scenes_have_strong_verticals_and_are_a_photo_source(tmp_path):
    from stablemotion.data.synth import resolve_photos, urban_scene

    a = urban_scene(np.random.default_rng(2), (96, 128))
    assert a.dtype == np.uint8 and a.shape == (96, 128, 3)
    assert np.array_equal(a, urban_scene(np.random.default_rng(2), (96, 128)))
    grey = a.astype(np.float64).mean(-1)
    gx, gy = np.abs(np.diff(grey, axis=1)).mean(), np.abs(np.diff(grey, axis=0)).mean()
    assert gx > 1.0 and gy > 1.0  # structure in both directions (façade edges, window rows)
    assert resolve_photos("urban*2+procedural") == ["urban", "urban", "procedural"]
    names = write_rolling_shutter_dataset(tmp_path, 2, size=(32, 48), photos="urban", motion_model="camera",
                                          workers=1)
    assert len(names) == 2 and len(list((tmp_path / "train" / "npz").iterdir())) == 2


def test_panorama_style_has_stitcher_like_outlines_and_exact_flow():
    from stablemotion.data.synth import panorama_region

    rng = np.random.default_rng(11)
    empties = []
    for _ in range(6):
        region = panorama_region(rng, 96, 128)
        assert region.shape == (96, 128) and set(np.unique(region)) <= {0, 255}
        # The union's bounding box is the canvas: content touches all four sides.
        assert region[0].any() and region[-1].any() and region[:, 0].any() and region[:, -1].any()
        empties.append(1 - region.mean() / 255)
    assert 0.01 < np.mean(empties) < 0.35
    photo = random_photo_crop(load_image(bundled_photo_paths()[0]), (96, 128), np.random.default_rng(0),
                              prefilter_sigma=0.7)
    s = make_rectangling_sample(photo, np.random.default_rng(3), rows=12, cols=16, style="panorama")
    assert 0.0 < 1 - s.mask.mean() / 255 < 0.4
    rewarped = warp(_chw(s.input).double(), _chw(s.flow), padding="border")
    assert _psnr(rewarped, _chw(s.gt)) > 30.0


def test_photo_pools_are_photo_sources(monkeypatch, tmp_path):
    import stablemotion.data.synth as synth
    import stablemotion.data.synthesis.photos as photos

    files = [str(tmp_path / f"p{i}.jpg") for i in range(3)]
    monkeypatch.setattr(photos, "resolve_pool", lambda name: files[:2] if name == "mypool-train" else None)
    assert synth.resolve_photos("mypool-train*2+procedural") == files[:2] * 2 + ["procedural"]
    with pytest.raises(ValueError, match="neither a folder nor one of"):
        synth.resolve_photos("nopool")


# --------------------------------------------------------------------------- rotation and lens correction
def _rewarp_psnr(s) -> float:
    rewarped = warp(_chw(s.input).double(), _chw(s.flow), padding="border")
    return _psnr(rewarped.round().clamp(0, 255), _chw(s.gt))


def _inside(flow: np.ndarray) -> bool:
    h, w = flow.shape[:2]
    gy, gx = np.mgrid[0:h, 0:w]
    x, y = gx + flow[..., 0], gy + flow[..., 1]
    return bool((x >= -1e-3).all() and (x <= w - 1 + 1e-3).all() and (y >= -1e-3).all() and (y <= h - 1 + 1e-3).all())


@pytest.mark.parametrize("task", ["rotation", "lens"])
@pytest.mark.parametrize("index", [0, 1, 2])
def test_new_tasks_have_exact_flows_inside_the_frame(task, index):
    from stablemotion.data.synth import make_sample

    s = make_sample(task, 4, index, (72, 96), None)
    assert s.input.shape == s.gt.shape == (72, 96, 3) and s.input.dtype == s.gt.dtype == np.uint8
    assert s.flow.shape == (72, 96, 2) and s.flow.dtype == np.float32
    assert _rewarp_psnr(s) > 30.0  # gt(p) = input(p + flow(p))
    assert _rewarp_psnr(s) > _psnr(_chw(s.input).double(), _chw(s.gt)) + 5  # and the warp is not the identity
    assert _inside(s.flow)  # every gt pixel comes from the input: no empty corner in the target


@pytest.mark.parametrize("task", ["rotation", "lens"])
def test_new_tasks_inputs_have_no_empty_corners(task):
    """On an all-white photo any empty (black) area of input or gt would show."""
    from stablemotion.data.synth import make_lens_sample, make_rotation_sample

    white = np.full((300, 400, 3), 255, np.uint8)
    rng = np.random.default_rng(0)
    for _ in range(3):
        if task == "rotation":
            s = make_rotation_sample(white, rng, (60, 80), min_angle=10, max_angle=25)
        else:
            s = make_lens_sample(white, rng, (60, 80), min_strength=0.4, max_strength=0.6, centre_jitter=0.25)
        assert s.input.min() >= 250 and s.gt.min() >= 250


def test_rotation_sample_is_upright_in_the_centre_and_preserves_the_border():
    from stablemotion.data.synth import rotation_correction_map

    h, w, angle = 120, 160, 9.0
    src = rotation_correction_map((h, w), angle)
    c = np.array([(w - 1) / 2, (h - 1) / 2])
    theta = np.radians(-angle)
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    ys, xs = np.mgrid[50:70, 70:90]
    p = np.stack([xs, ys], -1).astype(np.float64)
    np.testing.assert_allclose(src[50:70, 70:90], c + (p - c) @ rot.T, atol=1e-9)  # rigid rotation back
    grid = np.stack(np.meshgrid(np.arange(w), np.arange(h)), -1)
    for edge in (np.s_[0, :], np.s_[-1, :], np.s_[:, 0], np.s_[:, -1]):
        np.testing.assert_allclose(src[edge], grid[edge], atol=1e-6)  # the border shows the input's border
    jac = np.linalg.det(np.stack([np.stack(np.gradient(src[..., k], axis=(1, 0)), -1) for k in range(2)], -2))
    assert jac.min() > 0.2  # one-to-one
    assert _inside(src - grid)
    with pytest.raises(ValueError, match="band"):
        rotation_correction_map((h, w), angle, band=0.1)


def test_new_tasks_respect_their_parameter_bounds():
    from stablemotion.data.synth import make_lens_sample, make_rotation_sample

    photo = np.random.default_rng(0).integers(0, 255, (200, 260, 3)).astype(np.uint8)
    rng = np.random.default_rng(1)
    angles = [make_rotation_sample(photo, rng, (24, 32), min_angle=3, max_angle=7).params["angle"] for _ in range(12)]
    assert all(3 <= abs(a) <= 7 for a in angles) and min(angles) < 0 < max(angles)
    lens = [make_lens_sample(photo, rng, (24, 32), min_strength=0.1, max_strength=0.2).params for _ in range(8)]
    assert all(0.1 <= p["strength"] <= 0.2 for p in lens)
    assert all(abs(p["centre"][0] - 15.5) <= 0.05 * 15.5 + 1e-9 for p in lens) and all(p["scale"] >= 1.0 for p in lens)
    with pytest.raises(ValueError, match="max_angle"):
        make_rotation_sample(photo, rng, (24, 32), max_angle=40)
    with pytest.raises(ValueError, match="max_strength"):
        make_lens_sample(photo, rng, (24, 32), max_strength=0.9)


def test_lens_model_round_trips_and_is_barrel():
    from stablemotion.data.synth import LensParams

    lens = LensParams(0.3, (50.0, 40.0), 64.0)
    pts = np.random.default_rng(0).uniform(0, 100, (500, 2))
    np.testing.assert_allclose(lens.distort(lens.undistort(pts)), pts, atol=1e-9)
    r_in = np.linalg.norm(pts - lens.centre, axis=1)
    r_out = np.linalg.norm(lens.undistort(pts) - lens.centre, axis=1)
    assert (r_out >= r_in - 1e-12).all() and (r_out / np.maximum(r_in, 1e-9))[r_in > 30].min() > 1.05


@pytest.mark.parametrize("task", ["rotation", "lens"])
def test_new_task_datasets_are_deterministic_task_folders(tmp_path, task):
    from stablemotion.core.flow import read_flow
    from stablemotion.data import TaskFolderDataset
    from stablemotion.data.synth import make_sample, write_dataset

    names = write_dataset(task, tmp_path / "a", 3, size=(40, 56), ext="png", seed=2, workers=2)
    write_dataset(task, tmp_path / "b", 3, size=(40, 56), ext="png", seed=2, workers=1)
    assert names == ["00000", "00001", "00002"]
    for sub in ("input", "gt", "flow"):
        for a in sorted((tmp_path / "a" / "train" / sub).iterdir()):
            assert a.read_bytes() == (tmp_path / "b" / "train" / sub / a.name).read_bytes()
    s = make_sample(task, 2, 1, (40, 56), None)
    assert np.array_equal(load_image(tmp_path / "a" / "train" / "input" / "00001.png"), s.input)
    assert np.array_equal(read_flow(tmp_path / "a" / "train" / "flow" / "00001.npy"), s.flow)
    assert not np.array_equal(make_sample(task, 2, 2, (40, 56), None).flow, s.flow)
    ds = TaskFolderDataset(tmp_path / "a" / "train", task)
    assert len(ds) == 3 and ds[0]["image"].shape == (3, 40, 56) and ds[0]["flow"].shape == (2, 40, 56)
    with pytest.raises(FileExistsError):
        write_dataset(task, tmp_path / "a", 1, size=(40, 56))
    with pytest.raises(TypeError, match="unknown option"):
        write_dataset(task, tmp_path / "c", 1, size=(40, 56), white_fraction=0.5)


def test_make_sample_dispatches_through_the_registry():
    from stablemotion.data.synth import generator_names, make_sample, sample_rng

    assert generator_names() == ["rectangling", "rolling_shutter", "rotation", "lens"]
    a = make_sample("sir", 1, 0, (32, 48), None)  # the task name is an alias of its generator
    b = make_sample("rectangling", 1, 0, (32, 48), None)
    assert np.array_equal(a.input, b.input)
    assert sample_rng(0, 0, "rsc").random() == sample_rng(0, 0, "rolling-shutter").random()
    with pytest.raises(ValueError, match="task must be one of"):
        make_sample("nope", 0, 0, (32, 48), None)


@pytest.mark.parametrize("task", ["sir", "rsc", "rotation", "lens"])
def test_identity_samples_have_nothing_to_correct(task):
    from stablemotion.data.synthesis import make_sample
    from stablemotion.data.synthesis.writer import is_identity_sample

    idx = [i for i in range(40) if is_identity_sample(task, 3, i, 0.3)]
    other = [i for i in range(40) if not is_identity_sample(task, 3, i, 0.3)]
    assert 4 <= len(idx) <= 24  # about 30% of the indices
    s = make_sample(task, 3, idx[0], (24, 32), photos=["procedural"], identity_fraction=0.3)
    image, gt = (s.rs, s.gs) if task == "rsc" else (s.input, s.gt)
    assert (image == gt).all() and not s.flow.any()
    if task == "sir":
        assert (s.mask == 255).all()  # a full rectangle: no empty border
    if task == "rsc":
        assert s.valid.all()
    # the other samples are exactly those of a dataset made without the option
    plain = make_sample(task, 3, other[0], (24, 32), photos=["procedural"])
    mixed = make_sample(task, 3, other[0], (24, 32), photos=["procedural"], identity_fraction=0.3)
    np.testing.assert_array_equal(plain.flow, mixed.flow)
    assert plain.flow.any()
    with pytest.raises(ValueError, match="identity_fraction"):
        make_sample(task, 3, 0, (24, 32), photos=["procedural"], identity_fraction=1.5)


def test_synth_cli_writes_identity_samples(tmp_path):
    from stablemotion.cli import main
    from stablemotion.core.flow import read_flow

    assert main(["synth", "lens", str(tmp_path), "--num", "12", "--size", "24x32", "--photos", "procedural",
                 "--workers", "1", "--identity-fraction", "0.5"]) == 0
    flows = [read_flow(p) for p in sorted((tmp_path / "train" / "flow").glob("*.npy"))]
    zero = sum(not f.any() for f in flows)
    assert 2 <= zero <= 10
    with pytest.raises(SystemExit):
        main(["synth", "lens", str(tmp_path / "x"), "--identity-fraction", "2"])


def test_rotation_straighten_target_is_a_rigid_rotation_scaled_to_fill():
    from stablemotion.core.motion_models import fill_scale
    from stablemotion.data.synth import make_rotation_sample

    photo = np.random.default_rng(0).integers(0, 255, (300, 400, 3)).astype(np.uint8)
    h, w, angle = 60, 80, 8.0
    s = make_rotation_sample(photo, np.random.default_rng(1), (h, w), angle=angle)
    assert s.params["style"] == "straighten" and s.params["scale"] == pytest.approx(fill_scale((h, w), angle))
    grid = np.stack(np.meshgrid(np.arange(w), np.arange(h)), -1).astype(np.float64)
    c = np.array([(w - 1) / 2, (h - 1) / 2])
    theta = np.radians(-angle)
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    expected = c + s.params["scale"] * (grid - c) @ rot.T - grid  # M(p) - p, one rotation for the whole frame
    np.testing.assert_allclose(s.flow, expected, atol=1e-3)
    assert _inside(s.flow)  # scaled to fill: every output pixel comes from inside the input
    corners = np.array([s.flow[y, x] + grid[y, x] for y in (0, h - 1) for x in (0, w - 1)])
    gap = np.minimum.reduce([corners[:, 0], corners[:, 1], w - 1 - corners[:, 0], h - 1 - corners[:, 1]])
    assert gap.min() < 0.5  # the tightest scale: a corner touches the input's edge
    assert _rewarp_psnr(s) > 30
    blend = make_rotation_sample(photo, np.random.default_rng(1), (h, w), angle=angle, style="blend")
    assert blend.params["style"] == "blend" and "band" in blend.params
    with pytest.raises(ValueError, match="style"):
        make_rotation_sample(photo, np.random.default_rng(1), (h, w), style="crop")


def test_photo_sources_accept_a_folder_in_a_list(tmp_path):
    from PIL import Image

    from stablemotion.data.synthesis import resolve_photos

    for i in range(2):
        Image.fromarray(np.full((20, 30, 3), 40 * i, np.uint8)).save(tmp_path / f"{i}.jpg")
    got = resolve_photos(f"{tmp_path}*2+procedural")
    assert sorted(got[:4]) == sorted([str(tmp_path / "0.jpg"), str(tmp_path / "1.jpg")] * 2)
    assert got[4:] == ["procedural"]
