"""Grids as text: rows of one-character cells, and finding the last grid in free (LLM) text."""

from __future__ import annotations

import json
import re

import numpy as np

_JSON_GRID = re.compile(r"\[\s*\[[\d\s,\[\]]*\]\s*\]")
_RULE = re.compile(r"^\s*[\-+=|_*][\s\-+=|_*]*$")  # a separator line inside a drawn grid ("------+------")


def digits_text(grid: np.ndarray) -> str:
    """A grid of values 0..9 as rows of digits, one character per cell, rows joined by newlines."""
    h, w = grid.shape
    buf = np.full((h, w + 1), ord("\n"), dtype=np.uint8)
    buf[:, :w] = grid.astype(np.uint8) + ord("0")
    return buf.tobytes()[:-1].decode("ascii")


def cells_text(rows: list[str], sep: str) -> str:
    """Rows of one-character cells, each cell separated by ``sep``, rows joined by newlines."""
    return "\n".join(sep.join(row) for row in rows)


def cell_offsets(start: int, h: int, w: int, sep_len: int = 0) -> np.ndarray:
    """[h, w] character offsets of the cells of a ``cells_text`` grid that begins at ``start``."""
    row_len = w + (w - 1) * sep_len + 1  # cells, separators, newline
    return start + np.arange(h)[:, None] * row_len + np.arange(w)[None, :] * (1 + sep_len)


def _grid_blocks(text: str, alphabet: str, strip: str) -> list[tuple[int, list[str]]]:
    """Runs of consecutive lines made only of alphabet characters (after removing ``strip``),
    each with the character position where it ends."""
    blocks, current, pos = [], [], 0
    for line in text.splitlines(keepends=True):
        cells = "".join(ch for ch in line.strip() if ch not in strip)
        if cells and all(ch in alphabet for ch in cells):
            current.append(cells)
        elif not (current and _RULE.match(line)):
            if current:
                blocks.append((pos, current))
            current = []
        pos += len(line)
    if current:
        blocks.append((pos, current))
    return blocks


def last_grid(text: str, alphabet: str, shape: tuple[int, int] | None = None, strip: str = " ,|[]") -> list[str] | None:
    """The last rectangular grid in ``text`` as a list of row strings, or None.

    A grid is a run of lines whose characters (ignoring those in ``strip``) all belong to ``alphabet``.
    With ``shape`` (rows, cols) the grid must have that shape: its last ``rows`` lines are taken, or a
    single line of rows * cols cells is cut into rows.
    """
    for _, rows in reversed(_grid_blocks(text, alphabet, strip)):
        grid = _fit(rows, shape)
        if grid is not None:
            return grid
    return None


def last_grid_end(text: str, alphabet: str, strip: str = " ,|[]") -> tuple[int, list[str]] | None:
    """Like ``last_grid`` without a shape, also returning where the grid ends in ``text``."""
    for end, rows in reversed(_grid_blocks(text, alphabet, strip)):
        if _fit(rows, None) is not None:
            return end, rows
    return None


def _fit(rows: list[str], shape: tuple[int, int] | None) -> list[str] | None:
    """``rows`` cut to ``shape`` (or checked rectangular), None if they do not fit."""
    if shape is None:
        return rows if len({len(r) for r in rows}) == 1 else None
    h, w = shape
    if len(rows[-1]) == h * w:
        return [rows[-1][i * w : (i + 1) * w] for i in range(h)]
    tail = rows[-h:]
    return tail if len(tail) == h and all(len(r) == w for r in tail) else None


def last_json_grid(text: str) -> tuple[int, list[list[int]]] | None:
    """The last ``[[...], ...]`` list of integer lists in ``text`` with where it ends, or None."""
    for match in reversed(list(_JSON_GRID.finditer(text))):
        try:
            grid = json.loads(match.group(0))
        except json.JSONDecodeError:
            continue
        if grid and all(isinstance(r, list) and r and all(type(v) is int for v in r) for r in grid):
            if len({len(r) for r in grid}) == 1:
                return match.end(), grid
    return None
