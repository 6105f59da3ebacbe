"""A rectify run over image files and folders, before the model loads: what ``stablemotion rectify`` checks
and plans so that a batch fails early and resumes safely (the images go through :mod:`stablemotion.model.service`).

* :func:`collect_inputs`: the images of files and folders, one output name each.
* :func:`check_input_files`: each input's header (size, mode, one frame, its mask's size) and
  no output name taken by a symbolic link.
* :func:`read_model_tasks`: the tasks a pipeline folder serves (no weights loaded).
* :func:`check_out_folder`, :func:`clean_litter`: the output folder is writable; temporary files
  of a killed run are removed.
* :func:`plan_resume`: which images are already done with the same settings (the folder's
  manifest, :class:`stablemotion.io.outdir.Manifest`), refusing to mix settings unless forced.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> out = Path(tempfile.mkdtemp())
    >>> check_out_folder(out)
    >>> plan_resume(out, {"a": {"image": out / "a.png"}}, {"seed": 0}, "k1", force=False)
    ([], [])
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..io.images import PathLike
from ..tasks import TaskSpec, get_task

__all__ = ["GREY_MODES", "STATE_NAME", "ModelTasks", "check_input_files", "check_out_folder", "clean_litter",
           "collect_inputs", "plan_resume", "read_model_tasks"]

#: Name of the hidden state files and folder ``stablemotion rectify`` keeps in its output folder.
STATE_NAME = ".stablemotion-rectify"

def collect_inputs(inputs: Iterable[Path]) -> tuple[list[tuple[str, Path]], list[str]]:
    """(stem, path) of every input (files as given, folders' image files, not sub-folders), and one
    note per folder on what it holds but is not an input (hidden files, HEIC/RAW files, other files).

    Raises:
        ValueError: an empty folder, a file of a type that cannot be read, two inputs of one stem.
        FileNotFoundError: an input that does not exist.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> import numpy as np
        >>> from stablemotion.io.images import save_image
        >>> folder = Path(tempfile.mkdtemp())
        >>> _ = save_image(np.zeros((4, 4, 3), np.uint8), folder / "a.png")
        >>> (folder / "notes.txt").write_text("x")
        1
        >>> items, notes = collect_inputs([folder])
        >>> [stem for stem, _ in items], notes[0].endswith("skipped 1 file: 1 non-image file (.txt)")
        (['a'], True)
    """
    from ..io.images import IMAGE_EXTENSIONS, UNSUPPORTED_IMAGE_TYPES, describe_skipped, scan_images

    found: dict[str, Path] = {}
    notes: list[str] = []
    for item in inputs:
        if item.is_dir():
            images, skipped = scan_images(item)
            if not images:
                why = f" ({describe_skipped(skipped)})" if skipped else ""
                raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in folder {item}{why}")
            if skipped:
                notes.append(f"{item}: {describe_skipped(skipped)}")
            entries = list(images.items())
        elif item.is_file():
            why = UNSUPPORTED_IMAGE_TYPES.get(item.suffix.lower())
            if why is not None:
                raise ValueError(f"input {item}: {why}")
            entries = [(item.stem, item)]
        else:
            raise FileNotFoundError(f"input not found: {item}")
        for stem, path in entries:
            if stem in found and found[stem] != path:
                raise ValueError(f"two inputs share the name {stem!r} ({found[stem]}, {path}); outputs would collide")
            found[stem] = path
    return list(found.items()), notes


#: PIL modes of grey images (``grey="refuse"`` refuses them).
GREY_MODES = ("L", "1", "I", "I;16", "I;16B", "I;16L", "F", "LA")


def check_input_files(image: Path, mask: Path | None = None, *, outputs: Iterable[Path] = (),
                      max_pixels: int | None = None, grey: str = "refuse") -> None:
    """Header checks of one input (and its mask) before the model loads: no output name taken by a
    symbolic link, one frame, at most ``max_pixels`` pixels, not grey (``grey="refuse"``), a mask
    of the image's size.

    Raises:
        ValueError: a failed check, or a file that cannot be decoded (``cannot decode image: ...``).

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> import numpy as np
        >>> from stablemotion.io.images import save_image
        >>> path = save_image(np.zeros((4, 6), np.uint8), Path(tempfile.mkdtemp()) / "grey.png")
        >>> check_input_files(path, grey="convert")
        >>> check_input_files(path)
        Traceback (most recent call last):
        ...
        ValueError: ... is a grey image (L); pass --grey convert to replicate the channel
    """
    from PIL import Image, UnidentifiedImageError

    from ..io.images import check_single_frame, warnings_as_errors

    try:
        for path in outputs:  # replacing it would silently drop the user's link
            if path.is_symlink():
                raise ValueError(f"output {path} is a symbolic link; rectify never replaces or writes through "
                                 "links: remove it or choose another --out")
        with warnings_as_errors(), Image.open(image) as im:  # header only: our own size limit applies
            w, h = im.size
            mode = im.mode
            check_single_frame(im, str(image))
        if max_pixels is not None and w * h > max_pixels:
            raise ValueError(f"{image} is {w}x{h} px ({w * h / 1e6:.0f} megapixels), more than --max-pixels "
                             f"{max_pixels / 1e6:.0f} megapixels")
        if grey == "refuse" and mode in GREY_MODES:
            raise ValueError(f"{image} is a grey image ({mode}); pass --grey convert to replicate the channel")
        if mask is not None:
            with warnings_as_errors(), Image.open(mask) as m:
                if m.size != (w, h):
                    raise ValueError(f"mask {mask} is {m.size[0]}x{m.size[1]} px but the image is {w}x{h} px")
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"cannot decode image: {exc}") from None


@dataclass
class ModelTasks:
    """The tasks of a pipeline folder, from its ``model_index.json`` (no weights loaded).

    Attributes:
        default: the task it runs when none is named.
        served: every task it serves by name (several for a multi-task model).
        ensemble: its default ensemble size.

    Example:
        >>> from stablemotion.model.catalog import bundled_model_path
        >>> tasks = read_model_tasks(bundled_model_path("sir"))
        >>> tasks.default.name, sorted(tasks.served)
        ('sir', ['sir'])
    """

    default: TaskSpec
    served: dict[str, TaskSpec]
    ensemble: int = 1


def read_model_tasks(folder: PathLike) -> ModelTasks:
    """:class:`ModelTasks` of the pipeline folder ``folder``; ``ValueError`` when it names no valid task."""
    config = json.loads((Path(folder) / "model_index.json").read_text())
    try:
        default = get_task(config["task"])
        served = {t.name: t for t in map(get_task, config.get("tasks") or [config["task"]])}
    except (KeyError, ValueError, TypeError) as exc:
        raise ValueError(f"{folder}/model_index.json has no valid task description ({exc})") from None
    return ModelTasks(default, served, int(config.get("default_ensemble_size", 1)))


# --------------------------------------------------------------------------- the output folder
def check_out_folder(out: Path) -> None:
    """``out`` exists or can be made, and is writable (checked before the model loads).

    The probe is a new file of a unique name created exclusively (``mkstemp``: ``O_EXCL``,
    never through a link, never one another process probes with)."""
    import os
    import tempfile

    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=f"{STATE_NAME}.probe.", suffix=".tmp.probe", dir=out)
        os.close(fd)
        Path(probe).unlink(missing_ok=True)
    except OSError as exc:
        raise ValueError(f"--out {out} is not writable: {exc.strerror or exc}") from None


_LITTER = re.compile(r"^\..+\.[A-Za-z0-9_]{6,}\.tmp\.[A-Za-z0-9]+$")


def clean_litter(out: Path) -> int:
    """Remove temporary files a killed run left behind (``atomic_path``'s ``.NAME.XXXXXX.tmp.EXT``) -> how many.

    Only while holding the folder's lock (no other run's temporary files are there then);
    links are left alone (rectify never makes one).

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> out = Path(tempfile.mkdtemp())
        >>> _ = (out / ".a.x1y2z3.tmp.png").write_bytes(b""), (out / "a.png").write_bytes(b"")
        >>> clean_litter(out), sorted(p.name for p in out.iterdir())
        (1, ['a.png'])
    """
    removed = 0
    for path in out.iterdir():
        if _LITTER.match(path.name) and not path.is_symlink() and path.is_file():
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def _complete(outputs: Mapping[str, Path]) -> bool:
    """All of an image's outputs are in place (regular files, not links)."""
    return all(p.is_file() and not p.is_symlink() for p in outputs.values())


def _differ(old: dict[str, Any], new: dict[str, Any]) -> str:
    """The names of the settings that differ between two records, comma-separated."""
    return ", ".join(sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))) or "settings"


