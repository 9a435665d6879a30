"""HybridReasonerModule with a real tiny backbone and a real Trainer: the persistent carry, halting,
backbone passes per example, evaluation, EMA, checkpoints, the puzzle-ID table and the NaN stop."""

from __future__ import annotations

import math
import os

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from test_training_common import TASK, backbone_path, make_data, make_module, make_trainer  # noqa: F401

from hybrid_reason.training.module import HybridReasonerModule

pytestmark = pytest.mark.usefixtures("one_thread")


class Record(Callback):
    """Records, per training step, the carry's example ids, step counts and the halted flags after it."""

    def __init__(self):
        self.ids, self.steps, self.halted = [], [], []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        c = pl_module.carry
        self.ids.append(list(c.ids))
        self.steps.append(c.steps.tolist())
        self.halted.append(c.halted.tolist())


def test_slots_persist_until_they_halt_and_only_refills_are_encoded(backbone_path, tmp_path):
    module, record = make_module(backbone_path, halt_max_steps=3, halt_exploration_prob=0.0), Record()
    trainer = make_trainer(str(tmp_path), max_steps=7, callbacks=[record], limit_val_batches=0, log_every_n_steps=1)
    trainer.fit(module, make_data(batch_size=6))
    # The halt head starts at bias -5: every slot runs N_sup = 3 steps, then takes the next batch's example.
    assert record.steps == [[1] * 6, [2] * 6, [3] * 6, [1] * 6, [2] * 6, [3] * 6, [1] * 6]
    assert record.ids[0] == record.ids[1] == record.ids[2] != record.ids[3]
    # 7 steps x 6 slots, 3 fillings of 6 slots: one backbone pass per example, 1/N_sup per slot-step.
    counters = dict(module.counters)
    assert 0 < counters.pop("backbone_runs") <= 18  # the rest came from the backbone's feature cache
    assert counters == {"encoded_rows": 18, "admitted": 18, "slot_steps": 42, "finished": 12}
    metrics = trainer.callback_metrics
    assert metrics["train/encodes_per_example"] == 1.0
    assert metrics["train/encodes_per_slot_step"] == pytest.approx(18 / 42)


def test_refill_replaces_only_halted_slots(backbone_path):
    module = make_module(backbone_path)
    stream = make_data(batch_size=6).train_stream()
    module.refill(stream.batch(0))
    before = module.carry.encoded.features.clone()
    module.carry.halted = torch.tensor([True, False, False, True, False, False])
    module.carry.steps = torch.full((6,), 2)
    new = stream.batch(1)
    module.refill(new)
    c = module.carry
    assert c.ids[0] == new.ids[0] and c.ids[3] == new.ids[3] and c.ids[1] != new.ids[1]
    assert torch.equal(c.encoded.features[[1, 2, 4, 5]], before[[1, 2, 4, 5]])
    assert not torch.equal(c.encoded.features[0], before[0])
    assert c.steps.tolist() == [0, 2, 2, 0, 2, 2] and not c.halted.any()
    fresh = module.model.initial_carry(1)
    assert torch.equal(c.y[0], fresh.y[0]) and torch.equal(c.labels[3], new.labels[3])
    assert module.counters["encoded_rows"] == 8


def test_a_positive_halt_logit_halts_and_exploration_delays_it(backbone_path, tmp_path):
    module, record = make_module(backbone_path, halt_max_steps=4, halt_exploration_prob=0.5), Record()
    with torch.no_grad():
        module.model.halt_head.bias.fill_(5.0)  # every slot wants to halt at once
    trainer = make_trainer(str(tmp_path), max_steps=6, callbacks=[record], limit_val_batches=0)
    trainer.fit(module, make_data(batch_size=16))
    first = record.halted[0]
    assert any(first) and not all(first)  # most halt after one step; explorers must go on (min 2..4 steps)
    for halted, steps in zip(record.halted, record.steps):
        assert all(h or s < 4 for h, s in zip(halted, steps))  # nobody runs past N_sup


def test_evaluation_runs_all_steps_on_ema_weights(backbone_path, tmp_path):
    module = make_module(backbone_path, halt_max_steps=3)
    trainer = make_trainer(str(tmp_path), max_steps=4)
    trainer.fit(module, make_data())
    metrics = trainer.callback_metrics
    for key in ("exact_acc", "exact_acc_at_halt", "cell_acc", "steps", "halt_acc", "loss"):
        assert math.isfinite(float(metrics[f"val/{key}"])), key
    assert float(metrics["val/steps"]) == 3.0  # no halt logit is > 0 yet: every example runs N_sup steps
    results = trainer.validate(module, make_data(), verbose=False)[0]
    assert 0.0 <= results["val/cell_acc"] <= 1.0
    module.eval_steps = 5  # the caller may ask for more steps than N_sup
    assert trainer.test(module, make_data(), verbose=False)[0]["test/steps"] == 5.0


