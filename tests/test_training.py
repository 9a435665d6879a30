"""HybridReasonerModule with a real tiny backbone and a real Trainer: the persistent carry, halting,
backbone passes per example, evaluation, EMA, checkpoints, the puzzle-ID table and the NaN stop."""

from __future__ import annotations

import csv
import dataclasses
import functools
import math
import os
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger
from test_training_common import CORE, TASK, make_data, make_module, make_trainer

from hybrid_reason.errors import HybridReasonError
from hybrid_reason.training.data import TaskDataModule

ARC_SMALL = str(Path(__file__).parent / "fixtures" / "arc" / "small")

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
    real, padded = counters.pop("real_tokens"), counters.pop("padded_tokens")
    assert counters == {"encoded_rows": 18, "admitted": 18, "slot_steps": 42, "finished": 12,
                        "prompts_with_drops": 0, "demonstrations_dropped": 0}  # fmt: skip
    metrics = trainer.callback_metrics
    assert metrics["train/encodes_per_example"] == 1.0
    assert metrics["train/encodes_per_slot_step"] == pytest.approx(18 / 42)
    assert 0 < real <= padded and metrics["train/backbone_padded_per_real"] == pytest.approx(padded / real)
    assert metrics["train/backbone_real_tokens"] == real


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


def logged(root: str) -> list[dict[str, float]]:
    """The rows of a CSVLogger's metrics.csv under ``root`` (empty cells left out)."""
    with open(os.path.join(root, "version_0", "metrics.csv")) as f:
        return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)]


def test_training_metrics_are_means_over_the_slots_that_halted_in_each_window(backbone_path, tmp_path):
    module, record = make_module(backbone_path, halt_max_steps=4, halt_exploration_prob=0.5), Record()
    with torch.no_grad():
        module.model.halt_head.bias.fill_(5.0)  # halting at once, delayed by exploration: varied halting steps
    trainer = make_trainer(str(tmp_path), max_steps=8, callbacks=[record], limit_val_batches=0, log_every_n_steps=4,
                           logger=CSVLogger(str(tmp_path), name=""))  # fmt: skip
    trainer.fit(module, make_data(batch_size=16))
    windows = [row for row in logged(str(tmp_path)) if "train/steps" in row]
    assert len(windows) == 2
    for w, row in enumerate(windows):
        halted = [s for step in range(4 * w, 4 * w + 4) for s, h in zip(record.steps[step], record.halted[step]) if h]
        assert row["train/steps"] == pytest.approx(sum(halted) / len(halted))  # this window's halts only
        assert row["train/examples_per_s"] > 0
    assert windows[0]["train/steps"] != windows[1]["train/steps"]


def test_evaluation_metrics_are_means_over_all_examples_and_cells(backbone_path, tmp_path):
    module = make_module(backbone_path, halt_max_steps=3)
    trainer = make_trainer(str(tmp_path), max_steps=2, limit_val_batches=3)
    data = make_data(eval_batch_size=5)  # 16 validation rows: batches of 5, 5 and 5 (one row left out)
    results = trainer.validate(module, data, verbose=False)[0]
    batches = list(data.val_dataloader())[:3]
    right = cells = exact = examples = 0
    with torch.no_grad():
        for batch in batches:  # an independent oracle: the model's own forward, all steps
            *_, out = module.model.iterate(module.model.encode(batch.texts, batch.slot_spans), 3)
            mask = batch.labels != -100
            right += int(((out.logits.argmax(-1) == batch.labels) & mask).sum())
            cells, examples = cells + int(mask.sum()), examples + len(batch.ids)
            exact += int((((out.logits.argmax(-1) == batch.labels) | ~mask).all(-1)).sum())
    assert results["val/cell_acc"] == pytest.approx(right / cells)  # over cells, not a mean of batch means
    assert results["val/exact_acc"] == pytest.approx(exact / examples)
    assert results["val/steps"] == 3.0 and "val/exact_acc_step2" in results and "val/exact_acc_step4" not in results


def test_evaluation_runs_all_steps_on_ema_weights(backbone_path, tmp_path):
    module = make_module(backbone_path, halt_max_steps=3)
    trainer = make_trainer(str(tmp_path), max_steps=4)
    trainer.fit(module, make_data())
    metrics = trainer.callback_metrics
    for key in ("exact_acc", "exact_acc_at_halt", "cell_acc", "steps", "halt_acc", "loss"):
        assert math.isfinite(float(metrics[f"val/{key}"])), key
    assert float(metrics["val/steps"]) == 3.0  # no halt logit is > 0 yet: every example runs N_sup steps
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
    hparams = ckpt["hyper_parameters"]  # plain data, no pickled objects: the callables are described
    assert hparams["core"]["d_model"] == 32 and hparams["backbone"]["name"] == module.hparams.backbone["name"]
    assert hparams["optimizer"] == "test_training_common.sgd_adamw" and hparams["halt_max_steps"] == 3
    assert hparams["lr_scheduler"] == "test_training_common.short_warmup"


def test_hyperparameters_describe_a_recipe_optimizer_in_recipe_form(backbone_path):
    module = make_module(backbone_path, optimizer=functools.partial(torch.optim.AdamW, lr=0.01, betas=(0.9, 0.95)))
    want = {"class_path": "torch.optim.adamw.AdamW", "init_args": {"lr": 0.01, "betas": [0.9, 0.95]}}
    assert module.hparams["optimizer"] == want and module.hparams_initial["optimizer"] == want
    assert module.hparams["core"] == dataclasses.asdict(CORE)


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


def test_a_puzzle_table_without_puzzle_ids_in_the_data_is_refused(backbone_path, tmp_path):
    module = make_module(backbone_path, num_puzzle_ids=256, puzzle_prefix_len=2)
    with pytest.raises(HybridReasonError, match="data.puzzle_ids is false"):
        make_trainer(str(tmp_path), max_steps=1).fit(module, make_data(puzzle_ids=False))


class Batches(Callback):
    """Records every training batch."""

    def __init__(self):
        self.batches = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.batches.append(batch)


def test_demonstrations_dropped_to_the_prompt_budget_are_logged(backbone_path, tmp_path):
    task = {"name": "arc1", "source": ARC_SMALL, "max_tokens": 250}  # 2 of the 8 training prompts lose one pair
    module, seen = make_module(backbone_path, task=task, halt_max_steps=1), Batches()  # every slot refills every step
    trainer = make_trainer(str(tmp_path), max_steps=4, callbacks=[seen], limit_val_batches=0, log_every_n_steps=1,
                           logger=CSVLogger(str(tmp_path), name=""))  # fmt: skip
    trainer.fit(module, TaskDataModule(task=task, batch_size=4, num_workers=0))
    rows = logged(str(tmp_path))
    at_start = next(row for row in rows if "data/train_prompts_with_drops" in row)
    assert at_start["data/train_prompts_with_drops"] == 2 and at_start["data/train_demonstrations_dropped"] == 2
    assert at_start["data/train_queries_skipped"] == 0
    dropped = torch.cat([b.dropped for b in seen.batches])
    assert module.counters["demonstrations_dropped"] == int(dropped.sum()) > 0
    assert module.counters["prompts_with_drops"] == int((dropped > 0).sum())
    last = [row for row in rows if "train/demonstrations_dropped" in row][-1]
    assert last["train/demonstrations_dropped"] == int(dropped.sum())


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
