"""Shared pieces of the training tests (a tiny real backbone, a tiny Sort task, a CPU trainer), and
tests of the small parts: the learning-rate schedule, the carry's checkpoint form, the EMA copy."""

from __future__ import annotations

import copy
import math
import os

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import EMAWeightAveraging, ModelCheckpoint

from hybrid_reason.backbone import BackboneSpec
from hybrid_reason.errors import HybridReasonError
from hybrid_reason.model.core import CoreConfig
from hybrid_reason.training.carry import SlotCarry, pack, state_bytes, unpack
from hybrid_reason.training.data import TaskDataModule
from hybrid_reason.training.module import HybridReasonerModule
from hybrid_reason.training.schedule import WarmupSchedule

TASK = {
    "name": "sort",
    "length": 4,
    "min_length": 3,
    "max_value": 5,
    "num_train": 200,
    "num_validation": 16,
    "num_test": 16,
}
CORE = CoreConfig(d_model=32, num_heads=2, num_layers=1, n=2, T=2)


def sgd_adamw(params):
    """A fast-learning AdamW for tests."""
    return torch.optim.AdamW(params, lr=3e-3, betas=(0.9, 0.95), weight_decay=0.1)


def short_warmup(optimizer):
    """Warm-up over 3 steps, then constant."""
    return WarmupSchedule(optimizer, warmup_steps=3)


def make_module(backbone_path: str, init_seed: int = 0, **kwargs) -> HybridReasonerModule:
    """A tiny HybridReasonerModule on the Sort task, initialised from ``init_seed``."""
    pl.seed_everything(init_seed, verbose=False)
    options = dict(
        task=TASK,
        backbone=BackboneSpec(name=backbone_path),
        core=CORE,
        halt_max_steps=3,
        optimizer=sgd_adamw,
        lr_scheduler=short_warmup,
    )
    return HybridReasonerModule(**(options | kwargs))


def make_trainer(root: str, max_steps: int, callbacks: list | None = None, **kwargs) -> pl.Trainer:
    """A CPU trainer with EMA (of the parameters only, as the CLI sets it) and a ModelCheckpoint saving
    last.ckpt every 2 steps."""
    checkpoint = ModelCheckpoint(
        dirpath=os.path.join(root, "ckpt"), save_last=True, save_top_k=0, every_n_train_steps=2
    )
    options = dict(
        accelerator="cpu", devices=1, max_steps=max_steps, val_check_interval=4, check_val_every_n_epoch=None,
        limit_val_batches=1, num_sanity_val_steps=0, log_every_n_steps=2, logger=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=root,
        callbacks=[EMAWeightAveraging(decay=0.9, use_buffers=False), checkpoint, *(callbacks or [])],
    )  # fmt: skip
    return pl.Trainer(**(options | kwargs))


def make_data(batch_size: int = 6, **kwargs) -> TaskDataModule:
    """The datamodule of the tiny Sort task, rendered in the main process (the task is tiny), serving puzzle
    IDs (a model without an ID table ignores them; the CLI links ``data.puzzle_ids`` to the model's table)."""
    return TaskDataModule(task=TASK, batch_size=batch_size, **({"num_workers": 0, "puzzle_ids": True} | kwargs))


def lrs(scheduler, steps: int) -> list[float]:
    """The learning rate of each of ``steps`` optimizer steps under ``scheduler``."""
    out = []
    for _ in range(steps):
        out.append(scheduler.optimizer.param_groups[0]["lr"])
        scheduler.optimizer.step()
        scheduler.step()
    return out


# ------------------------------------------------------------------------------------------ tests
def test_warmup_then_constant_or_cosine():
    sgd = lambda: torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)  # noqa: E731
    constant = lrs(WarmupSchedule(sgd(), warmup_steps=4), 6)
    assert constant[0] == 0.25  # the first step already trains, as TRM's does
    assert constant == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 1.0]) and constant[4:] == [1.0, 1.0]
    cosine = WarmupSchedule(sgd(), warmup_steps=2, decay="cosine", min_lr_ratio=0.1)
    cosine.set_total_steps(12)  # the module sets the trainer's max_steps when the recipe gives none
    got = lrs(cosine, 15)
    want = [
        (s + 1) / 2 if s < 2 else 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1, (s - 2) / 10))) for s in range(15)
    ]
    assert got == pytest.approx(want, abs=1e-12)  # down to 0.1 x lr at step 12, then stays there
    with pytest.raises(HybridReasonError, match="cosine decay needs total_steps"):
        WarmupSchedule(sgd(), warmup_steps=2, decay="cosine").set_total_steps(-1)


