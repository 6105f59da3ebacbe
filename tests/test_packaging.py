"""The built wheel carries what an installed user needs: the bundled models and the app page.

An editable install reads them from ``src/``, so only a real wheel shows a missing
``package-data`` entry.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytest.importorskip("setuptools", reason="building the wheel offline needs setuptools in this environment")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Built from a copy: setuptools writes build/ and *.egg-info next to the sources.
    src = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "-q", "-w", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (path,) = out.glob("stablemotion-*.whl")
    return path


def test_wheel_contains_bundled_models_and_app_page(wheel: Path) -> None:
    from stablemotion.model import BUNDLED_MODELS

    names = set(zipfile.ZipFile(wheel).namelist())
    assert "stablemotion/py.typed" in names
    assert "stablemotion/assets/app/index.html" in names
    for model in BUNDLED_MODELS.values():
        base = f"stablemotion/weights/{model}"
        for part in ("model_index.json", "unet/diffusion_pytorch_model.safetensors",
                     "vae/diffusion_pytorch_model.safetensors", "scheduler/scheduler_config.json"):
            assert f"{base}/{part}" in names, f"{base}/{part} missing from {wheel.name}"
    assert not any(n.startswith(("tests/", "benchmarks/", "runs/")) for n in names)


def test_bundled_model_loads_from_the_unpacked_wheel(wheel: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = (
        "import stablemotion, numpy as np, torch\n"
        f"assert stablemotion.__file__.startswith({str(site)!r}), stablemotion.__file__\n"
        "from stablemotion.model import load_bundled_pipeline\n"
        "pipe = load_bundled_pipeline('sir', torch.float32)\n"
        "pipe.set_progress_bar_config(disable=True)\n"
        "out = pipe(np.zeros((96, 128, 3), np.uint8), mask=np.ones((96, 128), np.float32), output_type='np',\n"
        "           generator=torch.Generator().manual_seed(0))\n"
        "assert out.flow.shape == (1, 96, 128, 2) and np.isfinite(out.flow).all()\n"
        "from importlib import resources\n"
        "assert '<html' in resources.files('stablemotion').joinpath('assets/app/index.html').read_text().lower()\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
