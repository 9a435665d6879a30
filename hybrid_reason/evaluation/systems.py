"""Running a suite's systems: each kind on the suite's puzzles, once per seed when it is trained.

``run_suite`` starts training every recipe system once per seed in the background
(``runs.BackgroundTraining``: child processes, cached), evaluates meanwhile the systems that need none of
the runs, then the rest; ``Runner.run`` evaluates one system at one seed and returns its report row
(``SystemReport``) and its raw result (for its own files). Hybrids that share a backbone share one
loaded, uncached copy, so every system's time includes its backbone pass.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..errors import HybridReasonError
from .hybrid import evaluate_model
from .llm import load_language_model, run_baseline
from .models import CHECKS, check_model_task, has_llm, load_model, model_budget, model_config
from .puzzles import load_rows, resolve_split, select_rows
from .report import check_result_folder, write_result_folder
from .runs import BackgroundTraining, TrainedRun
from .runtime import default_device, torch_threads
from .scoring import group_mean
from .sft import SFTSettings, run_sft
from .suite import FALLBACK_SHARE, Entry, HybridEntry, LLMEntry, SFTEntry, Suite
from .suite_report import SUITE_FILES, suite_files
from .ttt import TTTSettings


@dataclass
class SystemReport:
    """One system's row of the report at one seed, and its curve (hybrids)."""

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
    seed: int | None = None  # trained systems: the training seed
    training: dict[str, Any] | None = None  # trained systems: steps, examples seen, seconds, cached
    fallback_of: str | None = None  # an LLM rerun at a larger cap: the system it reruns
    ttt: dict[str, Any] | None = None  # hybrids with test-time training: its summary (settings, seconds per task)


def _solved(results: list, headline: str) -> dict[str, bool]:
    """Puzzle id -> solved by the headline metric."""
    return {r.id: r.solved[2 if headline == "pass@2" else 1] for r in results}


def is_trained(entry: Entry) -> bool:
    """Whether the suite trains ``entry`` (once per seed): a recipe system or a fine-tuned LLM."""
    return isinstance(entry, SFTEntry) or (isinstance(entry, HybridEntry) and entry.recipe is not None)


