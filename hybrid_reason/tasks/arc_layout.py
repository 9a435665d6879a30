"""Where ARC's text and slots put each cell: the prompt, the answer canvas, the demonstration slots.

Slots, in order:

* the canvas: ``side x side`` (30x30, ARC's largest grid, unless the task's ``canvas_side`` is smaller),
  row-major. Slot (r + i, c + j) reads the character of test-input cell (i, j),
  where (r, c) is the canvas offset; other canvas slots read nothing. Labels: the output colours, an
  EOS frame on the row below and the column right of the output (no corner, as TRM), IGNORE elsewhere.
* with ``demo_slots``, then ``max_demos`` pairs of ``side x side`` blocks: block 2k holds demonstration
  k's input grid, block 2k + 1 its output grid, top-left aligned and row-major. Slot (i, j) of a block
  reads the character of that grid's cell (i, j); cells outside the grid, and the blocks of a
  demonstration the task does not have or that was dropped to fit the prompt budget, read nothing.
  Their labels are IGNORE: the core sees the demonstrations, it is not asked to predict them.

Because the model adds a learned embedding per slot index, a demonstration slot's input is its cell's
feature plus a learned embedding of (demonstration, input or output, cell position).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import HybridReasonError
from .arc_data import MAX_SIDE
from .base import IGNORE
from .grid_text import cell_offsets, digits_text

PAD, EOS, COLOUR0 = 0, 1, 2
CANVAS = MAX_SIDE
Span = tuple[int, int] | None
Pair = tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True)
class Prompt:
    """An ARC prompt and where its grids begin: ``query_start`` is the test input's first cell,
    ``demo_starts[k]`` the first cells of the k-th demonstration shown (input, output)."""

    text: str
    query_start: int
    demo_starts: tuple[tuple[int, int], ...]


def drop_order(demos: list[Pair]) -> list[int]:
    """Demonstration indices in the order ``render`` drops them: the largest (most cells) first."""
    return sorted(range(len(demos)), key=lambda k: -(demos[k][0].size + demos[k][1].size))


def build_prompt(demos: list[Pair], test_in: np.ndarray) -> Prompt:
    """The prompt text ("Example k / Input / Output" blocks, then "Test / Input") and its grid offsets."""
    parts, starts, pos = [], [], 0
    for k, (i, o) in enumerate(demos):
        head, mid = f"Example {k + 1}\nInput:\n", "\nOutput:\n"
        grid_in, grid_out = digits_text(i), digits_text(o)
        starts.append((pos + len(head), pos + len(head) + len(grid_in) + len(mid)))
        part = f"{head}{grid_in}{mid}{grid_out}\n\n"
        parts.append(part)
        pos += len(part)
    head = "".join(parts) + "Test\nInput:\n"
    return Prompt(head + digits_text(test_in) + "\nOutput:\n", len(head), tuple(starts))


def canvas_spans(start: int, shape: tuple[int, int], offset: tuple[int, int], side: int = CANVAS) -> list[Span]:
    """Canvas slot (of a ``side x side`` canvas) -> span of the test-input cell it reads (None outside the input)."""
    h, w = shape
    r, c = offset
    spans: list[Span] = [None] * (side * side)
    for i in range(h):
        base = start + i * (w + 1)
        row0 = (r + i) * side + c
        spans[row0 : row0 + w] = [(base + j, base + j + 1) for j in range(w)]
    return spans


def canvas_labels(test_out: np.ndarray | None, offset: tuple[int, int], side: int = CANVAS) -> list[int]:
    """Canvas labels (``side x side``): output colours, the EOS frame right of and below the output,
    IGNORE elsewhere."""
    canvas = np.full((side, side), IGNORE, dtype=np.int64)
    if test_out is not None:
        (r, c), (h, w) = offset, test_out.shape
        canvas[r : r + h, c : c + w] = test_out.astype(np.int64) + COLOUR0
        if r + h < side:
            canvas[r + h, c : c + w] = EOS
        if c + w < side:
            canvas[r : r + h, c + w] = EOS
    return canvas.reshape(-1).tolist()


def demo_slot_count(max_demos: int, side: int) -> int:
    """Demonstration slots: an input and an output block of side x side per demonstration."""
    return 2 * max_demos * side * side


def demo_spans(
    demos: list[Pair], shown: list[int], starts: tuple[tuple[int, int], ...], max_demos: int, side: int
) -> list[Span]:
    """Demonstration slots -> span of the cell each reads. ``shown[n]`` is the index (among all the
    row's demonstrations) of the n-th demonstration in the prompt, ``starts[n]`` where its grids begin;
    demonstration k fills blocks 2k and 2k + 1, so a dropped one leaves its blocks empty."""
    spans: list[Span] = [None] * demo_slot_count(max_demos, side)
    for k, grid_starts in zip(shown, starts):
        for g, (grid, start) in enumerate(zip(demos[k], grid_starts)):
            base = (2 * k + g) * side * side
            offsets = cell_offsets(start, *grid.shape).tolist()
            for i, row in enumerate(offsets):
                spans[base + i * side : base + i * side + len(row)] = [(o, o + 1) for o in row]
    return spans


def demo_fit_problem(demos: list, max_demos: int, side: int) -> str | None:
    """Why a row's demonstrations (pairs of grids as nested lists or arrays) do not fit the
    demonstration slots, or None when they do."""
    if len(demos) > max_demos:
        return (
            f"{len(demos)} demonstrations, more than max_demos {max_demos} (raise max_demos, or leave the task out "
            "with task_ids)"
        )
    for k, pair in enumerate(demos):
        for which, grid in zip(("input", "output"), pair):
            h, w = len(grid), len(grid[0])
            if max(h, w) > side:
                return (
                    f"demonstration {k + 1} {which} is {h}x{w}, larger than demo_side {side} (raise demo_side, up "
                    f"to {MAX_SIDE}, or leave out tasks with larger grids: arc1/arc2's max_grid_side)"
                )
    return None


def check_demo_fit(task_id: str, row_id: str, demos: list, max_demos: int, side: int, more: int = 0) -> None:
    """A one-line HybridReasonError naming the task when its demonstrations do not fit the slots."""
    problem = demo_fit_problem(demos, max_demos, side)
    if problem is not None:
        others = f"; {more} more queries do not fit either" if more else ""
        raise HybridReasonError(f"ARC task {task_id!r} ({row_id}): demo_slots: {problem}{others}")


def check_demo_rows(
    ids: list[str], task_ids: list[str], demonstrations: list[list[dict]], max_demos: int, side: int
) -> None:
    """``check_demo_fit`` over a split's rows (columns of ids, task ids and ``{input, output}`` lists):
    the error names the first row that does not fit and counts the others."""
    bad = [
        k
        for k, demos in enumerate(demonstrations)
        if demo_fit_problem([(d["input"], d["output"]) for d in demos], max_demos, side) is not None
    ]
    if bad:
        first = [(d["input"], d["output"]) for d in demonstrations[bad[0]]]
        check_demo_fit(task_ids[bad[0]], ids[bad[0]], first, max_demos, side, more=len(bad) - 1)


def crop_canvas(ids: np.ndarray) -> np.ndarray:
    """The largest rectangle anchored at the top-left corner whose ids are all colours, as colours.

    Row i may extend as far as the shortest run of colours from column 0 in rows 0..i; the crop is
    the (rows, width) of largest area, the first one on ties.
    """
    is_colour = (ids >= COLOUR0) & (ids < COLOUR0 + 10)
    runs = np.where(is_colour.all(1), ids.shape[1], np.argmin(is_colour, axis=1))
    widths = np.minimum.accumulate(runs)
    areas = widths * np.arange(1, len(widths) + 1)
    rows = int(np.argmax(areas)) + 1
    if areas[rows - 1] == 0:
        return np.zeros((0, 0), dtype=np.int64)
    return ids[:rows, : widths[rows - 1]] - COLOUR0
