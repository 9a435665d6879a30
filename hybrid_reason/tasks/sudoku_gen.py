"""A fast Sudoku solver (bitmasks + fewest-candidates-first search) and a unique-puzzle generator.

Grids are flat lists of n*n ints, row-major, 0 for an empty cell. Sizes 4 (2x2 boxes), 6 (2x3 boxes:
2 rows by 3 columns) and 9 (3x3 boxes).

Difficulty is the number of backtracks (dead ends: an empty cell with no candidate left) that this
solver meets while proving the solution unique, with its deterministic cell and digit order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

BOXES = {4: (2, 2), 6: (2, 3), 9: (3, 3)}  # size -> (box rows, box cols)


@dataclass
class SolveResult:
    """Solutions found (at most the limit asked) and the backtracks met on the way."""

    solutions: list[list[int]]
    backtracks: int


class SudokuSolver:
    """Exact cover by depth-first search: always branch on the empty cell with fewest candidates."""

    def __init__(self, size: int):
        if size not in BOXES:
            raise ValueError(f"sudoku size must be one of {sorted(BOXES)}, got {size}")
        self.n = size
        br, bc = BOXES[size]
        cells = range(size * size)
        self.row_of = [i // size for i in cells]
        self.col_of = [i % size for i in cells]
        self.box_of = [(i // size) // br * (size // bc) + (i % size) // bc for i in cells]
        self.full = (1 << size) - 1  # bit d-1 stands for digit d

    def solve(self, cells: Sequence[int], limit: int = 2, rng: np.random.Generator | None = None) -> SolveResult:
        """Up to ``limit`` solutions of the puzzle ``cells``; ``rng`` shuffles the digit order."""
        grid = [int(v) for v in cells]
        units = self._units(grid)
        if units is None:
            return SolveResult([], 0)
        rows, cols, boxes = units
        empties = [i for i, v in enumerate(grid) if v == 0]
        ro, co, bo, full = self.row_of, self.col_of, self.box_of, self.full
        solutions: list[list[int]] = []
        backtracks = 0

        def search(k: int) -> bool:
            """Fill empties[k:]; True once ``limit`` solutions are found."""
            nonlocal backtracks
            if k == len(empties):
                solutions.append(grid.copy())
                return len(solutions) >= limit
            best_j, best_count, best_mask = k, 99, 0
            for j in range(k, len(empties)):
                cell = empties[j]
                mask = full & ~(rows[ro[cell]] | cols[co[cell]] | boxes[bo[cell]])
                count = mask.bit_count()
                if count < best_count:
                    best_j, best_count, best_mask = j, count, mask
                    if count <= 1:
                        break
            if best_count == 0:
                backtracks += 1
                return False
            empties[k], empties[best_j] = empties[best_j], empties[k]
            cell = empties[k]
            r, c, b = ro[cell], co[cell], bo[cell]
            bits = [1 << d for d in range(self.n) if best_mask >> d & 1]
            if rng is not None and len(bits) > 1:
                bits = [bits[i] for i in rng.permutation(len(bits))]
            for bit in bits:
                grid[cell] = bit.bit_length()
                rows[r] |= bit
                cols[c] |= bit
                boxes[b] |= bit
                done = search(k + 1)
                rows[r] ^= bit
                cols[c] ^= bit
                boxes[b] ^= bit
                if done:
                    return True
            grid[cell] = 0
            return False

        search(0)
        return SolveResult(solutions, backtracks)

    def _units(self, grid: list[int]) -> tuple[list[int], list[int], list[int]] | None:
        """Digit masks of every row, column and box; None if the givens already clash."""
        rows, cols, boxes = [0] * self.n, [0] * self.n, [0] * self.n
        for i, v in enumerate(grid):
            if v:
                bit = 1 << (v - 1)
                r, c, b = self.row_of[i], self.col_of[i], self.box_of[i]
                if (rows[r] | cols[c] | boxes[b]) & bit:
                    return None
                rows[r] |= bit
                cols[c] |= bit
                boxes[b] |= bit
        return rows, cols, boxes

    def count(self, cells: Sequence[int], limit: int = 2) -> int:
        """Number of solutions, counted up to ``limit``."""
        return len(self.solve(cells, limit).solutions)

    def difficulty(self, cells: Sequence[int]) -> int:
        """Backtracks met while finding the solution and proving it unique."""
        return self.solve(cells, limit=2).backtracks

    def random_solution(self, rng: np.random.Generator) -> list[int]:
        """A uniformly shuffled search's first full grid."""
        return self.solve([0] * (self.n * self.n), limit=1, rng=rng).solutions[0]

    def dig(self, solution: list[int], rng: np.random.Generator, givens: int) -> list[int] | None:
        """Empty cells of ``solution`` in random order while the puzzle stays unique, down to ``givens``
        filled cells; None if no further cell can go before that."""
        puzzle = list(solution)
        filled = len(puzzle)
        for cell in rng.permutation(len(puzzle)):
            if filled <= givens:
                break
            kept, puzzle[cell] = puzzle[cell], 0
            if self.count(puzzle) == 1:
                filled -= 1
            else:
                puzzle[cell] = kept
        return puzzle if filled <= givens else None


def generate_puzzle(
    solver: SudokuSolver,
    rng: np.random.Generator,
    givens: int,
    min_backtracks: int = 0,
    accept=lambda solution: True,
    max_tries: int = 10_000,
) -> tuple[list[int], list[int], int]:
    """(puzzle, solution, backtracks) of a puzzle with a unique solution, ``givens`` filled cells and at
    least ``min_backtracks``; ``accept(solution)`` filters full grids before digging (split buckets)."""
    for _ in range(max_tries):
        solution = solver.random_solution(rng)
        if not accept(solution):
            continue
        puzzle = solver.dig(solution, rng, givens)
        if puzzle is None:
            continue
        backtracks = solver.difficulty(puzzle)
        if backtracks >= min_backtracks:
            return puzzle, solution, backtracks
    raise RuntimeError(
        f"no {solver.n}x{solver.n} sudoku with {givens} givens and >= {min_backtracks} backtracks in {max_tries} tries"
    )
