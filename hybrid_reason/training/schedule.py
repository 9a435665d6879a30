"""TRM's optimiser stand-in and learning-rate schedule, built from torch's schedulers: linear warm-up
from the first step (``LinearLR``), then constant (``ConstantLR``) or cosine (``CosineAnnealingLR``),
chained by ``SequentialLR``. Lightning's callable form in recipes:
``model.lr_scheduler: {class_path: hybrid_reason.training.schedule.WarmupSchedule, init_args: {...}}``."""

from __future__ import annotations

from typing import Literal

import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import ConstantLR, CosineAnnealingLR, LinearLR, LRScheduler, SequentialLR

from ..errors import HybridReasonError

_FOREVER = 2**62  # total_iters of a ConstantLR that never ends


def adamw(params) -> Optimizer:
    """TRM's optimiser stand-in: AdamW, lr 1e-4, betas (0.9, 0.95), weight decay 0.1."""
    return torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)


class WarmupSchedule(SequentialLR):
    """Linear warm-up over ``warmup_steps`` optimizer steps, then a constant or cosine learning rate.

    Step s < warmup_steps trains at lr x (s + 1) / warmup_steps, so the first step already trains, as
    TRM's does (``LinearLR`` from 1 / warmup_steps; transformers' warm-up starts at 0). From step
    warmup_steps on, the rate is lr (``decay="constant"``) or falls along a cosine to ``min_lr_ratio``
    x lr at ``total_steps`` and stays there (``decay="cosine"``; default: the trainer's max_steps, set by the module
    through :meth:`set_total_steps`).
    """

    def __init__(
        self,
        optimizer: Optimizer,
        warmup_steps: int = 2000,
        decay: Literal["constant", "cosine"] = "constant",
        total_steps: int | None = None,
        min_lr_ratio: float = 0.0,
        last_epoch: int = -1,
    ):
        if decay not in ("constant", "cosine"):
            raise HybridReasonError(f"lr_scheduler.decay must be 'constant' or 'cosine', got {decay!r}")
        if warmup_steps < 0:
            raise HybridReasonError(f"lr_scheduler.warmup_steps must be >= 0, got {warmup_steps}")
        self.warmup_steps, self.decay, self.total_steps, self.min_lr_ratio = (
            warmup_steps,
            decay,
            total_steps,
            min_lr_ratio,
        )
        if decay == "constant":
            schedulers: list[LRScheduler] = [ConstantLR(optimizer, factor=1.0, total_iters=0)]
            milestones = []
        else:  # the cosine to total_steps, then its floor for good
            eta_min = min_lr_ratio * optimizer.param_groups[0]["lr"]
            total = total_steps or warmup_steps + 1  # placeholder until set_total_steps
            schedulers = [
                CosineAnnealingLR(optimizer, T_max=self._decay_steps(total), eta_min=eta_min),
                ConstantLR(optimizer, factor=min_lr_ratio, total_iters=_FOREVER),
            ]
            milestones = [total]
        if warmup_steps > 0:
            warmup = LinearLR(
                optimizer, start_factor=1 / warmup_steps, end_factor=1.0, total_iters=max(1, warmup_steps - 1)
            )
            schedulers, milestones = [warmup, *schedulers], [warmup_steps, *milestones]
        super().__init__(optimizer, schedulers, milestones, last_epoch)

    def _decay_steps(self, total_steps: int) -> int:
        """Steps of the cosine: from the end of the warm-up to ``total_steps``."""
        if total_steps <= self.warmup_steps:
            raise HybridReasonError(
                f"lr_scheduler.total_steps ({total_steps}) must be above warmup_steps ({self.warmup_steps})"
            )
        return total_steps - self.warmup_steps

    def set_total_steps(self, total_steps: int) -> None:
        """Decay to ``total_steps`` (the trainer's max_steps when the recipe gives none)."""
        if self.decay == "cosine":
            if total_steps is None or total_steps <= 0:
                raise HybridReasonError("lr_scheduler: cosine decay needs total_steps (or trainer.max_steps)")
            self._schedulers[-2].T_max = self._decay_steps(total_steps)
            self._milestones[-1] = total_steps
        self.total_steps = total_steps
