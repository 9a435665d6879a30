"""What a suite writes: report.md, report.png, results.json and each system's own files.

A system trained at several seeds is one row of the table, its figures the mean ± std (sample standard
deviation) over the seeds; results.json keeps every seed's figures. Trained systems also get a row in
the training table (steps, training examples seen, trainable parameters, wall time, cache), and an LLM
rerun at a larger reply budget is its own row beside the one it reruns.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from ..utils.atomic_io import atomic_write, save_figure, write_json
from .report import baseline_files, curve_keys, curve_table, evaluation_files, pyplot, sft_files, slug
from .scoring import group_mean

SUITE_FILES = ("report.md", "report.png", "results.json", "systems")


# ============================================================================ seeds
def grouped(reports: Sequence) -> list[list[int]]:
    """Indices of ``reports`` grouped by system name (one group per system, seeds in order)."""
    order: dict[str, list[int]] = {}
    for i, r in enumerate(reports):
        order.setdefault(r.name, []).append(i)
    return list(order.values())


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for a single value)."""
    values = list(values)
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def pct(values: Sequence[float]) -> str:
    """A share as ``96.0%``, or ``91.3% ± 2.1`` over several seeds."""
    mean, std = mean_std(values)
    return f"{100 * mean:.1f}%" + (f" ± {100 * std:.1f}" if std is not None else "")


def count(n: float) -> str:
    """A compact count: 1.2M, 35.1K, 3.4G."""
    for unit, size in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.3g}{unit}"
    return f"{n:.3g}"


def avg(reports: Sequence, attr: str) -> float:
    """The mean of one attribute over a system's reports (its seeds)."""
    return statistics.fmean(getattr(r, attr) for r in reports)


def mean_curve(curves: list[list[dict[str, float]]]) -> list[dict[str, float]]:
    """The step-by-step mean of several seeds' curves (the steps they share)."""
    steps = min(len(c) for c in curves)
    return [
        {k: v if k == "step" else statistics.fmean(c[i][k] for c in curves) for k, v in curves[0][i].items()}
        for i in range(steps)
    ]


# ============================================================================ tables
def report_table(reports: list, common: tuple[int, list[float | None]]) -> str:
    """The markdown table: one row per system (mean ± std over its seeds); ``common`` = (puzzles all
    ran, each report's score on them, None for a larger-cap rerun)."""
    arc = any(r.headline == "pass@2" for r in reports)
    n_common, on_common = common
    head = ["system", "kind", "seeds", "puzzles", "exact (pass@2)" if arc else "exact", *(["pass@1"] if arc else [])]
    head += [f"exact on the {n_common} common", "cell accuracy", "trainable params", "total params", "s / puzzle",
             "generated tokens / puzzle", "backbone FLOPs / puzzle", "total FLOPs / puzzle"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * 2 + "---:|" * (len(head) - 2)]
    for idx in grouped(reports):
        rs = [reports[i] for i in idx]
        r = rs[0]
        common_cell = "—" if on_common[idx[0]] is None else pct([on_common[i] for i in idx])
        cells = [r.name, r.kind, str(len(rs)) if r.seed is not None else "—", str(r.puzzles)]
        cells += [pct([x.metrics[r.headline] for x in rs])] + ([pct([x.metrics["exact"] for x in rs])] if arc else [])
        cells += [common_cell, pct([x.metrics["cell"] for x in rs]), count(avg(rs, "trainable_params")),
                  count(avg(rs, "total_params")), f"{avg(rs, 'seconds_per_puzzle'):.3f}",
                  f"{avg(rs, 'tokens_per_puzzle'):.1f}", count(avg(rs, "backbone_flops_per_puzzle")),
                  count(avg(rs, "flops_per_puzzle"))]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def training_table(reports: list) -> list[str]:
    """What each trained system's training cost, per seed (mean over seeds): markdown lines."""
    rows = []
    for idx in grouped(reports):
        rs = [reports[i] for i in idx]
        if rs[0].training is None:
            continue
        t = [x.training for x in rs]
        mean = {key: statistics.fmean(x.get(key, 0) for x in t) for key in ("steps", "examples_seen", "seconds")}
        cached = sum(bool(x.get("cached")) for x in t)
        rows.append(
            f"| {rs[0].name} | {rs[0].kind} | {', '.join(str(x.seed) for x in rs)} | {mean['steps']:.0f} | "
            f"{count(mean['examples_seen'])} | {count(avg(rs, 'trainable_params'))} | "
            f"{mean['seconds']:.0f} | {cached} of {len(rs)} |"
        )
    if not rows:
        return []
    return [
        "## Training",
        "",
        "| system | kind | seeds | steps / seed | training examples seen / seed | trainable params | "
        "wall seconds / seed | runs found in the cache |",
        "|---|---|---|---:|---:|---:|---:|---:|",
        *rows,
        "",
        "Training examples seen: for a HybridReasoner, the puzzles that entered the training carry (each then "
        "trained for up to N_sup supervision steps; `slot_steps` in results.json counts those passes); for the "
        "fine-tuned LLM, the sequences in its optimizer steps. A run found in the cache (`runs`, keyed by the "
        "recipe's text, the overrides and the seed) was not trained by this command: its wall seconds are "
        "those of the run that made it.",
        "",
    ]


