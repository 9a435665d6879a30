"""What an evaluation runs on: the task (a model's own, or one named), the split and its first puzzles."""

from __future__ import annotations

from typing import Any

from ..errors import HybridReasonError
from ..tasks.base import PromptBudget

SPLIT_ALIASES = {"eval": "test", "evaluation": "test"}  # ARC's evaluation tasks are the "test" split


def resolve_split(split: str) -> str:
    """The task split of a command-line split name ("eval" means ARC's evaluation tasks: "test")."""
    return SPLIT_ALIASES.get(split, split)


def task_spec(
    base: dict | None, name: str | None = None, options: dict[str, Any] | None = None, default: str | None = None
) -> dict[str, Any]:
    """The task section to run: ``base`` (a model's own ``config.task``) unless ``name`` names another
    task, with ``options`` overriding; ``default`` names the task when neither does."""
    spec = dict(base or {})
    if name is not None and name != spec.get("name"):
        spec = {"name": name}
    if "name" not in spec:
        if default is None:
            raise HybridReasonError("the model's config has no task: pass --task NAME")
        spec["name"] = default
    return spec | dict(options or {})


def select_rows(rows, limit: int | None):
    """The first ``limit`` puzzles of a split; for ARC, every test input of the first ``limit`` tasks."""
    if limit is not None and limit < 1:
        raise HybridReasonError(f"limit must be a positive number of puzzles, got {limit}")
    if limit is None or limit >= len(rows):
        return rows
    if "task_id" not in rows.column_names:
        return rows.select(range(limit))
    keep, picked = set(), []
    for i, task_id in enumerate(rows["task_id"]):
        if task_id not in keep and len(keep) == limit:
            continue
        keep.add(task_id)
        picked.append(i)
    return rows.select(picked)


def load_rows(task, split: str, limit: int | None = None, budget: PromptBudget | None = None):
    """The first ``limit`` puzzles of ``split`` (a command-line name), loaded under ``budget``."""
    return select_rows(task.load(resolve_split(split), budget), limit)
