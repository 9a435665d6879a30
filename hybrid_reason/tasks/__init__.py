"""Puzzle families as HF ``datasets`` and the ``Rendered`` contract; ``build_task`` builds one by name.

task = build_task("sort", length=8, max_value=9)     # a recipe's ``task: {name: sort, ...}``
ds = task.load("train")
ex = task.render(ds[0], task.sample_augmentation(rng, train=True), budget=PromptBudget(8192))
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal

from ..errors import HybridReasonError
from .arc import Arc2Task, ArcAugmentation, ArcTask
from .arc_data import ArcFormatError
from .base import IGNORE, PromptBudget, Rendered, Task, TokenCount
from .maze import MazeAugmentation, MazeTask
from .rules import RulesTask
from .sort import SortAugmentation, SortTask
from .sudoku import SudokuAugmentation, SudokuTask

TASKS: dict[str, type[Task]] = {
    "arc1": ArcTask,
    "arc2": Arc2Task,
    "sudoku": SudokuTask,
    "maze": MazeTask,
    "sort": SortTask,
    "rules": RulesTask,
}


def task_options(cls: type[Task]) -> dict[str, Any]:
    """The options (constructor fields) of a task class and their types."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def build_task(name: str, **options: Any) -> Task:
    """The task family ``name`` (see ``TASKS``) built with typed options; an unknown name, an unknown
    option or an option of the wrong type is a HybridReasonError that names it."""
    if name not in TASKS:
        raise HybridReasonError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}")
    known = task_options(TASKS[name])
    for key, value in options.items():
        if key not in known:
            raise HybridReasonError(f"unknown option {key!r} for task {name!r}; options: {', '.join(known)}")
        if not _fits(value, known[key]):
            raise HybridReasonError(f"option {key!r} of task {name!r} must be {_type_name(known[key])}, got {value!r}")
    return TASKS[name](**options)


def task_from_spec(spec: dict[str, Any], where: str = "data.task") -> Task:
    """Build a Task from a ``{name: ..., <option>: <value>}`` section (a recipe's ``data.task``, a
    suite's ``task``); errors name ``where``."""
    if not isinstance(spec, dict) or "name" not in spec:
        raise HybridReasonError(f"{where}: expected a mapping with a 'name' key, got {spec!r}")
    try:
        return build_task(spec["name"], **{k: v for k, v in spec.items() if k != "name"})
    except (TypeError, ValueError) as err:  # unknown task, unknown option, wrong type or value
        raise HybridReasonError(f"{where}: {err}") from None


def _fits(value: Any, hint: Any) -> bool:
    """Whether a plain (YAML) value fits an option's type: int, float, str, bool, list, dict, Literal,
    unions; a bool is not an int here, and an int is a valid float."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if origin is Literal:
        return value in args
    if hint in (int, float) and isinstance(value, bool):
        return False
    return isinstance(value, (int, float) if hint is float else origin or hint)


def _type_name(hint: Any) -> str:
    """A readable name of an option's type."""
    if typing.get_origin(hint) is Literal:
        return "one of " + ", ".join(map(repr, typing.get_args(hint)))
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


__all__ = [
    "IGNORE",
    "TASKS",
    "Arc2Task",
    "ArcAugmentation",
    "ArcFormatError",
    "ArcTask",
    "MazeAugmentation",
    "MazeTask",
    "PromptBudget",
    "Rendered",
    "RulesTask",
    "SortAugmentation",
    "SortTask",
    "SudokuAugmentation",
    "SudokuTask",
    "Task",
    "TokenCount",
    "build_task",
    "task_from_spec",
    "task_options",
]
