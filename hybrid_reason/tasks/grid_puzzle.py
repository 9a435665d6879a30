"""What Sudoku and Maze share: a square grid puzzle, generated offline or read from a sapientinc CSV."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from datasets import Dataset, Features

from .base import Task
from .csv_split import load_csv_split


@dataclass
class GridPuzzleTask(Task):
    """A family of n x n grid puzzles with one slot per cell.

    Shared options: ``size`` (n); ``num_train`` / ``num_validation`` / ``num_test`` and ``seed`` for
    generated splits; ``source``: "generate", or a sapientinc-style CSV (a folder of {split}.csv, a
    path with "{split}" in it, one file for every split, or "hub:<dataset id>"); ``limit``: first rows
    of a CSV split; ``augment``: training augmentations. A family gives its row ``features``, its CSV
    row check, its row generator and the generator's own options (``generator_options``).
    """

    size: int = 9
    num_train: int = 1000
    num_validation: int = 100
    num_test: int = 100
    seed: int = 0
    source: str = "generate"
    limit: int | None = None
    augment: bool = True

    features: ClassVar[Features]
    generator_version: ClassVar[str]  # part of the datasets cache key
    check_row: ClassVar[Callable[[int, str, str], tuple[str, str] | None]]
    generate_rows: ClassVar[Callable[..., Any]]

    @property
    def num_slots(self) -> int:
        """One slot per cell."""
        return self.size * self.size

    def target(self, row: dict) -> str:
        """The answer string (CSV form: one character per cell)."""
        return row["answer"]

    def cell_accuracy(self, answer: str, target: str) -> float:
        """Fraction of cells right (0.0 for a missing answer or one of another length)."""
        if answer is None or len(answer) != len(target):
            return 0.0
        return sum(a == t for a, t in zip(answer, target)) / len(target)

    def generator_options(self) -> dict[str, Any]:
        """The family's options of its row generator (besides size, count, seed, split, version)."""
        return {}

    def _build(self, split: str) -> Dataset:
        """Build one split: read and check the CSV, or generate it (cached by ``datasets`` on its options)."""
        if self.source != "generate":
            return load_csv_split(self.source, split, self.limit, family=self.name, size=self.size,
                                  check=type(self).check_row, features=self.features)  # fmt: skip
        count = {"train": self.num_train, "validation": self.num_validation, "test": self.num_test}[split]
        kwargs = dict(self.generator_options(), size=self.size, count=count, seed=self.seed, split=split,
                      version=self.generator_version)  # fmt: skip
        return Dataset.from_generator(type(self).generate_rows, gen_kwargs=kwargs, features=self.features)