def test_schedule_state_resumes_exactly():
    sgd = lambda: torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)  # noqa: E731
    unbroken = WarmupSchedule(sgd(), warmup_steps=5, decay="cosine", total_steps=20)
    want = lrs(unbroken, 20)
    first = WarmupSchedule(sgd(), warmup_steps=5, decay="cosine", total_steps=20)
    lrs(first, 7)
    path = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"schedule_{os.getpid()}.pt")
    torch.save({"opt": first.optimizer.state_dict(), "sched": first.state_dict()}, path)
    state = torch.load(path, weights_only=True)
    os.remove(path)
    second = WarmupSchedule(sgd(), warmup_steps=5, decay="cosine", total_steps=20)
    second.optimizer.load_state_dict(state["opt"])
    second.load_state_dict(state["sched"])
    assert lrs(second, 13) == want[7:]


def test_carry_state_round_trip_is_plain(backbone_path):
    module = make_module(backbone_path)
    batch = make_data().train_stream().batch(0)
    module.refill(batch)
    state = module.carry.state()
    assert all(v is None or isinstance(v, (torch.Tensor, list, dict)) for v in state.values())
    back = SlotCarry.from_state(state, torch.device("cpu"))
    assert back.ids == batch.ids and torch.equal(back.encoded.features, module.carry.encoded.features)
    assert bool(back.halted.any()) is False and torch.equal(back.y, module.carry.y)


def bits(t: torch.Tensor) -> torch.Tensor:
    """A float tensor's bit patterns (so +0.0 and -0.0 differ)."""
    return t.view({2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


def test_packed_carry_is_exact_and_small():
    torch.manual_seed(0)
    features = torch.randn(3, 5, 8)
    features[:, 3:] = 0.0  # empty slots
    features[0, 0, 0] = -0.0  # a zero that is not all +0.0 bits is kept
    halted = torch.tensor([False, True, False])
    packed = pack(features, ~halted)
    back = unpack(packed)
    assert back.dtype == torch.float32 and torch.equal(bits(back[~halted]), bits(features[~halted]))
    assert back[1].abs().sum() == 0  # a halted slot is refilled before anything reads it again
    assert packed["values"].shape == (2 * 3, 8) and packed["values"].dtype == torch.float32
    half = torch.randn(2, 4, 8).bfloat16().float()  # a bfloat16 backbone's states, held in float32
    packed = pack(half, torch.ones(2, dtype=torch.bool))
    assert packed["values"].dtype == torch.bfloat16 and torch.equal(bits(unpack(packed)), bits(half))
    assert state_bytes(packed) < state_bytes(half) / 2 + 64


def test_carry_checkpoint_keeps_only_what_resume_reads(backbone_path):
    module = make_module(backbone_path, num_context_slots=2)  # the resampler keeps every prompt token's state
    stream = make_data(batch_size=6).train_stream()
    module.refill(stream.batch(0))
    module.carry.halted = torch.tensor([True, False, False, False, False, True])
    state = module.carry.state()
    back = SlotCarry.from_state(state, torch.device("cpu"))
    live = ~module.carry.halted
    for name in ("features", "tokens", "token_mask", "empty"):
        want, got = getattr(module.carry.encoded, name), getattr(back.encoded, name)
        assert got.dtype == want.dtype and torch.equal(got[live], want[live]), name
    assert torch.equal(bits(back.y[live]), bits(module.carry.y[live])) and torch.equal(
        back.z[live], module.carry.z[live]
    )
    enc = module.carry.encoded  # stored: the real tokens and the non-empty slots of the live rows, nothing else
    assert len(state["tokens"]["values"]) == int(enc.token_mask[live].sum()) < enc.token_mask.numel()
    assert len(state["features"]["values"]) == int((~enc.empty[live]).sum())
    module.refill(stream.batch(1))  # the halted rows come back as fresh examples either way
    back_carry, module.carry = module.carry, back
    module.refill(stream.batch(1))
    assert torch.equal(module.carry.encoded.tokens, back_carry.encoded.tokens)
    assert torch.equal(module.carry.encoded.features, back_carry.encoded.features)


def test_ema_copy_shares_the_frozen_backbone(backbone_path):
    module = make_module(backbone_path)
    module.refill(make_data().train_stream().batch(0))
    twin = copy.deepcopy(module)
    assert twin.model.backbone is module.model.backbone  # never copied, never averaged
    assert twin.carry is None and module.carry is not None
    assert twin.model.answer_head.weight is not module.model.answer_head.weight
    assert torch.equal(twin.model.answer_head.weight, module.model.answer_head.weight)
