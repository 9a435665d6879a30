"""ARC-style grid primitives, their composition into rules, input generators and the simpler-rule sweep.

Pure numpy. A grid is an ``int8`` array of colours 0-9 (0 is the background). A primitive maps a grid
and its parameters to a new grid, or raises ``Undefined`` where its result would hang on a convention
the demonstrations cannot show (a tie between the largest objects, an empty grid, ...)::

    rule = Rule((Step("flip", ("lr",)), Step("colour_map", ((3, 5),))), style="dense", palette=(3, 4))
    out = rule.apply(grid)

``PRIMITIVES`` lists every primitive with its parameter sampler, the settings the inferability sweep
tries (or a ``fit`` that finds the one setting of a large parameter space), the input styles it makes
sense on and how much it can grow a grid. ``simpler_explanation`` is that sweep: the identity and every
single primitive with every setting, tried against a task's demonstrations and query.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache, partial

import numpy as np

MAX_OUT = 30  # the ARC canvas: no output may be larger
Params = tuple
Pair = tuple[np.ndarray, np.ndarray]
Predictor = Callable[[np.ndarray], np.ndarray]
STYLES = ("dense", "sparse", "objects", "frames", "sym_lr", "sym_ud", "sym_both")
ANY = frozenset(STYLES)
DIRECTIONS = {"up": (-1, 0), "down": (1, 0), "left": (0, -1), "right": (0, 1),
              "up_left": (-1, -1), "up_right": (-1, 1), "down_left": (1, -1), "down_right": (1, 1)}
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
    out[max(dr, 0) : h + min(dr, 0), max(dc, 0) : w + min(dc, 0)] = g[max(-dr, 0) : h - max(dr, 0), max(-dc, 0) : w - max(dc, 0)]
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
    inner = (core != 0) & (p[:-2, 1:-1] == core) & (p[2:, 1:-1] == core) & (p[1:-1, :-2] == core) & (p[1:-1, 2:] == core)
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


# ---- fits (large parameter spaces) --------------------------------------------------------------
def _lut_predictor(lut: np.ndarray) -> Predictor:
    """A cellwise colour function; a colour it has never seen is Undefined."""

    def predict(g: np.ndarray) -> np.ndarray:
        """Apply the learned colour function."""
        out = lut[g]
        if (out < 0).any():
            raise Undefined("unseen colour")
        return out

    return predict


def fit_colour_map(pairs: Sequence[Pair]) -> Predictor | None:
    """The cellwise colour function that explains every pair, or None: covers every ``colour_map``."""
    lut = np.full(10, -1, dtype=np.int8)
    for i, o in pairs:
        if i.shape != o.shape:
            return None
        codes = np.unique(i.astype(np.int16) * 10 + o)
        src, dst = codes // 10, codes % 10
        if len(np.unique(src)) != len(src) or ((lut[src] >= 0) & (lut[src] != dst)).any():
            return None
        lut[src] = dst
    return _lut_predictor(lut)


def fit_recolour_by_size(pairs: Sequence[Pair]) -> Predictor | None:
    """The ``recolour_by_size`` palette that explains every pair (unknown classes -1), or None."""
    palette = np.full(3, -1, dtype=np.int8)
    for i, o in pairs:
        if i.shape != o.shape or (o[i == 0] != 0).any():
            return None
        labels, objs, sizes = object_ids(i)
        for obj, cls in zip(objs, size_class(sizes)):
            seen = np.unique(o[labels == obj])
            if len(seen) != 1 or seen[0] == 0 or palette[cls] not in (-1, seen[0]):
                return None
            palette[cls] = seen[0]
    return partial(recolour_by_size, small=int(palette[0]), medium=int(palette[1]), large=int(palette[2]))


# ---- the library --------------------------------------------------------------------------------
def _pick(options: Sequence) -> Callable[[np.random.Generator, tuple], Params]:
    """A sampler drawing one of ``options`` (each a parameter tuple)."""
    return lambda rng, palette: tuple(options[int(rng.integers(len(options)))])


def _sample_colour_map(rng: np.random.Generator, palette: tuple[int, ...]) -> Params:
    """1-3 (src, dst) pairs: sources from the palette, destinations any other colour (0 included)."""
    n = int(rng.integers(1, min(3, len(palette)) + 1))
    srcs = sorted(int(c) for c in rng.choice(palette, size=n, replace=False))
    return tuple((s, int(rng.choice([c for c in range(10) if c != s]))) for s in srcs)


def _sample_by_size(rng: np.random.Generator, palette: tuple[int, ...]) -> Params:
    """Three colours for the size classes, at least two of them different."""
    while True:
        colours = tuple(int(c) for c in rng.choice(COLOURS, size=3))
        if len(set(colours)) > 1:
            return colours


@dataclass(frozen=True)
class Primitive:
    """A grid transformation with its parameter space.

    settings: every parameter tuple the inferability sweep tries (and the sampler draws from);
    fit: instead of settings, find the predictor that explains given pairs (large parameter spaces);
    paints: the last parameter is a paint colour, found from the pairs instead of enumerated;
    styles: input styles the primitive is meaningful on (given its parameters);
    growth: the most it multiplies a side (scale, tile);
    shape: the output shape from the parameters and the input shape (None: it depends on the cells).
    """

    name: str
    apply: Callable[..., np.ndarray]
    settings: tuple[Params, ...] = ()
    sampler: Callable[[np.random.Generator, tuple], Params] | None = None
    fit: Callable[[Sequence[Pair]], Predictor | None] | None = None
    paints: bool = False
    styles: Callable[[Params], frozenset[str]] = field(default=lambda p: ANY)
    growth: Callable[[Params], int] = field(default=lambda p: 1)
    shape: Callable[[Params, tuple], tuple | None] = field(default=lambda p, s: s)

    def sample(self, rng: np.random.Generator, palette: tuple[int, ...]) -> Params:
        """Parameters drawn from ``rng`` (colours that matter drawn from the rule's palette)."""
        return (self.sampler or _pick(self.settings))(rng, palette)

    def bind(self, params: Params) -> Predictor:
        """The primitive with its parameters fixed, as a function of the grid."""
        return lambda grid: self.apply(grid, *params)

    def candidates(self, demos: Sequence[Pair] | None) -> list[Candidate]:
        """A candidate per setting; with ``demos``, the settings found from them instead (``fit``, and
        the paint colour of ``paints`` primitives). Without, only what needs no demonstrations."""
        if self.fit is not None:
            found = self.fit(demos) if demos is not None else None
            return [] if found is None else [Candidate(f"{self.name}(fitted)", 1, found, None)]
        if self.paints:
            bases = dict.fromkeys(p[:-1] for p in self.settings) if demos is not None else {}
            found = [(b, fit_paint(self, b, demos)) for b in bases]
            return [Candidate(describe_step(self.name, (*b, "c")), 1, f, partial(self.shape, b)) for b, f in found if f]
        if demos is not None:
            return []
        return [Candidate(describe_step(self.name, p), 1, self.bind(p), partial(self.shape, p)) for p in self.settings]


@dataclass(frozen=True)
class Candidate:
    """A rival explanation: its label, its depth (0 identity, 1 one primitive), its predictor, and its
    output shape as a function of the input shape (None: unknown before predicting)."""

    label: str
    depth: int
    predict: Predictor
    out_shape: Callable[[tuple], tuple | None] | None

    def explains_all(self, pairs: Sequence[Pair]) -> bool:
        """Whether the predictor maps every pair's input to exactly its output."""
        if self.out_shape is not None and any(self.out_shape(i.shape) not in (None, o.shape) for i, o in pairs):
            return False
        return all(explains(self.predict, pair) for pair in pairs)


PAINT = 10  # a sentinel colour: the cells a ``paints`` primitive paints


def fit_paint(prim: Primitive, base: Params, demos: Sequence[Pair]) -> Predictor | None:
    """The paint colour that makes ``prim`` with parameters ``base`` explain every pair, as a predictor
    (equivalent to trying every colour, since which cells get painted does not depend on it); None if
    none does. Pairs where nothing is painted leave the colour open: then painting is Undefined."""
    allowed, colour = {p[-1] for p in prim.settings if p[:-1] == base}, None
    for i, o in demos:
        try:
            r = prim.apply(i, *base, PAINT)
        except Undefined:
            return None
        if r.shape != o.shape:
            return None
        painted = r == PAINT
        if not np.array_equal(r[~painted], o[~painted]):
            return None
        values = np.unique(o[painted])
        if len(values) > 1 or (len(values) == 1 and (int(values[0]) not in allowed or colour not in (None, values[0]))):
            return None
        colour = int(values[0]) if len(values) else colour
    if colour is not None:
        return prim.bind((*base, colour))

    def unpainted(grid: np.ndarray) -> np.ndarray:
        """The primitive where it paints nothing; Undefined where it would (its colour is unknown)."""
        out = prim.apply(grid, *base, PAINT)
        if (out == PAINT).any():
            raise Undefined("unknown paint colour")
        return out

    return unpainted


def _styles(*names: str) -> Callable[[Params], frozenset[str]]:
    """A style function that ignores the parameters."""
    return lambda p: frozenset(names)


_OBJ = _styles("objects")
PRIMITIVES: dict[str, Primitive] = {p.name: p for p in (
    Primitive("flip", flip, (("lr",), ("ud",))),
    Primitive("rotate", rotate, ((1,), (2,), (3,)), shape=lambda p, s: s if p[0] == 2 else s[::-1]),
    Primitive("transpose", transpose, (("main",), ("anti",)), shape=lambda p, s: s[::-1]),
    Primitive("colour_map", colour_map, sampler=_sample_colour_map, fit=fit_colour_map),
    Primitive("gravity", gravity, tuple((d,) for d in ("up", "down", "left", "right")),
              styles=_styles("dense", "sparse", "objects")),
    Primitive("shift", shift, tuple((dr, dc, wrap) for dr, dc in SHIFTS for wrap in (False, True))),
    Primitive("recolour_by_size", recolour_by_size, sampler=_sample_by_size, fit=fit_recolour_by_size, styles=_OBJ),
    Primitive("recolour_extreme", recolour_extreme, tuple((w, c) for w in ("largest", "smallest") for c in COLOURS),
              paints=True, styles=_OBJ),
    Primitive("extend_lines", extend_lines, tuple((d,) for d in DIRECTIONS), styles=_styles("sparse")),
    Primitive("fill_enclosed", fill_enclosed, tuple((c,) for c in COLOURS), paints=True, styles=_styles("frames")),
    Primitive("bounding_box", bounding_box, tuple((c,) for c in COLOURS), paints=True,
              styles=_styles("sparse", "objects")),
    Primitive("mirror_complete", mirror_complete, (("lr",), ("ud",), ("both",)),
              styles=lambda p: frozenset({f"sym_{p[0]}"})),
    Primitive("crop_bbox", crop_bbox, ((),), styles=_styles("sparse", "objects", "frames"), shape=lambda p, s: None),
    Primitive("crop_largest", crop_largest, ((),), styles=_styles("objects", "frames"), shape=lambda p, s: None),
    Primitive("scale", scale, ((2,), (3,)), growth=lambda p: p[0], shape=lambda p, s: (s[0] * p[0], s[1] * p[0])),
    Primitive("tile", tile, tuple((r, c) for r in (1, 2, 3) for c in (1, 2, 3) if (r, c) != (1, 1)),
              growth=lambda p: max(p), shape=lambda p, s: (s[0] * p[0], s[1] * p[1])),
    Primitive("keep_colour", keep_colour, (("most",), ("least",)), styles=_styles("dense", "sparse", "objects")),
    Primitive("outline", outline, tuple((c,) for c in range(10)), paints=True, styles=_OBJ),
    Primitive("draw_border", draw_border, tuple((c,) for c in COLOURS), paints=True),
    Primitive("remove_small", remove_small, ((2,), (3,), (4,)), styles=_OBJ),
)}


def describe_step(name: str, params: Params) -> str:
    """``name(a,b)``; a (src, dst) pair is written ``src>dst``."""
    args = ",".join(f"{p[0]}>{p[1]}" if isinstance(p, tuple) else str(p) for p in params)
    return f"{name}({args})"


@dataclass(frozen=True)
class Step:
    """One primitive with fixed parameters."""

    name: str
    params: Params

    def apply(self, grid: np.ndarray) -> np.ndarray:
        """The primitive applied to ``grid``."""
        return PRIMITIVES[self.name].apply(grid, *self.params)


@dataclass(frozen=True)
class Rule:
    """A composition of steps (applied in order), the input style its inputs are drawn in, and the
    colours those inputs use."""

    steps: tuple[Step, ...]
    style: str
    palette: tuple[int, ...]

    @property
    def names(self) -> tuple[str, ...]:
        """The primitive names, in order."""
        return tuple(s.name for s in self.steps)

    @property
    def combination(self) -> tuple[str, ...]:
        """The primitive names, sorted: what must not be shared by training and evaluation rules."""
        return tuple(sorted(self.names))

    def apply(self, grid: np.ndarray) -> np.ndarray:
        """The rule's output; Undefined if a step is, or if the output is empty or over 30x30."""
        for step in self.steps:
            grid = step.apply(grid)
        if grid.size == 0 or max(grid.shape) > MAX_OUT:
            raise Undefined("output size")
        return np.ascontiguousarray(grid, dtype=np.int8)

    def growth(self) -> int:
        """The most the rule multiplies an input side by."""
        return int(np.prod([PRIMITIVES[s.name].growth(s.params) for s in self.steps]))

    def describe(self) -> str:
        """e.g. ``flip(lr) | colour_map(3>5) [dense; 3,4]``."""
        steps = " | ".join(describe_step(s.name, s.params) for s in self.steps)
        return f"{steps} [{self.style}; {','.join(map(str, self.palette))}]"


def allowed_styles(steps: Sequence[Step]) -> tuple[str, ...]:
    """The input styles every step makes sense on (sorted; empty when none)."""
    styles = ANY
    for s in steps:
        styles = styles & PRIMITIVES[s.name].styles(s.params)
    return tuple(sorted(styles))


# ---- inputs -------------------------------------------------------------------------------------
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
    "dense": gen_dense, "sparse": gen_sparse, "objects": gen_objects, "frames": gen_frames,
    "sym_lr": partial(gen_symmetric, axis="lr"), "sym_ud": partial(gen_symmetric, axis="ud"),
    "sym_both": partial(gen_symmetric, axis="both"),
}


