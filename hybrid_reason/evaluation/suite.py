"""Evaluation suites: run several systems on the same puzzles and write one report.

A suite YAML names a task (default: the first hybrid model's own), a split, a puzzle limit and a list
of systems. Each system is a trained HybridReasoner folder (``kind: hybrid`` or ``fixed-depth``) or an
LLM baseline (``kind: cot`` or ``direct``; its ``model`` defaults to the first hybrid's backbone).
A system's ``limit`` takes the first puzzles of the suite's, so every system sees the same puzzles and
the report also scores all systems on the puzzles they have in common. The file is checked against
the dataclasses below by jsonargparse, the machinery of the command line: an unknown key, a missing
one or a value of the wrong type is a one-line error naming it. The report folder is written only
when every system has run, and swapped in whole (``report.write_result_folder``).
"""

from __future__ import annotations

import json
import re
import sys
import time
import types
import typing
from dataclasses import MISSING, dataclass, fields, replace
from pathlib import Path
from typing import Any, Literal

from jsonargparse import ArgumentError, ArgumentParser
from jsonargparse.typing import PositiveInt

from ..errors import HybridReasonError
from .hybrid import evaluate_model
from .llm import GenerationSettings, load_language_model, run_baseline
from .models import check_fixed_depth, check_model_task, load_model, model_budget, model_config
from .puzzles import load_rows, resolve_split, select_rows
from .report import SUITE_FILES, check_result_folder, suite_files, write_result_folder
from .runtime import default_device, torch_threads
from .scoring import group_mean

Split = Literal["train", "validation", "test", "eval", "evaluation"]


# ============================================================================ suite files
@dataclass(kw_only=True)
class HybridEntry:
    """A trained HybridReasoner (``kind: hybrid``), or one checked to be single-step (``fixed-depth``).

    Args:
        name: the system's name in the report
        model: a saved HybridReasoner folder
        kind: hybrid, or fixed-depth (checked: T = n = N_sup = 1)
        limit: only the first puzzles of the suite's (so every system sees the same puzzles)
        steps: the supervision step whose answer is scored (default: N_sup)
        curve_steps: length of the test-time compute curve (default: 2 x steps)
        augmentations: voted views per puzzle
        batch_size: views per batch
    """

    name: str
    model: str
    kind: Literal["hybrid", "fixed-depth"] = "hybrid"
    limit: PositiveInt | None = None
    steps: PositiveInt | None = None
    curve_steps: PositiveInt | None = None
    augmentations: PositiveInt = 1
    batch_size: PositiveInt = 32


@dataclass(kw_only=True)
class LLMEntry(GenerationSettings):
    """A chain-of-thought or direct-answer baseline: ``GenerationSettings`` plus what it runs.

    Args:
        name: the system's name in the report
        kind: cot or direct
        model: hub id, folder, .gguf or alias (default: the suite's first hybrid's backbone)
        limit: only the first puzzles of the suite's
        dtype: the LM's weights (float32 on CPU)
        chat_template: a Jinja chat template, for a model that ships none
    """

    name: str
    kind: Literal["cot", "direct"]
    model: str | None = None
    limit: PositiveInt | None = None
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    chat_template: str | None = None

    @property
    def settings(self) -> GenerationSettings:
        """The entry's generation settings, with the kind's reply budget when none is given."""
        return GenerationSettings(**{f.name: getattr(self, f.name) for f in fields(GenerationSettings)}).for_kind(
            self.kind
        )


@dataclass
class Suite:
    """A suite: what to run and on which puzzles.

    Args:
        name: the suite (default: the file name); results go to eval/results/NAME
        systems: the systems to compare
        task: the task section {name: ..., option: value} (default: the first hybrid model's own)
        split: train, validation or test ('eval' = test)
        limit: the first puzzles of the split (ARC: tasks)
        seed: seeds the augmentations and the LLMs' sampling
        device: where the systems run (default: cuda when visible)
        threads: torch CPU threads (default: torch's)
        description: a paragraph copied into the report
        output: the report folder (default: eval/results/NAME)
    """

    name: str
    systems: list[HybridEntry | LLMEntry]
    task: dict[str, Any] | None = None
    split: Split = "test"
    limit: PositiveInt | None = None
    seed: int = 0
    device: str | None = None
    threads: PositiveInt | None = None
    description: str = ""
    output: str | None = None


