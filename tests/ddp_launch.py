"""Shared by the DDP tests: run a standalone 2-rank (gloo, CPU) training script and read each rank's output."""

import os
import subprocess
import sys

import torch


def run_two_ranks(script_text: str, backbone_path: str, tmp_path) -> list[dict]:
    """Write ``script_text`` to ``tmp_path``, run it with (backbone_path, tmp_path, tests dir) as its
    arguments, assert it succeeded, and return what ranks 0 and 1 saved in ``rank{r}.pt``."""
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    script = tmp_path / "ddp_run.py"
    script.write_text(script_text)
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join([os.getcwd(), tests_dir, os.environ.get("PYTHONPATH", "")]),
    )
    proc = subprocess.run(
        [sys.executable, str(script), backbone_path, str(tmp_path), tests_dir],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
