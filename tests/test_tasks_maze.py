"""Maze: labelled paths are shortest paths (checked by an independent BFS), dihedral round trips, CSV."""

import csv
import os
from collections import deque
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest

from hybrid_reason.errors import HybridReasonError
from hybrid_reason.tasks import MazeAugmentation, MazeTask, build_task
from hybrid_reason.tasks.dihedral import NUM_DIHEDRAL, dihedral


def grid_of(cells: str, n: int) -> list[str]:
    return [cells[i * n : (i + 1) * n] for i in range(n)]


def find(grid: list[str], ch: str) -> tuple[int, int]:
    (cell,) = [(r, c) for r, row in enumerate(grid) for c, v in enumerate(row) if v == ch]
    return cell


def bfs_distances(grid: list[str], start: tuple[int, int]) -> dict:
    dist, queue = {start: 0}, deque([start])
    while queue:
        r, c = queue.popleft()
        for nr, nc in ((r + 1, c), (r - 1, c), (r, c + 1), (r, c - 1)):
            if 0 <= nr < len(grid) and 0 <= nc < len(grid) and grid[nr][nc] != "#" and (nr, nc) not in dist:
                dist[(nr, nc)] = dist[(r, c)] + 1
                queue.append((nr, nc))
    return dist


def count_shortest_paths(grid: list[str], start: tuple[int, int], goal: tuple[int, int]) -> int:
    """Number of distinct shortest S-G paths: sum over BFS layers of the predecessors' counts."""
    dist = bfs_distances(grid, start)
    ways = {start: 1}
    for cell in sorted(dist, key=dist.get)[1:]:
        r, c = cell
        ways[cell] = sum(
            ways.get(p, 0) for p in ((r + 1, c), (r - 1, c), (r, c + 1), (r, c - 1)) if dist.get(p) == dist[cell] - 1
        )
    return ways[goal]


def check_shortest_path(question: str, answer: str, n: int) -> int:
    """Assert the answer marks one shortest S-G path; return its length in steps."""
    q, a = grid_of(question, n), grid_of(answer, n)
    start, goal = find(q, "S"), find(q, "G")
    assert answer.replace("o", " ") == question
    path = {(r, c) for r in range(n) for c in range(n) if a[r][c] == "o"}
    dist = bfs_distances(q, start)
    assert goal in dist and len(path) == dist[goal] - 1
    # walk from S through 'o' cells to G, one neighbour at a time
    cell, seen = start, {start}
    for _ in range(dist[goal]):
        nexts = [
            p
            for p in ((cell[0] + 1, cell[1]), (cell[0] - 1, cell[1]), (cell[0], cell[1] + 1), (cell[0], cell[1] - 1))
            if p not in seen and (p in path or p == goal)
        ]
        assert len(nexts) >= 1
        cell = goal if goal in nexts else nexts[0]
        seen.add(cell)
    assert cell == goal and seen - {start, goal} == path
    assert count_shortest_paths(q, start, goal) == 1  # unique_path: exact match is the right score
    return dist[goal]


@pytest.fixture(scope="module")
def maze30():
    return MazeTask(size=30, num_train=8, num_validation=2, num_test=4, seed=1)


def test_generated_paths_are_shortest(maze30):
    for split in ("train", "test"):
        for row in maze30.load(split):
            length = check_shortest_path(row["question"], row["answer"], 30)
            assert length >= maze30.min_path_length == 60 and row["rating"] == length


def test_small_mazes_unique_and_splits_disjoint():
    task = MazeTask(size=9, min_path_length=10, num_train=30, num_test=10, seed=2)
    train, test = task.load("train"), task.load("test")
    assert set(train["question"]).isdisjoint(test["question"])
    for row in train:
        assert check_shortest_path(row["question"], row["answer"], 9) >= 10
        assert set(row["question"]) <= set("# SG") and set(row["answer"]) <= set("# SGo")


