"""Puzzle families as HF ``datasets`` and the ``Rendered`` contract; ``build_task`` builds one by name.

    task = build_task("sort", length=8, max_value=9)     # a recipe's ``task: {name: sort, ...}``
    ds = task.load("train")
    ex = task.render(ds[0], task.sample_augmentation(rng, train=True))
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

from ..utils.typecheck import fits, type_name
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
        if not fits(value, known[key]):
            raise ValueError(f"option {key!r} of task {name!r} must be {type_name(known[key])}, got {value!r}")
    return TASKS[name](**options)


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
