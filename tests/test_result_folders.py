"""Result folders change as one unit: `evaluate` and `compare` SIGKILLed while they write leave the
previous folder whole, or the new one whole, never a mix (a real kill in a subprocess)."""

import json
import os
import signal
import subprocess
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
import yaml

import hybrid_reason  # noqa: F401
from hybrid_reason import HybridReasoner, HybridReasonerConfig
from hybrid_reason.evaluation.commands import evaluate_main
from hybrid_reason.tasks import build_task
from hybrid_reason.utils.atomic_io import write_dir_atomically

SORT = {"name": "sort", "length": 6, "min_length": 4, "num_train": 50, "num_validation": 10, "num_test": 30}

# Runs a command in a fresh process that kills itself (SIGKILL: no cleanup, no finally) right after
# its first file write, or right after the folder swap.
KILLER = """
import os, signal, sys
from hybrid_reason.utils import atomic_io

def then_die(function):
    def wrapped(*args, **kwargs):
        result = function(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGKILL)
        return result
    return wrapped

moment, command, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
if moment == "first_write":
    atomic_io.atomic_write = then_die(atomic_io.atomic_write)
else:
    atomic_io.swap_dir = then_die(atomic_io.swap_dir)
from hybrid_reason.evaluation import commands  # imported after the patch, so it writes through it
getattr(commands, command + "_main")(argv)
"""


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from hybrid_reason.utils.testing import tiny_backbone

    root = tmp_path_factory.mktemp("kill")
    backbone = tiny_backbone(str(root / "bb"), hidden_size=32, num_layers=2, max_positions=1024)
    task = build_task(**SORT)
    config = HybridReasonerConfig(
        backbone={"name": backbone, "hidden_layer": 1},
        task=SORT,
        core={"d_model": 16, "num_heads": 2, "num_layers": 1, "n": 1, "T": 2},
        answer_vocab_size=task.vocab_size,
        num_slots=task.num_slots,
        halt_max_steps=2,
    )
    torch.manual_seed(0)
    HybridReasoner(config).save_pretrained(root / "model")
    return str(root / "model")


def killed(moment: str, command: str, *argv: str) -> None:
    """Run ``hybrid-reason COMMAND ARGV`` in a subprocess that SIGKILLs itself at ``moment``."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-c", KILLER, moment, command, *argv], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]


def old_folder(path, names):
    """A previous result folder: each file says "old"."""
    path.mkdir()
    for name in names:
        (path / name).write_text("old")
    return {name: "old" for name in names}


def contents(path):
    return {p.name: p.read_text() for p in path.iterdir()} if path.is_dir() else None


def test_evaluate_killed_at_its_first_write_leaves_the_old_folder_then_at_the_swap_the_new(model_dir, tmp_path):
    out = tmp_path / "out"
    old = old_folder(out, ["metrics.json", "summary.md", "curve.csv"])
    argv = ["--model", model_dir, "--limit", "4", "--out", str(out), "--progress", "false"]
    killed("first_write", "evaluate", *argv)
    assert contents(out) == old  # entirely old: not one new file beside the old ones

    killed("swap", "evaluate", *argv)  # killed right after the swap, before the old copy is deleted
    assert sorted(os.listdir(out)) == ["curve.csv", "curve.png", "metrics.json", "per_task.csv", "summary.md"]
    assert json.loads((out / "metrics.json").read_text())["puzzles"] == 4  # entirely new
    assert "old" not in ((out / "summary.md").read_text(), (out / "curve.csv").read_text())

    # the killed runs left hidden siblings (a half-built folder, the old copy); the next run clears them
    assert any(p.name.startswith(".out.") for p in tmp_path.iterdir())
    evaluate_main(argv)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_compare_killed_at_its_first_write_leaves_the_old_report(model_dir, tmp_path):
    out = tmp_path / "report"
    old = old_folder(out, ["report.md", "results.json"])
    suite = {"name": "killed", "limit": 3, "threads": 1, "systems": [{"name": "hybrid", "model": model_dir}]}
    (tmp_path / "suite.yaml").write_text(yaml.safe_dump(suite))
    killed("first_write", "compare", "--suite", str(tmp_path / "suite.yaml"), "--out", str(out), "--progress", "false")
    assert contents(out) == old


def test_a_build_that_raises_leaves_the_previous_folder_and_no_sibling(tmp_path):
    out = tmp_path / "out"
    old = old_folder(out, ["report.md"])

    def half(tmp):
        (tmp / "report.md").write_text("new")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_dir_atomically(out, half)
    assert contents(out) == old and os.listdir(tmp_path) == ["out"]
    write_dir_atomically(out, lambda tmp: (tmp / "report.md").write_text("new"))
    assert contents(out) == {"report.md": "new"} and os.listdir(tmp_path) == ["out"]
