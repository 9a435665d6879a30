"""Shared pieces of the training tests (a tiny real backbone, a tiny Sort task, a CPU trainer), and
tests of the small parts: the learning-rate schedule, the carry's checkpoint form, the EMA copy."""

from __future__ import annotations

import copy
import os

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import EMAWeightAveraging, ModelCheckpoint

from hybrid_reason.backbone import BackboneSpec
from hybrid_reason.model.core import CoreConfig
from hybrid_reason.training.carry import SlotCarry
from hybrid_reason.training.data import TaskDataModule
from hybrid_reason.training.module import HybridReasonerModule
from hybrid_reason.training.schedule import WarmupSchedule
from hybrid_reason.utils.testing import tiny_backbone

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


@pytest.fixture(scope="session")
def backbone_path(tmp_path_factory) -> str:
    """A tiny random Qwen2 backbone with a real BPE tokenizer, written once per session."""
    return tiny_backbone(str(tmp_path_factory.mktemp("backbone") / "qwen2"), hidden_size=32, num_layers=2)


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
    """The datamodule of the tiny Sort task."""
    return TaskDataModule(task=TASK, batch_size=batch_size, **kwargs)


# ------------------------------------------------------------------------------------------ tests
def test_warmup_then_constant_or_cosine():
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=1.0)
    constant = WarmupSchedule(opt, warmup_steps=4)
    assert [round(constant.factor(s), 3) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    cosine = WarmupSchedule(torch.optim.SGD([param], lr=1.0), warmup_steps=2, decay="cosine", total_steps=12)
    assert (
        cosine.factor(1) == 1.0 and cosine.factor(7) == pytest.approx(0.5) and cosine.factor(12) == pytest.approx(0.0)
    )
    assert opt.param_groups[0]["lr"] == 0.25  # the first step already trains


def test_carry_state_round_trip_is_plain(backbone_path):
    module = make_module(backbone_path)
    batch = make_data().train_stream().batch(0)
    module.refill(batch)
    state = module.carry.state()
    assert all(v is None or isinstance(v, (torch.Tensor, list)) for v in state.values())
    back = SlotCarry.from_state(state, torch.device("cpu"))
    assert back.ids == batch.ids and torch.equal(back.encoded.features, module.carry.encoded.features)
    assert bool(back.halted.any()) is False and torch.equal(back.y, module.carry.y)


def test_ema_copy_shares_the_frozen_backbone(backbone_path):
    module = make_module(backbone_path)
    module.refill(make_data().train_stream().batch(0))
    twin = copy.deepcopy(module)
    assert twin.model.backbone is module.model.backbone  # never copied, never averaged
    assert twin.carry is None and module.carry is not None
    assert twin.model.answer_head.weight is not module.model.answer_head.weight
    assert torch.equal(twin.model.answer_head.weight, module.model.answer_head.weight)
