"""``stablemotion rectify``'s output folder: links are never written through, one run at a time holds
the folder, a folder never mixes settings silently, and large images run at a capped working size."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from stablemotion.cli import main
from stablemotion.core.flow import read_flow
from stablemotion.core.large_image import MAX_WORK_PIXELS, flow_colours, warp_strips
from stablemotion.io.images import load_image, save_image
from stablemotion.io.outdir import JOURNAL_DIR, LOCK_NAME, MANIFEST_NAME, FolderLock, Journal, Manifest

VICTIM = b"precious user data\n"


@pytest.fixture(scope="module")
def sir_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("models") / "sir"
    assert main(["tiny-model", "--task", "sir", "--out", str(out)]) == 0
    return out


def _stitched(photo: np.ndarray, h: int = 24, w: int = 32, shift: int = 0) -> np.ndarray:
    """A small stitched-looking image: the photo inside a quadrilateral, black outside."""
    img = cv2.resize(np.clip(np.roll(photo, shift, axis=1), 40, 215).astype(np.uint8), (w, h),
                     interpolation=cv2.INTER_AREA)
    truth = np.zeros((h, w), np.uint8)
    cv2.fillPoly(truth, [np.array([[2, 1], [w - 4, 0], [w - 1, h - 3], [1, h - 5]], np.int32)], 255)
    return np.where(truth[..., None] > 0, img, 0).astype(np.uint8)


def _run(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.err + captured.out


def _victim(tmp_path: Path) -> Path:
    victim = tmp_path / "elsewhere" / "victim.txt"
    victim.parent.mkdir(parents=True, exist_ok=True)
    victim.write_bytes(VICTIM)
    return victim


def _listing(folder: Path) -> dict[str, bytes | str]:
    """Every entry of ``folder`` (recursively) with its content (links: their target), for "nothing changed"."""
    out: dict[str, bytes | str] = {}
    for path in sorted(folder.rglob("*")):
        rel = str(path.relative_to(folder))
        out[rel] = f"-> {os.readlink(path)}" if path.is_symlink() else ("dir" if path.is_dir() else path.read_bytes())
    return out


# --------------------------------------------------------------------------- item 3: links
@pytest.mark.parametrize("name", [MANIFEST_NAME, LOCK_NAME, JOURNAL_DIR])
def test_a_link_in_place_of_a_service_file_stops_the_run_and_its_target_is_unchanged(
        name: str, sir_model: Path, photo: np.ndarray, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    victim = _victim(tmp_path)
    save_image(_stitched(photo), tmp_path / "in" / "x.png")
    out = tmp_path / "out"
    out.mkdir()
    (out / name).symlink_to(victim.parent if name == JOURNAL_DIR else victim)
    code, text = _run(["rectify", str(tmp_path / "in"), "--model", str(sir_model), "--out", str(out)], capsys)
    assert code == 2, text
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "symbolic link" in errors[0] and name in errors[0], text
    assert "Traceback" not in text
    assert victim.read_bytes() == VICTIM
    assert sorted(p.name for p in victim.parent.iterdir()) == ["victim.txt"]
    assert not (out / "x.png").exists()


def test_a_link_under_the_old_probe_name_is_left_alone(sir_model: Path, photo: np.ndarray, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    """The writability probe is a fresh exclusively created file: a planted link under the old fixed
    probe name is neither written through nor removed."""
    victim = _victim(tmp_path)
    save_image(_stitched(photo), tmp_path / "in" / "x.png")
    out = tmp_path / "out"
    out.mkdir()
    (out / "..stablemotion-rectify.probe").symlink_to(victim)
    code, text = _run(["rectify", str(tmp_path / "in"), "--model", str(sir_model), "--out", str(out)], capsys)
    assert code == 0, text
    assert victim.read_bytes() == VICTIM and (out / "..stablemotion-rectify.probe").is_symlink()


def test_an_output_name_taken_by_a_link_fails_that_image_only(sir_model: Path, photo: np.ndarray, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture) -> None:
    """Replacing the link would silently drop the user's link, writing through it would overwrite its
    target: the image is refused (named, with what to do), the others are rectified."""
    victim = _victim(tmp_path)
    save_image(_stitched(photo), tmp_path / "in" / "x.png")
    save_image(_stitched(photo, shift=9), tmp_path / "in" / "y.png")
    out = tmp_path / "out"
    out.mkdir()
    (out / "x_flow.png").symlink_to(victim)
    for extra in ([], ["--force"]):
        code, text = _run(["rectify", str(tmp_path / "in"), "--model", str(sir_model), "--out", str(out), *extra],
                          capsys)
        assert code == 1, text
        failed = [line.strip() for line in text.splitlines() if line.strip().startswith("failed x:")]
        assert len(failed) == 1 and "x_flow.png is a symbolic link" in failed[0], text
        assert victim.read_bytes() == VICTIM and (out / "x_flow.png").is_symlink()
        assert not (out / "x.png").exists() and (out / "y.png").is_file()
    assert set(json.loads((out / MANIFEST_NAME).read_text())["outputs"]) == {"y"}


def test_per_process_state_files_replace_a_planted_link(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Under accelerate/torchrun each process leaves its counts in .stablemotion-rectify/rankN.json:
    written as a new file renamed into place, never through a link there."""
    import argparse

    from stablemotion.cli.rectify import _summary

    class TwoProcesses:  # the second process of two (it writes its counts and returns)
        rank, world, main = 1, 2, False

        def barrier(self) -> None:
            pass

    victim = _victim(tmp_path)
    state = tmp_path / "out" / JOURNAL_DIR
    state.mkdir(parents=True)
    (state / "rank1.json").symlink_to(victim)
    assert _summary(argparse.Namespace(out=tmp_path / "out"), TwoProcesses(), 3, 0, {}) == 0  # type: ignore[arg-type]
    assert victim.read_bytes() == VICTIM
    assert not (state / "rank1.json").is_symlink()
    assert json.loads((state / "rank1.json").read_text()) == {"processed": 3, "failures": {}, "unchanged": {}}


