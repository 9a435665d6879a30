"""Saved HybridReasoner folders, as evaluation meets them: is this one, load it, does it fit the task,
is it the kind a suite says (fixed-depth: single-step; deep: unrolled, one step; no-llm: no backbone),
and the prompt budget of its backbone."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import HybridReasonError
from ..tasks.base import PromptBudget, TokenCount

NO_LLM = "none"  # backbone.name of a model that reads the puzzle's own symbols, no LLM


def saved_config(path: str):
    """The HybridReasonerConfig of a saved model folder, or None when ``path`` is not one."""
    from ..model.configuration import HybridReasonerConfig

    file = Path(path) / "config.json"
    if not file.is_file():
        return None
    try:
        model_type = json.loads(file.read_text()).get("model_type")
    except (json.JSONDecodeError, AttributeError) as err:
        raise HybridReasonError(f"{file}: not a JSON model config ({err})") from None
    return HybridReasonerConfig.from_pretrained(path) if model_type == HybridReasonerConfig.model_type else None


def model_config(path: str, who: str = "--model"):
    """``saved_config(path)``, or a one-line error naming ``who`` when ``path`` is not a model folder."""
    config = saved_config(path)
    if config is None:
        raise HybridReasonError(
            f"{who} {path!r} is not a saved HybridReasoner folder (no config.json of model_type "
            "hybrid_reason): train and export one first"
        )
    return config


def load_model(path: str, device: str | torch.device = "cpu", who: str = "--model"):
    """A saved HybridReasoner folder, in eval mode on ``device`` (the backbone loads on first use)."""
    from ..model.modeling import HybridReasoner

    model_config(path, who)
    return HybridReasoner.from_pretrained(path).to(device).eval()


def check_model_task(config, task, model_name: str = "the model") -> None:
    """A one-line error when ``task`` does not fit the model's answer vocabulary or slots."""
    trained = (config.task or {}).get("name")
    for what, have, need in (
        ("answer vocabulary", config.answer_vocab_size, task.vocab_size),
        ("slot count", config.num_slots, task.num_slots),
    ):
        if have != need:
            raise HybridReasonError(
                f"{model_name} was trained on task {trained!r} with {what} {have}, but task "
                f"{task.name!r} here has {what} {need}; evaluate it on the task it was trained on "
                f"(its config.task: {config.task})"
            )


def check_fixed_depth(config, name: str) -> None:
    """A one-line error unless the model is single-step: T = n = N_sup = 1 (the fixed-depth baseline)."""
    core = config.core_config
    if (core.T, core.n, config.halt_max_steps) != (1, 1, 1):
        raise HybridReasonError(
            f"{name} is not fixed-depth (T={core.T}, n={core.n}, halt_max_steps="
            f"{config.halt_max_steps}; all must be 1: train it with --model.core.T 1 "
            "--model.core.n 1 --model.halt_max_steps 1)"
        )


def check_deep(config, name: str) -> None:
    """A one-line error unless the model is the non-recursive control: an unrolled core (a distinct
    block for every call) run for one supervision step (the deep baseline)."""
    core = config.core_config
    if not core.unrolled or config.halt_max_steps != 1:
        raise HybridReasonError(
            f"{name} is not deep (core.unrolled={core.unrolled}, halt_max_steps={config.halt_max_steps}; "
            "need true and 1: train it with --model.core.unrolled true --model.halt_max_steps 1)"
        )


def has_llm(config) -> bool:
    """Whether the model reads an LLM's features (False for ``backbone.name: none``, TRM from scratch)."""
    return (config.backbone or {}).get("name") != NO_LLM


def check_no_llm(config, name: str) -> None:
    """A one-line error unless the model reads no LLM (``backbone.name: none``: the no-llm baseline)."""
    if has_llm(config):
        raise HybridReasonError(
            f"{name} is not no-llm (its backbone is {config.backbone.get('name')!r}; train it with "
            f"--model.backbone.name {NO_LLM})"
        )


CHECKS = {"fixed-depth": check_fixed_depth, "deep": check_deep, "no-llm": check_no_llm}  # per suite kind


def model_budget(model) -> PromptBudget | None:
    """The backbone's context in its own tokens: ARC prompts drop demonstrations to fit it."""
    backbone = model.backbone
    if backbone.context_length is None:
        return None
    return PromptBudget(backbone.context_length, TokenCount(backbone.tokenizer))


__all__ = [
    "CHECKS",
    "NO_LLM",
    "check_deep",
    "check_fixed_depth",
    "check_model_task",
    "check_no_llm",
    "has_llm",
    "load_model",
    "model_budget",
    "model_config",
    "saved_config",
]
