"""``stablemotion rectify --engine ray`` and ``stablemotion.batch.rectify_dataset`` on a local Ray cluster
started here (2 CPUs, a tiny random-weight model): the same files as the local engine, a Parquet manifest
that records every image, reruns that skip what is done, a killed run that resumes, bad images as rows,
and no Ray process left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'stablemotion[ray]')")

from stablemotion.batch import MANIFEST_FILE, read_manifest, rectify_dataset  # noqa: E402
from stablemotion.cli import main  # noqa: E402
from stablemotion.io.images import save_image  # noqa: E402
from stablemotion.model.rectify_files import FileOptions  # noqa: E402

N_IMAGES = 12
COMMON = ["--save-flow", "--always-correct", "--max-work-pixels", "0"]


def _ray_pids(session: str) -> set[int]:
    """Processes whose command line names this cluster's session folder (raylet, GCS, workers ...)."""
    pids = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if session in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    pids.add(int(entry.name))
            except OSError:
                continue
    return pids


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """A local Ray cluster for the module -> its address; afterwards, none of its processes is left."""
    ctx = ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="warning")
    session = Path(ray._private.worker.global_worker.node.get_session_dir_path()).name
    try:
        yield ctx.address_info["address"]
    finally:
        ray.shutdown()
    deadline = time.monotonic() + 20
    while (left := _ray_pids(session) - {os.getpid()}) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left, f"Ray processes left after shutdown: {sorted(left)}"


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(model, input folder, the local engine's output folder)."""
    root = tmp_path_factory.mktemp("ray")
    assert main(["tiny-model", "--task", "rsc", "--out", str(root / "model")]) == 0
    rng = np.random.default_rng(0)
    for i in range(N_IMAGES):
        image = rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)
        save_image(image, root / "in" / f"im{i:02d}.png")
    assert main(["rectify", str(root / "in"), "--model", str(root / "model"), "--out", str(root / "local"),
                 "--dtype", "fp32", *COMMON]) == 0
    return root / "model", root / "in", root / "local"


def _same_files(a: Path, b: Path, hidden: bool = False) -> None:
    names = sorted(p.name for p in a.iterdir() if not p.name.startswith("."))
    assert names == sorted(p.name for p in b.iterdir() if not p.name.startswith(".")), (a, b)
    different = [n for n in names if (a / n).read_bytes() != (b / n).read_bytes()]
    assert not different, f"files that differ between the engines: {different}"


def test_cli_ray_engine_matches_local_and_records_rows(cluster: str, data: tuple[Path, Path, Path], tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    model, inputs, local = data
    # a file whose header passes the checks but whose pixels are cut short: it fails in the decode task
    bad = tmp_path / "in"
    bad.mkdir()
    for p in inputs.iterdir():
        (bad / p.name).write_bytes(p.read_bytes())
    whole = (inputs / "im00.png").read_bytes()
    (bad / "cut.png").write_bytes(whole[: len(whole) // 2])
    out = tmp_path / "out"
    argv = ["rectify", str(bad), "--model", str(model), "--out", str(out), "--dtype", "fp32", "--engine", "ray",
            "--actors", "2", *COMMON]
    code = main(argv)
    text = capsys.readouterr().out
    assert code == 1, text  # one failure, the rest done
    assert "cut: failed" in text or "failed cut" in text, text
    (out / "cut.png").unlink(missing_ok=True)
    _same_files(local, out)
    rows = {Path(r["input"]).stem: r for r in read_manifest(out / MANIFEST_FILE)}
    assert set(rows) == {*(f"im{i:02d}" for i in range(N_IMAGES)), "cut"}
    assert rows["cut"]["status"] == "failed" and "decode" in rows["cut"]["error"]
    assert all(rows[s]["status"] == "done" and rows[s]["task"] == "rsc" and rows[s]["seconds"] > 0
               for s in rows if s != "cut")
    assert rows["im00"]["output"] == str(out / "im00.png") and '"seed": 0' in rows["im00"]["settings"]
    # a rerun skips what is done (the done rows are kept) and only retries the bad file
    stamp = (out / "im00.png").stat().st_mtime_ns
    code = main(argv)
    text = capsys.readouterr().out
    assert code == 1 and f"skipped {N_IMAGES} already done" in text, text
    assert (out / "im00.png").stat().st_mtime_ns == stamp
    assert {r["status"] for r in read_manifest(out / MANIFEST_FILE)} == {"done", "failed"}


def test_python_api_on_a_dataset_of_files(cluster: str, data: tuple[Path, Path, Path], tmp_path: Path) -> None:
    model, inputs, local = data
    ds = ray.data.read_binary_files(str(inputs), include_paths=True)
    out = tmp_path / "api"
    options = FileOptions(max_work_pixels=0, save_flow=True)
    summary = rectify_dataset(ds, out, model=model, dtype="fp32", options=options, actors=1,
                              pipe_kwargs={"correction_gate": 0.0}, log=lambda line: None)
    assert summary.processed == N_IMAGES and not summary.failures
    _same_files(local, out)
    again = rectify_dataset(sorted(str(p) for p in inputs.iterdir()), out, model=model, dtype="fp32",
                            options=options, actors=1, pipe_kwargs={"correction_gate": 0.0}, log=lambda line: None)
    assert again.skipped == N_IMAGES and again.processed == 0


def test_a_killed_run_resumes(cluster: str, data: tuple[Path, Path, Path], tmp_path: Path,
                              capsys: pytest.CaptureFixture) -> None:
    model, inputs, local = data
    out = tmp_path / "killed"
    argv = ["rectify", str(inputs), "--model", str(model), "--out", str(out), "--dtype", "fp32", "--engine", "ray",
            "--actors", "1", "--ray-address", cluster, *COMMON]
    proc = subprocess.Popen([sys.executable, "-m", "stablemotion", *argv], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    journal = out / ".stablemotion-rectify"
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if any(p.stat().st_size for p in journal.glob("journal-rank*.jsonl")):
                break
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    deadline = time.monotonic() + 30  # Ray ends the dead driver's actors: wait for their CPUs to come back
    while ray.available_resources().get("CPU", 0) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    done_before = sum(len(p.read_text().splitlines()) for p in journal.glob("journal-rank*.jsonl"))
    assert 0 < done_before, "the run was killed before any image was finished"
    code = main(argv[:-len(COMMON) - 2] + COMMON)  # this process's cluster (the same one)
    text = capsys.readouterr().out
    assert code == 0, text
    if done_before < N_IMAGES:
        assert f"skipped {done_before} already done" in text, text
    _same_files(local, out)
