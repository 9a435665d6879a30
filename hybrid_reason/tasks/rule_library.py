"""The library of ``rules``: primitives (``rule_primitives``) with their parameter samplers, their
composition into rules, and the simpler-rule sweep. Pure numpy::

    rule = Rule((Step("flip", ("lr",)), Step("colour_map", ((3, 5),))), style="dense", palette=(3, 4))
    out = rule.apply(grid)

``PRIMITIVES`` lists every primitive with its parameter sampler, the settings the inferability sweep
tries (or a ``fit`` that finds the one setting of a large parameter space), the input styles it makes
sense on and how much it can grow a grid. ``simpler_explanation`` is that sweep: the identity and every
single primitive with every setting, tried against a task's demonstrations and query.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache, partial

import numpy as np

from .rule_primitives import (
    ANY,
    COLOURS,
    DIRECTIONS,
    MAX_OUT,
    SHIFTS,
    Pair,
    Params,
    Predictor,
    Undefined,
    bounding_box,
    colour_map,
    crop_bbox,
    crop_largest,
    draw_border,
    extend_lines,
    fill_enclosed,
    flip,
    gravity,
    keep_colour,
    mirror_complete,
    object_ids,
    outline,
    recolour_by_size,
    recolour_extreme,
    remove_small,
    rotate,
    scale,
    shift,
    size_class,
    tile,
    transpose,
)


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
PRIMITIVES: dict[str, Primitive] = {
    p.name: p
    for p in (
        Primitive("flip", flip, (("lr",), ("ud",))),
        Primitive("rotate", rotate, ((1,), (2,), (3,)), shape=lambda p, s: s if p[0] == 2 else s[::-1]),
        Primitive("transpose", transpose, (("main",), ("anti",)), shape=lambda p, s: s[::-1]),
        Primitive("colour_map", colour_map, sampler=_sample_colour_map, fit=fit_colour_map),
        Primitive(
            "gravity",
            gravity,
            tuple((d,) for d in ("up", "down", "left", "right")),
            styles=_styles("dense", "sparse", "objects"),
        ),
        Primitive("shift", shift, tuple((dr, dc, wrap) for dr, dc in SHIFTS for wrap in (False, True))),
        Primitive("recolour_by_size", recolour_by_size, sampler=_sample_by_size, fit=fit_recolour_by_size, styles=_OBJ),
        Primitive(
            "recolour_extreme",
            recolour_extreme,
            tuple((w, c) for w in ("largest", "smallest") for c in COLOURS),
            paints=True,
            styles=_OBJ,
        ),
        Primitive("extend_lines", extend_lines, tuple((d,) for d in DIRECTIONS), styles=_styles("sparse")),
        Primitive("fill_enclosed", fill_enclosed, tuple((c,) for c in COLOURS), paints=True, styles=_styles("frames")),
        Primitive(
            "bounding_box", bounding_box, tuple((c,) for c in COLOURS), paints=True, styles=_styles("sparse", "objects")
        ),
        Primitive(
            "mirror_complete",
            mirror_complete,
            (("lr",), ("ud",), ("both",)),
            styles=lambda p: frozenset({f"sym_{p[0]}"}),
        ),
        Primitive(
            "crop_bbox", crop_bbox, ((),), styles=_styles("sparse", "objects", "frames"), shape=lambda p, s: None
        ),
        Primitive("crop_largest", crop_largest, ((),), styles=_styles("objects", "frames"), shape=lambda p, s: None),
        Primitive("scale", scale, ((2,), (3,)), growth=lambda p: p[0], shape=lambda p, s: (s[0] * p[0], s[1] * p[0])),
        Primitive(
            "tile",
            tile,
            tuple((r, c) for r in (1, 2, 3) for c in (1, 2, 3) if (r, c) != (1, 1)),
            growth=lambda p: max(p),
            shape=lambda p, s: (s[0] * p[0], s[1] * p[1]),
        ),
        Primitive("keep_colour", keep_colour, (("most",), ("least",)), styles=_styles("dense", "sparse", "objects")),
        Primitive("outline", outline, tuple((c,) for c in range(10)), paints=True, styles=_OBJ),
        Primitive("draw_border", draw_border, tuple((c,) for c in COLOURS), paints=True),
        Primitive("remove_small", remove_small, ((2,), (3,), (4,)), styles=_OBJ),
    )
}


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


def simpler_explanation(
    rule: Rule, demos: Sequence[Pair], queries: Sequence[Pair], rivals: list[Candidate] | None = None
) -> str | None:
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
