"""The shipped recipes parse and check without building anything, say what the issue asks of them,
and (slow) the CPU demo trains on the real SmolLM2 backbone."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from hybrid_reason.errors import HybridReasonError
from hybrid_reason.training.data import task_from_spec
from hybrid_reason.training.recipe_cli import main, parse_recipe

pytestmark = pytest.mark.usefixtures("one_thread")

RECIPES = Path(__file__).resolve().parent.parent / "recipes"
GPU_RECIPES = {
    "arc_qwen.yaml": "arc1",
    "arc2_qwen.yaml": "arc2",
    "sudoku_qwen.yaml": "sudoku",
    "maze_qwen.yaml": "maze",
}
BASES = {"arc2_qwen.yaml": "arc_qwen.yaml"}  # overlays, given after their base: --config base --config overlay


@pytest.fixture(autouse=True)
def bare_argv(monkeypatch):
    """The CLI is called with an argument list, as from Python: pytest's own argv is not its business."""
    monkeypatch.setattr(sys, "argv", ["hybrid-reason"])


def test_every_recipe_is_there():
    assert set(GPU_RECIPES) | {"demo_cpu.yaml"} <= {p.name for p in RECIPES.glob("*.yaml")}


@pytest.mark.parametrize("name", sorted(p.name for p in RECIPES.glob("*.yaml")))
def test_recipe_parses_and_its_task_builds(name):
    config = parse_recipe(str(RECIPES / name))
    task = task_from_spec(config.data.task)
    assert task.vocab_size >= 2 and task.num_slots >= 1
    assert config.checkpoint.save_last and config.ema.decay > 0
    assert config.trainer.check_val_every_n_epoch is None and isinstance(config.trainer.val_check_interval, int)


@pytest.mark.parametrize("name, task", sorted(GPU_RECIPES.items()))
def test_gpu_recipes_scale_trm_to_qwen(name, task):
    config = (
        parse_recipe(str(RECIPES / BASES[name]), "--config", str(RECIPES / name))
        if name in BASES
        else parse_recipe(str(RECIPES / name))
    )
    assert config.data.task["name"] == task
    assert config.model.backbone.name == "Qwen/Qwen2.5-0.5B-Instruct" and config.model.backbone.dtype == "bfloat16"
    assert config.trainer.accelerator == "gpu" and config.trainer.precision == "bf16-mixed"
    assert (config.model.core.d_model, config.model.core.num_layers, config.model.core.T) == (512, 2, 3)
    assert config.model.halt_max_steps == 16 and config.model.halt_exploration_prob == 0.1
    assert config.ema.decay == 0.999
    init = config.model.optimizer.init_args
    assert config.model.optimizer.class_path == "torch.optim.AdamW" and tuple(init.betas) == (0.9, 0.95)
    assert init.lr == 1e-4 and init.weight_decay == (0.1 if task.startswith("arc") else 1.0)
    assert config.model.lr_scheduler.init_args.warmup_steps == 2000
    if task.startswith("arc"):
        assert config.model.num_puzzle_ids == 0 and config.model.num_context_slots > 0  # task-ID-free
        assert config.data.task["translate"] is True  # augmentation on


def test_demo_recipe_is_offline_and_cpu():
    config = parse_recipe(str(RECIPES / "demo_cpu.yaml"))
    assert config.model.backbone.name == "smollm2-135m" and config.trainer.accelerator == "cpu"
    assert config.trainer.precision == "32-true" and config.trainer.devices == 1
    assert config.model.backbone.dtype == "auto"  # float32 on this CPU


def test_overrides_and_bad_keys():
    config = parse_recipe(str(RECIPES / "demo_cpu.yaml"), "--model.core.n", "6")
    assert config.model.core.n == 6
    with pytest.raises(SystemExit):
        parse_recipe(str(RECIPES / "demo_cpu.yaml"), "--model.core.zzz", "6")
    with pytest.raises(HybridReasonError, match=r"^model.core.n must be an integer >= 1, got 0$"):
        parse_recipe(str(RECIPES / "demo_cpu.yaml"), "--model.core.n", "0")
    with pytest.raises(HybridReasonError, match=r"^model.backbone.max_batch_tokens must be an integer >= 1, got 0$"):
        parse_recipe(str(RECIPES / "demo_cpu.yaml"), "--model.backbone.max_batch_tokens", "0")


@pytest.mark.slow
def test_demo_recipe_trains_briefly_on_smollm2(tmp_path, capsys):
    """The demo for 150 steps (about a minute): one backbone pass per example, learning, an export."""
    cli = main([
        "fit", "--config", str(RECIPES / "demo_cpu.yaml"), "--trainer.max_steps", "150",
        "--trainer.val_check_interval", "150", "--checkpoint.every_n_train_steps", "150",
        "--trainer.default_root_dir", str(tmp_path), "--trainer.enable_progress_bar", "false",
    ])  # fmt: skip
    metrics = cli.trainer.callback_metrics
    assert float(metrics["train/encodes_per_example"]) == 1.0
    assert float(metrics["train/backbone_runs_per_example"]) <= 1.0
    chance = 1 / cli.model.task.vocab_size
    assert float(metrics["val/cell_acc"]) > chance + 0.2
    folder = tmp_path / "version_0" / "hf_model"
    assert f"exported the EMA model to {folder}" in capsys.readouterr().out
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(folder))
    assert torch.equal(model.answer_head.weight, cli.model.model.answer_head.weight)


def test_a_model_with_a_puzzle_id_table_gets_data_that_serves_puzzle_ids():
    assert parse_recipe(str(RECIPES / "demo_cpu.yaml"), "--model.num_puzzle_ids", "12").data.puzzle_ids is True
    assert parse_recipe(str(RECIPES / "demo_cpu.yaml")).data.puzzle_ids is False
