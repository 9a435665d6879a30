"""Shared pytest fixtures."""

import pytest
import torch


@pytest.fixture
def one_thread():
    """Run torch on one thread: tiny models are fastest (and steadiest on a shared machine) that way."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def backbone_path(tmp_path_factory) -> str:
    """A tiny random Qwen2 backbone with a real BPE tokenizer, written once per session."""
    from hybrid_reason.utils.testing import tiny_backbone

    return tiny_backbone(str(tmp_path_factory.mktemp("backbone") / "qwen2"), hidden_size=32, num_layers=2)
