"""HybridReasonerModule: TRM's deep-supervision training with a persistent carry, under Lightning.

The training batch is a set of B *carry slots* (TRM arXiv 2510.04871, HRM arXiv 2506.21734). A slot
keeps its example, labels, backbone features and recursion state (y, z) across optimizer steps:

    every training step:  refill halted slots  ->  one supervision step for every slot  ->  loss,
                          one optimizer step (Lightning)  ->  decide which slots halt
    a slot halts when its halt logit > 0 and it has run this step's minimum (0, or with probability
    halt_exploration_prob a number drawn from [2, N_sup], redrawn at every step as in TRM), or after
    N_sup steps.

Refilling takes, for each halted slot, the example at the same position of the step's new batch;
the other examples of that batch are skipped, as TRM does (the stream is endless and seeded, so a
skipped example costs one rendering and nothing else). Only the refilled rows go through the frozen
backbone: an example costs one backbone pass over its whole life in the carry, not N_sup. The
metrics ``train/encodes_per_example``, ``train/encodes_per_slot_step`` and
``train/backbone_runs_per_example`` (after the backbone's feature cache) measure it.

The carry (features, labels, ids, y, z, step counts) is saved in every checkpoint (tensors, ints and
strings only; gathered from all ranks under DDP), so a resumed run continues exactly where it stopped.
Evaluation runs every example from the initial carry for N_sup steps (or ``eval_steps``).
"""

from __future__ import annotations

import copy
import os
import time
from dataclasses import asdict, is_dataclass
from typing import Any, Literal

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import WeightAveraging
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from ..backbone.encoded import Encoded
from ..backbone.loading import BackboneSpec
from ..errors import HybridReasonError
from ..model.configuration import HybridReasonerConfig
from ..model.core import Carry, CoreConfig
from ..tasks.base import PromptBudget, TokenCount
from .carry import SlotCarry, gather_to_rank_zero
from .data import Batch, task_from_spec
from .schedule import WarmupSchedule, adamw
from .sign_sgd import schedule_factor, sparse_sign_sgd_
from ..model.losses import IGNORE, example_loss, exact_correct, halt_loss
from ..model.modeling import HybridReasoner

_MIN_STEPS_SEED = 3  # seed stream of the exploration draws (data.py uses 0-2)


def exploration_min_steps(seed: int, step: int, rank: int, count: int, prob: float, n_sup: int) -> Tensor:
    """TRM's exploration at one supervision step: per slot, with probability ``prob`` a minimum halting
    step drawn from [2, N_sup], else 0. A pure function of (seed, step, rank): a resumed run draws the
    same values, with no RNG state in the checkpoint."""
    rng = np.random.default_rng([seed, _MIN_STEPS_SEED, step, rank])
    explore = rng.random(count) < prob
    drawn = rng.integers(2, n_sup + 1, count) if n_sup >= 2 else np.zeros(count, int)
    return torch.as_tensor(np.where(explore, drawn, 0), dtype=torch.long)


def plain(value: Any) -> Any:
    """A value made of dicts, lists, strings and numbers only (hyperparameters in a checkpoint)."""
    if is_dataclass(value) and not isinstance(value, type):
        return plain(asdict(value))
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if callable(value):
        return f"{getattr(value, '__module__', '?')}.{getattr(value, '__qualname__', type(value).__name__)}"
    return repr(value)


def _as(cls: type, value: Any, key: str):
    """A dataclass instance from itself or a dict, naming the recipe key on an unknown field."""
    if isinstance(value, cls):
        return value
    if isinstance(value, dict):
        try:
            return cls(**value)
        except TypeError as err:
            raise ValueError(f"model.{key}: {err}") from None
    raise TypeError(f"model.{key} must be a {cls.__name__} or a dict, got {type(value).__name__}")


