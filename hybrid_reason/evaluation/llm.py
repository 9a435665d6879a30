"""LLM baselines on the same puzzles as the hybrid: chain of thought and direct answer, with HF generate.

The LM (a hub id, a local folder, a .gguf file or an alias such as ``smollm2-135m``; by default the
hybrid's own backbone) gets, through its chat template, the task's ``describe()`` paragraph, the same
serialized puzzle the hybrid reads (``task.render(row).text``) and an instruction: think step by step
and end with the answer (``cot``), or give the answer only (``direct``). Generation is greedy by
default; ``temperature > 0`` samples ``attempts`` replies per puzzle. Every reply is bounded by
``max_new_tokens``: one that has not stopped by then is scored wrong, as is one with no well-formed
answer (``task.parse_answer``: the last well-formed grid/list). Parsed attempts are voted and scored
like the hybrid's views (``scoring``), so attempt 1 gives exact accuracy and attempts 1-2 ARC's pass@2.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

import torch
from jsonargparse.typing import PositiveInt

from ..errors import HybridReasonError
from ..tasks.base import PromptBudget, TokenCount
from .models import saved_config
from .runtime import progress_bar
from .scoring import PuzzleResult, aggregate, attempt_counts, headline, score_candidates, vote

Kind = Literal["cot", "direct"]
KINDS: tuple[str, ...] = ("cot", "direct")
INSTRUCTIONS = {
    "cot": "Think step by step. Then end your reply with the answer, written exactly in the format described above.",
    "direct": "Reply with the answer only, written exactly in the format described above. Do not explain.",
}
DEFAULT_MAX_NEW_TOKENS = {"cot": 512, "direct": 256}
_UNLIMITED = 10**9


# ============================================================================ settings and the LM
@dataclass(kw_only=True)
class GenerationSettings:
    """The budget of an LLM baseline's replies.

    Args:
        max_new_tokens: tokens per reply; a reply still running then is wrong (default: cot 512, direct 256)
        temperature: 0 = greedy; > 0 samples
        top_p: nucleus sampling mass (with temperature > 0)
        attempts: sampled replies per puzzle, voted (needs temperature > 0)
        batch_size: prompts per generate call
    """

    max_new_tokens: PositiveInt | None = None
    temperature: float = 0.0
    top_p: float = 1.0
    attempts: PositiveInt = 1
    batch_size: PositiveInt = 8

    def __post_init__(self) -> None:
        for name in ("max_new_tokens", "attempts", "batch_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise HybridReasonError(f"{name} must be >= 1, got {value}")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise HybridReasonError(
                f"temperature must be >= 0 and top_p in (0, 1], got {self.temperature}, {self.top_p}"
            )
        if self.attempts > 1 and self.temperature <= 0:
            raise HybridReasonError(
                f"attempts={self.attempts} needs temperature > 0: greedy decoding repeats one reply"
            )

    def for_kind(self, kind: str) -> GenerationSettings:
        """These settings with the reply budget of ``kind`` filled in when none was given."""
        return self if self.max_new_tokens is not None else replace(self, max_new_tokens=DEFAULT_MAX_NEW_TOKENS[kind])


@dataclass
class LanguageModel:
    """A causal LM and its tokenizer, ready to generate (left padding, a pad token)."""

    name: str
    model: Any  # a transformers PreTrainedModel with a LM head
    tokenizer: Any

    def __post_init__(self) -> None:
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if not getattr(self.tokenizer, "chat_template", None):
            raise HybridReasonError(
                f"language model {self.name!r} has no chat template; set tokenizer.chat_template "
                "(or chat_template in a suite)"
            )
        self.model.eval()

    @property
    def params(self) -> int:
        """All parameters (tied embeddings counted once)."""
        return sum(p.numel() for p in self.model.parameters())

    @property
    def params_per_token(self) -> int:
        """Parameters whose matmuls run for every token: all but the input embedding table (a lookup),
        plus the output head (counted even when it is tied to the embeddings)."""
        embedding = self.model.get_input_embeddings().weight
        head = self.model.get_output_embeddings()
        rest = sum(p.numel() for p in self.model.parameters() if p is not embedding)
        return rest + (embedding.numel() if head is not None and head.weight is embedding else 0)

    @property
    def context_length(self) -> int | None:
        """The longest prompt + reply the model takes (max_position_embeddings / tokenizer limit)."""
        limits = [getattr(self.model.config, "max_position_embeddings", None), self.tokenizer.model_max_length]
        limits = [int(x) for x in limits if isinstance(x, int) and 0 < x < _UNLIMITED]
        return min(limits) if limits else None

    @property
    def eos_ids(self) -> list[int]:
        """Token ids that end a reply (generation config and tokenizer)."""
        ids = self.model.generation_config.eos_token_id
        ids = set(ids if isinstance(ids, list) else [] if ids is None else [ids])
        if self.tokenizer.eos_token_id is not None:
            ids.add(self.tokenizer.eos_token_id)
        return sorted(ids)


def load_language_model(
    name: str,
    device: str = "cpu",
    dtype: str = "float32",
    chat_template: str | None = None,
    quantization: Literal["nf4"] | None = None,
) -> LanguageModel:
    """Load a causal LM by hub id, local folder, .gguf file or alias (``materialize`` caches GGUF
    backbones as safetensors). A HybridReasoner folder stands for its backbone. ``chat_template``
    (Jinja) replaces the tokenizer's own, for models that ship none. ``quantization="nf4"`` loads the
    weights in 4 bits (bitsandbytes), computing in ``dtype``."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    from ..backbone.loading import load_tokenizer, materialize

    config = saved_config(name) if os.path.isdir(name) else None
    if config is not None:
        name = config.backbone["name"]
    path = materialize(name)
    tokenizer = load_tokenizer(path, None)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    kwargs: dict[str, Any] = {"dtype": getattr(torch, dtype), "output_loading_info": True}
    if quantization is not None:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=getattr(torch, dtype)
        )
        kwargs["device_map"] = {"": str(device)}  # a quantized model loads where it runs; it cannot move
    try:
        model, info = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    finally:
        hf_logging.set_verbosity(verbosity)
    missing = sorted(info.get("missing_keys", []))
    if missing:
        raise HybridReasonError(
            f"language model {name!r}: {path} lacks weights {missing[:3]} (no LM head?): it cannot generate"
        )
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    return LanguageModel(name, model if quantization else model.to(device), tokenizer)


