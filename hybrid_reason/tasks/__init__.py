"""Puzzle families as HF ``datasets`` and the ``Rendered`` contract; ``build_task`` builds one by name.

    task = build_task("sort", length=8, max_value=9)     # a recipe's ``task: {name: sort, ...}``
    ds = task.load("train")
    ex = task.render(ds[0], task.sample_augmentation(rng, train=True))
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal, Union

from .arc import Arc2Task, ArcAugmentation, ArcTask
from .arc_data import ArcFormatError
from .base import IGNORE, Rendered, Task
from .maze import MazeAugmentation, MazeTask
from .sort import SortAugmentation, SortTask
from .sudoku import SudokuAugmentation, SudokuTask

TASKS: dict[str, type[Task]] = {"arc1": ArcTask, "arc2": Arc2Task, "sudoku": SudokuTask, "maze": MazeTask, "sort": SortTask}


def task_options(cls: type[Task]) -> dict[str, Any]:
    """The options (constructor fields) of a task class and their types."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def build_task(name: str, **options: Any) -> Task:
    """The task family ``name`` (see ``TASKS``) built with typed options; an unknown name, an unknown
    option or an option of the wrong type is a ValueError that names it."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}")
    known = task_options(TASKS[name])
    for key, value in options.items():
        if key not in known:
            raise ValueError(f"unknown option {key!r} for task {name!r}; options: {', '.join(known)}")
        if not _is_instance(value, known[key]):
            raise ValueError(f"option {key!r} of task {name!r} must be {_type_name(known[key])}, got {value!r}")
    return TASKS[name](**options)


def _is_instance(value: Any, hint: Any) -> bool:
    """Whether ``value`` fits a simple type hint (int, float, str, bool, Literal, X | None)."""
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        return any(_is_instance(value, h) for h in typing.get_args(hint))
    if origin is Literal:
        return value in typing.get_args(hint)
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, origin or hint)


def _type_name(hint: Any) -> str:
    """A readable name of a type hint."""
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
    "Rendered",
    "SortAugmentation",
    "SortTask",
    "SudokuAugmentation",
    "SudokuTask",
    "Task",
    "build_task",
    "task_options",
]
