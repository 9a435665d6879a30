"""Parallel trajectories (``evaluate --trajectories M``): M = 1 is the ordinary evaluation, the noise is
seeded per (seed, puzzle, view, trajectory), every trajectory votes, halt-weighted voting, and the curve
against M from one pass. A tiny random model on 4x4 Sudoku with the ``none`` backbone (no LLM)."""

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

import hybrid_reason  # noqa: F401  (registers the Auto classes)
from hybrid_reason import HybridReasoner, HybridReasonerConfig
from hybrid_reason.errors import HybridReasonError
from hybrid_reason.evaluation import hybrid as E
from hybrid_reason.evaluation import scoring as S
from hybrid_reason.evaluation import suite as C
from hybrid_reason.evaluation import systems as R
from hybrid_reason.evaluation.commands import evaluate_main
from hybrid_reason.evaluation.trajectories import initial_carries
from hybrid_reason.evaluation.trajectory_curve import prefix_results, trajectory_curve
from hybrid_reason.tasks import build_task

pytestmark = pytest.mark.usefixtures("one_thread")

SUDOKU = {"name": "sudoku", "size": 4, "num_train": 4, "num_validation": 2, "num_test": 6}
STEPS = 3


@pytest.fixture(scope="module")
def task():
    return build_task(**SUDOKU)


@pytest.fixture(scope="module")
def rows(task):
    return task.load("test")


@pytest.fixture(scope="module")
def model():
    """A tiny random model whose answers and halting confidences depend on its carry: a random answer
    head, halt head and slot positions (TRM's init would start every answer and confidence alike)."""
    task = build_task(**SUDOKU)
    torch.manual_seed(0)
    config = HybridReasonerConfig(
        backbone={"name": "none"},
        core={"d_model": 32, "num_heads": 4, "num_layers": 1, "n": 2, "T": 2},
        answer_vocab_size=task.vocab_size,
        num_slots=task.num_slots,
        halt_max_steps=STEPS,
        task=SUDOKU,
    )
    net = HybridReasoner(config).eval()
    with torch.no_grad():
        net.answer_head.weight.normal_(0, 1.0)
        net.halt_head.weight.normal_(0, 1.0)
        net.halt_head.bias.zero_()
        net.adapter.position.normal_(0, 1.0)
    return net


