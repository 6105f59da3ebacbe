"""The trainer's data: the configured datasets and the step batches a run draws from them.

Batches are pure functions of ``(seed, step, process)``: global batch ``s`` is positions
``[s*G, (s+1)*G)`` of an endless stream of per-epoch permutations, and each sample's
augmentation is seeded by ``(seed, epoch, index)``, so a resumed run sees exactly the data the
uninterrupted run would have seen. A multi-task run goes round-robin over its tasks, each
with its own stream.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..data import Augment, DIRDDataset, RSRealDataset, TaskFolderDataset
from ..tasks import MASK_CONDITIONS, TaskSpec, missing_condition_value
from .config import TrainConfig

__all__ = ["build_dataset", "step_loader"]


def build_dataset(cfg: TrainConfig, split: str = "train", task: str | None = None) -> Dataset:
    """The configured dataset (no augmentation); ``split`` is ``"train"`` or ``"val"``;
    ``task``: which task's data in a multi-task run (default: the run's task)."""
    spec = cfg.task_spec if task is None else next(t for t in cfg.task_specs if t.name == task)
    data = cfg.task_data(spec.name)
    root = data.train if split == "train" else data.val
    if not root:
        where = f"data.tasks.{spec.name}" if cfg.is_multi_task else "data"
        raise ValueError(f"no {where}.{split} folder configured")
    if data.format == "dird":
        flows: Any = data.flows if (split == "train" and data.flows) else None
        return DIRDDataset(root, split="", flow_dir=flows)
    if data.format == "rsreal":
        return RSRealDataset(root)
    return TaskFolderDataset(root, spec)


def mask_keys(task: TaskSpec) -> tuple[str, ...]:
    """The task's conditions that are masks (resized with nearest neighbours)."""
    return tuple(k for k in task.conditions if k in MASK_CONDITIONS)


class _StepBatches(Sampler[list[tuple[int, int]]]):
    """Global batch ``s`` = positions ``[s*G, (s+1)*G)`` of an endless stream of per-epoch
    permutations; this process yields its slice of each. Keys are ``(epoch, index)``.

    Example:
        >>> batches = _StepBatches(5, batch_size=2, num_processes=1, rank=0, seed=0, start_step=0, steps=4)
        >>> len(batches), len(batches.batch_keys(3))
        (4, 2)
        >>> batches.batch_keys(2) == _StepBatches(5, 2, 1, 0, 0, 2, 4).batch_keys(2)  # the same after a resume
        True
    """

    def __init__(self, n: int, batch_size: int, num_processes: int, rank: int, seed: int, start_step: int,
                 steps: int) -> None:
        self.n, self.bs, self.world, self.rank = n, batch_size, num_processes, rank
        self.seed, self.start, self.steps = seed, start_step, steps
        self._perms: dict[int, torch.Tensor] = {}

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            self._perms = {epoch: torch.randperm(self.n, generator=g)}
        return self._perms[epoch]

    def batch_keys(self, step: int) -> list[tuple[int, int]]:
        g = self.bs * self.world
        first = step * g + self.rank * self.bs
        keys = []
        for pos in range(first, first + self.bs):
            epoch, off = divmod(pos, self.n)
            keys.append((epoch, int(self._perm(epoch)[off])))
        return keys

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for step in range(self.start, self.steps):
            yield self.batch_keys(step)

    def __len__(self) -> int:
        return max(0, self.steps - self.start)


class _AugmentedView(Dataset):
    """Applies :class:`Augment` with a generator seeded by ``(seed, epoch, index)``."""

    def __init__(self, base: Dataset, size: tuple[int, int], hflip: float, vflip: float, seed: int,
                 masks: tuple[str, ...]) -> None:
        self.base, self.size, self.hflip, self.vflip, self.seed, self.masks = base, size, hflip, vflip, seed, masks

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        epoch, index = key
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch * 10_007 + index) % (2**63))
        sample = self.base[index]
        return Augment(self.size, self.hflip, self.vflip, mask_keys=self.masks, generator=g)(sample)