ENTRIES: dict[str, type] = {"hybrid": HybridEntry, "fixed-depth": HybridEntry, "cot": LLMEntry, "direct": LLMEntry}


def _type_name(hint: Any) -> str:
    """A readable name of a field's type: ``int > 0 | null``, ``one of cot, direct``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        return "one of " + ", ".join(map(str, args))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in args)
    return {type(None): "null", PositiveInt: "int > 0"}.get(hint) or getattr(hint, "__name__", str(hint))


def _field_names(cls: type) -> list[str]:
    """A dataclass's fields, its own first (then those it inherits)."""
    own = list(cls.__dict__.get("__annotations__", {}))
    return own + [f.name for f in fields(cls) if f.name not in own]


def parse_typed(cls: type, data: Any, where: str, skip: frozenset[str] = frozenset()) -> dict[str, Any]:
    """The fields of dataclass ``cls`` from a plain mapping, typed and checked by jsonargparse: an
    unknown or missing key or a value of the wrong type is a one-line error naming ``where`` and the key."""
    if not isinstance(data, dict):
        raise HybridReasonError(f"{where}: expected a mapping, got {data!r}")
    known = _field_names(cls)
    unknown = [k for k in data if k not in known]
    if unknown:
        raise HybridReasonError(f"{where}: unknown key {unknown[0]!r}; known keys: {', '.join(known)}")
    required = [f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING]
    missing = [k for k in required if k not in data]
    if missing:
        raise HybridReasonError(f"{where}: missing key {missing[0]!r}")
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(cls, skip=set(skip))
    try:
        return parser.parse_object({k: v for k, v in data.items() if k not in skip}).as_dict()
    except ArgumentError as err:
        key = re.search(r'Parser key "([^"]+)"', str(err))
        if key is None:
            raise HybridReasonError(f"{where}: {str(err).splitlines()[0]}") from None
        hint = typing.get_type_hints(cls)[key.group(1)]
        raise HybridReasonError(
            f"{where}.{key.group(1)}: {data.get(key.group(1))!r} is not {_type_name(hint)}"
        ) from None


def _entry(data: Any, where: str) -> HybridEntry | LLMEntry:
    """A system entry, typed by its ``kind``."""
    kind = data.get("kind", "hybrid") if isinstance(data, dict) else None
    if kind not in ENTRIES:
        raise HybridReasonError(f"{where}.kind: {kind!r} is not one of {', '.join(ENTRIES)}")
    cls = ENTRIES[kind]
    values = parse_typed(cls, data, where)
    try:
        return cls(**values)
    except HybridReasonError as err:  # a check across fields (e.g. attempts without temperature)
        raise HybridReasonError(f"{where}: {err}") from None


def load_suite(path: str) -> Suite:
    """Read and check a suite YAML file."""
    import yaml

    where = f"suite {path}"
    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as err:
        raise HybridReasonError(f"{where}: {' '.join(str(err).split())}") from None
    if not isinstance(data, dict):
        raise HybridReasonError(f"{where}: expected a mapping at the top level")
    data = {"name": Path(path).stem} | data
    systems = data.get("systems")
    if not isinstance(systems, list) or not systems:
        raise HybridReasonError(f"{where}.systems: expected a non-empty list of systems")
    top = parse_typed(Suite, data, where, skip=frozenset({"systems"}))
    suite = Suite(**top, systems=[_entry(s, f"{where}.systems[{i}]") for i, s in enumerate(systems)])
    names = [s.name for s in suite.systems]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise HybridReasonError(f"{where}.systems: duplicate system name {dupes[0]!r}")
    return suite


