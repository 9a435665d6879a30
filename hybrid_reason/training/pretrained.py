"""``model.init_from``: start training from a saved HybridReasoner folder whose task and shapes fit."""

from __future__ import annotations

import os
from typing import Any

from ..model.configuration import HybridReasonerConfig
from ..model.modeling import HybridReasoner
from ..tasks import task_from_spec


def check_pretrained(path: str, task: dict[str, Any]) -> HybridReasonerConfig:
    """Read the config of a saved model (``model.init_from``) and check it fits the recipe's task."""
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise ValueError(f"model.init_from: {path!r} is not a saved HybridReasoner folder (no config.json)")
    config = HybridReasonerConfig.from_pretrained(path)
    built = task_from_spec(task)
    saved_name = (config.task or {}).get("name")
    if saved_name not in (None, task["name"]):
        raise ValueError(
            f"model.init_from: {path} was trained on task {saved_name!r}, the recipe's data.task is {task['name']!r}"
        )
    for key, want in (("answer_vocab_size", built.vocab_size), ("num_slots", built.num_slots)):
        if getattr(config, key) != want:
            raise ValueError(
                f"model.init_from: {path} has {key}={getattr(config, key)}, task {task['name']!r} needs {want}"
            )
    return config


def load_pretrained_weights(model: HybridReasoner, path: str) -> None:
    """Load the trainable weights of a saved HybridReasoner folder into ``model`` (shapes must match)."""
    from safetensors.torch import load_file

    state = load_file(os.path.join(path, "model.safetensors"))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"model.init_from: {path} does not fit this recipe's model: {err}") from None
