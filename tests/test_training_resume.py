"""A run that crashes mid-way and resumes from last.ckpt ends with exactly the weights of an unbroken run."""

from __future__ import annotations

import csv
import os

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger
from test_training_common import make_data, make_module, make_trainer

pytestmark = pytest.mark.usefixtures("one_thread")

STEPS = 10


class Crash(Callback):
    """Kills training (an exception, as a crash or a pre-emption would) after ``at`` optimizer steps."""

    def __init__(self, at: int):
        self.at = at

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.at:
            raise RuntimeError("simulated crash")


def final_state(trainer: pl.Trainer, module) -> dict[str, torch.Tensor]:
    """The trained weights, the EMA weights and the optimizer moments at the end of a run."""
    ema = next(c for c in trainer.callbacks if type(c).__name__ == "EMAWeightAveraging")
    state = {f"weights.{k}": v.clone() for k, v in module.model.state_dict().items()}
    state |= {f"ema.{k}": v.clone() for k, v in ema._average_model.module.model.state_dict().items()}
    for i, s in enumerate(trainer.optimizers[0].state.values()):
        state |= {f"adam.{i}.exp_avg": s["exp_avg"].clone(), f"adam.{i}.exp_avg_sq": s["exp_avg_sq"].clone()}
    state["lr"] = torch.tensor(trainer.optimizers[0].param_groups[0]["lr"])
    return state


def logged_after(root: str, step: int) -> dict[tuple[int, str], float]:
    """{(step, name): value} of the metrics a CSVLogger wrote under ``root`` after ``step``, but timings and
    backbone passes (the feature cache is not in the checkpoint: a resumed run starts with it empty)."""
    with open(os.path.join(root, "version_0", "metrics.csv")) as f:
        rows = list(csv.DictReader(f))
    skip = lambda k: k == "train/examples_per_s" or k.startswith("train/backbone")  # noqa: E731
    return {(int(row["step"]), k): float(v) for row in rows for k, v in row.items()
            if v != "" and "/" in k and not skip(k) and int(row["step"]) > step}  # fmt: skip


def build(backbone_path: str, staggered: bool, init_seed: int = 0):
    """The module: slots in lockstep (N_sup 3, none halts early), or halting at staggered steps (a positive
    halt bias with exploration) with resampler slots, so a checkpoint holds halted and live slots and
    every prompt token's state."""
    if not staggered:
        return make_module(backbone_path, init_seed=init_seed)
    module = make_module(backbone_path, init_seed, num_context_slots=2, halt_max_steps=4, halt_exploration_prob=0.5)
    with torch.no_grad():
        module.model.halt_head.bias.fill_(2.0)
    return module


@pytest.mark.parametrize("staggered", [False, True], ids=["lockstep", "staggered_with_resampler"])
def test_crash_and_resume_matches_an_unbroken_run(backbone_path, tmp_path, staggered):
    unbroken_module = build(backbone_path, staggered)
    unbroken = make_trainer(str(tmp_path / "a"), STEPS, logger=CSVLogger(str(tmp_path / "logs_a"), name=""))
    unbroken.fit(unbroken_module, make_data())
    want = final_state(unbroken, unbroken_module)

    crashed = make_trainer(str(tmp_path / "b"), STEPS, callbacks=[Crash(at=5)])
    with pytest.raises(RuntimeError, match="simulated crash"):
        crashed.fit(build(backbone_path, staggered), make_data())
    last = str(tmp_path / "b" / "ckpt" / "last.ckpt")
    ckpt = torch.load(last, weights_only=True)
    assert ckpt["global_step"] == 4  # saved every 2 steps; step 5 was lost, the slots are mid-life
    if staggered:  # halted slots (stored without features or states) beside live ones
        assert 0 < int(ckpt["carry"]["ranks"][0]["halted"].sum()) < 6

    resumed_module = build(
        backbone_path, staggered, init_seed=123
    )  # other initial weights: only the checkpoint may matter
    resumed = make_trainer(str(tmp_path / "b"), STEPS, logger=CSVLogger(str(tmp_path / "logs_b"), name=""))
    resumed.fit(resumed_module, make_data(), ckpt_path=last, weights_only=True)
    got = final_state(resumed, resumed_module)

    assert resumed.global_step == unbroken.global_step == STEPS
    cache_dependent = ("backbone_runs", "real_tokens", "padded_tokens")  # the feature cache restarts empty
    same = lambda counters: {k: v for k, v in counters.items() if k not in cache_dependent}  # noqa: E731
    assert same(resumed_module.counters) == same(unbroken_module.counters)
    assert got.keys() == want.keys()
    for key in want:
        assert torch.equal(got[key], want[key]), key
    assert os.path.isfile(str(tmp_path / "b" / "ckpt" / "last.ckpt"))
    # The metrics it logs after the resume are the unbroken run's (windows of 2 steps, checkpoints every 2).
    want_logged, got_logged = logged_after(str(tmp_path / "logs_a"), 4), logged_after(str(tmp_path / "logs_b"), 4)
    assert {k for _, k in want_logged} >= {
        "train/exact_acc",
        "train/steps",
        "train/encodes_per_example",
        "val/cell_acc",
    }
    assert got_logged == want_logged
