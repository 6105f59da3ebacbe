from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from stablemotion.cli import main
from stablemotion.flow import write_flow


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