class _TaskMix(Dataset):
    """A multi-task run's training data: key ``(task index, epoch, index)`` -> that task's
    augmented sample, with ``"task"`` (its name) and every model condition the task lacks filled
    with its constant (:func:`~stablemotion.tasks.missing_condition_value`, in [-1, 1])."""

    def __init__(self, views: list[_AugmentedView], specs: list[TaskSpec], conditions: tuple[str, ...]) -> None:
        self.views, self.specs, self.conditions = views, specs, conditions

    def __len__(self) -> int:
        return sum(len(v) for v in self.views)

    def __getitem__(self, key: tuple[int, int, int]) -> dict[str, Any]:
        i, epoch, index = key
        sample = dict(self.views[i][(epoch, index)])
        like = sample["image"]
        for name in self.conditions:
            if name not in self.specs[i].conditions:
                channels = 1 if name in MASK_CONDITIONS else 3
                sample[name] = like.new_full((channels, *like.shape[-2:]), missing_condition_value(name) * 2 - 1)
        sample["task"] = self.specs[i].name
        return sample


class _TaskRounds(Sampler[list[tuple[int, int, int]]]):
    """Multi-task batches: micro-step ``s`` belongs to task ``schedule[s % len(schedule)]`` (each
    task ``weight`` times per round) and is that task's ``n``-th batch, drawn from its own
    :class:`_StepBatches` stream, so a resumed run sees the same batches.

    Example:
        >>> streams = [_StepBatches(4, 1, 1, 0, seed, 0, 6) for seed in (0, 1)]
        >>> rounds = _TaskRounds(streams, weights=[2, 1], start_step=0, steps=6)
        >>> [rounds.task_of(s) for s in range(4)]
        [(0, 0), (0, 1), (1, 0), (0, 2)]
    """

    def __init__(self, streams: list[_StepBatches], weights: list[int], start_step: int, steps: int) -> None:
        self.streams, self.start, self.steps = streams, start_step, steps
        self.schedule = [i for i, w in enumerate(weights) for _ in range(w)]

    def task_of(self, step: int) -> tuple[int, int]:
        """(task index, that task's own step) of micro-step ``step``."""
        rounds, pos = divmod(step, len(self.schedule))
        task = self.schedule[pos]
        return task, rounds * self.schedule.count(task) + self.schedule[:pos].count(task)

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        for step in range(self.start, self.steps):
            task, own = self.task_of(step)
            yield [(task, epoch, index) for epoch, index in self.streams[task].batch_keys(own)]

    def __len__(self) -> int:
        return max(0, self.steps - self.start)


def _collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack the tensors of ``samples`` (B of them) into (B, ...) tensors; other values become lists."""
    out: dict[str, Any] = {}
    for key in samples[0]:
        vals = [s[key] for s in samples]
        out[key] = torch.stack(vals) if isinstance(vals[0], torch.Tensor) else vals
    return out


def step_loader(
    cfg: TrainConfig, train_sets: Mapping[str, Dataset], tasks: Mapping[str, TaskSpec], conditions: tuple[str, ...],
    num_processes: int, rank: int, start_step: int,
) -> DataLoader:
    """This process's training batches from optimizer step ``start_step`` to ``train.max_steps``
    (``grad_accum`` micro-batches per step), each a dict of (B, C, H, W) tensors in [-1, 1] and
    flows in pixels. ``tasks``: the tasks trained, by name (more than one: a multi-task run, whose
    batches are one task's each, named by ``"task"``, with the ``conditions`` it lacks filled in)."""
    c = cfg
    start, steps = start_step * c.train.grad_accum, c.train.max_steps * c.train.grad_accum

    def stream(ds: Dataset, seed: int) -> _StepBatches:
        return _StepBatches(len(ds), c.train.batch_size, num_processes, rank, seed, start, steps)  # type: ignore[arg-type]

    def view(ds: Dataset, spec: TaskSpec, seed: int) -> _AugmentedView:
        return _AugmentedView(ds, c.task_resolution(spec.name), c.data.hflip, c.data.vflip, seed, mask_keys(spec))

    specs = list(tasks.values())
    if not c.is_multi_task:
        ds = train_sets[specs[0].name]
        return DataLoader(view(ds, specs[0], c.train.seed), batch_sampler=stream(ds, c.train.seed),
                          num_workers=c.data.num_workers, collate_fn=_collate, persistent_workers=False)
    seeds = [c.train.seed * 31 + i for i in range(len(specs))]  # one data stream per task
    mix = _TaskMix([view(train_sets[t.name], t, sd) for t, sd in zip(specs, seeds, strict=True)], specs, conditions)
    rounds = _TaskRounds([stream(train_sets[t.name], sd) for t, sd in zip(specs, seeds, strict=True)],
                         [c.task_data(t.name).weight for t in specs], start, steps)
    return DataLoader(mix, batch_sampler=rounds, num_workers=c.data.num_workers, collate_fn=_collate,
                      persistent_workers=False)
