"""Evaluation suites: run several systems on the same puzzles and write one report.

A suite YAML names a task (default: the first hybrid model's own), a split, a puzzle limit and a list
of systems, each of a kind with its own settings:

- ``hybrid``, ``fixed-depth``, ``deep``, ``no-llm``: a HybridReasoner, either a saved ``model`` folder
  or a ``recipe`` (+ ``overrides``) that the suite trains once per seed (``runs``); the last three are
  checked to be what they say (fixed-depth: T = n = N_sup = 1; deep: an unrolled core, N_sup = 1;
  no-llm: ``backbone.name: none``).
- ``sft``: the LLM fine-tuned with LoRA to answer directly (``sft``), trained once per seed.
- ``cot``, ``direct``: the LLM prompted (``llm``); a reply budget that more than 10% of the replies hit
  is also run at a larger cap on the first puzzles, and both rows are reported.

LLM ``model``s default to the first hybrid's backbone. With ``seeds: [0, 1, 2]`` every trained system
runs once per seed and the report shows mean ± std. A system's ``limit`` takes the first puzzles of the
suite's, so every system sees the same puzzles and the report also scores all systems on the puzzles
they have in common. The file is checked against the dataclasses below by jsonargparse, the machinery
of the command line: an unknown key, a missing one or a value of the wrong type is a one-line error
naming it. The report folder is written only when every system has run, and swapped in whole.
"""

from __future__ import annotations

import re
import types
import typing
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

from jsonargparse import ArgumentError, ArgumentParser
from jsonargparse.typing import NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt

from ..errors import HybridReasonError
from .llm import GenerationSettings
from .sft import SFTSettings
from .trajectories import TRAJECTORY_NOISE
from .ttt import TTTParams

Split = str  # a split of the task (train, validation, test; rules: test_seen, test_unseen, ...); eval = test
Dtype = Literal["float32", "bfloat16", "float16"]
FALLBACK_SHARE = 0.10  # an LLM whose replies hit the cap more often than this also runs a larger cap


# ============================================================================ suite files
@dataclass(kw_only=True)
class HybridEntry:
    """A HybridReasoner: a saved ``model`` folder, or a ``recipe`` the suite trains once per seed.

    Args:
        name: the system's name in the report
        kind: hybrid; fixed-depth (checked: T = n = N_sup = 1); deep (checked: core.unrolled, N_sup = 1);
            no-llm (checked: backbone.name none)
        model: a saved HybridReasoner folder (trained once; not per seed)
        recipe: a training recipe (YAML), trained per seed: hybrid-reason fit --config RECIPE
        overrides: fit flags over the recipe, e.g. ["--model.core.T 1", "--trainer.max_steps 300"]
        limit: only the first puzzles of the suite's (so every system sees the same puzzles)
        task_options: task options over the suite's task for this system's model, changing how a puzzle
            is shown, never which puzzles (e.g. {demo_slots: false} for a model trained without them)
        steps: the supervision step whose answer is scored (default: N_sup)
        curve_steps: length of the test-time compute curve (default: 2 x steps)
        augmentations: voted views per puzzle
        batch_size: views x trajectories per batch
        trajectories: parallel trajectories per view, voted together (the same trained model: a
            "hybrid, 16 trajectories" entry with the same recipe and overrides reuses its runs)
        trajectory_noise: the noise on trajectories 1..M-1's initial carry, in units of its RMS
        vote_weight: count (one vote per answer) or halt (each weighted by sigmoid(halt logit))
        ttt_steps: test-time training steps on each ARC task's demonstrations before it is predicted (0:
            off; a "hybrid + TTT" entry with the same recipe and overrides reuses the hybrid's runs)
        ttt_params: which weights adapt: all, adapter, core-lora or id
        ttt_lr: test-time training's learning rate (default: per ttt_params, see docs/evaluation.md)
        ttt_lora_rank: the rank of core-lora's adapters
        ttt_batch_size: leave-one-out examples per test-time training step
        ttt_task_batch: tasks adapted at once, each with its own copy of the weights
    """

    name: str
    kind: Literal["hybrid", "fixed-depth", "deep", "no-llm"] = "hybrid"
    model: str | None = None
    recipe: str | None = None
    overrides: list[str] = field(default_factory=list)
    limit: PositiveInt | None = None
    task_options: dict[str, Any] | None = None
    steps: PositiveInt | None = None
    curve_steps: PositiveInt | None = None
    augmentations: PositiveInt = 1
    batch_size: PositiveInt = 32
    trajectories: PositiveInt = 1
    trajectory_noise: NonNegativeFloat = TRAJECTORY_NOISE
    vote_weight: Literal["count", "halt"] = "count"
    ttt_steps: NonNegativeInt = 0
    ttt_params: TTTParams = "all"
    ttt_lr: PositiveFloat | None = None
    ttt_lora_rank: PositiveInt = 8
    ttt_batch_size: PositiveInt = 8
    ttt_task_batch: PositiveInt = 1

    def __post_init__(self) -> None:
        if (self.model is None) == (self.recipe is None):
            raise HybridReasonError("give either model (a saved folder) or recipe (trained per seed), not both")
        if self.overrides and self.recipe is None:
            raise HybridReasonError("overrides need a recipe (a saved model is not trained again)")


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
        fallback_max_new_tokens: the larger cap run when more than 10% of replies hit max_new_tokens
            (default: 4 x max_new_tokens)
        fallback_limit: the first puzzles run at the larger cap (null: never run it)
    """

    name: str
    kind: Literal["cot", "direct"]
    model: str | None = None
    limit: PositiveInt | None = None
    dtype: Dtype = "float32"
    chat_template: str | None = None
    fallback_max_new_tokens: PositiveInt | None = None
    fallback_limit: PositiveInt | None = 10

    @property
    def settings(self) -> GenerationSettings:
        """The entry's generation settings, with the kind's reply budget when none is given."""
        return generation_settings(self, self.kind)


@dataclass(kw_only=True)
class SFTEntry(SFTSettings, GenerationSettings):
    """The LLM fine-tuned with LoRA to answer directly, trained once per seed: ``SFTSettings`` (how it
    trains) and ``GenerationSettings`` (how it answers) plus what it runs.

    Args:
        name: the system's name in the report
        kind: sft
        model: hub id, folder, .gguf or alias (default: the suite's first hybrid's backbone)
        limit: only the first puzzles of the suite's
        dtype: the LM's weights (float32 on CPU)
        chat_template: a Jinja chat template, for a model that ships none
    """

    name: str
    kind: Literal["sft"] = "sft"
    model: str | None = None
    limit: PositiveInt | None = None
    dtype: Dtype = "float32"
    chat_template: str | None = None

    @property
    def settings(self) -> GenerationSettings:
        """The entry's generation settings, with the direct baseline's reply budget when none is given."""
        return generation_settings(self, "direct")


def generation_settings(entry: Any, kind: str) -> GenerationSettings:
    """The ``GenerationSettings`` fields of a suite entry, with ``kind``'s reply budget when none is given."""
    return GenerationSettings(**{f.name: getattr(entry, f.name) for f in fields(GenerationSettings)}).for_kind(kind)


