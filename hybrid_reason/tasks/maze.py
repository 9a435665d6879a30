"""Maze: find the shortest path from S to G; generated mazes, or sapientinc/maze-30x30-hard-1k's CSV.

Row (the CSV form): ``id, question`` (n*n characters '#', ' ', 'S', 'G'), ``answer`` (the same with
'o' on the shortest path's cells between S and G), ``size, source, rating`` (generated: path length).

Text: a header, then the grid with open cells written '.' and cells separated by one space (so each
cell is its own token: runs like "##" or ".." would merge into one BPE token), then "Solution:"::

    Maze 30x30 (# wall, . open, S start, G goal):
    . . . # . . . . . . . # ...
    ...
    Solution:

Slots: one per cell, row-major, reading that cell's character. Labels: the answer's symbol of every
cell; vocabulary "#", ".", "S", "G", "o" (open is "." in text, " " in the CSV form).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from datasets import Features, Value

from ..errors import HybridReasonError
from . import maze_gen
from .base import PromptBudget, Rendered, bucket_of, code_version, split_rng
from .csv_split import first_bad
from .dihedral import NUM_DIHEDRAL, dihedral, inverse_dihedral
from .grid_puzzle import GridPuzzleTask
from .grid_text import cell_offsets, cells_text, last_grid
from .maze_gen import generate_maze

CSV_SYMBOLS = "# SGo"  # answer vocabulary ids 0..4 in the CSV form
TEXT_SYMBOLS = "#.SGo"  # the same ids as the prompt writes them
SEP = " "
GENERATOR_VERSION = code_version(maze_gen)  # part of the datasets cache key
MAZE_FEATURES = Features(
    {
        "id": Value("string"),
        "question": Value("string"),
        "answer": Value("string"),
        "size": Value("int32"),
        "source": Value("string"),
        "rating": Value("int64"),
    }
)
_TO_ID = np.full(256, -1, dtype=np.int64)
_TO_ID[np.frombuffer(CSV_SYMBOLS.encode(), dtype=np.uint8)] = np.arange(len(CSV_SYMBOLS))


@dataclass(frozen=True)
class MazeAugmentation:
    """One of the 8 dihedral transforms (see ``dihedral.NAMES``)."""

    dihedral: int


@dataclass
class MazeTask(GridPuzzleTask):
    """Maze as a task family.

    Options:
        size: the side n.  min_path_length: generated mazes' S-G distance in steps (default 2 * size).
        loop_fraction: share of inner walls knocked out after carving.  unique_path: keep only mazes
            whose shortest path is unique (so exact match is the right score).
        num_train / num_validation / num_test, seed: generated splits.  source: "generate", or sapientinc-style
            CSV: a folder of {split}.csv, a path with "{split}" in it, one file for every split, or
            "hub:sapientinc/maze-30x30-hard-1k".  limit: first
            rows of a CSV split.  augment: the 8 dihedral transforms for training.
    """

    name: ClassVar[str] = "maze"
    features: ClassVar[Features] = MAZE_FEATURES
    generator_version: ClassVar[str] = GENERATOR_VERSION
    size: int = 30
    min_path_length: int | None = None
    loop_fraction: float = 0.1
    unique_path: bool = True

    def __post_init__(self) -> None:
        if self.size < 2:
            raise HybridReasonError(f"maze: size must be >= 2, got {self.size}")
        if self.min_path_length is None:
            self.min_path_length = 2 * self.size

    @property
    def vocab(self) -> list[str]:
        """Wall, open, start, goal, path."""
        return list(TEXT_SYMBOLS)

    # ---- data -----------------------------------------------------------------------------------
    def generator_options(self) -> dict:
        """This family's options of ``generate_rows``."""
        return {
            "min_path_length": self.min_path_length,
            "loop_fraction": self.loop_fraction,
            "unique_path": self.unique_path,
        }

    # ---- augmentation and rendering -------------------------------------------------------------
    def sample_augmentation(self, rng: np.random.Generator, train: bool) -> MazeAugmentation | None:
        """A random dihedral transform when training with ``augment`` (None otherwise)."""
        return MazeAugmentation(int(rng.integers(NUM_DIHEDRAL))) if train and self.augment else None

    def render(
        self, row: dict, augmentation: MazeAugmentation | None = None, *, budget: PromptBudget | None = None
    ) -> Rendered:
        """The maze as space-separated cells; one slot per cell; labels = the answer's symbols."""
        question, answer = self.ids(row["question"]), self.ids(row["answer"])
        k = 0 if augmentation is None else augmentation.dihedral
        question, answer = dihedral(question, k), dihedral(answer, k)
        head = f"Maze {self.size}x{self.size} (# wall, . open, S start, G goal):\n"
        text = head + self._grid_text(question) + "\nSolution:\n"
        self._check_fits(text, row["id"], budget)
        starts = cell_offsets(len(head), self.size, self.size, len(SEP)).reshape(-1).tolist()
        meta = {"id": row["id"], "augmentation": None if augmentation is None else {"dihedral": k}}
        return Rendered(text, [(s, s + 1) for s in starts], answer.reshape(-1).tolist(), meta)

    def ids(self, cells: str) -> np.ndarray:
        """[n, n] vocabulary ids of a CSV-form string."""
        codes = _TO_ID[np.frombuffer(cells.encode("ascii"), dtype=np.uint8)]
        if len(cells) != self.num_slots or (codes < 0).any():
            raise HybridReasonError(f"maze: expected {self.num_slots} cells of {CSV_SYMBOLS!r}, got {cells!r}")
        return codes.reshape(self.size, self.size)

    def _grid_text(self, ids: np.ndarray) -> str:
        """Rows of space-separated text symbols."""
        return cells_text(["".join(TEXT_SYMBOLS[v] for v in row) for row in ids.tolist()], SEP)

    # ---- answers --------------------------------------------------------------------------------
    def decode(self, pred_ids: Sequence[int] | np.ndarray, meta: dict) -> str:
        """Predicted symbols, transform undone, as a CSV-form string."""
        ids = np.asarray(pred_ids, dtype=np.int64).reshape(self.size, self.size)
        aug = meta.get("augmentation")
        if aug:
            ids = dihedral(ids, inverse_dihedral(int(aug["dihedral"])))
        return "".join(CSV_SYMBOLS[v] for v in ids.reshape(-1).tolist())

    def answer_format(self, answer: str) -> str:
        """The solved maze as the prompt writes grids ('.' open, 'o' path, cells space-separated)."""
        return self._grid_text(self.ids(answer))

    def parse_answer(self, text: str) -> str | None:
        """The last n x n grid of "#.SGo" in ``text`` (spaces ignored), in CSV form."""
        rows = last_grid(text, TEXT_SYMBOLS, shape=(self.size, self.size))
        return None if rows is None else "".join(rows).replace(".", " ")

    def describe(self) -> str:
        """The task and answer format for an LLM."""
        n = self.size
        return (
            f"Find the shortest path through this {n}x{n} maze from S to G, moving up, down, left or right "
            "through open cells. The maze is written one row per line, cells separated by spaces: # is a "
            "wall, . an open cell, S the start and G the goal. Write the maze again at the end of your "
            "answer in the same format, with every open cell on the shortest path (S and G excluded) "
            f"replaced by o: {n} rows of {n} space-separated cells."
        )


