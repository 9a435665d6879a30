"""Sort: slot layout, labels, padding slots, splits, parsing an LLM's list."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest

from hybrid_reason.errors import HybridReasonError
from hybrid_reason.tasks import IGNORE, PromptBudget, SortAugmentation, SortTask, build_task


def test_render_slots_and_labels():
    task = SortTask()
    ex = task.render({"id": "sort/x/0", "values": [3, 9, 1, 4, 1, 7]})
    assert ex.text == "Sort: 3 9 1 4 1 7\nSorted:"
    assert len(ex.slot_spans) == len(ex.labels) == task.num_slots == 8
    assert [ex.text[a:b] for a, b in ex.slot_spans[:6]] == ["3", "9", "1", "4", "1", "7"]
    assert ex.slot_spans[6:] == [None, None] and ex.labels[6:] == [IGNORE, IGNORE]
    assert [task.vocab[i] for i in ex.labels[:6]] == ["1", "1", "3", "4", "7", "9"]
    assert ex.meta == {"id": "sort/x/0", "length": 6, "augmentation": None}


def test_multi_digit_and_negative_values():
    task = build_task("sort", length=4, min_length=2, min_value=-5, max_value=120)
    ex = task.render({"id": "sort/x/1", "values": [120, -5, 33]})
    assert [ex.text[a:b] for a, b in ex.slot_spans[:3]] == ["120", "-5", "33"]
    assert task.decode(ex.labels, ex.meta) == [-5, 33, 120]
    with pytest.raises(ValueError, match="sort/x/2"):
        task.render({"id": "sort/x/2", "values": [121]})


def test_dataset_round_trip_with_shuffles():
    task = SortTask(num_train=200, num_validation=20, num_test=50)
    rng = np.random.default_rng(0)
    lengths = set()
    for row in task.load("train"):
        aug = task.sample_augmentation(rng, train=True)
        ex = task.render(row, aug)
        lengths.add(ex.meta["length"])
        assert sorted(int(ex.text[a:b]) for a, b in filter(None, ex.slot_spans)) == sorted(row["values"])
        assert task.score(task.decode(ex.labels, ex.meta), task.target(row))
    assert lengths == {6, 7, 8}
    shuffled = {task.render(row, SortAugmentation(s)).text for s in range(20)}
    assert len(shuffled) > 1  # the shuffle changes the text, not the answer
    assert task.sample_augmentation(rng, train=False) is None


def test_splits_are_disjoint_and_seeded():
    a, b = SortTask(num_train=300, seed=1), SortTask(num_train=300, seed=1)
    assert list(a.load("train")["values"]) == list(b.load("train")["values"])
    assert list(SortTask(num_train=300, seed=2).load("train")["values"]) != list(a.load("train")["values"])
    train = {tuple(sorted(v)) for v in a.load("train")["values"]}
    test = {tuple(sorted(v)) for v in a.load("test")["values"]}
    assert len(a.load("test")) == 1000 and train.isdisjoint(test)


def test_wrong_prediction_and_cell_accuracy():
    task = SortTask()
    ex = task.render({"id": "sort/x/3", "values": [5, 2, 8, 2, 0, 1]})
    pred = list(ex.labels)
    pred[0] = 9
    answer = task.decode(pred, ex.meta)
    assert answer == [9, 1, 2, 2, 5, 8] and not task.score(answer, [0, 1, 2, 2, 5, 8])
    assert task.cell_accuracy(answer, [0, 1, 2, 2, 5, 8]) == pytest.approx(5 / 6)


def test_answer_format_and_parse():
    task = SortTask()
    assert task.answer_format([1, 1, 3]) == "1 1 3"
    assert task.parse_answer("First 3 1 1, so:\nSorted: 1 1 3\n") == [1, 1, 3]
    assert task.parse_answer("1 2\nthe answer is\n[0, 4, 4, 9]") == [0, 4, 4, 9]
    assert task.parse_answer("I sorted 3 numbers.") is None


def test_budget_and_options():
    task = SortTask()
    row = {"id": "sort/x/4", "values": [1, 2, 3, 4, 5, 6]}
    with pytest.raises(HybridReasonError, match="sort/x/4: the prompt has 25 tokens, over the budget of 5"):
        task.render(row, budget=PromptBudget(5))
    assert task.render(row, budget=PromptBudget(25)).text == "Sort: 1 2 3 4 5 6\nSorted:"
    with pytest.raises(HybridReasonError, match="over the budget of 20"):  # the task's own cap, under a larger budget
        SortTask(max_tokens=20).render(row, budget=PromptBudget(100))
    with pytest.raises(ValueError, match="min_length"):
        SortTask(length=4, min_length=6)