def seeds_table(reports: list) -> list[str]:
    """The headline score of every seed of the systems trained at several seeds (markdown lines)."""
    groups = [[reports[i] for i in idx] for idx in grouped(reports)]
    groups = [rs for rs in groups if len(rs) > 1]
    if not groups:
        return []
    seeds = sorted({r.seed for rs in groups for r in rs})
    lines = ["## Per seed", "", "| system | " + " | ".join(f"seed {s}" for s in seeds) + " |",
             "|---|" + "---:|" * len(seeds)]  # fmt: skip
    for rs in groups:
        by_seed = {r.seed: f"{100 * r.metrics[r.headline]:.1f}%" for r in rs}
        lines.append(f"| {rs[0].name} | " + " | ".join(by_seed.get(s, "") for s in seeds) + " |")
    return lines + [""]


def llm_replies_table(reports: list) -> list[str]:
    """The LLM systems' reply budget (max_new_tokens), the share of replies that hit it and of finished
    replies without a well-formed answer, and each larger-cap rerun beside the run it repeats."""
    llms = [[reports[i] for i in idx] for idx in grouped(reports) if "unfinished" in reports[idx[0]].metrics]
    if not llms:
        return []
    lines = [
        "## LLM replies",
        "",
        "| system | puzzles | token cap (max_new_tokens) | replies that hit the cap | finished but unparseable |",
        "|---|---:|---:|---:|---:|",
    ]
    for rs in llms:
        r = rs[0]
        lines.append(f"| {r.name} | {r.puzzles} | {r.max_new_tokens} | {pct([x.metrics['unfinished'] for x in rs])} | "
                     f"{pct([x.metrics['unparsed'] for x in rs])} |")  # fmt: skip
    lines.append("")
    for r in (rs[0] for rs in llms if rs[0].fallback_of):
        first = next(x for x in reports if x.name == r.fallback_of)
        on_same = group_mean((first.group[p], first.solved[p]) for p in r.solved)
        lines.append(
            f"More than 10% of `{first.name}`'s replies hit its {first.max_new_tokens}-token cap, so its first "
            f"{r.puzzles} puzzles ran again with {r.max_new_tokens} tokens (`{r.name}`): "
            f"{100 * r.metrics['unfinished']:.0f}% of those replies hit the larger cap, and {r.headline} is "
            f"{100 * r.metrics[r.headline]:.1f}% against {100 * on_same:.1f}% for the same puzzles at "
            f"{first.max_new_tokens} tokens."
        )
        lines.append("")
    return lines