Entry = HybridEntry | LLMEntry | SFTEntry


@dataclass
class Suite:
    """A suite: what to run and on which puzzles.

    Args:
        name: the suite (default: the file name); results go to eval/results/NAME
        systems: the systems to compare
        task: the task section {name: ..., option: value} (default: the first hybrid model's own)
        split: a split of the task: train, validation, test (rules: also test_seen, test_unseen); eval = test
        limit: the first puzzles of the split (ARC: tasks)
        seed: seeds the augmentations and the LLMs' sampling (and training, without seeds)
        seeds: train every trained system (recipe, sft) once per seed; the report shows mean ± std
        runs: where recipe systems train, one folder per recipe, overrides and seed, reused when it
            holds a model (default: runs/suites/NAME)
        feature_cache: recipe runs keep the frozen backbone's features in RUNS/features, so every seed
            and system encodes each training text once (with a recipe's ``data.augmentations`` pool)
        jobs: processes busy at once: recipe runs (child processes, a recipe's torch_threads each),
            and this one while it evaluates, during training, systems that need none of the runs
        device: where the systems run (default: cuda when visible)
        threads: torch CPU threads (default: torch's)
        description: a paragraph copied into the report
        output: the report folder (default: eval/results/NAME)
    """

    name: str
    systems: list[Entry]
    task: dict[str, Any] | None = None
    split: Split = "test"
    limit: PositiveInt | None = None
    seed: int = 0
    seeds: list[int] | None = None
    runs: str | None = None
    feature_cache: bool = True
    jobs: PositiveInt = 1
    device: str | None = None
    threads: PositiveInt | None = None
    description: str = ""
    output: str | None = None


KINDS = ("hybrid", "fixed-depth", "deep", "no-llm", "sft", "cot", "direct")
ENTRIES: dict[str, type] = {kind: HybridEntry for kind in KINDS[:4]} | {
    "sft": SFTEntry,
    "cot": LLMEntry,
    "direct": LLMEntry,
}


def _type_name(hint: Any) -> str:
    """A readable name of a field's type: ``int > 0 | null``, ``one of cot, direct``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        return "one of " + ", ".join(map(str, args))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in args)
    names = {type(None): "null", PositiveInt: "int > 0", PositiveFloat: "float > 0", NonNegativeFloat: "float >= 0"}
    return names.get(hint) or getattr(hint, "__name__", str(hint))


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


def _entry(data: Any, where: str) -> Entry:
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


def select_systems(suite: Suite, names: list[str] | None) -> Suite:
    """``suite`` with only the systems named in ``names`` (all when None); an unknown name is an error."""
    if names is None:
        return suite
    known = [s.name for s in suite.systems]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise HybridReasonError(
            f"suite {suite.name}: --systems: no system named {unknown[0] if unknown else ''!r}; it has {', '.join(known)}"
        )
    return replace(suite, systems=[s for s in suite.systems if s.name in names])


def with_threads(suite: Suite, threads: int | None) -> Suite:
    """``suite`` with its torch thread count replaced by ``threads`` when given."""
    return suite if threads is None else replace(suite, threads=threads)


__all__ = [
    "ENTRIES",
    "FALLBACK_SHARE",
    "KINDS",
    "Entry",
    "HybridEntry",
    "LLMEntry",
    "SFTEntry",
    "Suite",
    "generation_settings",
    "load_suite",
    "parse_typed",
    "select_systems",
    "with_threads",
]
