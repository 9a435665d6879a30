"""Test-time training (``evaluate --ttt_steps K``): exact restore, leave-one-out, determinism, errors."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

import hybrid_reason  # noqa: F401  (registers the Auto classes)
from hybrid_reason import HybridReasoner, HybridReasonerConfig
from hybrid_reason.errors import HybridReasonError
from hybrid_reason.evaluation import hybrid as E
from hybrid_reason.evaluation import ttt as T
from hybrid_reason.evaluation import ttt_adapt as A
from hybrid_reason.evaluation.commands import evaluate_main
from hybrid_reason.evaluation.suite import load_suite
from hybrid_reason.tasks import ArcAugmentation, build_task
from hybrid_reason.tasks.grid_text import digits_text

pytestmark = pytest.mark.usefixtures("one_thread")

RULES = {
    "name": "rules", "num_train_rules": 4, "num_eval_rules": 2, "max_side": 4, "canvas_side": 8,
    "train_examples_per_rule": 2, "test_examples_per_rule": 2,
}  # fmt: skip
PARAMS = ("all", "adapter", "core-lora", "id")


@pytest.fixture(scope="module")
def task():
    return build_task(**RULES)


@pytest.fixture(scope="module")
def rows(task):
    """The unseen rules' test rows: two tasks (2 and 4 demonstrations), two queries each."""
    return [dict(r) for r in task.load("test")]


def make_model(family, **overrides) -> HybridReasoner:
    """A tiny HybridReasoner for the task ``family`` on the `none` backbone (no LLM), N_sup 2."""
    config = dict(
        backbone={"name": "none"},
        core={"d_model": 16, "num_heads": 2, "num_layers": 1, "n": 1, "T": 2},
        answer_vocab_size=family.vocab_size,
        num_slots=family.num_slots,
        halt_max_steps=2,
        task=RULES,
    )
    torch.manual_seed(0)
    return HybridReasoner(HybridReasonerConfig(**(config | overrides))).eval()


@pytest.fixture(scope="module")
def id_model(task):
    """A task-ID model whose table has trained-looking (non-zero) rows 1..4 and an all-zero row 0."""
    model = make_model(task, num_puzzle_ids=6, puzzle_prefix_len=2)
    with torch.no_grad():
        model.puzzle_emb.weight[1:5] = torch.randn(4, 16, generator=torch.Generator().manual_seed(1))
    return model


def state(model) -> dict:
    """Every parameter and buffer as raw bytes, each parameter's requires_grad and grad, and the module tree."""
    tensors = {
        k: v.detach().clone().contiguous().view(torch.uint8) for k, v in model.state_dict(keep_vars=True).items()
    }
    flags = {k: (p.requires_grad, p.grad) for k, p in model.named_parameters()}
    tree = [(name, type(m), id(m), sorted(vars(m))) for name, m in model.named_modules()]
    return {"tensors": tensors, "flags": flags, "tree": tree}


def assert_same_state(before: dict, after: dict) -> None:
    assert after["tree"] == before["tree"]
    assert after["flags"] == before["flags"]
    assert after["tensors"].keys() == before["tensors"].keys()
    for key, value in before["tensors"].items():
        assert torch.equal(after["tensors"][key], value), key


def settings(params: str, **kw) -> T.TTTSettings:
    return T.TTTSettings(**({"steps": 3, "params": params, "batch_size": 2, "learning_rate": 0.05} | kw))


def first_batch_logits(model, task, rows, puzzle_id=None) -> torch.Tensor:
    """The model's logits on a fixed leave-one-out batch (un-augmented), first supervision step."""
    batches, _ = T.training_batches(task, T.leave_one_out_rows(rows[2:4]), settings("all", augment=False), 2)
    ids = None if puzzle_id is None else torch.full((len(batches[0]),), puzzle_id)
    with torch.no_grad():
        enc = model.encode([ex.text for ex in batches[0]], [ex.slot_spans for ex in batches[0]])
        return model(encoded=enc, puzzle_ids=ids).logits


# ---------------------------------------------------------------------------- exact restore, real adaptation
CHANGED = {  # the model's own tensors that each mode trains (core-lora trains new LoRA tensors only)
    "all": {"adapter.proj.weight", "adapter.position", "core.blocks.0.mix.qkv.weight", "answer_head.weight",
            "halt_head.bias", "puzzle_emb.weight"},
    "adapter": {"adapter.proj.weight", "adapter.empty", "adapter.position"},
    "core-lora": set(),
    "id": {"puzzle_emb.weight"},
}  # fmt: skip


