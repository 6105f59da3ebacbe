"""``stablemotion rectify`` / ``tiny-model`` / ``import-checkpoint`` end to end on CPU."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from stablemotion._io import load_image, save_image
from stablemotion.cli import main
from stablemotion.flow import read_flow
from stablemotion.image_processing import derive_mask
from stablemotion.model import save_tiny_base, tiny_components


@pytest.fixture(scope="module")
def sir_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("models") / "sir"
    assert main(["tiny-model", "--task", "sir", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def rsc_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("models") / "rsc"
    assert main(["tiny-model", "--task", "rsc", "--out", str(out)]) == 0
    return out


def _stitched(photo: np.ndarray, h: int = 40, w: int = 56) -> tuple[np.ndarray, np.ndarray]:
    img = cv2.resize(np.clip(photo, 40, 215).astype(np.uint8), (w, h), interpolation=cv2.INTER_AREA)
    truth = np.zeros((h, w), np.uint8)
    cv2.fillPoly(truth, [np.array([[3, 2], [w - 6, 0], [w - 1, h - 4], [1, h - 7]], np.int32)], 255)
    return np.where(truth[..., None] > 0, img, 0).astype(np.uint8), truth


def _run(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.err + captured.out


def test_rectify_single_file_with_derived_mask(sir_model: Path, photo: np.ndarray, tmp_path: Path,
                                               capsys: pytest.CaptureFixture) -> None:
    img, _ = _stitched(photo)
    save_image(img, tmp_path / "in" / "pano.png")
    out = tmp_path / "out"
    code, text = _run(["rectify", str(tmp_path / "in" / "pano.png"), "--model", str(sir_model), "--task", "sir",
                       "--out", str(out), "--save-mask"], capsys)
    assert code == 0, text
    assert "derived mask from the black border" in text
    assert sorted(p.name for p in out.iterdir()) == ["pano.png", "pano_flow.npy", "pano_flow.png", "pano_mask.png"]
    assert load_image(out / "pano.png").shape == (40, 56, 3)  # full input resolution (model runs at 32x32)
    flow = read_flow(out / "pano_flow.npy")
    assert flow.shape == (40, 56, 2) and np.isfinite(flow).all()
    assert load_image(out / "pano_flow.png").shape == (40, 56, 3)
    assert np.array_equal(load_image(out / "pano_mask.png", mode="L"), derive_mask(img))
    # same seed, same result; existing outputs are never overwritten silently
    before = (out / "pano_flow.npy").read_bytes()
    code, text = _run(["rectify", str(tmp_path / "in" / "pano.png"), "--model", str(sir_model),
                       "--out", str(out), "--save-mask"], capsys)
    assert code == 2 and "already exist" in text and "--force" in text
    assert (out / "pano_flow.npy").read_bytes() == before
    code, text = _run(["rectify", str(tmp_path / "in" / "pano.png"), "--model", str(sir_model),
                       "--out", str(out), "--save-mask", "--force"], capsys)
    assert code == 0, text
    assert np.array_equal(read_flow(out / "pano_flow.npy"), np.load(_bytes_file(tmp_path, before)))
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left


def _bytes_file(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "before.npy"
    path.write_bytes(data)
    return path


def test_rectify_folder_with_mask_folder_and_options(sir_model: Path, photo: np.ndarray, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    img, truth = _stitched(photo)
    for stem, im in (("a", img), ("b", img[:, ::-1].copy())):
        save_image(im, tmp_path / "in" / f"{stem}.jpg")
    save_image(truth, tmp_path / "masks" / "a.png")
    save_image(truth[:, ::-1].copy(), tmp_path / "masks" / "b.png")
    out = tmp_path / "out"
    code, text = _run(["rectify", str(tmp_path / "in"), "--model", str(sir_model), "--mask", str(tmp_path / "masks"),
                       "--out", str(out), "--flow-format", "flo", "--ensemble", "3", "--save-mask",
                       "--processing-resolution", "16", "24"], capsys)
    assert code == 0, text
    assert "derived" not in text
    for stem in ("a", "b"):
        assert read_flow(out / f"{stem}_flow.flo").shape == (40, 56, 2)
        assert np.load(out / f"{stem}_uncertainty.npy").shape == (40, 56)
        assert np.array_equal(load_image(out / f"{stem}_mask.png", mode="L") > 127, (truth if stem == "a" else
                                                                                      truth[:, ::-1]) > 127)
    (tmp_path / "masks" / "b.png").unlink()
    code, text = _run(["rectify", str(tmp_path / "in"), "--model", str(sir_model), "--mask", str(tmp_path / "masks"),
                       "--out", str(tmp_path / "out2")], capsys)
    assert code == 2 and "no mask in" in text and "for b " in text
    assert not (tmp_path / "out2").exists()


def test_rectify_rsc(rsc_model: Path, photo: np.ndarray, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    save_image(photo[:48, :64].copy(), tmp_path / "rs.png")
    code, text = _run(["rectify", str(tmp_path / "rs.png"), "--model", str(rsc_model), "--out", str(tmp_path / "o"),
                       "--dtype", "bf16", "--save-mask"], capsys)
    assert code == 0, text
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["rs.png", "rs_flow.npy", "rs_flow.png"]
    code, text = _run(["rectify", str(tmp_path / "rs.png"), "--model", str(rsc_model), "--out", str(tmp_path / "o2"),
                       "--mask", str(tmp_path / "rs.png")], capsys)
    assert code == 2 and "takes no mask" in text


@pytest.mark.parametrize("case", ["grey", "rgba", "empty", "task", "mask_size", "missing", "released"])
def test_rectify_errors_are_one_line(case: str, sir_model: Path, photo: np.ndarray, tmp_path: Path,
                                     capsys: pytest.CaptureFixture) -> None:
    img, truth = _stitched(photo)
    args = ["--model", str(sir_model), "--out", str(tmp_path / "out")]
    if case == "grey":
        save_image(img[..., 0].copy(), tmp_path / "g.png")
        argv, match = ["rectify", str(tmp_path / "g.png"), *args], "grey"
    elif case == "rgba":
        save_image(np.dstack([img, truth]), tmp_path / "t.png")
        argv, match = ["rectify", str(tmp_path / "t.png"), *args], "RGBA"
    elif case == "empty":
        (tmp_path / "empty").mkdir()
        argv, match = ["rectify", str(tmp_path / "empty"), *args], "no images"
    elif case == "task":
        save_image(img, tmp_path / "x.png")
        argv, match = ["rectify", str(tmp_path / "x.png"), *args, "--task", "rsc"], "'sir' model"
    elif case == "mask_size":
        save_image(img, tmp_path / "x.png")
        save_image(truth[:20], tmp_path / "m.png")
        argv, match = ["rectify", str(tmp_path / "x.png"), *args, "--mask", str(tmp_path / "m.png")], "px but the image is"
    elif case == "missing":
        argv, match = ["rectify", str(tmp_path / "nope.png"), *args], "not found"
    else:
        tiny_components("sir")["unet"].save_pretrained(tmp_path / "rel" / "unet_ema")
        save_image(img, tmp_path / "x.png")
        argv = ["rectify", str(tmp_path / "x.png"), "--model", str(tmp_path / "rel"), "--out", str(tmp_path / "out")]
        match = "import-checkpoint"
    code, text = _run(argv, capsys)
    assert code == 2
    lines = [line for line in text.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and match in lines[0], text
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_import_checkpoint_command_then_rectify(photo: np.ndarray, tmp_path: Path,
                                                capsys: pytest.CaptureFixture) -> None:
    base = save_tiny_base(tmp_path / "sd2")
    released = tmp_path / "hub" / "StableMotion_SIR"
    comps = tiny_components("sir", seed=4)
    comps["unet"].save_pretrained(released / "unet_ema")
    from accelerate import Accelerator

    Accelerator(cpu=True).save_model(comps["vae"], released / "vae")  # the authors' layout: no config.json
    code, text = _run(["import-checkpoint", str(tmp_path / "hub"), "--subfolder", "StableMotion_SIR", "--base",
                       str(base), "--out", str(tmp_path / "pipe"), "--offline"], capsys)
    assert code == 0, text
    assert "vae: " in text and "model.safetensors (accelerate layout" in text, text
    assert "unet: " in text and "in_channels 12" in text and "scheduler: DDIM" in text and "text embedding:" in text
    code, text = _run(["import-checkpoint", str(released), "--base", str(base), "--out", str(tmp_path / "pipe"),
                       "--task", "rsc"], capsys)
    assert code == 2 and "already exists" in text
    code, text = _run(["import-checkpoint", str(released), "--base", str(base), "--out", str(tmp_path / "p2"),
                       "--task", "rsc"], capsys)
    assert code == 2 and "wrong checkpoint" in text
    img, _ = _stitched(photo, 32, 32)
    save_image(img, tmp_path / "x.png")
    code, text = _run(["rectify", str(tmp_path / "x.png"), "--model", str(tmp_path / "pipe"), "--out",
                       str(tmp_path / "o"), "--processing-resolution", "0"], capsys)
    assert code == 0, text
    assert read_flow(tmp_path / "o" / "x_flow.npy").shape == (32, 32, 2)
