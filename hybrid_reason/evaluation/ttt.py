"""Test-time training (TTT): fine-tune on each ARC task's own demonstrations, predict it, restore.

For every evaluated task (rows grouped by ``task_id``), ``predict_with_ttt``:

1. renders leave-one-out examples: each demonstration that every row of the task shows (and that is
   none of its queries) is the query once, the others in context, under seeded training augmentations,
   within the backbone's prompt budget. A task with fewer than two has nothing to hold out: it is
   predicted as is, and counted;
2. fine-tunes the weights ``TTTSettings.params`` selects for K optimizer steps of TRM's deep
   supervision: a batch keeps its carry for N_sup steps (detached between steps, one optimizer step
   each), then the next batch starts from the initial carry; each batch is encoded once;
3. predicts the task's views exactly as ``evaluate_model`` does (``predict_views``);
4. restores every changed tensor from saved copies with ``copy_``, removes the LoRA it added and resets
   ``requires_grad`` and ``.grad``: the model after a task is the model before it, bit for bit.

Tasks are adapted ``TTTSettings.task_batch`` at a time, each with its own copy of the weights
(``ttt_adapt.adapted``: one vmapped step for all of them, their batches encoded in one backbone call);
a group holds tasks whose batches have the same sizes. Each task is then predicted alone.

``params``: ``all`` (every trainable weight but a joint-LoRA backbone's adapters; with an ID table, the
task's own row too, at 100 x the learning rate as TRM trains its table), ``adapter`` (Adapter and
Resampler), ``core-lora`` (a peft LoRA on the core's Linear layers, for this task only) or ``id`` (a
task-ID model's new row for the task, trained alone: row 0, the row of unseen tasks, starts from the
mean of the table's trained rows). See docs/evaluation.md.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, get_args

import numpy as np

from ..errors import HybridReasonError
from ..tasks.keys import puzzle_key
from .hybrid import Timing, Views, predict_views
from .models import model_budget
from .runtime import progress_bar
from .scoring import is_arc
from .ttt_adapt import adapted, task_seed

TTTParams = Literal["all", "adapter", "core-lora", "id"]
DEFAULT_LR: dict[str, float] = {"all": 1e-4, "adapter": 1e-3, "core-lora": 1e-3, "id": 1e-2}


@dataclass(frozen=True)
class TTTSettings:
    """How each task is adapted before it is predicted.

    Args:
        steps: optimizer steps per task (0: no test-time training)
        params: which weights adapt: all, adapter, core-lora or id (see the module docstring)
        learning_rate: AdamW's learning rate (None: 1e-4 for all, 1e-3 for adapter and core-lora, 1e-2 for id)
        batch_size: leave-one-out examples per optimizer step
        lora_rank: the rank of core-lora's adapters
        augment: render the examples under random training augmentations (else un-augmented)
        seed: seeds the augmentations and the LoRA initialisation
        task_batch: tasks adapted at once, each with its own copy of the weights (memory grows with it)
    """

    steps: int = 0
    params: TTTParams = "all"
    learning_rate: float | None = None
    batch_size: int = 8
    lora_rank: int = 8
    augment: bool = True
    seed: int = 0
    task_batch: int = 1

    def __post_init__(self) -> None:
        for name, low in (("steps", 0), ("batch_size", 1), ("lora_rank", 1), ("task_batch", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise HybridReasonError(f"test-time training: {name} must be an integer >= {low}, got {value!r}")
        if self.params not in get_args(TTTParams):
            raise HybridReasonError(
                f"test-time training: params must be one of {', '.join(get_args(TTTParams))}, got {self.params!r}"
            )
        if self.learning_rate is not None and not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise HybridReasonError(f"test-time training: learning_rate must be > 0, got {self.learning_rate!r}")

    @property
    def lr(self) -> float:
        """The learning rate used: the given one, else the default of ``params``."""
        return self.learning_rate if self.learning_rate is not None else DEFAULT_LR[self.params]

    @classmethod
    def of(cls, entry: Any, seed: int = 0) -> TTTSettings:
        """The settings of anything with ``ttt_steps``, ``ttt_params``, ``ttt_lr``, ``ttt_lora_rank``,
        ``ttt_batch_size`` and ``ttt_task_batch`` attributes (a suite entry)."""
        return cls(
            steps=entry.ttt_steps, params=entry.ttt_params, learning_rate=entry.ttt_lr,
            batch_size=entry.ttt_batch_size, lora_rank=entry.ttt_lora_rank, seed=seed,
            task_batch=entry.ttt_task_batch,
        )  # fmt: skip


@dataclass
class TTTReport:
    """What test-time training did and cost over one evaluation."""

    settings: TTTSettings
    tasks: int = 0  # ARC tasks evaluated
    seconds: dict[str, float] = field(default_factory=dict)  # adapted task id -> seconds (examples, steps, restore)
    losses: dict[str, list[float]] = field(default_factory=dict)  # adapted task id -> loss at each step
    skipped: list[str] = field(default_factory=list)  # tasks with fewer than two usable demonstrations
    examples_over_budget: int = 0  # leave-one-out examples left out: their prompt could not fit

    def seconds_per_task(self) -> float:
        """Adaptation seconds per evaluated task (skipped tasks count, with 0 s)."""
        return sum(self.seconds.values()) / max(1, self.tasks)

    def summary(self) -> dict[str, Any]:
        """A JSON-able summary: the settings, tasks adapted and skipped, seconds and losses."""
        first = [v[0] for v in self.losses.values() if v]
        last = [v[-1] for v in self.losses.values() if v]
        return {
            "settings": asdict(self.settings) | {"learning_rate": self.settings.lr},
            "tasks": self.tasks,
            "adapted_tasks": len(self.seconds),
            "skipped_tasks": list(self.skipped),
            "examples_over_budget": self.examples_over_budget,
            "seconds_per_task": self.seconds_per_task(),
            "seconds_per_adapted_task": sum(self.seconds.values()) / max(1, len(self.seconds)),
            "first_step_loss": float(np.mean(first)) if first else None,
            "last_step_loss": float(np.mean(last)) if last else None,
        }


# ============================================================================ leave-one-out examples
def check_ttt(model, task, settings: TTTSettings) -> None:
    """One-line errors for test-time training that cannot run: a task without demonstrations, or ``id``
    on a model without a puzzle-ID table."""
    if not is_arc(task):
        raise HybridReasonError(
            f"--ttt_steps {settings.steps}: test-time training needs an ARC-family task (it trains on the "
            f"task's demonstrations); task {task.name!r} has none"
        )
    if settings.params == "id" and not model.config.num_puzzle_ids:
        raise HybridReasonError(
            "--ttt_params id: the model has no puzzle-ID table (config.num_puzzle_ids is 0); "
            "use all, adapter or core-lora"
        )


def task_demonstrations(rows: Sequence[dict]) -> list[dict]:
    """The pairs test-time training may use for one task: the demonstrations every row shows, less any
    whose input is one of the rows' queries (so no query is ever trained on)."""
    queries = [row["test_input"] for row in rows]
    return [
        pair
        for pair in rows[0]["demonstrations"]
        if all(pair in row["demonstrations"] for row in rows[1:]) and pair["input"] not in queries
    ]


