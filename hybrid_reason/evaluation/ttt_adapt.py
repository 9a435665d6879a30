"""Adapting the model to G tasks at once, each with its own copy of the trained weights, then restoring it.

``adapted`` is test-time training's inner loop (``ttt.py`` renders the examples and predicts). The weights a
mode trains are stacked into G copies, [G, ...] each, one per task, and trained together: every step runs
the model once for all G tasks through ``torch.func.vmap`` over ``functional_call``, so task g's batch
meets only copy g. AdamW is element-wise, and each task's loss is its own batch mean, so copy g follows
the same path it would alone, up to floating-point rounding (vmap's batched matmuls add in another order).
With G = 1 no vmap runs: the model is called on the one copy, exactly as a task adapted alone.

The frozen backbone encodes the G tasks' batches in one call. Afterwards ``load(g)`` writes copy g into
the model to predict task g, and leaving the context restores every changed tensor from saved copies with
``copy_``, removes the LoRA it added and resets ``requires_grad`` and ``.grad``: bit for bit the model before.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from ..backbone.encoded import Encoded
from ..model.core import Carry

BETAS = (0.9, 0.95)  # the project's AdamW stand-in for TRM's optimiser (no weight decay at test time)
UNSEEN_ID = 0  # the ID-table row of tasks unseen in training: ``id`` mode's row for the task
ROW_LR_FACTOR = 100.0  # with ``all``, the ID row's learning rate over the weights' (TRM: 1e-2 vs 1e-4)
TABLE = "puzzle_emb.weight"


def task_seed(seed: int, task_id: str) -> int:
    """A 32-bit number fixed by (seed, task id): the same task gets the same examples in any evaluation."""
    return int.from_bytes(hashlib.blake2b(f"{seed}:{task_id}".encode(), digest_size=4).digest(), "big")


@dataclass
class Adapted:
    """G tasks' adaptation: the ID each predicts with, its loss at each step, and ``load(g)``, which
    writes task g's trained weights into the model (until the ``adapted`` context exits)."""

    puzzle_ids: list[int | None]
    losses: list[list[float]]
    load: Callable[[int], None]


# ============================================================================ what adapts, and the restore
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


def _initial_row(weight: Tensor, row_id: int, params: str) -> Tensor:
    """The row a task starts from: with ``id`` the mean of the table's trained (non-zero) rows (zeros if
    none is), else the task's own row."""
    weight = weight.detach()
    if params != "id":
        return weight[row_id].clone()
    trained = weight[weight.ne(0).any(-1)]
    return trained.mean(0) if len(trained) else torch.zeros_like(weight[0])


# ============================================================================ adapting G tasks
@contextmanager
def adapted(model, tasks: Sequence[Sequence[list]], settings, puzzle_ids: Sequence[int | None]) -> Iterator[Adapted]:
    """Fine-tune one copy of the weights ``settings.params`` selects per task, copy g on ``tasks[g]``'s
    batches (``ttt.training_batches``; every task's batches must have the same sizes) for ``settings.steps``
    steps; yield the ``Adapted`` tasks, then restore the model exactly.

    ``puzzle_ids``: the ID each task's rows have (None for a model without an ID table). With ``id`` a
    task predicts with ID 0, set to its trained new row; with ``all`` the task's own row trains too.
    """
    sizes = {tuple(map(len, batches)) for batches in tasks}
    if len(sizes) != 1:
        raise ValueError(f"adapted: the tasks' batches differ in size ({sorted(sizes)}); group them by size")
    table, params = model.puzzle_emb, settings.params
    row_ids = [UNSEEN_ID if params == "id" else pid if params == "all" else None for pid in puzzle_ids]
    has_row = table is not None and row_ids[0] is not None
    dense = _selected(model, params)
    with ExitStack() as stack:
        saved = _Saved(model, dense + ([table.weight] if has_row else []))
        stack.callback(saved.restore)  # runs last
        if params == "core-lora":
            dense = stack.enter_context(_core_lora(model, settings.lora_rank, task_seed(settings.seed, "lora")))
        names = {id(p): name for name, p in model.named_parameters()}
        copies = {names[id(p)]: _copies(p, len(tasks)) for p in dense}
        rows = None
        if has_row:
            rows = torch.stack([_initial_row(table.weight, r, params) for r in row_ids]).requires_grad_(True)
        pids = [row_ids[g] if has_row else pid for g, pid in enumerate(puzzle_ids)]
        losses = _train(model, tasks, copies, rows, pids if table is not None else None, settings)

        @torch.no_grad()
        def load(g: int) -> None:
            for name, copy in copies.items():
                model.get_parameter(name).copy_(copy[g])
            if rows is not None:  # the table as saved (the last tensor saved), with task g's row
                table.weight.copy_(saved.copies[-1][1])
                table.weight[row_ids[g]] = rows[g]

        yield Adapted(pids, losses, load)


