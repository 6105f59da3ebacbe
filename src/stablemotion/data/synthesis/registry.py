"""The registry of synthetic-sample generators: :class:`SynthSpec` (a generator, its options
and its on-disk :class:`Layout`) by generator name, alias and task name.

A generator is declared with its task by :func:`declare_task` (the task spec and its
evaluation protocol go to :mod:`stablemotion.tasks`, the generator stays here: the data layer
sits above the task layer). Command-line options of the generators belong to the command line
(:mod:`stablemotion.cli.data`); this module knows nothing of argparse.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ...tasks import EvalProtocol, TaskSpec, get_protocol, get_task, register_task

__all__ = [
    "SynthOption",
    "Layout",
    "SynthSpec",
    "TaskEntry",
    "declare_task",
    "get_entry",
    "get_generator",
    "synth_tasks",
    "generator_names",
]


@dataclass(frozen=True)
class SynthOption:
    """One option of a generator or a layout: a keyword of ``make_sample`` / the writer and,
    unless ``flag`` is ``""``, a ``stablemotion synth`` option.

    Attributes:
        name: keyword name (``"max_angle"``).
        default: default value (also the command line's).
        help: help text.
        type: converter (``float``, ``int``, ``str``...).
        choices: allowed values, or None.
        low, high: bounds of a number (inclusive unless ``open_low``); None = unbounded.
        open_low: the lower bound is exclusive.
        flag: command-line flag; None derives ``--max-angle`` from the name, ``""`` keeps the
            option off the generic command line (``stablemotion.cli.data`` may add its own).
        action: argparse action instead of ``type`` (e.g. ``argparse.BooleanOptionalAction``).

    Example:
        >>> opt = SynthOption("max_angle", 12.0, low=0.0, high=25.0)
        >>> opt.cli_flag
        '--max-angle'
        >>> opt.check(30.0)
        Traceback (most recent call last):
        ...
        ValueError: max_angle must be in [0, 25], got 30.0
    """

    name: str
    default: Any
    help: str = ""
    type: Any = float
    choices: tuple[Any, ...] | None = None
    low: float | None = None
    high: float | None = None
    open_low: bool = False
    flag: str | None = None
    action: Any = None

    @property
    def cli_flag(self) -> str:
        return "--" + self.name.replace("_", "-") if self.flag is None else self.flag

    def check(self, value: Any) -> None:
        """Raise ``ValueError`` naming the option when ``value`` is not allowed."""
        if value is None:
            return
        if self.choices is not None and value not in self.choices:
            raise ValueError(f"{self.name} must be one of {self.choices}, got {value!r}")
        if self.low is not None or self.high is not None:
            v = float(value)
            below = self.low is not None and (v <= self.low if self.open_low else v < self.low)
            above = self.high is not None and v > self.high
            if below or above:
                lo = "-inf" if self.low is None else f"{self.low:g}"
                hi = "inf" if self.high is None else f"{self.high:g}"
                raise ValueError(f"{self.name} must be in {'(' if self.open_low else '['}{lo}, {hi}], got {value}")


@dataclass(frozen=True)
class Layout:
    """How a task's samples go to disk.

    Attributes:
        kind: one of :data:`stablemotion.tasks.LAYOUT_KINDS` (which dataset class reads it back).
        subdirs: folders inside ``OUT/SPLIT`` that a write fills (checked before writing).
        write: ``write(sample, split_dir, name, split, ext, quality, **options)`` writes one sample.
        options: layout options (:class:`SynthOption`), passed to ``write``.
        describe: the written layout for messages, formatted with ``out`` and ``split``.
    """

    kind: str
    subdirs: tuple[str, ...]
    write: Callable[..., None]
    options: tuple[SynthOption, ...] = ()
    describe: str = "{out}/{split}/{{input,gt,flow}}"


@dataclass(frozen=True)
class SynthSpec:
    """A task's synthetic-data generator.

    Attributes:
        name: generator name (``make_sample(name, ...)``, ``stablemotion synth NAME``).
        stream: the random stream id: sample ``i`` uses ``default_rng([seed, i, stream])``;
            unique per generator and never changed (it fixes every dataset made before).
        generate: ``generate(photo, rng, size, prefilter_sigma, **options) -> sample``:
            ``photo`` uint8 (H0, W0, 3) (a photo or a generated scene), ``size`` (H, W) pixels.
        layout: its :class:`Layout`.
        options: the generator's options (:class:`SynthOption`).
        aliases: other accepted names (the task name, a dashed spelling).
        size: default (H, W) in pixels.
        split: default split folder name.
        help: one line for ``stablemotion synth --help``.
        identity: ``identity(sample) -> sample``: the same scene with nothing to correct (the
            target as input, zero flow; for SIR a full rectangle without border), so a model
            trained on a share of them learns to leave a correct image alone
            (``identity_fraction`` of :func:`~stablemotion.data.synthesis.make_sample`).
    """

    name: str
    stream: int
    generate: Callable[..., Any]
    layout: Layout
    options: tuple[SynthOption, ...] = ()
    aliases: tuple[str, ...] = ()
    size: tuple[int, int] = (384, 512)
    split: str = "training"
    help: str = ""
    identity: Callable[[Any], Any] | None = None

    @property
    def cli_name(self) -> str:
        return self.name.replace("_", "-")

    def check_options(self, options: Mapping[str, Any], layout: bool = False) -> None:
        """Raise ``ValueError`` for a declared option (and, with ``layout``, layout option) out of bounds."""
        declared = {o.name: o for o in (*self.options, *(self.layout.options if layout else ()))}
        for key, value in options.items():
            if key in declared:
                declared[key].check(value)


@dataclass(frozen=True)
class TaskEntry:
    """A task with a generator: its spec, its generator and its evaluation protocol."""

    spec: TaskSpec
    synth: SynthSpec | None = None
    protocol: EvalProtocol | None = None


_ENTRIES: dict[str, TaskEntry] = {}  # task name -> entry (tasks with a generator)
_GENERATORS: dict[str, str] = {}  # generator name or alias -> task name


def _check_generator(spec: TaskSpec, synth: SynthSpec, overwrite: bool) -> None:
    """Raise ``ValueError`` when ``synth``'s names or random stream belong to another task."""
    if overwrite:
        return
    for key in {synth.name, *synth.aliases, spec.name}:
        owner = _GENERATORS.get(key)
        if owner is not None and owner != spec.name:
            raise ValueError(f"generator name {key!r} is already used by task {owner!r}")
    streams = {e.synth.stream: n for n, e in _ENTRIES.items() if e.synth is not None and n != spec.name}
    if synth.stream in streams:
        raise ValueError(f"random stream {synth.stream} is already used by task {streams[synth.stream]!r}")


def declare_task(
    spec: TaskSpec,
    synth: SynthSpec | None = None,
    protocol: EvalProtocol | None = None,
    overwrite: bool = False,
) -> TaskSpec:
    """Register a task with its generator and evaluation protocol in one call.

    The spec and the protocol go to :func:`stablemotion.tasks.register_task`; the generator
    becomes available to ``make_sample``, the dataset writers and ``stablemotion synth`` under
    its name, its aliases and the task's name.

    Example:
        >>> from stablemotion.tasks import get_protocol, get_task
        >>> declare_task(get_task("lens"), get_generator("lens"), get_protocol("lens")).name  # again: no change
        'lens'
        >>> declare_task(get_task("rotation"), get_generator("lens"))
        Traceback (most recent call last):
        ...
        ValueError: generator name 'lens' is already used by task 'lens'
    """
    if synth is not None:
        _check_generator(spec, synth, overwrite)
    register_task(spec, overwrite=overwrite, protocol=protocol)
    if synth is not None:
        _ENTRIES[spec.name] = TaskEntry(spec, synth, protocol)
        for key in {synth.name, *synth.aliases, spec.name}:
            _GENERATORS[key] = spec.name
    return spec


def get_entry(task: str | TaskSpec) -> TaskEntry:
    """The :class:`TaskEntry` of a task (by task name, generator name or alias); a task without
    a generator gets an entry with ``synth=None``."""
    name = task.name if isinstance(task, TaskSpec) else str(task).lower()
    name = _GENERATORS.get(name, name)
    if name in _ENTRIES:
        entry = _ENTRIES[name]
        return TaskEntry(get_task(name), entry.synth, get_protocol(name))
    spec = get_task(task)
    return TaskEntry(spec, None, get_protocol(spec))


def get_generator(name: str) -> SynthSpec:
    """The generator of a task, by generator name (``"rectangling"``), alias or task name.

    Example:
        >>> get_generator("sir").name, get_generator("rsc").layout.kind
        ('rectangling', 'rsreal')
    """
    key = str(name).lower()
    if key not in _GENERATORS:
        raise ValueError(f"task must be one of {sorted(synth_tasks())}, got {name!r}")
    synth = _ENTRIES[_GENERATORS[key]].synth
    assert synth is not None
    return synth


def synth_tasks() -> list[str]:
    """Generator names, ordered by their random stream id (the order they were added)."""
    synths = sorted((e.synth for e in _ENTRIES.values() if e.synth is not None), key=lambda s: s.stream)
    return [s.name for s in synths]


def generator_names() -> list[str]:
    """Names :func:`make_sample` and :func:`write_dataset` accept (one per declared task).

    Example:
        >>> generator_names()[:2]
        ['rectangling', 'rolling_shutter']
    """
    return synth_tasks()
