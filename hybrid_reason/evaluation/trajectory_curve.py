"""Accuracy against the number of parallel trajectories M, from one pass
(``hybrid-reason evaluate --trajectory_curve [1,4,16]``; see docs/evaluation.md).

The pass runs max(M) trajectories per view (``evaluate_model``). Trajectory t's initial carry depends
only on (seed, puzzle, view, t), never on M, so the first m trajectories of that pass are the
trajectories of a run with M = m: each M of the list is scored by voting the prefix 0..m-1 of every
view's trajectories, with the same voting and arithmetic as ``evaluate``. Core FLOPs scale with m; the
backbone's do not (each view is encoded once).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import HybridReasonError
from ..utils.atomic_io import atomic_write, write_json
from .hybrid import Evaluation, evaluate_model, score_puzzle
from .scoring import PuzzleResult, aggregate, attempt_counts

FILES = ("trajectories.md", "trajectories.json")  # what ``TrajectoryCurve.write`` puts in a folder


@dataclass
class TrajectoryCurve:
    """The scores at each M: one row per M, with the metrics of ``aggregate`` and the FLOPs per puzzle."""

    task: str
    split: str
    headline: str
    steps: int
    views: int  # views per puzzle, summed over puzzles
    puzzles: int
    trajectory_noise: float
    vote_weight: str
    rows: list[dict[str, Any]]

    def markdown(self) -> str:
        """The table: M, answers voted per puzzle, exact, pass@2 (ARC), pass@all, cell, FLOPs per puzzle."""
        head = "| M | answers / puzzle | exact |" + (" pass@2 |" if self.headline == "pass@2" else "")
        head += " pass@all | cell | exact at halt | FLOPs / puzzle |"
        lines = [
            f"Accuracy against parallel trajectories M: {self.task}"
            + (f" ({self.split})" if self.split else "")
            + f", {self.puzzles} puzzles, "
            f"answer at step {self.steps}, noise {self.trajectory_noise:g}, votes weighted by {self.vote_weight}.",
            "",
            head,
            "|" + " --- |" * (head.count("|") - 1),
        ]
        for r in self.rows:
            m = r["metrics"]
            cells = [str(r["trajectories"]), f"{r['answers_per_puzzle']:g}", _pct(m.get("exact"))]
            cells += [_pct(m.get("pass@2"))] if self.headline == "pass@2" else []
            cells += [_pct(m.get(f"pass@{r['ks'][-1]}", m.get("exact"))), _pct(m.get("cell"))]
            cells += [_pct(m.get("exact_at_halt")), f"{r['flops_per_puzzle']:.3g}"]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"

    def summary(self) -> dict[str, Any]:
        """A JSON-able form of the curve."""
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    def write(self, folder: str | Path) -> None:
        """Write ``trajectories.md`` and ``trajectories.json`` into ``folder``."""
        folder = Path(folder)
        atomic_write(folder / FILES[0], self.markdown())
        write_json(folder / FILES[1], self.summary())


def _pct(value: float | None) -> str:
    """A score as a percentage (empty when absent)."""
    return "" if value is None else f"{100 * value:.1f}%"


def check_counts(counts: Sequence[int]) -> list[int]:
    """The M of the curve, sorted and distinct; a one-line error unless all are integers >= 1."""
    if not counts or any(isinstance(m, bool) or not isinstance(m, int) or m < 1 for m in counts):
        raise HybridReasonError(f"trajectory_curve must be a non-empty list of integers >= 1, got {list(counts)!r}")
    return sorted(set(counts))


def prefix_results(task, rows, ev: Evaluation, m: int, step: int | None = None) -> tuple[list[PuzzleResult], list[int]]:
    """Each puzzle of ``ev`` scored at ``step`` (default ``ev.steps``) on trajectories 0..m-1 of every
    view, and the attempt counts k of its pass@k."""
    if ev.traces is None or m > ev.trajectories:
        raise HybridReasonError(f"M = {m} needs an evaluation of at least {m} trajectories, got {ev.trajectories}")
    step = step or ev.steps
    per_puzzle = [[t for t in traces if t.trajectory < m] for traces in ev.traces]
    ks = attempt_counts(task, max(map(len, per_puzzle), default=1))
    results = [
        score_puzzle(task, rows[p], per_puzzle[p], step, ks, r.dropped_demonstrations, ev.vote_weight)
        for p, r in enumerate(ev.results)
    ]
    return results, ks


def curve_of(task, rows, ev: Evaluation, counts: Sequence[int]) -> TrajectoryCurve:
    """The curve over ``counts`` from an evaluation of at least max(counts) trajectories."""
    table = []
    for m in check_counts(counts):
        results, ks = prefix_results(task, rows, ev, m)
        core = ev.steps * ev.core_step_flops * m / ev.trajectories
        table.append({
            "trajectories": m, "answers_per_puzzle": ev.views * m / max(1, ev.puzzles), "ks": ks,
            "metrics": aggregate(results, ks), "flops_per_puzzle": (ev.backbone_flops + core) / max(1, ev.puzzles),
        })  # fmt: skip
    return TrajectoryCurve(
        ev.task, ev.split, ev.headline, ev.steps, ev.views, ev.puzzles, ev.trajectory_noise, ev.vote_weight, table
    )


def trajectory_curve(
    model, task, rows, counts: Sequence[int], *, curve_steps: int | None = None, **options
) -> tuple[Evaluation, TrajectoryCurve]:
    """Evaluate ``model`` once with max(``counts``) trajectories and score every M of ``counts`` from
    that pass. ``options`` are ``evaluate_model``'s (steps, augmentations, batch_size, seed,
    trajectory_noise, vote_weight, ...); the step curve stops at ``steps`` unless ``curve_steps`` is
    given. Returns the evaluation at max(counts) and the curve."""
    counts = check_counts(counts)
    steps = options.get("steps") or model.config.halt_max_steps
    ev = evaluate_model(model, task, rows, trajectories=counts[-1], curve_steps=curve_steps or steps, **options)
    return ev, curve_of(task, rows, ev, counts)


__all__ = ["FILES", "TrajectoryCurve", "check_counts", "curve_of", "prefix_results", "trajectory_curve"]
