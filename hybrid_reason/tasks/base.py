"""The task protocol: how a puzzle family turns dataset rows into ``Rendered`` examples and back.

Every family (ARC, Sudoku, Maze, Sort) is a dataclass subclass of ``Task``; its fields are the options
a recipe may set (``task: {name: sort, length: 8}``). The data path is one-directional:

    budget = PromptBudget(8192, TokenCount(tok))     # optional: the backbone's context
    row = task.load("train", budget)[i]              # a HF datasets row (a puzzle, never augmented)
    aug = task.sample_augmentation(rng, train=True)  # seeded, on the fly
    ex = task.render(row, aug, budget=budget)        # Rendered(text, slot_spans, labels, meta)
    answer = task.decode(pred_ids, ex.meta)          # back in the row's original frame
    task.score(answer, task.target(row))             # exact match
"""

from __future__ import annotations

import hashlib
import inspect
import types
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from datasets import Dataset

from ..errors import HybridReasonError

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


@dataclass(frozen=True)
class PromptBudget:
    """How long a rendered prompt may be: at most ``max_tokens`` (None: no limit) as ``count_tokens``
    counts them (None: characters, an upper bound for tokenizers that split digits, such as Qwen2.5's
    and SmolLM2's). A plain value, passed explicitly to ``Task.load`` and ``Task.render``; it pickles
    into DataLoader workers when its counter does (``TokenCount`` does)."""

    max_tokens: int | None = None
    count_tokens: TokenCounter | None = None

    def count(self, text: str) -> int:
        """Tokens of ``text`` under this budget's counter."""
        return len(text) if self.count_tokens is None else self.count_tokens(text)

    def capped(self, cap: int | None) -> PromptBudget:
        """The same counter with ``max_tokens`` lowered to ``cap`` (None: unchanged)."""
        if cap is None or (self.max_tokens is not None and self.max_tokens <= cap):
            return self
        return PromptBudget(cap, self.count_tokens)


class TokenCount:
    """Counts a text's tokens with a Hugging Face tokenizer: a picklable ``PromptBudget`` counter."""

    def __init__(self, tokenizer, add_special_tokens: bool = True):
        self.tokenizer, self.add_special_tokens = tokenizer, add_special_tokens

    def __call__(self, text: str) -> int:
        """Number of token ids of ``text``."""
        return len(self.tokenizer(text, add_special_tokens=self.add_special_tokens)["input_ids"])

    def __eq__(self, other: object) -> bool:
        """Counters of the same tokenizer object are equal (so equal budgets share a task's memo)."""
        if not isinstance(other, TokenCount):
            return NotImplemented
        return other.tokenizer is self.tokenizer and other.add_special_tokens == self.add_special_tokens

    def __hash__(self) -> int:
        """Hash of the tokenizer object's identity."""
        return hash((id(self.tokenizer), self.add_special_tokens))


NO_BUDGET = PromptBudget()
BUDGET_STATS = ("prompts_with_drops", "demonstrations_dropped", "queries_skipped")


