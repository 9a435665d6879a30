"""Input grids for the ``rules`` task family: one generator per input style (dense, sparse, objects, ...)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from functools import partial

import numpy as np


def gen_dense(rng: np.random.Generator, h: int, w: int, palette: tuple[int, ...]) -> np.ndarray:
    """Every cell a palette colour, or background with a probability drawn in [0.2, 0.6]."""
    colours = rng.choice(palette, size=(h, w))
    return np.where(rng.random((h, w)) < rng.uniform(0.2, 0.6), 0, colours).astype(np.int8)


def gen_sparse(rng: np.random.Generator, h: int, w: int, palette: tuple[int, ...]) -> np.ndarray:
    """A few single cells (1 to about an eighth of the grid) on the background."""
    n = int(rng.integers(1, max(2, h * w // 8) + 1))
    g = np.zeros(h * w, dtype=np.int8)
    g[rng.choice(h * w, size=n, replace=False)] = rng.choice(palette, size=n)
    return g.reshape(h, w)


def _place(rng: np.random.Generator, taken: np.ndarray, oh: int, ow: int) -> tuple[int, int] | None:
    """A random position for an oh x ow box at least one cell from every taken cell (marked taken), or
    None when there is none. A few random tries first; then every free position, from an integral
    image of the taken cells."""
    h, w = taken.shape
    for _ in range(4):
        r, c = int(rng.integers(0, h - oh + 1)), int(rng.integers(0, w - ow + 1))
        if not taken[max(r - 1, 0) : r + oh + 1, max(c - 1, 0) : c + ow + 1].any():
            taken[r : r + oh, c : c + ow] = True
            return r, c
    ii = np.zeros((h + 3, w + 3), dtype=np.int32)
    ii[1:, 1:] = np.pad(taken, 1).cumsum(0).cumsum(1)
    rows, cols = h - oh + 1, w - ow + 1  # top-left corners; each box's window has a one-cell margin
    window = ii[oh + 2 : oh + 2 + rows, ow + 2 : ow + 2 + cols] - ii[:rows, ow + 2 : ow + 2 + cols]
    window = window - ii[oh + 2 : oh + 2 + rows, :cols] + ii[:rows, :cols]
    free = np.flatnonzero(window == 0)
    if not len(free):
        return None
    r, c = divmod(int(free[int(rng.integers(len(free)))]), cols)
    taken[r : r + oh, c : c + ow] = True
    return r, c


def gen_objects(rng: np.random.Generator, h: int, w: int, palette: tuple[int, ...]) -> np.ndarray:
    """2-5 one-colour rectangles of 1x1 to 4x4 (some missing a corner), never touching each other."""
    g, taken = np.zeros((h, w), dtype=np.int8), np.zeros((h, w), dtype=bool)
    for _ in range(int(rng.integers(2, 6))):
        oh, ow = int(rng.integers(1, min(4, h) + 1)), int(rng.integers(1, min(4, w) + 1))
        if (at := _place(rng, taken, oh, ow)) is None:
            continue
        box = np.full((oh, ow), rng.choice(palette), dtype=np.int8)
        if oh > 1 and ow > 1 and rng.random() < 0.3:
            box[-int(rng.integers(2)), -int(rng.integers(2))] = 0  # a corner off: an L-ish shape
        g[at[0] : at[0] + oh, at[1] : at[1] + ow] = box
    return g


def gen_frames(rng: np.random.Generator, h: int, w: int, palette: tuple[int, ...]) -> np.ndarray:
    """1-3 hollow rectangles (3x3 to 6x6) never touching, and sometimes a few single cells."""
    g, taken = np.zeros((h, w), dtype=np.int8), np.zeros((h, w), dtype=bool)
    for _ in range(int(rng.integers(1, 4))):
        fh, fw = int(rng.integers(3, min(6, h) + 1)), int(rng.integers(3, min(6, w) + 1))
        if (at := _place(rng, taken, fh, fw)) is None:
            continue
        r, c = at
        g[r : r + fh, c : c + fw] = rng.choice(palette)
        g[r + 1 : r + fh - 1, c + 1 : c + fw - 1] = 0
    if rng.random() < 0.5:
        free = np.flatnonzero(~taken)
        dots = rng.choice(free, size=min(len(free), int(rng.integers(1, 3))), replace=False)
        g.flat[dots] = rng.choice(palette, size=len(dots))
    return g


def gen_symmetric(rng: np.random.Generator, h: int, w: int, palette: tuple[int, ...], axis: str) -> np.ndarray:
    """A dense grid symmetric across ``axis`` ("lr", "ud" or "both") with a rectangle erased."""
    g = gen_dense(rng, h, w, palette)
    for a in ("lr", "ud") if axis == "both" else (axis,):
        half = (g.shape[1] if a == "lr" else g.shape[0]) // 2
        if a == "lr":
            g[:, g.shape[1] - half :] = g[:, :half][:, ::-1]
        else:
            g[g.shape[0] - half :] = g[:half][::-1]
    eh, ew = int(rng.integers(1, max(1, h // 2) + 1)), int(rng.integers(1, max(1, w // 2) + 1))
    r, c = int(rng.integers(0, h - eh + 1)), int(rng.integers(0, w - ew + 1))
    g[r : r + eh, c : c + ew] = 0
    return g


GENERATORS: dict[str, Callable[..., np.ndarray]] = {
    "dense": gen_dense,
    "sparse": gen_sparse,
    "objects": gen_objects,
    "frames": gen_frames,
    "sym_lr": partial(gen_symmetric, axis="lr"),
    "sym_ud": partial(gen_symmetric, axis="ud"),
    "sym_both": partial(gen_symmetric, axis="both"),
}


def grid_share(grid: np.ndarray) -> float:
    """A stable number in [0, 1) from a grid's shape and cells (the split bucket of an input)."""
    digest = hashlib.blake2b(bytes(grid.shape) + grid.astype(np.int8).tobytes(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64
