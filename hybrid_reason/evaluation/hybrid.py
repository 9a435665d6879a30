"""Running a trained HybridReasoner on puzzles: views, predictions after every supervision step, voting,
the test-time compute curve and its costs (``hybrid-reason evaluate``; see docs/evaluation.md).

One pass does everything. Every puzzle is rendered under A views (view 0 un-augmented, the others
drawn with ``task.sample_augmentation(rng, train=False)``; tasks without evaluation-time augmentations
have one view), each fitted to the backbone's context. Each view is encoded once by the backbone and
run for max(steps, curve_steps) supervision steps. After every step each view's prediction is decoded
with ``task.decode`` (which crops ARC's canvas and inverts the augmentation), and the views are voted
and scored (``scoring``). The answer is read at ``steps`` (default N_sup); the curve reports every
step 1..curve_steps. With ``trajectories`` M > 1 each view runs M carries from perturbed initial states
(``trajectories``), and all views x trajectories vote together.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..errors import HybridReasonError
from ..model.flops import BackboneShape, CoreShape
from ..tasks.base import PromptBudget, TokenCount
from ..tasks.keys import puzzle_key, puzzle_vocabulary
from .models import check_model_task, model_budget
from .runtime import progress_bar
from .scoring import (
    PuzzleResult,
    VoteWeight,
    aggregate,
    attempt_counts,
    headline,
    is_arc,
    kaggle_submission,
    score_candidates,
    vote,
)
from .trajectories import TRAJECTORY_NOISE, check_trajectories, spread, view_numbers

if TYPE_CHECKING:
    from .ttt import TTTReport, TTTSettings


# ============================================================================ views
@dataclass
class Views:
    """The rendered views of every puzzle, puzzle-major: view j belongs to puzzle ``puzzle[j]``."""

    examples: list  # Rendered
    puzzle: list[int]

    def by_puzzle(self, n: int) -> list[list[int]]:
        """View indices of each puzzle 0..n-1."""
        out: list[list[int]] = [[] for _ in range(n)]
        for j, p in enumerate(self.puzzle):
            out[p].append(j)
        return out


def render_views(task, rows, augmentations: int, seed: int = 0, budget: PromptBudget | None = None) -> Views:
    """View 0 of each row un-augmented, views 1..A-1 under ``sample_augmentation(rng, train=False)``
    drawn from ``default_rng([seed, row, view])``, each rendered within ``budget``. A task with no
    evaluation augmentation (it returns None) gets one view per row."""
    if augmentations < 1:
        raise HybridReasonError(f"augmentations must be >= 1, got {augmentations}")
    examples, puzzle = [], []
    for p in range(len(rows)):
        row = rows[p]
        examples.append(task.render(row, None, budget=budget))
        puzzle.append(p)
        for v in range(1, augmentations):
            aug = task.sample_augmentation(np.random.default_rng([seed, p, v]), False)
            if aug is None:
                break
            examples.append(task.render(row, aug, budget=budget))
            puzzle.append(p)
    return Views(examples, puzzle)


# ============================================================================ running the model
@dataclass
class Trace:
    """One view's predictions after every supervision step."""

    answers: list = field(default_factory=list)  # decoded answer per step (original frame)
    confidences: list[float] = field(default_factory=list)  # sigmoid(halt logit) per step
    halt_logits: list[float] = field(default_factory=list)
    trajectory: int = 0  # which of its view's parallel trajectories (0: from the model's initial carry)

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


