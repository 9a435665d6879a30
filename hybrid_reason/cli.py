"""The `hybrid-reason` command: one entry point, each subcommand implemented in its own module.

    hybrid-reason fit|validate|test --config recipes/X.yaml   train / evaluate with LightningCLI
    hybrid-reason export CKPT OUT [--overwrite]               write the HF model folder (EMA weights)
    hybrid-reason evaluate ... | compare ... | baseline ...   evaluation harness and baselines
    hybrid-reason bench core|backbone|ttt                     speed benchmarks

Subcommand modules are imported lazily so `hybrid-reason --help` stays fast. A user error
(``HybridReasonError``, raised anywhere below, or the one an error was raised from) is printed as
``error: <one line>`` on stderr with exit status 2, like an argument error; any other exception is a
bug and keeps its traceback.
"""

from __future__ import annotations

import importlib
import sys

from .errors import HybridReasonError

# subcommand -> (module, function, one-line help)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "fit": ("hybrid_reason.training.recipe_cli", "main", "train a model from a YAML recipe (LightningCLI)"),
    "validate": ("hybrid_reason.training.recipe_cli", "main", "validate a model from a YAML recipe (LightningCLI)"),
    "test": ("hybrid_reason.training.recipe_cli", "main", "test a model from a YAML recipe (LightningCLI)"),
    "export": (
        "hybrid_reason.training.export",
        "export_main",
        "export a checkpoint's EMA weights as a HF model folder",
    ),
    "evaluate": (
        "hybrid_reason.evaluation.commands",
        "evaluate_main",
        "score a trained model on a task (ARC voting, pass@k, curves)",
    ),
    "compare": ("hybrid_reason.evaluation.commands", "compare_main", "run an evaluation suite and write its report"),
    "baseline": (
        "hybrid_reason.evaluation.commands",
        "baseline_main",
        "run an LLM baseline: chain of thought, direct answer, or sft (fine-tuned with LoRA)",
    ),
    "bench": ("hybrid_reason.bench", "main", "speed benchmarks of the core, the backbone and test-time training"),
    "plan": ("hybrid_reason.plan", "main", "estimate a recipe's FLOPs, GPU time and memory (loads no weights)"),
}

# LightningCLI subcommands keep the subcommand in argv; the others get only their own arguments.
_LIGHTNING = {"fit", "validate", "test"}
USER_ERROR = 2  # the exit status of argparse/jsonargparse argument errors too


def usage() -> str:
    """The top-level help text."""
    lines = ["usage: hybrid-reason COMMAND [ARGS]", "", "commands:"]
    lines += [f"  {name:10s} {help_}" for name, (_, _, help_) in COMMANDS.items()]
    return "\n".join(lines)


def user_error(err: BaseException) -> HybridReasonError | None:
    """``err`` if it is a HybridReasonError, else the one it was raised from (``raise X from err``
    chains, as libraries that wrap errors write them), else None."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, HybridReasonError):
            return err
        seen.add(id(err))
        err = err.__cause__
    return None


def main(argv: list[str] | None = None) -> None:
    """Dispatch `hybrid-reason COMMAND ...` to the module that implements COMMAND."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return
    command = argv[0]
    if command not in COMMANDS:
        print(usage(), file=sys.stderr)
        _fail(f"unknown command {command!r}")
    module, function, _ = COMMANDS[command]
    try:
        entry = getattr(importlib.import_module(module), function)
        entry(argv if command in _LIGHTNING else argv[1:])
    except Exception as err:
        found = user_error(err)
        if found is None:
            raise
        _fail(str(found))


def _fail(message: str) -> None:
    """Print ``error: message`` on stderr and exit with the user-error status."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(USER_ERROR)


if __name__ == "__main__":
    main()
