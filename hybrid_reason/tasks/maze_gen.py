"""Maze generation and shortest paths on n x n grids.

A maze is carved by a randomised depth-first search on the lattice of even coordinates (walls between
lattice cells are opened as the search walks), then a fraction of the remaining inner walls is
knocked out to make loops, so the shortest path is not simply the only path. Strings are row-major,
in the CSV form of sapientinc/maze-30x30-hard-1k: '#' wall, ' ' open, 'S' start, 'G' goal, and in
the answer 'o' on the shortest path's cells between S and G.
"""

from __future__ import annotations

from collections import deque

import numpy as np

WALL, OPEN, START, GOAL, PATH = "#", " ", "S", "G", "o"
_STEPS = ((-1, 0), (1, 0), (0, -1), (0, 1))


def carve(rng: np.random.Generator, n: int) -> np.ndarray:
    """[n, n] bool grid, True = open: a perfect maze over the even-coordinate lattice."""
    is_open = np.zeros((n, n), dtype=bool)
    m = (n + 1) // 2  # lattice cells per side, at coordinates 0, 2, ..., 2(m-1)
    start = (2 * int(rng.integers(m)), 2 * int(rng.integers(m)))
    is_open[start] = True
    stack = [start]
    while stack:
        r, c = stack[-1]
        nexts = [(r + 2 * dr, c + 2 * dc) for dr, dc in _STEPS if 0 <= r + 2 * dr < n and 0 <= c + 2 * dc < n]
        nexts = [p for p in nexts if not is_open[p]]
        if not nexts:
            stack.pop()
            continue
        nr, nc = nexts[int(rng.integers(len(nexts)))]
        is_open[(r + nr) // 2, (c + nc) // 2] = is_open[nr, nc] = True
        stack.append((nr, nc))
    return is_open


def add_loops(rng: np.random.Generator, is_open: np.ndarray, fraction: float) -> np.ndarray:
    """Open each wall that separates two open cells in a line with probability ``fraction``."""
    out = is_open.copy()
    n = len(out)
    horizontal = np.zeros_like(out)  # walls between (r, c-1) and (r, c+1)
    horizontal[:, 1:-1] = is_open[:, :-2] & is_open[:, 2:]
    vertical = np.zeros_like(out)
    vertical[1:-1, :] = is_open[:-2, :] & is_open[2:, :]
    candidates = (horizontal | vertical) & ~is_open
    out |= candidates & (rng.random((n, n)) < fraction)
    return out


def bfs(is_open: np.ndarray, start: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(distance from ``start`` per cell, -1 if unreachable; number of shortest paths, capped at 2)."""
    n = len(is_open)
    dist = np.full((n, n), -1, dtype=np.int64)
    paths = np.zeros((n, n), dtype=np.int64)
    dist[start], paths[start] = 0, 1
    queue = deque([start])
    while queue:
        r, c = queue.popleft()
        d, p = dist[r, c], paths[r, c]
        for dr, dc in _STEPS:
            nr, nc = r + dr, c + dc
            if 0 <= nr < n and 0 <= nc < n and is_open[nr, nc]:
                if dist[nr, nc] < 0:
                    dist[nr, nc], paths[nr, nc] = d + 1, p
                    queue.append((nr, nc))
                elif dist[nr, nc] == d + 1:
                    paths[nr, nc] = min(2, paths[nr, nc] + p)
    return dist, paths


def path_to(dist: np.ndarray, goal: tuple[int, int]) -> list[tuple[int, int]]:
    """A shortest path from the BFS source to ``goal`` (both included), stepping back by distance."""
    n = len(dist)
    path = [goal]
    r, c = goal
    while dist[r, c] > 0:
        for dr, dc in _STEPS:
            nr, nc = r + dr, c + dc
            if 0 <= nr < n and 0 <= nc < n and dist[nr, nc] == dist[r, c] - 1:
                r, c = nr, nc
                break
        path.append((r, c))
    return path[::-1]


def maze_strings(is_open: np.ndarray, path: list[tuple[int, int]]) -> tuple[str, str]:
    """(question, answer) strings of a maze whose path runs from S (first) to G (last)."""
    grid = np.where(is_open, OPEN, WALL).astype("<U1")
    grid[path[0]], grid[path[-1]] = START, GOAL
    question = "".join(grid.reshape(-1))
    for cell in path[1:-1]:
        grid[cell] = PATH
    return question, "".join(grid.reshape(-1))


def generate_maze(
    rng: np.random.Generator,
    n: int,
    min_path_length: int,
    loop_fraction: float = 0.1,
    unique_path: bool = True,
    accept=lambda question: True,
    max_tries: int = 10_000,
) -> tuple[str, str, int]:
    """(question, answer, shortest-path length in steps) of a maze whose S-G distance is at least
    ``min_path_length`` (and whose shortest path is unique, if asked); ``accept(question)`` filters."""
    for _ in range(max_tries):
        is_open = add_loops(rng, carve(rng, n), loop_fraction)
        cells = np.argwhere(is_open)
        start = tuple(int(v) for v in cells[rng.integers(len(cells))])
        dist, paths = bfs(is_open, start)
        ok = (dist >= max(1, min_path_length)) & ((paths == 1) if unique_path else True)
        goals = np.argwhere(ok)
        if len(goals) == 0:
            continue
        goal = tuple(int(v) for v in goals[rng.integers(len(goals))])
        question, answer = maze_strings(is_open, path_to(dist, goal))
        if accept(question):
            return question, answer, int(dist[goal])
    raise RuntimeError(f"no {n}x{n} maze with a shortest path of >= {min_path_length} steps in {max_tries} tries")