def check_pretrained(path: str, task: dict[str, Any]) -> HybridReasonerConfig:
    """Read the config of a saved model (``model.init_from``) and check it fits the recipe's task."""
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise ValueError(f"model.init_from: {path!r} is not a saved HybridReasoner folder (no config.json)")
    config = HybridReasonerConfig.from_pretrained(path)
    built = task_from_spec(task)
    saved_name = (config.task or {}).get("name")
    if saved_name not in (None, task["name"]):
        raise ValueError(f"model.init_from: {path} was trained on task {saved_name!r}, the recipe's data.task is {task['name']!r}")
    for key, want in (("answer_vocab_size", built.vocab_size), ("num_slots", built.num_slots)):
        if getattr(config, key) != want:
            raise ValueError(f"model.init_from: {path} has {key}={getattr(config, key)}, task {task['name']!r} needs {want}")
    return config


# ------------------------------------------------------------------------------ the module
class HybridReasonerModule(pl.LightningModule):
    """Trains a HybridReasoner (frozen backbone -> recursive core) with TRM's deep supervision.

    Args:
        task: the task section (linked from ``data.task``): answer vocabulary and slot count come from it.
        backbone: the frozen LM (``BackboneSpec``). core: the recursive core (``CoreConfig``).
        num_context_slots: K resampler prefix slots reading all prompt tokens (0 = off).
        num_puzzle_ids: rows of TRM's per-task ID embedding (0 = off); as in TRM it is a buffer
            trained by sparse sign-SGD (``training/sign_sgd.py``) with ``puzzle_lr`` and
            ``puzzle_weight_decay``, on the dense schedule, and copied, not averaged, by the EMA.
            puzzle_prefix_len: prefix slots of the ID embedding.
        halt_max_steps: N_sup. halt_exploration_prob: chance, at every supervision step and for every
            slot, that halting must wait for a minimum step drawn from [2, N_sup] (TRM's exploration).
        loss: "stablemax" or "softmax" cross-entropy. halt_loss_weight: weight of the halt BCE.
        eval_steps: supervision steps per evaluated example (default N_sup).
        optimizer / lr_scheduler: callables building them from param groups / the optimizer.
        init_from: a saved HybridReasoner folder to start from (its task and shapes must match).
        seed: seeds the exploration draws. save_carry: keep the carry in checkpoints (exact resume).
    """

    def __init__(
        self,
        task: dict[str, Any],
        backbone: BackboneSpec = BackboneSpec(),
        core: CoreConfig = CoreConfig(),
        num_context_slots: int = 0,
        num_puzzle_ids: int = 0,
        puzzle_prefix_len: int = 16,
        halt_max_steps: int = 16,
        halt_exploration_prob: float = 0.1,
        loss: Literal["stablemax", "softmax"] = "stablemax",
        halt_loss_weight: float = 0.5,
        eval_steps: int | None = None,
        optimizer: OptimizerCallable = adamw,
        lr_scheduler: LRSchedulerCallable | None = WarmupSchedule,
        puzzle_lr: float = 1e-2,
        puzzle_weight_decay: float = 0.1,
        init_from: str | None = None,
        seed: int = 0,
        save_carry: bool = True,
    ):
        super().__init__()
        self.save_hyperparameters()
        self._hparams = type(self._hparams)(plain(dict(self._hparams)))  # weights_only-loadable
        self._hparams_initial = copy.deepcopy(self._hparams)
        backbone, core = _as(BackboneSpec, backbone, "backbone"), _as(CoreConfig, core, "core")
        if backbone.lora_rank > 0:
            raise ValueError("model.backbone.lora_rank: training LoRA on the backbone is not supported by the trainer yet")
        if halt_max_steps < 1:
            raise ValueError(f"model.halt_max_steps must be >= 1, got {halt_max_steps}")
        self.task = task_from_spec(task)
        config = HybridReasonerConfig(
            backbone=asdict(backbone), core=asdict(core), task=dict(task),
            answer_vocab_size=self.task.vocab_size, num_slots=self.task.num_slots,
            num_context_slots=num_context_slots, num_puzzle_ids=num_puzzle_ids, puzzle_prefix_len=puzzle_prefix_len,
            halt_max_steps=halt_max_steps, halt_exploration_prob=halt_exploration_prob,
            loss=loss, halt_loss_weight=halt_loss_weight,
        )  # fmt: skip
        if init_from is not None:
            check_pretrained(init_from, task)
        self.model = HybridReasoner(config)
        if init_from is not None:
            self._load_pretrained_weights(init_from)
        self.num_puzzle_ids, self.eval_steps, self.seed, self.save_carry = num_puzzle_ids, eval_steps, seed, save_carry
        self.optimizer_factory, self.lr_scheduler_factory = optimizer, lr_scheduler
        self.puzzle_lr, self.puzzle_weight_decay = puzzle_lr, puzzle_weight_decay
        self.carry: SlotCarry | None = None
        self._pending_carry: dict | None = None
        self.counters = {"encoded_rows": 0, "backbone_runs": 0, "admitted": 0, "slot_steps": 0, "finished": 0}
        self._window = self._new_window()
        self._eval_sums: dict[str, Tensor] = {}

    def _load_pretrained_weights(self, path: str) -> None:
        """Load the trainable weights of a saved HybridReasoner folder (shapes must match)."""
        from safetensors.torch import load_file

        state = load_file(os.path.join(path, "model.safetensors"))
        try:
            self.model.load_state_dict(state, strict=True)
        except RuntimeError as err:
            raise ValueError(f"model.init_from: {path} does not fit this recipe's model: {err}") from None

    def __deepcopy__(self, memo: dict) -> "HybridReasonerModule":
        """Copy for the EMA's AveragedModel: shares the frozen backbone, leaves the carry behind."""
        backbone = self.model.__dict__.get("_backbone")
        if backbone is not None:
            memo[id(backbone)] = backbone
        new = type(self).__new__(type(self))
        memo[id(self)] = new
        state = {k: v for k, v in self.__getstate__().items() if k not in ("carry", "_pending_carry")}
        new.__setstate__(copy.deepcopy(state, memo))
        new.carry, new._pending_carry = None, None
        return new

    def setup(self, stage: str) -> None:
        """Check the datamodule serves this model's task (and puzzle IDs that fit the ID table), and
        give the datamodule the backbone's context as its prompt budget."""
        dm = self.trainer.datamodule if self._trainer is not None else None
        spec = getattr(dm, "task_spec", None)
        if spec is not None and spec != self.model.config.task:
            raise ValueError(f"data.task {spec} differs from model.task {self.model.config.task}; name the task once (data.task)")
        if stage == "fit" and self.trainer.accumulate_grad_batches != 1:
            raise ValueError("trainer.accumulate_grad_batches must be 1: each carry step is one optimizer step")
        context = self.model.backbone.context_length
        if hasattr(dm, "set_prompt_budget") and context is not None:  # prompts must fit the backbone
            dm.set_prompt_budget(PromptBudget(context, TokenCount(self.model.backbone.tokenizer)))
        if self.num_puzzle_ids and stage == "fit" and dm is not None and len(dm.puzzles) + 1 > self.num_puzzle_ids:
            raise ValueError(f"model.num_puzzle_ids={self.num_puzzle_ids} is too small: the training split has "
                             f"{len(dm.puzzles)} puzzles (+1 for unknown)")

    # -------------------------------------------------------------------------- optimisation
    def configure_optimizers(self):
        """AdamW (or the recipe's optimizer) on the trainable weights. The puzzle-ID table is a buffer,
        trained by sign-SGD in :meth:`on_before_optimizer_step`, not by this optimizer."""
        optimizer = self.optimizer_factory([{"params": list(self.model.parameters()), "name": "main"}])
        if self.lr_scheduler_factory is None:
            return optimizer
        scheduler = self.lr_scheduler_factory(optimizer)
        if getattr(scheduler, "total_steps", 0) is None and self.trainer.max_steps > 0:
            scheduler.total_steps = self.trainer.max_steps
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # -------------------------------------------------------------------------- training
    def encode(self, batch: Batch, rows: list[int]) -> Encoded:
        """Backbone features of the batch rows ``rows``; counts the rows sent and the rows the backbone
        really ran (the others came from its feature cache)."""
        cache = self.model.backbone.cache
        misses = cache.misses if cache is not None else 0
        encoded = self.model.encode([batch.texts[i] for i in rows], [batch.slot_spans[i] for i in rows], [batch.ids[i] for i in rows])
        self.counters["encoded_rows"] += len(rows)
        self.counters["backbone_runs"] += cache.misses - misses if cache is not None else len(rows)
        return encoded

    def on_before_optimizer_step(self, optimizer) -> None:
        """TRM's sparse sign-SGD on the puzzle-ID rows of this step (gathered over ranks), at
        ``puzzle_lr`` times the dense optimizer's current schedule factor."""
        table = self.model.puzzle_emb
        if table is None or table.rows is None or table.rows.grad is None:
            return
        grad, ids = table.rows.grad, table.ids
        if self.trainer.world_size > 1:
            grad, ids = self.all_gather(grad).flatten(0, 1), self.all_gather(ids).flatten()
        lr = self.puzzle_lr * schedule_factor(optimizer)
        sparse_sign_sgd_(table.weight, ids, grad, lr, self.puzzle_weight_decay)
        table.rows = table.ids = None

    def on_fit_start(self) -> None:
        """Refuse an EMA that would average the puzzle-ID table (TRM's EMA leaves it alone)."""
        averaging = [c for c in self.trainer.callbacks if isinstance(c, WeightAveraging)]
        if self.num_puzzle_ids and any(getattr(c, "_use_buffers", False) for c in averaging):
            raise HybridReasonError("ema.use_buffers must be false with model.num_puzzle_ids > 0: the EMA would "
                                    "average the puzzle-ID table, which TRM trains by sign-SGD outside the EMA")

    def draw_min_steps(self, count: int) -> Tensor:
        """This step's exploration minimum for ``count`` slots (see :func:`exploration_min_steps`)."""
        cfg = self.model.config
        drawn = exploration_min_steps(self.seed, self.global_step, self.global_rank, count,
                                      cfg.halt_exploration_prob, cfg.halt_max_steps)  # fmt: skip
        return drawn.to(self.device)

    def refill(self, batch: Batch) -> None:
        """Put the batch's examples into the halted slots (all slots at the first step) and encode only those."""
        B = len(batch.ids)
        if self.carry is not None and len(self.carry.ids) != B:
            raise ValueError(f"training batch has {B} examples but the carry has {len(self.carry.ids)} slots "
                             "(resume with the data.batch_size the checkpoint was trained with)")
        rows = list(range(B)) if self.carry is None else self.carry.halted.nonzero().flatten().tolist()
        if not rows:
            return
        encoded = self.encode(batch, rows)
        self.counters["admitted"] += len(rows)
        fresh = self.model.initial_carry(len(rows))
        idx = torch.as_tensor(rows, device=self.device)
        if self.carry is None:
            zeros = torch.zeros(B, dtype=torch.long, device=self.device)
            self.carry = SlotCarry(
                encoded, batch.labels.clone(), list(batch.ids), batch.index.clone(), batch.puzzle_ids.clone(),
                fresh.y, fresh.z, zeros, zeros.clone(), zeros.bool(),
            )  # fmt: skip
            return
        c = self.carry
        c.encoded = c.encoded.replace(rows, encoded)
        for name in ("labels", "index", "puzzle_ids"):
            getattr(c, name)[idx] = getattr(batch, name)[idx]
        refilled = set(rows)
        c.ids = [batch.ids[i] if i in refilled else c.ids[i] for i in range(B)]
        c.y[idx], c.z[idx] = fresh.y.to(c.y.dtype), fresh.z.to(c.z.dtype)
        c.steps[idx], c.min_steps[idx], c.halted[idx] = 0, 0, False

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        """Refill halted slots, run one supervision step on every slot, decide halting; return the loss."""
        if self._pending_carry is not None:
            self.restore_carry()
        self.refill(batch)
        c = self.carry
        puzzle_ids = c.puzzle_ids if self.num_puzzle_ids else None
        out = self.model(encoded=c.encoded, labels=c.labels, carry=Carry(c.y, c.z), puzzle_ids=puzzle_ids)
        self.check_finite(out.loss, out.logits, out.halt_logits)
        self.advance(out)
        self.log("train/loss", out.loss.detach(), prog_bar=True, batch_size=len(c.ids))
        return out.loss

    def check_finite(self, loss: Tensor, logits: Tensor, halt_logits: Tensor) -> None:
        """Stop on a NaN/inf loss (on every rank), naming the global step and the examples."""
        bad = not bool(torch.isfinite(loss.detach()))
        if self.trainer.world_size > 1:
            bad = self.trainer.strategy.reduce_boolean_decision(bad, all=False)
        if not bad:
            return
        rows = ~(torch.isfinite(logits.detach()).flatten(1).all(1) & torch.isfinite(halt_logits.detach()))
        culprits = [i for i, r in zip(self.carry.ids, rows.tolist()) if r]
        raise FloatingPointError(
            f"non-finite training loss {loss.item()} at global step {self.global_step} on rank {self.global_rank}; "
            f"examples with non-finite outputs: {culprits}; examples in the batch: {self.carry.ids}. "
            "The last checkpoint saved before this step is intact."
        )

    def advance(self, out) -> None:
        """Keep the new (y, z), count the step, halt slots, and accumulate the metrics."""
        c, cfg = self.carry, self.model.config
        c.y, c.z = out.carry
        c.steps = c.steps + 1
        halt = out.halt_logits.detach() > 0
        c.min_steps = self.draw_min_steps(len(c.ids))  # TRM redraws the exploration minimum at every step
        c.halted = (c.steps >= cfg.halt_max_steps) | (halt & (c.steps >= c.min_steps))
        mask = c.labels != IGNORE
        cells = ((out.logits.detach().argmax(-1) == c.labels) & mask).sum(-1).float() / mask.sum(-1).clamp_min(1)
        done = c.halted
        w = self._window
        w["finished"] += int(done.sum())
        w["exact"] += float(out.exact[done].float().sum())
        w["cells"] += float(cells[done].sum())
        w["steps"] += float(c.steps[done].float().sum())
        w["halt_right"] += float((halt == out.exact).float().sum())
        w["slots"] += len(c.ids)
        self.counters["slot_steps"] += len(c.ids)
        self.counters["finished"] += int(done.sum())
        if (self.global_step + 1) % self.trainer.log_every_n_steps == 0:
            self.log_window()

    @staticmethod
    def _new_window() -> dict[str, float]:
        """Fresh metric sums for the next logging window."""
        return {"finished": 0, "exact": 0.0, "cells": 0.0, "steps": 0.0, "halt_right": 0.0, "slots": 0, "start": time.perf_counter()}

    def log_window(self) -> None:
        """Log the training metrics of the slots that halted since the last log, and restart the window."""
        w, n = self._window, self._window["finished"]
        metrics = {
            "train/halt_acc": w["halt_right"] / max(1, w["slots"]),
            "train/encodes_per_example": self.counters["encoded_rows"] / max(1, self.counters["admitted"]),
            "train/encodes_per_slot_step": self.counters["encoded_rows"] / max(1, self.counters["slot_steps"]),
            "train/backbone_runs_per_example": self.counters["backbone_runs"] / max(1, self.counters["admitted"]),
            "train/examples_per_s": n * self.trainer.world_size / max(1e-9, time.perf_counter() - w["start"]),
        }
        if n:
            metrics |= {"train/exact_acc": w["exact"] / n, "train/cell_acc": w["cells"] / n, "train/steps": w["steps"] / n}
        self.log_dict(metrics, on_step=True, on_epoch=False)
        self._window = self._new_window()

    # -------------------------------------------------------------------------- evaluation
    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        """Run every example from the initial carry for all N_sup (or eval_steps) steps."""
        self.evaluate(batch)

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        """Same as validation, on the test split."""
        self.evaluate(batch)

    def evaluate(self, batch: Batch) -> None:
        """Accumulate exact/cell accuracy, halting step, halt accuracy and loss over a batch."""
        steps = self.eval_steps or self.model.config.halt_max_steps
        encoded = self.model.encode(batch.texts, batch.slot_spans, batch.ids)
        labels = batch.labels
        halted = torch.zeros(len(labels), dtype=torch.bool, device=self.device)
        halt_step = torch.full((len(labels),), steps, device=self.device)
        exact_at_halt = torch.zeros_like(halted)
        puzzle_ids = batch.puzzle_ids if self.num_puzzle_ids else None
        curve = {}  # exact accuracy after 1, 2, 4, ... steps: what the recursion adds
        for k, out in enumerate(self.model.iterate(encoded, steps, puzzle_ids), start=1):
            exact = exact_correct(out.logits, labels)
            stop = ~halted & ((out.halt_logits > 0) | (k == steps))  # the step a deployed model would stop at
            halt_step = torch.where(stop, k, halt_step)
            exact_at_halt = torch.where(stop, exact, exact_at_halt)
            halted |= stop
            if k & (k - 1) == 0 and k < steps:
                curve[f"exact_step{k}"] = exact.float().sum()
        mask = labels != IGNORE
        cfg = self.model.config
        loss = example_loss(out.logits, labels, cfg.loss) + cfg.halt_loss_weight * halt_loss(out.halt_logits, exact)
        sums = {
            "examples": torch.tensor(float(len(labels)), device=self.device),
            "exact": exact.float().sum(),
            "exact_at_halt": exact_at_halt.float().sum(),
            "cells_right": ((out.logits.argmax(-1) == labels) & mask).float().sum(),
            "cells": mask.float().sum(),
            "halt_step": halt_step.float().sum(),
            "halt_right": ((out.halt_logits > 0) == exact).float().sum(),
            "loss": loss.float().sum(),
            **curve,
        }
        for key, value in sums.items():
            self._eval_sums[key] = self._eval_sums.get(key, 0) + value.detach()

    def _log_eval(self, stage: str) -> None:
        """Reduce the sums over ranks and log the ratios."""
        sums = {k: self.trainer.strategy.reduce(v, reduce_op="sum") for k, v in self._eval_sums.items()}
        self._eval_sums = {}
        if not sums:
            return
        n = sums["examples"].clamp_min(1)
        self.log_dict(
            {
                f"{stage}/exact_acc": sums["exact"] / n,
                f"{stage}/exact_acc_at_halt": sums["exact_at_halt"] / n,
                f"{stage}/cell_acc": sums["cells_right"] / sums["cells"].clamp_min(1),
                f"{stage}/steps": sums["halt_step"] / n,
                f"{stage}/halt_acc": sums["halt_right"] / n,
                f"{stage}/loss": sums["loss"] / n,
                **{f"{stage}/exact_acc_{k[6:]}": v / n for k, v in sums.items() if k.startswith("exact_step")},
            },
            on_epoch=True,
        )

    def on_validation_epoch_end(self) -> None:
        self._log_eval("val")

    def on_test_epoch_end(self) -> None:
        self._log_eval("test")

    # -------------------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Add the HF config (for export), the counters and, from every rank, the carry."""
        checkpoint["hybrid_reasoner_config"] = plain(self.model.config.to_dict())
        checkpoint["training_counters"] = dict(self.counters)
        if self.save_carry and self.carry is not None:
            ranks = gather_to_rank_zero(self.carry.state())
            checkpoint["carry"] = {"world_size": self.trainer.world_size, "ranks": ranks}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the counters; keep the carry until training starts on the right device."""
        self.counters.update(checkpoint.get("training_counters", {}))
        self._pending_carry = checkpoint.get("carry")

    def restore_carry(self) -> None:
        """Rebuild this rank's carry from a loaded checkpoint (a fresh carry if the world size changed)."""
        saved, self._pending_carry = self._pending_carry, None
        if saved["world_size"] != self.trainer.world_size:
            rank_zero_warn(
                f"the checkpoint's carry comes from {saved['world_size']} ranks, this run has {self.trainer.world_size}: "
                "starting from a fresh carry"
            )
            return
        self.carry = SlotCarry.from_state(saved["ranks"][self.global_rank], self.device)
