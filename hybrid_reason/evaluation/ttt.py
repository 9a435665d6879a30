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

``params``: ``all`` (every trainable weight but a joint-LoRA backbone's adapters; with an ID table, the
task's own row too, at 100 x the learning rate as TRM trains its table), ``adapter`` (Adapter and
Resampler), ``core-lora`` (a peft LoRA on the core's Linear layers, for this task only) or ``id`` (a
task-ID model's new row for the task, trained alone: row 0, the row of unseen tasks, starts from the
mean of the table's trained rows). Tasks are adapted one at a time. See docs/evaluation.md.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, get_args

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call

from ..errors import HybridReasonError
from ..tasks.keys import puzzle_key
from .hybrid import Timing, Views, predict_views
from .models import model_budget
from .runtime import progress_bar
from .scoring import is_arc

TTTParams = Literal["all", "adapter", "core-lora", "id"]
DEFAULT_LR: dict[str, float] = {"all": 1e-4, "adapter": 1e-3, "core-lora": 1e-3, "id": 1e-2}
BETAS = (0.9, 0.95)  # the project's AdamW stand-in for TRM's optimiser (no weight decay at test time)
UNSEEN_ID = 0  # the ID-table row of tasks unseen in training: ``id`` mode's row for the task
ROW_LR_FACTOR = 100.0  # with ``all``, the ID row's learning rate over the weights' (TRM: 1e-2 vs 1e-4)


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
    """

    steps: int = 0
    params: TTTParams = "all"
    learning_rate: float | None = None
    batch_size: int = 8
    lora_rank: int = 8
    augment: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        for name, low in (("steps", 0), ("batch_size", 1), ("lora_rank", 1)):
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
        """The settings of anything with ``ttt_steps``, ``ttt_params``, ``ttt_lr``, ``ttt_lora_rank`` and
        ``ttt_batch_size`` attributes (a suite entry)."""
        return cls(
            steps=entry.ttt_steps, params=entry.ttt_params, learning_rate=entry.ttt_lr,
            batch_size=entry.ttt_batch_size, lora_rank=entry.ttt_lora_rank, seed=seed,
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


def task_seed(seed: int, task_id: str) -> int:
    """A 32-bit number fixed by (seed, task id): the same task gets the same examples in any evaluation."""
    return int.from_bytes(hashlib.blake2b(f"{seed}:{task_id}".encode(), digest_size=4).digest(), "big")


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


# ============================================================================ adapting one task
class _Saved:
    """Saved copies of the tensors adaptation may change, with each parameter's ``requires_grad`` and
    ``.grad``; ``restore`` writes them back with ``copy_``."""

    def __init__(self, model: nn.Module, tensors: Sequence[Tensor]):
        self.copies = [(t, t.detach().clone()) for t in tensors]
        self.flags = [(p, p.requires_grad, p.grad) for p in model.parameters()]

    @torch.no_grad()
    def restore(self) -> None:
        """Write every saved tensor back, bit for bit, and the parameters' flags and gradients."""
        for tensor, saved in self.copies:
            tensor.copy_(saved)
        for p, requires_grad, grad in self.flags:
            p.requires_grad_(requires_grad)
            p.grad = grad


def _selected(model, params: str) -> list[nn.Parameter]:
    """The model's parameters that ``params`` trains densely: ``adapter`` its Adapter (and Resampler),
    ``all`` every one but a joint-LoRA backbone's adapters (the features are encoded once), else none."""
    if params in ("id", "core-lora"):
        return []
    if params == "adapter":
        modules = [model.adapter] + ([model.resampler] if model.resampler is not None else [])
        return [p for m in modules for p in m.parameters()]
    frozen = set() if model.backbone_lora is None else {id(p) for p in model.backbone_lora.parameters()}
    return [p for p in model.parameters() if id(p) not in frozen]


@contextmanager
def _core_lora(model, rank: int, seed: int) -> Iterator[list[nn.Parameter]]:
    """A peft LoRA of ``rank`` on every Linear of the core (initialised under ``seed``, the global RNG
    untouched), yielding its parameters; afterwards each wrapped Linear is put back in its parent and
    peft's ``peft_config`` attribute removed, so the module tree is the one before."""
    from peft import LoraConfig, inject_adapter_in_model

    core = model.core
    targets = [name for name, m in core.named_modules() if isinstance(m, nn.Linear)]
    had_config = "peft_config" in vars(core)
    device = next(core.parameters()).device
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=rank, target_modules=targets), core)
        core.to(device)
        yield [p for name, p in core.named_parameters() if ".lora_" in name]
    finally:
        for name in targets:
            parent, _, leaf = name.rpartition(".")
            owner = core.get_submodule(parent) if parent else core
            wrapped = getattr(owner, leaf)
            if hasattr(wrapped, "base_layer"):
                setattr(owner, leaf, wrapped.base_layer)
        if not had_config:
            vars(core).pop("peft_config", None)


@contextmanager
def adapted(model, batches: Sequence[list], settings: TTTSettings, puzzle_id: int | None) -> Iterator[dict]:
    """Fine-tune ``model`` on ``batches`` (``training_batches``) for ``settings.steps`` steps, yield
    ``{"puzzle_id": ID to predict with, "losses": [loss per step]}``, then restore the model exactly.

    ``puzzle_id``: the ID the task's rows have (None for a model without an ID table). With ``id`` the
    task predicts with ID 0, set to the trained new row; with ``all`` the task's own row trains too.
    """
    table = model.puzzle_emb
    row_id = UNSEEN_ID if settings.params == "id" else puzzle_id if settings.params == "all" else None
    row = None if table is None or row_id is None else nn.Parameter(_initial_row(table.weight, row_id, settings))
    dense = _selected(model, settings.params)
    with ExitStack() as stack:
        stack.callback(_Saved(model, dense + ([table.weight] if row is not None else [])).restore)  # runs last
        if settings.params == "core-lora":
            dense = stack.enter_context(_core_lora(model, settings.lora_rank, task_seed(settings.seed, "lora")))
        pid = row_id if row is not None else puzzle_id
        losses = _train(model, batches, dense, settings, pid, row)
        if row is not None:
            with torch.no_grad():
                table.weight[row_id].copy_(row)
        yield {"puzzle_id": pid, "losses": losses}