def changed(tensors: dict, saved: dict) -> set[str]:
    """Names of the tensors that differ from their saved copies."""
    return {name for name, t in tensors.items() if not torch.equal(t.detach(), saved[name])}


@pytest.mark.parametrize("params", PARAMS)
def test_adaptation_changes_the_model_then_restores_it_bit_for_bit(task, rows, id_model, params):
    model = id_model
    s = settings(params)
    batches, _ = T.training_batches(task, T.leave_one_out_rows(rows[2:4]), s, model.config.halt_max_steps)
    before, logits = state(model), first_batch_logits(model, task, rows, puzzle_id=0)
    tensors = model.state_dict(keep_vars=True)
    saved = {name: t.detach().clone() for name, t in tensors.items()}
    with A.adapted(model, [batches], s, [0]) as result:
        result.load(0)
        inside = first_batch_logits(model, task, rows, puzzle_id=result.puzzle_ids[0])
        trained = changed(tensors, saved)
        table_rows = (tensors["puzzle_emb.weight"] != saved["puzzle_emb.weight"]).any(-1).nonzero().flatten().tolist()
        if params == "core-lora":  # the LoRA is in the module tree for this task only
            assert any(".lora_A." in name for name, _ in model.named_parameters())
    assert trained == CHANGED[params] if params != "all" else trained >= CHANGED["all"]
    assert table_rows == ([0] if params in ("id", "all") else [])  # the task's row (ID 0 here), no other
    assert result.puzzle_ids == [0] and len(result.losses[0]) == s.steps
    assert not torch.equal(inside, logits)  # the adaptation is real: the task's predictions change
    assert_same_state(before, state(model))
    assert torch.equal(first_batch_logits(model, task, rows, puzzle_id=0), logits)


def test_adapter_mode_trains_the_resampler_too(task, rows):
    model = make_model(task, num_context_slots=2)
    s = settings("adapter")
    batches, _ = T.training_batches(task, T.leave_one_out_rows(rows[2:4]), s, model.config.halt_max_steps)
    tensors, before = model.state_dict(keep_vars=True), state(model)
    saved = {name: t.detach().clone() for name, t in tensors.items()}
    with A.adapted(model, [batches], s, [None]) as result:
        result.load(0)
        trained = changed(tensors, saved)
    assert {n.split(".")[0] for n in trained} == {"adapter", "resampler"} and "resampler.queries" in trained
    assert_same_state(before, state(model))


@pytest.mark.parametrize("params", PARAMS)
def test_an_evaluation_with_ttt_leaves_the_model_exactly_as_it_was(task, rows, id_model, params):
    before = state(id_model)
    ev = E.evaluate_model(id_model, task, rows, progress=False, ttt=settings(params))
    assert_same_state(before, state(id_model))
    summary = ev.summary()
    assert summary["ttt"]["adapted_tasks"] == summary["ttt"]["tasks"] == 2 and summary["ttt_seconds_per_task"] > 0
    assert summary["ttt"]["settings"]["params"] == params


# ---------------------------------------------------------------------------- tasks adapted together
def adapted_weights(model, task, rows, s, tasks: list[slice]) -> list[tuple]:
    """Adapt the tasks of ``rows[tasks[g]]`` together; per task: its losses, trained tensors and logits."""
    n_sup = model.config.halt_max_steps
    batches = [T.training_batches(task, T.leave_one_out_rows(rows[t]), s, n_sup)[0] for t in tasks]
    tensors = model.state_dict(keep_vars=True)
    saved = {name: t.detach().clone() for name, t in tensors.items()}
    out = []
    with A.adapted(model, batches, s, [0] * len(tasks)) as result:
        for g in range(len(tasks)):
            result.load(g)
            weights = {name: tensors[name].detach().clone() for name in changed(tensors, saved)}
            lora = {n: p.detach().clone() for n, p in model.named_parameters() if ".lora_" in n}
            logits = first_batch_logits(model, task, rows, puzzle_id=result.puzzle_ids[g])
            out.append((result.losses[g], weights | lora, logits))
    return out


