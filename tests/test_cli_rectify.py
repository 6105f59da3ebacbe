"""``stablemotion rectify`` / ``tiny-model`` / ``import-checkpoint`` end to end on CPU."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from stablemotion.cli import main
from stablemotion.core.flow import read_flow
from stablemotion.core.image_processing import derive_mask
from stablemotion.io.images import load_image, save_image
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


def _outputs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


def test_rectify_single_file_with_derived_mask(sir_model: Path, photo: np.ndarray, tmp_path: Path,
                                               capsys: pytest.CaptureFixture) -> None:
    img, _ = _stitched(photo)
    save_image(img, tmp_path / "in" / "pano.png")
    out = tmp_path / "out"
    code, text = _run(["rectify", str(tmp_path / "in" / "pano.png"), "--model", str(sir_model), "--task", "sir",
                       "--out", str(out), "--save-mask", "--save-flow"], capsys)
    assert code == 0, text
    assert "derived mask from the black border" in text
    assert _outputs(out) == ["pano.png", "pano_flow.npy", "pano_flow.png", "pano_mask.png"]
    assert load_image(out / "pano.png").shape == (40, 56, 3)  # full input resolution (model runs at 32x32)
    flow = read_flow(out / "pano_flow.npy")
    assert flow.shape == (40, 56, 2) and np.isfinite(flow).all()
    assert load_image(out / "pano_flow.png").shape == (40, 56, 3)
    assert np.array_equal(load_image(out / "pano_mask.png", mode="L"), derive_mask(img))
    # a rerun resumes: finished images are skipped, not overwritten and not an error
    before = (out / "pano_flow.npy").read_bytes()
    stamp = (out / "pano_flow.npy").stat().st_mtime_ns
    code, text = _run(["rectify", str(tmp_path / "in" / "pano.png"), "--model", str(sir_model), "--task", "sir",
                       "--out", str(out), "--save-mask", "--save-flow"], capsys)
    assert code == 0 and "skipped 1 already done" in text, text
    assert (out / "pano_flow.npy").stat().st_mtime_ns == stamp
    # other settings into the same folder are refused; --force redoes (same seed, same result)
    code, text = _run(["rectify", str(tmp_path / "in" / "pano.png"), "--model", str(sir_model), "--task", "sir",
                       "--out", str(out), "--save-mask", "--save-flow", "--seed", "3"], capsys)
    assert code == 2 and "other settings" in text and "seed" in text
    code, text = _run(["rectify", str(tmp_path / "in" / "pano.png"), "--model", str(sir_model), "--task", "sir",
                       "--out", str(out), "--save-mask", "--save-flow", "--force"], capsys)
    assert code == 0, text
    assert (out / "pano_flow.npy").read_bytes() == before
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == [".stablemotion-rectify.json"]


def test_rectify_folder_with_mask_folder_and_options(sir_model: Path, photo: np.ndarray, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    img, truth = _stitched(photo)
    for stem, im in (("a", img), ("b", img[:, ::-1].copy())):
        save_image(im, tmp_path / "in" / f"{stem}.jpg")
    save_image(truth, tmp_path / "masks" / "a.png")
    save_image(truth[:, ::-1].copy(), tmp_path / "masks" / "b.png")
    out = tmp_path / "out"
    code, text = _run(["rectify", str(tmp_path / "in"), "--model", str(sir_model), "--mask", str(tmp_path / "masks"),
                       "--out", str(out), "--save-flow", "--flow-format", "flo", "--ensemble", "3", "--save-mask",
                       "--processing-resolution", "16", "24", "--decode-scale", "2", "--ensemble-mode", "image"],
                      capsys)
    assert code == 0, text
    assert "derived" not in text
    for stem in ("a", "b"):
        assert read_flow(out / f"{stem}_flow.flo").shape == (40, 56, 2)
        assert np.load(out / f"{stem}_uncertainty.npy").shape == (40, 56)
        assert load_image(out / f"{stem}_uncertainty.png").shape == (40, 56, 3)
        assert np.array_equal(load_image(out / f"{stem}_mask.png", mode="L") > 127, (truth if stem == "a" else
                                                                                      truth[:, ::-1]) > 127)
    (tmp_path / "masks" / "b.png").unlink()
    code, text = _run(["rectify", str(tmp_path / "in"), "--model", str(sir_model), "--mask", str(tmp_path / "masks"),
                       "--out", str(tmp_path / "out2")], capsys)
    assert code == 2 and "no mask in" in text and "for b " in text
    assert not (tmp_path / "out2").exists() or not any((tmp_path / "out2").iterdir())


def test_rectify_rsc(rsc_model: Path, photo: np.ndarray, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    save_image(photo[:48, :64].copy(), tmp_path / "rs.png")
    code, text = _run(["rectify", str(tmp_path / "rs.png"), "--model", str(rsc_model), "--out", str(tmp_path / "o"),
                       "--dtype", "bf16", "--save-mask"], capsys)
    assert code == 0, text
    assert _outputs(tmp_path / "o") == ["rs.png", "rs_flow.png"]
    code, text = _run(["rectify", str(tmp_path / "rs.png"), "--model", str(rsc_model), "--out", str(tmp_path / "o2"),
                       "--mask", str(tmp_path / "rs.png")], capsys)
    assert code == 2 and "takes no mask" in text


@pytest.mark.parametrize("case", ["empty", "task", "missing", "released", "device", "out_is_input", "collision",
                                  "unwritable", "bad_index", "no_vae", "corrupt_weights"])
def test_rectify_errors_are_one_line(case: str, sir_model: Path, photo: np.ndarray, tmp_path: Path,
                                     capsys: pytest.CaptureFixture) -> None:
    import shutil

    img, truth = _stitched(photo)
    out = tmp_path / "out"
    args = ["--model", str(sir_model), "--out", str(out)]
    save_image(img, tmp_path / "in" / "x.png")
    x = str(tmp_path / "in" / "x.png")
    if case == "empty":
        (tmp_path / "empty").mkdir()
        argv, match = ["rectify", str(tmp_path / "empty"), *args], "no images"
    elif case == "task":
        argv, match = ["rectify", x, *args, "--task", "rsc"], "'sir' model"
    elif case == "missing":
        argv, match = ["rectify", str(tmp_path / "nope.png"), *args], "not found"
    elif case == "device":
        argv, match = ["rectify", x, *args, "--device", "tpu9"], "tpu9"
    elif case == "out_is_input":
        argv, match = ["rectify", str(tmp_path / "in"), "--model", str(sir_model), "--out", str(tmp_path / "in"),
                       "--force"], "input folder"
        out = tmp_path / "nothing"
    elif case == "collision":
        save_image(img, tmp_path / "in" / "x_flow.png")
        argv, match = ["rectify", str(tmp_path / "in"), *args], "would be written for both"
    elif case == "unwritable":
        (tmp_path / "file").write_text("")
        argv, match = ["rectify", x, "--model", str(sir_model), "--out", str(tmp_path / "file" / "sub")], "not writable"
        out = tmp_path / "nothing"
    elif case in ("bad_index", "no_vae", "corrupt_weights"):
        broken = tmp_path / "broken"
        shutil.copytree(sir_model, broken)
        if case == "bad_index":
            (broken / "model_index.json").write_text("{not json")
            match = "not valid JSON"
        elif case == "no_vae":
            shutil.rmtree(broken / "vae")
            match = "vae/ folder named in model_index.json is missing"
        else:
            weights = next((broken / "unet").glob("*.safetensors"))
            weights.write_bytes(weights.read_bytes()[:100])
            match = "cannot load --model"
        argv = ["rectify", x, "--model", str(broken), "--out", str(out)]
    else:
        tiny_components("sir")["unet"].save_pretrained(tmp_path / "rel" / "unet_ema")
        argv = ["rectify", x, "--model", str(tmp_path / "rel"), "--out", str(out)]
        match = "import-checkpoint"
    code, text = _run(argv, capsys)
    assert code == 2, text
    lines = [line for line in text.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and match in lines[0], text
    assert "Traceback" not in text
    assert not out.exists() or not _outputs(out)


@pytest.mark.parametrize("case", ["grey", "rgba", "mask_size", "bomb", "truncated"])
def test_rectify_batch_reports_bad_files_and_processes_the_rest(case: str, sir_model: Path, photo: np.ndarray,
                                                                tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """One bad file never stops a batch: the others are rectified, the bad one is reported, exit 1."""
    img, truth = _stitched(photo)
    inp = tmp_path / "in"
    save_image(img, inp / "good.png")
    extra: list[str] = []
    if case == "grey":
        save_image(img[..., 0].copy(), inp / "bad.png")
        match = "grey"
    elif case == "rgba":
        alpha = truth.copy()
        alpha[0, 0] = 0
        save_image(np.dstack([img, alpha]), inp / "bad.png")
        match = "alpha"
    elif case == "mask_size":
        save_image(img, inp / "bad.png")
        save_image(truth, tmp_path / "m" / "good.png")
        save_image(truth[:20], tmp_path / "m" / "bad.png")
        extra = ["--mask", str(tmp_path / "m")]
        match = "px but the image is"
    elif case == "bomb":  # a tiny PNG that declares a huge size: refused from its header
        from PIL import Image

        Image.new("1", (20000, 20000)).save(inp / "bad.png", optimize=True)
        assert (inp / "bad.png").stat().st_size < 100_000
        match = "megapixels"
    else:
        save_image(img, inp / "bad.png")
        data = (inp / "bad.png").read_bytes()
        (inp / "bad.png").write_bytes(data[: len(data) // 2])
        match = "cannot decode"
    out = tmp_path / "out"
    code, text = _run(["rectify", str(inp), "--model", str(sir_model), "--out", str(out), *extra], capsys)
    assert code == 1, text
    assert "rectified 1 image" in text and "1 failed" in text
    failed = [line for line in text.splitlines() if line.strip().startswith("failed bad:")]
    assert len(failed) == 1 and match in failed[0], text
    assert "Traceback" not in text
    assert (out / "good.png").is_file() and not (out / "bad.png").exists()
    # the rerun resumes: good is skipped, bad is tried (and reported) again
    code, text = _run(["rectify", str(inp), "--model", str(sir_model), "--out", str(out), *extra], capsys)
    assert code == 1 and "skipped 1 already done" in text, text


def test_rectify_input_rules(sir_model: Path, photo: np.ndarray, tmp_path: Path,
                             capsys: pytest.CaptureFixture) -> None:
    """EXIF orientation, --grey convert, opaque alpha, --mask alpha, litter removal."""
    from PIL import Image

    img, truth = _stitched(photo)
    inp = tmp_path / "in"
    inp.mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when shown
    Image.fromarray(img).save(inp / "turned.jpg", exif=exif, quality=95)
    Image.fromarray(img[..., 1].copy()).save(inp / "grey.png")
    Image.fromarray(np.dstack([img, np.full(img.shape[:2], 255, np.uint8)])).save(inp / "opaque.png")
    out = tmp_path / "out"
    out.mkdir()
    (out / ".turned.abc123xy.tmp.png").write_bytes(b"")  # left by a killed run
    code, text = _run(["rectify", str(inp), "--model", str(sir_model), "--out", str(out), "--grey", "convert"], capsys)
    assert code == 0, text
    assert load_image(out / "turned.png").shape == (56, 40, 3)  # shown upright: EXIF applied
    assert "grey (L) converted to RGB" in text and "fully opaque alpha channel dropped" in text
    assert "removed 1 temporary file" in text and not (out / ".turned.abc123xy.tmp.png").exists()
    # the alpha channel as the SIR mask
    Image.fromarray(np.dstack([img, truth])).save(tmp_path / "cut.png")
    code, text = _run(["rectify", str(tmp_path / "cut.png"), "--model", str(sir_model), "--out", str(tmp_path / "o2"),
                       "--mask", "alpha", "--save-mask"], capsys)
    assert code == 0, text
    assert np.array_equal(load_image(tmp_path / "o2" / "cut_mask.png", mode="L") > 127, truth > 127)


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
                       str(tmp_path / "o"), "--processing-resolution", "0", "--save-flow"], capsys)
    assert code == 0, text
    assert read_flow(tmp_path / "o" / "x_flow.npy").shape == (32, 32, 2)


def test_rectify_honest_about_what_it_cannot_do(sir_model: Path, photo: np.ndarray, tmp_path: Path,
                                                capsys: pytest.CaptureFixture) -> None:
    """No empty border: nothing to rectangle, the input is written unchanged; the bundled RSC model says it
    does not correct rolling shutter and what to use instead."""
    full = cv2.resize(np.clip(photo, 40, 215).astype(np.uint8), (56, 40), interpolation=cv2.INTER_AREA)
    save_image(full, tmp_path / "plain.png")
    code, text = _run(["rectify", str(tmp_path / "plain.png"), "--model", str(sir_model), "--out",
                       str(tmp_path / "o"), "--save-flow"], capsys)
    assert code == 0 and "no empty border found" in text, text
    assert np.array_equal(load_image(tmp_path / "o" / "plain.png"), full)
    assert not read_flow(tmp_path / "o" / "plain_flow.npy").any()
    code, text = _run(["rectify", str(tmp_path / "plain.png"), "--task", "rsc", "--out", str(tmp_path / "r")], capsys)
    assert code == 0, text
    notes = [line for line in text.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "does not correct rolling shutter" in notes[0] and "import-checkpoint" in notes[0]


def test_rectify_with_a_multi_task_model_runs_the_chosen_task(photo: np.ndarray, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture) -> None:
    model = tmp_path / "multi"
    assert main(["tiny-model", "--task", "sir", "rotation", "lens", "--out", str(model)]) == 0
    save_image(np.ascontiguousarray(photo[:40, :56]), tmp_path / "in" / "tilted.png")
    runs = {}
    for task in ("rotation", "lens"):
        out = tmp_path / f"out_{task}"
        code, text = _run(["rectify", str(tmp_path / "in"), "--model", str(model), "--task", task, "--out", str(out),
                           "--save-flow", "--always-correct"], capsys)  # a random model's flow is no correction
        assert code == 0, text
        runs[task] = read_flow(out / "tilted_flow.npy")
    assert not np.allclose(runs["rotation"], runs["lens"])  # each task's prompt
    # no --task: the model's default task (sir), which derives a mask; a task the model lacks is refused
    code, text = _run(["rectify", str(tmp_path / "in"), "--model", str(model), "--task", "rsc", "--out",
                       str(tmp_path / "o3")], capsys)
    assert code != 0 and "is a model of the tasks ['sir', 'rotation', 'lens']" in text
    code, text = _run(["rectify", str(tmp_path / "in"), "--model", str(model), "--task", "lens", "--mask",
                       str(tmp_path / "in" / "tilted.png"), "--out", str(tmp_path / "o4")], capsys)
    assert code != 0 and "takes no mask" in text
