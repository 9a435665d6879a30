"""Evaluation suites: run several systems on the same puzzles and write one report.

    hybrid-reason compare --suite eval/suites/cpu_demo.yaml      # -> eval/results/cpu_demo/report.md, report.png

A suite YAML names a task (default: the first hybrid model's own), a split, a puzzle limit and a list
of systems. Each system is a trained HybridReasoner folder (``kind: hybrid`` or ``fixed-depth``) or an
LLM baseline (``kind: cot`` or ``direct``; its ``model`` defaults to the first hybrid's backbone).
A system's ``limit`` takes the first puzzles of the suite's, so every system sees the same puzzles and
the report also scores all systems on the puzzles they have in common. Unknown keys are errors that
name the key. Results are written only when every system has run, each file atomically.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import time
import typing
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal

import torch

from ..utils.atomic_io import atomic_write, save_figure, write_json
from .hybrid import (build_task_spec, check_model_task, curve_table, quiet_transformers, resolve_split,
                         select_rows)
from ..utils.typecheck import fits

HYBRID_KINDS = ("hybrid", "fixed-depth")
LLM_KINDS = ("cot", "direct")


# ============================================================================ suite files
@dataclass
class HybridEntry:
    """A trained HybridReasoner. ``fixed-depth`` additionally requires T = n = N_sup = 1.

    steps: the scored supervision step (default N_sup). curve_steps: test-time compute curve length
    (default 2 x N_sup). augmentations: voted views per puzzle.
    """

    name: str
    model: str
    kind: Literal["hybrid", "fixed-depth"] = "hybrid"
    limit: int | None = None
    steps: int | None = None
    curve_steps: int | None = None
    augmentations: int = 1
    batch_size: int = 32


@dataclass
class LLMEntry:
    """A chain-of-thought or direct-answer baseline (see ``baselines.py``); model: hub id, folder,
    .gguf or alias (default: the suite's first hybrid backbone). Budget: max_new_tokens (default
    cot 512, direct 256), temperature (0 = greedy), top_p, attempts (sampled replies per puzzle)."""

    name: str
    kind: Literal["cot", "direct"]
    model: str | None = None
    limit: int | None = None
    max_new_tokens: int | None = None
    temperature: float = 0.0
    top_p: float = 1.0
    attempts: int = 1
    batch_size: int = 8
    dtype: str = "float32"
    chat_template: str | None = None  # Jinja, for a model that ships none


@dataclass
class Suite:
    """A suite: what to run and on which puzzles."""

    name: str
    systems: list[HybridEntry | LLMEntry]
    task: dict | None = None
    split: str = "test"
    limit: int | None = None
    seed: int = 0
    device: str | None = None
    threads: int | None = None  # torch CPU threads (default: torch's)
    description: str = ""
    output: str | None = None  # default eval/results/<name>


def _typed(cls: type, data: Any, where: str):
    """``cls(**data)``, naming ``where`` and the key on unknown keys, missing keys and wrong types."""
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in fields(cls)}
    for key, value in data.items():
        if key not in known:
            raise ValueError(f"{where}: unknown key {key!r}; known keys: {', '.join(known)}")
        if key != "systems" and not fits(value, hints[key]):
            raise ValueError(f"{where}.{key}: {value!r} is not {str(hints[key]).replace('typing.', '')}")
    missing = [f.name for f in known.values() if f.name not in data and f.default is MISSING and f.default_factory is MISSING]
    if missing:
        raise ValueError(f"{where}: missing key {missing[0]!r}")
    return cls(**data)


def _entry(data: Any, where: str) -> HybridEntry | LLMEntry:
    """A system entry, typed by its ``kind``."""
    kind = data.get("kind", "hybrid") if isinstance(data, dict) else None
    if kind in HYBRID_KINDS:
        return _typed(HybridEntry, data, where)
    if kind in LLM_KINDS:
        return _typed(LLMEntry, data, where)
    raise ValueError(f"{where}.kind: {kind!r} is not one of {', '.join(HYBRID_KINDS + LLM_KINDS)}")


def load_suite(path: str) -> Suite:
    """Read and check a suite YAML file."""
    import yaml

    with open(path) as f:
        data = yaml.safe_load(f)
    where = f"suite {path}"
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a mapping at the top level")
    data = dict(data)
    data.setdefault("name", Path(path).stem)
    suite = _typed(Suite, data, where)
    if not isinstance(suite.systems, list) or not suite.systems:
        raise ValueError(f"{where}.systems: expected a non-empty list of systems")
    suite.systems = [_entry(s, f"{where}.systems[{i}]") for i, s in enumerate(suite.systems)]
    names = [s.name for s in suite.systems]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"{where}.systems: duplicate system name {dupes[0]!r}")
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


class Runner:
    """Runs a suite's systems, sharing one frozen backbone between hybrids that use the same one."""

    def __init__(self, suite: Suite, progress: bool = True):
        self.suite, self.progress = suite, progress
        self.device = suite.device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.backbones: dict[str, Any] = {}
        self.task_spec = suite.task or self._first_hybrid_config().task
        if not self.task_spec:
            raise ValueError(f"suite {suite.name}: no task given and the first hybrid model has none")
        self.split = resolve_split(suite.split)

    def _first_hybrid_config(self):
        """The config of the first hybrid system (for the default task and LLM)."""
        from ..model.configuration import HybridReasonerConfig

        for entry in self.suite.systems:
            if isinstance(entry, HybridEntry):
                _require_model_folder(entry)
                return HybridReasonerConfig.from_pretrained(entry.model)
        raise ValueError(f"suite {self.suite.name}: give a task (no hybrid system to take it from)")

    def rows(self, task, limit: int | None):
        """The suite's puzzles, cut to the system's limit (never beyond the suite's)."""
        rows = select_rows(task.load(self.split), self.suite.limit)
        return select_rows(rows, limit) if limit is not None else rows

    def run(self, entry: HybridEntry | LLMEntry) -> tuple[SystemReport, Any]:
        """Run one system; returns its report row and its raw result (for its own files)."""
        t0 = time.perf_counter()
        report, raw = self.run_hybrid(entry) if isinstance(entry, HybridEntry) else self.run_llm(entry)
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
        from .hybrid import evaluate_model, load_model

        _require_model_folder(entry)
        model = load_model(entry.model, self.device)
        core = model.config.core_config
        if entry.kind == "fixed-depth" and (core.T, core.n, model.config.halt_max_steps) != (1, 1, 1):
            raise ValueError(f"system {entry.name!r}: {entry.model} is not fixed-depth (T={core.T}, n={core.n}, "
                             f"halt_max_steps={model.config.halt_max_steps}; all must be 1)")
        task = build_task_spec(self.task_spec)
        check_model_task(model.config, task, entry.model)
        if not os.path.isdir(os.path.join(entry.model, "backbone_lora")):  # a LoRA backbone is the model's own
            model.attach_backbone(self.backbone_for(model))
        ev = evaluate_model(model, task, self.rows(task, entry.limit), split=self.split,
                            augmentations=entry.augmentations, steps=entry.steps, curve_steps=entry.curve_steps,
                            batch_size=entry.batch_size, seed=self.suite.seed, progress=self.progress)
        s = ev.summary()
        report = SystemReport(
            entry.name, entry.kind, entry.model, ev.puzzles, ev.headline, ev.metrics, s["trainable_params"],
            s["total_params"], ev.seconds_per_puzzle(), 0.0, ev.backbone_flops_per_puzzle(), ev.flops_per_puzzle(),
            {r.id: r.solved[2 if ev.headline == "pass@2" else 1] for r in ev.results}, {r.id: r.group for r in ev.results},
            n_sup=ev.n_sup, curve=ev.curve, curve_flops=[ev.flops_per_puzzle(row["step"]) for row in ev.curve],
        )  # fmt: skip
        return report, ev

    def default_lm(self) -> str:
        """The first hybrid's backbone name (the LLM that the hybrid reads with)."""
        return self._first_hybrid_config().backbone["name"]

    def run_llm(self, entry: LLMEntry) -> tuple[SystemReport, Any]:
        """Run a chain-of-thought or direct-answer baseline with ``run_baseline``."""
        from .llm import DEFAULT_MAX_NEW_TOKENS, GenerationSettings, load_language_model, run_baseline

        settings = GenerationSettings(entry.max_new_tokens or DEFAULT_MAX_NEW_TOKENS[entry.kind], entry.temperature,
                                      entry.top_p, entry.attempts, entry.batch_size, self.suite.seed)
        lm = load_language_model(entry.model or self.default_lm(), self.device, entry.dtype, entry.chat_template)
        task = build_task_spec(self.task_spec)
        result = run_baseline(lm, task, self.rows(task, entry.limit), entry.kind, settings, self.split, self.progress)
        report = SystemReport(
            entry.name, entry.kind, lm.name, result.puzzles, result.headline, result.metrics, 0, lm.params,
            result.seconds_per_puzzle(), result.tokens_per_puzzle(), result.flops_per_puzzle(), result.flops_per_puzzle(),
            {r.id: r.solved[2 if result.headline == "pass@2" else 1] for r in result.results},
            {r.id: r.group for r in result.results},
        )  # fmt: skip
        return report, result


