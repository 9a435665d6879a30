"""The 8 symmetries of the square (the dihedral group D4) on 2-D grids, and their inverses."""

from __future__ import annotations

import numpy as np

NUM_DIHEDRAL = 8
NAMES = ("identity", "rot90", "rot180", "rot270", "transpose", "flip_lr", "flip_ud", "anti_transpose")
_INVERSE = (0, 3, 2, 1, 4, 5, 6, 7)  # rot90 and rot270 undo each other; the others are involutions


def dihedral(grid: np.ndarray, k: int) -> np.ndarray:
    """Apply transform ``k`` (0..7, see ``NAMES``) to the first two axes of ``grid``."""
    if k == 0:
        return grid
    if k < 4:
        return np.rot90(grid, k)
    if k == 4:
        return grid.swapaxes(0, 1)
    if k == 5:
        return grid[:, ::-1]
    if k == 6:
        return grid[::-1]
    if k == 7:
        return np.rot90(grid, 2).swapaxes(0, 1)
    raise ValueError(f"dihedral transform must be in 0..7, got {k}")


def inverse_dihedral(k: int) -> int:
    """The transform that undoes transform ``k``."""
    return _INVERSE[k]