# ============================================================================ prompts and parsing
def user_message(task, puzzle_text: str, kind: str) -> str:
    """The user turn: the task description, the serialized puzzle, the instruction of ``kind``."""
    if kind not in KINDS:
        raise HybridReasonError(f"unknown baseline {kind!r}; choose one of {', '.join(KINDS)}")
    return f"{task.describe()}\n\n{puzzle_text}\n\n{INSTRUCTIONS[kind]}"


def chat_prompt(lm: LanguageModel, message: str) -> str:
    """The prompt text: ``message`` as the user turn of the chat template, assistant turn opened."""
    return lm.tokenizer.apply_chat_template(
        [{"role": "user", "content": message}], tokenize=False, add_generation_prompt=True
    )


def parse_reply(task, text: str) -> Any | None:
    """``task.parse_answer(text)``; a parser failure counts as no answer (None), never an exception."""
    try:
        return task.parse_answer(text)
    except Exception:  # noqa: BLE001 - any malformed reply is just a wrong answer
        return None


def prompt_budget(lm: LanguageModel, task, kind: str, settings: GenerationSettings) -> PromptBudget:
    """Tokens left for the puzzle text: the context minus the reply budget and the prompt's frame."""
    count = TokenCount(lm.tokenizer, add_special_tokens=False)  # the chat template holds the special tokens
    if lm.context_length is None:
        return PromptBudget(None, count)
    frame = count(chat_prompt(lm, user_message(task, "", kind)))
    return PromptBudget(max(1, lm.context_length - settings.for_kind(kind).max_new_tokens - frame), count)


