"""Scoring a trained HybridReasoner: ARC voting over augmentations, pass@k, exact and cell accuracy,
the test-time compute curve, and the ``hybrid-reason evaluate`` command.

    hybrid-reason evaluate --model DIR [--task arc1] [--split eval] [--augmentations 8] [--steps 16]

One pass does everything. Every puzzle is rendered under A views (view 0 un-augmented, the others
drawn with ``task.sample_augmentation(rng, train=False)``; tasks without evaluation-time augmentations
have one view). Each view is encoded once by the backbone and run for max(steps, curve_steps)
supervision steps. After every step each view's prediction is decoded with ``task.decode`` (which
crops ARC's canvas and inverts the augmentation), identical answers are grouped, and the groups are
ranked by (votes, mean sigmoid(halt logit)): attempt 1 and 2 are the top two (TRM's voting).

Scores follow ARC Prize: a test input is solved when one of its first k attempts equals the target
exactly; a task scores the fraction of its test inputs solved; the benchmark is the mean over tasks.
Non-ARC rows are their own task, so this is plain exact accuracy there (``exact`` = pass@1).
The answer is read at ``steps`` (default N_sup); the curve reports every step 1..curve_steps.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..tasks.keys import puzzle_key, puzzle_vocabulary
from ..utils.atomic_io import atomic_write, save_figure, write_csv, write_json

Grid = list[list[int]]
SPLIT_ALIASES = {"eval": "test", "evaluation": "test"}  # ARC's evaluation tasks are the "test" split
EMPTY_ATTEMPT: Grid = [[0]]  # what the submission holds when a model has no (non-empty) answer


# ============================================================================ ARC Prize scoring
def task_scores(attempts: dict[str, list[list[Grid]]], solutions: dict[str, list[Grid]], k: int = 2) -> dict[str, float]:
    """Per task, the fraction of its test inputs solved by one of their first ``k`` attempts.

    attempts[task][i]: the ranked attempts for test input i (missing = unsolved).
    solutions[task][i]: the target grid of test input i.
    """
    scores = {}
    for task_id, targets in solutions.items():
        tries = attempts.get(task_id, [])
        solved = [i < len(tries) and any(_same(a, t) for a in tries[i][:k]) for i, t in enumerate(targets)]
        scores[task_id] = sum(solved) / len(targets) if targets else 0.0
    return scores


def arc_score(attempts: dict[str, list[list[Grid]]], solutions: dict[str, list[Grid]], k: int = 2) -> float:
    """The ARC Prize score: mean over tasks of the fraction of test inputs solved in ``k`` attempts."""
    scores = task_scores(attempts, solutions, k)
    return sum(scores.values()) / len(scores) if scores else 0.0


def _same(answer: Any, target: Any) -> bool:
    """Exact equality of two answers (grids compared cell by cell, shapes included)."""
    return answer is not None and target is not None and freeze(answer) == freeze(target)


# ============================================================================ voting
def freeze(answer: Any) -> Any:
    """A hashable form of an answer: lists (of lists) become tuples."""
    if isinstance(answer, np.ndarray):
        answer = answer.tolist()
    if isinstance(answer, (list, tuple)):
        return tuple(freeze(a) for a in answer)
    return answer


def is_empty(answer: Any) -> bool:
    """True for answers that cannot be right: None or an empty grid/list (ARC's failed crop)."""
    return answer is None or (isinstance(answer, (list, tuple, str)) and len(answer) == 0)


@dataclass
class Candidate:
    """A distinct answer of a puzzle's views: its votes, mean halting confidence and halting step."""

    answer: Any
    votes: int
    confidence: float  # mean sigmoid(halt logit) of the views that voted for it
    halt_step: float  # mean halting step of those views


def vote(answers: Sequence[Any], confidences: Sequence[float], halt_steps: Sequence[float] | None = None) -> list[Candidate]:
    """Group identical answers and rank them by (votes, mean confidence), best first.

    Empty answers (None, ``[]``) never vote. Ties on both keys keep the order of first appearance.
    """
    halt_steps = halt_steps if halt_steps is not None else [0.0] * len(answers)
    groups: dict[Any, list[int]] = {}
    for i, answer in enumerate(answers):
        if not is_empty(answer):
            groups.setdefault(freeze(answer), []).append(i)
    candidates = [
        Candidate(answers[idx[0]], len(idx), float(np.mean([confidences[i] for i in idx])),
                  float(np.mean([halt_steps[i] for i in idx])))
        for idx in groups.values()
    ]
    return sorted(candidates, key=lambda c: (-c.votes, -c.confidence))  # stable: first seen wins ties


# ============================================================================ model and task
def resolve_split(split: str) -> str:
    """The task split of a command-line split name ("eval" means ARC's evaluation tasks: "test")."""
    return SPLIT_ALIASES.get(split, split)


def task_spec_for(model_task: dict | None, name: str | None = None, options: dict | None = None) -> dict:
    """The task section to evaluate: the model's own (``config.task``) unless another name is given,
    with ``options`` overriding."""
    base = dict(model_task or {})
    if name is not None and name != base.get("name"):
        base = {"name": name}
    if "name" not in base:
        raise ValueError("the model's config has no task: pass --task NAME")
    return base | dict(options or {})


def build_task_spec(spec: dict):
    """A Task from a ``{name: ..., option: value}`` section."""
    from ..tasks import build_task

    options = {k: v for k, v in spec.items() if k != "name"}
    return build_task(spec["name"], **options)


def check_model_task(config, task, model_name: str = "the model") -> None:
    """Raise a one-line ValueError when ``task`` does not fit the model's answer vocabulary or slots."""
    trained = (config.task or {}).get("name")
    for what, have, need in (("answer vocabulary", config.answer_vocab_size, task.vocab_size),
                             ("slot count", config.num_slots, task.num_slots)):
        if have != need:
            raise ValueError(f"{model_name} was trained on task {trained!r} with {what} {have}, but task "
                             f"{task.name!r} here has {what} {need}; evaluate it on the task it was trained on "
                             f"(its config.task: {config.task})")


def load_model(path: str, device: str | torch.device = "cpu"):
    """A saved HybridReasoner folder, in eval mode on ``device`` (the backbone loads on first use)."""
    from ..model.modeling import HybridReasoner

    if not os.path.isfile(os.path.join(path, "config.json")):
        raise ValueError(f"--model {path!r} is not a saved HybridReasoner folder (no config.json)")
    return HybridReasoner.from_pretrained(path).to(device).eval()


def select_rows(rows, limit: int | None):
    """The first ``limit`` puzzles of a split; for ARC, every test input of the first ``limit`` tasks."""
    if limit is None or limit >= len(rows):
        return rows
    if "task_id" not in rows.column_names:
        return rows.select(range(limit))
    keep, picked = set(), []
    for i, task_id in enumerate(rows["task_id"]):
        if task_id not in keep and len(keep) == limit:
            continue
        keep.add(task_id)
        picked.append(i)
    return rows.select(picked)


# ============================================================================ views
@dataclass
class Views:
    """The rendered views of every puzzle, puzzle-major: view j belongs to puzzle ``puzzle[j]``."""

    examples: list  # Rendered
    puzzle: list[int]

    def of(self, p: int) -> list[int]:
        """View indices of puzzle ``p``."""
        return [j for j, q in enumerate(self.puzzle) if q == p]


def render_views(task, rows, augmentations: int, seed: int = 0) -> Views:
    """View 0 of each row un-augmented, views 1..A-1 under ``sample_augmentation(rng, train=False)``
    drawn from ``default_rng([seed, row, view])``. A task with no evaluation augmentation (it returns
    None) gets one view per row."""
    if augmentations < 1:
        raise ValueError(f"--augmentations must be >= 1, got {augmentations}")
    examples, puzzle = [], []
    for p in range(len(rows)):
        row = rows[p]
        examples.append(task.render(row, None))
        puzzle.append(p)
        for v in range(1, augmentations):
            aug = task.sample_augmentation(np.random.default_rng([seed, p, v]), False)
            if aug is None:
                break
            examples.append(task.render(row, aug))
            puzzle.append(p)
    return Views(examples, puzzle)


# ============================================================================ running the model
@dataclass
class Trace:
    """One view's predictions after every supervision step."""

    answers: list = field(default_factory=list)  # decoded answer per step (original frame)
    confidences: list[float] = field(default_factory=list)  # sigmoid(halt logit) per step
    halt_logits: list[float] = field(default_factory=list)

    def halt_step(self, k: int) -> int:
        """The step (1-based) where the view would stop when run for at most ``k`` steps."""
        return next((i + 1 for i, h in enumerate(self.halt_logits[:k]) if h > 0), k)


@dataclass
class Timing:
    """Where the evaluation's seconds went: backbone encoding, then each supervision step (+ decoding)."""

    encode: float = 0.0
    steps: list[float] = field(default_factory=list)

    def until(self, k: int) -> float:
        """Seconds to answer after ``k`` steps."""
        return self.encode + sum(self.steps[:k])


def _progress(enabled: bool, total: int):
    """A Rich progress bar over puzzles (on stderr); disabled, it prints nothing."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    progress = Progress(TextColumn("[bold]evaluate"), BarColumn(), MofNCompleteColumn(), TextColumn("puzzles"),
                        TimeElapsedColumn(), TimeRemainingColumn(), console=Console(stderr=True), disable=not enabled)
    return progress, progress.add_task("puzzles", total=total)


def predict_views(model, task, views: Views, steps: int, batch_size: int = 32, puzzle_ids: Sequence[int] | None = None,
                  progress: bool = True) -> tuple[list[Trace], list[int], Timing]:
    """Run every view for ``steps`` supervision steps from the initial carry.

    Returns per view its Trace and prompt token count, and the Timing of the pass.
    """
    traces, tokens, timing = [], [], Timing(steps=[0.0] * steps)
    done_after = _puzzles_done_after(views.puzzle)
    bar, bar_task = _progress(progress, len(set(views.puzzle)))
    with bar, torch.no_grad():
        for start in range(0, len(views.examples), batch_size):
            batch = views.examples[start : start + batch_size]
            ids = None if puzzle_ids is None else torch.as_tensor(puzzle_ids[start : start + batch_size], device=model.device)
            traces += _run_batch(model, task, batch, steps, ids, timing)
            tokens += _token_counts(model.backbone.tokenizer, [ex.text for ex in batch])
            bar.update(bar_task, completed=done_after[start + len(batch) - 1])
    return traces, tokens, timing


def _run_batch(model, task, batch: list, steps: int, puzzle_ids, timing: Timing) -> list[Trace]:
    """Encode one batch of views, iterate it, and decode every step's predictions."""
    t0 = time.perf_counter()
    encoded = model.encode([ex.text for ex in batch], [ex.slot_spans for ex in batch], [ex.meta.get("id", "?") for ex in batch])
    timing.encode += time.perf_counter() - t0
    traces = [Trace() for _ in batch]
    t0 = time.perf_counter()
    for k, out in enumerate(model.iterate(encoded, steps, puzzle_ids)):
        preds = out.logits.argmax(-1).cpu().numpy()
        halts = out.halt_logits.float().cpu()
        for trace, pred, ex, h, c in zip(traces, preds, batch, halts.tolist(), torch.sigmoid(halts).tolist()):
            trace.answers.append(_safe_decode(task, pred, ex.meta))
            trace.halt_logits.append(h)
            trace.confidences.append(c)
        now = time.perf_counter()
        timing.steps[k] += now - t0
        t0 = now
    return traces


def _safe_decode(task, pred: np.ndarray, meta: dict) -> Any:
    """``task.decode``, with an undecodable prediction counted as no answer (None) instead of a crash."""
    try:
        return task.decode(pred, meta)
    except (ValueError, IndexError, KeyError):
        return None


def _token_counts(tokenizer, texts: list[str]) -> list[int]:
    """Prompt lengths in tokens, special tokens included (what the backbone runs on)."""
    return [len(ids) for ids in tokenizer(texts)["input_ids"]]


def _puzzles_done_after(puzzle: list[int]) -> list[int]:
    """For each view index j, how many puzzles have all their views at or before j."""
    ends = set({p: j for j, p in enumerate(puzzle)}.values())  # each puzzle's last view
    return np.cumsum([j in ends for j in range(len(puzzle))], dtype=int).tolist()


# ============================================================================ scoring
@dataclass
class PuzzleResult:
    """A puzzle's outcome at one step: ranked candidates, attempts and scores."""

    id: str
    group: str  # ARC task id (the unit of the mean), else the puzzle id
    query: str  # ARC: which test input of its task ("test0", "test1", ...); "" elsewhere
    views: int
    candidates: list[Candidate]
    solved: dict[int, bool]  # k -> solved within k attempts
    cell: float  # cell accuracy of attempt 1
    halt_step: float  # mean halting step of the winner's views (all views when none won)
    solved_at_halt: bool | None = None  # attempt 1 right when each view answers at its own halting step

    def attempts(self, k: int = 2) -> list[Any]:
        """The first ``k`` attempts (fewer when there are fewer distinct answers)."""
        return [c.answer for c in self.candidates[:k]]


def score_puzzle(task, row: dict, traces: list[Trace], step: int, ks: Sequence[int]) -> PuzzleResult:
    """Vote over a puzzle's views at ``step`` (1-based) and score attempts 1..k against the target."""
    i = step - 1
    halts = [t.halt_step(step) for t in traces]
    candidates = vote([t.answers[i] for t in traces], [t.confidences[i] for t in traces], halts)
    target = task.target(row)
    solved = {k: any(task.score(c.answer, target) for c in candidates[:k]) for k in ks}
    cell = task.cell_accuracy(candidates[0].answer, target) if candidates and target is not None else 0.0
    halt = candidates[0].halt_step if candidates else float(np.mean(halts))
    at_halt = vote([t.answers[h - 1] for t, h in zip(traces, halts)], [t.confidences[h - 1] for t, h in zip(traces, halts)])
    solved_at_halt = bool(at_halt) and task.score(at_halt[0].answer, target)
    return PuzzleResult(str(row["id"]), puzzle_key(row), str(row.get("query") or ""), len(traces), candidates, solved,
                        float(cell), halt, solved_at_halt)


def aggregate(results: list[PuzzleResult], ks: Sequence[int]) -> dict[str, float]:
    """ARC Prize arithmetic over groups: per group the mean over its puzzles, then the mean of groups."""
    groups: dict[str, list[PuzzleResult]] = defaultdict(list)
    for r in results:
        groups[r.group].append(r)

    def mean_of_groups(value: Callable[[PuzzleResult], float]) -> float:
        per_group = [np.mean([value(r) for r in members]) for members in groups.values()]
        return float(np.mean(per_group)) if per_group else 0.0

    metrics = {"exact": mean_of_groups(lambda r: r.solved[1])}
    metrics |= {f"pass@{k}": mean_of_groups(lambda r, k=k: r.solved[k]) for k in ks if k != 1}
    metrics["cell"] = mean_of_groups(lambda r: r.cell)
    if results and all(r.solved_at_halt is not None for r in results):
        metrics["exact_at_halt"] = mean_of_groups(lambda r: r.solved_at_halt)
    metrics["halt_step"] = float(np.mean([r.halt_step for r in results])) if results else 0.0
    return metrics


# ============================================================================ FLOPs
def backbone_params_run(backbone) -> int:
    """Parameters of the backbone blocks that run (layers 1..hidden_layer); embeddings are lookups."""
    from ..backbone.loading import find_layers

    blocks = find_layers(backbone.model, backbone.model.config.num_hidden_layers)
    return sum(p.numel() for block in list(blocks)[: backbone.layer] for p in block.parameters())


def core_flops(config) -> tuple[int, int, int]:
    """FLOPs of the trainable model per view: (once: the adapter and the resampler's query side, per
    prompt token: the resampler's keys, values and scores, per supervision step: T(n+1) calls of the L
    blocks + heads). A multiply-add counts 2; attention scores count 4 x queries x keys x width."""
    from ..model.core import swiglu_width

    c, S, d = config.core_config, config.seq_len, config.core_config.d_model
    K, d_llm = config.num_context_slots, config.backbone_hidden_size
    mlp = 2 * S * 3 * d * swiglu_width(d, c.expansion)
    if c.mixer == "attention":
        mix = 2 * S * 4 * d * d + 4 * S * S * d
    else:
        mix = 2 * d * 3 * S * swiglu_width(S, c.expansion)
    per_step = c.T * (c.n + 1) * c.num_layers * (mlp + mix)
    per_step += 2 * config.num_slots * d * config.answer_vocab_size + 2 * d
    once = 2 * config.num_slots * d_llm * d + (2 * K * 2 * d * d if K else 0)  # adapter; resampler q and out
    per_token = 2 * 2 * d_llm * d + 4 * K * d if K else 0  # resampler k and v projections, scores and values
    return once, per_token, per_step


# ============================================================================ evaluation
@dataclass
class Evaluation:
    """Everything one evaluation pass measured (see ``evaluate_model``)."""

    task: str
    split: str
    steps: int  # the step whose answer is scored
    n_sup: int  # the model's halt_max_steps
    augmentations: int
    ks: list[int]
    results: list[PuzzleResult]  # at ``steps``
    curve: list[dict[str, float]]  # one row per step 1..curve_steps
    timing: Timing
    views: int
    prompt_tokens: int  # summed over views
    trainable_params: int
    backbone_params: int  # frozen, as loaded (truncated at hidden_layer)
    backbone_params_run: int
    core_flops_once: int
    core_flops_token: int
    core_flops_step: int
    submission: dict | None = None  # ARC only

    @property
    def headline(self) -> str:
        """The metric that scores the task: ARC's pass@2, else exact accuracy."""
        return "pass@2" if self.submission is not None else "exact"

    @property
    def puzzles(self) -> int:
        """Number of puzzles (ARC: test inputs)."""
        return len(self.results)

    @property
    def metrics(self) -> dict[str, float]:
        """The scores at ``steps`` (and the mean halting step)."""
        return {k: v for k, v in self.curve[self.steps - 1].items() if k != "step"}

    def backbone_flops_per_puzzle(self) -> float:
        """2 x (parameters of the blocks run) x prompt tokens, summed over views, per puzzle."""
        return 2.0 * self.backbone_params_run * self.prompt_tokens / max(1, self.puzzles)

    def flops_per_puzzle(self, steps: int | None = None) -> float:
        """Backbone + core FLOPs per puzzle when answering after ``steps`` (default: the scored step)."""
        k = self.steps if steps is None else steps
        core = self.views * (self.core_flops_once + k * self.core_flops_step) + self.core_flops_token * self.prompt_tokens
        return self.backbone_flops_per_puzzle() + core / max(1, self.puzzles)

    def seconds_per_puzzle(self, steps: int | None = None) -> float:
        """Wall seconds per puzzle (encoding, recursion and decoding) to answer after ``steps``."""
        return self.timing.until(self.steps if steps is None else steps) / max(1, self.puzzles)

    def summary(self) -> dict[str, Any]:
        """A JSON-able summary: settings, scores, costs and the curve."""
        return {
            "task": self.task, "split": self.split, "puzzles": self.puzzles, "groups": len({r.group for r in self.results}),
            "views": self.views, "augmentations": self.augmentations, "steps": self.steps, "n_sup": self.n_sup,
            "metrics": self.metrics, "seconds_per_puzzle": self.seconds_per_puzzle(),
            "prompt_tokens_per_puzzle": self.prompt_tokens / max(1, self.puzzles),
            "backbone_flops_per_puzzle": self.backbone_flops_per_puzzle(), "flops_per_puzzle": self.flops_per_puzzle(),
            "trainable_params": self.trainable_params, "total_params": self.trainable_params + self.backbone_params,
            "curve": self.curve,
        }  # fmt: skip


def is_arc(task) -> bool:
    """Whether ``task`` is an ARC family (scored pass@2, with a Kaggle submission)."""
    from ..tasks import ArcTask

    return isinstance(task, ArcTask)


def evaluate_model(model, task, rows, *, split: str = "", augmentations: int = 1, steps: int | None = None,
                   curve_steps: int | None = None, batch_size: int = 32, seed: int = 0, progress: bool = True) -> Evaluation:
    """Evaluate ``model`` on ``rows`` of ``task`` in one pass (see the module docstring).

    steps: the supervision step whose answer is scored (default N_sup). curve_steps: how far the
    test-time compute curve goes (default 2 x steps; it is at least ``steps``).
    """
    cfg = model.config
    check_model_task(cfg, task, getattr(model, "name_or_path", None) or "the model")
    steps = steps or cfg.halt_max_steps
    curve_steps = max(steps, curve_steps if curve_steps is not None else 2 * steps)
    backbone = model.backbone
    if backbone.context_length is not None:  # ARC drops demonstrations to fit the backbone's context
        tok = backbone.tokenizer
        task.set_budget(backbone.context_length, lambda text: len(tok(text)["input_ids"]))
    views = render_views(task, rows, augmentations, seed)
    puzzle_ids = _puzzle_ids(model, task, rows, views)
    traces, tokens, timing = predict_views(model, task, views, curve_steps, batch_size, puzzle_ids, progress)
    per_puzzle = [[traces[j] for j in idx] for idx in _views_by_puzzle(views, len(rows))]
    ks = sorted({1, max(map(len, per_puzzle), default=1)} | ({2} if is_arc(task) else set()))
    curve = []
    for k in range(1, curve_steps + 1):
        results = [score_puzzle(task, rows[p], per_puzzle[p], k, ks) for p in range(len(rows))]
        curve.append({"step": k} | aggregate(results, ks))
        if k == steps:
            final = results
    ev = Evaluation(task.name, split, steps, cfg.halt_max_steps, augmentations, ks, final, curve, timing, len(views.examples),
                    sum(tokens), sum(p.numel() for p in model.parameters()),
                    sum(p.numel() for p in backbone.model.parameters()), backbone_params_run(backbone), *core_flops(cfg))
    if is_arc(task):
        ev.submission = kaggle_submission(final)
    return ev


def _views_by_puzzle(views: Views, n: int) -> list[list[int]]:
    """View indices of each puzzle 0..n-1."""
    out: list[list[int]] = [[] for _ in range(n)]
    for j, p in enumerate(views.puzzle):
        out[p].append(j)
    return out


def _puzzle_ids(model, task, rows, views: Views) -> list[int] | None:
    """TRM puzzle IDs per view for a model with an ID table (0 = a puzzle unseen in training)."""
    if not model.config.num_puzzle_ids:
        return None

    vocab = puzzle_vocabulary(task.load("train"))
    return [vocab.get(puzzle_key(rows[p]), 0) for p in views.puzzle]


def query_order(query: str) -> tuple[str, int]:
    """Sort key of an ARC query name: "test10" after "test9"."""
    digits = re.search(r"(\d*)$", query).group(1)
    return query[: len(query) - len(digits)], int(digits or 0)


def kaggle_submission(results: list[PuzzleResult]) -> dict[str, list[dict[str, Grid]]]:
    """``{task_id: [{"attempt_1": grid, "attempt_2": grid}, ...]}`` in test-input order (the Kaggle
    format). A missing attempt is the 1x1 grid [[0]]."""
    by_task: dict[str, list[PuzzleResult]] = defaultdict(list)
    for r in results:
        by_task[r.group].append(r)
    out = {}
    for task_id, members in by_task.items():
        entries = []
        for r in sorted(members, key=lambda r: query_order(r.query)):
            tries = [a for a in r.attempts(2)] + [EMPTY_ATTEMPT] * 2
            entries.append({"attempt_1": tries[0], "attempt_2": tries[1]})
        out[task_id] = entries
    return out


# ============================================================================ outputs
def curve_table(curve: list[dict[str, float]], n_sup: int, keys: Sequence[str]) -> str:
    """The test-time compute curve as a markdown table (steps past N_sup are marked)."""
    lines = ["| step | " + " | ".join(keys) + " |", "|---:|" + "---:|" * len(keys)]
    for row in curve:
        mark = " (> N_sup)" if row["step"] > n_sup else ""
        lines.append(f"| {row['step']}{mark} | " + " | ".join(f"{100 * row[k]:.1f}%" for k in keys) + " |")
    return "\n".join(lines)


def curve_keys(curve: list[dict[str, float]]) -> list[str]:
    """The accuracy columns of a curve (exact, pass@k, cell)."""
    return [k for k in curve[0] if k not in ("step", "halt_step")] if curve else []


def plot_curve(ax, curve: list[dict[str, float]], n_sup: int, label: str = "", keys: Sequence[str] | None = None) -> None:
    """Draw accuracy against supervision step on ``ax``, with N_sup marked."""
    steps = [row["step"] for row in curve]
    for key in keys or curve_keys(curve):
        ax.plot(steps, [100 * row[key] for row in curve], marker="o", markersize=3, label=f"{label} {key}".strip())
    ax.axvline(n_sup, color="grey", linestyle="--", linewidth=1)
    ax.text(n_sup, ax.get_ylim()[1], " N_sup", va="top", fontsize=8, color="grey")
    ax.set_xlabel("supervision steps")
    ax.set_ylabel("accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def write_evaluation(ev: Evaluation, out_dir: str | os.PathLike, model_name: str, command: str) -> list[Path]:
    """Write metrics.json, curve.csv, curve.png, per_task.csv, summary.md and (ARC) submission.json,
    each atomically; summary.md last. Returns the paths written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    keys = curve_keys(ev.curve)
    written = [out / "metrics.json", out / "curve.csv", out / "per_task.csv", out / "curve.png"]
    write_json(written[0], {"model": model_name, "command": command} | ev.summary())
    write_csv(written[1], ["step", *keys, "halt_step", "flops_per_puzzle", "seconds_per_puzzle"],
              [[r["step"], *(f"{r[k]:.6f}" for k in keys), f"{r['halt_step']:.3f}", f"{ev.flops_per_puzzle(r['step']):.6g}",
                f"{ev.seconds_per_puzzle(r['step']):.6g}"] for r in ev.curve])
    write_csv(written[2], ["task_id", "puzzle_id", "test_input", "solved", "solved_pass1", "cell_accuracy",
                           "winner_votes", "views", "distinct_answers", "halt_step", "confidence"],
              [[r.group, r.id, r.query, int(r.solved[2 if ev.headline == "pass@2" else 1]), int(r.solved[1]), f"{r.cell:.4f}",
                r.candidates[0].votes if r.candidates else 0, r.views, len(r.candidates), f"{r.halt_step:.2f}",
                f"{r.candidates[0].confidence:.4f}" if r.candidates else ""] for r in ev.results])
    fig, ax = plt.subplots(figsize=(6, 4))
    plot_curve(ax, ev.curve, ev.n_sup, keys=keys)
    ax.set_title(f"{model_name}: {ev.task} {ev.split}, test-time compute")
    save_figure(fig, written[3])
    if ev.submission is not None:
        written.append(out / "submission.json")
        write_json(written[-1], ev.submission, indent=None)  # compact, as Kaggle's files are
    written.append(out / "summary.md")
    atomic_write(written[-1], summary_markdown(ev, model_name, command))
    return written


def summary_markdown(ev: Evaluation, model_name: str, command: str) -> str:
    """A short human-readable report of one evaluation."""
    m, keys = ev.metrics, curve_keys(ev.curve)
    head = "ARC Prize score (mean over tasks of test inputs solved)" if ev.submission is not None else "exact accuracy"
    lines = [f"# {model_name} on {ev.task} ({ev.split})", "", f"Command: `{command}`", "",
             f"- puzzles: {ev.puzzles} in {len({r.group for r in ev.results})} groups, {ev.views} views "
             f"({ev.augmentations} augmentations asked), answer read at step {ev.steps} (N_sup = {ev.n_sup})",
             f"- {head}: " + ", ".join(f"{k} {100 * m[k]:.1f}%" for k in keys),
             f"- mean halting step {m['halt_step']:.2f}; {ev.seconds_per_puzzle():.3f} s/puzzle; "
             f"{ev.flops_per_puzzle():.3g} FLOPs/puzzle ({ev.backbone_flops_per_puzzle():.3g} in the backbone)",
             "", "## Test-time compute curve", "", curve_table(ev.curve, ev.n_sup, keys), ""]
    return "\n".join(lines)


# ============================================================================ command line
def quiet_transformers() -> None:
    """Hide transformers' per-file loading bars (commands show their own progress)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def parse_options(items: Sequence[str]) -> dict[str, Any]:
    """``KEY=VALUE`` task options; values are read as YAML scalars (8 -> int, true -> bool)."""
    import yaml

    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--option {item!r}: expected KEY=VALUE")
        options[key] = yaml.safe_load(value)
    return options


def parser() -> argparse.ArgumentParser:
    """The ``hybrid-reason evaluate`` argument parser."""
    p = argparse.ArgumentParser(prog="hybrid-reason evaluate", description="Score a trained HybridReasoner on a task: "
                                "ARC voting and pass@k, exact/cell accuracy, the test-time compute curve.")
    p.add_argument("--model", required=True, help="a saved HybridReasoner folder (hybrid-reason export / save_pretrained)")
    p.add_argument("--task", help="task name (default: the one the model was trained on, with its options)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="override a task option")
    p.add_argument("--split", default="test", help="train, validation, test; 'eval' = test (ARC's evaluation tasks)")
    p.add_argument("--limit", type=int, help="only the first N puzzles (ARC: tasks)")
    p.add_argument("--augmentations", type=int, default=1, help="views per puzzle, voted (ARC: dihedral x colours)")
    p.add_argument("--steps", type=int, help="supervision steps whose answer is scored (default: N_sup)")
    p.add_argument("--curve-steps", type=int, help="test-time compute curve length (default: 2 x steps)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0, help="seeds the augmentations")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", help="output folder (default: MODEL/evaluation/TASK-SPLIT)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> Evaluation:
    """``hybrid-reason evaluate``: evaluate, write the outputs, print the summary."""
    args = parser().parse_args(argv)
    quiet_transformers()
    try:
        model = load_model(args.model, args.device)
        spec = task_spec_for(model.config.task, args.task, parse_options(args.option))
        task = build_task_spec(spec)
        check_model_task(model.config, task, args.model)
        if (model.config.task or {}).get("name") not in (None, task.name):
            print(f"hybrid-reason evaluate: note: {args.model} was trained on {model.config.task['name']!r}", file=sys.stderr)
        split = resolve_split(args.split)
        rows = select_rows(task.load(split), args.limit)
        ev = evaluate_model(model, task, rows, split=split, augmentations=args.augmentations, steps=args.steps,
                            curve_steps=args.curve_steps, batch_size=args.batch_size, seed=args.seed,
                            progress=not args.no_progress)
    except (OSError, ValueError) as err:
        sys.exit(f"hybrid-reason evaluate: {err}")
    out = args.out or os.path.join(args.model, "evaluation", f"{task.name}-{split}")
    command = "hybrid-reason evaluate " + " ".join(sys.argv[2:] if argv is None else argv)
    write_evaluation(ev, out, args.model, command)
    print(summary_markdown(ev, args.model, command))
    print(f"hybrid-reason: wrote {out}")
    return ev


__all__ = [
    "Candidate", "Evaluation", "PuzzleResult", "Trace", "aggregate", "arc_score", "atomic_write", "check_model_task",
    "core_flops", "evaluate_model", "kaggle_submission", "load_model", "main", "predict_views", "render_views",
    "score_puzzle", "select_rows", "task_scores", "vote", "write_evaluation",
]