def leave_one_out_rows(rows: Sequence[dict]) -> list[dict]:
    """One row per usable demonstration of the task of ``rows``: that demonstration as the query, the
    others in context (empty when fewer than two demonstrations are usable)."""
    demos = task_demonstrations(rows)
    if len(demos) < 2:
        return []
    first = rows[0]
    prefix = first["id"].rsplit("/", 1)[0]
    return [
        {
            "id": f"{prefix}/ttt{k}",
            "task_id": first["task_id"],
            "query": f"ttt{k}",
            "demonstrations": demos[:k] + demos[k + 1 :],
            "test_input": pair["input"],
            "test_output": pair["output"],
            "source": first.get("source", ""),
        }
        for k, pair in enumerate(demos)
    ]


def training_batches(
    task, loo_rows: Sequence[dict], settings: TTTSettings, n_sup: int, budget=None
) -> tuple[list[list], int]:
    """The ``ceil(steps / n_sup)`` batches of rendered leave-one-out examples, cycling through the rows,
    and how many examples were left out because their prompt cannot fit ``budget``. Position j of batch
    b is rendered under ``sample_augmentation(default_rng([task key, b, j]), train=True)`` (the key from
    the seed and the task id; no augmentation without ``augment``, and then a batch holds each row at
    most once)."""
    if not loo_rows:
        return [], 0
    key = task_seed(settings.seed, loo_rows[0]["task_id"])
    size = settings.batch_size if settings.augment else min(settings.batch_size, len(loo_rows))
    batches, left_out = [], 0
    for b in range(math.ceil(settings.steps / n_sup)):
        batch = []
        for j in range(size):
            aug = task.sample_augmentation(np.random.default_rng([key, b, j]), True) if settings.augment else None
            try:
                batch.append(task.render(loo_rows[(b * size + j) % len(loo_rows)], aug, budget=budget))
            except HybridReasonError:  # the held-out pair's prompt cannot fit the backbone's context
                left_out += 1
        batches.append(batch)
    return batches, left_out


# ============================================================================ evaluating task by task
def task_groups(rows: Sequence[dict]) -> list[list[int]]:
    """Row indices grouped by task (``puzzle_key``: the ARC task id), in order of first appearance."""
    keys = [puzzle_key(rows[p]) for p in range(len(rows))]
    return [[p for p, k in enumerate(keys) if k == key] for key in dict.fromkeys(keys)]