@pytest.mark.parametrize(("kind", "params"), [("id", p) for p in PARAMS] + [("context", "all")])
def test_tasks_adapted_together_each_follow_their_own_path(task, rows, id_model, kind, params):
    model = id_model if kind == "id" else make_model(task, num_context_slots=2)
    s, before = settings(params, learning_rate=0.01), state(model)  # (``all``: the ID row's rate is 1.0)
    alone = [adapted_weights(model, task, rows, s, [t])[0] for t in (slice(0, 2), slice(2, 4))]
    together = adapted_weights(model, task, rows, s, [slice(0, 2), slice(2, 4)])
    assert_same_state(before, state(model))
    assert alone[0][1].keys() == together[0][1].keys() and len(alone[0][1]) > 0
    assert not torch.allclose(alone[0][2], alone[1][2])  # the two tasks really end with different weights
    for (losses, weights, logits), (g_losses, g_weights, g_logits) in zip(alone, together):
        np.testing.assert_allclose(g_losses, losses, rtol=1e-5)
        for name, tensor in weights.items():  # Adam's normalisation amplifies rounding: within 1/10 of a step
            torch.testing.assert_close(g_weights[name], tensor, rtol=1e-3, atol=0.1 * s.lr, msg=name)
        torch.testing.assert_close(g_logits, logits, rtol=1e-3, atol=1e-4 * float(logits.abs().max()))


def test_an_evaluation_adapting_tasks_together_predicts_as_one_at_a_time(task, rows, id_model):
    s = settings("all", steps=4, learning_rate=0.01)
    one = E.evaluate_model(id_model, task, rows, progress=False, augmentations=2, ttt=s)
    two, again = (
        E.evaluate_model(id_model, task, rows, progress=False, augmentations=2, ttt=replace(s, task_batch=2))
        for _ in range(2)
    )
    assert traces_of(two) == traces_of(again) and two.ttt.losses == again.ttt.losses  # deterministic
    assert [t.answers for p in two.traces for t in p] == [t.answers for p in one.traces for t in p]
    confidences = lambda ev: [c for p in ev.traces for t in p for c in t.confidences]  # noqa: E731
    np.testing.assert_allclose(confidences(two), confidences(one), atol=1e-6)
    for task_id, losses in one.ttt.losses.items():
        np.testing.assert_allclose(two.ttt.losses[task_id], losses, rtol=1e-5)
    assert two.ttt.seconds.keys() == one.ttt.seconds.keys() and two.summary()["ttt"]["settings"]["task_batch"] == 2


def test_only_tasks_whose_batches_have_the_same_sizes_are_adapted_together(task, rows, id_model):
    s = settings("all", augment=False, batch_size=3)  # un-augmented: 2 and 3 examples per batch
    batches = [T.training_batches(task, T.leave_one_out_rows(rows[t]), s, 2)[0] for t in (slice(0, 2), slice(2, 4))]
    assert [len(b[0]) for b in batches] == [2, 3]
    with pytest.raises(ValueError, match="batches differ in size"):
        with A.adapted(id_model, batches, s, [0, 0]):
            pass
    one = E.evaluate_model(id_model, task, rows, progress=False, ttt=s)
    two = E.evaluate_model(id_model, task, rows, progress=False, ttt=replace(s, task_batch=2))
    assert traces_of(two) == traces_of(one) and two.ttt.losses == one.ttt.losses  # two groups of one: exact


def test_id_rows_start_from_the_mean_of_the_trained_rows(id_model):
    row = A._initial_row(id_model.puzzle_emb.weight, 0, "id")
    assert torch.equal(row, id_model.puzzle_emb.weight[1:5].mean(0))


# ---------------------------------------------------------------------------- leave-one-out
def query_block(grid) -> str:
    """How a grid appears as a prompt's input: between "Input:" and "Output:"."""
    return f"Input:\n{digits_text(np.asarray(grid))}\nOutput:"


def test_leave_one_out_never_shows_a_task_its_own_query(task, rows):
    s = settings("all", steps=4, batch_size=3)
    for task_rows in (rows[0:2], rows[2:4]):
        demos = task_rows[0]["demonstrations"]
        loo = T.leave_one_out_rows(task_rows)
        assert [r["test_input"] for r in loo] == [d["input"] for d in demos]  # each demonstration is the query once
        for r in loo:
            held = {"input": r["test_input"], "output": r["test_output"]}
            assert held not in r["demonstrations"] and len(r["demonstrations"]) == len(demos) - 1
        batches, left_out = T.training_batches(task, loo, s, n_sup=2)
        assert len(batches) == 2 and all(len(b) == 3 for b in batches) and left_out == 0
        for ex in (ex for batch in batches for ex in batch):
            aug = ArcAugmentation.from_meta(ex.meta["augmentation"])
            context, _ = ex.text.split("Test\n")
            held = next(r for r in loo if r["id"] == ex.meta["id"])
            assert query_block(aug.grid(held["test_input"])) not in context  # the held-out pair is not in context
            assert ex.meta["demonstrations"] == len(demos) - 1
            for row in task_rows:  # the task's test queries appear in no TTT example
                assert query_block(aug.grid(row["test_input"])) not in ex.text