class Runner:
    """Runs a suite's systems on one task, sharing one frozen backbone between hybrids that use the same one."""

    def __init__(self, suite: Suite, progress: bool = True):
        self.suite, self.progress = suite, progress
        self.device = suite.device or default_device()
        self.backbones: dict[str, Any] = {}
        self.trained: dict[tuple[str, int], TrainedRun] = {}
        self.split = resolve_split(suite.split)
        self.runs = Path(suite.runs or Path("runs") / "suites" / suite.name)
        self._tasks: dict[str, Any] = {}  # tasks built, by their spec: each once, not once per seed
        self._task_spec = suite.task

    @property
    def seeds(self) -> list[int]:
        """The training seeds: the suite's ``seeds``, else its ``seed``."""
        return list(self.suite.seeds or [self.suite.seed])

    def seeds_of(self, entry: Entry) -> list[int | None]:
        """The seeds ``entry`` runs at: every training seed when the suite trains it, else once (None)."""
        return list(self.seeds) if is_trained(entry) else [None]

    def start_training(self, reserve: bool = False) -> BackgroundTraining:
        """Start training every recipe system at every seed in the background (``BackgroundTraining``:
        ``suite.jobs`` processes at once, one of them this one with ``reserve``; each (recipe,
        overrides, seed) once; cached runs found)."""
        jobs = {  # seed by seed: the first seed's runs fill the feature cache that the others read
            (entry.name, seed): (entry.recipe, tuple(entry.overrides), seed)
            for seed in self.seeds
            for entry in self.suite.systems
            if isinstance(entry, HybridEntry) and entry.recipe is not None
        }
        extra = ["--model.feature_cache_dir", str(self.runs / "features")] if self.suite.feature_cache else []
        return BackgroundTraining(jobs, self.runs, self.suite.jobs, reserve, extra)

    def waits_for_training(self, entry: Entry) -> bool:
        """Whether ``entry`` can only run once the recipe systems are trained: it is one, or it takes the
        task or its LLM from the first hybrid while a recipe system could be that one."""
        recipes = any(isinstance(e, HybridEntry) and e.recipe is not None for e in self.suite.systems)
        if isinstance(entry, HybridEntry):
            return entry.recipe is not None or (recipes and self.suite.task is None)
        return recipes and (self.suite.task is None or entry.model is None)

    def folder(self, entry: HybridEntry, seed: int | None) -> str:
        """The model folder of a hybrid entry at ``seed``: its ``model``, or its trained run's export."""
        return entry.model if entry.recipe is None else self.trained[(entry.name, seed)].folder

    def _first_hybrid_config(self, llm: bool = False):
        """The config of the first hybrid system (for the default task; with ``llm``, the first that reads
        an LLM, for the LLM systems' default model)."""
        for entry in self.suite.systems:
            if isinstance(entry, HybridEntry):
                seed = self.seeds[0] if entry.recipe is not None else None
                config = model_config(self.folder(entry, seed), f"system {entry.name!r}: model")
                if not llm or has_llm(config):
                    return config
        raise HybridReasonError(
            f"suite {self.suite.name}: give " + ("the LLM systems a model" if llm else "a task")
            + " (no hybrid system to take it from)"
        )  # fmt: skip

    @property
    def task_spec(self) -> dict[str, Any]:
        """The suite's task section: its own, else the first hybrid model's."""
        if self._task_spec is None:
            self._task_spec = self._first_hybrid_config().task
            if not self._task_spec:
                raise HybridReasonError(f"suite {self.suite.name}: no task given and the first hybrid model has none")
        return self._task_spec

    @property
    def task(self):
        """The suite's task, built once."""
        return self._task_from(self.task_spec, f"suite {self.suite.name}: task")

    def _task_from(self, spec: dict[str, Any], where: str):
        """The task of ``spec``, built on first use (``where`` names it in errors)."""
        from ..tasks import task_from_spec

        key = json.dumps(spec, sort_keys=True)
        if key not in self._tasks:
            self._tasks[key] = task_from_spec(spec, where)
        return self._tasks[key]

    def rows(self, limit: int | None, budget=None, task=None):
        """The suite's puzzles, cut to the system's limit (never beyond the suite's); read through
        ``task`` (a system's ``task_options``), which must give the same puzzles."""
        rows = select_rows(load_rows(self.task, self.split, self.suite.limit, budget), limit)
        if task is None or task is self.task:
            return rows
        own = select_rows(load_rows(task, self.split, self.suite.limit, budget), limit)
        same = lambda t, r: [(row["id"], t.target(row)) for row in r]  # noqa: E731
        if same(task, own) != same(self.task, rows):
            raise HybridReasonError(
                f"suite {self.suite.name}: a system's task_options change which puzzles the split holds; "
                "they may only change how a puzzle is shown"
            )
        return own

    def task_of(self, entry: HybridEntry):
        """The task a hybrid entry's model reads: the suite's, with the entry's ``task_options`` over it."""
        if not entry.task_options:
            return self.task
        where = f"suite {self.suite.name}: system {entry.name!r}: task_options"
        return self._task_from(self.task_spec | entry.task_options, where)

    def llm_name(self, entry: LLMEntry | SFTEntry) -> str:
        """An LLM system's model: its own, else the first hybrid's backbone."""
        return entry.model or self._first_hybrid_config(llm=True).backbone["name"]

    def run(self, entry: Entry, seed: int | None = None) -> tuple[SystemReport, Any]:
        """Run one system (at ``seed`` when it is trained); returns its report row and its raw result."""
        t0 = time.perf_counter()
        if isinstance(entry, HybridEntry):
            report, raw = self.run_hybrid(entry, seed)
        elif isinstance(entry, SFTEntry):
            report, raw = self.run_sft(entry, seed)
        else:
            report, raw = self.run_llm(entry)
        if not all(r.scored for r in raw.results):
            raise HybridReasonError(f"suite {self.suite.name}: split {self.split!r} has puzzles without targets")
        report.wall_seconds, report.seed = time.perf_counter() - t0, seed
        return report, raw

    def backbone_for(self, model):
        """One shared Backbone per backbone spec: uncached (timings include the backbone pass), or with
        the suite's ``feature_cache``, reading and writing RUNS/features as the training runs do (then a
        puzzle's seconds include the backbone only where its features were not there yet)."""
        from ..backbone.backbone import Backbone
        from ..backbone.feature_cache import FeatureCache

        key = json.dumps(model.config.backbone, sort_keys=True)
        if key not in self.backbones:
            cache = FeatureCache(directory=self.runs / "features") if self.suite.feature_cache else False
            self.backbones[key] = Backbone.load(model.config.backbone_spec, cache=cache, device=self.device)
        return self.backbones[key]

    def run_hybrid(self, entry: HybridEntry, seed: int | None) -> tuple[SystemReport, Any]:
        """Evaluate a trained model with ``evaluate_model``, checked to be of the entry's kind."""
        folder, who = self.folder(entry, seed), f"system {entry.name!r}: model"
        config = model_config(folder, who)
        if entry.kind in CHECKS:
            CHECKS[entry.kind](config, f"system {entry.name!r}: {folder}")
        task = self.task_of(entry)
        check_model_task(config, task, folder)
        model = load_model(folder, self.device, who)
        if not (Path(folder) / "backbone_lora").is_dir():  # a LoRA backbone is the model's own
            model.attach_backbone(self.backbone_for(model))
        ev = evaluate_model(
            model,
            task,
            self.rows(entry.limit, model_budget(model), task),
            split=self.split,
            augmentations=entry.augmentations,
            steps=entry.steps,
            curve_steps=entry.curve_steps,
            batch_size=entry.batch_size,
            seed=self.suite.seed,
            progress=self.progress,
            trajectories=entry.trajectories,
            trajectory_noise=entry.trajectory_noise,
            vote_weight=entry.vote_weight,
            ttt=TTTSettings.of(entry, seed=self.suite.seed),
        )
        s = ev.summary()
        run = self.trained.get((entry.name, seed))
        report = SystemReport(
            entry.name, entry.kind, folder, ev.puzzles, ev.headline, ev.metrics, s["trainable_params"],
            s["total_params"], ev.seconds_per_puzzle(), 0.0, ev.backbone_flops_per_puzzle(), ev.flops_per_puzzle(),
            _solved(ev.results, ev.headline), {r.id: r.group for r in ev.results},
            n_sup=ev.n_sup, curve=ev.curve, curve_flops=[ev.flops_per_puzzle(row["step"]) for row in ev.curve],
            training=None if run is None else run.training | {"cached": run.cached}, ttt=s.get("ttt"),
        )  # fmt: skip
        return report, ev

    def run_llm(self, entry: LLMEntry) -> tuple[SystemReport, Any]:
        """Run a chain-of-thought or direct-answer baseline with ``run_baseline``."""
        lm = load_language_model(self.llm_name(entry), self.device, entry.dtype, entry.chat_template)
        result = run_baseline(
            lm, self.task, self.rows(entry.limit), entry.kind, entry.settings, self.split, self.progress,
            seed=self.suite.seed,
        )  # fmt: skip
        return self.llm_report(entry, result), result

    def run_sft(self, entry: SFTEntry, seed: int) -> tuple[SystemReport, Any]:
        """Fine-tune the LLM with LoRA at ``seed`` and score its direct answers (``run_sft``)."""
        result = run_sft(
            self.llm_name(entry), self.task, self.rows(entry.limit), SFTSettings.of(entry), entry.settings,
            split=self.split, device=self.device, dtype=entry.dtype, chat_template=entry.chat_template,
            seed=seed, progress=self.progress,
        )  # fmt: skip
        report = self.llm_report(entry, result)
        report.trainable_params = result.training.trainable_params
        report.training = result.training.summary() | {"cached": False}
        return report, result

    def llm_report(self, entry: LLMEntry | SFTEntry, result) -> SystemReport:
        """The report row of an LLM's scored replies."""
        return SystemReport(
            entry.name, entry.kind, result.model, result.puzzles, result.headline, result.metrics, 0, result.params,
            result.seconds_per_puzzle(), result.tokens_per_puzzle(), result.flops_per_puzzle(), result.flops_per_puzzle(),
            _solved(result.results, result.headline), {r.id: r.group for r in result.results},
            max_new_tokens=result.settings.max_new_tokens,
        )  # fmt: skip

    def fallback(self, entry: Entry, report: SystemReport) -> tuple[SystemReport, Any] | None:
        """When more than 10% of a cot/direct system's replies hit its cap: the same system with a larger
        cap (``fallback_max_new_tokens``, default 4x) on its first ``fallback_limit`` puzzles; else None."""
        if not isinstance(entry, LLMEntry) or entry.fallback_limit is None:
            return None
        if report.metrics["unfinished"] <= FALLBACK_SHARE:
            return None
        cap = entry.fallback_max_new_tokens or 4 * report.max_new_tokens
        limit = min(entry.limit or math.inf, entry.fallback_limit)
        bigger = replace(
            entry, name=f"{entry.name} ({cap} tokens)", max_new_tokens=cap, limit=limit, fallback_limit=None
        )
        larger, raw = self.run(bigger)
        larger.fallback_of = entry.name
        return larger, raw


