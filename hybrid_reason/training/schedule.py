"""TRM's optimiser stand-in and learning-rate schedule: linear warm-up from the first step, then constant
(or cosine). Lightning's callable form in recipes: ``model.lr_scheduler: {class_path: ...WarmupSchedule}``."""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler


def adamw(params) -> Optimizer:
    """TRM's optimiser stand-in: AdamW, lr 1e-4, betas (0.9, 0.95), weight decay 0.1."""
    return torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)


class WarmupSchedule(LRScheduler):
    """Linear warm-up over ``warmup_steps`` optimizer steps, then a constant or cosine learning rate.

    The first step already uses lr / warmup_steps (TRM's schedule). ``decay="cosine"`` falls to
    ``min_lr_ratio`` x lr at ``total_steps`` (default: the trainer's max_steps).
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
            raise ValueError(f"lr_scheduler.decay must be 'constant' or 'cosine', got {decay!r}")
        self.warmup_steps, self.decay, self.total_steps, self.min_lr_ratio = warmup_steps, decay, total_steps, min_lr_ratio
        super().__init__(optimizer, last_epoch)

    def factor(self, step: int) -> float:
        """The learning-rate multiplier at optimizer step ``step`` (0-based)."""
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.decay == "constant":
            return 1.0
        if not self.total_steps:
            raise ValueError("lr_scheduler: cosine decay needs total_steps (or trainer.max_steps)")
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))
        return self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    def get_lr(self) -> list[float]:
        """Learning rates of the param groups at the current step."""
        return [base * self.factor(self.last_epoch) for base in self.base_lrs]