@dataclass
class Task(ABC):
    """A puzzle family. Subclasses are dataclasses whose fields are the recipe options.

    ``max_tokens``: a cap on every prompt, in the tokens of the ``PromptBudget`` that ``load`` and
    ``render`` are given (the lower of the two limits applies; characters when no budget is given).
    """

    name: ClassVar[str] = ""
    max_tokens: int | None = None
    _datasets: dict = field(default_factory=dict, init=False, repr=False, compare=False)
    _fitted: dict = field(default_factory=dict, init=False, repr=False, compare=False)

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
    def load(self, split: str, budget: PromptBudget | None = None) -> Dataset:
        """The split as a HF ``datasets.Dataset`` of un-augmented rows (each has an ``id`` column),
        built once per task instance. Under a ``budget`` with a limit, the rows are checked against it
        (and, for families that can, the queries that cannot fit are dropped: see ``budget_stats``)."""
        return self._loaded(split, budget)[0]

    def _loaded(self, split: str, budget: PromptBudget | None) -> tuple[Dataset, list[str]]:
        """(rows, ids of the rows skipped under the budget), memoised per split and budget."""
        if split not in self.splits:
            raise HybridReasonError(f"{self.name}: unknown split {split!r}; expected one of {self.splits}")
        if split not in self._datasets:
            self._datasets[split] = self._build(split)
        budget = self.effective_budget(budget)
        if budget.max_tokens is None:
            return self._datasets[split], []
        if (split, budget) not in self._fitted:
            self._fitted[(split, budget)] = self._fit_budget(self._datasets[split], budget)
        return self._fitted[(split, budget)]

    @abstractmethod
    def _build(self, split: str) -> Dataset:
        """Build one split (``load`` checks the name and memoises the result)."""

    def _fit_budget(self, rows: Dataset, budget: PromptBudget) -> tuple[Dataset, list[str]]:
        """Check a split against a budget at load time: (rows kept, ids skipped). By default the first
        row is rendered, so a family whose prompts all have one length fails before any training."""
        if len(rows):
            self.render(rows[0], budget=budget)
        return rows, []

    def effective_budget(self, budget: PromptBudget | None) -> PromptBudget:
        """``budget`` (none: characters, no limit) capped by the task's own ``max_tokens``."""
        return (budget or NO_BUDGET).capped(self.max_tokens)

    def sample_augmentation(self, rng: np.random.Generator, train: bool) -> Any | None:
        """Draw one augmentation from ``rng`` (None: this family has none)."""
        return None

    @abstractmethod
    def render(self, row: dict, augmentation: Any | None = None, *, budget: PromptBudget | None = None) -> Rendered:
        """Render a row under an augmentation; the text must fit ``budget`` (capped by ``max_tokens``)."""

    def example(
        self, row: dict, rng: np.random.Generator | None = None, train: bool = False, budget: PromptBudget | None = None
    ) -> Rendered:
        """Sample an augmentation from ``rng`` (none when rng is None) and render the row with it."""
        augmentation = None if rng is None else self.sample_augmentation(rng, train)
        return self.render(row, augmentation, budget=budget)

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

    # ---- prompt sizes ---------------------------------------------------------------------------
    def prompt_stats(
        self, split: str, max_rows: int | None = None, budget: PromptBudget | None = None
    ) -> dict[str, float]:
        """Render the split's rows (un-augmented, under ``budget``) and report prompt sizes (in the
        budget's tokens, default characters) and the demonstrations dropped to fit the budget."""
        ds, count = self.load(split, budget), self.effective_budget(budget).count
        rows = range(len(ds) if max_rows is None else min(max_rows, len(ds)))
        sizes, dropped, with_drops = [], 0, 0
        for i in rows:
            ex = self.render(ds[i], budget=budget)
            sizes.append(count(ex.text))
            dropped += ex.meta.get("dropped_demonstrations", 0)
            with_drops += ex.meta.get("dropped_demonstrations", 0) > 0
        return {
            "rows": len(sizes),
            "mean_tokens": float(np.mean(sizes)) if sizes else 0.0,
            "max_tokens": max(sizes, default=0),
            "dropped_demonstrations": dropped,
            "examples_with_dropped_demonstrations": with_drops,
        }

    def budget_stats(self, split: str, budget: PromptBudget | None = None, *, per_task: bool = False) -> dict:
        """What fitting ``split`` into ``budget`` costs: ``{prompts_with_drops, demonstrations_dropped,
        queries_skipped}`` over the split's un-augmented prompts, or with ``per_task`` a mapping puzzle
        key (ARC task id) -> those counts (a key that is absent lost nothing). Families without
        demonstrations never drop any: all zeros."""
        return {} if per_task else dict.fromkeys(BUDGET_STATS, 0)

    def _check_fits(self, text: str, example_id: str, budget: PromptBudget | None) -> None:
        """Raise a HybridReasonError naming the example when ``text`` exceeds the budget."""
        budget = self.effective_budget(budget)
        if budget.max_tokens is not None and (n := budget.count(text)) > budget.max_tokens:
            raise HybridReasonError(f"{example_id}: the prompt has {n} tokens, over the budget of {budget.max_tokens}")


def split_rng(seed: int, split: str) -> np.random.Generator:
    """A generator fixed by (seed, split): the same puzzles in every process, different per split."""
    if split not in SPLITS:
        raise HybridReasonError(f"unknown split {split!r}; expected one of {SPLITS}")
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