def _copies(p: Tensor, count: int) -> Tensor:
    """``count`` copies of ``p`` stacked on a new first axis: a fresh leaf that collects the gradient."""
    return p.detach().unsqueeze(0).repeat(count, *([1] * p.dim())).requires_grad_(True)


def _train(model, tasks, copies: dict[str, Tensor], rows: Tensor | None, pids, settings) -> list[list[float]]:
    """K optimizer steps of deep supervision for all tasks at once: each batch keeps its carry for N_sup
    steps, then the next starts fresh. ``pids``: each task's puzzle ID (its trained row's, with ``rows``;
    None without an ID table). Returns each task's loss at each step."""
    row_lr = settings.lr * (ROW_LR_FACTOR if copies else 1.0)
    groups = [{"params": list(copies.values())}] + ([{"params": [rows], "lr": row_lr}] if rows is not None else [])
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=settings.lr, betas=BETAS, weight_decay=0.0)
    trained = [p for g in optimizer.param_groups for p in g["params"]]
    row_ids = None if rows is None else torch.tensor(pids, device=model.device)
    step = _per_task(model, len(tasks))
    n_sup, losses = model.config.halt_max_steps, [[] for _ in tasks]
    with torch.enable_grad():
        for k in range(settings.steps):
            if not tasks[0][k // n_sup]:  # every example of this batch was too long for the backbone
                continue
            if k % n_sup == 0:
                data, carry = _encode(model, [batches[k // n_sup] for batches in tasks], pids), (None, None)
            loss, *carry = step(copies, rows, row_ids, *data, *carry)
            for p, g in zip(trained, torch.autograd.grad(loss.sum(), trained, allow_unused=True)):
                p.grad = g
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            for task_losses, value in zip(losses, loss.detach().tolist()):
                task_losses.append(value)
    return losses


def _encode(model, batches: list[list], pids: list[int] | None) -> tuple:
    """The G tasks' batches encoded by the frozen backbone in one call, as [G, B, ...] tensors: features,
    empty, tokens, token_mask (None without a resampler), labels and puzzle IDs (None without ``pids``)."""
    flat = [ex for batch in batches for ex in batch]
    with torch.no_grad():
        encoded = model.encode([ex.text for ex in flat], [ex.slot_spans for ex in flat], [ex.meta["id"] for ex in flat])
    labels = torch.tensor([ex.labels for ex in flat], dtype=torch.long, device=model.device)
    split = lambda t: None if t is None else t.reshape(len(batches), -1, *t.shape[1:])  # noqa: E731
    ids = None if pids is None else torch.tensor(pids, device=model.device).repeat_interleave(len(batches[0]))
    return tuple(map(split, (encoded.features, encoded.empty, encoded.tokens, encoded.token_mask, labels, ids)))


def _per_task(model, count: int) -> Callable[..., tuple]:
    """The training step of ``count`` tasks, each tensor argument [count, ...]: ``_step`` under ``vmap``,
    or, for one task, ``_step`` on its one copy (no vmap: the same calls as a task adapted alone)."""
    step = partial(_step, model)
    if count == 1:
        return lambda *args: tuple(t.unsqueeze(0) for t in step(*map(_first, args)))

    def batched(*args: Any) -> tuple:
        with warnings.catch_warnings():  # CPU attention has no batching rule: vmap runs it task by task
            warnings.filterwarnings("ignore", message="There is a performance drop because we have not yet")
            return vmap(step, in_dims=tuple(None if a is None else 0 for a in args))(*args)

    return batched


def _first(arg: Any) -> Any:
    """The first (only) task's part of a step argument: a tensor's first row, a dict's tensors' alike."""
    if isinstance(arg, dict):
        return {k: v[0] for k, v in arg.items()}
    return None if arg is None else arg[0]


def _step(model, copies, rows, row_ids, features, empty, tokens, token_mask, labels, ids, y, z) -> tuple:
    """One supervision step of one task with its own weights (``copies``, and its ``rows`` in place of
    table row ``row_ids``): its loss and next carry (y, z); a None carry is the initial one."""
    tensors = dict(copies)
    if rows is not None:  # the table is a buffer: swap in a copy with the task's row, out of place (vmap-safe)
        table = model.puzzle_emb.weight.detach()
        pick = torch.arange(len(table), device=table.device) == row_ids
        tensors[TABLE] = torch.where(pick.unsqueeze(-1), rows.to(table.dtype), table)
    encoded = Encoded(features, empty, tokens, token_mask)
    carry = None if y is None else Carry(y, z)
    kwargs = {"encoded": encoded, "labels": labels, "carry": carry, "puzzle_ids": ids}
    out = functional_call(model, tensors, (), kwargs)
    return out.loss, out.carry.y, out.carry.z


__all__ = ["Adapted", "BETAS", "ROW_LR_FACTOR", "UNSEEN_ID", "adapted", "task_seed"]