# ============================================================================ running systems
@dataclass
class SystemReport:
    """One system's row of the report, and its curve (hybrids)."""

    name: str
    kind: str
    model: str
    puzzles: int
    headline: str  # "exact" or "pass@2" (ARC)
    metrics: dict[str, float]
    trainable_params: int
    total_params: int
    seconds_per_puzzle: float
    tokens_per_puzzle: float
    backbone_flops_per_puzzle: float
    flops_per_puzzle: float
    solved: dict[str, bool]  # puzzle id -> headline solved
    group: dict[str, str]  # puzzle id -> scoring group (ARC task)
    wall_seconds: float = 0.0
    n_sup: int | None = None
    curve: list[dict[str, float]] | None = None
    curve_flops: list[float] | None = None
    max_new_tokens: int | None = None  # LLMs: the reply budget


def _solved(results: list, headline: str) -> dict[str, bool]:
    """Puzzle id -> solved by the headline metric."""
    return {r.id: r.solved[2 if headline == "pass@2" else 1] for r in results}


class Runner:
    """Runs a suite's systems on one task, sharing one frozen backbone between hybrids that use the same one."""

    def __init__(self, suite: Suite, progress: bool = True):
        self.suite, self.progress = suite, progress
        self.device = suite.device or default_device()
        self.backbones: dict[str, Any] = {}
        self.task_spec = suite.task or self._first_hybrid_config().task
        if not self.task_spec:
            raise HybridReasonError(f"suite {suite.name}: no task given and the first hybrid model has none")
        self.split = resolve_split(suite.split)
        self._task = None

    def _first_hybrid_config(self):
        """The config of the first hybrid system (for the default task and LLM)."""
        for entry in self.suite.systems:
            if isinstance(entry, HybridEntry):
                return model_config(entry.model, f"system {entry.name!r}: model")
        raise HybridReasonError(f"suite {self.suite.name}: give a task (no hybrid system to take it from)")

    @property
    def task(self):
        """The suite's task, built once."""
        from ..tasks import task_from_spec

        if self._task is None:
            self._task = task_from_spec(self.task_spec, f"suite {self.suite.name}: task")
        return self._task

    def rows(self, limit: int | None, budget=None):
        """The suite's puzzles, cut to the system's limit (never beyond the suite's)."""
        return select_rows(load_rows(self.task, self.split, self.suite.limit, budget), limit)

    def run(self, entry: HybridEntry | LLMEntry) -> tuple[SystemReport, Any]:
        """Run one system; returns its report row and its raw result (for its own files)."""
        t0 = time.perf_counter()
        report, raw = self.run_hybrid(entry) if isinstance(entry, HybridEntry) else self.run_llm(entry)
        if not all(r.scored for r in raw.results):
            raise HybridReasonError(f"suite {self.suite.name}: split {self.split!r} has puzzles without targets")
        report.wall_seconds = time.perf_counter() - t0
        return report, raw

    def backbone_for(self, model):
        """One shared, uncached Backbone per backbone spec (so timings include the backbone pass)."""
        from ..backbone.backbone import Backbone

        key = json.dumps(model.config.backbone, sort_keys=True)
        if key not in self.backbones:
            self.backbones[key] = Backbone.load(model.config.backbone_spec, cache=False, device=self.device)
        return self.backbones[key]

    def run_hybrid(self, entry: HybridEntry) -> tuple[SystemReport, Any]:
        """Evaluate a trained model with ``evaluate_model``."""
        who = f"system {entry.name!r}: model"
        config = model_config(entry.model, who)
        if entry.kind == "fixed-depth":
            check_fixed_depth(config, f"system {entry.name!r}: {entry.model}")
        check_model_task(config, self.task, entry.model)
        model = load_model(entry.model, self.device, who)
        if not (Path(entry.model) / "backbone_lora").is_dir():  # a LoRA backbone is the model's own
            model.attach_backbone(self.backbone_for(model))
        ev = evaluate_model(
            model,
            self.task,
            self.rows(entry.limit, model_budget(model)),
            split=self.split,
            augmentations=entry.augmentations,
            steps=entry.steps,
            curve_steps=entry.curve_steps,
            batch_size=entry.batch_size,
            seed=self.suite.seed,
            progress=self.progress,
        )
        s = ev.summary()
        report = SystemReport(
            entry.name, entry.kind, entry.model, ev.puzzles, ev.headline, ev.metrics, s["trainable_params"],
            s["total_params"], ev.seconds_per_puzzle(), 0.0, ev.backbone_flops_per_puzzle(), ev.flops_per_puzzle(),
            _solved(ev.results, ev.headline), {r.id: r.group for r in ev.results},
            n_sup=ev.n_sup, curve=ev.curve, curve_flops=[ev.flops_per_puzzle(row["step"]) for row in ev.curve],
        )  # fmt: skip
        return report, ev

    def run_llm(self, entry: LLMEntry) -> tuple[SystemReport, Any]:
        """Run a chain-of-thought or direct-answer baseline with ``run_baseline``."""
        name = entry.model or self._first_hybrid_config().backbone["name"]
        lm = load_language_model(name, self.device, entry.dtype, entry.chat_template)
        result = run_baseline(
            lm,
            self.task,
            self.rows(entry.limit),
            entry.kind,
            entry.settings,
            self.split,
            self.progress,
            seed=self.suite.seed,
        )
        report = SystemReport(
            entry.name, entry.kind, lm.name, result.puzzles, result.headline, result.metrics, 0, lm.params,
            result.seconds_per_puzzle(), result.tokens_per_puzzle(), result.flops_per_puzzle(), result.flops_per_puzzle(),
            _solved(result.results, result.headline), {r.id: r.group for r in result.results},
            max_new_tokens=result.settings.max_new_tokens,
        )  # fmt: skip
        return report, result


