"""``--dtype auto``: the rule per device, honest CPU detection, and the choice printed once and recorded."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from stablemotion.cli import main
from stablemotion.io.images import save_image
from stablemotion.model import precision
from stablemotion.model.loading import load_pipeline


def test_auto_follows_the_cpu_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    assert precision.resolve_dtype_name("auto", "cpu") == "bf16"
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    name, why = precision.auto_dtype_name("cpu")
    assert name == "fp32" and "without native bfloat16" in why
    assert precision.resolve_dtype_name("fp16", "cpu") == "fp16"
    with pytest.raises(ValueError, match="unknown dtype 'double'"):
        precision.resolve_dtype_name("double")


def test_cpu_detection_reads_the_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        monkeypatch.setattr(torch.cpu, name, lambda: False, raising=False)
    monkeypatch.setattr(precision.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(precision, "_cpu_flags", lambda: {"avx2", "fma"})
    assert precision.cpu_has_native_bf16() is False
    monkeypatch.setattr(precision, "_cpu_flags", lambda: {"avx2", "avx512_bf16"})
    assert precision.cpu_has_native_bf16() is True
    monkeypatch.setattr(precision.platform, "machine", lambda: "aarch64")
    monkeypatch.setattr(precision, "_cpu_flags", lambda: {"asimd", "bf16"})
    assert precision.cpu_has_native_bf16() is True


def test_python_helpers_take_auto(tmp_path: Path) -> None:
    from stablemotion.model.tiny import tiny_pipeline

    tiny_pipeline("rsc").save_pretrained(tmp_path / "m")
    want = precision.torch_dtype_of("auto", "cuda" if torch.cuda.is_available() else "cpu")
    assert load_pipeline(tmp_path / "m", progress=False).unet.dtype == want
    assert load_pipeline(tmp_path / "m", "bf16", progress=False).unet.dtype == torch.bfloat16


def test_rectify_prints_and_records_the_dtype_that_ran(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["tiny-model", "--task", "rsc", "--out", str(tmp_path / "m")]) == 0
    save_image(np.full((24, 32, 3), 80, np.uint8), tmp_path / "in" / "a.png")
    capsys.readouterr()
    assert main(["rectify", str(tmp_path / "in"), "--model", str(tmp_path / "m"), "--out", str(tmp_path / "o"),
                 "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    chosen, why = precision.auto_dtype_name("cpu")
    assert text.count("dtype auto -> ") == 1 and f"dtype auto -> {chosen}: {why}" in text, text
    manifest = json.loads((tmp_path / "o" / ".stablemotion-rectify.json").read_text())
    assert [s["dtype"] for s in manifest["settings"].values()] == [chosen]
