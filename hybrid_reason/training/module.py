"""HybridReasonerModule: TRM's deep-supervision training with a persistent carry, under Lightning.

The training batch is a set of B *carry slots* (TRM arXiv 2510.04871, HRM arXiv 2506.21734). A slot
keeps its example, labels, backbone features and recursion state (y, z) across optimizer steps:

    every training step:  refill halted slots  ->  one supervision step for every slot  ->  loss,
                          one optimizer step (Lightning)  ->  decide which slots halt (halting.py)

Refilling takes, for each halted slot, the example at the same position of the step's new batch;
the other examples of that batch are skipped, as TRM does (the stream is endless and seeded, so a
skipped example costs one rendering and nothing else). Only the refilled rows go through the frozen
backbone: an example costs one backbone pass over its whole life in the carry, not N_sup.

The carry is saved in every checkpoint in an exact compact form (carry.py; gathered from all ranks
under DDP), so a resumed run continues exactly where it stopped. Evaluation runs every example from
the initial carry for N_sup steps (or ``eval_steps``). Metrics: metrics.py.
"""

from __future__ import annotations

import copy
from dataclasses import asdict
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import WeightAveraging
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor, nn

from ..backbone.encoded import Encoded
from ..backbone.loading import BackboneSpec
from ..errors import HybridReasonError
from ..model.configuration import HybridReasonerConfig, Loss
from ..model.core import Carry, CoreConfig
from ..model.losses import IGNORE
from ..model.modeling import HybridReasoner
from ..tasks.base import PromptBudget, TokenCount
from .carry import SlotCarry, gather_to_rank_zero
from .data import Batch, task_from_spec
from .halting import exploration_min_steps, halts
from .hparams import as_dataclass, plain
from .metrics import (
    COUNTERS,
    EvalMetrics,
    WindowMetrics,
    counter_metrics,
    counters_of_rank,
    new_counters,
    per_example_cell_acc,
)
from .pretrained import check_pretrained, load_pretrained_weights
from .schedule import WarmupSchedule, adamw
from .sign_sgd import schedule_factor, sparse_sign_sgd_

__all__ = ["HybridReasonerModule", "check_pretrained", "exploration_min_steps"]

DEFAULT_BACKBONE, DEFAULT_CORE = BackboneSpec(), CoreConfig()  # the defaults (read-only) of the module's sections


