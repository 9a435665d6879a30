"""The training command line: ``hybrid-reason fit|validate|test --config recipes/X.yaml``
(``hybrid-reason export CKPT OUT`` lives in ``export.py``).

``fit``/``validate``/``test`` are LightningCLI subcommands: a recipe gives ``trainer``, ``model``,
``data``, ``ema`` and ``checkpoint`` sections, and any key can be overridden on the command line
(``--model.core.n 6``). The task is named once, in ``data.task``; the model receives it through a
link, so its answer vocabulary and slot count always match the data.

Bad input stops the command in one line naming the key, before anything is written: unknown keys and
wrong types at parse time (jsonargparse); bad values of ``model.core``/``model.backbone``/``data``, a
backbone name that cannot be found, ``hidden_layer`` out of range, a bad ``model.init_from`` folder
and ``trainer.default_root_dir`` pointing at a file before any model loads; a bad ``--ckpt_path`` and
a task whose data does not load before the run folder is created. ``--ckpt_path last`` means the
newest ``<default_root_dir>/version_N/checkpoints/last.ckpt`` (or ``checkpoint.dirpath/last.ckpt``),
and is refused when there is none, rather than silently training from step 0.

Defaults added here: EMA of the weights (``ema.decay``), a ModelCheckpoint keeping ``last.ckpt``, a
Rich progress bar counting steps out of ``trainer.max_steps``, CSV logs (plus TensorBoard when it
is installed), and, after ``fit``, the EMA model exported as a Hugging Face folder
``<log dir>/hf_model``.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time
from typing import Any

import torch
from jsonargparse import Namespace
from lightning.pytorch.callbacks import EMAWeightAveraging, ModelCheckpoint, RichProgressBar
from lightning.pytorch.callbacks.progress import ProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import CSVLogger, Logger

from ..backbone.loading import BackboneSpec, check_backbone
from ..errors import HybridReasonError
from ..model.core import CoreConfig
from ..model.modeling import check_saved_model
from ..utils.atomic_io import write_dir_atomically
from .data import TaskDataModule
from .export import check_folder_path, export_main, find_last_checkpoint, read_checkpoint
from .module import HybridReasonerModule, check_pretrained

__all__ = ["EXPORT_FOLDER", "HybridReasonCLI", "StepProgressBar", "export_main", "main", "parse_recipe"]

EXPORT_FOLDER = "hf_model"


def default_loggers(root: str) -> list[Logger]:
    """CSV logs under ``root/version_N``, and TensorBoard logs beside them when tensorboard is installed."""
    csv = CSVLogger(save_dir=root, name="")
    loggers: list[Logger] = [csv]
    if importlib.util.find_spec("tensorboard") or importlib.util.find_spec("tensorboardX"):
        from lightning.pytorch.loggers import TensorBoardLogger

        loggers.append(TensorBoardLogger(save_dir=root, name="", version=csv.version, sub_dir="tensorboard"))
    return loggers


def _serves_puzzle_ids(num_puzzle_ids: int) -> bool:
    """Whether the data module serves puzzle IDs: exactly when the model has an ID table."""
    return num_puzzle_ids > 0


class HybridReasonCLI(LightningCLI):
    """LightningCLI for HybridReasonerModule + TaskDataModule with this project's defaults."""

    look_up_backbone = True  # resolve the backbone and check hidden_layer before instantiation

    def __init__(self, args: list[str] | None = None, run: bool = True, **kwargs: Any):
        kwargs.setdefault("seed_everything_default", 0)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        super().__init__(
            HybridReasonerModule, TaskDataModule, args=args, run=run, auto_configure_optimizers=False, **kwargs
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """The task link, the EMA and checkpoint sections, and defaults for an endless training stream."""
        parser.add_argument(
            "--torch_threads",
            type=int | None,
            default=None,
            help="torch.set_num_threads before anything is built (null: torch's default)",
        )
        parser.link_arguments("data.task", "model.task")
        # a model with TRM's puzzle-ID table needs its data to serve the IDs
        parser.link_arguments("model.num_puzzle_ids", "data.puzzle_ids", compute_fn=_serves_puzzle_ids)
        parser.add_lightning_class_args(EMAWeightAveraging, "ema")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "ema.decay": 0.999,
                "ema.use_buffers": False,  # average parameters only: the puzzle-ID table (a buffer) is not averaged, as in TRM
                "checkpoint.save_last": True,
                "checkpoint.save_top_k": 0,
                "trainer.default_root_dir": "runs",
                "trainer.max_steps": 10_000,
                "trainer.val_check_interval": 1000,
                "trainer.check_val_every_n_epoch": None,
            }
        )

    def before_instantiate_classes(self) -> None:
        """Set the thread count, then check every recipe value that can be checked before anything
        heavy is built (see the module docstring); a bad one is a ``HybridReasonError`` naming its key."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        if config.get("torch_threads"):
            torch.set_num_threads(config["torch_threads"])
        check_folder_path(config["trainer"].get("default_root_dir") or "runs", "trainer.default_root_dir")
        model = config["model"]
        for key, cls in (("core", CoreConfig), ("backbone", BackboneSpec)):
            try:
                cls(**_plain(model.get(key)))
            except HybridReasonError as err:
                raise HybridReasonError(f"model.{err}") from None
        try:
            TaskDataModule(**_plain(config["data"]))  # the task and the data options, checked by their owner
            if model.get("init_from"):
                _check_init_from(model["init_from"], config["data"]["task"])
        except ValueError as err:  # the recipe's own checks (HybridReasonError included)
            raise HybridReasonError(str(err)) from None
        if self.look_up_backbone:
            check_backbone(BackboneSpec(**_plain(model.get("backbone"))), key="model.backbone")

    def instantiate_trainer(self, **kwargs: Any):
        """The Trainer, with CSV (+TensorBoard) loggers and a step progress bar unless the recipe says otherwise."""
        config = self._get(self.config_init, "trainer", default={})
        if config.get("logger") in (None, True):
            kwargs["logger"] = default_loggers(config.get("default_root_dir") or "runs")
        callbacks = list(config.get("callbacks") or [])
        if config.get("enable_progress_bar") is not False and not any(isinstance(c, ProgressBar) for c in callbacks):
            kwargs["callbacks"] = [*callbacks, StepProgressBar()]
        return super().instantiate_trainer(**kwargs)

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Parse, then resolve and read ``--ckpt_path`` before Lightning loads its hyperparameters: a
        missing, damaged or foreign checkpoint is one line naming the path."""
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        if subcommand:
            self.config[subcommand]["ckpt_path"] = checked_ckpt_path(self.config[subcommand])

    def before_fit(self) -> None:
        """Load the data before the run folder is created; start the clock."""
        self._load_splits("fit")
        self._fit_start = time.perf_counter()

    def before_validate(self) -> None:
        """Load the validation split before anything is written."""
        self._load_splits("validate")

    def before_test(self) -> None:
        """Load the test split before anything is written."""
        self._load_splits("test")

    def _load_splits(self, stage: str) -> None:
        """Load the splits ``stage`` reads, so that bad task data fails here, in one line, before the
        logger or the config saver write anything (the task keeps them for the run)."""
        dm = self.datamodule
        if stage == "fit":
            dm.rows("train")
        if stage != "fit" or self.trainer.limit_val_batches != 0:
            dm.rows(*dm.splits["test" if stage == "test" else "validate"])

    def after_fit(self) -> None:
        """Export the EMA model as a Hugging Face folder and say where it is."""
        trainer = self.trainer
        out = os.path.join(trainer.log_dir or trainer.default_root_dir, EXPORT_FOLDER)
        if trainer.is_global_zero and not trainer.interrupted:
            write_dir_atomically(out, self.model.model.save_pretrained)
            print(
                f"hybrid-reason: {fit_summary(trainer.global_step, time.perf_counter() - self._fit_start, trainer.callback_metrics)}"
            )
            print(f"hybrid-reason: exported the EMA model to {out} (AutoModel.from_pretrained({out!r}))")


