from __future__ import annotations

import pytest

from stablemotion.tasks import RSC, SIR, TaskSpec, available_tasks, get_task, register_task


def test_builtin_tasks_follow_the_method():
    assert SIR.conditions == ("mask", "image") and SIR.unet_in_channels == 12 and SIR.padding == "border"
    assert RSC.conditions == ("image",) and RSC.unet_in_channels == 8 and RSC.padding == "zeros"
    assert SIR.loss_weights == {"v": 1.0, "warp": 8.0, "mask": 8.0, "vgg": 0.1}
    assert RSC.loss_weights == {"v": 1.0, "warp": 1.0, "vgg": 0.01}
    assert SIR.resolution == (384, 512) and RSC.resolution == (256, 256)
    assert {"sir", "rsc"} <= set(available_tasks())


def test_user_task_round_trip_and_registry():
    task = TaskSpec(
        name="fisheye",
        conditions=("image",),
        padding="zeros",
        resolution=(256, 256),
        loss_weights={"v": 1, "warp": 2},
    )
    assert TaskSpec.from_dict(task.to_dict()) == task
    register_task(task)
    assert get_task("FISHEYE") is task
    assert get_task(task.to_dict()) == task
    with pytest.raises(ValueError, match="already registered"):
        register_task(task.replace(padding="border"))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"conditions": ("mask",)}, "must include 'image'"),
        ({"conditions": ("image", "image")}, "duplicate"),
        ({"padding": "wrap"}, "padding"),
        ({"resolution": (100, 128)}, "multiples of 8"),
        ({"loss_weights": {"l1": 1.0}}, "unknown loss terms"),
        ({"loss_weights": {"mask": 1.0}}, "needs a 'mask' condition"),
    ],
)
def test_invalid_tasks(kwargs, match):
    base = {"name": "t", "conditions": ("image",)}
    base.update(kwargs)
    with pytest.raises(ValueError, match=match):
        TaskSpec(**base)


def test_unknown_task_name_lists_choices():
    with pytest.raises(ValueError, match="available: .*rsc.*sir"):
        get_task("nope")
    with pytest.raises(ValueError, match="unknown task fields"):
        TaskSpec.from_dict({"name": "x", "conditions": ["image"], "colour": 1})


# --------------------------------------------------------------------------- the tasks package
def test_new_tasks_are_declared_with_generator_and_protocol():
    from stablemotion.data.synthesis import get_entry, get_generator, synth_tasks
    from stablemotion.tasks import LENS, ROTATION, get_protocol

    for spec in (ROTATION, LENS):
        assert get_task(spec.name) is spec and spec.conditions == ("image",) and spec.padding == "border"
        entry = get_entry(spec.name)
        assert entry.synth is get_generator(spec.name) and entry.synth.layout.kind == "folder"
        assert entry.synth.layout.subdirs == ("input", "gt", "flow")
        assert get_protocol(spec.name).metrics == ("psnr", "ssim", "epe")
    assert get_generator("sir").name == "rectangling" and get_generator("rsc").name == "rolling_shutter"
    assert get_protocol("rsc").epe_region == "valid" and get_protocol("sir").layout == "dird"
    assert synth_tasks() == ["rectangling", "rolling_shutter", "rotation", "lens"]
    streams = [get_generator(n).stream for n in synth_tasks()]
    assert len(set(streams)) == len(streams)


