"""`hybrid-reason bench core`: the timed step really trains the core, in fp32 and under bf16 autocast."""

import math

import pytest

from hybrid_reason.bench import core_train_step, step_flops
from hybrid_reason.model.core import CoreConfig

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
