from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from stablemotion.cli import main
from stablemotion.core.flow import write_flow


def test_warp_command_translates_image(tmp_path, photo):
    Image.fromarray(photo).save(tmp_path / "in.png")
    flow = np.zeros((*photo.shape[:2], 2), np.float32)
    flow[..., 0] = 4.0
    write_flow(tmp_path / "f.flo", flow)
    assert main(["warp", str(tmp_path / "in.png"), str(tmp_path / "f.flo"), "--out", str(tmp_path / "o.png")]) == 0
    out = np.asarray(Image.open(tmp_path / "o.png"))
    assert np.array_equal(out[:, :-4], photo[:, 4:])
    # Never overwrite silently.
    rc = main(["warp", str(tmp_path / "in.png"), str(tmp_path / "f.flo"), "--out", str(tmp_path / "o.png")])
    assert rc == 2
    assert main(["warp", str(tmp_path / "in.png"), str(tmp_path / "f.flo"), "--out", str(tmp_path / "o.png"), "--force"]) == 0


def test_warp_command_errors_name_the_file(tmp_path, photo, capsys):
    Image.fromarray(photo).save(tmp_path / "in.png")
    write_flow(tmp_path / "small.npy", np.zeros((10, 10, 2), np.float32))
    assert main(["warp", str(tmp_path / "in.png"), str(tmp_path / "small.npy"), "--out", str(tmp_path / "o.png")]) == 2
    err = capsys.readouterr().err
    assert "small.npy" in err and "10x10" in err and "Traceback" not in err
    assert main(["warp", str(tmp_path / "none.png"), str(tmp_path / "small.npy"), "--out", str(tmp_path / "o.png")]) == 2
    assert "none.png" in capsys.readouterr().err


def test_flow_vis_and_score(tmp_path, photo, capsys):
    flow = np.random.default_rng(0).normal(size=(12, 16, 2)).astype(np.float32)
    write_flow(tmp_path / "f.npy", flow)
    assert main(["flow-vis", str(tmp_path / "f.npy"), "--out", str(tmp_path / "c.png")]) == 0
    assert np.asarray(Image.open(tmp_path / "c.png")).shape == (12, 16, 3)
    (tmp_path / "gt").mkdir()
    (tmp_path / "res").mkdir()
    Image.fromarray(photo).save(tmp_path / "gt" / "a.jpg")
    Image.fromarray(photo[::-1].copy()).save(tmp_path / "res" / "a.png")
    capsys.readouterr()
    assert main(["score", str(tmp_path / "res"), str(tmp_path / "gt"), "--csv", str(tmp_path / "s.csv")]) == 0
    assert "1 images" in capsys.readouterr().out
    assert (tmp_path / "s.csv").read_text().startswith("name,psnr,ssim")


def test_console_entry_point_runs():
    proc = subprocess.run([sys.executable, "-m", "stablemotion", "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and "stablemotion" in proc.stdout


@pytest.mark.parametrize("argv", [[], ["warp"]])
def test_usage_errors(argv):
    if argv:
        with pytest.raises(SystemExit):
            main(argv)
    else:
        assert main(argv) == 1


@pytest.mark.parametrize("radius", ["nan", "0", "-2", "inf"])
def test_flow_vis_refuses_a_bad_max_radius_in_one_line(tmp_path, capsys, radius):
    write_flow(tmp_path / "f.npy", np.ones((8, 8, 2), np.float32))
    with pytest.raises(SystemExit) as exit_info:  # refused while parsing (argparse's status 2)
        main(["flow-vis", str(tmp_path / "f.npy"), "--out", str(tmp_path / "c.png"), "--max-radius", radius])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("stablemotion flow-vis: error: argument --max-radius: must be a finite number of "
                          "pixels > 0") and err.count("\n") == 1
    assert not (tmp_path / "c.png").exists()


@pytest.mark.parametrize("value", [np.nan, np.inf, 1e30])
def test_flow_vis_refuses_non_finite_and_absurd_flows_naming_the_file(tmp_path, capsys, value):
    flow = np.random.default_rng(0).normal(size=(8, 10, 2)).astype(np.float32)
    flow[2, 3, 0] = value
    np.save(tmp_path / "bad.npy", flow)  # write_flow itself refuses non-finite flows
    assert main(["flow-vis", str(tmp_path / "bad.npy"), "--out", str(tmp_path / "c.png")]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "bad.npy") in err and err.count("\n") == 1 and "Traceback" not in err
    assert ("NaN or infinite" in err) if not np.isfinite(value) else ("up to 1e+30 px" in err)
    assert not (tmp_path / "c.png").exists()
    # A large but plausible displacement (inside 100x the flow's size) is drawn.
    flow[2, 3, 0] = 900.0
    np.save(tmp_path / "ok.npy", flow)
    assert main(["flow-vis", str(tmp_path / "ok.npy"), "--out", str(tmp_path / "c.png")]) == 0
    assert "max |flow| 900.00 px" in capsys.readouterr().out


def test_score_works_on_rectify_output_folder(tmp_path, photo, capsys):
    """rectify's own output folder (result + flow, mask and uncertainty side files) scores as is."""
    model = tmp_path / "model"
    assert main(["tiny-model", "--out", str(model)]) == 0
    img = np.ascontiguousarray(photo[:32, :48])
    Image.fromarray(img).save(tmp_path / "a.png")
    Image.fromarray(np.full(img.shape[:2], 255, np.uint8)).save(tmp_path / "mask.png")
    out = tmp_path / "out"
    rc = main(["rectify", str(tmp_path / "a.png"), "--model", str(model), "--out", str(out), "--mask",
               str(tmp_path / "mask.png"), "--save-mask", "--ensemble", "2", "--device", "cpu"])
    assert rc == 0, capsys.readouterr().err
    side = sorted(p.name for p in out.iterdir() if p.name != "a.png")
    assert {"a_flow.png", "a_mask.png"} <= set(side) and any(n.startswith("a_uncertainty") for n in side), side
    (tmp_path / "gt").mkdir()
    Image.fromarray(img).save(tmp_path / "gt" / "a.png")
    capsys.readouterr()
    assert main(["score", str(out), str(tmp_path / "gt")]) == 0, capsys.readouterr().err
    assert capsys.readouterr().out.startswith("1 images")


def test_warp_names_the_file_of_a_nan_flow(tmp_path, capsys) -> None:
    import numpy as np

    from stablemotion.cli import main
    from stablemotion.io.images import save_image

    save_image(np.zeros((8, 8, 3), np.uint8), tmp_path / "a.png")
    flow = np.zeros((8, 8, 2), np.float32)
    flow[2, 3] = np.nan
    np.save(tmp_path / "f.npy", flow)
    assert main(["warp", str(tmp_path / "a.png"), str(tmp_path / "f.npy"), "--out", str(tmp_path / "o.png")]) == 2
    err = capsys.readouterr().err
    assert "f.npy" in err and "non-finite" in err and not (tmp_path / "o.png").exists()
