"""ARC-style grid primitives for the ``rules`` task family: pure numpy.

A grid is an ``int8`` array of colours 0-9 (0 is the background). A primitive maps a grid and its
parameters to a new grid, or raises ``Undefined`` where its result would hang on a convention the
demonstrations cannot show (a tie between the largest objects, an empty grid, ...).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import numpy as np

MAX_OUT = 30  # the ARC canvas: no output may be larger
Params = tuple
Pair = tuple[np.ndarray, np.ndarray]
Predictor = Callable[[np.ndarray], np.ndarray]
STYLES = ("dense", "sparse", "objects", "frames", "sym_lr", "sym_ud", "sym_both")
ANY = frozenset(STYLES)
DIRECTIONS = {
    "up": (-1, 0),
    "down": (1, 0),
    "left": (0, -1),
    "right": (0, 1),
    "up_left": (-1, -1),
    "up_right": (-1, 1),
    "down_left": (1, -1),
    "down_right": (1, 1),
}
SHIFTS = ((-1, 0), (1, 0), (0, -1), (0, 1), (-1, -1), (-1, 1), (1, -1), (1, 1), (-2, 0), (2, 0), (0, -2), (0, 2))
COLOURS = tuple(range(1, 10))


class Undefined(Exception):
    """A primitive's result on this grid rests on a convention the demonstrations cannot show."""


# ---- regions ------------------------------------------------------------------------------------
@lru_cache(maxsize=16384)
def _regions(data: bytes, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """4-connected regions of equal value of an int8 grid's bytes: a label per cell, each label's size."""
    flat, parent = list(data), list(range(h * w))

    def find(a: int) -> int:
        """The root of ``a`` (with path halving)."""
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for i in range(h * w):
        if i % w and flat[i - 1] == flat[i]:
            parent[find(i)] = find(i - 1)
        if i >= w and flat[i - w] == flat[i]:
            parent[find(i)] = find(i - w)
    _, labels, sizes = np.unique([find(i) for i in range(h * w)], return_inverse=True, return_counts=True)
    return labels.reshape(h, w), sizes


def regions(grid: np.ndarray, by_colour: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(labels, sizes) of the 4-connected regions: of equal colour, or (``by_colour=False``) of
    non-background cells whatever their colour (background cells form their own regions)."""
    key = grid if by_colour else (grid != 0)
    key = np.ascontiguousarray(key, dtype=np.int8)
    return _regions(key.tobytes(), *key.shape)


def object_ids(grid: np.ndarray, by_colour: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labels, the labels of objects (non-background regions), their sizes)."""
    labels, sizes = regions(grid, by_colour)
    objs = np.unique(labels[grid != 0])
    return labels, objs, sizes[objs]


def _unique_extreme(sizes: np.ndarray, largest: bool) -> int:
    """Index of the single largest (or smallest) size; Undefined on a tie or with under two objects."""
    if len(sizes) < 2:
        raise Undefined("needs two objects")
    best = sizes.max() if largest else sizes.min()
    if (sizes == best).sum() != 1:
        raise Undefined("tie")
    return int(np.argmax(sizes == best))


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(r0, r1, c0, c1) inclusive bounds of a non-empty mask; Undefined when empty."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if not len(rows):
        raise Undefined("empty")
    return int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])


# ---- primitives ---------------------------------------------------------------------------------
def flip(g: np.ndarray, axis: str) -> np.ndarray:
    """Mirror left-right ("lr") or upside down ("ud")."""
    return g[:, ::-1] if axis == "lr" else g[::-1]


def rotate(g: np.ndarray, k: int) -> np.ndarray:
    """Rotate by k quarter turns counter-clockwise."""
    return np.rot90(g, k)


def transpose(g: np.ndarray, diagonal: str) -> np.ndarray:
    """Reflect about the main diagonal ("main") or the anti-diagonal ("anti")."""
    return g.T if diagonal == "main" else g[::-1, ::-1].T


def colour_map(g: np.ndarray, *pairs: tuple[int, int]) -> np.ndarray:
    """Recolour every cell of colour ``src`` to ``dst`` for each (src, dst); other colours stay."""
    lut = np.arange(10, dtype=np.int8)
    for src, dst in pairs:
        lut[src] = dst
    return lut[g]


def gravity(g: np.ndarray, direction: str) -> np.ndarray:
    """Slide every non-background cell as far as it goes towards one side, keeping their order."""
    axis = 1 if direction in ("left", "right") else 0
    key = (g != 0) if direction in ("right", "down") else (g == 0)
    return np.take_along_axis(g, np.argsort(key, axis=axis, kind="stable"), axis=axis)


def shift(g: np.ndarray, dr: int, dc: int, wrap: bool) -> np.ndarray:
    """Move the grid by (dr, dc) cells: wrapping around (a roll) or filling with background."""
    if wrap:
        return np.roll(g, (dr, dc), axis=(0, 1))
    h, w = g.shape
    out = np.zeros_like(g)
    if abs(dr) >= h or abs(dc) >= w:
        return out
    out[max(dr, 0) : h + min(dr, 0), max(dc, 0) : w + min(dc, 0)] = g[
        max(-dr, 0) : h - max(dr, 0), max(-dc, 0) : w - max(dc, 0)
    ]
    return out


def size_class(sizes: np.ndarray) -> np.ndarray:
    """0 for one cell, 1 for 2-3 cells, 2 for 4 or more (the classes of ``recolour_by_size``)."""
    return np.where(sizes == 1, 0, np.where(sizes <= 3, 1, 2))


