"""Parallel trajectories (``hybrid-reason evaluate --trajectories M``): M carries per view, started from
perturbed copies of the model's initial carry, all voted together (see docs/evaluation.md).

Trajectory 0 starts from the model's own initial carry (y_init, z_init broadcast over the slots), so
M = 1 is the ordinary evaluation. Trajectory t >= 1 starts from

    y = y_init + noise * rms(y_init) * e_y,    z = z_init + noise * rms(z_init) * e_z

with e_y, e_z standard normal [S', d] (one value per slot and channel), drawn on the CPU from a
``torch.Generator`` seeded by (seed, puzzle, view, t). The noise is thus in units of the carry's own
scale (noise 1.0: as large as the carry itself), and a trajectory's start depends on nothing else: not
on M, the batch size or the other puzzles. Each view is encoded once and its features are repeated
for its M trajectories.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from ..backbone.encoded import Encoded
from ..errors import HybridReasonError
from ..model.core import Carry

TRAJECTORY_NOISE = 1.0  # default noise, in units of the initial carry's RMS


def check_trajectories(trajectories: int, noise: float) -> None:
    """A one-line error unless trajectories >= 1 and noise >= 0."""
    if isinstance(trajectories, bool) or not isinstance(trajectories, int) or trajectories < 1:
        raise HybridReasonError(f"trajectories must be an integer >= 1, got {trajectories!r}")
    if not noise >= 0:
        raise HybridReasonError(f"trajectory_noise must be >= 0, got {noise!r}")


def view_numbers(puzzle: Sequence[int]) -> list[int]:
    """For each view (puzzle-major list of its puzzle index), its number among its puzzle's views."""
    seen: dict[int, int] = {}
    out = []
    for p in puzzle:
        out.append(seen.get(p, 0))
        seen[p] = out[-1] + 1
    return out


def trajectory_generator(seed: int, puzzle: int, view: int, trajectory: int) -> torch.Generator:
    """The CPU generator of one trajectory's noise, seeded by (seed, puzzle, view, trajectory)."""
    state = np.random.SeedSequence([seed, puzzle, view, trajectory]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def initial_carries(model, keys: Sequence[tuple[int, int, int]], noise: float, seed: int) -> Carry:
    """Initial carries [len(keys), S', d] on the model's device, one per (puzzle, view, trajectory) key:
    the model's initial carry, plus (trajectory >= 1) seeded Gaussian noise of scale ``noise`` x its RMS."""
    base = model.initial_carry(1)
    y0, z0 = base.y[0].float().cpu(), base.z[0].float().cpu()
    scale_y, scale_z = noise * y0.pow(2).mean().sqrt(), noise * z0.pow(2).mean().sqrt()
    ys, zs = [], []
    for puzzle, view, trajectory in keys:
        if trajectory == 0:
            ys.append(y0), zs.append(z0)
            continue
        gen = trajectory_generator(seed, puzzle, view, trajectory)
        ys.append(y0 + scale_y * torch.randn(y0.shape, generator=gen))
        zs.append(z0 + scale_z * torch.randn(z0.shape, generator=gen))
    device = base.y.device
    return Carry(torch.stack(ys).to(device, base.y.dtype), torch.stack(zs).to(device, base.z.dtype))


def spread(
    model,
    encoded: Encoded,
    puzzle_ids: Tensor | None,
    keys: Sequence[tuple[int, int]],
    trajectories: int,
    noise: float,
    seed: int,
) -> tuple[Encoded, Tensor | None, Carry]:
    """A batch of views (``keys``: their (puzzle, view)) made into views x trajectories rows, view-major:
    the encoded features and puzzle IDs repeated (never re-encoded), and each row's initial carry."""
    rows = torch.arange(len(keys)).repeat_interleave(trajectories)
    encoded = encoded.select(rows)
    if puzzle_ids is not None:
        puzzle_ids = puzzle_ids.repeat_interleave(trajectories)
    carries = initial_carries(model, [(p, v, t) for p, v in keys for t in range(trajectories)], noise, seed)
    return encoded, puzzle_ids, carries


__all__ = [
    "TRAJECTORY_NOISE",
    "check_trajectories",
    "initial_carries",
    "spread",
    "trajectory_generator",
    "view_numbers",
]