def test_checkpoint_holds_ema_weights_and_no_backbone(backbone_path, tmp_path):
    module = make_module(backbone_path)
    trainer = make_trainer(str(tmp_path), max_steps=4)
    trainer.fit(module, make_data())
    ckpt = torch.load(os.path.join(tmp_path, "ckpt", "last.ckpt"), weights_only=True)
    assert not any("backbone" in k for k in ckpt["state_dict"])
    assert ckpt["state_dict"].keys() == ckpt["current_model_state"].keys()
    ema, current = (
        ckpt["state_dict"]["model.answer_head.weight"],
        ckpt["current_model_state"]["model.answer_head.weight"],
    )
    assert not torch.equal(ema, current)  # EMA (0.9) lags the trained weights
    assert torch.equal(ema, module.model.answer_head.weight)  # after fit the module holds the EMA weights
    assert ckpt["hybrid_reasoner_config"]["answer_vocab_size"] == 6 and ckpt["carry"]["world_size"] == 1
    assert ckpt["hyper_parameters"]["core"]["d_model"] == 32  # plain data, no pickled objects


def test_puzzle_ids_are_trained_apart_from_the_dense_optimizer(backbone_path, tmp_path):
    module = make_module(backbone_path, num_puzzle_ids=256, puzzle_prefix_len=2, puzzle_lr=0.05)
    trainer = make_trainer(str(tmp_path), max_steps=2, limit_val_batches=0)
    trainer.fit(module, make_data())
    (group,) = trainer.optimizers[0].param_groups  # the table is a buffer, trained by sign-SGD (test_trm_faithful)
    assert group["initial_lr"] == 3e-3 and all(p is not module.model.puzzle_emb.weight for p in group["params"])
    assert module.model.puzzle_emb.weight.abs().sum() > 0  # zero-initialised, then trained
    assert module.carry.puzzle_ids.min() >= 1  # every training row has an ID (0 = unknown)


def test_too_small_puzzle_table_is_refused(backbone_path, tmp_path):
    module = make_module(backbone_path, num_puzzle_ids=8, puzzle_prefix_len=2)
    with pytest.raises(ValueError, match="model.num_puzzle_ids=8 is too small"):
        make_trainer(str(tmp_path), max_steps=1).fit(module, make_data())


class Poison(Callback):
    """Makes the weights NaN before step ``at``, as a diverged run would."""

    def __init__(self, at: int):
        self.at = at

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.at:
            with torch.no_grad():
                pl_module.model.answer_head.weight.fill_(float("nan"))


def test_a_nan_loss_stops_with_the_step_and_example_ids(backbone_path, tmp_path):
    module = make_module(backbone_path)
    trainer = make_trainer(str(tmp_path), max_steps=10, callbacks=[Poison(at=5)], limit_val_batches=0)
    with pytest.raises(FloatingPointError, match="non-finite training loss nan at global step 5") as err:
        trainer.fit(module, make_data())
    assert all(i in str(err.value) for i in module.carry.ids) and "sort/train/" in str(err.value)
    ckpt = torch.load(os.path.join(tmp_path, "ckpt", "last.ckpt"), weights_only=True)
    assert ckpt["global_step"] == 4
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values())


def test_task_mismatch_between_data_and_model_is_refused(backbone_path, tmp_path):
    module = make_module(backbone_path)
    other = make_data()
    other.task_spec = dict(TASK, max_value=7)
    with pytest.raises(ValueError, match="differs from model.task"):
        make_trainer(str(tmp_path), max_steps=1).fit(module, other)


def test_lora_training_is_refused_clearly(backbone_path):
    from hybrid_reason.backbone import BackboneSpec

    with pytest.raises(ValueError, match="model.backbone.lora_rank"):
        HybridReasonerModule(task=TASK, backbone=BackboneSpec(name=backbone_path, lora_rank=4))


def test_dataloader_workers_change_nothing_but_speed(backbone_path, tmp_path):
    weights = []
    for workers in (0, 2):
        module = make_module(backbone_path)
        make_trainer(str(tmp_path / str(workers)), max_steps=4, limit_val_batches=0).fit(
            module, make_data(num_workers=workers)
        )
        weights.append(module.model.state_dict())
    for key, value in weights[0].items():
        assert torch.equal(value, weights[1][key]), key
