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
