"""Shared by the model tests: load a saved model folder with ``trust_remote_code`` in a fresh process."""

import os
import subprocess
import sys

import torch


def assert_remote_code_logits(folder, texts, spans, want: torch.Tensor, tmp_path, check: str = "") -> None:
    """A fresh process that never imports hybrid_reason loads ``folder`` with ``trust_remote_code`` and
    gets exactly ``want`` as the logits of ``texts``/``spans``; ``check`` is more Python run on ``m``."""
    torch.save(want, tmp_path / "want.pt")
    script = f"""
import sys, torch
from transformers import AutoModel
m = AutoModel.from_pretrained({str(folder)!r}, trust_remote_code=True).eval()
with torch.no_grad():
    got = m(texts={texts!r}, slot_spans={spans!r}).logits
assert "hybrid_reason" not in sys.modules, "the package was imported"
{check}
assert torch.equal(got, torch.load({str(tmp_path / "want.pt")!r})), "logits differ"
print("OK", type(m).__module__)
"""
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "OK transformers_modules" in run.stdout