def recolour_by_size(g: np.ndarray, small: int, medium: int, large: int) -> np.ndarray:
    """Recolour each one-colour object by its size: 1 cell -> small, 2-3 -> medium, 4+ -> large.
    A colour -1 (unknown, from ``fit``) on an object present is Undefined."""
    labels, sizes = regions(g)
    palette = np.array((small, medium, large), dtype=np.int8)
    new = palette[size_class(sizes)[labels]]
    if (new[g != 0] < 0).any():
        raise Undefined("unseen size class")
    return np.where(g != 0, new, 0).astype(np.int8)


def recolour_extreme(g: np.ndarray, which: str, colour: int) -> np.ndarray:
    """Recolour the single largest (or smallest) one-colour object."""
    labels, objs, sizes = object_ids(g)
    target = objs[_unique_extreme(sizes, which == "largest")]
    return np.where(labels == target, colour, g).astype(np.int8)


def extend_lines(g: np.ndarray, direction: str) -> np.ndarray:
    """Extend every non-background cell into a line in one of 8 directions, over background cells,
    until it meets the border or another non-background cell."""
    dr, dc = DIRECTIONS[direction]
    out = g.copy()
    for _ in range(max(g.shape)):
        nxt = np.where(out == 0, shift(out, dr, dc, False), out)
        if np.array_equal(nxt, out):
            break
        out = nxt
    return out


def fill_enclosed(g: np.ndarray, colour: int) -> np.ndarray:
    """Paint background cells that no 4-connected background path links to the border."""
    labels, _ = regions(g)
    edge = np.zeros(g.shape, dtype=bool)
    edge[[0, -1], :] = edge[:, [0, -1]] = True
    outside = np.unique(labels[edge & (g == 0)])
    enclosed = (g == 0) & ~np.isin(labels, outside)
    return np.where(enclosed, colour, g).astype(np.int8)


def bounding_box(g: np.ndarray, colour: int) -> np.ndarray:
    """Draw a frame one cell outside the bounding box of all non-background cells (clipped to the
    grid, over background cells only)."""
    r0, r1, c0, c1 = _bbox(g != 0)
    frame = np.zeros((g.shape[0] + 2, g.shape[1] + 2), dtype=bool)  # padded by one cell on every side
    frame[r0 : r1 + 3, c0 : c1 + 3] = True
    frame[r0 + 1 : r1 + 2, c0 + 1 : c1 + 2] = False
    return np.where(frame[1:-1, 1:-1] & (g == 0), colour, g).astype(np.int8)


def mirror_complete(g: np.ndarray, axis: str) -> np.ndarray:
    """Complete a mirror symmetry: background cells take the colour of their mirror image across the
    vertical ("lr"), horizontal ("ud") or both ("both": lr, then ud) axes."""
    out = g
    for a in ("lr", "ud") if axis == "both" else (axis,):
        out = np.where(out != 0, out, flip(out, a))
    return out


def crop_bbox(g: np.ndarray) -> np.ndarray:
    """Crop to the bounding box of all non-background cells."""
    r0, r1, c0, c1 = _bbox(g != 0)
    return g[r0 : r1 + 1, c0 : c1 + 1]


def crop_largest(g: np.ndarray) -> np.ndarray:
    """Crop to the bounding box of the single largest object (4-connected, any colours)."""
    labels, objs, sizes = object_ids(g, by_colour=False)
    r0, r1, c0, c1 = _bbox(labels == objs[_unique_extreme(sizes, True)])
    return g[r0 : r1 + 1, c0 : c1 + 1]


def scale(g: np.ndarray, k: int) -> np.ndarray:
    """Scale up: every cell becomes a k x k block."""
    return np.repeat(np.repeat(g, k, axis=0), k, axis=1)


def tile(g: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Repeat the grid ``rows`` times down and ``cols`` times across."""
    return np.tile(g, (rows, cols))


def keep_colour(g: np.ndarray, which: str) -> np.ndarray:
    """Keep only the single most (or least) frequent non-background colour; erase the others."""
    colours, counts = np.unique(g[g != 0], return_counts=True)
    keep = colours[_unique_extreme(counts, which == "most")]
    return np.where(g == keep, g, 0).astype(np.int8)


def outline(g: np.ndarray, colour: int) -> np.ndarray:
    """Keep only the outlines of objects: cells whose 4 neighbours all share their colour (inside the
    grid) become ``colour`` (0: hollow)."""
    p = np.pad(g, 1, constant_values=-1)
    core = p[1:-1, 1:-1]
    inner = (
        (core != 0) & (p[:-2, 1:-1] == core) & (p[2:, 1:-1] == core) & (p[1:-1, :-2] == core) & (p[1:-1, 2:] == core)
    )
    return np.where(inner, colour, g).astype(np.int8)


def draw_border(g: np.ndarray, colour: int) -> np.ndarray:
    """Paint the outermost ring of cells."""
    out = g.copy()
    out[[0, -1], :] = colour
    out[:, [0, -1]] = colour
    return out


def remove_small(g: np.ndarray, min_size: int) -> np.ndarray:
    """Erase one-colour objects of fewer than ``min_size`` cells."""
    labels, sizes = regions(g)
    return np.where((g != 0) & (sizes[labels] < min_size), 0, g).astype(np.int8)