def ttt_table(reports: list) -> list[str]:
    """The systems with test-time training: its settings and the seconds it added per task (markdown lines)."""
    rows = []
    for idx in grouped(reports):
        rs = [reports[i] for i in idx]
        if rs[0].ttt is None:
            continue
        t, s = rs[0].ttt, rs[0].ttt["settings"]
        seconds = statistics.fmean(x.ttt["seconds_per_task"] for x in rs)
        rows.append(f"| {rs[0].name} | {s['steps']} | {s['params']} | {s['learning_rate']:g} | {s['batch_size']} | "
                    f"{s.get('task_batch', 1)} | {t['adapted_tasks']} of {t['tasks']} | {seconds:.2f} |")  # fmt: skip
    if not rows:
        return []
    head = "| system | steps | params | learning rate | batch | tasks at once | tasks adapted | added s / task |"
    return ["## Test-time training", "", head, "|---|---:|---|---:|---:|---:|---:|---:|", *rows, "",
            "Each task's weights are fine-tuned on its own demonstrations (leave-one-out) before its test "
            "inputs are predicted, then restored; a task with fewer than two demonstrations is not adapted. "
            "Added seconds are per evaluated task, on top of s / puzzle above.", ""]  # fmt: skip


def curves_section(reports: list) -> list[str]:
    """Each hybrid system's test-time compute curve (the mean over its seeds)."""
    lines = []
    for idx in grouped(reports):
        rs = [reports[i] for i in idx]
        if rs[0].curve:
            over = f" (mean over {len(rs)} seeds)" if len(rs) > 1 else ""
            curve = mean_curve([r.curve for r in rs])
            lines += [f"## Test-time compute: {rs[0].name}", "",
                      f"N_sup = {rs[0].n_sup}; answer read at N_sup in the table above{over}.", "",
                      curve_table(curve, rs[0].n_sup, curve_keys(curve)), ""]  # fmt: skip
    return lines


def report_markdown(
    suite, reports: list, common, command: str, run: dict[str, Any], task_spec: dict, split: str
) -> str:
    """report.md: the command, the setting, the table, training, seeds, the curves, the LLMs' replies."""
    trained = ""
    if run["recipe_runs"]:
        trained += (
            f" {run['recipe_runs']} recipe runs, {run['cached_runs']} of them found in `{run['runs']}`; training "
            f"the others took {run['training_seconds'] / 60:.1f} min in child processes ({run['jobs']} at most "
            "at once with this one), the systems that need none of them running meanwhile."
        )
    if run["fine_tuning_seconds"]:
        trained += f" Fine-tuning the LLM took {run['fine_tuning_seconds'] / 60:.1f} min of it."
    seeds = f", training seeds {run['seeds']}" if suite.seeds else ""
    lines = [
        f"# Suite `{suite.name}`", "", suite.description.strip(), "",
        f"Produced by `{command}` in {run['wall_seconds'] / 60:.1f} min wall time on {machine()}.{trained}", "",
        f"Task `{json.dumps(task_spec)}`, split `{split}`, seed {suite.seed}{seeds}.", "",
        report_table(reports, common), "",
        "Exact = whole answer right (ARC: the ARC Prize score with 2 attempts, a mean over tasks); cell = "
        "fraction of answer cells right in attempt 1; a system trained at several seeds shows mean ± sample "
        "std over them. Unfinished or unparseable LLM replies count as wrong. Backbone FLOPs: for the hybrid, "
        "the blocks up to its layer over each prompt, attention scores included (model/flops.py); for the "
        "LLMs, 2 x parameters x (prompt + generated tokens), LM head included. Total adds the recursive core "
        "(see docs/evaluation.md). Seconds are wall time per puzzle, batched, after loading.", "",
    ]  # fmt: skip
    return "\n".join(lines + training_table(reports) + seeds_table(reports) + ttt_table(reports)
                     + curves_section(reports) + llm_replies_table(reports))  # fmt: skip


def machine() -> str:
    """A one-line description of where the suite ran."""
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    threads = torch.get_num_threads()
    return f"{device}, torch {torch.__version__}, {threads} thread{'s' * (threads != 1)}, {platform.system()}"


