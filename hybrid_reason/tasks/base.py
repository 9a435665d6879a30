"""The task protocol: how a puzzle family turns dataset rows into ``Rendered`` examples and back.

Every family (ARC, Sudoku, Maze, Sort) is a dataclass subclass of ``Task``; its fields are the options
a recipe may set (``task: {name: sort, length: 8}``). The data path is one-directional:

    row = task.load("train")[i]                      # a HF datasets row (a puzzle, never augmented)
    aug = task.sample_augmentation(rng, train=True)  # seeded, on the fly
    ex = task.render(row, aug)                       # Rendered(text, slot_spans, labels, meta)
    answer = task.decode(pred_ids, ex.meta)          # back in the row's original frame
    task.score(answer, task.target(row))             # exact match
"""

from __future__ import annotations

import hashlib
import inspect
import types
from abc import ABC, abstractmethod
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Sequence

import numpy as np
from datasets import Dataset

IGNORE = -100  # label of a slot that carries no loss
SPLITS = ("train", "validation", "test")
SPLIT_SHARES = {"train": 0.8, "validation": 0.1, "test": 0.1}  # hash buckets of generated puzzles

Answer = Any  # ARC: list[list[int]]; Sudoku/Maze: solution string; Sort: list[int]
TokenCounter = Callable[[str], int]


@dataclass
class Rendered:
    """One example as the backbone reads it: text, one character span per answer slot, labels, meta."""

    text: str  # the puzzle as plain text
    slot_spans: list[tuple[int, int] | None]  # per slot: [start, end) character span of ``text``, or None
    labels: list[int]  # per slot: answer-vocabulary id, IGNORE (-100) where no loss applies
    meta: dict[str, Any]  # "id" and whatever ``decode`` needs (augmentation, shapes, ...)


@dataclass
class Task(ABC):
    """A puzzle family. Subclasses are dataclasses whose fields are the recipe options.

    ``max_tokens`` is the prompt budget: a rendered text must fit in it (see ``set_budget``).
    """

    name: ClassVar[str] = ""
    max_tokens: int | None = None
    count_tokens: TokenCounter | None = field(default=None, init=False, repr=False, compare=False)
    stats: Counter = field(default_factory=Counter, init=False, repr=False, compare=False)
    _datasets: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    # ---- vocabulary and shape -------------------------------------------------------------------
    @property
    @abstractmethod
    def vocab(self) -> list[str]:
        """The answer symbols; a label or prediction id indexes this list."""

    @property
    def vocab_size(self) -> int:
        """Number of answer symbols (the width of the answer head)."""
        return len(self.vocab)

    @property
    @abstractmethod
    def num_slots(self) -> int:
        """Slots per example; every example of this task instance has exactly this many."""

    @property
    def splits(self) -> tuple[str, ...]:
        """The split names ``load`` accepts."""
        return SPLITS

    # ---- data -----------------------------------------------------------------------------------
    def load(self, split: str) -> Dataset:
        """The split as a HF ``datasets.Dataset`` of un-augmented rows (each has an ``id`` column),
        built once per task instance."""
        if split not in self.splits:
            raise ValueError(f"{self.name}: unknown split {split!r}; expected one of {self.splits}")
        if split not in self._datasets:
            self._datasets[split] = self._build(split)
        return self._datasets[split]

    @abstractmethod
    def _build(self, split: str) -> Dataset:
        """Build one split (``load`` checks the name and memoises the result)."""

    def sample_augmentation(self, rng: np.random.Generator, train: bool) -> Any | None:
        """Draw one augmentation from ``rng`` (None: this family has none)."""
        return None

    @abstractmethod
    def render(
        self,
        row: dict,
        augmentation: Any | None = None,
        *,
        max_tokens: int | None = None,
        count_tokens: TokenCounter | None = None,
    ) -> Rendered:
        """Render a row under an augmentation; the budget arguments override ``set_budget``."""

    def example(self, row: dict, rng: np.random.Generator | None = None, train: bool = False) -> Rendered:
        """Sample an augmentation from ``rng`` (none when rng is None) and render the row with it."""
        augmentation = None if rng is None else self.sample_augmentation(rng, train)
        return self.render(row, augmentation)

    # ---- answers --------------------------------------------------------------------------------
    @abstractmethod
    def decode(self, pred_ids: Sequence[int] | np.ndarray, meta: dict) -> Answer:
        """Turn one predicted id per slot into an answer in the row's original (un-augmented) frame."""

    @abstractmethod
    def target(self, row: dict) -> Answer:
        """The row's true answer, in the same form ``decode`` returns."""

    def score(self, answer: Answer, target: Answer) -> bool:
        """Exact match of a decoded answer with the target."""
        return answer is not None and target is not None and answer == target

    def cell_accuracy(self, answer: Answer, target: Answer) -> float:
        """Fraction of equal cells, 0.0 when the shapes differ."""
        a, t = np.asarray(answer, dtype=object), np.asarray(target, dtype=object)
        if answer is None or a.shape != t.shape or t.size == 0:
            return 0.0
        return float((a == t).mean())

    @abstractmethod
    def answer_format(self, answer: Answer) -> str:
        """Write an answer as text, the way the prompt shows grids or lists."""

    @abstractmethod
    def parse_answer(self, text: str) -> Answer | None:
        """The last well-formed answer in free text (an LLM's reply), or None if there is none."""

    @abstractmethod
    def describe(self) -> str:
        """One paragraph for an LLM: what the task is and how to write the answer."""

    def prompt_stats(self, split: str, max_rows: int | None = None) -> dict[str, float]:
        """Render the split's rows (un-augmented, under the instance budget) and report prompt sizes
        (``count_tokens``, default characters) and the demonstrations dropped to fit the budget."""
        ds = self.load(split)
        rows = range(len(ds) if max_rows is None else min(max_rows, len(ds)))
        count = self._budget(None, None)[1]
        sizes, dropped, with_drops = [], 0, 0
        for i in rows:
            ex = self.render(ds[i])
            sizes.append(count(ex.text))
            dropped += ex.meta.get("dropped_demonstrations", 0)
            with_drops += ex.meta.get("dropped_demonstrations", 0) > 0
        return {"rows": len(sizes), "mean_tokens": float(np.mean(sizes)) if sizes else 0.0,
                "max_tokens": max(sizes, default=0), "dropped_demonstrations": dropped,
                "examples_with_dropped_demonstrations": with_drops}

    # ---- prompt budget --------------------------------------------------------------------------
    def set_budget(self, max_tokens: int | None, count_tokens: TokenCounter | None = None) -> None:
        """Limit rendered prompts to ``max_tokens`` as counted by ``count_tokens`` (default: characters,
        an upper bound for tokenizers that split digits, such as Qwen2.5 and SmolLM2)."""
        self.max_tokens, self.count_tokens = max_tokens, count_tokens

    def _budget(self, max_tokens: int | None, count_tokens: TokenCounter | None) -> tuple[int | None, TokenCounter]:
        """The effective (max_tokens, counter) of one render call."""
        limit = self.max_tokens if max_tokens is None else max_tokens
        return limit, count_tokens or self.count_tokens or len

    def _check_fits(self, text: str, example_id: str, max_tokens: int | None, count_tokens: TokenCounter | None) -> None:
        """Raise a ValueError naming the example when ``text`` exceeds the budget."""
        limit, count = self._budget(max_tokens, count_tokens)
        if limit is not None and (n := count(text)) > limit:
            raise ValueError(f"{example_id}: prompt has {n} tokens, over the budget of {limit}")


