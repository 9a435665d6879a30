"""Sort: a list of integers in, the list sorted out. The smallest problem that needs several steps.

Row: ``id, values`` (list[int], duplicates allowed). Text, numbers separated by one space::

    Sort: 3 9 1 4 1 7
    Sorted:

Slots: ``length`` (the longest list). Slot k < len(values) reads the k-th number's characters and is
labelled with the k-th smallest value; slots past a shorter list read nothing (span None) and carry
no loss (label -100); ``decode`` keeps only the first len(values) predictions (``meta["length"]``).
Vocabulary: the values ``min_value..max_value`` as text (id = value - min_value).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from datasets import Dataset, Features, List, Value

from ..errors import HybridReasonError
from .base import IGNORE, PromptBudget, Rendered, Task, bucket_of, split_rng

SORT_FEATURES = Features({"id": Value("string"), "values": List(Value("int64"))})
_LIST = re.compile(r"^\s*(?:sorted\s*:)?[\s\[(]*(-?\d+(?:[\s,]+-?\d+)*)[\s\])]*\.?\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class SortAugmentation:
    """A shuffle of the input order (the answer is unchanged): the permutation drawn from ``seed``."""

    seed: int


@dataclass
class SortTask(Task):
    """Sorting lists of integers.

    Options:
        length: the longest list (= num_slots).  min_length: the shortest.  min_value / max_value:
        the value range (inclusive).  num_train / num_validation / num_test, seed: the generated splits
        (a multiset of values belongs to one split only).  augment: shuffle the input when training.
    """

    name: ClassVar[str] = "sort"
    length: int = 8
    min_length: int = 6
    min_value: int = 0
    max_value: int = 9
    num_train: int = 10_000
    num_validation: int = 500
    num_test: int = 1000
    seed: int = 0
    augment: bool = True

    def __post_init__(self) -> None:
        if not 1 <= self.min_length <= self.length:
            raise HybridReasonError(f"sort: need 1 <= min_length <= length, got {self.min_length}, {self.length}")
        if self.min_value > self.max_value:
            raise HybridReasonError(f"sort: min_value {self.min_value} is above max_value {self.max_value}")

    @property
    def vocab(self) -> list[str]:
        """The values as text."""
        return [str(v) for v in range(self.min_value, self.max_value + 1)]

    @property
    def num_slots(self) -> int:
        """One slot per position of the longest list."""
        return self.length

    # ---- data -----------------------------------------------------------------------------------
    def _build(self, split: str) -> Dataset:
        """A generated split (built in memory: it is cheap)."""
        return Dataset.from_list(self._generate(split), features=SORT_FEATURES)

    def _generate(self, split: str) -> list[dict]:
        """Random lists whose sorted values hash into ``split``'s bucket."""
        count = {"train": self.num_train, "validation": self.num_validation, "test": self.num_test}[split]
        rng, rows, tries = split_rng(self.seed, split), [], 0
        while len(rows) < count:
            tries += 1
            if tries > 100 * count + 1000:
                raise HybridReasonError(
                    f"sort: the value range and lengths leave too few lists for {count} {split} rows"
                )
            n = int(rng.integers(self.min_length, self.length + 1))
            values = rng.integers(self.min_value, self.max_value + 1, size=n).tolist()
            if bucket_of(" ".join(map(str, sorted(values)))) == split:
                rows.append({"id": f"sort/{split}/{len(rows)}", "values": values})
        return rows

    # ---- augmentation and rendering -------------------------------------------------------------
    def sample_augmentation(self, rng: np.random.Generator, train: bool) -> SortAugmentation | None:
        """A shuffle of the input when training with ``augment``."""
        return SortAugmentation(int(rng.integers(2**31))) if train and self.augment else None

    def render(
        self, row: dict, augmentation: SortAugmentation | None = None, *, budget: PromptBudget | None = None
    ) -> Rendered:
        """ "Sort: v1 v2 ...\\nSorted:"; slot k reads the k-th number, labelled with the k-th smallest."""
        values = list(row["values"])
        if not 1 <= len(values) <= self.length or not all(self.min_value <= v <= self.max_value for v in values):
            raise HybridReasonError(
                f"{row['id']}: {values} does not fit length <= {self.length}, values in "
                f"{self.min_value}..{self.max_value}"
            )
        if augmentation is not None:
            values = [values[i] for i in np.random.default_rng(augmentation.seed).permutation(len(values))]
        spans, pos, words = [], len("Sort: "), []
        for v in values:
            words.append(str(v))
            spans.append((pos, pos + len(words[-1])))
            pos += len(words[-1]) + 1
        text = "Sort: " + " ".join(words) + "\nSorted:"
        self._check_fits(text, row["id"], budget)
        pad = self.length - len(values)
        labels = [v - self.min_value for v in sorted(values)] + [IGNORE] * pad
        meta = {
            "id": row["id"],
            "length": len(values),
            "augmentation": None if augmentation is None else {"seed": augmentation.seed},
        }
        return Rendered(text, spans + [None] * pad, labels, meta)

    # ---- answers --------------------------------------------------------------------------------
    def decode(self, pred_ids: Sequence[int] | np.ndarray, meta: dict) -> list[int]:
        """The first ``meta["length"]`` predictions as values."""
        return [self.min_value + int(i) for i in list(pred_ids)[: meta["length"]]]

    def target(self, row: dict) -> list[int]:
        """The values, sorted."""
        return sorted(row["values"])

    def cell_accuracy(self, answer: list[int], target: list[int]) -> float:
        """Fraction of positions right (0.0 on a length mismatch)."""
        if answer is None or len(answer) != len(target) or not target:
            return 0.0
        return sum(a == t for a, t in zip(answer, target)) / len(target)

    def answer_format(self, answer: list[int]) -> str:
        """Numbers separated by one space, as the prompt writes the list."""
        return " ".join(map(str, answer))

    def parse_answer(self, text: str) -> list[int] | None:
        """The last line that is only a list of integers (an optional "Sorted:", brackets, commas)."""
        for line in reversed(text.splitlines()):
            match = _LIST.match(line)
            if match:
                return [int(v) for v in re.findall(r"-?\d+", match.group(1))]
        return None

    def describe(self) -> str:
        """The task and answer format for an LLM."""
        return (
            "Sort the list of integers after 'Sort:' in ascending order, keeping duplicates. Write the sorted "
            "list on the last line of your answer, numbers separated by single spaces."
        )