def test_demonstrations_that_are_queries_or_not_shared_by_every_row_are_left_out():
    pair = lambda v: {"input": [[v]], "output": [[v + 1]]}  # noqa: E731
    rows = [
        {"id": "t/q0", "task_id": "t", "demonstrations": [pair(1), pair(2), pair(3), pair(4)], "test_input": [[5]]},
        {"id": "t/q1", "task_id": "t", "demonstrations": [pair(1), pair(2), pair(4)], "test_input": [[4]]},
    ]
    assert T.task_demonstrations(rows) == [pair(1), pair(2)]  # 3: not in every row; 4: a query
    assert [r["id"] for r in T.leave_one_out_rows(rows)] == ["t/ttt0", "t/ttt1"]
    one_left = [rows[1] | {"demonstrations": [pair(1), pair(4)]}]
    assert T.leave_one_out_rows(one_left) == []  # one usable demonstration: nothing to hold out


def test_a_task_with_one_demonstration_is_predicted_as_is_and_counted(task, rows):
    model = make_model(task)
    one = [r | {"demonstrations": r["demonstrations"][:1]} for r in rows[:2]] + rows[2:]
    ev = E.evaluate_model(model, task, one, progress=False, ttt=settings("adapter"))
    plain = E.evaluate_model(model, task, one, progress=False)
    summary = ev.summary()["ttt"]
    assert summary["skipped_tasks"] == [rows[0]["task_id"]] and summary["adapted_tasks"] == 1
    assert [t.answers for t in ev.traces[0]] == [t.answers for t in plain.traces[0]]


# ---------------------------------------------------------------------------- determinism, K = 0
def traces_of(ev) -> list:
    return [(t.answers, t.confidences) for puzzle in ev.traces for t in puzzle]


def test_same_seed_same_predictions_and_k0_is_plain_evaluation(task, rows):
    model = make_model(task)
    s = settings("all", steps=4, batch_size=2, learning_rate=0.05)
    one, two = (E.evaluate_model(model, task, rows, progress=False, augmentations=2, ttt=s) for _ in range(2))
    assert traces_of(one) == traces_of(two) and one.curve == two.curve
    plain = E.evaluate_model(model, task, rows, progress=False, augmentations=2)
    assert traces_of(one) != traces_of(plain)  # K > 0 changes the predictions
    zero = E.evaluate_model(model, task, rows, progress=False, augmentations=2, ttt=T.TTTSettings(steps=0))
    assert traces_of(zero) == traces_of(plain) and zero.curve == plain.curve and "ttt" not in zero.summary()


@pytest.mark.parametrize("trajectories", [1, 3])
def test_task_by_task_prediction_puts_every_view_back_in_its_place(task, rows, trajectories):
    model = make_model(task)
    views = E.render_views(task, rows, 2, 0)
    plain, _, _ = E.predict_views(model, task, views, 2, progress=False, trajectories=trajectories, seed=5)
    per_task, tokens, _, report = T.predict_with_ttt(
        model, task, rows, views, None, 2, 32, T.TTTSettings(steps=0), progress=False, trajectories=trajectories, seed=5
    )
    assert len(tokens) == len(views.examples) and report.tasks == 2 and not report.seconds
    assert len(per_task) == len(plain) == trajectories * len(views.examples)
    assert [(t.answers, t.trajectory) for t in per_task] == [(t.answers, t.trajectory) for t in plain]
    np.testing.assert_allclose([t.confidences for t in per_task], [t.confidences for t in plain], rtol=1e-5)


# ---------------------------------------------------------------------------- errors
def one_line_error(call, match: str) -> None:
    with pytest.raises(HybridReasonError, match=match) as err:
        call()
    assert "\n" not in str(err.value)