def fit_summary(steps: int, seconds: float, metrics: dict) -> str:
    """``N steps in S s`` and, when there are any, the run's validation and backbone metrics."""
    keys = ("val/", "train/encodes", "train/backbone")
    shown = {k: float(v) for k, v in metrics.items() if k.startswith(keys)}
    summary = ", ".join(f"{k}={v:.4g}" for k, v in sorted(shown.items()))
    return f"{steps} steps in {seconds:.0f} s" + (f"; {summary}" if summary else "")


def checked_ckpt_path(config: Namespace) -> str | None:
    """A subcommand's ``ckpt_path``, read as a hybrid_reason checkpoint; ``last`` becomes the run's
    last checkpoint (``find_last_checkpoint``), and is refused when there is none."""
    ckpt = config.get("ckpt_path")
    if ckpt == "last":
        root = config["trainer"].get("default_root_dir") or "runs"
        ckpt = find_last_checkpoint(root, config["checkpoint"].get("dirpath"))
        if ckpt is None:
            raise HybridReasonError(
                f"--ckpt_path last: no last.ckpt under {root}/version_*/checkpoints; "
                "give a checkpoint's path, or leave --ckpt_path out"
            )
        print(f"hybrid-reason: --ckpt_path last is {ckpt}")
    if ckpt is not None and ckpt not in ("best", "hpc") and not str(ckpt).startswith("registry"):
        read_checkpoint(ckpt)
    return ckpt


