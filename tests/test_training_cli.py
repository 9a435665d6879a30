"""The training CLI end to end on a tiny real backbone: fit from a recipe with overrides, export,
AutoModel.from_pretrained in a fresh process, validate/test/resume from checkpoints, and recipe
errors that stop before any model loads."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import yaml
from test_training_common import TASK

from hybrid_reason import cli
from hybrid_reason.errors import HybridReasonError
from hybrid_reason.model.configuration import HybridReasonerConfig
from hybrid_reason.model.modeling import HybridReasoner
from hybrid_reason.training.recipe_cli import export_main, fit_summary, main

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def bare_argv(monkeypatch):
    """The CLI is called with an argument list, as from Python: pytest's own argv is not its business."""
    monkeypatch.setattr(sys, "argv", ["hybrid-reason"])


def write_recipe(path, backbone: str, root: str, **changes) -> str:
    """A tiny CPU recipe (the demo's shape at toy size)."""
    recipe = {
        "seed_everything": 0,
        "trainer": {"accelerator": "cpu", "devices": 1, "max_steps": 6, "val_check_interval": 3,
                    "limit_val_batches": 1, "num_sanity_val_steps": 0, "log_every_n_steps": 2,
                    "enable_progress_bar": False, "enable_model_summary": False, "default_root_dir": root},
        "model": {"backbone": {"name": backbone}, "core": {"d_model": 32, "num_heads": 2, "num_layers": 1, "n": 2, "T": 2},
                  "halt_max_steps": 3,
                  "optimizer": {"class_path": "torch.optim.AdamW", "init_args": {"lr": 3e-3, "betas": [0.9, 0.95]}},
                  "lr_scheduler": {"class_path": "hybrid_reason.training.schedule.WarmupSchedule", "init_args": {"warmup_steps": 2}}},
        "data": {"task": TASK, "batch_size": 6},
        "ema": {"decay": 0.9},
        "checkpoint": {"every_n_train_steps": 3},
    }  # fmt: skip
    for key, value in changes.items():
        section, name = key.split("__")
        recipe[section][name] = value
    path.write_text(yaml.safe_dump(recipe))
    return str(path)


