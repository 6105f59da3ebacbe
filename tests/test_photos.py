"""Named photo pools (stablemotion.data.photos) on a fake install root: no Debian package needed."""

from __future__ import annotations

import hashlib
import struct

import numpy as np
import pytest
from PIL import Image

from stablemotion.data import photos as P

MATE = "usr/share/backgrounds/mate/nature"


def _picture(seed: int, size: tuple[int, int]) -> Image.Image:
    """A smooth random picture of ``size`` (W, H): resizing it keeps its 16x16 thumbnail."""
    rng = np.random.default_rng(seed)
    small = (rng.random((6, 8, 3)) * 255).astype(np.uint8)
    return Image.fromarray(small).resize(size, Image.Resampling.BICUBIC)


def _save(root, rel, seed, size):
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    _picture(seed, size).save(path, quality=95)
    return path


@pytest.fixture
def root(tmp_path, monkeypatch):
    monkeypatch.setattr(P, "ROOT", tmp_path / "root")
    monkeypatch.setattr(P, "CACHE_DIR", tmp_path / "cache")
    (tmp_path / "root").mkdir()
    return tmp_path / "root"


def test_dedup_keeps_largest_copy_and_drops_small_images(root):
    big = _save(root, f"{MATE}/Lake.jpg", 1, (800, 600))
    _save(root, f"{MATE}/Lake-small.jpg", 1, (400, 300))  # the same picture, smaller
    other = _save(root, f"{MATE}/Forest.jpg", 2, (640, 480))
    _save(root, f"{MATE}/Tiny.jpg", 3, (200, 300))  # shorter side < MIN_SIDE
    assert P.pool_files("mate") == sorted([big, other])


def test_same_key_at_several_sizes_keeps_largest(root):
    theme = "usr/share/wallpapers/Autumn/contents/images"
    _save(root, f"{theme}/1280x800.jpg", 5, (1280, 800))
    largest = _save(root, f"{theme}/1920x1200.jpg", 5, (1920, 1200))
    _save(root, f"{theme}/1024x768.jpg", 5, (1024, 768))
    files = P.pool_files("plasma")
    assert files == [largest]
    assert P._KEY_OF[str(largest)] == "plasma-workspace-wallpapers/Autumn"


def test_near_duplicates_across_packages_collapse(root):
    _save(root, f"{MATE}/Lake.jpg", 1, (800, 600))
    _save(root, "usr/share/palapeli/collection/lake.jpg", 1, (1600, 1200))
    _save(root, "usr/share/palapeli/collection/river.jpg", 9, (640, 480))
    assert len(P.pool_files("debian")) == 2
    assert len(P.pool_files("debian-all")) == 2


def test_missing_packages_error_names_them_and_the_command(root):
    with pytest.raises(FileNotFoundError) as info:
        P.pool_files("debian")
    msg = str(info.value)
    assert "mate-backgrounds" in msg and "gcompris-qt-data" in msg
    assert "apt-get install -y" in msg
    with pytest.raises(ValueError, match="unknown photo pool"):
        P.pool_files("no-such-pool")


def test_install_command_lists_every_package():
    for src in P.SOURCES:
        assert src.package in P.INSTALL_COMMAND
    assert P.install_command("mate") == "apt-get install -y --no-install-recommends mate-backgrounds"


def test_split_is_a_fixed_hash_of_the_key():
    keys = [f"pkg/photo{i}" for i in range(3000)]
    splits = [P.split_of(k) for k in keys]
    assert set(splits) == {"train", "test"}
    assert 0.12 < splits.count("test") / len(keys) < 0.18
    for key, split in zip(keys[:50], splits[:50], strict=True):
        h = int(hashlib.sha1(key.encode()).hexdigest()[:12], 16) % 1000
        assert split == ("test" if h < 150 else "train")


def test_split_does_not_depend_on_other_files(root):
    for i in range(20):
        _save(root, f"{MATE}/photo{i:02d}.jpg", 100 + i, (400, 300))
    before = {p.name: P.split_of(p) for p in P.pool_files("mate")}
    assert "test" in before.values() and "train" in before.values()
    for i in range(20, 36):  # more photos, in this and another package
        _save(root, f"{MATE}/photo{i:02d}.jpg", 100 + i, (400, 300))
        _save(root, f"usr/share/palapeli/collection/p{i}.jpg", 500 + i, (400, 300))
    after = {p.name: P.split_of(p) for p in P.pool_files("debian")}
    assert {n: after[n] for n in before} == before
    assert before == {n: P.split_of(f"mate-backgrounds/{n[:-4]}") for n in before}


def test_resolve_pool_names(root):
    for i in range(20):
        _save(root, f"{MATE}/photo{i:02d}.jpg", 200 + i, (400, 300))
    every = P.resolve_pool("mate")
    train, test = P.resolve_pool("mate-train"), P.resolve_pool("debian-test")
    assert len(every) == 20 and sorted(train + test) == every
    assert test and set(train).isdisjoint(test)
    assert P.resolve_pool("bundled") is None
    assert P.resolve_pool("procedural") is None
    assert P.resolve_pool("nope-test") is None


def _rcc(files: dict[str, bytes]) -> bytes:
    """A minimal version-1 Qt resource bundle holding ``files`` in one folder ``resource``."""
    names, offsets = b"", {}
    for name in ["resource", *files]:
        offsets[name] = len(names)
        names += struct.pack(">HI", len(name), 0) + name.encode("utf-16-be")
    data, data_offsets = b"", []
    for content in files.values():
        data_offsets.append(len(data))
        data += struct.pack(">I", len(content)) + content
    tree = struct.pack(">iHii", 0, 2, 1, 1)  # root
    tree += struct.pack(">iHii", offsets["resource"], 2, len(files), 2)
    for name, off in zip(files, data_offsets, strict=True):
        tree += struct.pack(">iHhhi", offsets[name], 0, 0, 0, off)
    t = 20
    d = t + len(tree)
    n = d + len(data)
    return b"qres" + struct.pack(">iiii", 1, t, d, n) + tree + data + names


def test_rcc_bundles_are_extracted(root, tmp_path):
    import io

    buf = io.BytesIO()
    _picture(7, (512, 384)).save(buf, format="JPEG")
    bundle = root / "usr/share/gcompris-qt/rcc/erase.rcc"
    bundle.parent.mkdir(parents=True)
    bundle.write_bytes(_rcc({"cat.jpg": buf.getvalue(), "notes.txt": b"hi", "VanGogh.jpg": buf.getvalue()}))
    assert [m for m, _ in P.read_rcc(bundle)] == ["/resource/cat.jpg", "/resource/notes.txt", "/resource/VanGogh.jpg"]
    files = P.pool_files("gcompris")
    assert [f.name for f in files] == ["cat.jpg"]  # text skipped, the painting excluded
    assert files[0].is_relative_to(tmp_path / "cache") and files[0].read_bytes() == buf.getvalue()
    assert P.split_of(files[0]) == P.split_of("gcompris-qt-data/cat")
