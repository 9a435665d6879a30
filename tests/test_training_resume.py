"""A run that crashes mid-way and resumes from last.ckpt ends with exactly the weights of an unbroken run."""

from __future__ import annotations

import os

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from test_training_common import backbone_path, make_data, make_module, make_trainer  # noqa: F401

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


def test_crash_and_resume_matches_an_unbroken_run(backbone_path, tmp_path):
    unbroken_module = make_module(backbone_path)
    unbroken = make_trainer(str(tmp_path / "a"), STEPS)
    unbroken.fit(unbroken_module, make_data())
    want = final_state(unbroken, unbroken_module)

    crashed = make_trainer(str(tmp_path / "b"), STEPS, callbacks=[Crash(at=5)])
    with pytest.raises(RuntimeError, match="simulated crash"):
        crashed.fit(make_module(backbone_path), make_data())
    last = str(tmp_path / "b" / "ckpt" / "last.ckpt")
    assert torch.load(last, weights_only=True)["global_step"] == 4  # saved every 2 steps; step 5 was lost, the slots are mid-life

    resumed_module = make_module(backbone_path, init_seed=123)  # other initial weights: only the checkpoint may matter
    resumed = make_trainer(str(tmp_path / "b"), STEPS)
    resumed.fit(resumed_module, make_data(), ckpt_path=last, weights_only=True)
    got = final_state(resumed, resumed_module)

    assert resumed.global_step == unbroken.global_step == STEPS
    assert resumed_module.counters == unbroken_module.counters
    assert got.keys() == want.keys()
    for key in want:
        assert torch.equal(got[key], want[key]), key
    assert os.path.isfile(str(tmp_path / "b" / "ckpt" / "last.ckpt"))
