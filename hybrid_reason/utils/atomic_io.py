"""Writing files and folders atomically: a reader (or a rerun after a crash) sees the old version or
the new one, never half of one."""

from __future__ import annotations

import csv
import ctypes
import glob
import io
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def atomic_write(path: str | os.PathLike, data: str | bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and ``os.replace``:
    readers see the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _umask() -> int:
    """The process umask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> None:
    """Atomically write ``obj`` as JSON (indented unless ``indent`` is None)."""
    atomic_write(path, json.dumps(obj, indent=indent, default=_json_default) + "\n")


def write_csv(path: str | os.PathLike, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """Atomically write a CSV file."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(header)
    writer.writerows(rows)
    atomic_write(path, buf.getvalue())


def save_figure(fig, path: str | os.PathLike) -> None:
    """Atomically save a matplotlib figure as PNG and close it."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    atomic_write(path, buf.getvalue())


def _json_default(value: Any) -> Any:
    """JSON for numpy scalars/arrays and tuples."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def write_dir_atomically(final: Path, build: Callable[[Path], None]) -> None:
    """Run ``build(tmp)`` in a fresh sibling folder, then rename it to ``final`` (replacing an old one).

    A process killed mid-build leaves ``final`` untouched (only a ``.tmp-<pid>`` folder, removed by the
    next build); a build that raises leaves nothing. If another process renamed its copy first, its
    copy is kept. What the build wrote gets the user's umask (writers such as safetensors create 0600
    files). The caller decides whether an existing ``final`` may be replaced.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_orphans(final)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir()
        build(tmp)
        apply_umask(tmp)
        swap_dir(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # after a swap: the previous copy


def swap_dir(new: Path, final: Path) -> None:
    """Put folder ``new`` at ``final`` with one rename, keeping the previous ``final`` until then; the
    previous copy is left at ``new``'s path for the caller to delete. On Linux the two are exchanged
    atomically (``renameat2`` with RENAME_EXCHANGE), so a reader sees the old folder or the new one and
    never neither; elsewhere the old one is renamed aside for an instant (a build killed then gets it
    back from ``_remove_orphans``). If another process put its copy at ``final`` first, its copy is kept.
    """
    if final.exists() and _exchange(new, final):
        return
    aside = None
    if final.exists():  # a rename over a non-empty folder fails: move the old copy aside first
        aside = final.parent / f".{final.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        os.rename(final, aside)
    try:
        os.rename(new, final)
    except OSError:
        if not final.exists():  # not a concurrent winner: a real error; put the old copy back
            if aside is not None:
                os.rename(aside, final)
            raise
    if aside is not None:
        os.rename(aside, new)


def _exchange(a: Path, b: Path) -> bool:
    """Exchange two paths in one atomic step (Linux ``renameat2``); False where the OS cannot."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def apply_umask(root: Path) -> None:
    """Give ``root`` and everything below it the permissions a plain ``open``/``mkdir`` would: 0666 (0777
    for folders and executables) less the umask."""
    mask = _umask()
    for path in [root, *root.rglob("*")]:
        if path.is_symlink():
            continue
        executable = path.is_dir() or path.stat().st_mode & 0o100
        os.chmod(path, (0o777 if executable else 0o666) & ~mask)


def _remove_orphans(final: Path) -> None:
    """Delete temporary folders of ``final`` left by builds whose process is gone."""
    for leftover in final.parent.glob(f".{glob.escape(final.name)}.*-*-*"):
        pid = leftover.name.rsplit("-", 2)[-2]
        if pid.isdigit() and not _alive(int(pid)):
            if leftover.name.startswith(f".{final.name}.old-") and not final.exists():
                os.rename(leftover, final)  # a swap killed between its two renames: the previous copy
            else:
                shutil.rmtree(leftover, ignore_errors=True)


def _alive(pid: int) -> bool:
    """Whether a process with this id exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
