"""The training command line: ``hybrid-reason fit|validate|test --config recipes/X.yaml`` and
``hybrid-reason export CKPT OUT``.

``fit``/``validate``/``test`` are LightningCLI subcommands: a recipe gives ``trainer``, ``model``,
``data``, ``ema`` and ``checkpoint`` sections, and any key can be overridden on the command line
(``--model.core.n 6``). The task is named once, in ``data.task``; the model receives it through a
link, so its answer vocabulary and slot count always match the data. Unknown keys, wrong types and
bad task options stop the command before any model loads, with the key named.

Defaults added here: EMA of the weights (``ema.decay``), a ModelCheckpoint keeping ``last.ckpt``, a
Rich progress bar, CSV logs (plus TensorBoard when it is installed), and, after ``fit``, the EMA
model exported as a Hugging Face folder ``<log dir>/hf_model``.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
from typing import Any, Optional

import torch
from lightning.pytorch.callbacks import EMAWeightAveraging, ModelCheckpoint, RichProgressBar
from lightning.pytorch.callbacks.progress import ProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import CSVLogger, Logger

from ..utils.atomic_io import write_dir_atomically
from ..model.configuration import HybridReasonerConfig
from .data import TaskDataModule, task_from_spec
from ..model.modeling import HybridReasoner
from .module import HybridReasonerModule, check_pretrained

EXPORT_FOLDER = "hf_model"


def default_loggers(root: str) -> list[Logger]:
    """CSV logs under ``root/version_N``, and TensorBoard logs beside them when tensorboard is installed."""
    csv = CSVLogger(save_dir=root, name="")
    loggers: list[Logger] = [csv]
    if importlib.util.find_spec("tensorboard") or importlib.util.find_spec("tensorboardX"):
        from lightning.pytorch.loggers import TensorBoardLogger

        loggers.append(TensorBoardLogger(save_dir=root, name="", version=csv.version, sub_dir="tensorboard"))
    return loggers


class HybridReasonCLI(LightningCLI):
    """LightningCLI for HybridReasonerModule + TaskDataModule with this project's defaults."""

    def __init__(self, args: list[str] | None = None, run: bool = True, **kwargs: Any):
        kwargs.setdefault("seed_everything_default", 0)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        super().__init__(
            HybridReasonerModule, TaskDataModule, args=args, run=run, auto_configure_optimizers=False, **kwargs
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """The task link, the EMA and checkpoint sections, and defaults for an endless training stream."""
        parser.add_argument("--torch_threads", type=Optional[int], default=None,
                            help="torch.set_num_threads before anything is built (null: torch's default)")
        parser.link_arguments("data.task", "model.task")
        parser.add_lightning_class_args(EMAWeightAveraging, "ema")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "ema.decay": 0.999,
                "checkpoint.save_last": True,
                "checkpoint.save_top_k": 0,
                "trainer.default_root_dir": "runs",
                "trainer.max_steps": 10_000,
                "trainer.val_check_interval": 1000,
                "trainer.check_val_every_n_epoch": None,
            }
        )

    def before_instantiate_classes(self) -> None:
        """Set the thread count; check the task (and a pretrained model's fit to it) before anything
        heavy is built."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        if config.get("torch_threads"):
            torch.set_num_threads(config["torch_threads"])
        task = config["data"]["task"]
        try:
            task_from_spec(task)
            if config["model"].get("init_from"):
                check_pretrained(config["model"]["init_from"], task)
        except ValueError as err:
            self._parser(self.subcommand).error(str(err))

    def instantiate_trainer(self, **kwargs: Any):
        """The Trainer, with CSV (+TensorBoard) loggers and a Rich progress bar unless the recipe says otherwise."""
        config = self._get(self.config_init, "trainer", default={})
        if config.get("logger") in (None, True):
            kwargs["logger"] = default_loggers(config.get("default_root_dir") or "runs")
        callbacks = list(config.get("callbacks") or [])
        if config.get("enable_progress_bar") is not False and not any(isinstance(c, ProgressBar) for c in callbacks):
            kwargs["callbacks"] = [*callbacks, RichProgressBar()]
        return super().instantiate_trainer(**kwargs)

    def before_fit(self) -> None:
        """Start the clock of the run."""
        self._fit_start = time.perf_counter()

    def after_fit(self) -> None:
        """Export the EMA model as a Hugging Face folder and say where it is."""
        trainer = self.trainer
        out = os.path.join(trainer.log_dir or trainer.default_root_dir, EXPORT_FOLDER)
        if trainer.is_global_zero and not trainer.interrupted:
            write_dir_atomically(out, self.model.model.save_pretrained)
            keys = ("val/", "train/encodes", "train/backbone")
            metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(keys)}
            summary = ", ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items()))
            seconds = time.perf_counter() - self._fit_start
            print(f"hybrid-reason: {trainer.global_step} steps in {seconds:.0f} s; {summary}")
            print(f"hybrid-reason: exported the EMA model to {out} (AutoModel.from_pretrained({out!r}))")


class _ParseOnly(HybridReasonCLI):
    """Parses and checks a recipe, instantiates nothing."""

    def instantiate_classes(self) -> None:
        """Nothing to build."""


def parse_recipe(path: str, *overrides: str):
    """A recipe parsed and checked exactly as ``fit`` would (types, unknown keys, the task), with no
    model, data or trainer built: the jsonargparse Namespace."""
    return _ParseOnly(args=["--config", path, *overrides], run=False).config


def main(argv: list[str] | None = None) -> HybridReasonCLI:
    """``hybrid-reason fit|validate|test [--config recipe.yaml] [--key value ...]``."""
    if argv is not None and list(argv) == sys.argv[1:]:
        argv = None  # the command line itself: let LightningCLI read sys.argv (no both-given warning)
    return HybridReasonCLI(args=argv)


def export_checkpoint(checkpoint: str, out: str) -> str:
    """Write a training checkpoint's (EMA) weights as a Hugging Face folder loadable with AutoModel."""
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    if "hybrid_reasoner_config" not in ckpt:
        raise ValueError(f"{checkpoint} is not a hybrid_reason training checkpoint (no hybrid_reasoner_config)")
    model = HybridReasoner(HybridReasonerConfig.from_dict(ckpt["hybrid_reasoner_config"]))
    prefix = "model."
    state = {k[len(prefix) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    model.load_state_dict(state, strict=True)
    write_dir_atomically(out, model.save_pretrained)  # no half-written model folder, ever
    return out


def export_main(argv: list[str] | None = None) -> None:
    """``hybrid-reason export CKPT OUT``: the checkpoint's EMA weights as a HF model folder."""
    parser = argparse.ArgumentParser(prog="hybrid-reason export", description=export_checkpoint.__doc__)
    parser.add_argument("checkpoint", help="a .ckpt written by `hybrid-reason fit` (EMA weights are exported)")
    parser.add_argument("out", help="the folder to write (config.json + model.safetensors)")
    args = parser.parse_args(argv)
    try:
        path = export_checkpoint(args.checkpoint, args.out)
    except (OSError, ValueError) as err:
        sys.exit(f"hybrid-reason export: {err}")
    print(f"hybrid-reason: exported {args.checkpoint} to {path} (AutoModel.from_pretrained({path!r}))")


if __name__ == "__main__":
    main()