def generate_rows(
    size: int,
    min_path_length: int,
    loop_fraction: float,
    unique_path: bool,
    count: int,
    seed: int,
    split: str,
    version: str,
):
    """Yield ``count`` generated rows of ``split``; their questions hash into that split's bucket."""
    rng = split_rng(seed, split)
    accept = lambda question: bucket_of(question) == split  # noqa: E731
    for i in range(count):
        question, answer, length = generate_maze(rng, size, min_path_length, loop_fraction, unique_path, accept)
        yield {
            "id": f"maze{size}/{split}/{i}",
            "question": question,
            "answer": answer,
            "size": size,
            "source": f"generated-{version}",
            "rating": length,
        }


def check_csv_row(size: int, question: str, answer: str) -> tuple[str, str] | None:
    """What is wrong with a CSV row of an n x n maze: (column, problem with its value), None if nothing.

    The question has n*n cells of '#', ' ', 'S', 'G' with one S and one G; the answer is the question
    with 'o' on some open cells. Values are quoted with open cells as '.' (a one-line error message
    would merge runs of spaces)."""
    cells, note = size * size, " (open cells shown as '.')"
    for column, value, allowed in (("question", question, CSV_SYMBOLS[:4]), ("answer", answer, CSV_SYMBOLS)):
        if len(value) != cells:
            side = math.isqrt(len(value))
            shape = f"a {side}x{side} maze" if side * side == len(value) else "not a square maze"
            return (
                column,
                f"{_shown(value)} has {len(value)} cells ({shape}), the task has size={size} ({cells} cells)" + note,
            )
        if bad := first_bad(value, allowed):
            expected = ", ".join(map(repr, allowed))
            return column, f"{_shown(value)} has {bad[1]!r} at cell {bad[0]}, expected one of {expected}" + note
    for symbol in "SG":
        if question.count(symbol) != 1:
            return "question", f"{_shown(question)} has {question.count(symbol)} cells {symbol!r}, expected 1" + note
    if answer.replace("o", " ") != question:
        i = next(i for i, (q, a) in enumerate(zip(question, answer)) if a != q and not (a == "o" and q == " "))
        return "answer", f"{_shown(answer)} has {answer[i]!r} at cell {i} where the question has {question[i]!r}" + note
    return None


def _shown(cells: str) -> str:
    """A CSV-form maze quoted for an error message, open cells as '.'."""
    return repr(cells.replace(" ", "."))


MazeTask.check_row = staticmethod(check_csv_row)
MazeTask.generate_rows = staticmethod(generate_rows)