def common_scores(reports: list[SystemReport]) -> tuple[int, dict[str, float]]:
    """Headline score of each system on the puzzles every system ran (ARC: mean over tasks)."""
    common = set.intersection(*(set(r.solved) for r in reports)) if reports else set()
    return len(common), {r.name: group_mean((r.group[pid], r.solved[pid]) for pid in common) for r in reports}


def run_suite(suite: Suite, out: str | Path, command: str, progress: bool = True) -> list[SystemReport]:
    """Run every system of ``suite`` (on ``suite.threads`` torch threads), then write the report folder
    ``out`` whole. ``out`` is checked first, so a bad folder fails before the systems run."""
    out = check_result_folder(out, SUITE_FILES)
    with torch_threads(suite.threads):
        t0 = time.perf_counter()
        runner = Runner(suite, progress)
        reports, raws = [], []
        for entry in suite.systems:
            print(f"hybrid-reason compare: running {entry.name} ({entry.kind})", file=sys.stderr)
            report, raw = runner.run(entry)
            print(
                f"hybrid-reason compare: {entry.name}: {report.headline} {100 * report.metrics[report.headline]:.1f}% "
                f"on {report.puzzles} puzzles in {report.wall_seconds:.0f} s",
                file=sys.stderr,
            )
            reports.append(report)
            raws.append(raw)
        wall, common = time.perf_counter() - t0, common_scores(reports)
        write_result_folder(
            out,
            SUITE_FILES,
            lambda tmp: suite_files(suite, reports, raws, tmp, command, wall, runner.task_spec, runner.split, common),
        )
    return reports


def with_threads(suite: Suite, threads: int | None) -> Suite:
    """``suite`` with its torch thread count replaced by ``threads`` when given."""
    return suite if threads is None else replace(suite, threads=threads)


__all__ = [
    "HybridEntry",
    "LLMEntry",
    "Runner",
    "Suite",
    "SystemReport",
    "common_scores",
    "load_suite",
    "parse_typed",
    "run_suite",
    "with_threads",
]
