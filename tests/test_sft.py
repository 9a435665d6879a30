"""The fine-tuned LLM baseline (sft): the direct baseline's prompt, the loss on the answer only, a real
LoRA trained by a real Lightning Trainer on a tiny real model, scored with the direct baseline's parser."""

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

import hybrid_reason  # noqa: F401
from hybrid_reason.evaluation import llm as B
from hybrid_reason.evaluation import sft as F
from hybrid_reason.evaluation.commands import baseline_main
from hybrid_reason.tasks import build_task
from hybrid_reason.utils.testing import tiny_chat_lm

pytestmark = pytest.mark.usefixtures("one_thread")

SORT = {"name": "sort", "length": 6, "min_length": 4, "num_train": 50, "num_validation": 10, "num_test": 30}
# one-number lists: the answer copies the input, which a tiny model learns in a few dozen steps
COPY = {"name": "sort", "length": 1, "min_length": 1, "max_value": 9, "num_train": 10, "num_validation": 1,
        "num_test": 1, "augment": False}  # fmt: skip


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory):
    """A tiny random causal LM with a chat template, its embeddings scaled up so that a loss can fall."""
    return tiny_chat_lm(str(tmp_path_factory.mktemp("lm") / "qwen"), embedding_scale=20)


@pytest.fixture()
def lm(lm_dir):
    return B.load_language_model(lm_dir)


# ------------------------------------------------------------------------------ examples
def test_the_example_is_the_direct_prompt_then_the_answer_and_only_the_answer_is_labelled(lm):
    task = build_task(**SORT)
    row = task.load("train")[0]
    example = F.sft_example(lm, task, row)
    prompt = B.chat_prompt(lm, B.user_message(task, task.render(row).text, "direct"))  # what `direct` sends
    prompt_ids = lm.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    n = len(prompt_ids)
    ids, labels = example["input_ids"], example["labels"]
    assert ids[:n] == prompt_ids and len(labels) == len(ids)
    assert labels[:n] == [F.IGNORE] * n  # no loss on any prompt token
    assert labels[n:] == ids[n:] and F.IGNORE not in labels[n:]  # loss on every answer token
    assert ids[-1] == F.end_of_reply_id(lm) == lm.tokenizer.eos_token_id  # the reply ends, as generate stops
    answer = lm.tokenizer.decode(ids[n:-1])
    assert answer == task.answer_format(task.target(row)) == " ".join(map(str, sorted(row["values"])))
    assert B.parse_reply(task, answer) == task.target(row)  # the direct parser reads what it is taught to write


def test_batches_are_right_padded_with_the_padding_unlabelled_and_masked(lm):
    task = build_task(**SORT)
    rows = task.load("train")
    examples = [F.sft_example(lm, task, rows[i]) for i in range(4)]
    batch = F.collate(examples, pad_id=lm.tokenizer.pad_token_id)
    width = max(len(e["input_ids"]) for e in examples)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape == (4, width)
    for i, e in enumerate(examples):
        n = len(e["input_ids"])
        assert batch["input_ids"][i, :n].tolist() == e["input_ids"] and batch["labels"][i, :n].tolist() == e["labels"]
        assert batch["attention_mask"][i].tolist() == [1] * n + [0] * (width - n)
        assert (batch["labels"][i, n:] == F.IGNORE).all()


def test_settings_are_checked():
    with pytest.raises(ValueError, match="max_steps must be >= 1"):
        F.SFTSettings(max_steps=0)
    with pytest.raises(ValueError, match="learning_rate must be > 0"):
        F.SFTSettings(learning_rate=0.0)