def common_scores(reports: list[SystemReport]) -> tuple[int, list[float | None]]:
    """The puzzles every system ran (larger-cap reruns aside), and each report's headline score on them
    (ARC: mean over tasks); None for the reruns."""
    main = [r for r in reports if r.fallback_of is None]
    common = set.intersection(*(set(r.solved) for r in main)) if main else set()
    scores = [None if r.fallback_of else group_mean((r.group[pid], r.solved[pid]) for pid in common) for r in reports]
    return len(common), scores


def run_suite(suite: Suite, out: str | Path, command: str, progress: bool = True) -> list[SystemReport]:
    """Run every system of ``suite`` at each of its seeds (on ``suite.threads`` torch threads) and write
    the report folder ``out`` whole. The recipe systems train in the background meanwhile, and the
    systems that need none of them run first (``Runner.waits_for_training``). ``out`` is checked first,
    so a bad folder fails before anything trains or runs."""
    out = check_result_folder(out, SUITE_FILES)
    with torch_threads(suite.threads):
        t0 = time.perf_counter()
        runner = Runner(suite, progress)
        done: dict[str, list[tuple[SystemReport, Any]]] = {}
        early = [e for e in suite.systems if not runner.waits_for_training(e)]
        training = runner.start_training(reserve=bool(early))
        try:
            for entry in early:
                done[entry.name] = run_entry(runner, entry)
                training.raise_failure()
            training.handover()
            runner.trained = training.results()
        except BaseException:
            training.close(stop=True)  # a failure or an interrupt ends the training runs too
            raise
        training.close()
        for entry in (e for e in suite.systems if e.name not in done):
            done[entry.name] = run_entry(runner, entry)
        reports, raws = map(list, zip(*(pair for e in suite.systems for pair in done[e.name])))
        run = {
            "wall_seconds": time.perf_counter() - t0,
            "training_seconds": sum(r.training["seconds"] for r in runner.trained.values() if not r.cached),
            "fine_tuning_seconds": sum(r.training["seconds"] for r in reports if r.kind == "sft"),
            "seeds": runner.seeds,
            "jobs": suite.jobs,
            "runs": str(runner.runs),
            "recipe_runs": len({r.folder for r in runner.trained.values()}),
            "cached_runs": len({r.folder for r in runner.trained.values() if r.cached}),
        }
        common = common_scores(reports)
        write_result_folder(
            out,
            SUITE_FILES,
            lambda tmp: suite_files(suite, reports, raws, tmp, command, run, runner.task_spec, runner.split, common),
        )
    return reports


def run_entry(runner: Runner, entry: Entry) -> list[tuple[SystemReport, Any]]:
    """One system at each of its seeds (and its larger-cap rerun, if any): report rows and raw results."""
    out = []
    for seed in runner.seeds_of(entry):
        at = "" if seed is None else f", seed {seed}"
        print(f"hybrid-reason compare: running {entry.name} ({entry.kind}{at})", file=sys.stderr)
        first = runner.run(entry, seed)
        for report, raw in filter(None, [first, runner.fallback(entry, first[0])]):
            say(report)
            out.append((report, raw))
    return out


def say(report: SystemReport) -> None:
    """One line on stderr: a system's score, puzzles and wall time."""
    seed = "" if report.seed is None else f" seed {report.seed}"
    print(
        f"hybrid-reason compare: {report.name}{seed}: {report.headline} {100 * report.metrics[report.headline]:.1f}% "
        f"on {report.puzzles} puzzles in {report.wall_seconds:.0f} s",
        file=sys.stderr,
    )


__all__ = ["Runner", "SystemReport", "common_scores", "is_trained", "run_entry", "run_suite"]
