"""Datasets (DIR-D, RS-Real, per-task folders) and flow-consistent augmentation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from stablemotion.core.flow import warp, write_flow
from stablemotion.data import (
    Augment,
    DIRDDataset,
    RSRealDataset,
    TaskFolderDataset,
    array_to_image_tensor,
    hflip_sample,
    mask_to_tensor,
    resize_sample,
    vflip_sample,
)
from stablemotion.data.synth import (
    bundled_photo_paths,
    make_rectangling_sample,
    random_photo_crop,
    sample_rng,
)
from stablemotion.io.images import load_image, save_image
from stablemotion.tasks import SIR, TaskSpec

H, W = 24, 32


def _img(rng: np.random.Generator, h: int = H, w: int = W) -> np.ndarray:
    return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def _mask(h: int = H, w: int = W) -> np.ndarray:
    m = np.zeros((h, w, 3), np.uint8)
    m[2:-2, 3:-3] = 255
    return m


def _make_dird(root: Path, n: int = 3, split: str = "training", flows: bool = True, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    d = root / split
    for i in range(n):
        name = f"{i:05d}"
        save_image(_img(rng), d / "input" / f"{name}.png")
        save_image(_mask(), d / "mask" / f"{name}.png")
        save_image(_img(rng), d / "gt" / f"{name}.png")
        if flows:
            write_flow(d / "flow" / f"{name}.npy", rng.normal(0, 2, size=(H, W, 2)).astype(np.float32))
    return d


def _write_npz(path: Path, rng: np.random.Generator, h: int = H, w: int = W, **override: np.ndarray) -> None:
    arrays = {
        "condition": _img(rng, h, w),
        "out_flow": rng.normal(0, 1, size=(h, w, 2)).astype(np.float32),
        "gs": _img(rng, h, w),
    }
    arrays.update(override)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)


# --------------------------------------------------------------------------- DIR-D
def test_dird_loads_samples(tmp_path):
    d = _make_dird(tmp_path)
    ds = DIRDDataset(tmp_path, "training")
    assert len(ds) == 3 and ds.names == ["00000", "00001", "00002"] and ds.has_flow
    s = ds[1]
    assert set(s) == {"name", "image", "mask", "gt", "flow"} and s["name"] == "00001"
    assert s["image"].shape == (3, H, W) and s["gt"].shape == (3, H, W)
    assert s["mask"].shape == (1, H, W) and s["flow"].shape == (2, H, W)
    assert s["image"].dtype == torch.float32 and -1.0 <= float(s["image"].min()) and float(s["image"].max()) <= 1.0
    assert set(s["mask"].unique().tolist()) == {-1.0, 1.0}
    expected = load_image(d / "input" / "00001.png").astype(np.float32) / 127.5 - 1
    assert torch.allclose(s["image"], torch.from_numpy(expected).permute(2, 0, 1), atol=1e-6)
    flow = np.load(d / "flow" / "00001.npy")
    assert torch.allclose(s["flow"], torch.from_numpy(flow).permute(2, 0, 1))
    assert s["image"].shape[-2:] == s["flow"].shape[-2:]
    batch = next(iter(DataLoader(ds, batch_size=2)))
    assert batch["image"].shape == (2, 3, H, W) and batch["flow"].shape == (2, 2, H, W)
    assert batch["name"] == ["00000", "00001"]


def test_dird_split_folder_and_flow_options(tmp_path):
    d = _make_dird(tmp_path, split="testing", flows=False)
    ds = DIRDDataset(d)  # the split folder itself
    assert not ds.has_flow and "flow" not in ds[0]
    flows = tmp_path / "pseudo"
    for name in ds.names:
        write_flow(flows / f"{name}.npy", np.zeros((H, W, 2), np.float32))
    assert DIRDDataset(tmp_path, "testing", flow_dir=flows)[0]["flow"].abs().sum() == 0
    _make_dird(tmp_path / "other", flows=True)
    assert "flow" not in DIRDDataset(tmp_path / "other", flow_dir=False)[0]
    with pytest.raises(FileNotFoundError, match="split folder not found"):
        DIRDDataset(tmp_path, "training")


def test_dird_reports_missing_parts_by_name(tmp_path):
    d = _make_dird(tmp_path, n=4)
    (d / "mask" / "00002.png").unlink()
    (d / "flow" / "00003.npy").unlink()
    with pytest.raises(ValueError) as exc:
        DIRDDataset(tmp_path)
    msg = str(exc.value)
    assert "00002: missing mask" in msg and "00003: missing flow" in msg and "2 problems" in msg


def test_dird_reports_extra_files(tmp_path):
    d = _make_dird(tmp_path)
    write_flow(d / "flow" / "00099.npy", np.zeros((H, W, 2), np.float32))
    with pytest.raises(ValueError, match=r"extra flow file .*00099\.npy"):
        DIRDDataset(tmp_path)
    (d / "flow" / "00099.npy").unlink()
    save_image(_img(np.random.default_rng(1)), d / "gt" / "00042.png")
    with pytest.raises(ValueError, match="00042: missing image .*00042.png exists"):
        DIRDDataset(tmp_path)


def test_dird_reports_mis_sized_files(tmp_path):
    d = _make_dird(tmp_path)
    save_image(_img(np.random.default_rng(2), H + 8, W), d / "gt" / "00001.png")
    write_flow(d / "flow" / "00002.npy", np.zeros((H, W + 4, 2), np.float32))
    with pytest.raises(ValueError) as exc:
        DIRDDataset(tmp_path)
    msg = str(exc.value)
    assert "00001: sizes differ" in msg and f"gt {W}x{H + 8}" in msg
    assert "00002: sizes differ" in msg and f"flow {W + 4}x{H}" in msg
    # Without the up-front check the mismatch is still caught when the sample is read.
    ds = DIRDDataset(tmp_path, check_sizes=False)
    with pytest.raises(ValueError, match="00001"):
        ds[1]


def test_dird_missing_folder_and_empty(tmp_path):
    d = _make_dird(tmp_path, n=1)
    for p in (d / "gt").iterdir():
        p.unlink()
    (d / "gt").rmdir()
    with pytest.raises(FileNotFoundError, match="gt folder not found"):
        DIRDDataset(tmp_path)
    empty = tmp_path / "empty" / "training"
    for sub in ("input", "mask", "gt"):
        (empty / sub).mkdir(parents=True)
    with pytest.raises(ValueError, match="no images found"):
        DIRDDataset(tmp_path / "empty")


# --------------------------------------------------------------------------- per-task folders
def test_task_folder_dataset_follows_task_conditions(tmp_path):
    rng = np.random.default_rng(0)
    task = TaskSpec(name="edgefix", conditions=("image", "edges", "mask"), padding="zeros", resolution=(64, 64))
    for i in range(2):
        save_image(_img(rng), tmp_path / "image" / f"a{i}.jpg")
        save_image(_img(rng), tmp_path / "edges" / f"a{i}.png")
        save_image(_mask()[..., 0], tmp_path / "mask" / f"a{i}.png")
        save_image(_img(rng), tmp_path / "gt" / f"a{i}.png")
    ds = TaskFolderDataset(tmp_path, task)
    s = ds[0]
    assert [k for k in task.conditions if k in s] == list(task.conditions)
    assert s["edges"].shape == (3, H, W) and s["mask"].shape == (1, H, W) and "flow" not in s
    cond = torch.cat([s[k] for k in task.conditions])
    assert cond.shape == (7, H, W)
    # Condition-only set (inference): no target folder needed.
    assert "gt" not in TaskFolderDataset(tmp_path, task, target=None)[0]


def test_task_folder_dataset_accepts_dird_names(tmp_path):
    d = _make_dird(tmp_path, n=2)
    ds = TaskFolderDataset(d, SIR)  # input/ serves as the "image" condition
    s = ds[0]
    assert set(s) == {"name", "image", "mask", "gt", "flow"}
    ds2 = TaskFolderDataset(d, "rsc", folders={"image": d / "gt"}, flow_dir=False)
    assert torch.equal(ds2[0]["image"], ds2[0]["gt"])


# --------------------------------------------------------------------------- RS-Real
def test_rs_real_loads_npz_and_test_layout(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(3):
        _write_npz(tmp_path / "test" / "npz" / f"{i:03d}.npz", rng)
        save_image(_img(rng, 2 * H, 2 * W), tmp_path / "test" / "jpg" / f"{i:03d}.jpg")
        save_image(_img(rng, 2 * H, 2 * W), tmp_path / "test" / "jpg_gt" / f"{i:03d}.jpg")
    ds = RSRealDataset(tmp_path, "test")
    assert len(ds) == 3
    s = ds[2]
    assert set(s) == {"name", "image", "gt", "flow"} and s["name"] == "002"
    with np.load(tmp_path / "test" / "npz" / "002.npz") as z:
        assert torch.allclose(s["flow"], torch.from_numpy(z["out_flow"]).permute(2, 0, 1))
        assert torch.allclose(s["image"], torch.from_numpy(z["condition"]).permute(2, 0, 1).float() / 127.5 - 1)
    full = RSRealDataset(tmp_path / "test", full_res=True)[0]
    assert full["image_full"].shape == (3, 2 * H, 2 * W) and full["gt_full"].shape == (3, 2 * H, 2 * W)
    batch = next(iter(DataLoader(ds, batch_size=3)))
    assert batch["image"].shape == (3, 3, H, W)


def test_rs_real_flat_folder_float_images_and_chw_flow(tmp_path):
    rng = np.random.default_rng(1)
    gs = rng.random((H, W, 3)).astype(np.float32)  # float in [0, 1]
    _write_npz(tmp_path / "a.npz", rng, gs=gs, out_flow=np.ones((2, H, W), np.float32))
    s = RSRealDataset(tmp_path)[0]
    assert torch.allclose(s["gt"], torch.from_numpy(gs).permute(2, 0, 1) * 2 - 1, atol=1e-6)
    assert s["flow"].shape == (2, H, W) and float(s["flow"].mean()) == 1.0


def test_rs_real_validation_errors(tmp_path):
    rng = np.random.default_rng(2)
    np.savez(tmp_path / "bad_keys.npz", condition=_img(rng), gs=_img(rng))
    _write_npz(tmp_path / "bad_size.npz", rng, out_flow=np.zeros((H, W + 2, 2), np.float32))
    (tmp_path / "broken.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError) as exc:
        RSRealDataset(tmp_path)
    msg = str(exc.value)
    assert "bad_keys.npz: missing key(s) out_flow" in msg
    assert "bad_size.npz: sizes differ" in msg
    assert "broken.npz as an .npz archive" in msg or "broken.npz" in msg
    with pytest.raises(ValueError, match="no .npz files"):
        RSRealDataset(_empty(tmp_path))
    good = tmp_path / "good" / "test"
    _write_npz(good / "npz" / "001.npz", rng)
    (good / "jpg").mkdir()
    (good / "jpg_gt").mkdir()
    with pytest.raises(ValueError, match="001: missing image_full"):
        RSRealDataset(good, full_res=True)


def _empty(tmp_path: Path) -> Path:
    d = tmp_path / "nothing_here"
    d.mkdir(exist_ok=True)
    return d


def test_array_conversions():
    m = np.zeros((4, 5, 3), np.uint8)
    m[1:3, 1:4] = 200
    t = mask_to_tensor(m)
    assert t.shape == (1, 4, 5) and float(t.sum()) == 6 * 1 - 14 * 1
    img = array_to_image_tensor(np.full((4, 5), 255, np.uint8))
    assert img.shape == (3, 4, 5) and float(img.min()) == 1.0
    assert float(array_to_image_tensor(np.full((4, 5, 3), -0.5, np.float32)).mean()) == -0.5
    assert float(array_to_image_tensor(np.full((4, 5, 3), 127.5, np.float32)).mean()) == 0.0
    with pytest.raises(ValueError, match="image"):
        array_to_image_tensor(np.zeros((4, 5, 7), np.uint8))


# --------------------------------------------------------------------------- augmentation
def _synthetic_sample(size=(96, 128), seed=0) -> dict:
    rng = sample_rng(seed, 0, "rectangling")
    photo = random_photo_crop(load_image(bundled_photo_paths()[seed]), size, rng, prefilter_sigma=0.7)
    s = make_rectangling_sample(photo, rng)
    to_t = lambda a: torch.from_numpy(a).permute(2, 0, 1).float() / 127.5 - 1  # noqa: E731
    return {
        "name": "x",
        "image": to_t(s.input),
        "mask": mask_to_tensor(s.mask),
        "gt": to_t(s.gt),
        "flow": torch.from_numpy(s.flow).permute(2, 0, 1).contiguous(),
    }


def _rewarp_psnr(sample: dict) -> float:
    out = warp(sample["image"].double(), sample["flow"], padding="border")
    mse = ((out - sample["gt"].double()) ** 2).mean()
    return float(10 * torch.log10(4.0 / mse))


def test_hflip_and_vflip_commute_with_warp():
    rng = torch.Generator().manual_seed(0)
    sample = {"name": "r", "image": torch.rand(3, 12, 16, generator=rng), "flow": torch.randn(2, 12, 16, generator=rng) * 3}
    sample["gt"] = warp(sample["image"], sample["flow"])
    for flip in (hflip_sample, vflip_sample):
        f = flip(sample)
        assert torch.allclose(warp(f["image"], f["flow"]), f["gt"], atol=1e-5)
        assert torch.equal(flip(f)["flow"], sample["flow"])  # an involution
    f = hflip_sample(sample)
    assert torch.equal(f["flow"][0], -sample["flow"][0].flip(-1))
    assert torch.equal(f["flow"][1], sample["flow"][1].flip(-1))


def test_augmentations_keep_synthetic_flow_exact():
    sample = _synthetic_sample()
    base = _rewarp_psnr(sample)
    assert base > 35.0
    assert _rewarp_psnr(hflip_sample(sample)) == pytest.approx(base, abs=0.05)
    assert _rewarp_psnr(vflip_sample(sample)) == pytest.approx(base, abs=0.05)
    small = resize_sample(sample, (48, 64))
    assert small["image"].shape == (3, 48, 64) and small["flow"].shape == (2, 48, 64)
    assert set(small["mask"].unique().tolist()) <= {-1.0, 1.0}
    assert float(small["flow"].abs().max()) == pytest.approx(float(sample["flow"].abs().max()) / 2, rel=0.15)
    assert _rewarp_psnr(small) > 30.0
    # A wrongly scaled flow (not rescaled on resize) would fail that by far.
    wrong = dict(small, flow=small["flow"] * 2)
    assert _rewarp_psnr(wrong) < _rewarp_psnr(small) - 5.0


def test_augment_transform_is_random_but_reproducible(tmp_path):
    sample = _synthetic_sample(size=(48, 64), seed=1)
    always = Augment(size=(32, 48), hflip=1.0)(sample)
    assert always["image"].shape == (3, 32, 48)
    assert torch.allclose(always["image"], hflip_sample(resize_sample(sample, (32, 48)))["image"])
    flips = [
        torch.equal(Augment(hflip=0.5, generator=torch.Generator().manual_seed(s))(sample)["image"], sample["image"])
        for s in range(20)
    ]
    assert 0 < sum(flips) < 20
    a = Augment(generator=torch.Generator().manual_seed(3))
    b = Augment(generator=torch.Generator().manual_seed(3))
    assert all(torch.equal(a(sample)["flow"], b(sample)["flow"]) for _ in range(5))
    with pytest.raises(ValueError, match="probability"):
        Augment(hflip=1.5)
    d = _make_dird(tmp_path)
    ds = DIRDDataset(tmp_path, transform=Augment(size=(16, 16), hflip=1.0))
    s = ds[0]
    assert s["image"].shape == (3, 16, 16) and s["flow"].shape == (2, 16, 16)
    raw = np.load(d / "flow" / "00000.npy")
    assert float(s["flow"][0].abs().max()) <= float(np.abs(raw[..., 0]).max()) * 16 / W + 1e-4
