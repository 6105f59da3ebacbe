from __future__ import annotations

import numpy as np
import pytest
import torch

from stablemotion.io.images import (
    atomic_path,
    image_to_tensor,
    list_images,
    load_image,
    save_image,
    tensor_to_image,
)


def test_atomic_path_keeps_old_file_on_failure(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("partial")
        raise RuntimeError("crash mid-write")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]
    with pytest.raises(FileExistsError, match="out.txt"), atomic_path(target, overwrite=False):
        pass


def test_image_round_trip_and_listing(tmp_path, photo):
    save_image(photo, tmp_path / "a.png")
    assert np.array_equal(load_image(tmp_path / "a.png"), photo)
    assert load_image(tmp_path / "a.png", mode="L").shape == photo.shape[:2]
    save_image(photo, tmp_path / "b.jpg")
    assert set(list_images(tmp_path)) == {"a", "b"}
    save_image(photo, tmp_path / "a.jpg")
    with pytest.raises(ValueError, match="share the stem 'a'"):
        list_images(tmp_path)
    with pytest.raises(ValueError, match="uint8"):
        save_image(photo.astype(np.float32), tmp_path / "c.png")


def test_tensor_conversions(photo):
    t = image_to_tensor(photo)
    assert t.shape == (3, *photo.shape[:2]) and t.min() >= -1 and t.max() <= 1
    assert np.array_equal(tensor_to_image(t), photo)
    assert tensor_to_image(torch.full((1, 2, 2), 5.0)).max() == 255


def test_atomic_writes_get_the_usual_file_mode(tmp_path):
    import os

    from stablemotion.io.images import atomic_path

    old = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "a.txt") as tmp:
            tmp.write_text("x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644


def test_umask_modes_fixes_files_written_in_the_block_only(tmp_path):
    import os

    from stablemotion.io.images import umask_modes

    folder = tmp_path / "model"
    (folder / "sub").mkdir(parents=True)
    (folder / "keep.txt").write_text("mine")
    os.chmod(folder / "keep.txt", 0o600)  # the user's own file, not touched by the block
    old = os.umask(0o027)
    try:
        with umask_modes(folder):
            for name in ("new.safetensors", "sub/w.safetensors"):  # as safetensors leaves them
                (folder / name).write_bytes(b"x")
                os.chmod(folder / name, 0o600)
    finally:
        os.umask(old)
    assert (folder / "new.safetensors").stat().st_mode & 0o777 == 0o640
    assert (folder / "sub" / "w.safetensors").stat().st_mode & 0o777 == 0o640
    assert (folder / "keep.txt").stat().st_mode & 0o777 == 0o600
