"""``stablemotion synth`` and ``stablemotion label-flows`` on the command line."""

from __future__ import annotations

import numpy as np
import pytest

from stablemotion.cli import main
from stablemotion.core.flow import read_flow
from stablemotion.data import DIRDDataset, RSRealDataset


def test_synth_rectangling_then_label_flows(tmp_path, capsys):
    root = tmp_path / "dird"
    rc = main(["synth", "rectangling", str(root), "--num", "3", "--size", "96x128", "--ext", "png",
               "--workers", "1", "--seed", "5", "--mesh", "3x4"])
    assert rc == 0
    out = capsys.readouterr()
    assert "wrote 3 samples (00000..00002)" in out.out
    assert "synth rectangling" in out.err  # the progress bar
    ds = DIRDDataset(root)
    assert len(ds) == 3 and ds[0]["image"].shape == (3, 96, 128)

    flows = tmp_path / "flows"
    rc = main(["label-flows", str(root), "--out", str(flows), "--workers", "2"])
    assert rc == 0
    out = capsys.readouterr()
    assert "3 pairs (3 labelled, 0 already done)" in out.out and "PSNR" in out.out
    assert "labelling" in out.err
    assert len(list(flows.glob("*.npy"))) == 3
    epe = np.linalg.norm(read_flow(flows / "00001.npy") - read_flow(root / "training" / "flow" / "00001.npy"), axis=-1)
    assert epe.mean() < 1.5
    # The labels plug straight into the dataset.
    assert DIRDDataset(root, flow_dir=flows)[2]["flow"].shape == (2, 96, 128)

    rc = main(["label-flows", str(root), "--split", "training", "--out", str(flows), "--workers", "1"])
    assert rc == 0
    assert "3 pairs (0 labelled, 3 already done)" in capsys.readouterr().out

    # Refuses to overwrite without --force, with a one-line error.
    rc = main(["synth", "rectangling", str(root), "--num", "1", "--size", "96x128"])
    assert rc == 2
    assert "error:" in capsys.readouterr().err


def test_synth_rolling_shutter_test_layout(tmp_path, capsys):
    rc = main(["synth", "rolling-shutter", str(tmp_path), "--num", "2", "--size", "48x64", "--npz-size", "32x32",
               "--split", "test", "--workers", "1"])
    assert rc == 0
    assert f"{tmp_path}/test/npz" in capsys.readouterr().out
    ds = RSRealDataset(tmp_path, "test", full_res=True)
    s = ds[1]
    assert s["image"].shape == (3, 32, 32) and s["flow"].shape == (2, 32, 32) and s["gt_full"].shape == (3, 48, 64)


def test_cli_argument_errors(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["synth", "rectangling", str(tmp_path), "--size", "big"])
    assert "HxW" in capsys.readouterr().err
    rc = main(["label-flows", str(tmp_path / "missing"), "--out", str(tmp_path / "f")])
    assert rc == 2
    assert "no input/ and gt/ folders" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:  # refused while parsing (issue 26 item 11)
        main(["synth", "rolling-shutter", str(tmp_path), "--num", "0"])
    assert exit_info.value.code == 2
    assert "argument --num: must be an integer from 1" in capsys.readouterr().err


def test_building_the_command_line_loads_no_generator():
    """The synth kinds are added when ``synth`` is parsed: ``stablemotion --help`` and the other
    commands do not import the generators (numpy, OpenCV, torch)."""
    import subprocess
    import sys

    code = ("import sys; from stablemotion.cli import build_parser; build_parser(); "
            "print(sorted(m for m in ('torch', 'cv2', 'stablemotion.data.synthesis') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


def test_synth_help_and_extra_options(capsys):
    with pytest.raises(SystemExit):
        main(["synth", "rectangling", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--mesh" in out and "default 6x8 for inset, 12x16 for stitched" in out and "--npz-size" not in out
    with pytest.raises(SystemExit):
        main(["synth", "rolling-shutter", "--help"])
    out = capsys.readouterr().out
    assert "--npz-size" in out and "--full-res-jpg" in out and "--motion" in out
    with pytest.raises(SystemExit) as exit_info:
        main(["synth", "rectangling", "out", "--mesh", "0x4"])
    assert exit_info.value.code == 2 and "argument --mesh: --mesh must be" in capsys.readouterr().err
