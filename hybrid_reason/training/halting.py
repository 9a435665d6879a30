"""TRM's halting of the carry slots in training: the halt-logit rule and the exploration minimum.

A slot halts when its halt logit is > 0 and it has run this step's minimum number of steps, or after
N_sup steps. The minimum is redrawn at every supervision step for every slot: 0, or with probability
``halt_exploration_prob`` a number drawn from [2, N_sup] (TRM's exploration). The draw is a pure
function of (seed, global step, rank), so a resumed run draws the same values with no RNG state in
the checkpoint.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

_MIN_STEPS_SEED = 3  # seed stream of the exploration draws (data.py uses 0-2)


def exploration_min_steps(seed: int, step: int, rank: int, count: int, prob: float, n_sup: int) -> Tensor:
    """TRM's exploration at one supervision step: per slot, with probability ``prob`` a minimum halting
    step drawn from [2, N_sup], else 0. A pure function of (seed, step, rank)."""
    rng = np.random.default_rng([seed, _MIN_STEPS_SEED, step, rank])
    explore = rng.random(count) < prob
    drawn = rng.integers(2, n_sup + 1, count) if n_sup >= 2 else np.zeros(count, int)
    return torch.as_tensor(np.where(explore, drawn, 0), dtype=torch.long)


def halts(steps: Tensor, halt_logits: Tensor, min_steps: Tensor, n_sup: int) -> Tensor:
    """[B] bool: the slots that halt after running ``steps`` supervision steps."""
    return (steps >= n_sup) | ((halt_logits > 0) & (steps >= min_steps))