# ------------------------------------------------------------------------------ training
def test_a_tiny_lora_trains_its_adapters_only_and_its_loss_falls(lm):
    task = build_task(**SORT)
    base = {k: v.detach().clone() for k, v in lm.model.state_dict().items()}
    settings = F.SFTSettings(max_steps=40, lora_rank=4, learning_rate=1e-2, train_batch_size=8)
    lm = F.add_lora(lm, settings)
    training = F.fine_tune(lm, task, task.load("train"), settings, seed=0, progress=False)
    assert training.steps == 40 and len(training.losses) == 40 and training.examples_seen == 40 * 8
    trainable = {n: p for n, p in lm.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert training.trainable_params == sum(p.numel() for p in trainable.values())
    first, last = sum(training.losses[:5]) / 5, sum(training.losses[-5:]) / 5
    assert last < 0.6 * first, training.losses
    after = {
        k.replace(".base_layer", ""): v for k, v in lm.model.get_base_model().state_dict().items() if "lora_" not in k
    }
    assert after.keys() == base.keys() and all(torch.equal(base[k], after[k]) for k in base)  # the base is frozen


def test_the_fine_tuned_model_is_scored_with_the_direct_parser_and_learns_the_answers(lm_dir, tmp_path):
    task = build_task(**COPY)
    train = task.load("train")
    settings = F.SFTSettings(max_steps=60, lora_rank=8, learning_rate=2e-2, train_batch_size=4)
    gen = B.GenerationSettings(max_new_tokens=6, batch_size=8)
    result = F.run_sft(lm_dir, task, train, settings, gen, train_rows=train, split="train", seed=0, progress=False)
    assert result.kind == "sft" and result.settings.max_new_tokens == 6
    lm = B.load_language_model(lm_dir)  # its tokenizer and chat template wrote the prompts
    direct = [B.chat_prompt(lm, B.user_message(task, task.render(train[i]).text, "direct")) for i in range(len(train))]
    assert result.prompt_tokens == [len(lm.tokenizer(p, add_special_tokens=False)["input_ids"]) for p in direct]
    for i, replies in enumerate(result.replies):  # every answer is what the direct parser reads in the reply
        assert [r.answer for r in replies] == [B.parse_reply(task, r.text) if r.finished else None for r in replies]
        assert result.results[i].solved[1] == (replies[0].answer == task.target(train[i]))
    m = result.metrics
    assert m["unfinished"] == m["unparsed"] == 0.0, [r.text for rs in result.replies for r in rs]  # the format
    assert m["exact"] > 0.0  # some right: a parsed answer is scored against the target
    untrained = B.run_baseline(B.load_language_model(lm_dir), task, train, "direct", gen, progress=False)
    assert untrained.metrics["unfinished"] + untrained.metrics["unparsed"] > 0.5  # what training taught
    summary = result.summary()
    assert summary["trainable_params"] == result.training.trainable_params > 0
    assert summary["training"]["examples_seen"] == 60 * 4 and summary["training"]["seconds"] > 0
    result.save_adapter(tmp_path / "adapter")
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["r"] == 8 and (tmp_path / "adapter" / "adapter_model.safetensors").is_file()


def test_nf4_quantized_base_trains_its_adapters(lm_dir):
    pytest.importorskip("bitsandbytes")
    from bitsandbytes.nn import Linear4bit

    task = build_task(**SORT)
    settings = F.SFTSettings(max_steps=20, lora_rank=4, learning_rate=1e-2, quantization="nf4")
    gen = B.GenerationSettings(max_new_tokens=4)
    lm = F.add_lora(B.load_language_model(lm_dir, quantization="nf4"), settings)  # as run_sft builds it
    base = lm.model.get_base_model()
    assert isinstance(base.model.layers[0].self_attn.q_proj.base_layer, Linear4bit)  # QLoRA: a 4-bit frozen base
    result = F.run_sft(lm_dir, task, task.load("test").select(range(2)), settings, gen, progress=False)
    losses = result.training.losses
    assert sum(losses[-5:]) < sum(losses[:5]) and result.puzzles == 2


# ------------------------------------------------------------------------------ command line
def test_baseline_sft_command_writes_scores_training_figures_and_the_adapter(lm_dir, tmp_path, capsys):
    out = tmp_path / "out"
    flags = "--task sort --limit 3 --max_steps 3 --lora_rank 2 --train_limit 16 --max_new_tokens 4 --progress false"
    result = baseline_main(["sft", "--model", lm_dir, "--option", "{length: 6, min_length: 4}", "--out", str(out),
                            *flags.split()])  # fmt: skip
    assert result.kind == "sft" and result.puzzles == 3 and result.training.train_puzzles == 16
    assert sorted(os.listdir(out)) == ["adapter", "metrics.json", "per_task.csv", "replies.jsonl", "summary.md"]
    metrics = json.loads((out / "metrics.json").read_text())
    training = metrics["training"]
    assert metrics["kind"] == "sft" and metrics["settings"]["max_new_tokens"] == 4
    assert training["steps"] == 3 and training["examples_seen"] == 3 * 8 and training["seconds"] > 0
    assert metrics["trainable_params"] == training["trainable_params"] == result.training.trainable_params > 0
    assert training["settings"]["lora_rank"] == 2 and "baseline sft --model" in metrics["command"]
    summary = (out / "summary.md").read_text()
    assert "3 steps, 24 training examples seen (of 16 puzzles)" in summary and "LoRA rank 2" in summary
    assert "24 training examples seen" in capsys.readouterr().out
    assert json.loads((out / "adapter" / "adapter_config.json").read_text())["r"] == 2


@pytest.mark.parametrize(
    "flags", [["--lora_rank", "0"], ["--max_steps", "0"], ["--learning_rate", "0"], ["--quantization", "int3"]]
)
def test_baseline_sft_flags_are_refused_when_parsed(tmp_path, capsys, flags):
    with pytest.raises(SystemExit) as exit_:
        baseline_main(["sft", "--model", str(tmp_path / "nowhere"), *flags])
    assert exit_.value.code == 2 and f'"{flags[0][2:]}"' in capsys.readouterr().err
