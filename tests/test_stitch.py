"""``stablemotion stitch`` and ``stablemotion.stitch`` (issue 24 item 3): OpenCV's stitch with the
stitcher's own mask, then the SIR rectangle; the failure paths are one line naming the photos."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

import stablemotion
from stablemotion.cli import main
from stablemotion.core.image_processing import derive_mask
from stablemotion.core.stitching import (
    PROJECTIONS,
    StitchError,
    check_images,
    compose,
    overlapping_views,
    register_images,
    stitch_images,
)
from stablemotion.data.synthesis.photos import bundled_photo_paths
from stablemotion.io.images import load_image, save_image
from stablemotion.model.stitch import StitchResult, stitched_path
from stablemotion.model.tiny import tiny_pipeline


def _photo(name: str = "chelsea.png") -> np.ndarray:
    return load_image(next(p for p in bundled_photo_paths("bundled") if p.name == name))


@pytest.fixture(scope="module")
def views() -> list[np.ndarray]:
    """Three overlapping views (about 240 x 250 px) of a held-out photo, each under a small homography."""
    return overlapping_views(_photo(), 3, np.random.default_rng(0))


@pytest.fixture(scope="module")
def view_files(views: list[np.ndarray], tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("views")
    for i, view in enumerate(views):
        save_image(view, folder / f"view_{i + 1}.png")
    return folder


@pytest.fixture(scope="module")
def sir_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tiny_sir")
    tiny_pipeline("sir").save_pretrained(folder)
    return folder


@pytest.mark.parametrize("mode", ["panorama", "scans"])
def test_compose_is_the_stitchers_own_composition(views: list[np.ndarray], mode: str) -> None:
    """Composed here (for the projection choice and the blender's mask) = ``composePanorama`` on the same cameras."""
    registration = register_images(views, mode=mode)
    status, reference = registration.stitcher.composePanorama()
    assert status == cv2.Stitcher_OK
    ours = compose(registration)
    assert ours.image.shape == reference.shape and ours.mask.shape == reference.shape[:2]
    assert np.array_equal(ours.image, reference[..., ::-1])
    assert ours.projection == ("spherical" if mode == "panorama" else "affine") and ours.used == (0, 1, 2)


def test_the_mask_comes_from_the_stitcher_not_from_pixel_values() -> None:
    """A night sky (black content along the top) next to the empty border: the pixel-value rule calls it
    empty, the stitcher's mask keeps it; where the mask says no photo landed, the stitch is black."""
    photo = _photo()
    photo[:80] = 0
    res = stitch_images(overlapping_views(photo, 3, np.random.default_rng(0)))
    assert not (res.image[~res.mask] > 0).any(), "the stitch has content where the mask says no photo landed"
    assert (~res.mask).sum() > 0.01 * res.mask.size  # an empty border to rectangle
    by_pixels = derive_mask(res.image) == 0  # the rule for stitches that come without a mask
    sky = res.mask & by_pixels
    assert sky.sum() > 0.1 * res.mask.size, "the black content should fool the pixel-value rule"
    ys = np.nonzero(sky)[0]
    assert ys.mean() < 0.4 * res.mask.shape[0]  # it is the sky at the top


def test_projections_change_the_stitch(views: list[np.ndarray]) -> None:
    registration = register_images(views)
    spherical, plane = compose(registration, "spherical"), compose(registration, "plane")
    cylindrical = compose(registration, "cylindrical")
    assert spherical.image.shape != plane.image.shape or not np.array_equal(spherical.mask, plane.mask)
    assert cylindrical.projection == "cylindrical" and cylindrical.mask.any()
    with pytest.raises(ValueError, match="'affine' is not available in panorama mode"):
        stitch_images(views, projection="affine")
    from stablemotion.cli.stitch import _STITCH_PROJECTIONS

    assert set(_STITCH_PROJECTIONS) == set(PROJECTIONS)


def test_python_api_stitches_paths_and_rectangles(view_files: Path) -> None:
    files = sorted(view_files.glob("*.png"))
    res = stablemotion.stitch(files, pipeline=tiny_pipeline("sir"), seed=1)
    assert isinstance(res, StitchResult) and res.names == [f.name for f in files] and res.left_out == []
    h, w = res.stitched.shape[:2]
    assert w > 1.5 * Image.open(files[0]).width
    assert res.image.shape == (h, w, 3) and res.flow.shape == (h, w, 2) and res.mask.shape == (h, w)
    assert res.rectified.mask is not None and np.array_equal(res.rectified.mask > 0, res.mask)
    assert not np.array_equal(res.image, res.stitched)  # the model moved pixels
    assert res.seconds >= res.stitch_seconds > 0 and res.rectangle_seconds > 0
    only = stablemotion.stitch(files, rectangle=False, mode="scans")
    assert only.image is None and only.flow is None and only.mode == "scans" and only.stitched.shape[2] == 3


def test_cli_writes_the_rectangle_and_the_raw_stitch(view_files: Path, sir_model: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out" / "pano.png"
    out.parent.mkdir()
    assert main(["stitch", str(view_files), "--out", str(out), "--model", str(sir_model), "--save-mask",
                 "--save-flow", "--device", "cpu", "--dtype", "fp32"]) == 0
    printed = capsys.readouterr().out
    assert "stitched 3 of 3 photos (panorama, spherical)" in printed
    stitched, rectangle = np.asarray(Image.open(stitched_path(out))), np.asarray(Image.open(out))
    mask = np.asarray(Image.open(tmp_path / "out" / "pano_mask.png"))
    flow = np.load(tmp_path / "out" / "pano_flow.npy")
    assert stitched.shape == rectangle.shape and stitched.shape[:2] == mask.shape == flow.shape[:2]
    assert set(np.unique(mask)) == {0, 255} and (stitched[mask == 0] == 0).all()
    assert sorted(p.name for p in out.parent.iterdir()) == ["pano.png", "pano_flow.npy", "pano_mask.png",
                                                            "pano_stitched.png"]  # no temporary litter


def test_cli_scans_mode_without_rectangle(view_files: Path, tmp_path: Path) -> None:
    out = tmp_path / "scan.png"
    assert main(["stitch", *map(str, sorted(view_files.glob("*.png"))), "--out", str(out), "--mode", "scans",
                 "--no-rectangle"]) == 0
    assert Image.open(out).size[0] > Image.open(view_files / "view_1.png").size[0] and not stitched_path(out).exists()


def test_stitch_views_writes_overlapping_photos_that_stitch(tmp_path: Path) -> None:
    assert main(["stitch-views", "--out", str(tmp_path / "v"), "--views", "4", "--seed", "3"]) == 0
    files = sorted((tmp_path / "v").glob("view_*.png"))
    assert len(files) == 4 and min(Image.open(files[0]).size) >= 250
    assert stitch_images([load_image(f) for f in files]).used == (0, 1, 2, 3)


def _error_line(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def test_photos_that_do_not_overlap_fail_in_one_line_naming_them(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    a, b = tmp_path / "cat.png", tmp_path / "cup.png"
    save_image(cv2.resize(_photo("chelsea.png"), (300, 200)), a)
    save_image(cv2.resize(_photo("coffee.png"), (300, 200)), b)
    err = _error_line(capsys, ["stitch", str(a), str(b), "--out", str(tmp_path / "p.png"), "--no-rectangle"])
    assert err.startswith("error: cannot stitch cat.png, cup.png: too little overlap"), err
    assert not (tmp_path / "p.png").exists()


def test_bad_inputs_fail_before_stitching(view_files: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    one = str(view_files / "view_1.png")
    err = _error_line(capsys, ["stitch", one, "--out", str(tmp_path / "p.png")])
    assert "cannot stitch view_1.png: need at least two overlapping photos, got 1" in err
    broken = tmp_path / "broken.png"
    broken.write_text("not an image")
    err = _error_line(capsys, ["stitch", one, str(broken), "--out", str(tmp_path / "p.png")])
    assert "broken.png" in err and "not a readable image" in err
    err = _error_line(capsys, ["stitch", one, str(tmp_path / "missing.jpg"), "--out", str(tmp_path / "p.png")])
    assert "missing.jpg does not exist" in err
    grey = np.zeros((40, 40), np.uint8)
    with pytest.raises(StitchError, match=r"mixed channel counts \(image 1: 3, image 2: 1\)"):
        check_images([np.zeros((40, 40, 3), np.uint8), grey])
    with pytest.raises(StitchError, match="image 2: expected a uint8 image, got uint16"):
        check_images([grey, grey.astype(np.uint16)])