# ============================================================================ generation
@dataclass
class Reply:
    """One generated reply: its text, tokens generated (EOS included), whether it stopped by itself
    within the budget, and the parsed answer (None when unfinished or unparseable)."""

    text: str
    tokens: int
    finished: bool
    answer: Any = None


def generate(lm: LanguageModel, prompts: list[str], settings: GenerationSettings, seed: int = 0) -> list[list[Reply]]:
    """Generate ``settings.attempts`` replies for each prompt in one batched, left-padded call."""
    enc = lm.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(lm.model.device)
    sample = settings.temperature > 0
    kwargs = (
        dict(do_sample=True, temperature=settings.temperature, top_p=settings.top_p)
        if sample
        else dict(do_sample=False)
    )
    torch.manual_seed(seed)
    with torch.no_grad():
        out = lm.model.generate(
            **enc,
            max_new_tokens=settings.max_new_tokens,
            num_return_sequences=settings.attempts,
            pad_token_id=lm.tokenizer.pad_token_id,
            eos_token_id=lm.eos_ids,
            **kwargs,
        )
    new = out[:, enc["input_ids"].shape[1] :].cpu()
    replies = [_reply(lm, seq) for seq in new]
    return [replies[i * settings.attempts : (i + 1) * settings.attempts] for i in range(len(prompts))]


def _reply(lm: LanguageModel, seq: torch.Tensor) -> Reply:
    """Cut a generated sequence at its first EOS and decode it."""
    is_eos = torch.isin(seq, torch.as_tensor(lm.eos_ids, dtype=seq.dtype))
    if bool(is_eos.any()):
        n = int(is_eos.nonzero()[0, 0]) + 1
        return Reply(lm.tokenizer.decode(seq[: n - 1], skip_special_tokens=True), n, True)
    return Reply(lm.tokenizer.decode(seq, skip_special_tokens=True), len(seq), False)


# ============================================================================ running a baseline
@dataclass
class BaselineResult:
    """A baseline's replies and scores on a set of puzzles."""

    kind: str
    model: str
    task: str
    split: str
    settings: GenerationSettings
    results: list[PuzzleResult]
    replies: list[list[Reply]]
    prompt_tokens: list[int]
    seconds: list[float]  # per puzzle: its share of its batch's wall time
    params: int
    params_per_token: int
    ks: list[int] = field(default_factory=lambda: [1])
    headline: str = "exact"  # "pass@2" for ARC
    seed: int = 0

    @property
    def puzzles(self) -> int:
        """Number of puzzles."""
        return len(self.results)

    @property
    def metrics(self) -> dict[str, float]:
        """exact, pass@k (ARC), cell accuracy and reply statistics: the share of replies that hit
        ``max_new_tokens`` (unfinished) and of finished replies with no well-formed answer (unparsed)."""
        m = aggregate(self.results, self.ks)
        m.pop("halt_step")
        replies = [r for rs in self.replies for r in rs]
        m["unfinished"] = sum(not r.finished for r in replies) / max(1, len(replies))
        m["unparsed"] = sum(r.finished and r.answer is None for r in replies) / max(1, len(replies))
        return m

    def tokens_per_puzzle(self) -> float:
        """Generated tokens per puzzle, all attempts together."""
        return sum(r.tokens for rs in self.replies for r in rs) / max(1, self.puzzles)

    def seconds_per_puzzle(self) -> float:
        """Wall seconds per puzzle (batched generation shared equally in a batch)."""
        return sum(self.seconds) / max(1, self.puzzles)

    def flops_per_puzzle(self) -> float:
        """2 x params per token x (prompt + generated tokens), per attempt, per puzzle."""
        total = sum(
            2.0 * self.params_per_token * (p * len(rs) + sum(r.tokens for r in rs))
            for p, rs in zip(self.prompt_tokens, self.replies)
        )
        return total / max(1, self.puzzles)

    def summary(self) -> dict[str, Any]:
        """A JSON-able summary."""
        return {
            "kind": self.kind,
            "model": self.model,
            "task": self.task,
            "split": self.split,
            "settings": asdict(self.settings),
            "seed": self.seed,
            "puzzles": self.puzzles,
            "metrics": self.metrics,
            "seconds_per_puzzle": self.seconds_per_puzzle(),
            "generated_tokens_per_puzzle": self.tokens_per_puzzle(),
            "prompt_tokens_per_puzzle": sum(self.prompt_tokens) / max(1, self.puzzles),
            "prompts_with_dropped_demonstrations": sum(r.dropped_demonstrations > 0 for r in self.results),
            "dropped_demonstrations": sum(r.dropped_demonstrations for r in self.results),
            "flops_per_puzzle": self.flops_per_puzzle(),
            "trainable_params": 0,
            "total_params": self.params,
        }