def test_fit_exports_a_model_that_loads_in_a_new_process(backbone_path, tmp_path, capsys):  # noqa: F811
    recipe = write_recipe(tmp_path / "tiny.yaml", backbone_path, str(tmp_path / "runs"))
    cli = main(["fit", "--config", recipe, "--model.core.n", "3"])
    assert cli.model.model.config.core["n"] == 3  # the command-line override reached the model
    out = capsys.readouterr().out
    folder = str(tmp_path / "runs" / "version_0" / "hf_model")
    assert f"exported the EMA model to {folder}" in out and "val/exact_acc=" in out
    ckpt = torch.load(tmp_path / "runs" / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)
    ema = ckpt["state_dict"]["model.answer_head.weight"]
    code = (
        "import sys, torch, hybrid_reason\n"
        "from transformers import AutoModel\n"
        "model = AutoModel.from_pretrained(sys.argv[1])\n"
        "out = model(texts=['Sort: 3 1 2\\nSorted:'], slot_spans=[[(6, 7), (8, 9), (10, 11), None]])\n"
        "print(type(model).__name__, model.config.task['name'], tuple(out.logits.shape))\n"
        "torch.save(model.answer_head.weight, sys.argv[2])\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, folder, str(tmp_path / "w.pt")],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=os.getcwd()),
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "HybridReasoner sort (1, 4, 6)" in proc.stdout
    assert torch.equal(torch.load(tmp_path / "w.pt", weights_only=True), ema)  # the EMA weights were exported


def test_validate_test_resume_and_export_from_a_checkpoint(backbone_path, tmp_path, capsys):  # noqa: F811
    recipe = write_recipe(tmp_path / "tiny.yaml", backbone_path, str(tmp_path / "runs"))
    main(["fit", "--config", recipe])
    last = str(tmp_path / "runs" / "version_0" / "checkpoints" / "last.ckpt")
    val = main(["validate", "--config", recipe, "--ckpt_path", last]).trainer.callback_metrics
    test = main(["test", "--config", recipe, "--ckpt_path", last]).trainer.callback_metrics
    assert "val/exact_acc" in val and float(test["test/steps"]) == 3.0

    resumed = main(["fit", "--config", recipe, "--ckpt_path", last, "--trainer.max_steps", "9"])
    assert resumed.trainer.global_step == 9

    export_main([last, str(tmp_path / "exported")])
    assert "exported" in capsys.readouterr().out
    config = json.loads((tmp_path / "exported" / "config.json").read_text())
    assert config["model_type"] == "hybrid_reason" and config["task"]["name"] == "sort"


def test_export_refuses_a_foreign_checkpoint(tmp_path):
    torch.save({"state_dict": {}}, tmp_path / "other.ckpt")
    with pytest.raises(HybridReasonError, match="not a hybrid_reason training checkpoint"):
        export_main([str(tmp_path / "other.ckpt"), str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_the_progress_bar_counts_steps_and_fit_ends_with_a_whole_sentence(backbone_path, tmp_path, capsys):  # noqa: F811
    recipe = write_recipe(
        tmp_path / "tiny.yaml",
        backbone_path,
        str(tmp_path / "runs"),
        trainer__enable_progress_bar=True,
        trainer__limit_val_batches=0,
        trainer__log_every_n_steps=50,
    )  # no validation, no metrics
    main(["fit", "--config", recipe, "--trainer.max_steps", "4"])
    out = capsys.readouterr().out
    bar = [line for line in out.splitlines() if line.startswith("Training")]
    assert bar and "4/4" in bar[-1] and "train/loss" in bar[-1], out
    assert "Epoch" not in out and "v_num" not in out and "/-2" not in out
    summary = [line for line in out.splitlines() if " steps in " in line]
    assert len(summary) == 1 and summary[0].startswith("hybrid-reason: 4 steps in ") and summary[0].endswith(" s")
    assert fit_summary(6, 228.2, {}) == "6 steps in 228 s"
    assert (
        fit_summary(6, 71, {"val/exact_acc": torch.tensor(0.5), "train/loss": 1.0})
        == "6 steps in 71 s; val/exact_acc=0.5"
    )


@pytest.mark.parametrize(
    "changes, args, named",
    [
        ({}, ["--model.core.depth", "3"], "depth"),  # unknown key on the command line
        ({"model__halting": 3}, [], "halting"),  # unknown key in the recipe
        ({}, ["--data.batch_size", "many"], "data.batch_size"),  # wrong type
        ({"model__halt_max_steps": "sixteen"}, [], "model.halt_max_steps"),  # wrong type in the recipe
        ({"data__task": dict(TASK, lenght=4)}, [], "lenght"),  # unknown task option
        ({"data__task": dict(TASK, name="sorting")}, [], "sorting"),  # unknown task
        ({"model__init_from": "SAVED"}, [], "answer_vocab_size"),  # a model of another vocabulary
        ({}, ["--model.core.T", "0"], "model.core.T"),  # a value out of range
    ],
)
def test_bad_recipes_fail_before_any_model_loads(tmp_path, capsys, changes, args, named):
    config = HybridReasonerConfig(
        core={"d_model": 8, "num_heads": 2, "num_layers": 1},
        task={"name": "sort"},
        answer_vocab_size=4,
        num_slots=4,
        backbone_hidden_size=8,
    )
    HybridReasoner(config).save_pretrained(tmp_path / "saved")  # a 4-value Sort: its vocabulary does not fit TASK's
    changes = {k: (str(tmp_path / "saved") if v == "SAVED" else v) for k, v in changes.items()}
    # The backbone does not exist: any error about it would mean a model started loading.
    recipe = write_recipe(tmp_path / "bad.yaml", str(tmp_path / "no-such-backbone"), str(tmp_path / "runs"), **changes)
    with pytest.raises(SystemExit) as exited:
        cli.main(["fit", "--config", recipe, *args])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and named in err and "no-such-backbone" not in err.split("error:")[-1]
    assert not (tmp_path / "runs").exists()
