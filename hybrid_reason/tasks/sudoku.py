"""Sudoku (4x4, 6x6, 9x9): generated puzzles with a unique solution, or sapientinc/sudoku-extreme's CSV.

Row (the CSV form): ``id, question`` (n*n characters, '.' for a blank), ``answer`` (n*n digits),
``size, source, rating`` (generated: the solver's backtracks).

Text: a header line, then the grid as rows of digits with 0 for a blank cell (one token per cell for
tokenizers that split digits), then "Solution:"::

    Sudoku 9x9 (0 = empty cell):
    530070000
    ...
    Solution:

Slots: one per cell, row-major, reading that cell's character. Labels: the solution digit of every
cell (givens included, as TRM); vocabulary "1".."n" (id = digit - 1).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import ClassVar

import numpy as np
from datasets import Features, Value

from ..errors import HybridReasonError
from . import sudoku_gen
from .base import PromptBudget, Rendered, bucket_of, code_version, split_rng
from .csv_split import first_bad
from .grid_puzzle import GridPuzzleTask
from .grid_text import cell_offsets, last_grid
from .sudoku_gen import BOXES, SudokuSolver, generate_puzzle

DEFAULT_GIVENS = {4: 6, 6: 14, 9: 30}
GENERATOR_VERSION = code_version(sudoku_gen)  # part of the datasets cache key
SUDOKU_FEATURES = Features(
    {
        "id": Value("string"),
        "question": Value("string"),
        "answer": Value("string"),
        "size": Value("int32"),
        "source": Value("string"),
        "rating": Value("int64"),
    }
)


@dataclass(frozen=True)
class SudokuAugmentation:
    """A validity-preserving shuffle: ``digits[d - 1]`` replaces digit d, then an optional transpose
    (square boxes only), then rows and columns reordered (``rows[i]`` is the source row of row i):
    bands and the rows inside each band, stacks and the columns inside each stack."""

    digits: tuple[int, ...]
    transpose: bool
    rows: tuple[int, ...]
    cols: tuple[int, ...]

    def apply(self, grid: np.ndarray) -> np.ndarray:
        """Transform an [n, n] grid of digits (0 = blank)."""
        out = np.asarray((0, *self.digits))[grid]
        out = out.T if self.transpose else out
        return out[np.ix_(self.rows, self.cols)]

    def invert(self, grid: np.ndarray) -> np.ndarray:
        """Undo ``apply``."""
        out = np.empty_like(grid)
        out[np.ix_(self.rows, self.cols)] = grid
        out = out.T if self.transpose else out
        return np.argsort(np.asarray((0, *self.digits)))[out]


@dataclass
class SudokuTask(GridPuzzleTask):
    """Sudoku as a task family.

    Options:
        size: 4, 6 or 9.  givens: filled cells of a generated puzzle (default per size: 6, 14, 30).
        min_backtracks: generated puzzles need at least this many solver backtracks (hard: e.g. 24 givens
            and 50 backtracks).  num_train / num_validation / num_test: generated split sizes.
        seed: generation seed.  source: "generate", or sapientinc-style CSV: a folder of {split}.csv,
            a path with "{split}" in it, one file for every split, or "hub:sapientinc/sudoku-extreme".
        limit: keep only the first rows of a CSV split.
        augment: digit permutation, transpose, band/row and stack/column shuffles for training.
    """

    name: ClassVar[str] = "sudoku"
    features: ClassVar[Features] = SUDOKU_FEATURES
    generator_version: ClassVar[str] = GENERATOR_VERSION
    size: int = 9
    givens: int | None = None
    min_backtracks: int = 0

    def __post_init__(self) -> None:
        if self.size not in BOXES:
            raise HybridReasonError(f"sudoku: size must be one of {sorted(BOXES)}, got {self.size}")
        if self.givens is None:
            self.givens = DEFAULT_GIVENS[self.size]
        if not 0 < self.givens <= self.size**2:
            raise HybridReasonError(f"sudoku: givens must be in 1..{self.size**2}, got {self.givens}")

    @property
    def vocab(self) -> list[str]:
        """Digits "1".."n"."""
        return [str(d) for d in range(1, self.size + 1)]

    # ---- data -----------------------------------------------------------------------------------
    def generator_options(self) -> dict:
        """This family's options of ``generate_rows``."""
        return {"givens": self.givens, "min_backtracks": self.min_backtracks}

    # ---- augmentation and rendering -------------------------------------------------------------
    def sample_augmentation(self, rng: np.random.Generator, train: bool) -> SudokuAugmentation | None:
        """A random validity-preserving shuffle when training with ``augment`` (None otherwise)."""
        if not (train and self.augment):
            return None
        n, (br, bc) = self.size, BOXES[self.size]
        digits = tuple(int(d) + 1 for d in rng.permutation(n))
        transpose = br == bc and bool(rng.integers(2))
        rows = tuple(int(b * br + r) for b in rng.permutation(n // br) for r in rng.permutation(br))
        cols = tuple(int(s * bc + c) for s in rng.permutation(n // bc) for c in rng.permutation(bc))
        return SudokuAugmentation(digits, transpose, rows, cols)

    def render(
        self, row: dict, augmentation: SudokuAugmentation | None = None, *, budget: PromptBudget | None = None
    ) -> Rendered:
        """The grid as digit rows; one slot per cell; labels = the solution digits."""
        question, answer = self.grid(row["question"]), self.grid(row["answer"])
        if augmentation is not None:
            question, answer = augmentation.apply(question), augmentation.apply(answer)
        head = f"Sudoku {self.size}x{self.size} (0 = empty cell):\n"
        text = head + "\n".join("".join(map(str, r)) for r in question.tolist()) + "\nSolution:\n"
        self._check_fits(text, row["id"], budget)
        starts = cell_offsets(len(head), self.size, self.size).reshape(-1).tolist()
        meta = {"id": row["id"], "augmentation": asdict(augmentation) if augmentation is not None else None}
        return Rendered(text, [(s, s + 1) for s in starts], (answer.reshape(-1) - 1).tolist(), meta)

    def grid(self, cells: str) -> np.ndarray:
        """An [n, n] int grid of a CSV-form string ('.' or '0' blank)."""
        if len(cells) != self.num_slots:
            raise HybridReasonError(f"sudoku: expected {self.num_slots} cells, got {len(cells)}: {cells!r}")
        codes = np.frombuffer(cells.replace(".", "0").encode("ascii"), dtype=np.uint8)
        return (codes.astype(np.int64) - ord("0")).reshape(self.size, self.size)

    # ---- answers --------------------------------------------------------------------------------
    def decode(self, pred_ids: Sequence[int] | np.ndarray, meta: dict) -> str:
        """Predicted digits, augmentation undone, as an n*n digit string."""
        grid = np.asarray(pred_ids, dtype=np.int64).reshape(self.size, self.size) + 1
        if meta.get("augmentation"):
            grid = SudokuAugmentation(**meta["augmentation"]).invert(grid)
        return "".join(map(str, grid.reshape(-1).tolist()))

    def answer_format(self, answer: str) -> str:
        """Rows of digits, as the prompt shows the grid."""
        n = self.size
        return "\n".join(answer[i * n : (i + 1) * n] for i in range(n))

    def parse_answer(self, text: str) -> str | None:
        """The last n x n grid of digits 1..n in ``text`` (separators ignored), as a solution string."""
        rows = last_grid(text, "".join(self.vocab), shape=(self.size, self.size))
        return None if rows is None else "".join(rows)

    def describe(self) -> str:
        """The task and answer format for an LLM."""
        n, (br, bc) = self.size, BOXES[self.size]
        return (
            f"Solve this {n}x{n} Sudoku. The grid is written as {n} rows of {n} digits; 0 marks an empty cell. "
            f"Fill every empty cell with a digit 1-{n} so that each row, each column and each {br}x{bc} box "
            f"contains every digit 1-{n} exactly once. Write the completed grid at the end of your answer "
            f"as {n} rows of {n} digits, one row per line, no spaces."
        )


def generate_rows(size: int, givens: int, min_backtracks: int, count: int, seed: int, split: str, version: str):
    """Yield ``count`` generated rows of ``split``; their solutions hash into that split's bucket."""
    solver, rng = SudokuSolver(size), split_rng(seed, split)
    accept = lambda solution: bucket_of("".join(map(str, solution))) == split  # noqa: E731
    for i in range(count):
        puzzle, solution, backtracks = generate_puzzle(solver, rng, givens, min_backtracks, accept)
        question = "".join(str(v) if v else "." for v in puzzle)
        answer = "".join(map(str, solution))
        yield {
            "id": f"sudoku{size}/{split}/{i}",
            "question": question,
            "answer": answer,
            "size": size,
            "source": f"generated-{version}",
            "rating": backtracks,
        }


def check_csv_row(size: int, question: str, answer: str) -> tuple[str, str] | None:
    """What is wrong with a CSV row of an n x n Sudoku: (column, problem with its value), None if nothing.

    The question has n*n cells of digits 1..n or a blank ('.' or '0'); the answer has n*n digits 1..n
    and agrees with every given of the question."""
    cells, digits = size * size, "123456789"[:size]
    for column, value, allowed, expected in (
        ("question", question, digits + ".0", f"a digit 1-{size} or '.'"),
        ("answer", answer, digits, f"a digit 1-{size}"),
    ):
        if len(value) != cells:
            return column, f"{value!r} has {len(value)} cells, a {size}x{size} Sudoku has {cells}"
        if bad := first_bad(value, allowed):
            return column, f"{value!r} has {bad[1]!r} at cell {bad[0]}, expected {expected}"
    for i, (q, a) in enumerate(zip(question, answer)):
        if q != a and q not in ".0":
            return "answer", f"{answer!r} has {a!r} at cell {i} where the question gives {q!r}"
    return None


SudokuTask.check_row = staticmethod(check_csv_row)
SudokuTask.generate_rows = staticmethod(generate_rows)
