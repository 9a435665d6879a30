"""HybridReasonerConfig: everything needed to rebuild a HybridReasoner, backbone pointer included."""

from __future__ import annotations

from dataclasses import asdict, fields, is_dataclass
from typing import Any, Literal, get_args

from transformers import PreTrainedConfig

from ..errors import HybridReasonError
from .core import CoreConfig

Loss = Literal["stablemax", "softmax"]
# top-level integer fields and their least value
_MINIMUMS = {
    "answer_vocab_size": 1,
    "num_slots": 1,
    "num_context_slots": 0,
    "num_puzzle_ids": 0,
    "puzzle_prefix_len": 1,
    "halt_max_steps": 1,
}


def _as_dict(value: Any, name: str) -> dict | None:
    """Accept a dataclass or a dict for a nested section and store it as a plain dict."""
    if value is None or isinstance(value, dict):
        return value
    if is_dataclass(value):
        return asdict(value)
    raise HybridReasonError(f"config.{name} must be a dict or a dataclass, got {type(value).__name__}")


def _check_keys(section: dict, allowed: type, name: str) -> None:
    """Reject unknown keys in a nested section, naming the key."""
    known = {f.name for f in fields(allowed)}
    for key in section:
        if key not in known:
            raise HybridReasonError(f"unknown key {name}.{key}; known keys: {', '.join(sorted(known))}")


class HybridReasonerConfig(PreTrainedConfig):
    """Configuration of a HybridReasoner (model_type ``hybrid_reason``).

    Sections:
        backbone: the frozen LM pointer (``BackboneSpec`` fields: name or path, revision, hidden_layer,
            quantization, LoRA, dtype). Its weights are never saved with the model.
        core: the recursive core (``CoreConfig`` fields: d_model, heads, layers, mixer, n, T).
        task: the task family and options the model was trained on (``{"name": "sort", ...}``).
    Top level: the answer vocabulary and slot count, context/puzzle-ID prefixes, halting (N_sup)
    and loss settings, and the backbone's recorded hidden size and tokenizer fingerprint, which are
    checked when the backbone is loaded again.
    """

    model_type = "hybrid_reason"

    backbone: dict | None = None
    core: dict | None = None
    task: dict | None = None
    answer_vocab_size: int = 12
    num_slots: int = 900
    num_context_slots: int = 0  # K resampler queries over all prompt tokens (0 = off)
    num_puzzle_ids: int = 0  # TRM's per-task ID embedding rows (0 = off)
    puzzle_prefix_len: int = 16  # prefix slots reserved for the ID embedding (TRM: 16)
    halt_max_steps: int = 16  # N_sup
    halt_exploration_prob: float = 0.1
    loss: Loss = "stablemax"
    halt_loss_weight: float = 0.5
    backbone_hidden_size: int | None = None
    backbone_tokenizer: str | None = None

    def __post_init__(self, **kwargs):
        from ..backbone.loading import BackboneSpec  # heavy module: imported only when a config is built

        self.backbone = _as_dict(self.backbone, "backbone") or asdict(BackboneSpec())
        self.core = _as_dict(self.core, "core") or asdict(CoreConfig())
        self.task = _as_dict(self.task, "task")
        _check_keys(self.backbone, BackboneSpec, "backbone")
        _check_keys(self.core, CoreConfig, "core")
        BackboneSpec(**self.backbone)  # validates values (dtype, quantization, ...), once, where they are declared
        CoreConfig(**self.core)
        self._check_values()
        super().__post_init__(**kwargs)

    def _check_values(self) -> None:
        """Top-level values in range (one-line ``HybridReasonError`` naming the key)."""
        if self.loss not in get_args(Loss):
            raise HybridReasonError(f"config.loss must be one of {get_args(Loss)}, got {self.loss!r}")
        for key, low in _MINIMUMS.items():
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise HybridReasonError(f"config.{key} must be an integer >= {low}, got {value!r}")
        if not 0.0 <= self.halt_exploration_prob <= 1.0:
            raise HybridReasonError(f"config.halt_exploration_prob must be in [0, 1], got {self.halt_exploration_prob}")
        if self.halt_loss_weight < 0:
            raise HybridReasonError(f"config.halt_loss_weight must be >= 0, got {self.halt_loss_weight}")
        if self.num_context_slots and self.num_puzzle_ids:
            raise HybridReasonError(
                "config: use either num_context_slots (in-context) or num_puzzle_ids (TRM's ID), not both"
            )

    @property
    def core_config(self) -> CoreConfig:
        """The core section as a typed CoreConfig."""
        return CoreConfig(**self.core)

    @property
    def backbone_spec(self):
        """The backbone section as a typed BackboneSpec."""
        from ..backbone.loading import BackboneSpec

        return BackboneSpec(**self.backbone)

    @property
    def num_prefix(self) -> int:
        """Slots before the answer slots: K context slots, the puzzle-ID prefix, or none."""
        if self.num_context_slots:
            return self.num_context_slots
        return self.puzzle_prefix_len if self.num_puzzle_ids else 0

    @property
    def seq_len(self) -> int:
        """Length of the core's sequence: prefix slots + answer slots."""
        return self.num_prefix + self.num_slots