def run_baseline(
    lm: LanguageModel,
    task,
    rows,
    kind: str,
    settings: GenerationSettings | None = None,
    split: str = "",
    progress: bool = True,
    seed: int = 0,
) -> BaselineResult:
    """Prompt ``lm`` with every row of ``task`` (``kind`` = "cot" or "direct"), parse, vote and score.
    ``seed`` seeds sampling (batch b uses seed + b)."""
    settings = (settings or GenerationSettings()).for_kind(kind)
    budget = prompt_budget(lm, task, kind, settings)
    rendered = [task.render(rows[i], budget=budget) for i in range(len(rows))]
    prompts = [chat_prompt(lm, user_message(task, ex.text, kind)) for ex in rendered]
    prompt_tokens = [budget.count(p) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: prompt_tokens[i])  # similar lengths share a batch
    replies: list[list[Reply]] = [[] for _ in prompts]
    seconds = [0.0] * len(prompts)
    bar, bar_task = progress_bar(kind, len(prompts), progress)
    with bar:
        for b, start in enumerate(range(0, len(order), settings.batch_size)):
            idx = order[start : start + settings.batch_size]
            t0 = time.perf_counter()
            batch = generate(lm, [prompts[i] for i in idx], settings, seed=seed + b)
            share = (time.perf_counter() - t0) / len(idx)
            for i, rs in zip(idx, batch):
                replies[i], seconds[i] = rs, share
            bar.update(bar_task, advance=len(idx))
    ks = attempt_counts(task, 1)
    results = [
        score_replies(task, rows[i], replies[i], ks, rendered[i].meta.get("dropped_demonstrations", 0))
        for i in range(len(rows))
    ]
    return BaselineResult(
        kind,
        lm.name,
        task.name,
        split,
        settings,
        results,
        replies,
        prompt_tokens,
        seconds,
        lm.params,
        lm.params_per_token,
        ks,
        headline(task),
        seed,
    )


def score_replies(task, row: dict, replies: list[Reply], ks: Sequence[int], dropped: int = 0) -> PuzzleResult:
    """Parse finished replies, vote their answers (most frequent first) and score the attempts."""
    for r in replies:
        r.answer = parse_reply(task, r.text) if r.finished else None
    return score_candidates(
        task, row, vote([r.answer for r in replies]), ks, views=len(replies), dropped_demonstrations=dropped
    )


__all__ = [
    "BaselineResult",
    "GenerationSettings",
    "LanguageModel",
    "Reply",
    "chat_prompt",
    "generate",
    "load_language_model",
    "parse_reply",
    "prompt_budget",
    "run_baseline",
    "score_replies",
    "user_message",
]