def _initial_row(weight: Tensor, row_id: int, settings: TTTSettings) -> Tensor:
    """The row a task starts from: with ``id`` the mean of the table's trained (non-zero) rows (zeros if
    none is), else the task's own row."""
    weight = weight.detach()
    if settings.params != "id":
        return weight[row_id].clone()
    trained = weight[weight.ne(0).any(-1)]
    return trained.mean(0) if len(trained) else torch.zeros_like(weight[0])


def _train(model, batches: Sequence[list], dense: list[Tensor], settings: TTTSettings, puzzle_id, row) -> list[float]:
    """K optimizer steps of deep supervision: each batch keeps its carry for N_sup steps, then the next
    starts fresh. Returns the loss of each step."""
    row_lr = settings.lr * (ROW_LR_FACTOR if dense else 1.0)
    groups = [{"params": dense}] + ([{"params": [row], "lr": row_lr}] if row is not None else [])
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=settings.lr, betas=BETAS, weight_decay=0.0)
    trained = [p for g in optimizer.param_groups for p in g["params"]]
    n_sup, losses = model.config.halt_max_steps, []
    with torch.enable_grad():
        for step in range(settings.steps):
            batch = batches[step // n_sup]
            if not batch:
                continue
            if step % n_sup == 0:
                encoded, labels, ids = _encode(model, batch, puzzle_id)
                carry = None
            out = _forward(model, encoded, labels, carry, ids, row)
            for p, g in zip(trained, torch.autograd.grad(out.loss, trained, allow_unused=True)):
                p.grad = g
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            carry = out.carry
            losses.append(float(out.loss.detach()))
    return losses


def _encode(model, batch: list, puzzle_id: int | None):
    """A batch's frozen-backbone features, labels and puzzle IDs (encoded once, reused for N_sup steps)."""
    with torch.no_grad():
        encoded = model.encode(
            [ex.text for ex in batch], [ex.slot_spans for ex in batch], [ex.meta["id"] for ex in batch]
        )
    labels = torch.tensor([ex.labels for ex in batch], dtype=torch.long, device=model.device)
    ids = None if puzzle_id is None else torch.full((len(batch),), puzzle_id, dtype=torch.long, device=model.device)
    return encoded, labels, ids


def _forward(model, encoded, labels: Tensor, carry, ids: Tensor | None, row: Tensor | None):
    """One supervision step with the loss; with a trained ID ``row``, the table seen by this call has it in
    place of row ``ids[0]`` (``functional_call``: the stored table is untouched, the gradient reaches ``row``)."""
    kwargs = {"encoded": encoded, "labels": labels, "carry": carry, "puzzle_ids": ids}
    if row is None:
        return model(**kwargs)
    weight = model.puzzle_emb.weight.detach().clone()
    weight[int(ids[0])] = row
    return functional_call(model, {"puzzle_emb.weight": weight}, (), kwargs)


# ============================================================================ evaluating task by task
def task_groups(rows: Sequence[dict]) -> list[list[int]]:
    """Row indices grouped by task (``puzzle_key``: the ARC task id), in order of first appearance."""
    keys = [puzzle_key(rows[p]) for p in range(len(rows))]
    return [[p for p, k in enumerate(keys) if k == key] for key in dict.fromkeys(keys)]


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
    by the model adapted to that task (see the module docstring). Returns what ``predict_views`` returns,
    in the same order (its Timing without the adaptation), and the TTTReport (adaptation seconds)."""
    check_ttt(model, task, settings)
    budget, n_sup = model_budget(model), model.config.halt_max_steps
    traces: dict[int, list] = {}
    tokens, timing, report = [0] * len(views.examples), Timing(steps=[0.0] * steps), TTTReport(settings)
    by_puzzle = views.by_puzzle(len(rows))
    groups = task_groups(rows)
    bar, bar_task = progress_bar("test-time training", len(groups), progress)
    with bar:
        for group in groups:
            task_rows, idx = [rows[p] for p in group], [j for p in group for j in by_puzzle[p]]
            task_id, ids = str(task_rows[0]["task_id"]), None if puzzle_ids is None else puzzle_ids[idx[0]]
            t0 = time.perf_counter()
            batches, left_out = training_batches(task, leave_one_out_rows(task_rows), settings, n_sup, budget)
            report.tasks, report.examples_over_budget = report.tasks + 1, report.examples_over_budget + left_out
            if settings.steps == 0 or not any(batches):
                report.skipped += [task_id] if settings.steps else []
                part = _predict(model, task, views, idx, ids, steps, batch_size, options)
            else:
                with adapted(model, batches, settings, ids) as result:
                    t1 = time.perf_counter()
                    part = _predict(model, task, views, idx, result["puzzle_id"], steps, batch_size, options)
                    t2 = time.perf_counter()
                report.seconds[task_id] = time.perf_counter() - t0 - (t2 - t1)
                report.losses[task_id] = result["losses"]
            _place(part, idx, traces, tokens, timing)
            bar.update(bar_task, advance=1)
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


__all__ = ["DEFAULT_LR", "TTTParams", "TTTReport", "TTTSettings", "adapted", "check_ttt", "leave_one_out_rows"]
__all__ += ["predict_with_ttt", "task_demonstrations", "task_groups", "training_batches"]
