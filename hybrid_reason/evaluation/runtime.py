"""How an evaluation runs: its device, torch's CPU threads, a progress bar over puzzles, quiet loading."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


def default_device() -> str:
    """``cuda`` when a GPU is visible, else ``cpu``."""
    return "cuda" if torch.cuda.is_available() else "cpu"


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block with ``threads`` torch CPU threads (None: torch's default), then restore them."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads or before)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def progress_bar(label: str, total: int, enabled: bool = True):
    """A Rich progress bar over ``total`` puzzles on stderr, and its task id; disabled, it prints nothing."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    progress = Progress(
        TextColumn(f"[bold]{label}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("puzzles"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=not enabled,
    )
    return progress, progress.add_task(label, total=total)


def quiet_transformers() -> None:
    """Hide transformers' per-file loading bars (the commands show their own progress)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