def test_task_package_import_is_light():
    import subprocess
    import sys

    code = ("import sys, stablemotion.tasks, stablemotion.cli; "
            "print(sorted(m for m in ('torch', 'cv2', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


def test_eval_protocol_scores_images_and_flows():
    import numpy as np

    from stablemotion.tasks import EvalProtocol, get_protocol

    rng = np.random.default_rng(0)
    gt = rng.integers(0, 255, (32, 40, 3)).astype(np.uint8)
    flow_gt = np.zeros((32, 40, 2), np.float32)
    flow = flow_gt + np.array([3.0, 4.0], np.float32)
    scores = get_protocol("rotation").score(gt, gt, flow, flow_gt)
    assert scores["psnr"] == float("inf") or scores["psnr"] > 90
    assert scores["ssim"] == pytest.approx(1.0) and scores["epe"] == pytest.approx(5.0)
    assert "epe" not in get_protocol("lens").score(gt, gt)
    # RSC scores EPE only where the gt flow samples inside the image.
    flow_gt[:, :10, 0] = -20.0  # the left columns look outside the frame
    flow = flow_gt.copy()
    flow[:, :10, 0] += 7.0
    assert get_protocol("rsc").score(gt, gt, flow, flow_gt)["epe"] == pytest.approx(0.0)
    assert get_protocol("rotation").score(gt, gt, flow, flow_gt)["epe"] == pytest.approx(7.0 * 10 / 40)
    with pytest.raises(ValueError, match="unknown metrics"):
        EvalProtocol(metrics=("psnr", "fid"))


@pytest.fixture
def shift_task():
    """A user task declared in one place: a horizontal shift with an exact flow."""
    import numpy as np

    from stablemotion.data.synthesis import Layout, SynthOption, SynthSpec, declare_task, registry
    from stablemotion.data.synthesis.photos import random_photo_crop
    from stablemotion.data.synthesis.writer import FOLDER_SUBDIRS, WarpSample, write_folder_sample
    from stablemotion.tasks import EvalProtocol, _spec

    def generate(photo, rng, size, prefilter_sigma, max_shift=4.0):
        h, w = size
        shift = int(round(rng.uniform(1, max_shift)))
        scene = random_photo_crop(photo, (h, w + shift), rng, prefilter_sigma=prefilter_sigma)
        flow = np.zeros((h, w, 2), np.float32)
        flow[..., 0] = shift
        return WarpSample(input=scene[:, :w].copy(), gt=scene[:, shift:].copy(), flow=flow, params={"shift": shift})

    spec = TaskSpec(name="shift", conditions=("image",), resolution=(64, 64), loss_weights={"v": 1, "warp": 1})
    synth = SynthSpec(name="shift", stream=99, generate=generate,
                      layout=Layout("folder", FOLDER_SUBDIRS, write_folder_sample),
                      options=(SynthOption("max_shift", 4.0, "largest shift, pixels", low=1.0, high=16.0),),
                      size=(32, 48), help="horizontal shifts")
    declare_task(spec, synth, EvalProtocol())
    yield spec
    for table in (_spec._REGISTRY, _spec._PROTOCOLS, registry._ENTRIES, registry._GENERATORS):
        table.pop("shift", None)


def test_a_declared_task_gets_samples_datasets_and_a_cli_command(shift_task, tmp_path, capsys):
    import numpy as np

    from stablemotion.cli import main
    from stablemotion.data import TaskFolderDataset
    from stablemotion.data.synth import make_sample
    from stablemotion.data.synthesis import declare_task

    s = make_sample("shift", 0, 0, (16, 24), None, max_shift=6.0)
    assert np.array_equal(s.gt[:, : 24 - s.params["shift"]], s.input[:, s.params["shift"]:])
    rc = main(["synth", "shift", str(tmp_path), "--num", "2", "--max-shift", "8", "--workers", "1", "--ext", "png"])
    assert rc == 0
    assert f"{tmp_path}/training/{{input,gt,flow}}" in capsys.readouterr().out
    ds = TaskFolderDataset(tmp_path / "training", "shift")
    assert len(ds) == 2 and ds[1]["flow"].shape == (2, 32, 48)
    rc = main(["synth", "shift", str(tmp_path / "x"), "--num", "1", "--max-shift", "30"])
    assert rc == 2 and "max_shift must be in [1, 16]" in capsys.readouterr().err
    import dataclasses

    from stablemotion.data.synthesis import get_generator

    with pytest.raises(ValueError, match="random stream 99"):  # a second task may not reuse a stream
        declare_task(shift_task.replace(name="shift2"), dataclasses.replace(get_generator("shift"), name="shift2"))


def test_synth_cli_lists_every_declared_generator(capsys):
    from stablemotion.cli import main

    with pytest.raises(SystemExit):
        main(["synth", "--help"])
    out = capsys.readouterr().out
    for kind in ("rectangling", "rolling-shutter", "rotation", "lens"):
        assert kind in out
    with pytest.raises(SystemExit):
        main(["synth", "rotation", "--help"])
    out = capsys.readouterr().out
    assert "--min-angle" in out and "--max-angle" in out
    assert "straighten" in out and "panorama" not in out  # its own --style, not rectangling's
