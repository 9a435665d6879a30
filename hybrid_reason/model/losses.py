"""Losses of TRM's deep supervision: per-slot cross-entropy averaged per example, and halt BCE."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

IGNORE = -100


def stablemax_log_probs(logits: Tensor) -> Tensor:
    """log of stablemax, in float64: s(x) = x + 1 for x >= 0, 1 / (1 - x) for x < 0; p = s / sum(s)."""
    x = logits.double()
    s = torch.where(x >= 0, x + 1, 1 / (1 - torch.minimum(x, torch.zeros_like(x))))
    return torch.log(s / s.sum(-1, keepdim=True))


def slot_cross_entropy(logits: Tensor, labels: Tensor, kind: Literal["stablemax", "softmax"]) -> Tensor:
    """Cross-entropy per slot [B, S] (0 where the label is ignored)."""
    mask = labels != IGNORE
    safe = labels.clamp_min(0).unsqueeze(-1)
    if kind == "stablemax":
        logp = stablemax_log_probs(logits)
    elif kind == "softmax":
        logp = F.log_softmax(logits.float(), dim=-1)
    else:
        raise ValueError(f"loss must be 'stablemax' or 'softmax', got {kind!r}")
    return -(logp.gather(-1, safe).squeeze(-1) * mask)


def example_loss(logits: Tensor, labels: Tensor, kind: Literal["stablemax", "softmax"]) -> Tensor:
    """Cross-entropy averaged over each example's labelled slots: [B] (0 for an example with none)."""
    per_slot = slot_cross_entropy(logits, labels, kind)
    count = (labels != IGNORE).sum(-1).clamp_min(1)
    return (per_slot.sum(-1) / count).float()


def exact_correct(logits: Tensor, labels: Tensor) -> Tensor:
    """[B] bool: every labelled slot's argmax equals its label (and the example has labels)."""
    mask = labels != IGNORE
    right = (logits.argmax(-1) == labels) | ~mask
    return right.all(-1) & mask.any(-1)


def halt_target(logits: Tensor, labels: Tensor) -> Tensor:
    """[B] bool target of the halt head: the whole answer is right. An example with no labelled slot
    counts as right, as in TRM (its per-slot correct count, 0, equals its label count, 0)."""
    return exact_correct(logits, labels) | ~(labels != IGNORE).any(-1)


def halt_loss(halt_logits: Tensor, exact: Tensor) -> Tensor:
    """Binary cross-entropy of the halt logit against 'the whole answer is right': [B]."""
    return F.binary_cross_entropy_with_logits(halt_logits.float(), exact.float(), reduction="none")


def deep_supervision_loss(
    logits: Tensor,
    halt_logits: Tensor,
    labels: Tensor,
    kind: Literal["stablemax", "softmax"] = "stablemax",
    halt_weight: float = 0.5,
) -> tuple[Tensor, dict[str, Tensor]]:
    """TRM's step loss, summed over the batch: sum_b [CE_b + halt_weight * BCE_b].

    The halt BCE's target is :func:`halt_target` (an example with no labels counts as right); the
    ``exact`` part, for metrics, is :func:`exact_correct` (such an example is not exact). Returns the
    summed loss (divide by the global batch size before backward, as TRM does) and detached
    per-example parts for metrics.
    """
    ce = example_loss(logits, labels, kind)
    exact = exact_correct(logits.detach(), labels)
    bce = halt_loss(halt_logits, halt_target(logits.detach(), labels))
    total = (ce + halt_weight * bce).sum()
    return total, {"ce": ce.detach(), "halt_bce": bce.detach(), "exact": exact}
