"""Sudoku: unique generated puzzles (checked by an independent brute force), augmentations, the CSV loader."""

import csv
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest

from hybrid_reason.errors import HybridReasonError
from hybrid_reason.tasks import PromptBudget, SudokuTask, build_task
from hybrid_reason.tasks.sudoku_gen import BOXES, SudokuSolver, generate_puzzle

# A classic puzzle and its solution (Wikipedia's Sudoku example).
CLASSIC = "53..7....6..195....98....6.8...6...34..8.3..17...2...6.6....28....419..5....8..79"
CLASSIC_SOLUTION = "534678912672195348198342567859761423426853791713924856961537284287419635345286179"


def brute_force_count(cells: str, size: int, limit: int = 3) -> int:
    """Count completions by plain backtracking over cells in order (no candidate sets, no heuristics)."""
    br, bc = BOXES[size]
    grid = [int(c) if c != "." else 0 for c in cells]

    def ok(i: int, d: int) -> bool:
        r, c = divmod(i, size)
        for k in range(size):
            if grid[r * size + k] == d or grid[k * size + c] == d:
                return False
        r0, c0 = r - r % br, c - c % bc
        return all(grid[(r0 + a) * size + c0 + b] != d for a in range(br) for b in range(bc))

    def count(i: int) -> int:
        while i < len(grid) and grid[i]:
            i += 1
        if i == len(grid):
            return 1
        total = 0
        for d in range(1, size + 1):
            if ok(i, d):
                grid[i] = d
                total += count(i + 1)
                grid[i] = 0
                if total >= limit:
                    break
        return total

    return count(0)


def is_valid_solution(answer: str, size: int) -> bool:
    br, bc = BOXES[size]
    g = np.array([int(c) for c in answer]).reshape(size, size)
    full = set(range(1, size + 1))
    boxes = [g[r : r + br, c : c + bc].reshape(-1) for r in range(0, size, br) for c in range(0, size, bc)]
    return all(set(line) == full for line in [*g, *g.T, *boxes])


def consistent(question: str, answer: str) -> bool:
    return all(q in ".0" or q == a for q, a in zip(question, answer))


@pytest.fixture(scope="module")
def small_tasks():
    return {size: SudokuTask(size=size, num_train=12, num_validation=4, num_test=4, seed=5) for size in (4, 6)}


@pytest.mark.parametrize("size", [4, 6])
def test_generated_puzzles_have_exactly_one_solution(small_tasks, size):
    task = small_tasks[size]
    for split in ("train", "test"):
        for row in task.load(split):
            assert brute_force_count(row["question"], size) == 1, row["id"]
            assert is_valid_solution(row["answer"], size) and consistent(row["question"], row["answer"])
            assert sum(c != "." for c in row["question"]) == task.givens


def test_solver_against_known_puzzles():
    solver = SudokuSolver(9)
    grid = [0 if c == "." else int(c) for c in CLASSIC]
    result = solver.solve(grid)
    assert ["".join(map(str, s)) for s in result.solutions] == [CLASSIC_SOLUTION]
    two = list(grid)
    two[:9] = [0] * 9  # empty the first row: more than one completion
    assert solver.count(two) == 2 and brute_force_count("".join(str(v) if v else "." for v in two), 9) >= 2
    clash = list(grid)
    clash[2] = 5  # a second 5 in row 0
    assert solver.count(clash) == 0


def test_hard_9x9_generation():
    solver, rng = SudokuSolver(9), np.random.default_rng(0)
    for _ in range(3):
        puzzle, solution, backtracks = generate_puzzle(solver, rng, givens=26, min_backtracks=20)
        assert sum(v != 0 for v in puzzle) == 26 and backtracks >= 20
        assert solver.difficulty(puzzle) == backtracks and solver.count(puzzle) == 1
        assert is_valid_solution("".join(map(str, solution)), 9)


def test_generated_9x9_dataset_is_deterministic_and_splits_disjoint():
    a = SudokuTask(num_train=6, num_test=6, seed=3)
    b = SudokuTask(num_train=6, num_test=6, seed=3)
    c = SudokuTask(num_train=6, num_test=6, seed=4)
    assert list(a.load("train")["question"]) == list(b.load("train")["question"])
    assert set(a.load("train")["question"]).isdisjoint(c.load("train")["question"])  # seed in the cache key
    assert set(a.load("train")["answer"]).isdisjoint(a.load("test")["answer"])
    for row in a.load("test"):
        assert is_valid_solution(row["answer"], 9) and consistent(row["question"], row["answer"])


