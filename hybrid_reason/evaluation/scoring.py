"""Scoring answers, one implementation for every system: voting, exact and cell accuracy, the ARC Prize
arithmetic and the Kaggle submission.

The hybrid votes over a puzzle's augmented views and an LLM baseline over its sampled replies; both rank
their answers with ``vote``, score the ranked candidates with ``score_candidates`` and aggregate with
``aggregate``.

- Voting (TRM): identical answers are grouped; empty answers (None, a failed crop) never vote; groups
  rank by (votes, mean confidence), first seen first on a full tie. Attempt k is the k-th group. With
  ``weight="halt"`` each answer's vote counts its confidence sigmoid(halt logit) instead of 1.
- ARC Prize: a test input is solved when one of its first k attempts equals the target exactly (shape
  included); a task scores the fraction of its test inputs solved; the benchmark is the mean over
  tasks. Non-ARC rows are their own task, so this is plain exact accuracy there.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from ..tasks.keys import puzzle_key

Grid = list[list[int]]
EMPTY_ATTEMPT: Grid = [[0]]  # what the submission holds when a system has no (non-empty) answer


# ============================================================================ voting
def freeze(answer: Any) -> Any:
    """A hashable form of an answer: lists (of lists) and arrays become tuples."""
    if isinstance(answer, np.ndarray):
        answer = answer.tolist()
    if isinstance(answer, (list, tuple)):
        return tuple(freeze(a) for a in answer)
    return answer


def is_empty(answer: Any) -> bool:
    """True for answers that cannot be right: None or an empty grid/list (ARC's failed crop)."""
    return answer is None or (isinstance(answer, (list, tuple, str)) and len(answer) == 0)


@dataclass
class Candidate:
    """A distinct answer: its votes, mean confidence and mean halting step of the views that gave it."""

    answer: Any
    votes: int
    confidence: float  # mean sigmoid(halt logit) of its views (0 for LLM replies)
    halt_step: float  # mean halting step of its views (0 for LLM replies)
    weight: float = 0.0  # what it was ranked by: its votes (count) or its summed confidence (halt)


VoteWeight = Literal["count", "halt"]


def vote(
    answers: Sequence[Any],
    confidences: Sequence[float] | None = None,
    halt_steps: Sequence[float] | None = None,
    weight: VoteWeight = "count",
) -> list[Candidate]:
    """Group identical answers and rank them, best first.

    ``weight="count"`` (TRM): by (votes, mean confidence). ``weight="halt"``: by the summed confidences
    sigmoid(halt logit) of the answers that gave it, then votes. Empty answers (None, ``[]``) never
    vote. Ties on both keys keep the order of first appearance.
    """
    if weight not in ("count", "halt"):
        raise ValueError(f"vote weight must be 'count' or 'halt', got {weight!r}")
    confidences = confidences if confidences is not None else [0.0] * len(answers)
    halt_steps = halt_steps if halt_steps is not None else [0.0] * len(answers)
    groups: dict[Any, list[int]] = {}
    for i, answer in enumerate(answers):
        if not is_empty(answer):
            groups.setdefault(freeze(answer), []).append(i)
    candidates = [
        Candidate(
            answers[idx[0]],
            len(idx),
            float(np.mean([confidences[i] for i in idx])),
            float(np.mean([halt_steps[i] for i in idx])),
            float(len(idx) if weight == "count" else sum(confidences[i] for i in idx)),
        )
        for idx in groups.values()
    ]
    if weight == "halt":
        return sorted(candidates, key=lambda c: (-c.weight, -c.votes))
    return sorted(candidates, key=lambda c: (-c.votes, -c.confidence))  # stable: first seen wins ties


# ============================================================================ one puzzle
@dataclass
class PuzzleResult:
    """A puzzle's outcome: its ranked candidates and, when it has a target, its scores."""

    id: str
    group: str  # ARC task id (the unit of the mean), else the puzzle id
    query: str  # ARC: which test input of its task ("test0", "test1", ...); "" elsewhere
    views: int  # views (hybrid) or replies (LLM) that voted
    candidates: list[Candidate]
    solved: dict[int, bool] | None  # k -> solved within k attempts; None: the puzzle has no target
    cell: float | None  # cell accuracy of attempt 1; None without a target
    halt_step: float = 0.0  # mean halting step of the winner's views (all views when none won)
    solved_at_halt: bool | None = None  # attempt 1 right when each view answers at its own halting step
    dropped_demonstrations: int = 0  # most demonstrations any of its prompts lost to the context budget

    @property
    def scored(self) -> bool:
        """Whether the puzzle had a target to score against."""
        return self.solved is not None

    def attempts(self, k: int = 2) -> list[Any]:
        """The first ``k`` attempts (fewer when there are fewer distinct answers)."""
        return [c.answer for c in self.candidates[:k]]


def score_candidates(
    task,
    row: dict,
    candidates: list[Candidate],
    ks: Sequence[int],
    *,
    views: int,
    halt_step: float = 0.0,
    at_halt: list[Candidate] | None = None,
    dropped_demonstrations: int = 0,
) -> PuzzleResult:
    """Score ranked ``candidates`` against the row's target: solved within each k of ``ks`` attempts,
    cell accuracy of attempt 1, and (hybrid) attempt 1 of the vote ``at_halt`` of each view's own
    halting step. A row without a target keeps its candidates and no scores."""
    target = task.target(row)
    solved = cell = solved_at_halt = None
    if target is not None:
        solved = {k: any(task.score(c.answer, target) for c in candidates[:k]) for k in ks}
        cell = float(task.cell_accuracy(candidates[0].answer, target)) if candidates else 0.0
        if at_halt is not None:
            solved_at_halt = bool(at_halt) and bool(task.score(at_halt[0].answer, target))
    return PuzzleResult(
        str(row["id"]),
        puzzle_key(row),
        str(row.get("query") or ""),
        views,
        candidates,
        solved,
        cell,
        halt_step,
        solved_at_halt,
        dropped_demonstrations,
    )


def is_arc(task) -> bool:
    """Whether ``task`` is an ARC family (scored pass@2, with a Kaggle submission)."""
    from ..tasks import ArcTask

    return isinstance(task, ArcTask)


def headline(task) -> str:
    """The metric that scores the task: ARC's pass@2, else exact accuracy."""
    return "pass@2" if is_arc(task) else "exact"


def attempt_counts(task, answers_per_puzzle: int) -> list[int]:
    """The k of pass@k to report: 1, 2 for ARC, and all the answers a puzzle has."""
    return sorted({1, max(1, answers_per_puzzle)} | ({2} if is_arc(task) else set()))


# ============================================================================ many puzzles
def group_mean(values: Iterable[tuple[str, float]]) -> float:
    """ARC Prize arithmetic: the mean over groups of each group's mean value (0 when there are none)."""
    groups: dict[str, list[float]] = defaultdict(list)
    for group, value in values:
        groups[group].append(float(value))
    return float(np.mean([np.mean(v) for v in groups.values()])) if groups else 0.0


def aggregate(results: list[PuzzleResult], ks: Sequence[int]) -> dict[str, float]:
    """exact (pass@1), pass@k, cell and exact_at_halt over groups (per group the mean over its puzzles,
    then the mean of groups), and the mean halting step. Without targets: the halting step only."""
    metrics: dict[str, float] = {}
    if results and all(r.scored for r in results):

        def mean(value: Callable[[PuzzleResult], float]) -> float:
            return group_mean((r.group, value(r)) for r in results)

        metrics["exact"] = mean(lambda r: r.solved[1])
        metrics |= {f"pass@{k}": mean(lambda r, k=k: r.solved[k]) for k in ks if k != 1}
        metrics["cell"] = mean(lambda r: r.cell)
        if all(r.solved_at_halt is not None for r in results):
            metrics["exact_at_halt"] = mean(lambda r: r.solved_at_halt)
    metrics["halt_step"] = float(np.mean([r.halt_step for r in results])) if results else 0.0
    return metrics


# ============================================================================ Kaggle submission
def query_order(query: str) -> tuple[str, int]:
    """Sort key of an ARC query name: "test10" after "test9"."""
    digits = re.search(r"(\d*)$", query).group(1)
    return query[: len(query) - len(digits)], int(digits or 0)


def kaggle_submission(results: list[PuzzleResult]) -> dict[str, list[dict[str, Grid]]]:
    """``{task_id: [{"attempt_1": grid, "attempt_2": grid}, ...]}`` in test-input order (the Kaggle
    format). A missing attempt is the 1x1 grid [[0]]."""
    by_task: dict[str, list[PuzzleResult]] = defaultdict(list)
    for r in results:
        by_task[r.group].append(r)
    out = {}
    for task_id, members in by_task.items():
        entries = []
        for r in sorted(members, key=lambda r: query_order(r.query)):
            tries = r.attempts(2) + [EMPTY_ATTEMPT] * 2
            entries.append({"attempt_1": tries[0], "attempt_2": tries[1]})
        out[task_id] = entries
    return out


__all__ = [
    "EMPTY_ATTEMPT",
    "Candidate",
    "PuzzleResult",
    "VoteWeight",
    "aggregate",
    "attempt_counts",
    "freeze",
    "group_mean",
    "headline",
    "is_arc",
    "is_empty",
    "kaggle_submission",
    "query_order",
    "score_candidates",
    "vote",
]
