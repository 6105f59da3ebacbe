"""Option values and input files of the command line (issue 26, items 11-14).

Bad values stop the command with exit status 2 and one line naming the option and what is
accepted, before any model loads (the loader is replaced by one that fails the test);
out-of-memory is one line naming what to lower; folder listings say what they skip.
"""

from __future__ import annotations

import argparse
import json
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

import stablemotion.cli._options as options
from stablemotion.cli import build_parser, main
from stablemotion.io import images as _io


@pytest.fixture
def no_model_load(monkeypatch):
    """Loading a model fails the test: every check below must come before it."""

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the options were checked")

    monkeypatch.setattr(options, "load_model", refuse)
    import stablemotion.model

    monkeypatch.setattr(stablemotion.model, "load_pipeline", refuse)


def _run(argv: list[str], capsys) -> tuple[int, str]:
    """Exit status and stderr of ``stablemotion ARGV`` (argparse errors exit through SystemExit);
    an error is one line."""
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    assert "Traceback" not in err and "usage:" not in err
    if code == 2:  # one line (progress bars, redrawn with \r, aside)
        assert len([line for line in err.split("\n") if line.strip() and "\r" not in line]) == 1, err
    return code, err


def _last_line(err: str) -> str:
    return err.strip().splitlines()[-1]


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "in" / "a.png"
    path.parent.mkdir()
    Image.new("RGB", (64, 48), (90, 100, 110)).save(path)
    return path


def _fake_model(folder, train_steps=1000, vae_levels=2, unet_levels=3, resolution=(96, 128)):
    """A pipeline folder's config files only (no weights): what the up-front checks read."""
    for sub in ("scheduler", "vae", "unet", "text_embedding"):
        (folder / sub).mkdir(parents=True)
    (folder / "model_index.json").write_text(json.dumps({
        "_class_name": "StableMotionPipeline", "default_processing_resolution": list(resolution),
        "task": {"name": "sir", "conditions": ["mask", "image"]}}))
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps({"num_train_timesteps": train_steps}))
    (folder / "vae" / "config.json").write_text(json.dumps({"block_out_channels": [8] * vae_levels}))
    (folder / "unet" / "config.json").write_text(json.dumps({"block_out_channels": [8] * unet_levels}))
    return folder


# --------------------------------------------------------------------------- rectify: ranges (item 11, 12, 13)
@pytest.mark.parametrize("extra, option, expected", [
    (["--max-pixels", "inf"], "--max-pixels", ">= 0"),
    (["--max-pixels", "nan"], "--max-pixels", ">= 0"),
    (["--max-pixels", "-3"], "--max-pixels", ">= 0"),
    (["--ensemble", "100000"], "--ensemble", "from 1 to 64"),
    (["--ensemble", "0"], "--ensemble", "from 1 to 64"),
    (["--processing-resolution", "200000"], "--processing-resolution", "at most 8192"),
    (["--processing-resolution", "96", "99999"], "--processing-resolution", "at most 8192"),
    (["--processing-resolution", "-5"], "--processing-resolution", "H W, HxW"),
    (["--mask-tolerance", "-5"], "--mask-tolerance", "from 0 to 255"),
    (["--mask-tolerance", "1000"], "--mask-tolerance", "from 0 to 255"),
    (["--decode-scale", "1000"], "--decode-scale", "from 1 to 64"),
    (["--decode-scale", "0"], "--decode-scale", "from 1 to 64"),
    (["--steps", "5000"], "--steps", "from 1 to 1000"),
    (["--seed", str(2**70)], "--seed", f"from 0 to {2**63 - 1}"),
    (["--seed", "-1"], "--seed", "from 0 to"),
    (["--seed", "9" * 5000], "--seed", "5000 characters"),
    (["--task-threshold", "nan"], "--task-threshold", "[0, 1]"),
    (["--task-threshold", "2"], "--task-threshold", "[0, 1]"),
])
def test_rectify_refuses_out_of_range_values_before_loading(extra, option, expected, image, tmp_path, capsys,
                                                            no_model_load):
    code, err = _run(["rectify", str(image), "--out", str(tmp_path / "out"), "--device", "cpu", *extra], capsys)
    assert code == 2
    line = _last_line(err)
    assert option in line and expected in line, line
    assert not (tmp_path / "out").exists()  # stopped before anything was planned