@pytest.mark.parametrize("size", [4, 6])
def test_augmentations_keep_validity_and_round_trip(small_tasks, size):
    task = small_tasks[size]
    rng = np.random.default_rng(1)
    for row in task.load("train"):
        for _ in range(10):
            aug = task.sample_augmentation(rng, train=True)
            assert not (aug.transpose and BOXES[size][0] != BOXES[size][1])
            ex = task.render(row, aug)
            question = "".join(ex.text[a:b] for a, b in ex.slot_spans)
            answer = "".join(task.vocab[i] for i in ex.labels)
            assert is_valid_solution(answer, size) and consistent(question, answer)
            decoded = task.decode(ex.labels, ex.meta)
            assert decoded == task.target(row) and task.score(decoded, row["answer"])


def test_9x9_augmentations_use_transpose_and_invert():
    task = SudokuTask()
    rng = np.random.default_rng(2)
    grid = np.array([int(c) for c in CLASSIC_SOLUTION]).reshape(9, 9)
    seen_transpose = set()
    for _ in range(20):
        aug = task.sample_augmentation(rng, train=True)
        seen_transpose.add(aug.transpose)
        out = aug.apply(grid)
        assert is_valid_solution("".join(map(str, out.reshape(-1))), 9)
        assert np.array_equal(aug.invert(out), grid)
    assert seen_transpose == {True, False}
    assert task.sample_augmentation(rng, train=False) is None
    assert SudokuTask(augment=False).sample_augmentation(rng, train=True) is None


def test_slots_read_cells_and_labels_are_the_solution():
    task = SudokuTask()
    row = {"id": "sudoku/x/0", "question": CLASSIC, "answer": CLASSIC_SOLUTION}
    ex = task.render(row)
    assert len(ex.slot_spans) == len(ex.labels) == task.num_slots == 81
    assert "".join(ex.text[a:b] for a, b in ex.slot_spans) == CLASSIC.replace(".", "0")
    assert all(b - a == 1 for a, b in ex.slot_spans)
    assert "".join(task.vocab[i] for i in ex.labels) == CLASSIC_SOLUTION
    assert ex.text.splitlines()[1] == "530070000"
    wrong = list(ex.labels)
    wrong[5] = (wrong[5] + 1) % 9
    assert not task.score(task.decode(wrong, ex.meta), CLASSIC_SOLUTION)
    assert task.cell_accuracy(task.decode(wrong, ex.meta), CLASSIC_SOLUTION) == pytest.approx(80 / 81)


def test_answer_format_and_parse():
    task = SudokuTask()
    text = task.answer_format(CLASSIC_SOLUTION)
    assert text.splitlines()[0] == "534678912"
    assert task.parse_answer(f"Let me think.\n{text}\nDone.") == CLASSIC_SOLUTION
    drawn = "\n".join(" ".join(r[:3]) + " | " + " ".join(r[3:6]) + " | " + " ".join(r[6:]) for r in text.splitlines())
    drawn = "\n".join(drawn.splitlines()[:3] + ["------+-------+------"] + drawn.splitlines()[3:])
    assert task.parse_answer("first try:\n" + "123456789\n" * 9 + "final:\n" + drawn) == CLASSIC_SOLUTION
    assert task.parse_answer(f"answer: \n{CLASSIC_SOLUTION}") == CLASSIC_SOLUTION
    assert task.parse_answer("12345678\n" * 9) is None


def write_csv(path, rows):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["source", "question", "answer", "rating"])
        writer.writerows(rows)


def test_csv_loader(tmp_path):
    rows = [("puzzles0", CLASSIC, CLASSIC_SOLUTION, 3)] * 3
    write_csv(tmp_path / "train.csv", rows)
    write_csv(tmp_path / "test.csv", rows[:1])
    task = build_task("sudoku", source=str(tmp_path), limit=2)
    train = task.load("train")
    assert len(train) == 2 and list(train["id"]) == ["sudoku/train/0", "sudoku/train/1"]
    assert train[0]["answer"] == CLASSIC_SOLUTION and train[0]["question"] == CLASSIC and train[0]["rating"] == 3
    ex = task.render(train[0], task.sample_augmentation(np.random.default_rng(0), True))
    assert task.decode(ex.labels, ex.meta) == CLASSIC_SOLUTION
    assert len(task.load("test")) == 1
    with pytest.raises(HybridReasonError, match="no CSV file .*validation.csv for the 'validation' split"):
        task.load("validation")
    one_file = SudokuTask(source=str(tmp_path / "test.csv"))
    assert len(one_file.load("train")) == len(one_file.load("validation")) == 1
    pattern = SudokuTask(source=str(tmp_path / "{split}.csv"))
    assert (len(pattern.load("train")), len(pattern.load("test"))) == (3, 1)


