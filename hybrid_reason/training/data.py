"""The data stream of training: task rows -> seeded on-the-fly augmentation -> rendering -> batches.

Training reads an endless, deterministic stream. Example ``i`` of the stream is

    row  = perm_e[i mod n]            perm_e: the permutation of epoch e = i // n, fixed by (seed, e)
    aug  = task.sample_augmentation(default_rng([seed, 1, i]), train=True)   (the task's options decide)
           or, with a pool of K augmentations per row (``augmentations: K``, TRM's fixed augmented
           dataset), pool entry k = default_rng([seed, 1, i]).integers(K) of the row, drawn from
           default_rng([3, row, k]): the pool does not depend on the seed, so every seed and every
           system trained on the task sees the same K texts per row (and a feature cache on disk serves them)
    ex   = task.render(rows[row], aug, budget=budget)     (budget: the backbone's PromptBudget, if any)

and batch ``b`` of rank ``r`` (of ``world`` ranks) holds the examples ``(b * world + r) * B + k`` for
``k < B``: ranks never share an example, and a worker ``w`` of ``W`` DataLoader workers builds the
batches ``b = w, w + W, ...``, which the DataLoader hands out in order. Nothing here depends on how
many batches were drawn before, so the stream restarts exactly at any batch: ``StreamLoader`` starts
it at the trainer's ``global_step`` (one batch per optimizer step), which is how a resumed run reads
the data an unbroken run would have read.

Validation and test sets are map-style: row ``i`` rendered without augmentation (or with the
deterministic augmentation ``default_rng([seed, 2, i])`` when ``eval_augment`` is on), sharded by
Lightning's DistributedSampler under DDP.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import lightning.pytorch as pl
import numpy as np
import torch
from datasets import Dataset
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from torch.utils.data import Dataset as TorchDataset

from ..tasks import Task, task_from_spec
from ..tasks.base import PromptBudget, Rendered
from ..tasks.keys import puzzle_key, puzzle_vocabulary

# Seed streams: permutations, training augmentations, evaluation augmentations and the pool never share draws.
_PERM, _TRAIN_AUG, _EVAL_AUG, _POOL = 0, 1, 2, 3


class Batch(NamedTuple):
    """A collated batch of rendered examples (what the LightningModule receives)."""

    texts: list[str]  # B prompts
    slot_spans: list[list[tuple[int, int] | None]]  # B lists of S spans
    labels: Tensor  # [B, S] int64, -100 = ignored
    ids: list[str]  # B readable example ids (meta["id"])
    index: Tensor  # [B] int64: stream index (training) or row index (evaluation)
    puzzle_ids: Tensor  # [B] int64: TRM's puzzle ID of the example's task (0 = unknown)
    dropped: Tensor  # [B] int64: demonstrations the prompt lost to the prompt budget (meta["dropped_demonstrations"])


def collate(examples: list[Rendered], index: list[int], puzzle_ids: list[int]) -> Batch:
    """Stack rendered examples into a Batch; every example must have the same number of slots."""
    sizes = {len(ex.labels) for ex in examples}
    if len(sizes) != 1:
        ids = [ex.meta.get("id") for ex in examples]
        raise ValueError(f"examples {ids} have different slot counts {sorted(sizes)}; a batch must be rectangular")
    return Batch(
        texts=[ex.text for ex in examples],
        slot_spans=[list(ex.slot_spans) for ex in examples],
        labels=torch.tensor([ex.labels for ex in examples], dtype=torch.long),
        ids=[str(ex.meta.get("id", i)) for ex, i in zip(examples, index)],
        index=torch.tensor(index, dtype=torch.long),
        puzzle_ids=torch.tensor(puzzle_ids, dtype=torch.long),
        dropped=torch.tensor([ex.meta.get("dropped_demonstrations", 0) for ex in examples], dtype=torch.long),
    )


class TrainStream(IterableDataset):
    """The endless training stream of collated batches (see the module docstring for its order)."""

    def __init__(
        self,
        task: Task,
        rows: Dataset,
        batch_size: int,
        seed: int = 0,
        puzzles: dict[str, int] | None = None,
        rank: int = 0,
        world_size: int = 1,
        budget: PromptBudget | None = None,
        augmentations: int | None = None,
    ):
        if len(rows) == 0:
            raise ValueError(f"task {task.name!r}: the training split is empty")
        self.task, self.rows, self.batch_size, self.seed, self.budget = task, rows, batch_size, seed, budget
        self.augmentations = augmentations
        self.puzzles = puzzles or {}
        self.rank, self.world_size = rank, world_size
        self.start_batch = 0
        self._perm: tuple[int, np.ndarray] | None = None

    def row_index(self, i: int) -> int:
        """The dataset row of stream example ``i``."""
        epoch, j = divmod(i, len(self.rows))
        if self._perm is None or self._perm[0] != epoch:
            self._perm = (epoch, np.random.default_rng([self.seed, _PERM, epoch]).permutation(len(self.rows)))
        return int(self._perm[1][j])

    def example(self, i: int) -> tuple[Rendered, int]:
        """Stream example ``i``, rendered, and its puzzle ID."""
        r = self.row_index(i)
        row, rng = self.rows[r], np.random.default_rng([self.seed, _TRAIN_AUG, i])
        if self.augmentations is not None:
            rng = np.random.default_rng([_POOL, r, int(rng.integers(self.augmentations))])
        aug = self.task.sample_augmentation(rng, True)
        return self.task.render(row, aug, budget=self.budget), self.puzzles.get(puzzle_key(row), 0)

    def batch_indices(self, b: int) -> list[int]:
        """The stream indices of batch ``b`` on this rank."""
        first = (b * self.world_size + self.rank) * self.batch_size
        return list(range(first, first + self.batch_size))

    def batch(self, b: int) -> Batch:
        """Batch ``b`` of this rank, collated."""
        index = self.batch_indices(b)
        examples, puzzle_ids = zip(*(self.example(i) for i in index))
        return collate(list(examples), index, list(puzzle_ids))

    def __iter__(self) -> Iterator[Batch]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        b = self.start_batch + worker
        while True:
            yield self.batch(b)
            b += workers


class EvalSet(TorchDataset):
    """A validation/test split as a map-style dataset of (rendered example, row, puzzle ID)."""

    def __init__(
        self,
        task: Task,
        rows: Dataset,
        seed: int = 0,
        augment: bool = False,
        puzzles: dict | None = None,
        budget: PromptBudget | None = None,
    ):
        self.task, self.rows, self.seed, self.augment, self.budget = task, rows, seed, augment, budget
        self.puzzles = puzzles or {}

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[Rendered, int, int]:
        row = self.rows[int(i)]
        aug = (
            self.task.sample_augmentation(np.random.default_rng([self.seed, _EVAL_AUG, int(i)]), False)
            if self.augment
            else None
        )
        return self.task.render(row, aug, budget=self.budget), int(i), self.puzzles.get(puzzle_key(row), 0)


def collate_eval(items: list[tuple[Rendered, int, int]]) -> Batch:
    """DataLoader collate_fn of an EvalSet."""
    examples, index, puzzle_ids = zip(*items)
    return collate(list(examples), list(index), list(puzzle_ids))


class StreamLoader(DataLoader):
    """A DataLoader over a TrainStream that restarts the stream at ``position()`` on every ``iter()``."""

    def __init__(self, stream: TrainStream, position: Callable[[], int], **kwargs: Any):
        super().__init__(stream, batch_size=None, **kwargs)
        self.position = position

    def __iter__(self):
        self.dataset.start_batch = int(self.position())
        return super().__iter__()


def default_num_workers() -> int:
    """DataLoader workers for this machine: min(4, usable cores - 1), so rendering overlaps the step and
    one core stays with the main process (0 on one core). Measured on 2 cores (the CPU demo, 150 steps,
    ``torch_threads: 1``): 1 worker 108 / 95 s, none 113 / 105 s."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(0, min(4, cores - 1))