def _record_complete(man: Any, jobs: Mapping[str, Mapping[str, Path]], complete: set[str], key: str) -> None:
    for stem, outputs in jobs.items():
        if stem in complete:
            man.record(stem, key, (p.name for p in outputs.values()))


def _check_other_settings(man: Any, out: Path, stems: set[str], current: dict[str, Any], key: str,
                          force: bool) -> list[str]:
    """Refuse (unless ``force``) a folder holding images made with other settings -> notes to print."""
    other = sorted(s for s, e in man.outputs.items() if e["settings"] != key and man.present(s))
    if not other:
        return []
    differ = sorted({k for s in other for k in _differ(man.settings.get(man.outputs[s]["settings"], {}),
                                                            current).split(", ")})
    shown = ", ".join(other[:5]) + (" ..." if len(other) > 5 else "")
    if not force:
        ours = all(s in stems for s in other)
        raise ValueError(
            f"{out} holds {len(other)} image(s) made with other settings ({', '.join(differ)} differ: "
            f"{shown}); use another --out, or --force to " + ("redo them" if ours else
            "write there anyway (the images not in this run keep their settings, recorded per image)"))
    kept = [s for s in other if s not in stems]
    if not kept:
        return []
    return [f"note: {len(kept)} image(s) in {out} made with other settings are kept as they are "
            f"({', '.join(kept[:5])}{' ...' if len(kept) > 5 else ''}); the folder mixes settings"]


