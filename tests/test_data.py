"""The data stream: deterministic, seeded, sharded by rank and worker, restartable at any batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from hybrid_reason.training.data import (
    EvalSet,
    StreamLoader,
    TaskDataModule,
    TrainStream,
    collate_eval,
    default_num_workers,
    task_from_spec,
)

TASK = {
    "name": "sort",
    "length": 5,
    "min_length": 3,
    "max_value": 9,
    "num_train": 50,
    "num_validation": 10,
    "num_test": 10,
}


@pytest.fixture(scope="module")
def task_and_rows():
    task = task_from_spec(TASK)
    return task, task.load("train")


def stream(task_and_rows, **kwargs) -> TrainStream:
    task, rows = task_and_rows
    return TrainStream(task, rows, **({"batch_size": 4, "seed": 0} | kwargs))


def test_batches_are_rendered_examples(task_and_rows):
    batch = stream(task_and_rows).batch(0)
    assert len(batch.texts) == len(batch.ids) == 4 and batch.labels.shape == (4, 5)
    assert batch.index.tolist() == [0, 1, 2, 3]
    for text, spans, labels in zip(batch.texts, batch.slot_spans, batch.labels.tolist()):
        assert text.startswith("Sort: ")
        values = [int(text[s:e]) for s, e in (span for span in spans if span is not None)]
        assert [v for v in labels if v != -100] == sorted(values)  # labels: the sorted values (min_value 0)
    assert batch.puzzle_ids.tolist() == [0, 0, 0, 0]  # no puzzle IDs unless the datamodule is told to serve them


def test_stream_is_deterministic_and_seeded(task_and_rows):
    a, b = stream(task_and_rows).batch(5), stream(task_and_rows).batch(5)
    assert a.texts == b.texts and torch.equal(a.labels, b.labels)
    assert stream(task_and_rows, seed=1).batch(5).texts != a.texts


def test_each_epoch_is_a_permutation_of_the_rows(task_and_rows):
    s = stream(task_and_rows)
    n = len(s.rows)
    for epoch in (0, 1):
        assert sorted(s.row_index(epoch * n + j) for j in range(n)) == list(range(n))
    assert [s.row_index(j) for j in range(n)] != [s.row_index(n + j) for j in range(n)]


def test_augmentation_is_drawn_per_example(task_and_rows):
    task, rows = task_and_rows
    s = stream(task_and_rows)
    n = len(rows)
    same_row = [i for i in range(n, 2 * n) if s.row_index(i) == s.row_index(0)][0]
    first, again = s.example(0)[0], s.example(same_row)[0]
    assert first.meta["id"] == again.meta["id"] and sorted(first.labels) == sorted(again.labels)
    assert first.meta["augmentation"] != again.meta["augmentation"]  # a new shuffle of the same list


def test_an_augmentation_pool_gives_each_row_the_same_few_augmentations_whatever_the_seed(task_and_rows):
    task, rows = task_and_rows
    n, k = len(rows), 3
    texts: dict[int, set] = {}
    for seed in (0, 1):
        s = stream(task_and_rows, seed=seed, augmentations=k)
        for i in range(12 * n):
            texts.setdefault(s.row_index(i), set()).add(s.example(i)[0].text)
    assert all(len(t) <= k for t in texts.values()) and any(len(t) == k for t in texts.values())
    fresh = stream(task_and_rows)
    row0 = [fresh.example(i)[0].text for i in range(12 * n) if fresh.row_index(i) == 0]
    assert len(set(row0)) > k  # without a pool, every example draws anew
    with pytest.raises(ValueError, match="data.augmentations"):
        TaskDataModule(TASK, augmentations=0)


def test_ranks_read_disjoint_examples(task_and_rows):
    ranks = [stream(task_and_rows, rank=r, world_size=2) for r in (0, 1)]
    seen = [set(sum((s.batch_indices(b) for b in range(10)), [])) for s in ranks]
    assert seen[0].isdisjoint(seen[1]) and len(seen[0] | seen[1]) == 80
    assert ranks[1].batch(0).index.tolist() == [4, 5, 6, 7]


def test_workers_hand_out_the_same_order_as_one_process(task_and_rows):
    def first_batches(num_workers: int, start: int) -> list[list[str]]:
        loader = StreamLoader(stream(task_and_rows), position=lambda: start, num_workers=num_workers)
        it = iter(loader)
        return [next(it).texts for _ in range(6)]

    assert first_batches(2, 0) == first_batches(0, 0)
    assert first_batches(2, 3)[:3] == first_batches(0, 0)[3:]  # restarting at batch 3 = skipping 3 batches


def test_eval_set_is_unaugmented_and_fixed(task_and_rows):
    task = task_and_rows[0]
    rows = task.load("validation")
    loader = DataLoader(EvalSet(task, rows), batch_size=4, collate_fn=collate_eval)
    batch = next(iter(loader))
    assert batch.ids == [rows[i]["id"] for i in range(4)] and batch.index.tolist() == [0, 1, 2, 3]
    assert batch.texts[0] == "Sort: " + " ".join(map(str, rows[0]["values"])) + "\nSorted:"


def test_datamodule_loaders(task_and_rows):
    dm = TaskDataModule(TASK, batch_size=3, eval_batch_size=4, val_limit=6)
    assert next(iter(dm.train_dataloader())).labels.shape == (3, 5)
    val = list(dm.val_dataloader())
    assert [len(b.ids) for b in val] == [4, 2]
    assert len(list(dm.test_dataloader())) == 3


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"length": 4}, "'name'"),
        ({"name": "sorting"}, "unknown task 'sorting'"),
        ({"name": "sort", "lenght": 4}, "unknown option 'lenght'"),
        ({"name": "sort", "length": "four"}, "option 'length'"),
    ],
)
def test_bad_task_sections_name_the_key(spec, message):
    with pytest.raises(ValueError, match="data.task") as err:
        task_from_spec(spec)
    assert message in str(err.value)


def test_batch_size_must_be_positive():
    with pytest.raises(ValueError, match="data.batch_size"):
        TaskDataModule(TASK, batch_size=0)


def test_puzzle_vocabulary_orders_keys():
    from datasets import Dataset

    from hybrid_reason.tasks.keys import puzzle_vocabulary

    rows = Dataset.from_dict({"id": ["b/0", "a/1", "b/1"], "task_id": ["b", "a", "b"]})
    assert puzzle_vocabulary(rows) == {"a": 1, "b": 2}
    assert np.array_equal(sorted(puzzle_vocabulary(Dataset.from_dict({"id": ["x", "y"]})).values()), [1, 2])


def test_datamodule_fits_prompts_to_the_budget_it_is_given():
    from pathlib import Path

    from hybrid_reason.tasks import PromptBudget

    source = str(Path(__file__).parent / "fixtures" / "arc" / "small")  # cccc0003 needs 490 characters
    dm = TaskDataModule({"name": "arc1", "source": source, "on_too_long": "skip"}, batch_size=2, num_workers=1)
    assert len(dm.rows("test")) == 3
    dm.set_prompt_budget(PromptBudget(300))  # from whoever loaded the backbone
    assert list(dm.rows("test")["task_id"]) == ["aaaa0001", "bbbb0002"]
    texts = [t for b in dm.test_dataloader() for t in b.texts]  # rendered in a worker process
    assert len(texts) == 2 and max(map(len, texts)) <= 300
    assert max(map(len, next(iter(dm.train_dataloader())).texts)) <= 300
    assert dm.budget_stats("test") == {"prompts_with_drops": 1, "demonstrations_dropped": 1, "queries_skipped": 1}
    dropped = torch.cat([b.dropped for b in dm.test_dataloader()])
    assert dropped.tolist() == [0, 1]  # bbbb0002's prompt lost a pair: the module counts it as batches pass


def test_datamodule_serves_puzzle_ids_when_told():
    dm = TaskDataModule(TASK, batch_size=4, num_workers=0, puzzle_ids=True)  # no model, no trainer needed
    ids = dm.train_stream().batch(0).puzzle_ids
    assert len(dm.puzzles) == 50 and ids.min() >= 1 and len(set(ids.tolist())) == 4
    assert next(iter(dm.val_dataloader())).puzzle_ids.max() == 0  # validation puzzles are not in the table
    assert TaskDataModule(TASK, batch_size=4).train_stream().batch(0).puzzle_ids.tolist() == [0, 0, 0, 0]


@pytest.mark.parametrize("cores, workers", [(1, 0), (2, 1), (3, 2), (8, 4), (64, 4)])
def test_num_workers_defaults_to_what_the_machine_has(monkeypatch, cores, workers):
    import os

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    assert default_num_workers() == workers
    assert TaskDataModule(TASK, batch_size=4).num_workers == workers
    assert TaskDataModule(TASK, batch_size=4, num_workers=1).num_workers == 1
    with pytest.raises(ValueError, match="data.num_workers"):
        TaskDataModule(TASK, batch_size=4, num_workers=-1)