# The model's settings are declared (types, defaults, checks) once, in HybridReasonerConfig; the module's
# flat recipe keys (model.halt_max_steps, ...) take their defaults from there and HybridReasonerConfig checks them.
_CONFIG = HybridReasonerConfig


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
            The datamodule must serve puzzle IDs (``data.puzzle_ids``, linked by the CLI).
            puzzle_prefix_len: prefix slots of the ID embedding.
        halt_max_steps: N_sup. halt_exploration_prob: chance, at every supervision step and for every
            slot, that halting must wait for a minimum step drawn from [2, N_sup] (TRM's exploration).
        loss: "stablemax" or "softmax" cross-entropy. halt_loss_weight: weight of the halt BCE.
        eval_steps: supervision steps per evaluated example (default N_sup).
        optimizer / lr_scheduler: callables building them from param groups / the optimizer.
        init_from: a saved HybridReasoner folder to start from (its task and shapes must match).
        seed: seeds the exploration draws. save_carry: keep the carry in checkpoints (exact resume).
        feature_cache_dir: keep the frozen backbone's features in this folder too (safetensors keyed by
            backbone, layer, text and spans), shared by every run that names it: a suite's seeds and
            systems encode each text once. Not part of the model; a LoRA backbone has no cache.
    """

    def __init__(
        self,
        task: dict[str, Any],
        backbone: BackboneSpec = DEFAULT_BACKBONE,
        core: CoreConfig = DEFAULT_CORE,
        num_context_slots: int = _CONFIG.num_context_slots,
        num_puzzle_ids: int = _CONFIG.num_puzzle_ids,
        puzzle_prefix_len: int = _CONFIG.puzzle_prefix_len,
        halt_max_steps: int = _CONFIG.halt_max_steps,
        halt_exploration_prob: float = _CONFIG.halt_exploration_prob,
        loss: Loss = _CONFIG.loss,
        halt_loss_weight: float = _CONFIG.halt_loss_weight,
        eval_steps: int | None = None,
        optimizer: OptimizerCallable = adamw,
        lr_scheduler: LRSchedulerCallable | None = WarmupSchedule,
        puzzle_lr: float = 1e-2,
        puzzle_weight_decay: float = 0.1,
        init_from: str | None = None,
        seed: int = 0,
        save_carry: bool = True,
        feature_cache_dir: str | None = None,
    ):
        super().__init__()
        objects = {"backbone": backbone, "core": core, "optimizer": optimizer, "lr_scheduler": lr_scheduler}
        self.save_hyperparameters(ignore=list(objects))  # then their plain form: checkpoints stay weights_only
        self.save_hyperparameters(plain(objects))
        backbone, core = as_dataclass(BackboneSpec, backbone, "backbone"), as_dataclass(CoreConfig, core, "core")
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
            load_pretrained_weights(self.model, init_from)
        if feature_cache_dir is not None:
            self.model.backbone.keep_features_in(feature_cache_dir)
        self.num_puzzle_ids, self.eval_steps, self.seed, self.save_carry = num_puzzle_ids, eval_steps, seed, save_carry
        self.optimizer_factory, self.lr_scheduler_factory = optimizer, lr_scheduler
        self.puzzle_lr, self.puzzle_weight_decay = puzzle_lr, puzzle_weight_decay
        self.carry: SlotCarry | None = None
        self.prompts: list | None = None  # joint LoRA: each slot's (text, spans), encoded again at every step
        self._pending_carry: dict | None = None
        self.counters = new_counters()
        self.window = WindowMetrics()
        self.eval_metrics = nn.ModuleDict({"val": EvalMetrics(), "test": EvalMetrics()})

    def __deepcopy__(self, memo: dict) -> HybridReasonerModule:
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
            raise ValueError(
                f"data.task {spec} differs from model.task {self.model.config.task}; name the task once (data.task)"
            )
        if stage == "fit" and self.trainer.accumulate_grad_batches != 1:
            raise ValueError("trainer.accumulate_grad_batches must be 1: each carry step is one optimizer step")
        context = self.model.backbone.context_length
        if hasattr(dm, "set_prompt_budget") and context is not None:  # prompts must fit the backbone
            dm.set_prompt_budget(PromptBudget(context, TokenCount(self.model.backbone.tokenizer)))
        if stage == "fit" and dm is not None:
            self.check_puzzle_ids(dm)

    def check_puzzle_ids(self, dm) -> None:
        """A model with an ID table needs a datamodule that serves puzzle IDs, and a table with a row for
        every puzzle of the training split (+1 for unknown)."""
        if not self.num_puzzle_ids:
            return
        if getattr(dm, "puzzle_ids", True) is False:
            raise HybridReasonError(
                f"model.num_puzzle_ids={self.num_puzzle_ids} but data.puzzle_ids is false: every "
                "example would get ID 0; set data.puzzle_ids: true (the CLI links it)"
            )
        if len(dm.puzzles) + 1 > self.num_puzzle_ids:
            raise HybridReasonError(
                f"model.num_puzzle_ids={self.num_puzzle_ids} is too small: the training split has "
                f"{len(dm.puzzles)} puzzles (+1 for unknown)"
            )

    def on_fit_start(self) -> None:
        """Refuse an EMA that would average the puzzle-ID table (TRM's EMA leaves it alone), and say what
        the prompt budget cost the training split."""
        averaging = [c for c in self.trainer.callbacks if isinstance(c, WeightAveraging)]
        if self.num_puzzle_ids and any(getattr(c, "_use_buffers", False) for c in averaging):
            raise HybridReasonError(
                "ema.use_buffers must be false with model.num_puzzle_ids > 0: the EMA would "
                "average the puzzle-ID table, which TRM trains by sign-SGD outside the EMA"
            )
        self.report_budget()

    def report_budget(self) -> None:
        """Log (and print, on rank 0) how many training prompts lost how many demonstrations to the prompt
        budget, and how many queries could not fit at all: the metrics ``data/train_<stat>``."""
        dm = self.trainer.datamodule
        if not self.trainer.is_global_zero or not hasattr(dm, "budget_stats"):
            return
        stats = dm.budget_stats("train")
        rank_zero_info(
            f"prompt budget: {stats['prompts_with_drops']} of {len(dm.rows('train'))} training prompts lost "
            f"{stats['demonstrations_dropped']} demonstrations; {stats['queries_skipped']} queries skipped"
        )
        for logger in self.loggers:
            logger.log_metrics({f"data/train_{k}": float(v) for k, v in stats.items()}, step=self.global_step)

    # -------------------------------------------------------------------------- optimisation
    def configure_optimizers(self):
        """AdamW (or the recipe's optimizer) on the trainable weights. The puzzle-ID table is a buffer,
        trained by sign-SGD in :meth:`on_before_optimizer_step`, not by this optimizer."""
        optimizer = self.optimizer_factory([{"params": list(self.model.parameters()), "name": "main"}])
        if self.lr_scheduler_factory is None:
            return optimizer
        scheduler = self.lr_scheduler_factory(optimizer)
        if hasattr(scheduler, "set_total_steps") and scheduler.total_steps is None:
            scheduler.set_total_steps(self.trainer.max_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

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

    # -------------------------------------------------------------------------- training
    def encode(self, batch: Batch, rows: list[int]) -> Encoded:
        """Backbone features of the batch rows ``rows``; counts the rows sent, the rows the backbone
        really ran (the others came from its feature cache) and the tokens its forward passes held."""
        backbone = self.model.backbone
        cache = backbone.cache
        tally = lambda: (cache.misses if cache is not None else 0, backbone.real_tokens, backbone.padded_tokens)  # noqa: E731
        before = tally()
        encoded = self.model.encode(
            [batch.texts[i] for i in rows], [batch.slot_spans[i] for i in rows], [batch.ids[i] for i in rows]
        )
        runs, real, padded = (now - then for now, then in zip(tally(), before))
        self.counters["backbone_runs"] += runs if cache is not None else len(rows)
        self.counters["real_tokens"] += real
        self.counters["padded_tokens"] += padded
        self.counters["encoded_rows"] += len(rows)
        return encoded

    def draw_min_steps(self, count: int) -> Tensor:
        """This step's exploration minimum for ``count`` slots (see :func:`halting.exploration_min_steps`)."""
        cfg = self.model.config
        drawn = exploration_min_steps(self.seed, self.global_step, self.global_rank, count,
                                      cfg.halt_exploration_prob, cfg.halt_max_steps)  # fmt: skip
        return drawn.to(self.device)

    def refill(self, batch: Batch) -> None:
        """Put the batch's examples into the halted slots (all slots at the first step) and encode only those."""
        B = len(batch.ids)
        if self.carry is not None and len(self.carry.ids) != B:
            raise ValueError(
                f"training batch has {B} examples but the carry has {len(self.carry.ids)} slots "
                "(resume with the data.batch_size the checkpoint was trained with)"
            )
        rows = list(range(B)) if self.carry is None else self.carry.halted.nonzero().flatten().tolist()
        if not rows:
            return
        if self.model.backbone_lora is not None:
            kept, new = self.prompts or [None] * B, set(rows)
            self.prompts = [(batch.texts[i], batch.slot_spans[i]) if i in new else kept[i] for i in range(B)]
        encoded = self.encode(batch, rows)
        dropped = batch.dropped[rows]
        self.counters["admitted"] += len(rows)
        self.counters["prompts_with_drops"] += int((dropped > 0).sum())
        self.counters["demonstrations_dropped"] += int(dropped.sum())
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
        encoded = c.encoded if self.model.backbone_lora is None else self.encode_live_slots(batch)
        out = self.model(encoded=encoded, labels=c.labels, carry=Carry(c.y, c.z), puzzle_ids=puzzle_ids)
        self.check_finite(out.loss, out.logits, out.halt_logits)
        self.advance(out)
        self.log("train/loss", out.loss.detach(), prog_bar=True, batch_size=len(c.ids), sync_dist=True)
        return out.loss

    def encode_live_slots(self, batch: Batch) -> Encoded:
        """Joint LoRA: the features depend on the weights being trained, so every slot runs through the
        backbone under grad at every step (refilled slots just did); the carry keeps them detached."""
        c, rows = self.carry, self.carry.steps.nonzero().flatten().tolist()
        encoded = c.encoded
        if rows:
            prompts = batch._replace(
                texts=[p[0] for p in self.prompts], slot_spans=[p[1] for p in self.prompts], ids=c.ids
            )
            encoded = encoded.replace(rows, self.encode(prompts, rows))
        c.encoded = Encoded(*(t if t is None else t.detach() for t in vars(encoded).values()))
        return encoded

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
        """Keep the new (y, z), count the step, halt slots, and add the step to the metrics window."""
        c, cfg = self.carry, self.model.config
        c.y, c.z = out.carry
        c.steps = c.steps + 1
        halt_logits = out.halt_logits.detach()
        c.min_steps = self.draw_min_steps(len(c.ids))  # TRM redraws the exploration minimum at every step
        c.halted = halts(c.steps, halt_logits, c.min_steps, cfg.halt_max_steps)
        cells = per_example_cell_acc(out.logits.detach(), c.labels, IGNORE)
        self.window.update(c.halted, out.exact, cells, c.steps, (halt_logits > 0) == out.exact)
        self.counters["slot_steps"] += len(c.ids)
        self.counters["finished"] += int(c.halted.sum())
        if (self.global_step + 1) % self.trainer.log_every_n_steps == 0:
            self.log_window()

    def log_window(self) -> None:
        """Log the window's metrics and the run-long counter ratios, both over all ranks."""
        totals = torch.tensor([float(self.counters[k]) for k in COUNTERS], dtype=torch.float64, device=self.device)
        if self.trainer.world_size > 1:
            totals = self.trainer.strategy.reduce(totals, reduce_op="sum")
        metrics = self.window.compute() | counter_metrics(dict(zip(COUNTERS, totals.tolist())))
        self.log_dict(metrics, on_step=True, on_epoch=False)

    # -------------------------------------------------------------------------- evaluation
    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        """Run every example from the initial carry for all N_sup (or eval_steps) steps."""
        self.evaluate(batch, "val")

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        """Same as validation, on the test split."""
        self.evaluate(batch, "test")

    def evaluate(self, batch: Batch, stage: str) -> None:
        """Add a batch to the ``stage`` metrics (metrics.EvalMetrics) and log them for the epoch."""
        cfg = self.model.config
        steps = self.eval_steps or cfg.halt_max_steps
        encoded = self.model.encode(batch.texts, batch.slot_spans, batch.ids)
        puzzle_ids = batch.puzzle_ids if self.num_puzzle_ids else None
        metrics = self.eval_metrics[stage]
        metrics.update_rollout(self.model.iterate(encoded, steps, puzzle_ids), batch.labels, steps, cfg)
        for name, metric, attribute in metrics.items(f"eval_metrics.{stage}"):
            self.log(f"{stage}/{name}", metric, on_step=False, on_epoch=True, metric_attribute=attribute)

    # -------------------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Add the HF config (for export) and, from every rank, the counters and the carry."""
        checkpoint["hybrid_reasoner_config"] = plain(self.model.config.to_dict())
        carry = self.carry.state() if self.save_carry and self.carry is not None else None
        if carry is not None and self.prompts is not None:
            carry["prompts"] = self.prompts
        ranks = gather_to_rank_zero((dict(self.counters), carry))
        world = self.trainer.world_size
        checkpoint["training_counters"] = {"world_size": world, "ranks": [counters for counters, _ in ranks]}
        if carry is not None:
            checkpoint["carry"] = {"world_size": world, "ranks": [state for _, state in ranks]}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore this rank's counters; keep the carry until training starts on the right device."""
        world, rank = (self.trainer.world_size, self.global_rank) if self._trainer is not None else (1, 0)
        self.counters.update(counters_of_rank(checkpoint.get("training_counters", {}), world, rank))
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
        self.prompts = saved["ranks"][self.global_rank].get("prompts")