class TaskDataModule(pl.LightningDataModule):
    """Task rows -> augmentation -> rendering -> batches, for training, validation and testing.

    Args:
        task: the task section ``{name: <family>, <option>: <value>}`` (linked to the model's).
        batch_size: examples per training batch = carry slots per rank.
        eval_batch_size: examples per validation/test batch (default: batch_size).
        num_workers: DataLoader worker processes rendering batches (None: ``default_num_workers()``,
            min(4, cores - 1)).
        seed: fixes the epoch permutations and augmentations of the stream.
        augmentations: draw each training example's augmentation from a fixed pool of this many per row,
            the same for every seed (TRM trains on a fixed augmented dataset; a pool also lets
            ``model.feature_cache_dir`` serve repeated texts); None: a fresh draw per example.
        eval_augment: render evaluation rows under a fixed random augmentation instead of none.
        val_split / test_split: the task splits used by validate / test.
        val_limit / test_limit: evaluate on the first rows only (None: all).
        puzzle_ids: serve TRM's puzzle IDs (one per puzzle of the training split, from 1; 0 = unknown);
            off, every ID is 0. The CLI links it to ``model.num_puzzle_ids > 0``.
    """

    def __init__(
        self,
        task: dict[str, Any],
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int | None = None,
        seed: int = 0,
        eval_augment: bool = False,
        val_split: str = "validation",
        test_split: str = "test",
        val_limit: int | None = None,
        test_limit: int | None = None,
        puzzle_ids: bool = False,
        augmentations: int | None = None,
    ):
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"data.batch_size must be >= 1, got {batch_size}")
        if augmentations is not None and augmentations < 1:
            raise ValueError(
                f"data.augmentations must be >= 1 (or null: a fresh draw per example), got {augmentations}"
            )
        self.augmentations = augmentations
        if num_workers is not None and num_workers < 0:
            raise ValueError(f"data.num_workers must be >= 0 (or null: as many as the machine has), got {num_workers}")
        self.task = task_from_spec(task)
        self.task_spec = dict(task)
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size or batch_size
        self.num_workers = default_num_workers() if num_workers is None else num_workers
        self.seed, self.puzzle_ids = seed, puzzle_ids
        self.eval_augment = eval_augment
        self.splits = {"validate": (val_split, val_limit), "test": (test_split, test_limit)}
        self._rows: dict[str, Dataset] = {}
        self.prompt_budget: PromptBudget | None = None
        self._puzzles: dict[str, int] | None = None

    def set_prompt_budget(self, budget: PromptBudget | None) -> None:
        """Fit every prompt to ``budget`` (the backbone's context, from whoever loaded the backbone):
        splits load under it (ARC: ``on_too_long: skip`` drops queries) and render under it."""
        if budget != self.prompt_budget:
            self.prompt_budget, self._rows, self._puzzles = budget, {}, None

    def budget_stats(self, split: str) -> dict[str, int]:
        """``{prompts_with_drops, demonstrations_dropped, queries_skipped}`` of ``split`` under the prompt budget."""
        return self.task.budget_stats(split, self.prompt_budget)

    def rows(self, split: str, limit: int | None = None) -> Dataset:
        """The task's split (loaded once), cut to its first ``limit`` rows."""
        if split not in self._rows:
            if split not in self.task.splits:
                raise ValueError(f"task {self.task.name!r} has no split {split!r}; it has {self.task.splits}")
            self._rows[split] = self.task.load(split, self.prompt_budget)
        ds = self._rows[split]
        return ds.select(range(min(limit, len(ds)))) if limit is not None else ds

    @property
    def puzzles(self) -> dict[str, int]:
        """Puzzle key -> TRM puzzle ID, from the training split (IDs start at 1; 0 = unknown).

        Empty (every ID 0) unless ``puzzle_ids`` is on.
        """
        if not self.puzzle_ids:
            return {}
        if self._puzzles is None:
            self._puzzles = puzzle_vocabulary(self.rows("train"))
        return self._puzzles

    def train_stream(self) -> TrainStream:
        """The training stream of this rank."""
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
        return TrainStream(
            self.task,
            self.rows("train"),
            self.batch_size,
            self.seed,
            self.puzzles,
            rank,
            world,
            self.prompt_budget,
            self.augmentations,
        )

    def train_dataloader(self) -> StreamLoader:
        """Batches of the stream, starting at the trainer's global step (exact resume)."""
        trainer = self.trainer
        return StreamLoader(
            self.train_stream(),
            position=lambda: trainer.global_step if trainer is not None else 0,
            num_workers=self.num_workers,
            persistent_workers=False,  # workers must be re-created with the stream's new start
        )

    def eval_dataloader(self, stage: str) -> DataLoader:
        """The validation or test DataLoader."""
        split, limit = self.splits[stage]
        dataset = EvalSet(
            self.task, self.rows(split, limit), self.seed, self.eval_augment, self.puzzles, self.prompt_budget
        )
        return DataLoader(
            dataset,
            batch_size=self.eval_batch_size,
            shuffle=False,
            collate_fn=collate_eval,
            num_workers=self.num_workers,
        )

    def val_dataloader(self) -> DataLoader:
        """The validation split's batches."""
        return self.eval_dataloader("validate")

    def test_dataloader(self) -> DataLoader:
        """The test split's batches."""
        return self.eval_dataloader("test")