@pytest.mark.parametrize("extra, expected", [
    (["--processing-resolution", "7"], "--processing-resolution 7x7: the bundled stablemotion-mini-sir model "
                                       "takes multiples of 8"),
    (["--processing-resolution", "1"], "multiples of 8"),
    (["--processing-resolution", "16", "20"], "--processing-resolution 16x20"),
    (["--decode-scale", "5"], "--decode-scale 5 must divide the latent size 48x64"),
    (["--processing-resolution", "64", "--decode-scale", "3"], "--decode-scale 3 must divide the latent size 32x32"),
])
def test_rectify_checks_the_models_rules_before_loading(extra, expected, image, tmp_path, capsys, no_model_load):
    """The pipeline's check_inputs rules, read from the bundled model's config files."""
    code, err = _run(["rectify", str(image), "--out", str(tmp_path / "out"), "--device", "cpu", *extra], capsys)
    assert code == 2
    assert expected in _last_line(err), err


def test_steps_beyond_the_models_schedule_are_refused_before_loading(image, tmp_path, capsys, no_model_load):
    model = _fake_model(tmp_path / "m", train_steps=100, vae_levels=4, unet_levels=4)
    code, err = _run(["rectify", str(image), "--model", str(model), "--out", str(tmp_path / "out"),
                      "--device", "cpu", "--steps", "200"], capsys)
    assert code == 2
    assert f"--steps 200: the model {model} was trained with 100 steps; use 1 to 100" in err
    code, err = _run(["rectify", str(image), "--model", str(model), "--out", str(tmp_path / "out"),
                      "--device", "cpu", "--processing-resolution", "96"], capsys)
    assert code == 2 and "takes multiples of 64" in err  # 8 (VAE) x 8 (UNet)


def test_good_values_pass_the_checks(image, tmp_path):
    """Valid values are accepted unchanged (then loading is what comes next)."""
    parser = build_parser()
    args = parser.parse_args(["rectify", str(image), "--out", str(tmp_path / "o"), "--max-pixels", "2.5e7",
                              "--processing-resolution", "96x128", "--decode-scale", "2", "--steps", "4",
                              "--ensemble", "3", "--seed", str(2**63 - 1), "--mask-tolerance", "0"])
    assert args.max_pixels == 25_000_000 and args.seed == 2**63 - 1
    kwargs = options.inference_kwargs(args)
    assert kwargs["processing_resolution"] == (96, 128)
    assert (kwargs["num_inference_steps"], kwargs["ensemble_size"], kwargs["decode_scale"]) == (4, 3, 2)
    args = parser.parse_args(["rectify", str(image), "--out", str(tmp_path / "o"), "--processing-resolution", "0",
                              "--max-pixels", "0"])
    assert options.inference_kwargs(args)["processing_resolution"] == 0 and args.max_pixels == 0


def test_inference_kwargs_checks_a_namespace_made_by_hand():
    """Callers that build the Namespace themselves get the same limits."""
    base = dict(processing_resolution=["16", "16"], decode_scale=1, final_step=None, steps=None, ensemble=None)
    assert options.inference_kwargs(argparse.Namespace(**base))["processing_resolution"] == (16, 16)
    for key, value, option in (("ensemble", 65, "--ensemble"), ("steps", 1001, "--steps"),
                               ("decode_scale", 65, "--decode-scale"),
                               ("processing_resolution", ["9000"], "--processing-resolution")):
        with pytest.raises(ValueError, match=option):
            options.inference_kwargs(argparse.Namespace(**{**base, key: value}))


# --------------------------------------------------------------------------- evaluate / study
@pytest.mark.parametrize("extra, message", [
    (["--steps", "5000"], "argument --steps: must be an integer from 1 to 1000"),
    (["--ensemble", "100000"], "argument --ensemble: must be an integer from 1 to 64"),
    (["--seed", str(2**70)], "argument --seed"),
    (["--limit", "0"], "argument --limit: must be an integer >= 1"),
    (["--processing-resolution", "100"], "--processing-resolution 100x100: the model"),
    (["--steps", "200"], "--steps 200: the model"),
])
def test_evaluate_refuses_bad_values_before_loading(extra, message, tmp_path, capsys, no_model_load):
    model = _fake_model(tmp_path / "m", train_steps=100)
    (tmp_path / "data").mkdir()
    code, err = _run(["evaluate", "--model", str(model), "--dataset", str(tmp_path / "data"), "--out",
                      str(tmp_path / "o"), "--device", "cpu", *extra], capsys)
    assert code == 2 and message in _last_line(err), err


