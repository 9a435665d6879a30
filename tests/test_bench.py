"""`hybrid-reason bench core`: the timed step really trains the core, in fp32 and under bf16 autocast;
`hybrid-reason bench ttt`: each task_batch adapts the same tasks, side by side."""

import math

import pytest
import torch

from hybrid_reason import HybridReasoner, HybridReasonerConfig
from hybrid_reason.bench import core_train_step, main, step_flops
from hybrid_reason.model.core import CoreConfig
from hybrid_reason.tasks import build_task

TINY = CoreConfig(d_model=16, num_heads=2, num_layers=1, n=2, T=2)


@pytest.mark.parametrize("bf16", [False, True])
def test_core_train_step_lowers_the_loss(bf16):
    step = core_train_step(TINY, seq=9, prefix=2, batch=8, vocab=5, compile_blocks=False, bf16=bf16)
    losses = [step() for _ in range(30)]
    assert all(math.isfinite(x) for x in losses)
    assert sum(losses[-5:]) < sum(losses[:5])  # one fixed batch: AdamW fits it


def test_step_flops_grow_with_the_batch():
    one = step_flops(TINY, seq=9, prefix=0, batch=1, vocab=5)
    assert step_flops(TINY, seq=9, prefix=0, batch=4, vocab=5) == 4 * one > 0


def test_bench_ttt_times_each_task_batch_on_the_same_tasks(tmp_path, capsys):
    rules = {"name": "rules", "num_train_rules": 4, "num_eval_rules": 3, "max_side": 4, "canvas_side": 8}
    family = build_task(**rules)
    torch.manual_seed(0)
    config = HybridReasonerConfig(
        backbone={"name": "none"}, core={"d_model": 16, "num_heads": 2, "num_layers": 1, "n": 1, "T": 2},
        answer_vocab_size=family.vocab_size, num_slots=family.num_slots, halt_max_steps=2, task=rules,
    )  # fmt: skip
    HybridReasoner(config).save_pretrained(tmp_path / "model")
    flags = "--limit 3 --steps 4 --batch_size 2 --task_batch [1,3] --repeats 1 --threads 1 --learning_rate 0.01"
    main(["ttt", str(tmp_path / "model"), *flags.split()])
    lines = capsys.readouterr().out.splitlines()
    assert "rules test" in lines[0] and "params all, lr 0.01" in lines[0]
    table = [line.split("|")[1:-1] for line in lines if line.startswith("| ") and line[2].isdigit()]
    assert [int(row[0]) for row in table] == [1, 3] and table[0][3].strip() == "1.00x"
    assert float(table[0][4]) == 0.0 and 0.0 <= float(table[1][4]) < 1e-4  # the same tasks' losses, regrouped
    assert all(float(row[1]) > 0 for row in table)
