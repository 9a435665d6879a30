"""Puzzle keys and TRM's puzzle-ID vocabulary: which task a row belongs to, and its ID number."""

from __future__ import annotations

from datasets import Dataset


def puzzle_key(row: dict) -> str:
    """The task a row belongs to (its ARC task id, else the row id): the key of TRM's puzzle ID, and
    the group that ARC scoring votes and scores over."""
    return str(row.get("task_id") or row["id"])


def puzzle_vocabulary(rows: Dataset) -> dict[str, int]:
    """Puzzle keys of the training rows -> IDs 1..P, sorted (0 is kept for unknown puzzles)."""
    column = "task_id" if "task_id" in rows.column_names else "id"
    return {key: i + 1 for i, key in enumerate(sorted(set(map(str, rows[column]))))}
