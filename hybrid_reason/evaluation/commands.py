"""The evaluation commands: ``hybrid-reason evaluate``, ``baseline`` and ``compare``.

Each command is a typed function below; jsonargparse builds its flags from the signature and the
docstring (and, for ``baseline``, from the ``GenerationSettings`` dataclass), so the values are checked
when they are parsed: ``--limit 0`` or ``--steps 0`` is refused before anything loads. Every command
also takes ``--config FILE`` (a YAML of its flags) and ``--print_config``.

    hybrid-reason evaluate --model DIR [--task arc1] [--option.KEY VALUE] [--split eval] [--augmentations 8]
    hybrid-reason baseline cot|direct|fixed-depth [--model LM] [--task sort] [--max_new_tokens 512]
    hybrid-reason baseline sft [--model LM] [--task sort] [--max_steps 100] [--lora_rank 8] [--quantization nf4]
    hybrid-reason compare --suite eval/suites/NAME.yaml [--out DIR]
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Callable
from dataclasses import fields, replace
from pathlib import Path
from typing import Any, Literal

from jsonargparse import ActionConfigFile, ArgumentParser
from jsonargparse.typing import NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt

from ..errors import HybridReasonError
from ..tasks import task_from_spec
from .hybrid import Evaluation, evaluate_model
from .llm import BaselineResult, GenerationSettings, load_language_model, run_baseline
from .models import check_fixed_depth, check_model_task, load_model, model_budget, model_config, saved_config
from .puzzles import load_rows, resolve_split, task_spec
from .report import (
    BASELINE_FILES,
    EVALUATION_FILES,
    SFT_FILES,
    check_result_folder,
    evaluation_files,
    sft_summary,
    summary_markdown,
    write_baseline,
    write_evaluation,
    write_result_folder,
    write_sft,
)
from .runtime import default_device, quiet_transformers, torch_threads
from .sft import SFTResult, SFTSettings, run_sft
from .suite import load_suite, select_systems, with_threads
from .suite_report import report_table
from .systems import SystemReport, common_scores, run_suite
from .trajectories import TRAJECTORY_NOISE
from .trajectory_curve import trajectory_curve as trajectory_curve_of
from .ttt import TTTParams, TTTSettings

Split = str  # a split of the task (train, validation, test; rules: test_seen, test_unseen, ...); eval = test
Dtype = Literal["float32", "bfloat16", "float16"]


def evaluate(
    model: str,
    task: str | None = None,
    option: dict[str, Any] | None = None,
    split: Split = "test",
    limit: PositiveInt | None = None,
    augmentations: PositiveInt = 1,
    steps: PositiveInt | None = None,
    curve_steps: PositiveInt | None = None,
    batch_size: PositiveInt = 32,
    trajectories: PositiveInt = 1,
    trajectory_noise: NonNegativeFloat = TRAJECTORY_NOISE,
    vote_weight: Literal["count", "halt"] = "count",
    trajectory_curve: list[PositiveInt] | None = None,
    ttt_steps: NonNegativeInt = 0,
    ttt_params: TTTParams = "all",
    ttt_lr: PositiveFloat | None = None,
    ttt_lora_rank: PositiveInt = 8,
    ttt_batch_size: PositiveInt = 8,
    ttt_task_batch: PositiveInt = 1,
    seed: int = 0,
    device: str | None = None,
    threads: PositiveInt | None = None,
    out: str | None = None,
    progress: bool = True,
    command: str = "",
) -> Evaluation:
    """Score a trained HybridReasoner on a task.

    ARC voting and pass@k, exact and cell accuracy, the test-time compute curve. Writes the result
    folder whole and prints its summary.

    Args:
        model: a saved HybridReasoner folder (hybrid-reason export, save_pretrained)
        task: task name (default: the one the model was trained on, with its options)
        option: task options over the model's: --option.KEY VALUE (repeatable) or --option '{KEY: VALUE}'
        split: a split of the task: train, validation, test (rules: also test_seen, test_unseen); eval = test
        limit: only the first N puzzles (ARC: tasks)
        augmentations: views per puzzle, voted (ARC: dihedral x colour permutation)
        steps: the supervision step whose answer is scored (default: N_sup)
        curve_steps: length of the test-time compute curve (default: 2 x steps)
        batch_size: views x trajectories per batch (a batch encodes batch_size // trajectories views)
        trajectories: parallel trajectories per view, all voted: the first from the model's initial
            carry, the others from it plus seeded Gaussian noise (1 = the ordinary evaluation)
        trajectory_noise: the noise's scale, in units of the initial carry's RMS
        vote_weight: count (each answer one vote, mean halting confidence breaks ties) or halt (each
            answer's vote weighted by its sigmoid(halt logit))
        trajectory_curve: score M trajectories for each M of a list, e.g. [1,4,16], from one pass of
            max(M) (replaces --trajectories); writes trajectories.md and trajectories.json
        ttt_steps: test-time training: optimizer steps on each ARC task's own demonstrations (leave-one-out)
            before it is predicted, then the weights are restored exactly (0 = off)
        ttt_params: which weights test-time training adapts: all, adapter, core-lora or id (a task-ID
            model's new ID row for the task)
        ttt_lr: test-time training's learning rate (default: 1e-4 all, 1e-3 adapter and core-lora, 1e-2 id)
        ttt_lora_rank: the rank of core-lora's adapters
        ttt_batch_size: leave-one-out examples per test-time training step
        ttt_task_batch: tasks adapted at once, each with its own copy of the weights (one vmapped step
            for all; memory grows with it; 1 = one task at a time)
        seed: seeds the augmentations and the trajectories' noise
        device: cpu or cuda (default: cuda when visible)
        threads: torch CPU threads (default: torch's)
        out: the result folder, replaced whole (default: MODEL/evaluation/TASK-SPLIT)
        progress: show a progress bar
    """
    quiet_transformers()
    config = model_config(model)
    chosen = task_from_spec(task_spec(config.task, task, option), "--task")
    check_model_task(config, chosen, model)
    trained = (config.task or {}).get("name")
    if trained not in (None, chosen.name):
        print(f"hybrid-reason evaluate: note: {model} was trained on {trained!r}", file=sys.stderr)
    folder = check_result_folder(
        out or Path(model) / "evaluation" / f"{chosen.name}-{resolve_split(split)}", EVALUATION_FILES
    )
    if trajectory_curve and trajectories not in (1, max(trajectory_curve)):
        raise HybridReasonError(
            f"--trajectories {trajectories}: --trajectory_curve runs max(M) = {max(trajectory_curve)} trajectories"
        )
    with torch_threads(threads):
        net = load_model(model, device or default_device())
        rows = load_rows(chosen, split, limit, model_budget(net))
        options = dict(
            split=resolve_split(split), augmentations=augmentations, steps=steps, curve_steps=curve_steps,
            batch_size=batch_size, seed=seed, progress=progress, trajectory_noise=trajectory_noise,
            vote_weight=vote_weight, ttt=TTTSettings(
                steps=ttt_steps, params=ttt_params, learning_rate=ttt_lr, lora_rank=ttt_lora_rank,
                batch_size=ttt_batch_size, seed=seed, task_batch=ttt_task_batch,
            ),
        )  # fmt: skip
        if trajectory_curve:
            ev, curve = trajectory_curve_of(net, chosen, rows, trajectory_curve, **options)
        else:
            ev, curve = evaluate_model(net, chosen, rows, trajectories=trajectories, **options), None
    if curve is None or not ev.scored:
        write_evaluation(ev, folder, model, command)
    else:  # the evaluation at max(M) and the curve, in one folder swapped in whole
        write_result_folder(
            folder, EVALUATION_FILES, lambda tmp: (evaluation_files(ev, tmp, model, command), curve.write(tmp))
        )
    print(summary_markdown(ev, model, command))
    if curve is not None:
        print(curve.markdown())
    print(f"hybrid-reason: wrote {folder}")
    return ev


def baseline(
    kind: Literal["cot", "direct", "fixed-depth"],
    model: str = "smollm2-135m",
    task: str | None = None,
    option: dict[str, Any] | None = None,
    split: Split = "test",
    limit: PositiveInt | None = None,
    generation: GenerationSettings | None = None,
    seed: int = 0,
    device: str | None = None,
    dtype: Dtype = "float32",
    threads: PositiveInt | None = None,
    out: str | None = None,
    progress: bool = True,
    command: str = "",
) -> BaselineResult | Evaluation:
    """Run an LLM baseline on a task, or evaluate a fixed-depth model.

    Chain of thought or direct answer with HF generate; fixed-depth is a checked ``evaluate``; the
    LLM fine-tuned with LoRA is ``hybrid-reason baseline sft`` (its own flags: ``baseline sft --help``).
    Writes the result folder whole and prints the scores.

    Args:
        kind: cot, direct, or fixed-depth (evaluate a model checked to have T = n = N_sup = 1)
        model: LM: hub id, folder, .gguf or alias; a HybridReasoner folder means its backbone and its task
            (fixed-depth: the trained model)
        task: task name (default: the hybrid model's task, else sort)
        option: task options: --option.KEY VALUE (repeatable) or --option '{KEY: VALUE}'
        split: a split of the task: train, validation, test (rules: also test_seen, test_unseen); eval = test
        limit: only the first N puzzles (ARC: tasks)
        seed: seeds sampling (with temperature > 0)
        device: cpu or cuda (default: cuda when visible)
        dtype: the LM's weights: float32 on CPU, bfloat16 on GPU
        threads: torch CPU threads (default: torch's)
        out: the result folder, replaced whole (default: eval/results/baseline-KIND-TASK)
        progress: show a progress bar
    """
    quiet_transformers()
    if kind == "fixed-depth":
        check_fixed_depth(model_config(model), model)
        return evaluate(
            model,
            task,
            option,
            split,
            limit,
            seed=seed,
            device=device,
            threads=threads,
            out=out,
            progress=progress,
            command=command,
        )
    hybrid = saved_config(model)  # None: an LM, not a HybridReasoner folder
    chosen = task_from_spec(task_spec(hybrid.task if hybrid else None, task, option, default="sort"), "--task")
    folder = check_result_folder(out or Path("eval") / "results" / f"baseline-{kind}-{chosen.name}", BASELINE_FILES)
    with torch_threads(threads):
        lm = load_language_model(model, device or default_device(), dtype)
        rows = load_rows(chosen, split, limit)
        result = run_baseline(lm, chosen, rows, kind, generation, resolve_split(split), progress, seed)
    write_baseline(result, folder, command)
    m = result.metrics
    print(
        f"{kind} {lm.name} on {chosen.name} ({result.split}, {result.puzzles} puzzles): "
        + ", ".join(f"{k} {100 * v:.1f}%" for k, v in m.items())
        + f"; {result.tokens_per_puzzle():.1f} tokens, {result.seconds_per_puzzle():.2f} s per puzzle; "
        f"{100 * m['unfinished']:.0f}% of replies hit the {result.settings.max_new_tokens}-token cap"
    )
    print(f"hybrid-reason: wrote {folder}")
    return result


def sft(
    model: str = "smollm2-135m",
    task: str | None = None,
    option: dict[str, Any] | None = None,
    split: Split = "test",
    limit: PositiveInt | None = None,
    training: SFTSettings | None = None,
    generation: GenerationSettings | None = None,
    seed: int = 0,
    device: str | None = None,
    dtype: Dtype = "float32",
    threads: PositiveInt | None = None,
    out: str | None = None,
    progress: bool = True,
    command: str = "",
) -> SFTResult:
    """Fine-tune an LLM with LoRA on a task's training split and score its direct answers.

    The same LLM trained (Lightning, peft LoRA) to write the answer the direct baseline asks for, after
    the same prompt, with the loss on the answer tokens only; then answered greedily and scored with
    the direct baseline's parser. Writes the result folder whole (with the adapter) and prints the scores.

    Args:
        model: LM: hub id, folder, .gguf or alias; a HybridReasoner folder means its backbone and its task
        task: task name (default: the hybrid model's task, else sort)
        option: task options: --option.KEY VALUE (repeatable) or --option '{KEY: VALUE}'
        split: the split scored: train, validation or test; eval = test (training reads train)
        limit: only the first N puzzles scored (ARC: tasks)
        seed: seeds the adapters, the order of the training examples and sampling
        device: cpu or cuda (default: cuda when visible)
        dtype: the LM's weights: float32 on CPU, bfloat16 on GPU
        threads: torch CPU threads (default: torch's)
        out: the result folder, replaced whole (default: eval/results/baseline-sft-TASK)
        progress: show progress bars
    """
    quiet_transformers()
    hybrid = saved_config(model)
    chosen = task_from_spec(task_spec(hybrid.task if hybrid else None, task, option, default="sort"), "--task")
    folder = check_result_folder(out or Path("eval") / "results" / f"baseline-sft-{chosen.name}", SFT_FILES)
    with torch_threads(threads):
        result = run_sft(
            model, chosen, load_rows(chosen, split, limit), training or SFTSettings(), generation,
            split=resolve_split(split), device=device or default_device(), dtype=dtype, seed=seed, progress=progress,
        )  # fmt: skip
    write_sft(result, folder, command)
    print(sft_summary(result, command))
    print(f"hybrid-reason: wrote {folder}")
    return result


def compare(
    suite: str,
    out: str | None = None,
    split: Split | None = None,
    systems: list[str] | None = None,
    threads: PositiveInt | None = None,
    progress: bool = True,
    command: str = "",
) -> list[SystemReport]:
    """Run an evaluation suite and write its report.

    Every system runs on the same puzzles; the report folder is written whole.

    Args:
        suite: a suite YAML file (eval/suites/*.yaml)
        out: the report folder, replaced whole (default: the suite's output, else eval/results/NAME)
        split: score this split instead of the suite's (the trained runs are the suite's own, found in
            its runs folder), e.g. --split test_seen --out eval/results/NAME_seen
        systems: run only these of the suite's systems (by name)
        threads: torch CPU threads (default: the suite's threads, else torch's)
        progress: show progress bars
    """
    quiet_transformers()
    loaded = select_systems(with_threads(load_suite(suite), threads), systems)
    loaded = loaded if split is None else replace(loaded, split=split)
    folder = Path(out or loaded.output or Path("eval") / "results" / loaded.name)
    reports = run_suite(loaded, folder, command, progress)
    print(report_table(reports, common_scores(reports)))
    print(f"hybrid-reason: wrote {folder / 'report.md'} and {folder / 'report.png'}")
    return reports


# ============================================================================ parsing
def command_parser(
    function: Callable, name: str, positional: bool = False, settings: dict[str, type] | None = None
) -> ArgumentParser:
    """The parser of ``hybrid-reason NAME``: the typed parameters of ``function`` (and, flat, the
    fields of each ``settings`` dataclass, passed as the parameter it is keyed by), ``--config FILE``
    and ``--print_config``."""
    doc = (function.__doc__ or "").strip().split("\n\n")[:2]
    parser = ArgumentParser(prog=f"hybrid-reason {name}", description=" ".join(" ".join(doc).split()))
    parser.add_argument("--config", action=ActionConfigFile, help="a YAML file of these flags")
    parser.add_function_arguments(function, as_positional=positional, skip={"command", *(settings or {})})
    for cls in (settings or {}).values():
        parser.add_class_arguments(cls, None)
    return parser


def _run(
    function: Callable,
    name: str,
    argv: list[str] | None,
    positional: bool = False,
    settings: dict[str, type] | None = None,
):
    """Parse ``argv`` for ``function`` and call it with the values (and the command line, for the record)."""
    argv = sys.argv[2:] if argv is None else list(argv)
    values = command_parser(function, name, positional, settings).parse_args(argv).as_dict()
    values.pop("config", None)
    for parameter, cls in (settings or {}).items():
        values[parameter] = cls(**{f.name: values.pop(f.name) for f in fields(cls)})
    return function(**values, command=shlex.join(["hybrid-reason", *name.split(), *argv]))


def evaluate_main(argv: list[str] | None = None) -> Evaluation:
    """``hybrid-reason evaluate ...`` (see ``evaluate``)."""
    return _run(evaluate, "evaluate", argv)


def baseline_main(argv: list[str] | None = None) -> BaselineResult | Evaluation | SFTResult:
    """``hybrid-reason baseline cot|direct|fixed-depth ...`` (see ``baseline``), or ``baseline sft ...``
    with its own flags (see ``sft``)."""
    argv = sys.argv[2:] if argv is None else list(argv)
    if argv[:1] == ["sft"]:
        settings = {"training": SFTSettings, "generation": GenerationSettings}
        return _run(sft, "baseline sft", argv[1:], settings=settings)
    return _run(baseline, "baseline", argv, positional=True, settings={"generation": GenerationSettings})


def compare_main(argv: list[str] | None = None) -> list[SystemReport]:
    """``hybrid-reason compare --suite FILE ...`` (see ``compare``)."""
    return _run(compare, "compare", argv)


__all__ = [
    "baseline",
    "baseline_main",
    "command_parser",
    "compare",
    "compare_main",
    "evaluate",
    "evaluate_main",
    "sft",
]
