"""What evaluations write: tables, plots, summaries, and result folders that change as one unit.

A result folder (``evaluate --out``, a baseline's, a suite's report) is built whole in a temporary
sibling and swapped in with one rename (``write_dir_atomically``): a reader, or a run killed half-way,
sees the previous folder or the new one, never a mix. An existing folder is replaced only when all it
holds are files such a folder holds, so ``--out`` can never delete a user's other files.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

from ..errors import HybridReasonError
from ..utils.atomic_io import atomic_write, save_figure, write_csv, write_dir_atomically, write_json

EVALUATION_FILES = (
    "metrics.json", "curve.csv", "curve.png", "per_task.csv", "submission.json", "summary.md",
    "trajectories.md", "trajectories.json",  # with --trajectory_curve
)  # fmt: skip
BASELINE_FILES = ("metrics.json", "per_task.csv", "replies.jsonl")
SFT_FILES = (*BASELINE_FILES, "summary.md", "adapter")


# ============================================================================ result folders
def check_result_folder(out: str | os.PathLike, names: Sequence[str], flag: str = "--out") -> Path:
    """``out`` as a Path, checked before any work: not a file, and either absent, empty or holding only
    the ``names`` that a result folder holds (so replacing it loses nothing of the user's)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise HybridReasonError(f"{flag} {out} is a file; give a folder for the results")
    foreign = sorted(p.name for p in out.iterdir() if p.name not in names) if out.is_dir() else []
    if foreign:
        raise HybridReasonError(
            f"{flag} {out} holds {foreign[0]!r}, which is not a result file; it would be replaced "
            "with the whole folder: choose a new or empty folder"
        )
    return out


def write_result_folder(out: str | os.PathLike, names: Sequence[str], write: Callable[[Path], None]) -> Path:
    """Check ``out`` (``check_result_folder``), then build it with ``write(tmp)`` and swap it in whole."""
    out = check_result_folder(out, names)
    write_dir_atomically(out, write)
    return out


def slug(name: str) -> str:
    """A folder name for a system."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "system"


def pyplot():
    """pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# ============================================================================ one evaluation
def curve_keys(curve: list[dict[str, float]]) -> list[str]:
    """The accuracy columns of a curve (exact, pass@k, cell)."""
    return [k for k in curve[0] if k not in ("step", "halt_step")] if curve else []


def curve_table(curve: list[dict[str, float]], n_sup: int, keys: Sequence[str]) -> str:
    """The test-time compute curve as a markdown table (steps past N_sup are marked)."""
    lines = ["| step | " + " | ".join(keys) + " |", "|---:|" + "---:|" * len(keys)]
    for row in curve:
        mark = " (> N_sup)" if row["step"] > n_sup else ""
        lines.append(f"| {row['step']}{mark} | " + " | ".join(f"{100 * row[k]:.1f}%" for k in keys) + " |")
    return "\n".join(lines)


def plot_curve(
    ax, curve: list[dict[str, float]], n_sup: int, label: str = "", keys: Sequence[str] | None = None
) -> None:
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


SCORE_COLUMNS = ["solved", "solved_pass1", "cell_accuracy"]
VOTE_COLUMNS = ["winner_votes", "views", "distinct_answers", "halt_step", "confidence", "dropped_demonstrations"]


def _scores(r, headline: str) -> list:
    """A scored puzzle's SCORE_COLUMNS: solved by the headline metric, solved at pass@1, cell accuracy."""
    return [int(r.solved[2 if headline == "pass@2" else 1]), int(r.solved[1]), f"{r.cell:.4f}"]


def _votes(r) -> list:
    """A puzzle's VOTE_COLUMNS: how its answers voted, and the demonstrations its prompts lost."""
    winner = r.candidates[0] if r.candidates else None
    return [winner.votes if winner else 0, r.views, len(r.candidates), f"{r.halt_step:.2f}",
            f"{winner.confidence:.4f}" if winner else "", r.dropped_demonstrations]  # fmt: skip


def evaluation_files(ev, folder: Path, model_name: str, command: str) -> None:
    """Write one evaluation into ``folder``: metrics.json, curve.csv, curve.png, per_task.csv,
    submission.json (ARC) and summary.md; without targets only per_task.csv and submission.json."""
    scores = SCORE_COLUMNS if ev.scored else []
    write_csv(
        folder / "per_task.csv",
        ["task_id", "puzzle_id", "test_input", *scores, *VOTE_COLUMNS],
        [[r.group, r.id, r.query, *(_scores(r, ev.headline) if scores else []), *_votes(r)] for r in ev.results],
    )
    if ev.submission is not None:
        write_json(folder / "submission.json", ev.submission, indent=None)  # compact, as Kaggle's files are
    if not ev.scored:
        return
    keys = curve_keys(ev.curve)
    write_json(folder / "metrics.json", {"model": model_name, "command": command} | ev.summary())
    write_csv(
        folder / "curve.csv",
        ["step", *keys, "halt_step", "flops_per_puzzle", "seconds_per_puzzle"],
        [
            [
                r["step"],
                *(f"{r[k]:.6f}" for k in keys),
                f"{r['halt_step']:.3f}",
                f"{ev.flops_per_puzzle(r['step']):.6g}",
                f"{ev.seconds_per_puzzle(r['step']):.6g}",
            ]
            for r in ev.curve
        ],
    )
    fig, ax = pyplot().subplots(figsize=(6, 4))
    plot_curve(ax, ev.curve, ev.n_sup, keys=keys)
    ax.set_title(f"{model_name}: {ev.task} {ev.split}, test-time compute")
    save_figure(fig, folder / "curve.png")
    atomic_write(folder / "summary.md", summary_markdown(ev, model_name, command))


def write_evaluation(ev, out: str | os.PathLike, model_name: str, command: str) -> Path:
    """Write ``evaluation_files`` as one result folder (swapped in whole)."""
    return write_result_folder(out, EVALUATION_FILES, lambda tmp: evaluation_files(ev, tmp, model_name, command))


def summary_markdown(ev, model_name: str, command: str) -> str:
    """A short human-readable report of one evaluation."""
    lines = [
        f"# {model_name} on {ev.task} ({ev.split})",
        "",
        f"Command: `{command}`",
        "",
        f"- puzzles: {ev.puzzles} in {len({r.group for r in ev.results})} groups, {ev.views} views "
        f"({ev.augmentations} augmentations asked), answer read at step {ev.steps} (N_sup = {ev.n_sup})",
    ]
    if ev.trajectories > 1 or ev.vote_weight != "count":
        lines.append(
            f"- {ev.trajectories} trajectories per view (noise {ev.trajectory_noise:g}): {ev.views * ev.trajectories} "
            f"answers voted, each weighted by {ev.vote_weight}"
        )
    if ev.dropped_demonstrations:
        lines.append(
            f"- {ev.prompts_with_dropped_demonstrations} of {ev.views} prompts lost demonstrations to the "
            f"backbone's context ({ev.dropped_demonstrations} in all)"
        )
    if not ev.scored:
        return "\n".join(
            lines
            + [
                "- no targets: this split has no solutions, so there is no score; the predictions "
                "are in per_task.csv" + (" and submission.json" if ev.submission is not None else ""),
                "",
            ]
        )
    m, keys = ev.metrics, curve_keys(ev.curve)
    head = "ARC Prize score (mean over tasks of test inputs solved)" if ev.headline == "pass@2" else "exact accuracy"
    lines += [
        f"- {head}: " + ", ".join(f"{k} {100 * m[k]:.1f}%" for k in keys),
        f"- mean halting step {m['halt_step']:.2f}; {ev.seconds_per_puzzle():.3f} s/puzzle; "
        f"{ev.flops_per_puzzle():.3g} FLOPs/puzzle ({ev.backbone_flops_per_puzzle():.3g} in the backbone)",
        "",
        "## Test-time compute curve",
        "",
        curve_table(ev.curve, ev.n_sup, keys),
        "",
    ]
    return "\n".join(lines)


# ============================================================================ one baseline
def baseline_files(result, folder: Path, command: str) -> None:
    """Write one LLM baseline into ``folder``: metrics.json, per_task.csv and replies.jsonl."""
    write_json(folder / "metrics.json", {"command": command} | result.summary())
    scores = SCORE_COLUMNS if all(r.scored for r in result.results) else []
    replies = ["generated_tokens", "finished", "parsed", "seconds", "dropped_demonstrations"]
    write_csv(
        folder / "per_task.csv",
        ["task_id", "puzzle_id", *scores, *replies],
        [
            [
                r.group,
                r.id,
                *(_scores(r, result.headline) if scores else []),
                sum(x.tokens for x in rs),
                sum(x.finished for x in rs),
                sum(x.answer is not None for x in rs),
                f"{s:.3f}",
                r.dropped_demonstrations,
            ]
            for r, rs, s in zip(result.results, result.replies, result.seconds)
        ],
    )
    lines = [
        json.dumps({"id": r.id, "solved": r.solved[1] if r.scored else None, "replies": [asdict(x) for x in rs]})
        for r, rs in zip(result.results, result.replies)
    ]
    atomic_write(folder / "replies.jsonl", "\n".join(lines) + "\n")


def write_baseline(result, out: str | os.PathLike, command: str) -> Path:
    """Write ``baseline_files`` as one result folder (swapped in whole)."""
    return write_result_folder(out, BASELINE_FILES, lambda tmp: baseline_files(result, tmp, command))


# ============================================================================ the fine-tuned LLM
def sft_files(result, folder: Path, command: str) -> None:
    """Write a fine-tuned LLM's result into ``folder``: the baseline's files (its metrics.json holds the
    training figures), summary.md and the LoRA adapter (``adapter/``, loadable with peft)."""
    baseline_files(result, folder, command)
    atomic_write(folder / "summary.md", sft_summary(result, command))
    result.save_adapter(folder / "adapter")


def write_sft(result, out: str | os.PathLike, command: str) -> Path:
    """Write ``sft_files`` as one result folder (swapped in whole)."""
    return write_result_folder(out, SFT_FILES, lambda tmp: sft_files(result, tmp, command))


def sft_summary(result, command: str) -> str:
    """summary.md of a fine-tuned LLM: what training cost and how its direct answers scored."""
    t, m = result.training.summary(), result.metrics
    return "\n".join(
        [
            f"# {result.model} fine-tuned with LoRA on {result.task}, scored on {result.split}",
            "",
            f"Command: `{command}`",
            "",
            f"- training: {t['steps']} steps, {t['examples_seen']} training examples seen (of "
            f"{t['train_puzzles']} puzzles), {t['trainable_params']:,} trainable parameters (LoRA rank "
            f"{t['settings']['lora_rank']}), {t['seconds']:.0f} s wall time",
            f"- loss on the answer tokens: {t['loss_first_steps']:.3f} over the first steps, "
            f"{t['loss_last_steps']:.3f} over the last",
            f"- {result.puzzles} puzzles, answered greedily with the direct baseline's prompt and parser: "
            + ", ".join(f"{k} {100 * m[k]:.1f}%" for k in m if k not in ("unfinished", "unparsed")),
            f"- {100 * m['unfinished']:.0f}% of replies hit the {result.settings.max_new_tokens}-token cap, "
            f"{100 * m['unparsed']:.0f}% finished without a well-formed answer",
            "",
        ]
    )