# ============================================================================ plot and files
def plot_report(reports: list, path: Path, title: str) -> None:
    """report.png: accuracy against FLOPs per puzzle (left; bars: std over seeds) and the hybrids'
    test-time compute curves (right; mean over seeds)."""
    fig, (left, right) = pyplot().subplots(1, 2, figsize=(12, 4.5))
    for idx in grouped(reports):
        rs = [reports[i] for i in idx]
        r, (acc, std) = rs[0], mean_std([100 * x.metrics[x.headline] for x in rs])
        flops = statistics.fmean(x.flops_per_puzzle for x in rs)
        point = left.errorbar(
            [flops], [acc], yerr=[std or 0.0], fmt="o", markersize=7, capsize=3, zorder=3, label=r.name
        )
        colour = point.lines[0].get_color()
        if r.curve:
            curve = mean_curve([x.curve for x in rs])
            left.plot(
                r.curve_flops[: len(curve)],
                [100 * row[r.headline] for row in curve],
                color=colour,
                alpha=0.5,
                linewidth=1,
            )
            right.plot([row["step"] for row in curve], [100 * row[r.headline] for row in curve], marker="o", markersize=3,
                       color=colour, label=f"{r.name} (N_sup={r.n_sup})")  # fmt: skip
            right.axvline(r.n_sup, color=colour, linestyle="--", linewidth=0.8)
    left.set_xscale("log")
    left.set_xlabel("FLOPs per puzzle (log)")
    left.set_title("accuracy against compute (lines: hybrid after 1, 2, ... steps)")
    right.set_xlabel("supervision steps (dashed: N_sup)")
    right.set_title("test-time compute curve")
    for ax in (left, right):
        ax.set_ylabel(f"{reports[0].headline} accuracy (%)")
        ax.grid(alpha=0.3)
        ax.set_ylim(-3, 103)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    save_figure(fig, path)


def system_folder(folder: Path, reports: list, i: int) -> Path:
    """``systems/NAME`` for a system run once, ``systems/NAME/seed_S`` for one of several seeds."""
    r = reports[i]
    several = sum(x.name == r.name for x in reports) > 1
    return folder / "systems" / slug(r.name) / (f"seed_{r.seed}" if several else "")


def aggregate(reports: list, common) -> list[dict[str, Any]]:
    """Per system: its seeds and the mean and std over them of every metric (results.json)."""
    out = []
    for idx in grouped(reports):
        rs = [reports[i] for i in idx]
        stats = {k: mean_std([x.metrics[k] for x in rs]) for k in rs[0].metrics}
        on_common = [common[1][i] for i in idx]
        out.append({
            "name": rs[0].name, "kind": rs[0].kind, "seeds": [x.seed for x in rs],
            "mean": {k: m for k, (m, _) in stats.items()}, "std": {k: s for k, (_, s) in stats.items()},
            "common_mean": None if on_common[0] is None else mean_std(on_common)[0],
            "common_std": None if on_common[0] is None else mean_std(on_common)[1],
        })  # fmt: skip
    return out


def suite_files(suite, reports: list, raws: list, folder: Path, command: str, run: dict[str, Any],
                task_spec: dict, split: str, common) -> None:  # fmt: skip
    """Write a suite into ``folder``: each system's own files, results.json, report.png and report.md."""
    for i, raw in enumerate(raws):
        system = system_folder(folder, reports, i)
        if hasattr(raw, "save_adapter"):
            sft_files(raw, system, command)
        elif hasattr(raw, "replies"):
            baseline_files(raw, system, command)
        else:
            evaluation_files(raw, system, reports[i].model, command)
    plain = [{k: v for k, v in asdict(r).items() if k not in ("solved", "group")} for r in reports]
    for row, score in zip(plain, common[1]):
        row["exact_on_common"] = score
    write_json(
        folder / "results.json",
        {"suite": suite.name, "command": command, **run, "machine": machine(), "task": task_spec, "split": split,
         "common_puzzles": common[0], "systems": plain, "aggregate": aggregate(reports, common)},
    )  # fmt: skip
    plot_report(reports, folder / "report.png", f"{suite.name}: {task_spec.get('name')}")
    atomic_write(folder / "report.md", report_markdown(suite, reports, common, command, run, task_spec, split))


__all__ = ["SUITE_FILES", "aggregate", "grouped", "mean_std", "pct", "report_markdown", "report_table", "suite_files"]