def split_rng(seed: int, split: str) -> np.random.Generator:
    """A generator fixed by (seed, split): the same puzzles in every process, different per split."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    return np.random.default_rng([seed, SPLITS.index(split)])


def example_rng(seed: int, *keys: int) -> np.random.Generator:
    """A generator fixed by a seed and integer keys (e.g. epoch, row index): per-example augmentations."""
    return np.random.default_rng([seed, *keys])


def bucket_of(key: str) -> str:
    """The split a generated puzzle belongs to, from a stable hash of ``key`` (80/10/10).

    Generators keep only the candidates of the split they build, so the splits never share a puzzle.
    """
    u = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big") / 2**64
    if u < SPLIT_SHARES["train"]:
        return "train"
    return "validation" if u < SPLIT_SHARES["train"] + SPLIT_SHARES["validation"] else "test"


def code_version(*modules: types.ModuleType) -> str:
    """A short hash of the modules' source: part of a generated dataset's cache key, so editing a
    generator invalidates the rows ``Dataset.from_generator`` cached."""
    digest = hashlib.blake2b(digest_size=6)
    for module in modules:
        digest.update(inspect.getsource(module).encode())
    return digest.hexdigest()


def load_csv_split(source: str, split: str, limit: int | None) -> Dataset:
    """The first ``limit`` rows (all if None) of a sapientinc-style CSV (``source, question, answer, rating``).

    ``source``: a folder holding ``{split}.csv``; a path containing ``{split}``; one CSV file, read for
    every split; or ``hub:<dataset id>`` for ``datasets.load_dataset``.
    """
    from pathlib import Path

    from datasets import Features, Value, load_dataset

    if source.startswith("hub:"):
        ds = load_dataset(source[4:], split=split)
        return ds.select(range(min(limit, len(ds)))) if limit is not None else ds
    path = Path(source) / f"{split}.csv" if Path(source).is_dir() else Path(source.replace("{split}", split))
    if not path.is_file():
        raise FileNotFoundError(f"no CSV file {path} for the {split!r} split (from source {source!r})")
    columns = {key: Value("string") for key in ("source", "question", "answer")} | {"rating": Value("float64")}
    features = Features(columns)
    return load_dataset("csv", data_files={split: str(path)}, split=split, features=features, keep_default_na=False,
                        nrows=limit)