def plan_resume(out: Path, jobs: Mapping[str, Mapping[str, Path]], record: dict[str, Any], key: str,
                force: bool) -> tuple[list[str], list[str]]:
    """Holding the folder's lock: which images are done, and the folder's manifest updated for the run.

    ``jobs``: each image's stem -> its outputs; ``record``: the run's settings, ``key`` their
    :func:`~stablemotion.io.outdir.settings_key`. An image is done when its outputs are complete and
    the manifest records them with this run's settings (a folder without a manifest, or with an
    older version's single record of the same settings, vouches for complete outputs as before).
    A folder holding any image made with other settings is refused unless ``force``; with
    ``force`` this run's images are redone and the others stay, each recorded with its own
    settings. The images about to be (re)written are dropped from the manifest until they are
    finished. -> (stems done, notes to print)
    """
    from ..io.outdir import Manifest

    man = Manifest.load(out)
    man.merge_journals()  # images a killed run finished
    complete = {stem for stem, outputs in jobs.items() if _complete(outputs)}
    current = json.loads(json.dumps(record))
    if man.legacy is not None:  # an older version's one record for the whole folder (uncapped then)
        old = {"max_work_pixels": 0, **man.legacy}
        if old != current:
            results = [p.name for p in out.iterdir() if not p.name.startswith(".")]
            if results and not force:
                raise ValueError(f"{out} holds results made with other settings ({_differ(old, current)} "
                                 "differ); use another --out, or --force to redo this run's images there")
        else:
            _record_complete(man, jobs, complete, key)
    elif not man.found:  # no manifest: complete outputs count as done, as they always did
        _record_complete(man, jobs, complete, key)
    stems = set(jobs)
    notes = _check_other_settings(man, out, stems, current, key, force)
    done = [] if force else [s for s in jobs if s in complete and man.outputs.get(s, {}).get("settings") == key]
    man.forget(stems - set(done))
    man.settings[key] = record
    man.save(keep=(key,))
    man.clear_journals()
    return done, notes
