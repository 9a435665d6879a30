"""A suite's trained models: a recipe trained once per seed, each in a child process, exported, cached.

A suite system may name a training ``recipe`` and ``overrides`` (``fit`` flags) instead of a saved
``model``. For each seed the suite trains it with the project's own commands, in a child process (a
process boundary: evaluation never imports training):

    hybrid-reason fit --config RECIPE OVERRIDES... --seed_everything SEED --trainer.default_root_dir RUN
    hybrid-reason export RUN/version_N/checkpoints/last.ckpt RUN/model

``RUN`` is ``<runs>/<recipe name>-<key>/seed_<SEED>``, where the key hashes the recipe file's text and
the overrides. A ``RUN`` that already holds ``model/`` and ``training.json`` is reused as it is (the
report says so): delete it to train again. The key does not see the code, so a changed trainer needs a
fresh ``runs`` folder. ``training.json`` records the command, the steps, the training examples seen (the
examples admitted into the carry) and the wall time of the fit and export.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import HybridReasonError
from ..utils.atomic_io import write_json

MODEL, RECORD, LOG = "model", "training.json", "fit.log"
RESERVED = ("--config", "--seed_everything", "--trainer.default_root_dir")  # the suite sets these itself
_VERSION = re.compile(r"version_(\d+)$")


@dataclass
class TrainedRun:
    """One seed of a recipe system: its exported model folder and what training it cost."""

    folder: str  # the exported model folder (RUN/model)
    seed: int
    cached: bool  # True: found from an earlier suite run, not trained now
    training: dict[str, Any]


def override_flags(overrides: list[str], where: str) -> list[str]:
    """The overrides as argv (each item may hold a flag and its value: ``--model.core.T 1``); the flags
    the suite sets itself are refused, naming ``where``."""
    argv = [token for item in overrides for token in shlex.split(item)]
    for token in argv:
        if token.split("=", 1)[0] in RESERVED:
            raise HybridReasonError(f"{where}: {token.split('=', 1)[0]} is set by the suite; leave it out")
    return argv


def run_folder(root: str | Path, recipe: str, overrides: list[str], seed: int) -> Path:
    """``<root>/<recipe stem>-<hash of the recipe's text and the overrides>/seed_<seed>``."""
    text = Path(recipe).read_text(encoding="utf-8")
    key = hashlib.sha256(json.dumps([text, list(overrides)]).encode()).hexdigest()[:12]
    return Path(root) / f"{Path(recipe).stem}-{key}" / f"seed_{seed}"


def last_checkpoint(run: Path) -> Path | None:
    """``last.ckpt`` of the newest ``run/version_N`` (or ``run/checkpoints``, without a logger)."""
    found = [p for p in run.glob("version_*/checkpoints/last.ckpt") if _VERSION.match(p.parent.parent.name)]
    found.sort(key=lambda p: int(_VERSION.match(p.parent.parent.name).group(1)), reverse=True)
    plain = run / "checkpoints" / "last.ckpt"
    return found[0] if found else plain if plain.is_file() else None


def checkpoint_figures(ckpt: Path) -> dict[str, int]:
    """Steps and examples seen, from a training checkpoint's own counters (read as plain data)."""
    state = torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True)
    counters = state.get("training_counters", {})
    ranks = counters.get("ranks") if isinstance(counters.get("ranks"), list) else [counters]  # per rank, or one
    total = lambda key: sum(int(rank.get(key, 0)) for rank in ranks)  # noqa: E731
    return {
        "steps": int(state.get("global_step", 0)),
        "examples_seen": total("admitted"),  # examples that entered the carry, on all ranks
        "slot_steps": total("slot_steps"),  # example x supervision-step forward/backward passes
    }


def check_final(ckpt: Path, steps: int, who: str) -> None:
    """A one-line error when ``last.ckpt`` is not the run's last step (fit saves it every
    ``checkpoint.every_n_train_steps`` only), read against the ``trainer.max_steps`` of the run's saved
    config.yaml; a run bounded by epochs is not checked."""
    import yaml

    config = ckpt.parent.parent / "config.yaml"
    if not config.is_file():
        return
    max_steps = (yaml.safe_load(config.read_text(encoding="utf-8")).get("trainer") or {}).get("max_steps")
    if isinstance(max_steps, int) and max_steps > 0 and steps != max_steps:
        raise HybridReasonError(
            f"{who}: {ckpt} is from step {steps} but training ran to step {max_steps}: make "
            "--checkpoint.every_n_train_steps divide --trainer.max_steps in the overrides"
        )


def hybrid_reason(args: list[str], log: Path, who: str, running: set | None = None) -> None:
    """Run ``hybrid-reason ARGS`` in a child process (kept in ``running`` while it runs, so that it can
    be stopped), its output appended to ``log``; a failure is a one-line error naming ``who``, the log
    and its last line."""
    running = set() if running is None else running
    with open(log, "a", encoding="utf-8") as out:
        out.write(f"$ {shlex.join(['hybrid-reason', *args])}\n")
        out.flush()
        command = [sys.executable, "-m", "hybrid_reason.cli", *args]
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        running.add(proc)
        try:
            code = proc.wait()
        finally:
            running.discard(proc)
    if code != 0:
        lines = [x for x in log.read_text(encoding="utf-8", errors="replace").splitlines() if x.strip()]
        raise HybridReasonError(
            f"{who}: hybrid-reason {args[0]} failed (exit {code}); see {log}: {lines[-1] if lines else ''}"
        )