def _plain(section: Any) -> dict:
    """A recipe section (jsonargparse Namespace, dict or None) as a plain dict of its values."""
    if section is None:
        return {}
    return section.as_dict() if isinstance(section, Namespace) else dict(section)


def _check_init_from(path: str, task: dict) -> None:
    """``model.init_from``: a complete saved model folder (weights and config agree) for the recipe's task."""
    try:
        check_saved_model(path)
    except HybridReasonError as err:
        raise HybridReasonError(f"model.init_from: {err}") from None
    check_pretrained(path, task)


class StepProgressBar(RichProgressBar):
    """Rich progress bar of the optimizer steps out of ``trainer.max_steps``. The training stream is
    endless, so Lightning's epoch counter ("Epoch 0/-2") says nothing; the logger's ``v_num`` is dropped."""

    @property
    def total_train_batches(self) -> int | float:
        """``trainer.max_steps`` when it is set (else Lightning's count)."""
        max_steps = self.trainer.max_steps
        return max_steps if max_steps and max_steps > 0 else super().total_train_batches

    def _get_train_description(self, current_epoch: int) -> str:
        """Lightning's description of the training bar: "Training" (the columns show step/max_steps)."""
        return f"{'Training':{len(self.validation_description)}}"

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        """Advance the bar to the global step (Lightning would show the batch index of the epoch)."""
        super().on_train_batch_end(trainer, pl_module, outputs, batch, trainer.global_step - 1)

    def get_metrics(self, trainer, pl_module) -> dict:
        """The progress-bar metrics without ``v_num``."""
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        return items


class _ParseOnly(HybridReasonCLI):
    """Parses and checks a recipe, instantiates nothing (and loads no backbone config)."""

    look_up_backbone = False

    def instantiate_classes(self) -> None:
        """Nothing to build."""


def parse_recipe(path: str, *overrides: str):
    """A recipe parsed and checked as ``fit`` would (types, unknown keys, values, the task), with no
    model, data or trainer built and the backbone not looked up: the jsonargparse Namespace."""
    return _ParseOnly(args=["--config", path, *overrides], run=False).config


def main(argv: list[str] | None = None) -> HybridReasonCLI:
    """``hybrid-reason fit|validate|test [--config recipe.yaml] [--key value ...]``. User errors raise
    ``HybridReasonError`` (the ``hybrid-reason`` entry point prints them in one line)."""
    if argv is not None and list(argv) == sys.argv[1:]:
        argv = None  # the command line itself: let LightningCLI read sys.argv (no both-given warning)
    return HybridReasonCLI(args=argv)


if __name__ == "__main__":
    main()