@pytest.fixture(scope="module")
def model_dir(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("trajectories") / "model"
    model.save_pretrained(path)
    return str(path)


def run(model, task, rows, **options):
    return E.evaluate_model(model, task, rows, progress=False, curve_steps=STEPS, **options)


def by_trajectory(ev, t):
    """Per puzzle, the traces of trajectory ``t`` (one per view)."""
    return [[tr for tr in traces if tr.trajectory == t] for traces in ev.traces]


def assert_same_traces(a, b, exact=False):
    """Same decoded answers at every step; halt confidences equal (to float noise unless ``exact``)."""
    assert len(a) == len(b)
    for ta, tb in zip(a, b):
        assert ta.answers == tb.answers
        assert ta.confidences == (tb.confidences if exact else pytest.approx(tb.confidences, abs=1e-5))


def _ranked(result):
    """A puzzle's ranked candidates: answer and votes (and halt weight, to float noise)."""
    return [(c.answer, c.votes, round(c.weight, 4)) for c in result.candidates]


# ------------------------------------------------------------------------------ M = 1 is today's evaluation
def test_one_trajectory_is_the_ordinary_evaluation_exactly(model, task, rows):
    ev = run(model, task, rows, batch_size=4)
    noisy = run(model, task, rows, batch_size=4, trajectories=1, trajectory_noise=7.0, vote_weight="count")
    assert noisy.curve == ev.curve and noisy.metrics == ev.metrics
    assert [r.candidates for r in noisy.results] == [r.candidates for r in ev.results]
    # the same predictions straight from the model, iterated from its initial carry, bit for bit
    examples = [task.render(rows[i]) for i in range(len(rows))]
    for start in (0, 4):  # the evaluation's batches of 4 views
        batch = examples[start : start + 4]
        encoded = model.encode([ex.text for ex in batch], [ex.slot_spans for ex in batch])
        for k, out in enumerate(model.iterate(encoded, STEPS)):
            for i, (pred, h) in enumerate(zip(out.logits.argmax(-1).numpy(), out.halt_logits)):
                trace = noisy.traces[start + i][0]
                assert trace.trajectory == 0 and trace.answers[k] == task.decode(pred, batch[i].meta)
                assert trace.confidences[k] == torch.sigmoid(h).item()
    s = noisy.summary()
    assert (s["trajectories"], s["view_trajectories"], s["views"], s["vote_weight"]) == (1, 6, 6, "count")


# ------------------------------------------------------------------------------ seeded noise
def test_noise_is_seeded_by_seed_puzzle_view_and_trajectory(model):
    keys = [(0, 0, 0), (0, 0, 1), (0, 1, 1), (3, 0, 1), (0, 0, 2)]
    first = initial_carries(model, keys, 1.0, seed=0)
    assert torch.equal(first.y, initial_carries(model, keys, 1.0, seed=0).y)  # same seed: identical
    base = model.initial_carry(1)
    assert torch.equal(first.y[0], base.y[0]) and torch.equal(first.z[0], base.z[0])  # trajectory 0: no noise
    rows = [r.flatten() for r in first.y]
    assert all(not torch.equal(rows[i], rows[j]) for i in range(5) for j in range(i + 1, 5))  # every key its own
    other = initial_carries(model, keys, 1.0, seed=1)
    assert torch.equal(other.y[0], first.y[0]) and not torch.equal(other.y[1:], first.y[1:])  # another seed
    # the noise's scale: noise x the carry's RMS, per element
    rms = base.y[0].pow(2).mean().sqrt()
    for noise in (0.5, 2.0):
        delta = initial_carries(model, keys[1:], noise, seed=0).y - base.y[0]
        assert float(delta.std() / rms) == pytest.approx(noise, rel=0.1)
    assert torch.equal(initial_carries(model, keys, 0.0, seed=0).y, base.y.expand(5, -1, -1))


def test_a_trajectory_is_the_same_whatever_m_and_batch_size(model, task, rows):
    small = run(model, task, rows, trajectories=3, batch_size=2)  # one view per batch
    large = run(model, task, rows, trajectories=8, batch_size=64)  # every view in one batch
    for t in range(3):
        for a, b in zip(by_trajectory(small, t), by_trajectory(large, t)):
            assert_same_traces(a, b)
    reseeded = run(model, task, rows, trajectories=3, batch_size=2, seed=5)
    assert_same_traces(sum(by_trajectory(reseeded, 0), []), sum(by_trajectory(small, 0), []))
    assert sum(by_trajectory(reseeded, 1), []) != sum(by_trajectory(small, 1), [])  # another seed, other noise
    again = run(model, task, rows, trajectories=3, batch_size=2)
    assert again.curve == small.curve and [r.candidates for r in again.results] == [r.candidates for r in small.results]


# ------------------------------------------------------------------------------ every trajectory votes
def test_trajectories_differ_and_all_of_them_vote(model, task, rows):
    M = 8
    ev = run(model, task, rows, trajectories=M, trajectory_noise=3.0)
    assert ev.trajectories == M and ev.summary()["view_trajectories"] == len(rows) * M
    for traces, r in zip(ev.traces, ev.results):
        assert [t.trajectory for t in traces] == list(range(M))  # Sudoku: one view per puzzle
        assert len({t.confidences[-1] for t in traces}) > 1  # the noise reached the carry
        assert r.views == M and sum(c.votes for c in r.candidates) == M
    assert max(len(r.candidates) for r in ev.results) > 1  # and changed answers
    assert "pass@8" in ev.metrics
    # without noise every trajectory repeats trajectory 0: one answer with all M votes
    flat = run(model, task, rows, trajectories=M, trajectory_noise=0.0)
    for traces, r in zip(flat.traces, flat.results):
        assert_same_traces(traces, [traces[0]] * M)
        assert [c.votes for c in r.candidates] == [M]
    # the core's FLOPs count every trajectory, the backbone's every view once
    one = run(model, task, rows)
    assert ev.core_step_flops == M * one.core_step_flops and ev.backbone_flops == one.backbone_flops


def test_halt_weighted_votes_rank_by_summed_confidence():
    a, b, c = [[1]], [[2]], [[3]]
    answers = [a, a, a, b, b, c, None]
    conf = [0.1, 0.1, 0.2, 0.9, 0.8, 0.95, 1.0]
    count = S.vote(answers, conf)
    assert [x.answer for x in count] == [a, b, c] and [x.votes for x in count] == [3, 2, 1]
    assert [x.weight for x in count] == [3.0, 2.0, 1.0]
    halt = S.vote(answers, conf, weight="halt")
    assert [x.answer for x in halt] == [b, c, a]  # 1.7 > 0.95 > 0.4; None never votes
    assert [x.weight for x in halt] == pytest.approx([1.7, 0.95, 0.4])
    assert [x.votes for x in halt] == [2, 1, 3] and halt[0].confidence == pytest.approx(0.85)
    # equal summed confidence: more votes first, then first seen
    tie = S.vote([a, b, b, c], [0.6, 0.3, 0.3, 0.6], weight="halt")
    assert [x.answer for x in tie] == [b, a, c]
    with pytest.raises(ValueError, match="vote weight"):
        S.vote(answers, conf, weight="max")


def test_vote_weight_reaches_the_scores(task, rows):
    row = rows[0]
    right, wrong = task.target(row), "1" * len(task.target(row))
    traces = [E.Trace([right], [0.9], [2.0])] + [E.Trace([wrong], [0.2], [-1.0]) for _ in range(2)]
    assert not E.score_puzzle(task, row, traces, 1, [1], vote_weight="count").solved[1]  # 2 votes beat 1
    assert E.score_puzzle(task, row, traces, 1, [1], vote_weight="halt").solved[1]  # 0.9 beats 0.4


# ------------------------------------------------------------------------------ the curve against M
def test_the_curve_scores_prefixes_of_one_pass(model, task, rows):
    ev, curve = trajectory_curve(
        model, task, rows, [16, 1, 4], batch_size=8, trajectory_noise=3.0, vote_weight="halt", progress=False
    )
    assert ev.trajectories == 16 and [r["trajectories"] for r in curve.rows] == [1, 4, 16]
    for row in curve.rows:
        alone = run(model, task, rows, trajectories=row["trajectories"], trajectory_noise=3.0, vote_weight="halt")
        assert row["metrics"] == alone.metrics  # M = 4 from the M = 16 pass is a separate M = 4 run
        assert row["flops_per_puzzle"] == pytest.approx(alone.flops_per_puzzle())
        prefix, ks = prefix_results(task, rows, ev, row["trajectories"])
        assert ks == alone.ks and [_ranked(r) for r in prefix] == [_ranked(r) for r in alone.results]
    assert curve.rows[-1]["metrics"] == ev.metrics
    four = run(model, task, rows, trajectories=4, trajectory_noise=3.0, vote_weight="halt")
    for t in range(4):
        for a, b in zip(by_trajectory(ev, t), by_trajectory(four, t)):
            assert_same_traces(a, b)
    table = curve.markdown()
    assert table.count("\n| ") == 5 and "| 16 | 16 |" in table  # header, rule, one row per M
    with pytest.raises(HybridReasonError, match="trajectory_curve"):
        trajectory_curve(model, task, rows, [0, 4], progress=False)


# ------------------------------------------------------------------------------ the command and suites
def test_evaluate_flags_record_trajectories_and_write_the_curve(model_dir, tmp_path):
    out = tmp_path / "m4"
    common = ["--model", model_dir, "--limit", "4", "--progress", "false", "--threads", "1"]
    evaluate_main([*common, "--out", str(out), "--trajectories", "4", "--vote_weight", "halt"])
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["trajectories"], metrics["view_trajectories"], metrics["vote_weight"]) == (4, 16, "halt")
    assert metrics["trajectory_noise"] == 1.0 and "4 trajectories per view" in (out / "summary.md").read_text()
    curve_out = tmp_path / "curve"
    ev = evaluate_main([*common, "--out", str(curve_out), "--trajectory_curve", "[1,2]", "--trajectory_noise", "2"])
    assert ev.trajectories == 2 and {"trajectories.md", "trajectories.json"} <= set(os.listdir(curve_out))
    saved = json.loads((curve_out / "trajectories.json").read_text())
    assert [r["trajectories"] for r in saved["rows"]] == [1, 2] and saved["trajectory_noise"] == 2.0
    with pytest.raises(HybridReasonError, match="--trajectories 3"):
        evaluate_main([*common, "--out", str(curve_out), "--trajectory_curve", "[1,2]", "--trajectories", "3"])
    for bad in (["--trajectories", "0"], ["--trajectory_noise", "-1"], ["--vote_weight", "max"]):
        with pytest.raises(SystemExit):
            evaluate_main([*common, *bad])


