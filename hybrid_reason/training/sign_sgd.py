"""TRM's optimiser of the puzzle-ID table: sparse sign-SGD with decoupled weight decay.

TRM trains its per-task ID table (a buffer, not a parameter) apart from the dense weights: after
backward, the gradients of the batch's rows are summed per ID (over all ranks), and only those rows
move, by ``row <- row * (1 - lr * weight_decay) - lr * sign(grad)``. Rows not in the batch are left
alone, weight decay included. Its learning rate (1e-2) follows the same warm-up schedule as the
dense optimiser's. There is no optimiser state: nothing to checkpoint but the table itself.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.optim import Optimizer


@torch.no_grad()
def sparse_sign_sgd_(table: Tensor, ids: Tensor, grad: Tensor, lr: float, weight_decay: float) -> None:
    """Update ``table`` [N, d] in place from the gradients ``grad`` [B, d] of its rows ``ids`` [B].

    Gradients of a repeated ID are summed before the sign is taken; each seen row decays once.
    """
    unique, inverse = ids.unique(return_inverse=True)
    summed = torch.zeros(len(unique), grad.shape[-1], dtype=grad.dtype, device=grad.device)
    summed.index_add_(0, inverse, grad)
    rows = table[unique]
    rows.mul_(1.0 - lr * weight_decay).add_(summed.sign().to(rows.dtype), alpha=-lr)
    table[unique] = rows


def schedule_factor(optimizer: Optimizer) -> float:
    """The learning-rate multiplier the scheduler applies now: lr / initial_lr of the first group
    (1.0 without a scheduler). TRM scales the ID table's learning rate by the same schedule."""
    group = optimizer.param_groups[0]
    initial = group.get("initial_lr")
    return float(group["lr"]) / float(initial) if initial else 1.0
