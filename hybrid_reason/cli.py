"""The `hybrid-reason` command: one entry point, each subcommand implemented in its own module.

    hybrid-reason fit|validate|test --config recipes/X.yaml   train / evaluate with LightningCLI
    hybrid-reason export CKPT OUT                             write the HF model folder (EMA weights)
    hybrid-reason evaluate ... | compare ... | baseline ...   evaluation harness and baselines
    hybrid-reason bench core|backbone                         speed benchmarks

Subcommand modules are imported lazily so `hybrid-reason --help` stays fast.
"""

from __future__ import annotations

import importlib
import sys

# subcommand -> (module, function, one-line help)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "fit": ("hybrid_reason.training.recipe_cli", "main", "train a model from a YAML recipe (LightningCLI)"),
    "validate": ("hybrid_reason.training.recipe_cli", "main", "validate a model from a YAML recipe (LightningCLI)"),
    "test": ("hybrid_reason.training.recipe_cli", "main", "test a model from a YAML recipe (LightningCLI)"),
    "export": ("hybrid_reason.training.recipe_cli", "export_main", "export a checkpoint's EMA weights as a HF model folder"),
    "evaluate": ("hybrid_reason.evaluation.hybrid", "main", "score a trained model on a task (ARC voting, pass@k, curves)"),
    "compare": ("hybrid_reason.evaluation.suite", "main", "run an evaluation suite and write its report"),
    "baseline": ("hybrid_reason.evaluation.llm", "main", "run a chain-of-thought or direct-answer LLM baseline"),
    "bench": ("hybrid_reason.bench", "main", "speed benchmarks of the core and the backbone"),
}

# LightningCLI subcommands keep the subcommand in argv; the others get only their own arguments.
_LIGHTNING = {"fit", "validate", "test"}


def usage() -> str:
    """The top-level help text."""
    lines = ["usage: hybrid-reason COMMAND [ARGS]", "", "commands:"]
    lines += [f"  {name:10s} {help_}" for name, (_, _, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Dispatch `hybrid-reason COMMAND ...` to the module that implements COMMAND."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return
    command = argv[0]
    if command not in COMMANDS:
        sys.exit(f"hybrid-reason: unknown command {command!r}\n{usage()}")
    module, function, _ = COMMANDS[command]
    entry = getattr(importlib.import_module(module), function)
    entry(argv if command in _LIGHTNING else argv[1:])


if __name__ == "__main__":
    main()
