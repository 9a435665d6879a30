"""Rendering throughput (puzzles/s) of ARC-AGI-1, 9x9 Sudoku and 30x30 mazes, and generation
throughput of hard 9x9 Sudoku. Run: ``python -m hybrid_reason.tasks.throughput``."""

from __future__ import annotations

import time

import numpy as np
from datasets import Dataset

from .arc import ArcTask
from .base import Task
from .maze import MazeTask
from .sudoku import SudokuTask
from .sudoku_gen import SudokuSolver, generate_puzzle

HARD_GIVENS, HARD_BACKTRACKS = 24, 50


def render_rate(task: Task, ds: Dataset, seconds: float = 3.0) -> float:
    """Rows fetched from ``ds``, augmented (training draw) and rendered per second."""
    rng = np.random.default_rng(0)
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        task.render(ds[done % len(ds)], task.sample_augmentation(rng, train=True))
        done += 1
    return done / (time.perf_counter() - start)


def hard_sudoku_rate(count: int = 30) -> float:
    """Hard 9x9 puzzles (24 givens, >= 50 backtracks, unique) generated per second."""
    solver, rng = SudokuSolver(9), np.random.default_rng(0)
    start = time.perf_counter()
    for _ in range(count):
        generate_puzzle(solver, rng, HARD_GIVENS, HARD_BACKTRACKS)
    return count / (time.perf_counter() - start)


def main() -> None:
    """Print the throughput figures."""
    start = time.perf_counter()
    arc = ArcTask()
    arc_train = arc.load("train")
    print(f"ARC-AGI-1 dataset build ({len(arc_train)} train rows): {time.perf_counter() - start:.2f} s")
    print(f"ARC-AGI-1 render (30x30 canvas, augmented): {render_rate(arc, arc_train):,.0f} puzzles/s")
    sudoku = SudokuTask(size=9, num_train=200)
    print(f"Sudoku 9x9 render (augmented): {render_rate(sudoku, sudoku.load('train')):,.0f} puzzles/s")
    maze = MazeTask(size=30, num_train=200)
    print(f"Maze 30x30 render (augmented): {render_rate(maze, maze.load('train')):,.0f} puzzles/s")
    print(
        f"Sudoku 9x9 hard generation ({HARD_GIVENS} givens, >= {HARD_BACKTRACKS} backtracks): "
        f"{hard_sudoku_rate():,.1f} puzzles/s"
    )


if __name__ == "__main__":
    main()