@dataclass
class _Pending:
    """A task waiting for its group: where its views are, its ID, its batches and their render seconds."""

    task_id: str
    idx: list[int]
    puzzle_id: int | None
    batches: list[list]
    seconds: float


def predict_with_ttt(
    model,
    task,
    rows,
    views: Views,
    puzzle_ids: Sequence[int] | None,
    steps: int,
    batch_size: int,
    settings: TTTSettings,
    progress: bool = True,
    **options: Any,
) -> tuple[list, list[int], Timing, TTTReport]:
    """``predict_views`` (with ``options``: trajectories, ...) task by task, each task's views predicted
    by the model adapted to that task (see the module docstring), ``settings.task_batch`` tasks adapted
    at once. Returns what ``predict_views`` returns, in the same order (its Timing without the
    adaptation), and the TTTReport (adaptation seconds: a group's shared equally by its tasks)."""
    check_ttt(model, task, settings)
    budget, n_sup = model_budget(model), model.config.halt_max_steps
    traces: dict[int, list] = {}
    tokens, timing, report = [0] * len(views.examples), Timing(steps=[0.0] * steps), TTTReport(settings)
    by_puzzle = views.by_puzzle(len(rows))
    groups, waiting = task_groups(rows), {}
    bar, bar_task = progress_bar("test-time training", len(groups), progress)

    def predict(idx: list[int], puzzle_id: int | None) -> float:
        """Predict views ``idx`` with the model as it is, put them in place; returns the seconds taken."""
        start = time.perf_counter()
        _place(_predict(model, task, views, idx, puzzle_id, steps, batch_size, options), idx, traces, tokens, timing)
        bar.update(bar_task, advance=1)
        return time.perf_counter() - start

    def adapt_and_predict(group: list[_Pending]) -> None:
        """Adapt ``group``'s tasks together, then predict each with its own weights."""
        start, predicting = time.perf_counter(), 0.0
        with adapted(model, [t.batches for t in group], settings, [t.puzzle_id for t in group]) as result:
            for g, pending in enumerate(group):
                result.load(g)
                predicting += predict(pending.idx, result.puzzle_ids[g])
                report.losses[pending.task_id] = result.losses[g]
        shared = (time.perf_counter() - start - predicting) / len(group)
        report.seconds.update({t.task_id: t.seconds + shared for t in group})

    with bar:
        for group in groups:
            start = time.perf_counter()
            task_rows, idx = [rows[p] for p in group], [j for p in group for j in by_puzzle[p]]
            task_id, pid = str(task_rows[0]["task_id"]), None if puzzle_ids is None else puzzle_ids[idx[0]]
            batches, left_out = training_batches(task, leave_one_out_rows(task_rows), settings, n_sup, budget)
            report.tasks, report.examples_over_budget = report.tasks + 1, report.examples_over_budget + left_out
            if settings.steps == 0 or not any(batches):
                report.skipped += [task_id] if settings.steps else []
                predict(idx, pid)
                continue
            sizes = tuple(map(len, batches))  # tasks adapted together have batches of the same sizes
            waiting.setdefault(sizes, []).append(_Pending(task_id, idx, pid, batches, time.perf_counter() - start))
            if len(waiting[sizes]) == settings.task_batch:
                adapt_and_predict(waiting.pop(sizes))
        for group in waiting.values():
            adapt_and_predict(group)
    return [t for j in range(len(views.examples)) for t in traces[j]], tokens, timing, report


def _predict(model, task, views: Views, idx: list[int], puzzle_id, steps: int, batch_size: int, options: dict):
    """``predict_views`` on the views ``idx``, all with ID ``puzzle_id`` (None: a model without an ID table)."""
    sub = Views([views.examples[j] for j in idx], [views.puzzle[j] for j in idx])
    ids = None if puzzle_id is None else [puzzle_id] * len(idx)
    return predict_views(model, task, sub, steps, batch_size, ids, False, **options)


def _place(part, idx: list[int], traces: dict[int, list], tokens: list[int], timing: Timing) -> None:
    """Put one task's traces (``predict_views``: each view's trajectories in a row) and token counts at
    their views, and add its seconds."""
    part_traces, part_tokens, part_timing = part
    per_view = len(part_traces) // max(1, len(idx))
    for i, (j, count) in enumerate(zip(idx, part_tokens)):
        traces[j], tokens[j] = part_traces[i * per_view : (i + 1) * per_view], count
    timing.encode += part_timing.encode
    timing.steps = [a + b for a, b in zip(timing.steps, part_timing.steps)]


__all__ = ["DEFAULT_LR", "TTTParams", "TTTReport", "TTTSettings", "check_ttt", "leave_one_out_rows"]
__all__ += ["predict_with_ttt", "task_demonstrations", "task_groups", "training_batches"]