def test_id_without_an_id_table_and_ttt_on_a_task_without_demonstrations_are_one_line_errors(task, rows):
    model = make_model(task)
    one_line_error(
        lambda: E.evaluate_model(model, task, rows, progress=False, ttt=settings("id")), "no puzzle-ID table"
    )
    spec = {"name": "sort", "length": 4, "min_length": 4, "num_train": 4, "num_validation": 2, "num_test": 2}
    sort = build_task(**spec)
    sort_model = make_model(sort, task=spec)
    one_line_error(
        lambda: E.evaluate_model(sort_model, sort, sort.load("test"), progress=False, ttt=settings("all")),
        "needs an ARC-family task",
    )


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"steps": -1}, "steps must be an integer >= 0"),
        ({"params": "heads"}, "params must be one of all, adapter, core-lora, id"),
        ({"learning_rate": 0.0}, "learning_rate must be > 0"),
        ({"batch_size": 0}, "batch_size must be an integer >= 1"),
        ({"lora_rank": 0}, "lora_rank must be an integer >= 1"),
        ({"task_batch": 0}, "task_batch must be an integer >= 1"),
    ],
)
def test_bad_settings_are_one_line_errors(kw, match):
    one_line_error(lambda: T.TTTSettings(**kw), match)


@pytest.mark.parametrize(("flag", "value"), [("--ttt_steps", "-1"), ("--ttt_params", "heads"), ("--ttt_lr", "0")])
def test_bad_flags_are_refused_when_parsed(tmp_path, capsys, flag, value):
    with pytest.raises(SystemExit) as exit_:
        evaluate_main(["--model", str(tmp_path), flag, value])
    assert exit_.value.code == 2 and flag.lstrip("-") in capsys.readouterr().err


# ---------------------------------------------------------------------------- the command and suites
def test_the_evaluate_command_records_ttt(task, tmp_path):
    make_model(task).save_pretrained(tmp_path / "model")
    out = tmp_path / "out"
    flags = "--ttt_steps 2 --ttt_params core-lora --ttt_lora_rank 2 --ttt_batch_size 2 --progress false"
    evaluate_main(["--model", str(tmp_path / "model"), "--out", str(out), *flags.split()])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["ttt"]["settings"] == {
        "steps": 2, "params": "core-lora", "learning_rate": T.DEFAULT_LR["core-lora"], "batch_size": 2,
        "lora_rank": 2, "augment": True, "seed": 0, "task_batch": 1,
    }  # fmt: skip
    assert metrics["ttt"]["adapted_tasks"] == 2 and metrics["ttt_seconds_per_task"] > 0


def test_suite_entries_take_ttt_settings(tmp_path):
    suite = tmp_path / "s.yaml"
    entry = "{name: h, recipe: r.yaml, ttt_steps: 16, ttt_params: adapter, ttt_lr: 0.01}"
    suite.write_text(f"systems:\n  - {{name: plain, recipe: r.yaml}}\n  - {entry}\n")
    plain, adapted = load_suite(str(suite)).systems
    assert T.TTTSettings.of(plain).steps == 0
    assert T.TTTSettings.of(adapted, seed=3) == T.TTTSettings(16, "adapter", 0.01, 8, 8, True, 3, 1)
    suite.write_text("systems:\n  - {name: h, recipe: r.yaml, ttt_steps: -1}\n")
    one_line_error(lambda: load_suite(str(suite)), r"systems\[0\]\.ttt_steps: -1 is not")


def test_the_suite_report_lists_ttt_systems_with_their_added_seconds(task, rows):
    from hybrid_reason.evaluation.suite_report import ttt_table
    from hybrid_reason.evaluation.systems import SystemReport

    ev = E.evaluate_model(make_model(task), task, rows, progress=False, ttt=settings("adapter"))
    base = dict(
        kind="hybrid", model="m", puzzles=ev.puzzles, headline="pass@2", metrics=ev.metrics, trainable_params=1,
        total_params=1, seconds_per_puzzle=0.1, tokens_per_puzzle=0.0, backbone_flops_per_puzzle=0.0,
        flops_per_puzzle=0.0, solved={}, group={},
    )  # fmt: skip
    plain, adapted = SystemReport("hybrid", **base), SystemReport("hybrid + TTT", **base, ttt=ev.summary()["ttt"])
    assert ttt_table([plain]) == []
    lines = ttt_table([plain, adapted])
    row = f"| hybrid + TTT | 3 | adapter | 0.05 | 2 | 1 | 2 of 2 | {ev.ttt.seconds_per_task():.2f} |"
    assert (
        lines[0] == "## Test-time training"
        and row in lines
        and not any(line.startswith("| hybrid |") for line in lines)
    )
