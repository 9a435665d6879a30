"""The same LLM fine-tuned: ``hybrid-reason baseline sft``, the baseline the hybrid most needs to beat.

The LLM gets peft LoRA adapters and is trained with Lightning on the task's training split to write the
answer the way the ``direct`` baseline asks for it: the same prompt (the chat template around the same
user message: ``task.describe()``, the serialized puzzle, the direct-answer instruction), then the target
in the task's own answer format (``task.answer_format``), then the end-of-reply token. The loss falls on
the answer tokens and that end-of-reply token only: every prompt token is labelled -100. Prompt and
answer are tokenized apart, so the model learns to continue exactly the token sequence that ``direct``
feeds it at test time. After training it is evaluated with ``run_baseline(..., "direct")``: the same
greedy generation, parser and scoring as the ``direct`` baseline. This is the ARChitects' recipe at small
scale, without their augmentations: every training puzzle is shown as the direct baseline shows it.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Literal

import lightning as L
import torch
from jsonargparse.typing import PositiveFloat, PositiveInt
from torch.utils.data import DataLoader

from ..errors import HybridReasonError
from ..tasks.base import IGNORE  # -100: no loss (HF's ignore_index too)
from .llm import (
    BaselineResult,
    GenerationSettings,
    LanguageModel,
    chat_prompt,
    load_language_model,
    prompt_budget,
    run_baseline,
    user_message,
)
from .puzzles import select_rows

KIND = "direct"  # the prompt and parser the fine-tuned model is trained for and scored with


# ============================================================================ settings
@dataclass(kw_only=True)
class SFTSettings:
    """How the LLM is fine-tuned (LoRA, Lightning).

    Args:
        max_steps: optimizer steps
        lora_rank: LoRA rank r
        lora_alpha: LoRA scale alpha (default: 2 x rank)
        lora_targets: module names that get adapters (default: every linear layer but the LM head)
        learning_rate: AdamW learning rate of the adapters
        train_batch_size: training examples per optimizer step
        train_limit: train on the first N puzzles of the training split only
        quantization: nf4 loads the frozen base weights in 4 bits (QLoRA; needs bitsandbytes)
    """

    max_steps: PositiveInt = 100
    lora_rank: PositiveInt = 8
    lora_alpha: PositiveInt | None = None
    lora_targets: list[str] | None = None
    learning_rate: PositiveFloat = 1e-3
    train_batch_size: PositiveInt = 8
    train_limit: PositiveInt | None = None
    quantization: Literal["nf4"] | None = None

    def __post_init__(self) -> None:
        for name in ("max_steps", "lora_rank", "train_batch_size"):
            if getattr(self, name) < 1:
                raise HybridReasonError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.learning_rate <= 0:
            raise HybridReasonError(f"learning_rate must be > 0, got {self.learning_rate}")
        parent = getattr(super(), "__post_init__", None)  # a suite entry also inherits GenerationSettings
        if parent is not None:
            parent()

    @classmethod
    def of(cls, values: Any) -> SFTSettings:
        """The SFTSettings fields of ``values`` (a suite entry that inherits them)."""
        return cls(**{f.name: getattr(values, f.name) for f in fields(cls)})


# ============================================================================ examples
def end_of_reply_id(lm: LanguageModel) -> int:
    """The token that ends a reply: the tokenizer's EOS when generation stops on it, else the first
    id generation stops on."""
    eos = lm.tokenizer.eos_token_id
    return eos if eos in lm.eos_ids else lm.eos_ids[0]


def sft_example(lm: LanguageModel, task, row: dict, budget=None) -> dict[str, list[int]]:
    """One training example: the direct baseline's prompt, then the row's answer in the task's format
    and the end-of-reply token. ``labels`` are -100 on the prompt and the token ids on the answer."""
    prompt = chat_prompt(lm, user_message(task, task.render(row, budget=budget).text, KIND))
    prompt_ids = lm.tokenizer(prompt, add_special_tokens=False)["input_ids"]  # the template holds them
    answer_ids = lm.tokenizer(task.answer_format(task.target(row)), add_special_tokens=False)["input_ids"]
    answer_ids = [*answer_ids, end_of_reply_id(lm)]
    return {"input_ids": prompt_ids + answer_ids, "labels": [IGNORE] * len(prompt_ids) + answer_ids}


def collate(examples: list[dict[str, list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch (so every real token keeps positions 0..n-1); padding is masked and unlabelled."""
    width = max(len(e["input_ids"]) for e in examples)
    batch = {"input_ids": [], "labels": [], "attention_mask": []}
    for e in examples:
        pad = width - len(e["input_ids"])
        batch["input_ids"].append(e["input_ids"] + [pad_id] * pad)
        batch["labels"].append(e["labels"] + [IGNORE] * pad)
        batch["attention_mask"].append([1] * len(e["input_ids"]) + [0] * pad)
    return {k: torch.tensor(v, dtype=torch.long) for k, v in batch.items()}


