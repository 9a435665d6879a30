"""The registry and the shared contract: every family's examples are rectangles of valid labels."""

import json
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest

from hybrid_reason.errors import HybridReasonError
from hybrid_reason.tasks import IGNORE, TASKS, Rendered, Task, build_task
from hybrid_reason.tasks.dihedral import NUM_DIHEDRAL, dihedral, inverse_dihedral

SMALL = {
    "arc1": {},
    "arc2": {"split_mode": "strict"},
    "sudoku": {"size": 4, "num_train": 5, "num_validation": 2, "num_test": 2},
    "maze": {"size": 11, "num_train": 5, "num_validation": 2, "num_test": 2},
    "sort": {"num_train": 20, "num_validation": 5, "num_test": 5},
    "rules": {
        "num_train_rules": 4,
        "num_eval_rules": 2,
        "train_examples_per_rule": 1,
        "test_examples_per_rule": 1,
        "max_side": 5,
    },
}


def test_names():
    assert set(TASKS) == {"arc1", "arc2", "sudoku", "maze", "sort", "rules"}
    assert all(issubclass(cls, Task) and cls.name == name for name, cls in TASKS.items())


@pytest.mark.parametrize("name", sorted(SMALL))
def test_examples_follow_the_contract(name):
    task = build_task(name, **SMALL[name])
    rng = np.random.default_rng(0)
    ds = task.load("test")
    for i in range(min(5, len(ds))):
        row = ds[i]
        for train in (True, False):
            ex = task.render(row, task.sample_augmentation(rng, train))
            assert isinstance(ex, Rendered) and ex.meta["id"] == row["id"]
            assert len(ex.slot_spans) == len(ex.labels) == task.num_slots
            assert all(lab == IGNORE or 0 <= lab < task.vocab_size for lab in ex.labels)
            assert all(s is None or 0 <= s[0] < s[1] <= len(ex.text) for s in ex.slot_spans)
            json.dumps(ex.meta, default=list)  # meta is plain data
            assert task.score(
                task.decode(np.where(np.array(ex.labels) == IGNORE, 0, ex.labels), ex.meta), task.target(row)
            )
            assert task.parse_answer(task.answer_format(task.target(row))) == task.target(row)
    assert task.describe() and len(task.load("validation")) > 0


def test_build_task_errors_name_the_culprit():
    with pytest.raises(HybridReasonError, match="unknown task 'chess'"):
        build_task("chess")
    with pytest.raises(HybridReasonError, match="unknown option 'lenght' for task 'sort'"):
        build_task("sort", lenght=8)
    with pytest.raises(HybridReasonError, match="option 'length' of task 'sort' must be int"):
        build_task("sort", length="8")
    with pytest.raises(HybridReasonError, match="option 'translate' of task 'arc1' must be bool"):
        build_task("arc1", translate="yes")
    with pytest.raises(HybridReasonError, match="split_mode.*one of 'trm', 'strict'"):
        build_task("arc1", split_mode="loose")
    with pytest.raises(HybridReasonError, match="unknown split 'dev'"):
        build_task("sort").load("dev")
    for name, options in (("sudoku", {"size": 5}), ("maze", {"size": 1}), ("sort", {"min_value": 3, "max_value": 2})):
        with pytest.raises(HybridReasonError, match=f"{name}: .*size|{name}: min_value"):
            build_task(name, **options)
    task = build_task("sort", length=8, max_value=9, max_tokens=None)
    assert (task.num_slots, task.vocab_size) == (8, 10)
    assert build_task("maze", loop_fraction=0).loop_fraction == 0


def test_dihedral_group():
    grid = np.arange(12).reshape(3, 4)
    images = [dihedral(grid, k) for k in range(NUM_DIHEDRAL)]
    assert len({(g.shape, g.tobytes()) for g in map(np.ascontiguousarray, images)}) == 8
    for k in range(NUM_DIHEDRAL):
        assert np.array_equal(dihedral(dihedral(grid, k), inverse_dihedral(k)), grid)


CHILD = """
import json, numpy as np
from hybrid_reason.tasks import build_task
from hybrid_reason.tasks.sudoku import generate_rows as sudoku_rows
from hybrid_reason.tasks.maze import generate_rows as maze_rows
out = {
    "sort": [list(v) for v in build_task("sort", num_train=50).load("train")["values"]],
    "sudoku": [r["question"] for r in sudoku_rows(9, 30, 0, 3, 11, "test", 1)],
    "maze": [r["question"] for r in maze_rows(15, 20, 0.1, True, 3, 11, "test", 1)],
    "arc": [repr(build_task("arc1").sample_augmentation(np.random.default_rng(5), True)) for _ in range(3)],
}
print(json.dumps(out))
"""


def test_same_seed_same_puzzles_in_another_process():
    env = dict(os.environ, PYTHONHASHSEED="123")
    child = subprocess.run(
        [sys.executable, "-c", CHILD],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    theirs = json.loads(child.stdout.strip().splitlines()[-1])
    exec(CHILD.replace("print(json.dumps(out))", ""), namespace := {})
    assert theirs == json.loads(json.dumps(namespace["out"]))
