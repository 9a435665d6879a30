"""Sapientinc-style CSV splits (``source, question, answer, rating``), every row checked as it loads.

``source`` is a folder holding ``{split}.csv``, a path containing ``{split}``, one CSV file read for
every split, or ``hub:<dataset id>`` for ``datasets.load_dataset``. Rows are streamed into a cached
``datasets.Dataset`` (``Dataset.from_generator``, keyed by the file's path, size and modification
time), so a million-row file never sits in memory. A bad row stops the load with a
``HybridReasonError`` that names the file, the data row (1-based, the header not counted), the file
line, the column and the bad value; the family's ``RowCheck`` judges the question and the answer.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterator
from functools import lru_cache
from pathlib import Path

from datasets import Dataset, Features

from ..errors import HybridReasonError

# (size, question, answer) -> None when the row is fine, else (column, what is wrong with its value)
RowCheck = Callable[[int, str, str], "tuple[str, str] | None"]
REQUIRED = ("question", "answer")  # columns every CSV needs; "source" and "rating" are optional


def csv_path(source: str, split: str) -> Path:
    """The CSV file of ``split``: ``{source}/{split}.csv``, ``source`` with ``{split}`` filled in, or ``source``."""
    path = Path(source) / f"{split}.csv" if Path(source).is_dir() else Path(source.replace("{split}", split))
    if not path.is_file():
        raise HybridReasonError(f"no CSV file {path} for the {split!r} split (task option source={source!r})")
    return path


def load_csv_split(
    source: str, split: str, limit: int | None, *, family: str, size: int, check: RowCheck, features: Features
) -> Dataset:
    """The first ``limit`` rows (all if None) of a split, checked, in the schema ``id, question, answer,
    size, source, rating`` (``id`` = ``{family}/{split}/{index}``, index 0-based)."""
    if source.startswith("hub:"):
        from datasets import load_dataset

        load_dataset(source[4:], split=split)  # fails here, unwrapped, when the dataset cannot be had
        where = {"hub": source[4:]}
    else:
        path = csv_path(source, split)
        stat = path.stat()
        where = {"path": str(path), "stamp": (stat.st_size, stat.st_mtime_ns)}  # a changed file is re-read
    kwargs = dict(where, split=split, limit=limit, family=family, size=size, check=check)
    try:
        return Dataset.from_generator(checked_rows, gen_kwargs=kwargs, features=features)
    except Exception as err:  # datasets wraps what the generator raised in DatasetGenerationError
        cause = err.__cause__ or err.__context__
        if isinstance(cause, HybridReasonError):
            raise cause from None
        raise


def checked_rows(
    split: str,
    limit: int | None,
    family: str,
    size: int,
    check: RowCheck,
    path: str | None = None,
    stamp: tuple | None = None,
    hub: str | None = None,
) -> Iterator[dict]:
    """Yield the task rows of a CSV file (``path``) or hub dataset (``hub``), raising on the first bad row."""
    rows = _hub_rows(hub, split) if hub is not None else _file_rows(Path(path))
    for index, (origin, line, record) in enumerate(rows):
        if limit is not None and index >= limit:
            return
        where = f"{origin}: data row {index + 1}" + (f" (line {line})" if line else "")
        question, answer = str(record["question"]), str(record["answer"])
        problem = check(size, question, answer)
        if problem is not None:
            column, what = problem
            raise HybridReasonError(f"{where}, column {column!r}: {what}")
        yield {
            "id": f"{family}/{split}/{index}",
            "question": question,
            "answer": answer,
            "size": size,
            "source": str(record.get("source") or ""),
            "rating": _rating(record.get("rating"), where),
        }


def _file_rows(path: Path) -> Iterator[tuple[str, int, dict]]:
    """(file, line, {column: value}) of every non-blank data row; a row whose field count differs from
    the header's is an error."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise HybridReasonError(f"{path}: empty file, expected a header line ({', '.join(REQUIRED)}, ...)")
        _check_columns(header, str(path))
        data_row = 0
        for fields in reader:
            if not fields:
                continue  # a blank line
            data_row += 1
            if len(fields) != len(header):
                raise HybridReasonError(
                    f"{path}: data row {data_row} (line {reader.line_num}) has {len(fields)} fields, "
                    f"the header has {len(header)} ({', '.join(header)}): {fields!r}"
                )
            yield str(path), reader.line_num, dict(zip(header, fields))


def _hub_rows(dataset_id: str, split: str) -> Iterator[tuple[str, int, dict]]:
    """(dataset[split], 0, row) of every row of a hub dataset split."""
    from datasets import load_dataset

    ds = load_dataset(dataset_id, split=split)
    origin = f"{dataset_id}[{split}]"
    _check_columns(ds.column_names, origin)
    for row in ds:
        yield origin, 0, row


def _check_columns(columns: list[str], origin: str) -> None:
    """The header must name the question and answer columns."""
    missing = [c for c in REQUIRED if c not in columns]
    if missing:
        raise HybridReasonError(
            f"{origin}: no {' or '.join(map(repr, missing))} column; the header is {list(columns)} "
            "(expected source, question, answer, rating)"
        )


def _rating(value, where: str) -> int:
    """The ``rating`` column as an int (empty or absent: 0)."""
    if value is None or value == "":
        return 0
    try:
        return int(float(value))
    except (TypeError, ValueError):
        raise HybridReasonError(f"{where}, column 'rating': {value!r} is not a number") from None


def first_bad(value: str, allowed: str) -> tuple[int, str] | None:
    """(position, character) of the first character of ``value`` outside ``allowed``, or None."""
    if not value.translate(_deletion(allowed)):
        return None
    i = next(i for i, ch in enumerate(value) if ch not in allowed)
    return i, value[i]


@lru_cache(maxsize=32)
def _deletion(allowed: str) -> dict[int, None]:
    """A ``str.translate`` table deleting the ``allowed`` characters."""
    return str.maketrans("", "", allowed)