# ============================================================================ training
def add_lora(lm: LanguageModel, settings: SFTSettings) -> LanguageModel:
    """``lm`` with fresh LoRA adapters (peft) on ``settings.lora_targets``; only they are trainable."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    model = lm.model
    if settings.quantization is not None:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    config = LoraConfig(
        r=settings.lora_rank,
        lora_alpha=settings.lora_alpha or 2 * settings.lora_rank,
        target_modules=settings.lora_targets or "all-linear",
        lora_dropout=0.0,
        task_type="CAUSAL_LM",
    )
    return replace(lm, model=get_peft_model(model, config))


class SFTModule(L.LightningModule):
    """The LoRA-adapted LM under Lightning: the causal LM loss on the labelled (answer) tokens."""

    def __init__(self, model: torch.nn.Module, learning_rate: float):
        super().__init__()
        self.model, self.learning_rate = model, learning_rate
        self.losses: list[float] = []  # the training loss of every step, in order
        self.examples_seen = 0

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """Loss of one batch (HF shifts the labels; -100 is ignored)."""
        loss = self.model(**batch).loss
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=len(batch["input_ids"]))
        self.losses.append(float(loss.detach()))
        self.examples_seen += len(batch["input_ids"])
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """AdamW over the adapters (the only parameters that require grad)."""
        return torch.optim.AdamW([p for p in self.model.parameters() if p.requires_grad], lr=self.learning_rate)


@dataclass
class Training:
    """What fine-tuning cost and did: steps, examples seen, trainable parameters, wall time, losses."""

    steps: int
    examples_seen: int
    train_puzzles: int
    trainable_params: int
    seconds: float
    losses: list[float]
    settings: dict[str, Any]

    def summary(self) -> dict[str, Any]:
        """A JSON-able summary (the first and last losses, not every step's)."""
        n = max(1, min(10, len(self.losses) // 4))
        mean = lambda xs: sum(xs) / max(1, len(xs))
        return {k: v for k, v in asdict(self).items() if k != "losses"} | {
            "loss_first_steps": mean(self.losses[:n]),
            "loss_last_steps": mean(self.losses[-n:]),
        }


def fine_tune(
    lm: LanguageModel, task, rows, settings: SFTSettings, budget=None, seed: int = 0, progress: bool = True
) -> Training:
    """Train ``lm``'s adapters (``add_lora``) on ``rows`` for ``settings.max_steps`` steps with a
    Lightning Trainer, cycling through the shuffled rows; leaves the model in eval mode."""
    examples = [sft_example(lm, task, rows[i], budget) for i in range(len(rows))]
    if not examples:
        raise HybridReasonError(f"task {task.name!r}: the training split is empty; nothing to fine-tune on")
    pad_id = lm.tokenizer.pad_token_id
    loader = DataLoader(
        examples,
        batch_size=settings.train_batch_size,
        shuffle=True,
        drop_last=len(examples) >= settings.train_batch_size,
        collate_fn=lambda batch: collate(batch, pad_id),
        generator=torch.Generator().manual_seed(seed),
    )
    module = SFTModule(lm.model, settings.learning_rate)
    t0 = time.perf_counter()
    lm.model.train()  # a LanguageModel is built in eval mode; the adapters train (no dropout either way)
    with _quiet_lightning():
        trainer = L.Trainer(
            max_steps=settings.max_steps,
            accelerator="gpu" if lm.model.device.type == "cuda" else "cpu",
            devices=1,
            logger=False,
            enable_checkpointing=False,
            enable_model_summary=False,
            enable_progress_bar=progress,
            gradient_clip_val=1.0,
            num_sanity_val_steps=0,
        )
        trainer.fit(module, loader)
    seconds = time.perf_counter() - t0
    lm.model.eval()
    trainable = sum(p.numel() for p in lm.model.parameters() if p.requires_grad)
    return Training(
        trainer.global_step, module.examples_seen, len(examples), trainable, seconds, module.losses,
        asdict(settings),
    )  # fmt: skip


@contextlib.contextmanager
def _quiet_lightning() -> Iterator[None]:
    """Hide Lightning's device banners and its few-workers hint while fine-tuning (errors still show)."""
    logger = logging.getLogger("lightning.pytorch")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*does not have many workers.*")
            warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")
            warnings.filterwarnings("ignore", message=".*LeafSpec.*")  # Lightning's own use of torch's pytree
            yield
    finally:
        logger.setLevel(level)


# ============================================================================ the baseline
@dataclass
class SFTResult(BaselineResult):
    """A fine-tuned LLM's direct answers, scored like the direct baseline's, and what training cost."""

    training: Training | None = None
    adapter: Any = field(default=None, repr=False)  # a TemporaryDirectory holding the saved adapter

    def summary(self) -> dict[str, Any]:
        """The baseline summary with the training figures and the adapters as trainable parameters."""
        trained = self.training.summary() if self.training else {}
        return super().summary() | {"trainable_params": trained.get("trainable_params", 0), "training": trained}

    def save_adapter(self, folder) -> None:
        """Write the LoRA adapter (peft's adapter_config.json + adapter_model.safetensors) to ``folder``."""
        shutil.copytree(self.adapter.name, folder, dirs_exist_ok=True)


def run_sft(
    model: str,
    task,
    test_rows,
    settings: SFTSettings,
    generation: GenerationSettings | None = None,
    *,
    train_rows=None,
    split: str = "test",
    device: str = "cpu",
    dtype: str = "float32",
    chat_template: str | None = None,
    seed: int = 0,
    progress: bool = True,
) -> SFTResult:
    """Load ``model``, fine-tune it with LoRA (seeded: adapters, order) on ``train_rows`` (default: the
    task's training split as the LM's context fits it, cut to ``settings.train_limit``), then answer
    ``test_rows`` greedily as the ``direct`` baseline does and score the replies the same way."""
    generation = (generation or GenerationSettings()).for_kind(KIND)
    lm = load_language_model(model, device, dtype, chat_template, quantization=settings.quantization)
    L.seed_everything(seed, verbose=False)  # the adapters' initialisation
    lm = add_lora(lm, settings)
    budget = prompt_budget(lm, task, KIND, generation)
    if train_rows is None:
        train_rows = select_rows(task.load("train", budget), settings.train_limit)
    training = fine_tune(lm, task, train_rows, settings, budget, seed, progress)
    adapter = tempfile.TemporaryDirectory(prefix="hybrid_reason_sft_")  # kept on disk, not the model in memory
    lm.model.save_pretrained(adapter.name)
    if settings.quantization is None:
        lm.model.merge_adapter()  # generation runs the merged weights; the adapter is still saved apart
    result = run_baseline(lm, task, test_rows, KIND, generation, split, progress, seed)
    values = {f.name: getattr(result, f.name) for f in fields(BaselineResult)}
    return SFTResult(**values | {"kind": "sft"}, training=training, adapter=adapter)


__all__ = [
    "IGNORE",
    "SFTModule",
    "SFTResult",
    "SFTSettings",
    "Training",
    "add_lora",
    "collate",
    "end_of_reply_id",
    "fine_tune",
    "run_sft",
    "sft_example",
]