def predict_views(
    model,
    task,
    views: Views,
    steps: int,
    batch_size: int = 32,
    puzzle_ids: Sequence[int] | None = None,
    progress: bool = True,
    trajectories: int = 1,
    trajectory_noise: float = TRAJECTORY_NOISE,
    seed: int = 0,
) -> tuple[list[Trace], list[int], Timing]:
    """Run every view for ``steps`` supervision steps from the initial carry, and with ``trajectories``
    M > 1 also from M - 1 perturbed ones (``trajectories.spread``; a batch holds batch_size // M views).

    Returns the Traces (view-major: view j's trajectory t at j * M + t), per view its prompt token
    count, and the Timing of the pass.
    """
    if batch_size < 1:
        raise HybridReasonError(f"batch_size must be >= 1, got {batch_size}")
    traces, tokens, timing = [], [], Timing(steps=[0.0] * steps)
    count = TokenCount(model.backbone.tokenizer)
    done_after = _puzzles_done_after(views.puzzle)
    numbers, per_batch = view_numbers(views.puzzle), max(1, batch_size // trajectories)
    bar, bar_task = progress_bar("evaluate", len(set(views.puzzle)), progress)
    with bar, torch.no_grad():
        for start in range(0, len(views.examples), per_batch):
            batch = views.examples[start : start + per_batch]
            ids = (
                None
                if puzzle_ids is None
                else torch.as_tensor(puzzle_ids[start : start + per_batch], device=model.device)
            )
            keys = [(views.puzzle[j], numbers[j]) for j in range(start, start + len(batch))]
            fan_out = partial(spread, keys=keys, trajectories=trajectories, noise=trajectory_noise, seed=seed)
            traces += _run_batch(model, task, batch, steps, ids, timing, fan_out if trajectories > 1 else None)
            tokens += [count(ex.text) for ex in batch]
            bar.update(bar_task, completed=done_after[start + len(batch) - 1])
    return traces, tokens, timing


def _run_batch(model, task, batch: list, steps: int, puzzle_ids, timing: Timing, fan_out=None) -> list[Trace]:
    """Encode one batch of views, iterate it, and decode every step's predictions. ``fan_out`` (a
    partial ``spread``) repeats each view's features for its trajectories and gives their carries."""
    t0 = time.perf_counter()
    encoded = model.encode(
        [ex.text for ex in batch], [ex.slot_spans for ex in batch], [ex.meta.get("id", "?") for ex in batch]
    )
    timing.encode += time.perf_counter() - t0
    traces = [Trace() for _ in batch]
    t0 = time.perf_counter()
    initial = {}
    if fan_out is not None:
        encoded, puzzle_ids, initial["initial"] = fan_out(model, encoded, puzzle_ids)
        m = len(encoded) // len(batch)
        traces = [Trace(trajectory=t) for _ in batch for t in range(m)]
        batch = [ex for ex in batch for _ in range(m)]
    for k, out in enumerate(model.iterate(encoded, steps, puzzle_ids, **initial)):
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


def _puzzles_done_after(puzzle: list[int]) -> list[int]:
    """For each view index j, how many puzzles have all their views at or before j."""
    ends = set({p: j for j, p in enumerate(puzzle)}.values())  # each puzzle's last view
    return np.cumsum([j in ends for j in range(len(puzzle))], dtype=int).tolist()


def score_puzzle(
    task,
    row: dict,
    traces: list[Trace],
    step: int,
    ks: Sequence[int],
    dropped: int = 0,
    vote_weight: VoteWeight = "count",
) -> PuzzleResult:
    """Vote over a puzzle's views (x trajectories) at ``step`` (1-based), each answer weighted as
    ``vote_weight`` says, and score attempts 1..k against the target."""
    i = step - 1
    halts = [t.halt_step(step) for t in traces]
    candidates = vote([t.answers[i] for t in traces], [t.confidences[i] for t in traces], halts, vote_weight)
    halt = candidates[0].halt_step if candidates else float(np.mean(halts))
    at_halt = vote(
        [t.answers[h - 1] for t, h in zip(traces, halts)],
        [t.confidences[h - 1] for t, h in zip(traces, halts)],
        weight=vote_weight,
    )
    return score_candidates(
        task, row, candidates, ks, views=len(traces), halt_step=halt, at_halt=at_halt, dropped_demonstrations=dropped
    )


# ============================================================================ FLOPs
def view_flops(model, tokens: Sequence[int]) -> tuple[float, float]:
    """(backbone FLOPs, core FLOPs per supervision step), summed over views of ``tokens`` prompt tokens
    each, from the project's one FLOP model (``model/flops.py``, checked against FlopCounterMode)."""
    backbone, cfg = model.backbone, model.config
    core = CoreShape.from_config(cfg)
    resampler_tokens = tokens if cfg.num_context_slots else [0] * len(tokens)
    core_step = sum(core.step_total(n, train=False) for n in resampler_tokens)
    if not getattr(backbone, "num_layers_run", 0):  # the `none` backbone, or layer 0: nothing runs
        return 0.0, float(core_step)
    shape = BackboneShape.from_config(backbone.config, backbone.num_layers_run)
    return float(sum(shape.flops(n) for n in tokens)), float(core_step)


# ============================================================================ evaluation
@dataclass
class Evaluation:
    """Everything one evaluation pass measured (see ``evaluate_model``)."""

    task: str
    split: str
    headline: str  # the metric that scores the task: "pass@2" (ARC) or "exact"
    steps: int  # the step whose answer is scored
    n_sup: int  # the model's halt_max_steps
    augmentations: int
    ks: list[int]
    results: list[PuzzleResult]  # at ``steps``
    curve: list[dict[str, float]]  # one row per step 1..curve_steps
    timing: Timing
    views: int
    prompt_tokens: int  # summed over views
    prompts_with_dropped_demonstrations: int  # views whose prompt lost demonstrations to the context
    dropped_demonstrations: int  # demonstrations lost, summed over views
    trainable_params: int
    backbone_params: int  # frozen, as loaded (truncated at hidden_layer)
    backbone_flops: float  # summed over views
    core_step_flops: float  # one supervision step, summed over views x trajectories
    submission: dict | None = None  # ARC only
    trajectories: int = 1  # parallel trajectories per view (``trajectories``)
    trajectory_noise: float = TRAJECTORY_NOISE
    vote_weight: str = "count"
    traces: list[list[Trace]] | None = field(default=None, repr=False, compare=False)  # per puzzle
    ttt: TTTReport | None = None  # test-time training: its settings and seconds per task (``ttt``)

    @property
    def puzzles(self) -> int:
        """Number of puzzles (ARC: test inputs)."""
        return len(self.results)

    @property
    def scored(self) -> bool:
        """Whether every puzzle had a target (an ARC folder without solutions has none)."""
        return bool(self.results) and all(r.scored for r in self.results)

    @property
    def metrics(self) -> dict[str, float]:
        """The scores at ``steps`` (and the mean halting step)."""
        return {k: v for k, v in self.curve[self.steps - 1].items() if k != "step"}

    def backbone_flops_per_puzzle(self) -> float:
        """Backbone FLOPs of all views of a puzzle (layers 1..hidden_layer, attention scores included)."""
        return self.backbone_flops / max(1, self.puzzles)

    def flops_per_puzzle(self, steps: int | None = None) -> float:
        """Backbone + core FLOPs per puzzle when answering after ``steps`` (default: the scored step)."""
        k = self.steps if steps is None else steps
        return (self.backbone_flops + k * self.core_step_flops) / max(1, self.puzzles)

    def seconds_per_puzzle(self, steps: int | None = None) -> float:
        """Wall seconds per puzzle (encoding, recursion and decoding) to answer after ``steps``."""
        return self.timing.until(self.steps if steps is None else steps) / max(1, self.puzzles)

    def summary(self) -> dict[str, Any]:
        """A JSON-able summary: settings, scores, costs, prompt sizes and the curve."""
        n = max(1, self.puzzles)
        return {
            "task": self.task, "split": self.split, "puzzles": self.puzzles, "groups": len({r.group for r in self.results}),
            "views": self.views, "augmentations": self.augmentations, "steps": self.steps, "n_sup": self.n_sup,
            "trajectories": self.trajectories, "trajectory_noise": self.trajectory_noise,
            "vote_weight": self.vote_weight, "view_trajectories": self.views * self.trajectories,
            "scored": self.scored, "metrics": self.metrics, "seconds_per_puzzle": self.seconds_per_puzzle(),
            "prompt_tokens_per_view": self.prompt_tokens / max(1, self.views),
            "prompt_tokens_per_puzzle_all_views": self.prompt_tokens / n,
            "prompts_with_dropped_demonstrations": self.prompts_with_dropped_demonstrations,
            "dropped_demonstrations": self.dropped_demonstrations,
            "backbone_flops_per_puzzle": self.backbone_flops_per_puzzle(), "flops_per_puzzle": self.flops_per_puzzle(),
            "trainable_params": self.trainable_params, "total_params": self.trainable_params + self.backbone_params,
            "curve": self.curve,
        } | self.ttt_summary()  # fmt: skip

    def ttt_summary(self) -> dict[str, Any]:
        """Test-time training's settings, tasks and added seconds per task (empty without it)."""
        if self.ttt is None:
            return {}
        return {"ttt": self.ttt.summary(), "ttt_seconds_per_task": self.ttt.seconds_per_task()}


def evaluate_model(
    model,
    task,
    rows,
    *,
    split: str = "",
    augmentations: int = 1,
    steps: int | None = None,
    curve_steps: int | None = None,
    batch_size: int = 32,
    seed: int = 0,
    progress: bool = True,
    trajectories: int = 1,
    trajectory_noise: float = TRAJECTORY_NOISE,
    vote_weight: VoteWeight = "count",
    ttt: TTTSettings | None = None,
) -> Evaluation:
    """Evaluate ``model`` on ``rows`` of ``task`` in one pass (see the module docstring).

    steps: the supervision step whose answer is scored (default N_sup). curve_steps: how far the
    test-time compute curve goes (default 2 x steps; it is at least ``steps``). trajectories: carries
    per view, the first the initial carry, the others it plus noise of ``trajectory_noise`` x its RMS
    (``trajectories``). vote_weight: count (one vote per answer) or halt (sigmoid(halt logit) each).
    ttt: with steps > 0, each ARC task is predicted by the model fine-tuned on its demonstrations, then
    restored exactly (``ttt.predict_with_ttt``); the added seconds per task go to ``Evaluation.ttt``.
    """
    check_trajectories(trajectories, trajectory_noise)
    cfg = model.config
    check_model_task(cfg, task, getattr(model, "name_or_path", None) or "the model")
    for name, value in (("steps", steps), ("curve_steps", curve_steps)):
        if value is not None and value < 1:
            raise HybridReasonError(f"{name} must be >= 1, got {value}")
    steps = steps or cfg.halt_max_steps
    curve_steps = max(steps, curve_steps if curve_steps is not None else 2 * steps)
    views = render_views(task, rows, augmentations, seed, model_budget(model))
    ids, ttt_report = _puzzle_ids(model, task, rows, views), None
    options = {"trajectories": trajectories, "trajectory_noise": trajectory_noise, "seed": seed}
    if ttt is not None and ttt.steps > 0:
        from .ttt import predict_with_ttt  # (ttt.py builds on this module)

        traces, tokens, timing, ttt_report = predict_with_ttt(
            model, task, rows, views, ids, curve_steps, batch_size, ttt, progress, **options
        )
    else:
        traces, tokens, timing = predict_views(model, task, views, curve_steps, batch_size, ids, progress, **options)
    by_puzzle = views.by_puzzle(len(rows))
    per_puzzle = [[traces[j * trajectories + t] for j in idx for t in range(trajectories)] for idx in by_puzzle]
    dropped = [ex.meta.get("dropped_demonstrations", 0) for ex in views.examples]
    ks = attempt_counts(task, max(map(len, per_puzzle), default=1))
    curve = []
    for k in range(1, curve_steps + 1):
        results = [
            score_puzzle(task, rows[p], per_puzzle[p], k, ks, max(dropped[j] for j in by_puzzle[p]), vote_weight)
            for p in range(len(rows))
        ]
        curve.append({"step": k} | aggregate(results, ks))
        if k == steps:
            final = results
    backbone = model.backbone
    backbone_flops, core_step_flops = view_flops(model, tokens)
    ev = Evaluation(
        task.name,
        split,
        headline(task),
        steps,
        cfg.halt_max_steps,
        augmentations,
        ks,
        final,
        curve,
        timing,
        len(views.examples),
        sum(tokens),
        sum(d > 0 for d in dropped),
        sum(dropped),
        sum(p.numel() for p in model.parameters()),
        sum(p.numel() for p in backbone.parameters()),
        backbone_flops,
        trajectories * core_step_flops,  # the backbone ran once per view, the core per trajectory
        trajectories=trajectories,
        trajectory_noise=trajectory_noise,
        vote_weight=vote_weight,
        traces=per_puzzle,
        ttt=ttt_report,
    )
    if is_arc(task):
        ev.submission = kaggle_submission(final)
    return ev


def _puzzle_ids(model, task, rows, views: Views) -> list[int] | None:
    """TRM puzzle IDs per view for a model with an ID table (0 = a puzzle unseen in training)."""
    if not model.config.num_puzzle_ids:
        return None
    vocab = puzzle_vocabulary(task.load("train"))
    return [vocab.get(puzzle_key(rows[p]), 0) for p in views.puzzle]


__all__ = [
    "Evaluation",
    "Timing",
    "Trace",
    "Views",
    "view_flops",
    "evaluate_model",
    "predict_views",
    "render_views",
    "score_puzzle",
]