def grid_share(grid: np.ndarray) -> float:
    """A stable number in [0, 1) from a grid's shape and cells (the split bucket of an input)."""
    digest = hashlib.blake2b(bytes(grid.shape) + grid.astype(np.int8).tobytes(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


# ---- the simpler-rule sweep ---------------------------------------------------------------------
def explains(predict: Predictor, pair: Pair) -> bool:
    """Whether ``predict`` maps the pair's input to exactly its output."""
    try:
        out = predict(pair[0])
    except Undefined:
        return False
    return out.shape == pair[1].shape and np.array_equal(out, pair[1])


@lru_cache(maxsize=1)
def _fixed_candidates() -> tuple[Candidate, ...]:
    """The identity and every setting that needs no demonstrations to enumerate (built once)."""
    listed = [c for prim in PRIMITIVES.values() for c in prim.candidates(None)]
    return (Candidate("identity", 0, lambda g: g, lambda s: s), *listed)


def candidates(demos: Sequence[Pair]) -> list[Candidate]:
    """The identity (depth 0) and every single primitive with every setting (depth 1); settings of
    large parameter spaces (``fit``, ``paints``) are found from ``demos`` rather than listed."""
    return [*_fixed_candidates(), *(c for prim in PRIMITIVES.values() for c in prim.candidates(demos))]


def explaining(demos: Sequence[Pair]) -> list[Candidate]:
    """The candidates that explain every demonstration."""
    return [c for c in candidates(demos) if c.explains_all(demos)]


def simpler_explanation(rule: Rule, demos: Sequence[Pair], queries: Sequence[Pair],
                        rivals: list[Candidate] | None = None) -> str | None:
    """The label of a rule no more complex than ``rule`` that the demonstrations cannot tell from it,
    or None when the task is inferable.

    A candidate (the identity, or any single primitive with any setting) that explains every
    demonstration disqualifies the task when it is simpler than ``rule``, or, for a one-primitive rule,
    when it answers some query differently. For a three-step rule, each two-step sub-rule (one step
    dropped) is tried too. ``rivals``: ``explaining(demos)`` when already computed.
    """
    depth = len(rule.steps)
    for rival in explaining(demos) if rivals is None else rivals:
        if rival.depth < depth or not rival.explains_all(queries):
            return rival.label
    for drop in range(depth if depth > 2 else 0):
        sub = Rule(rule.steps[:drop] + rule.steps[drop + 1 :], rule.style, rule.palette)
        if all(explains(sub.apply, d) for d in demos):
            return sub.describe()
    return None