def test_render_slots_labels_and_every_transform(maze30):
    row = maze30.load("train")[0]
    q = np.array(list(row["question"])).reshape(30, 30)
    for k in range(NUM_DIHEDRAL):
        ex = maze30.render(row, MazeAugmentation(k))
        assert len(ex.slot_spans) == len(ex.labels) == maze30.num_slots == 900
        read = "".join(ex.text[a:b] for a, b in ex.slot_spans)
        assert read == "".join(dihedral(q, k).reshape(-1)).replace(" ", ".")
        assert maze30.decode(ex.labels, ex.meta) == row["answer"]
        assert ex.text.splitlines()[1].count(" ") == 29  # cells separated by single spaces
    assert maze30.sample_augmentation(np.random.default_rng(0), train=False) is None


def test_wrong_path_scores_false(maze30):
    row = maze30.load("test")[0]
    ex = maze30.render(row)
    labels = np.array(ex.labels)
    labels[labels == maze30.vocab.index("o")] = maze30.vocab.index(".")
    answer = maze30.decode(labels, ex.meta)
    assert not maze30.score(answer, row["answer"]) and maze30.score(maze30.decode(ex.labels, ex.meta), row["answer"])
    assert 0.5 < maze30.cell_accuracy(answer, row["answer"]) < 1


def test_answer_format_and_parse(maze30):
    row = maze30.load("test")[1]
    text = maze30.answer_format(row["answer"])
    assert maze30.parse_answer(f"Here is the path:\n{text}\nDone.") == row["answer"]
    assert maze30.parse_answer("no maze") is None


def test_csv_loader(tmp_path, maze30):
    rows = [("hard", r["question"], r["answer"], r["rating"]) for r in maze30.load("train")]
    with open(tmp_path / "test.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["source", "question", "answer", "rating"])
        writer.writerows(rows)
    task = build_task("maze", source=str(tmp_path))
    test = task.load("test")
    assert list(test["question"]) == [r[1] for r in rows] and test[0]["id"] == "maze/test/0"
    ex = task.render(test[0], task.sample_augmentation(np.random.default_rng(0), True))
    assert task.decode(ex.labels, ex.meta) == rows[0][2]
    with pytest.raises(
        HybridReasonError,
        match=r"test.csv: data row 1 \(line 2\), column 'question': '.*' has 900 cells "
        r"\(a 30x30 maze\), the task has size=20",
    ):
        MazeTask(size=20, source=str(tmp_path)).load("test")


FIXTURES = Path(__file__).parent / "fixtures" / "maze"
BAD_CSV = [  # fixture, column, the bad value as the message quotes it (open cells as '.'), what is wrong (data row 3)
    ("fields", None, "'extra'", "has 5 fields, the header has 4"),
    ("symbol", "question", "'S.###.###x..###G'", "has 'x' at cell 9, expected one of '#', ' ', 'S', 'G'"),
    ("answer_symbol", "answer", "'So###o###*oo###G'", "has '*' at cell 9, expected one of '#', ' ', 'S', 'G', 'o'"),
    ("length", "question", "'S.##.#..G'", "has 9 cells (a 3x3 maze), the task has size=4 (16 cells)"),
    ("inconsistent", "answer", "'So#o#o###ooo###G'", "has 'o' at cell 3 where the question has '#'"),
    ("no_goal", "question", "'S.###.###...####'", "has 0 cells 'G', expected 1"),
]


@pytest.mark.parametrize("name,column,value,problem", BAD_CSV, ids=[b[0] for b in BAD_CSV])
def test_bad_csv_row_names_file_row_column_and_value(name, column, value, problem):
    path = FIXTURES / f"{name}.csv"
    with pytest.raises(HybridReasonError) as err:
        MazeTask(size=4, source=str(path)).load("train")
    message = str(err.value)
    where = f"{path}: data row 3 (line 4)" + (f", column {column!r}: " if column else " ")
    assert message.startswith(where) and value in message and problem in message, message