def train_seed(
    recipe: str,
    overrides: list[str],
    seed: int,
    root: str | Path,
    who: str,
    running: set | None = None,
    extra: Sequence[str] = (),
) -> TrainedRun:
    """The model of ``recipe`` + ``overrides`` trained with ``seed``: from the cache when its run folder
    holds one, else trained and exported now (``fit`` then ``export``, in child processes listed in
    ``running`` while they run). ``extra`` fit flags change how it runs, not what it trains (the
    feature cache folder): they are not part of the run folder's key."""
    if not Path(recipe).is_file():
        raise HybridReasonError(f"{who}: recipe {recipe!r}: no such file")
    flags = override_flags(overrides, who)
    run = run_folder(root, recipe, overrides, seed)
    model, record = run / MODEL, run / RECORD
    if (model / "config.json").is_file() and record.is_file():
        print(f"hybrid-reason compare: {who}: found {model} (trained before; delete {run} to retrain)", file=sys.stderr)
        return TrainedRun(str(model), seed, True, json.loads(record.read_text(encoding="utf-8")))
    run.mkdir(parents=True, exist_ok=True)
    fit = [
        "fit",
        "--config",
        recipe,
        *flags,
        *extra,
        "--seed_everything",
        str(seed),
        "--trainer.default_root_dir",
        str(run),
    ]
    print(
        f"hybrid-reason compare: {who}: training ({shlex.join(['hybrid-reason', *fit])}; log {run / LOG})",
        file=sys.stderr,
    )
    t0 = time.perf_counter()
    hybrid_reason(fit, run / LOG, who, running)
    ckpt = last_checkpoint(run)
    if ckpt is None:
        raise HybridReasonError(
            f"{who}: hybrid-reason fit wrote no last.ckpt under {run} (does the recipe set checkpoint.dirpath?); "
            f"see {run / LOG}"
        )
    figures = checkpoint_figures(ckpt)
    check_final(ckpt, figures["steps"], who)
    hybrid_reason(["export", str(ckpt), str(model), "--overwrite"], run / LOG, who, running)
    training = {
        "recipe": recipe,
        "overrides": list(overrides),
        "seed": seed,
        "command": shlex.join(["hybrid-reason", *fit]),
        "checkpoint": str(ckpt),
        **figures,
        "seconds": time.perf_counter() - t0,
    }
    write_json(record, training)
    return TrainedRun(str(model), seed, False, training)


Job = tuple[str, tuple[str, ...], int]  # recipe, overrides, seed


class BackgroundTraining:
    """A suite's recipe runs, trained in the background while the suite evaluates what needs none of
    them. ``slots`` processes may be busy at once: the training runs (child processes) and, with
    ``reserve``, the suite's own evaluation, which holds one slot until ``handover()``."""

    def __init__(
        self, jobs: dict[Any, Job], root: str | Path, slots: int, reserve: bool = False, extra: Sequence[str] = ()
    ):
        self.jobs, self.root, self.running, self.extra = jobs, root, set(), tuple(extra)
        self.slots = threading.BoundedSemaphore(slots)
        self.reserved = reserve and bool(jobs)
        if self.reserved:
            self.slots.acquire()  # before any run can take it
        self.pool = ThreadPoolExecutor(max_workers=slots)
        names: dict[Job, list[str]] = {}
        for key, job in jobs.items():
            names.setdefault(job, []).append(repr(key[0]))
        self.futures = {job: self.pool.submit(self._train, job, f"system{'s' * (len(n) > 1)} {', '.join(n)} seed {job[2]}")
                        for job, n in names.items()}  # fmt: skip

    def _train(self, job: Job, who: str) -> TrainedRun:
        """One run, in a slot."""
        with self.slots:
            return train_seed(job[0], list(job[1]), job[2], self.root, who, self.running, self.extra)

    def handover(self) -> None:
        """Give the evaluation's slot to the training runs (once)."""
        if self.reserved:
            self.reserved = False
            self.slots.release()

    def raise_failure(self) -> None:
        """Raise the error of a finished run that failed, if any."""
        for future in self.futures.values():
            if future.done() and not future.cancelled() and future.exception() is not None:
                raise future.exception()

    def results(self) -> dict[Any, TrainedRun]:
        """Wait for every run; each key's run (the first failure raises)."""
        return {key: self.futures[job].result() for key, job in self.jobs.items()}

    def close(self, stop: bool = False) -> None:
        """Cancel the runs not yet started; wait for the ones under way, or with ``stop`` end them."""
        self.pool.shutdown(wait=False, cancel_futures=True)
        if stop:
            for proc in list(self.running):
                proc.terminate()
        self.pool.shutdown(wait=True)


__all__ = [
    "BackgroundTraining",
    "TrainedRun",
    "check_final",
    "checkpoint_figures",
    "last_checkpoint",
    "override_flags",
    "run_folder",
    "train_seed",
]