def test_prompt_stats():
    task = SudokuTask(size=4, num_test=3)
    stats = task.prompt_stats("test")
    assert stats["rows"] == 3 and stats["max_tokens"] == len(task.render(task.load("test")[0]).text)
    assert stats["dropped_demonstrations"] == 0


def test_csv_loader_rejects_bad_rows(tmp_path):
    write_csv(tmp_path / "train.csv", [("x", CLASSIC, CLASSIC_SOLUTION, 0), ("x", CLASSIC[:80], CLASSIC_SOLUTION, 0)])
    with pytest.raises(
        HybridReasonError, match=r"train.csv: data row 2 \(line 3\), column 'question': .* has 80 cells"
    ):
        SudokuTask(source=str(tmp_path)).load("train")


FIXTURES = Path(__file__).parent / "fixtures" / "sudoku"
BAD_CSV = [  # fixture, column, the bad value as the message quotes it, what is wrong (all in data row 3, line 4)
    ("fields", None, "['fixture', '1..4.4..2..34..1', '1234341221434321']", "has 3 fields, the header has 4"),
    ("symbol", "question", "'1..4.4..2x.34..1'", "has 'x' at cell 9, expected a digit 1-4 or '.'"),
    ("beyond", "answer", "'1734341221434321'", "has '7' at cell 1, expected a digit 1-4"),
    ("length", "question", "'1..4.4..2..34..'", "has 15 cells, a 4x4 Sudoku has 16"),
    ("inconsistent", "answer", "'2134341221434321'", "has '2' at cell 0 where the question gives '1'"),
    ("rating", "rating", "'hard'", "is not a number"),
]


@pytest.mark.parametrize("name,column,value,problem", BAD_CSV, ids=[b[0] for b in BAD_CSV])
def test_bad_csv_row_names_file_row_column_and_value(name, column, value, problem):
    path = FIXTURES / f"{name}.csv"
    with pytest.raises(HybridReasonError) as err:
        SudokuTask(size=4, source=str(path)).load("test")
    message = str(err.value)
    where = f"{path}: data row 3 (line 4)" + (f", column {column!r}: " if column else " ")
    assert message.startswith(where) and value in message and problem in message, message
    assert "\n" not in message


def test_csv_header_and_good_rows():
    good = SudokuTask(size=4, source=str(FIXTURES / "good.csv")).load("train")
    assert list(good["id"]) == ["sudoku/train/0", "sudoku/train/1"] and list(good["rating"]) == [0, 2]
    with pytest.raises(HybridReasonError, match=r"no_header.csv: no 'question' or 'answer' column; the header is"):
        SudokuTask(size=4, source=str(FIXTURES / "no_header.csv")).load("train")
    with pytest.raises(
        HybridReasonError,
        match=r"good.csv: data row 1 \(line 2\), column 'question': .* has 16 cells, "
        "a 9x9 Sudoku has 81",
    ):
        SudokuTask(size=9, source=str(FIXTURES / "good.csv")).load("train")


def test_budget_is_checked_when_the_split_loads():
    task = SudokuTask(size=4, num_test=2)
    length = len(task.render(task.load("test")[0]).text)
    assert len(task.load("test", PromptBudget(length))) == 2
    with pytest.raises(
        HybridReasonError,
        match=rf"sudoku4/test/0: the prompt has {length} tokens, over the budget of "
        rf"{length - 1}",
    ):
        task.load("test", PromptBudget(length - 1))
    assert task.budget_stats("test", PromptBudget(length)) == {
        "prompts_with_drops": 0,
        "demonstrations_dropped": 0,
        "queries_skipped": 0,
    }


def test_options_are_checked():
    with pytest.raises(ValueError, match="size"):
        SudokuTask(size=5)
    with pytest.raises(ValueError, match="givens"):
        SudokuTask(size=4, givens=17)
    assert SudokuTask(size=6).givens == 14 and SudokuTask(size=6).vocab == list("123456")


def test_hub_rows_are_checked_too(tmp_path):
    (tmp_path / "train.csv").write_text((FIXTURES / "beyond.csv").read_text())
    with pytest.raises(
        HybridReasonError,
        match=rf"{tmp_path}\[train\]: data row 3, column 'answer': '1734341221434321' "
        r"has '7' at cell 1, expected a digit 1-4",
    ):
        SudokuTask(size=4, source=f"hub:{tmp_path}").load("train")
    assert len(SudokuTask(size=4, source=f"hub:{tmp_path}", limit=2).load("train")) == 2