# --------------------------------------------------------------------------- item 8: one run at a time
def test_a_second_run_into_a_busy_folder_is_refused_and_touches_nothing(
        sir_model: Path, photo: np.ndarray, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    save_image(_stitched(photo), tmp_path / "in" / "x.png")
    out = tmp_path / "out"
    out.mkdir()
    litter = out / ".x.abc123xy.tmp.png"  # to the waiting run, this is the running run's temporary file
    litter.write_bytes(b"being written")
    with FolderLock(out):
        before = _listing(out)
        code, text = _run(["rectify", str(tmp_path / "in"), "--model", str(sir_model), "--out", str(out)], capsys)
        assert code == 2, text
        errors = [line for line in text.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and f"another stablemotion rectify (pid {os.getpid()}" in errors[0], text
        assert str(out) in errors[0]
        assert _listing(out) == before
    # once the first run is over the folder is free; the lock file goes with the run
    code, text = _run(["rectify", str(tmp_path / "in"), "--model", str(sir_model), "--out", str(out)], capsys)
    assert code == 0 and "removed 1 temporary file" in text, text
    assert not (out / LOCK_NAME).exists() and not litter.exists() and (out / "x.png").is_file()


def test_a_lock_file_left_by_a_killed_run_does_not_block(sir_model: Path, photo: np.ndarray, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    save_image(_stitched(photo), tmp_path / "in" / "x.png")
    out = tmp_path / "out"
    out.mkdir()
    (out / LOCK_NAME).write_text('{"pid": 999999, "host": "gone"}\n')  # nobody holds a lock on it
    code, text = _run(["rectify", str(tmp_path / "in"), "--model", str(sir_model), "--out", str(out)], capsys)
    assert code == 0, text
    assert not (out / LOCK_NAME).exists()


def test_the_lock_is_held_by_another_process(tmp_path: Path) -> None:
    """flock between processes: a holder in a subprocess makes the lock busy here, and its pid is named."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from stablemotion.io.outdir import FolderLock;"
         "lock = FolderLock(Path(sys.argv[1])); lock.acquire(); print('held', flush=True); time.sleep(60)",
         str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(ValueError, match=f"another stablemotion rectify \\(pid {holder.pid}, since"):
            FolderLock(tmp_path).acquire()
    finally:
        holder.kill()
        holder.wait()
    with FolderLock(tmp_path):  # the kernel dropped the killed holder's lock
        pass


@pytest.mark.parametrize("kind", ["fifo", "folder"])
def test_something_else_in_place_of_the_lock_file_is_refused_at_once(kind: str, tmp_path: Path) -> None:
    """Neither a FIFO (opening it for writing could wait forever) nor a folder is taken for the lock file."""
    if kind == "fifo":
        os.mkfifo(tmp_path / LOCK_NAME)
        match = "is not a regular file"
    else:
        (tmp_path / LOCK_NAME).mkdir()
        match = "cannot open the lock file .*Is a directory"
    with pytest.raises(ValueError, match=match):
        FolderLock(tmp_path).acquire()
    with pytest.raises(ValueError, match="the journal .*(No such device|not a regular file|Is a directory)"):
        _journal_at(tmp_path, kind)


def _journal_at(folder: Path, kind: str) -> None:
    """Open a journal whose file name is taken by a FIFO or a folder."""
    state = folder / JOURNAL_DIR
    state.mkdir(exist_ok=True)
    if kind == "fifo":
        os.mkfifo(state / "journal-rank0.jsonl")
    else:
        (state / "journal-rank0.jsonl").mkdir()
    Journal(folder, 0)


# --------------------------------------------------------------------------- item 9: settings per image
def test_a_folder_never_mixes_settings_silently(sir_model: Path, photo: np.ndarray, tmp_path: Path,
                                                capsys: pytest.CaptureFixture) -> None:
    """`rectify six --out o`; `rectify other --out o --seed 1`; `rectify six --out o --seed 1` used to
    say "skipped 6 already done" of images made with seed 0."""
    for i in range(6):
        save_image(_stitched(photo, shift=7 * i), tmp_path / "six" / f"s{i}.png")
    save_image(_stitched(photo, shift=50), tmp_path / "other" / "o.png")
    out = tmp_path / "o"
    model = ["--model", str(sir_model), "--out", str(out), "--save-flow", "--always-correct"]
    code, text = _run(["rectify", str(tmp_path / "six"), *model], capsys)
    assert code == 0 and "rectified 6 images" in text, text
    seed0 = read_flow(out / "s0_flow.npy")
    code, text = _run(["rectify", str(tmp_path / "other"), *model, "--seed", "1"], capsys)
    assert code == 2 and "6 image(s) made with other settings (seed differ" in text and "--force" in text, text
    assert not (out / "o.png").exists()
    code, text = _run(["rectify", str(tmp_path / "six"), *model, "--seed", "1"], capsys)
    assert code == 2 and "other settings (seed differ" in text and "skipped" not in text, text
    # --force writes anyway: the images of other runs are kept, each recorded with its own settings
    code, text = _run(["rectify", str(tmp_path / "other"), *model, "--seed", "1", "--force"], capsys)
    assert code == 0 and "6 image(s)" in text and "are kept" in text, text
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    seeds = {stem: manifest["settings"][e["settings"]]["seed"] for stem, e in manifest["outputs"].items()}
    assert seeds == {**{f"s{i}": 0 for i in range(6)}, "o": 1}
    code, text = _run(["rectify", str(tmp_path / "six"), *model, "--seed", "1"], capsys)
    assert code == 2 and "skipped" not in text, text
    code, text = _run(["rectify", str(tmp_path / "six"), *model, "--seed", "1", "--force"], capsys)
    assert code == 0 and "rectified 6 images" in text, text
    assert not np.array_equal(read_flow(out / "s0_flow.npy"), seed0)
    code, text = _run(["rectify", str(tmp_path / "six"), *model, "--seed", "1"], capsys)
    assert code == 0 and "rectified 0 images" in text and "skipped 6 already done" in text, text
    assert (out / "s0_flow.npy").read_bytes() != b"" and not (out / JOURNAL_DIR).exists()


def test_a_folder_of_an_older_version_is_checked_whatever_the_inputs(
        sir_model: Path, photo: np.ndarray, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A format-1 state file (one settings record) with results in the folder refuses other settings even
    when this run's inputs are new to the folder; the same settings resume as before."""
    save_image(_stitched(photo), tmp_path / "in" / "x.png")
    save_image(_stitched(photo, shift=20), tmp_path / "new" / "n.png")
    out = tmp_path / "out"
    code, text = _run(["rectify", str(tmp_path / "in"), "--model", str(sir_model), "--out", str(out)], capsys)
    assert code == 0, text
    record = json.loads((out / MANIFEST_NAME).read_text())["settings"]
    legacy = {k: v for k, v in next(iter(record.values())).items() if k != "max_work_pixels"}
    (out / MANIFEST_NAME).write_text(json.dumps(legacy))  # as an older version left it (uncapped then)
    code, text = _run(["rectify", str(tmp_path / "new"), "--model", str(sir_model), "--out", str(out), "--seed", "4"],
                      capsys)
    assert code == 2 and "other settings" in text and "seed" in text, text
    assert not (out / "n.png").exists()
    code, text = _run(["rectify", str(tmp_path / "in"), "--model", str(sir_model), "--out", str(out),
                       "--max-work-pixels", "0"], capsys)
    assert code == 0 and "skipped 1 already done" in text, text
    assert set(json.loads((out / MANIFEST_NAME).read_text())["outputs"]) == {"x"}


def test_journal_and_manifest_after_a_killed_run(tmp_path: Path) -> None:
    """What a killed run journaled is merged; a line cut short vouches for nothing; forgotten images are
    not vouched for until finished again."""
    for name in ("a.png", "b.png"):
        (tmp_path / name).write_bytes(b"x")
    journal = Journal(tmp_path, 0)
    journal.add("a", "k1", ["a.png"])
    journal.close()
    with open(tmp_path / JOURNAL_DIR / "journal-rank0.jsonl", "a") as f:
        f.write('{"stem": "b", "sett')  # killed mid-line
    man = Manifest.load(tmp_path)
    assert not man.found and man.merge_journals() == 1
    man.settings["k1"] = {"seed": 0}
    man.save()
    man.clear_journals()
    again = Manifest.load(tmp_path)
    assert again.found and again.outputs == {"a": {"settings": "k1", "files": ["a.png"]}} and again.present("a")
    assert not list((tmp_path / JOURNAL_DIR).iterdir())
    again.forget(["a"])
    again.save()
    assert json.loads((tmp_path / MANIFEST_NAME).read_text()) == {"format": 2, "settings": {}, "outputs": {}}
    (tmp_path / MANIFEST_NAME).write_text("{damaged")
    with pytest.raises(ValueError, match="cannot read .*restore it, or use another --out"):
        Manifest.load(tmp_path)
    (tmp_path / MANIFEST_NAME).write_text('{"format": 2, "settings": {}, "outputs": {"a": {"files": ["a.png"]}}}')
    with pytest.raises(ValueError, match="the entry of 'a' is damaged"):
        Manifest.load(tmp_path)


# --------------------------------------------------------------------------- item 10: working-size cap
def test_images_over_the_cap_run_at_the_working_size_and_are_warped_at_full_size(
        sir_model: Path, photo: np.ndarray, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    img = _stitched(photo, 96, 128)
    save_image(img, tmp_path / "in" / "big.png")
    out = tmp_path / "out"
    code, text = _run(["rectify", str(tmp_path / "in"), "--model", str(sir_model), "--out", str(out), "--save-flow",
                       "--save-mask", "--ensemble", "2", "--max-work-pixels", "4096", "--always-correct"], capsys)
    assert code == 0, text
    assert "128x96 px, over --max-work-pixels: the model ran at 73x55" in text, text
    flow = read_flow(out / "big_flow.npy")
    assert flow.shape == (96, 128, 2) and np.isfinite(flow).all()
    # every file comes from the one full-size flow
    assert np.array_equal(load_image(out / "big.png"), warp_strips(img, flow, "border"))
    assert np.array_equal(load_image(out / "big_flow.png"), flow_colours(flow)[0])
    assert np.load(out / "big_uncertainty.npy").shape == (96, 128)
    assert load_image(out / "big_uncertainty.png").shape == (96, 128, 3)
    assert load_image(out / "big_mask.png", mode="L").shape == (96, 128)
    # within the cap (here: no cap) the whole image goes through the pipeline as it always did
    code, text = _run(["rectify", str(tmp_path / "in"), "--model", str(sir_model), "--out", str(tmp_path / "o0"),
                       "--save-flow", "--max-work-pixels", "0"], capsys)
    assert code == 0 and "over --max-work-pixels" not in text, text
    assert read_flow(tmp_path / "o0" / "big_flow.npy").shape == (96, 128, 2)
    code, text = _run(["rectify", str(tmp_path / "in"), "--model", str(sir_model), "--out", str(tmp_path / "o1"),
                       "--save-flow"], capsys)  # within the default cap (1 Mpx): the same files
    assert code == 0, text
    for name in ("big.png", "big_flow.png", "big_flow.npy"):
        assert (tmp_path / "o1" / name).read_bytes() == (tmp_path / "o0" / name).read_bytes(), name
    # changing the cap changes the settings of the folder
    code, text = _run(["rectify", str(tmp_path / "in"), "--model", str(sir_model), "--out", str(tmp_path / "o1"),
                       "--max-work-pixels", "4096"], capsys)
    assert code == 2 and "max_work_pixels" in text, text


def test_max_work_pixels_is_checked_before_the_model_loads(photo: np.ndarray, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture) -> None:
    save_image(_stitched(photo), tmp_path / "x.png")
    code, text = _run(["rectify", str(tmp_path / "x.png"), "--model", str(tmp_path / "no-model"), "--out",
                       str(tmp_path / "o"), "--max-work-pixels", "100"], capsys)
    assert code == 2, text
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "--max-work-pixels must be 0 (no cap) or at least 4096" in errors[0], text
    assert not (tmp_path / "o").exists()
    with pytest.raises(SystemExit):  # the help states the app's default (the option's default is resolved late)
        main(["rectify", "--help"])
    assert f"default {MAX_WORK_PIXELS} = 1024 x 1024" in " ".join(capsys.readouterr().out.split())


# --------------------------------------------------------------------------- several processes
def test_two_processes_share_one_folder(sir_model: Path, photo: np.ndarray, tmp_path: Path) -> None:
    """torchrun (as `accelerate launch`): the main process holds the lock and keeps the manifest for both;
    a busy folder stops both processes with one message."""
    for i in range(4):
        save_image(_stitched(photo, shift=11 * i), tmp_path / "in" / f"s{i}.png")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "stablemotion", "rectify", str(tmp_path / "in"), "--model", str(sir_model), "--out", str(out),
           "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("rectified 4 images") == 1, proc.stdout
    assert set(json.loads((out / MANIFEST_NAME).read_text())["outputs"]) == {f"s{i}" for i in range(4)}
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == [MANIFEST_NAME]
    out.mkdir(exist_ok=True)
    with FolderLock(out):
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode != 0
    assert proc.stderr.count(f"another stablemotion rectify (pid {os.getpid()}") == 1, proc.stderr[-3000:]


def test_an_animation_is_refused_before_the_model_loads_and_the_others_run(
        sir_model: Path, photo: np.ndarray, tmp_path: Path, capsys: pytest.CaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A multi-frame file fails in the header preflight (no model work spent on it); the batch goes on."""
    from PIL import Image

    import stablemotion.cli._options as options

    inputs = tmp_path / "in"
    inputs.mkdir()
    save_image(_stitched(photo), inputs / "good.png")
    frames = [Image.fromarray(_stitched(photo, shift=s)) for s in (0, 5, 9)]
    frames[0].save(inputs / "anim.gif", save_all=True, append_images=frames[1:])
    loads = []
    real = options.load_model
    monkeypatch.setattr(options, "load_model", lambda *a, **k: loads.append(1) or real(*a, **k))
    code, out = _run(["rectify", str(inputs), "--model", str(sir_model), "--out", str(tmp_path / "out")], capsys)
    assert code == 1 and (tmp_path / "out" / "good.png").is_file() and not (tmp_path / "out" / "anim.png").exists()
    assert re.search(r"anim: .*anim.gif holds 3 frames", out), out
    assert len(loads) == 1


def test_out_of_memory_on_one_image_fails_that_image_only(
        sir_model: Path, photo: np.ndarray, tmp_path: Path, capsys: pytest.CaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    import stablemotion.core.large_image as large_image

    inputs = tmp_path / "in"
    inputs.mkdir()
    save_image(_stitched(photo), inputs / "a.png")
    save_image(_stitched(photo, h=30, w=40), inputs / "big.png")
    real = large_image.rectify_capped

    def oom_on_big(pipe, image, *args, **kwargs):
        if image.shape[0] == 30:
            raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: not enough memory")
        return real(pipe, image, *args, **kwargs)

    monkeypatch.setattr(large_image, "rectify_capped", oom_on_big)
    code, out = _run(["rectify", str(inputs), "--model", str(sir_model), "--out", str(tmp_path / "out")], capsys)
    assert code == 1 and (tmp_path / "out" / "a.png").is_file() and not (tmp_path / "out" / "big.png").exists()
    assert re.search(r"big: failed: out of memory \(.*not enough memory\); try .*--max-work-pixels", out), out
    assert "Traceback" not in out


def test_the_summary_repeats_what_the_input_folder_held_but_was_not_rectified(
        sir_model: Path, photo: np.ndarray, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    save_image(_stitched(photo), inputs / "a.png")
    save_image(_stitched(photo), inputs / ".hidden.png")
    (inputs / "b.heic").write_bytes(b"\0" * 16)
    code, out = _run(["rectify", str(inputs), "--model", str(sir_model), "--out", str(tmp_path / "out")], capsys)
    summary = out[out.index("rectified 1 image"):]
    assert code == 0 and f"  not an input: {inputs}: skipped 2 files: .hidden.png (hidden file); b.heic (HEIC" in summary