def _require_model_folder(entry: HybridEntry) -> None:
    """A one-line error when a suite's model folder does not exist."""
    if not os.path.isfile(os.path.join(entry.model, "config.json")):
        raise ValueError(f"system {entry.name!r}: model {entry.model!r} is not a saved HybridReasoner folder "
                         "(train and export it first: see docs/evaluation.md)")


# ============================================================================ common puzzles
def common_scores(reports: list[SystemReport]) -> tuple[int, dict[str, float]]:
    """Headline score of each system on the puzzles every system ran (ARC: mean over tasks)."""
    common = set.intersection(*(set(r.solved) for r in reports)) if reports else set()
    scores = {}
    for r in reports:
        groups: dict[str, list[bool]] = {}
        for pid in common:
            groups.setdefault(r.group[pid], []).append(r.solved[pid])
        scores[r.name] = sum(sum(v) / len(v) for v in groups.values()) / len(groups) if groups else 0.0
    return len(common), scores


# ============================================================================ the report
def _fmt_count(n: float) -> str:
    """A compact count: 1.2M, 35.1K, 3.4G."""
    for unit, size in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.3g}{unit}"
    return f"{n:.3g}"


def report_table(reports: list[SystemReport]) -> str:
    """The markdown table: one row per system."""
    arc = any(r.headline == "pass@2" for r in reports)
    n_common, common = common_scores(reports)
    exact = "exact (pass@2)" if arc else "exact"
    head = ["system", "kind", "puzzles", exact] + (["pass@1"] if arc else []) + [
        f"exact on the {n_common} common", "cell accuracy", "trainable params", "total params", "s / puzzle",
        "generated tokens / puzzle", "backbone FLOPs / puzzle", "total FLOPs / puzzle"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * 2 + "---:|" * (len(head) - 2)]
    for r in reports:
        m = r.metrics
        cells = [r.name, r.kind, str(r.puzzles), f"{100 * m[r.headline]:.1f}%"]
        cells += [f"{100 * m['exact']:.1f}%"] if arc else []
        cells += [f"{100 * common[r.name]:.1f}%", f"{100 * m['cell']:.1f}%", _fmt_count(r.trainable_params),
                  _fmt_count(r.total_params), f"{r.seconds_per_puzzle:.3f}", f"{r.tokens_per_puzzle:.1f}",
                  _fmt_count(r.backbone_flops_per_puzzle), _fmt_count(r.flops_per_puzzle)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report_markdown(suite: Suite, reports: list[SystemReport], command: str, wall: float, task_spec: dict) -> str:
    """report.md: the command, the setting, the table, the hybrids' curves and the cost formulas."""
    lines = [f"# Suite `{suite.name}`", "", suite.description.strip(), "",
             f"Produced by `{command}` in {wall / 60:.1f} min wall time on {machine()}.", "",
             f"Task `{json.dumps(task_spec)}`, split `{resolve_split(suite.split)}`, seed {suite.seed}.", "",
             report_table(reports), "",
             "Exact = whole answer right (ARC: the ARC Prize score with 2 attempts, a mean over tasks); cell = "
             "fraction of answer cells right in attempt 1. Unfinished or unparseable LLM replies count as wrong. "
             "Backbone FLOPs: 2 x (parameters of the LM blocks that run) x tokens (prompt only for the hybrid, "
             "prompt + generated for the LLMs, whose LM head counts too); total adds the recursive core "
             "(see docs/evaluation.md). Seconds are wall time per puzzle, batched, after loading.", ""]
    for r in reports:
        if r.curve:
            keys = [k for k in r.curve[0] if k not in ("step", "halt_step")]
            lines += [f"## Test-time compute: {r.name}", "", f"N_sup = {r.n_sup}; answer read at N_sup in the table above.",
                      "", curve_table(r.curve, r.n_sup, keys), ""]
    unfinished = [r for r in reports if "unfinished" in r.metrics]
    if unfinished:
        lines += ["## LLM replies", "", "| system | unfinished (hit max_new_tokens) | finished but unparseable |",
                  "|---|---:|---:|"]
        lines += [f"| {r.name} | {100 * r.metrics['unfinished']:.0f}% | {100 * r.metrics['unparsed']:.0f}% |" for r in unfinished]
        lines.append("")
    return "\n".join(lines)


def machine() -> str:
    """A one-line description of where the suite ran."""
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    threads = torch.get_num_threads()
    return f"{device}, torch {torch.__version__}, {threads} thread{'s' * (threads != 1)}, {platform.system()}"


def plot_report(reports: list[SystemReport], path: Path, title: str) -> None:
    """report.png: accuracy against FLOPs per puzzle (left) and the hybrids' test-time compute curves (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for r in reports:
        point = left.scatter([r.flops_per_puzzle], [100 * r.metrics[r.headline]], s=50, zorder=3, label=r.name)
        if r.curve:
            left.plot(r.curve_flops, [100 * row[r.headline] for row in r.curve], color=point.get_facecolor()[0],
                      alpha=0.5, linewidth=1)
            right.plot([row["step"] for row in r.curve], [100 * row[r.headline] for row in r.curve], marker="o",
                       markersize=3, color=point.get_facecolor()[0], label=f"{r.name} (N_sup={r.n_sup})")
            right.axvline(r.n_sup, color=point.get_facecolor()[0], linestyle="--", linewidth=0.8)
    left.set_xscale("log")
    left.set_xlabel("FLOPs per puzzle (log)")
    left.set_ylabel(f"{reports[0].headline} accuracy (%)")
    left.set_title("accuracy against compute (lines: hybrid after 1, 2, ... steps)")
    right.set_xlabel("supervision steps (dashed: N_sup)")
    right.set_ylabel(f"{reports[0].headline} accuracy (%)")
    right.set_title("test-time compute curve")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.set_ylim(-3, 103)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    save_figure(fig, path)


def _slug(name: str) -> str:
    """A folder name for a system."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "system"


def write_report(suite: Suite, reports: list[SystemReport], raws: list[Any], out: Path, command: str, wall: float,
                 task_spec: dict) -> None:
    """Write each system's own files, results.json, report.png and report.md (last), each atomically."""
    from .llm import BaselineResult, write_baseline
    from .hybrid import write_evaluation

    for report, raw in zip(reports, raws):
        folder = out / "systems" / _slug(report.name)
        if isinstance(raw, BaselineResult):
            write_baseline(raw, str(folder), command)
        else:
            write_evaluation(raw, folder, report.model, command)
    write_json(out / "results.json", {"suite": suite.name, "command": command, "wall_seconds": wall, "machine": machine(),
                                      "task": task_spec, "systems": [_plain_report(r) for r in reports]})
    plot_report(reports, out / "report.png", f"{suite.name}: {task_spec.get('name')}")
    atomic_write(out / "report.md", report_markdown(suite, reports, command, wall, task_spec))


def _plain_report(r: SystemReport) -> dict:
    """A report row for results.json (without the per-puzzle maps)."""
    return {k: v for k, v in asdict(r).items() if k not in ("solved", "group")}


# ============================================================================ command line
def run_suite(suite: Suite, out: Path, command: str, progress: bool = True) -> list[SystemReport]:
    """Run every system of ``suite``, then write the report to ``out``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(suite.threads or threads)
    try:
        t0 = time.perf_counter()
        runner = Runner(suite, progress)
        reports, raws = [], []
        for entry in suite.systems:
            print(f"hybrid-reason compare: running {entry.name} ({entry.kind})", file=sys.stderr)
            report, raw = runner.run(entry)
            print(f"hybrid-reason compare: {entry.name}: {report.headline} {100 * report.metrics[report.headline]:.1f}% "
                  f"on {report.puzzles} puzzles in {report.wall_seconds:.0f} s", file=sys.stderr)
            reports.append(report)
            raws.append(raw)
        write_report(suite, reports, raws, out, command, time.perf_counter() - t0, runner.task_spec)
    finally:
        torch.set_num_threads(threads)
    return reports


def main(argv: list[str] | None = None) -> list[SystemReport]:
    """``hybrid-reason compare --suite eval/suites/NAME.yaml [--out DIR]``."""
    p = argparse.ArgumentParser(prog="hybrid-reason compare", description="Run an evaluation suite and write its report.")
    p.add_argument("--suite", required=True, help="a suite YAML file (eval/suites/*.yaml)")
    p.add_argument("--out", help="report folder (default: the suite's output, else eval/results/NAME)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    quiet_transformers()
    command = "hybrid-reason compare " + " ".join(sys.argv[2:] if argv is None else argv)
    try:
        suite = load_suite(args.suite)
        out = Path(args.out or suite.output or os.path.join("eval", "results", suite.name))
        reports = run_suite(suite, out, command, progress=not args.no_progress)
    except (OSError, ValueError) as err:
        sys.exit(f"hybrid-reason compare: {err}")
    print(report_table(reports))
    print(f"hybrid-reason: wrote {out / 'report.md'} and {out / 'report.png'}")
    return reports


__all__ = ["HybridEntry", "LLMEntry", "Runner", "Suite", "SystemReport", "common_scores", "load_suite", "main",
           "plot_report", "report_markdown", "report_table", "run_suite", "write_report"]