@pytest.mark.parametrize("argv, message", [
    (["study", "steps", "--steps", "1", "5000"], "argument --steps: must be an integer from 1 to 1000"),
    (["study", "ensemble", "--sizes", "2", "65"], "argument --sizes: must be an integer from 1 to 64"),
])
def test_study_refuses_bad_lists(argv, message, tmp_path, capsys, no_model_load):
    code, err = _run([*argv, "--model", "m", "--dataset", str(tmp_path), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and message in _last_line(err)


# --------------------------------------------------------------------------- the other commands (item 13)
@pytest.mark.parametrize("argv, message", [
    (["synth", "rectangling", "OUT", "--size", "100000x100000"], "--size must be at most 8192 pixels a side"),
    (["synth", "rectangling", "OUT", "--size", "4"], "--size must be at least 8x8"),
    (["synth", "rectangling", "OUT", "--num", "0"], "argument --num: must be an integer from 1"),
    (["synth", "rectangling", "OUT", "--quality", "0"], "argument --quality: must be an integer from 1 to 100"),
    (["synth", "rectangling", "OUT", "--seed", str(2**64)], "argument --seed"),
    (["synth", "rectangling", "OUT", "--workers", "0"], "argument --workers"),
    (["synth", "rotation", "OUT", "--max-angle", "nan"], "argument --max-angle: must be a number (finite)"),
    (["synth", "rotation", "OUT", "--max-angle", "1e9"], "error: max_angle must be in [0, "),  # its own bounds
    (["synth", "rectangling", "OUT", "--max-inset", "inf"], "argument --max-inset: must be a number (finite)"),
    (["label-flows", "DATA", "--out", "OUT", "--cell", "0"], "argument --cell"),
    (["tiny-model", "--out", "OUT", "--seed", "99999999999999999999999"],
     f"argument --seed: must be a seed (an integer) from 0 to {2**63 - 1}"),
    (["tiny-model", "--out", "OUT", "--resolution", "100000"], "--resolution must be at most 8192"),
    (["flow-vis", "F.npy", "--out", "OUT.png", "--max-radius", "inf"], "argument --max-radius: must be a finite"),
    (["flow-vis", "F.npy", "--out", "OUT.png", "--max-radius", "nan"], "argument --max-radius: must be a finite"),
    (["warp", "A.png", "F.npy", "--out", "OUT.png", "--max-pixels", "nan"], "argument --max-pixels"),
    (["judge", "IN", "RES", "--task", "sir", "--out", "OUT", "--timeout", "nan"], "argument --timeout"),
    (["judge", "IN", "RES", "--task", "sir", "--out", "OUT", "--retries", "-1"], "argument --retries"),
    (["judge", "IN", "RES", "--task", "sir", "--out", "OUT", "--max-side", "0"], "argument --max-side"),
    (["demo", "--num", "0"], "argument --num"),
])
def test_numeric_options_of_every_command_are_checked(argv, message, tmp_path, capsys):
    argv = [str(tmp_path / a) if a.isupper() or a[0].isupper() and "." in a else a for a in argv]
    code, err = _run(argv, capsys)
    assert code == 2 and message in _last_line(err), err
    assert not (tmp_path / "OUT").exists()


SCOPE = {"rectify", "evaluate", "study", "judge", "warp", "flow-vis", "score", "synth", "label-flows",
         "tiny-model", "import-checkpoint", "convert", "demo", "train-task-classifier"}


def _subcommands(parser, path=()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _subcommands(sub, (*path, name))
    yield path, parser


def test_no_command_takes_a_bare_int_or_float():
    """Every number goes through a checking type: a plain ``int``/``float`` accepts inf, nan and
    values far out of range (and the errors came from deep inside, per image)."""
    loose = [f"{' '.join(path)} {'/'.join(a.option_strings)}" for path, sub in _subcommands(build_parser())
             if path and path[0] in SCOPE for a in sub._actions if a.type in (int, float)]
    assert [x for x in loose if x not in CHECKED_ELSEWHERE] == []


#: Plain ``int`` options whose range their command checks itself, before loading a model.
CHECKED_ELSEWHERE = {"rectify --max-work-pixels"}  # rectify._max_work_pixels


# --------------------------------------------------------------------------- size hints (item 13)
def _png_header(path, width, height):
    """A tiny PNG that declares a huge size (a decompression bomb's header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) +
                     chunk(b"IEND", b""))
    return path


def test_too_large_messages_name_only_options_the_command_has(tmp_path, capsys):
    bomb = _png_header(tmp_path / "bomb.png", 20000, 20000)
    np.save(tmp_path / "f.npy", np.zeros((8, 8, 2), np.float32))
    code, err = _run(["warp", str(bomb), str(tmp_path / "f.npy"), "--out", str(tmp_path / "o.png")], capsys)
    assert code == 2 and "400 megapixels" in err and "--max-pixels" in err  # warp has the option now
    code, err = _run(["warp", str(bomb), str(tmp_path / "f.npy"), "--out", str(tmp_path / "o.png"),
                      "--max-pixels", "3e8"], capsys)
    assert code == 2 and "more than the limit of 300 megapixels" in err
    for sub in ("res", "gt"):
        (tmp_path / sub).mkdir()
        _png_header(tmp_path / sub / "a.png", 20000, 20000)
    code, err = _run(["score", str(tmp_path / "res"), str(tmp_path / "gt")], capsys)
    assert code == 2 and "400 megapixels" in err and "--max-pixels" not in err
    assert "`stablemotion score` reads images up to this size" in err
    with pytest.raises(ValueError, match="larger max_pixels") as info:  # Python: the keyword, not an option
        _io.open_image(bomb)
    assert "--max-pixels" not in str(info.value)
    with _io.size_limit_hint("ask an admin"), pytest.raises(ValueError, match="ask an admin"):
        _io.open_image(bomb)


# --------------------------------------------------------------------------- out of memory (item 11)
def test_out_of_memory_is_one_line_naming_what_to_lower(image, tmp_path, capsys, monkeypatch):
    import torch

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB\nmore details")

    monkeypatch.setattr(options, "load_model", oom)
    code, err = _run(["rectify", str(image), "--out", str(tmp_path / "out"), "--device", "cpu"], capsys)
    assert code == 1
    assert err.count("\n") == 1, err
    assert err.startswith("error: out of memory (CUDA out of memory. Tried to allocate 20.00 GiB); try a smaller ")
    for hint in ("a smaller --processing-resolution", "a smaller --ensemble", "a smaller --max-pixels",
                 "--decode-scale 2", "or a device with more memory"):
        assert hint in err

    import stablemotion.core.flow

    def host_oom(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: not enough memory")

    monkeypatch.setattr(stablemotion.core.flow, "warp", host_oom)
    Image.new("RGB", (8, 8)).save(tmp_path / "s.png")
    np.save(tmp_path / "f.npy", np.zeros((8, 8, 2), np.float32))
    code, err = _run(["warp", str(tmp_path / "s.png"), str(tmp_path / "f.npy"), "--out", str(tmp_path / "o.png")],
                     capsys)
    assert code == 1 and "out of memory" in err and "a smaller --max-pixels" in err and "--ensemble" not in err


def test_other_runtime_errors_are_not_called_out_of_memory(tmp_path, monkeypatch):
    import stablemotion.core.flow

    def broken(*args, **kwargs):
        raise RuntimeError("shape mismatch")

    monkeypatch.setattr(stablemotion.core.flow, "warp", broken)
    Image.new("RGB", (8, 8)).save(tmp_path / "s.png")
    np.save(tmp_path / "f.npy", np.zeros((8, 8, 2), np.float32))
    with pytest.raises(RuntimeError, match="shape mismatch"):
        main(["warp", str(tmp_path / "s.png"), str(tmp_path / "f.npy"), "--out", str(tmp_path / "o.png")])


# --------------------------------------------------------------------------- input files (item 14)
def _folder(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    Image.new("RGB", (64, 48), (90, 100, 110)).save(folder / "a.png")
    Image.new("RGB", (64, 48), (90, 100, 110)).save(folder / "g.gif")
    Image.new("RGB", (64, 48)).save(folder / ".hidden.png")
    (folder / "b.heic").write_bytes(b"\0\0\0\x18ftypheic")
    (folder / "notes.txt").write_text("x")
    (folder / "meta.json").write_text("{}")
    (folder / "sub").mkdir()
    return folder


def test_scan_images_says_what_it_skips(tmp_path):
    assert ".gif" in _io.IMAGE_EXTENSIONS
    found, skipped = _io.scan_images(_folder(tmp_path))
    assert sorted(found) == ["a", "g"]
    assert dict(skipped) == {".hidden.png": "hidden file", "b.heic": "HEIC is not supported: convert to JPEG/PNG",
                             "meta.json": "not an image file", "notes.txt": "not an image file",
                             "sub": "folder (sub-folders are not searched)"}
    assert _io.list_images(tmp_path / "in") == found
    line = _io.describe_skipped(skipped)
    assert line == ("skipped 5 files: .hidden.png (hidden file); b.heic (HEIC is not supported: convert to "
                    "JPEG/PNG); sub (folder (sub-folders are not searched)); 2 non-image files (.json, .txt)")


def test_rectify_reports_skipped_files_before_loading(tmp_path, capsys, monkeypatch):
    folder = _folder(tmp_path)
    seen = {}

    def stop(*args, **kwargs):
        seen["loaded"] = True
        raise ValueError("stop here")

    monkeypatch.setattr(options, "load_model", stop)
    code = main(["rectify", str(folder), "--out", str(tmp_path / "out"), "--device", "cpu"])
    out = capsys.readouterr().out
    assert code == 2 and seen  # the listing came first, then loading
    assert f"{folder}: skipped 5 files: .hidden.png (hidden file); b.heic (HEIC is not supported" in out


def test_rectify_names_unreadable_inputs(tmp_path, capsys, no_model_load):
    folder = tmp_path / "only"
    folder.mkdir()
    (folder / "a.heic").write_bytes(b"x")
    (folder / ".b.png").write_bytes(b"x")
    code, err = _run(["rectify", str(folder), "--out", str(tmp_path / "out")], capsys)
    assert code == 2
    assert "no images" in err and "a.heic (HEIC is not supported: convert to JPEG/PNG)" in err and ".b.png" in err
    code, err = _run(["rectify", str(folder / "a.heic"), "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and _last_line(err) == f"error: input {folder / 'a.heic'}: HEIC is not supported: convert to JPEG/PNG"


def test_gif_inputs_one_frame_read_several_refused(tmp_path):
    one = tmp_path / "one.gif"
    Image.new("RGB", (16, 12), (200, 0, 0)).save(one)
    rgb, _, _ = _io.read_rgb(one)
    assert rgb.shape == (12, 16, 3)
    frames = [Image.new("RGB", (16, 12), (i * 60, 0, 0)) for i in range(3)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    with pytest.raises(ValueError, match="holds 3 frames"):
        _io.read_rgb(tmp_path / "anim.gif")


# --------------------------------------------------------------------------- the type functions
@pytest.mark.parametrize("text", ["inf", "-inf", "nan", "1e400", "x", "", "9" * 5000])
def test_number_types_refuse_non_finite_and_junk(text):
    for parse in (options.int_arg(0, 10), options.float_arg(0.0, 10.0), options.max_pixels_arg, options.seed_arg):
        with pytest.raises(argparse.ArgumentTypeError, match="must be"):
            parse(text)


def test_number_types_accept_their_range():
    assert options.int_arg(1, 64)("64") == 64 and options.int_arg(1)(" 7 ") == 7
    assert options.float_arg(0.0, 1.0)("0") == 0.0
    with pytest.raises(argparse.ArgumentTypeError, match=r"in \(0, 1\]"):
        options.float_arg(0.0, 1.0, open_low=True)("0")
    assert options.max_pixels_arg("1e8") == 100_000_000
    assert options.parse_size("8192x16", "--size", maximum=8192) == (8192, 16)
    with pytest.raises(ValueError, match="at most 8192"):
        options.parse_size("8193", "--size", maximum=8192)


def test_out_of_memory_helpers_for_per_image_handlers():
    """The same line for a run's top level and for a per-image handler (rectify's loop)."""
    import torch

    args = argparse.Namespace(ensemble=2, processing_resolution=None)
    assert options.is_out_of_memory(MemoryError()) and options.is_out_of_memory(torch.OutOfMemoryError("x"))
    assert options.is_out_of_memory(RuntimeError("DefaultCPUAllocator: not enough memory: you tried to allocate"))
    assert not options.is_out_of_memory(RuntimeError("shape mismatch")) and not options.is_out_of_memory(ValueError())
    assert options.out_of_memory_message(MemoryError(), args) == (
        "out of memory (MemoryError); try a smaller --processing-resolution, a smaller --ensemble, or a device "
        "with more memory")