def test_a_suite_entry_runs_trajectories_of_the_same_model(model_dir, task, tmp_path):
    entry = C.parse_typed(C.HybridEntry, {"name": "h4", "model": model_dir, "trajectories": 4}, "suite x.systems[1]")
    assert (entry["trajectories"], entry["vote_weight"], entry["trajectory_noise"]) == (4, "count", 1.0)
    with pytest.raises(HybridReasonError, match=r"systems\[1\].vote_weight: 'max' is not one of count, halt"):
        C.parse_typed(C.HybridEntry, {"name": "h", "model": model_dir, "vote_weight": "max"}, "suite x.systems[1]")
    plain, spread = C.HybridEntry(name="h", model=model_dir), C.HybridEntry(**entry)
    runner = R.Runner(
        C.Suite(name="t", systems=[plain, spread], task=SUDOKU, limit=3, device="cpu", runs=str(tmp_path)),
        progress=False,
    )
    (one, ev1), (four, ev4) = runner.run(plain), runner.run(spread)
    assert ev4.trajectories == 4 and ev1.trajectories == 1 and ev4.results[0].views == 4
    core1, core4 = (r.flops_per_puzzle - r.backbone_flops_per_puzzle for r in (one, four))
    assert core4 == pytest.approx(4 * core1)
