"""LLM baselines on the same puzzles as the hybrid: chain of thought and direct answer, with HF generate.

    hybrid-reason baseline cot    --task sort --model smollm2-135m --limit 50
    hybrid-reason baseline direct --model runs/demo/hf_model          # that model's backbone and task
    hybrid-reason baseline fixed-depth --model runs/fixed/hf_model      # = evaluate, checked T=n=N_sup=1

The LM (a hub id, a local folder, a .gguf file or an alias such as ``smollm2-135m``; by default the
hybrid's own backbone) gets, through its chat template, the task's ``describe()`` paragraph, the same
serialized puzzle the hybrid reads (``task.render(row).text``) and an instruction: think step by step
and end with the answer (``cot``), or give the answer only (``direct``). Generation is greedy by
default; ``temperature > 0`` samples ``attempts`` replies per puzzle. Every reply is bounded by
``max_new_tokens``: one that has not stopped by then is scored wrong, as is one with no well-formed
answer (``task.parse_answer``: the last well-formed grid/list). Parsed attempts are voted like the
hybrid's views (most frequent first), so attempt 1 gives exact accuracy and attempts 1-2 ARC's pass@2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import torch

from ..tasks.keys import puzzle_key
from ..utils.atomic_io import atomic_write, write_csv, write_json
from .hybrid import (PuzzleResult, aggregate, build_task_spec, is_arc, parse_options, quiet_transformers,
                         resolve_split, select_rows, vote)

KINDS = ("cot", "direct")
INSTRUCTIONS = {
    "cot": "Think step by step. Then end your reply with the answer, written exactly in the format described above.",
    "direct": "Reply with the answer only, written exactly in the format described above. Do not explain.",
}
DEFAULT_MAX_NEW_TOKENS = {"cot": 512, "direct": 256}
_UNLIMITED = 10**9


# ============================================================================ settings and the LM
@dataclass
class GenerationSettings:
    """Budget knobs of a baseline: tokens per reply, temperature (0 = greedy), top_p, attempts per
    puzzle (sampling only), prompts per generate call, and the sampling seed."""

    max_new_tokens: int = 512
    temperature: float = 0.0
    top_p: float = 1.0
    attempts: int = 1
    batch_size: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1 or self.attempts < 1 or self.batch_size < 1:
            raise ValueError(f"max_new_tokens, attempts and batch_size must be >= 1, got {self.max_new_tokens}, "
                             f"{self.attempts}, {self.batch_size}")
        if self.attempts > 1 and self.temperature <= 0:
            raise ValueError(f"attempts={self.attempts} needs temperature > 0: greedy decoding repeats one reply")


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
            raise ValueError(f"language model {self.name!r} has no chat template; set tokenizer.chat_template")
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


def hybrid_model_info(path: str) -> dict | None:
    """The config of a saved HybridReasoner folder (model_type hybrid_reason), else None."""
    config = os.path.join(path, "config.json")
    if not os.path.isfile(config):
        return None
    with open(config) as f:
        data = json.load(f)
    return data if data.get("model_type") == "hybrid_reason" else None


def load_language_model(name: str, device: str = "cpu", dtype: str = "float32",
                        chat_template: str | None = None) -> LanguageModel:
    """Load a causal LM by hub id, local folder, .gguf file or alias (``materialize`` caches GGUF
    backbones as safetensors). A HybridReasoner folder stands for its backbone. ``chat_template``
    (Jinja) replaces the tokenizer's own, for models that ship none."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from ..backbone.loading import TOKENIZER_FOLDER, materialize

    info = hybrid_model_info(name) if os.path.isdir(name) else None
    if info is not None:
        name = info["backbone"]["name"]
    path = materialize(name)
    sub = os.path.join(path, TOKENIZER_FOLDER)
    tokenizer = AutoTokenizer.from_pretrained(sub if os.path.isfile(os.path.join(sub, "tokenizer.json")) else path)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model, info = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype), output_loading_info=True)
    finally:
        hf_logging.set_verbosity(verbosity)
    missing = sorted(info.get("missing_keys", []))
    if missing:
        raise ValueError(f"language model {name!r}: {path} lacks weights {missing[:3]} (no LM head?): it cannot generate")
    model = model.to(device)
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    return LanguageModel(name, model, tokenizer)


# ============================================================================ prompts and parsing
def user_message(task, puzzle_text: str, kind: str) -> str:
    """The user turn: the task description, the serialized puzzle, the instruction of ``kind``."""
    if kind not in KINDS:
        raise ValueError(f"unknown baseline {kind!r}; choose one of {', '.join(KINDS)}")
    return f"{task.describe()}\n\n{puzzle_text}\n\n{INSTRUCTIONS[kind]}"


def chat_prompt(lm: LanguageModel, message: str) -> str:
    """The prompt text: ``message`` as the user turn of the chat template, assistant turn opened."""
    return lm.tokenizer.apply_chat_template([{"role": "user", "content": message}], tokenize=False,
                                            add_generation_prompt=True)


def parse_reply(task, text: str) -> Any | None:
    """``task.parse_answer(text)``; a parser failure counts as no answer (None), never an exception."""
    try:
        return task.parse_answer(text)
    except Exception:  # noqa: BLE001 - any malformed reply is just a wrong answer
        return None


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
    kwargs = dict(do_sample=sample, temperature=settings.temperature, top_p=settings.top_p) if sample else dict(do_sample=False)
    torch.manual_seed(seed)
    with torch.no_grad():
        out = lm.model.generate(**enc, max_new_tokens=settings.max_new_tokens, num_return_sequences=settings.attempts,
                                pad_token_id=lm.tokenizer.pad_token_id, eos_token_id=lm.eos_ids, **kwargs)
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

    @property
    def puzzles(self) -> int:
        """Number of puzzles."""
        return len(self.results)

    @property
    def headline(self) -> str:
        """ARC's pass@2, else exact accuracy."""
        return "pass@2" if 2 in self.ks else "exact"

    @property
    def metrics(self) -> dict[str, float]:
        """exact, pass@k (ARC), cell accuracy and reply statistics."""
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
        total = sum(2.0 * self.params_per_token * (p * len(rs) + sum(r.tokens for r in rs))
                    for p, rs in zip(self.prompt_tokens, self.replies))
        return total / max(1, self.puzzles)

    def summary(self) -> dict[str, Any]:
        """A JSON-able summary."""
        return {"kind": self.kind, "model": self.model, "task": self.task, "split": self.split,
                "settings": asdict(self.settings), "puzzles": self.puzzles, "metrics": self.metrics,
                "seconds_per_puzzle": self.seconds_per_puzzle(), "generated_tokens_per_puzzle": self.tokens_per_puzzle(),
                "prompt_tokens_per_puzzle": sum(self.prompt_tokens) / max(1, self.puzzles),
                "flops_per_puzzle": self.flops_per_puzzle(), "trainable_params": 0, "total_params": self.params}


def _progress(enabled: bool, total: int, label: str):
    """A Rich progress bar over puzzles (on stderr), or a disabled one."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TextColumn("puzzles"),
                        TimeElapsedColumn(), console=Console(stderr=True), disable=not enabled)
    return progress, progress.add_task(label, total=total)


def prompt_budget(lm: LanguageModel, task, kind: str, settings: GenerationSettings) -> int | None:
    """Tokens left for the puzzle text: the context minus the reply budget and the prompt's frame."""
    if lm.context_length is None:
        return None
    frame = len(lm.tokenizer(chat_prompt(lm, user_message(task, "", kind)), add_special_tokens=False)["input_ids"])
    return max(1, lm.context_length - settings.max_new_tokens - frame)


def run_baseline(lm: LanguageModel, task, rows, kind: str, settings: GenerationSettings | None = None,
                 split: str = "", progress: bool = True) -> BaselineResult:
    """Prompt ``lm`` with every row of ``task`` (``kind`` = "cot" or "direct"), parse, vote and score."""
    settings = settings or GenerationSettings(max_new_tokens=DEFAULT_MAX_NEW_TOKENS[kind])
    count = lambda text: len(lm.tokenizer(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    task.set_budget(prompt_budget(lm, task, kind, settings), count)
    prompts = [chat_prompt(lm, user_message(task, task.render(rows[i]).text, kind)) for i in range(len(rows))]
    prompt_tokens = [count(p) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: prompt_tokens[i])  # similar lengths share a batch
    replies: list[list[Reply]] = [[] for _ in prompts]
    seconds = [0.0] * len(prompts)
    bar, bar_task = _progress(progress, len(prompts), kind)
    with bar:
        for b, start in enumerate(range(0, len(order), settings.batch_size)):
            idx = order[start : start + settings.batch_size]
            t0 = time.perf_counter()
            batch = generate(lm, [prompts[i] for i in idx], settings, seed=settings.seed + b)
            share = (time.perf_counter() - t0) / len(idx)
            for i, rs in zip(idx, batch):
                replies[i], seconds[i] = rs, share
            bar.update(bar_task, advance=len(idx))
    ks = [1, 2] if is_arc(task) else [1]
    results = [_score(task, rows[i], replies[i], ks) for i in range(len(rows))]
    return BaselineResult(kind, lm.name, task.name, split, settings, results, replies, prompt_tokens, seconds,
                          lm.params, lm.params_per_token, ks)


def _score(task, row: dict, replies: list[Reply], ks: Sequence[int]) -> PuzzleResult:
    """Parse finished replies, vote their answers (most frequent first) and score the attempts."""
    for r in replies:
        r.answer = parse_reply(task, r.text) if r.finished else None
    candidates = vote([r.answer for r in replies], [0.0] * len(replies))
    target = task.target(row)
    solved = {k: any(task.score(c.answer, target) for c in candidates[:k]) for k in ks}
    cell = task.cell_accuracy(candidates[0].answer, target) if candidates and target is not None else 0.0
    return PuzzleResult(str(row["id"]), puzzle_key(row), str(row.get("query") or ""), len(replies), candidates, solved,
                        float(cell), 0.0)


# ============================================================================ outputs
def write_baseline(result: BaselineResult, out_dir: str, command: str) -> None:
    """Write metrics.json, per_task.csv and replies.jsonl, each atomically."""
    write_json(os.path.join(out_dir, "metrics.json"), {"command": command} | result.summary())
    write_csv(os.path.join(out_dir, "per_task.csv"),
              ["task_id", "puzzle_id", "solved", "solved_pass1", "cell_accuracy", "generated_tokens", "finished",
               "parsed", "seconds"],
              [[r.group, r.id, int(r.solved[max(result.ks[:2])]), int(r.solved[1]), f"{r.cell:.4f}",
                sum(x.tokens for x in rs), sum(x.finished for x in rs), sum(x.answer is not None for x in rs), f"{s:.3f}"]
               for r, rs, s in zip(result.results, result.replies, result.seconds)])
    lines = [json.dumps({"id": r.id, "solved": r.solved[1], "replies": [asdict(x) for x in rs]})
             for r, rs in zip(result.results, result.replies)]
    atomic_write(os.path.join(out_dir, "replies.jsonl"), "\n".join(lines) + "\n")


# ============================================================================ command line
def parser() -> argparse.ArgumentParser:
    """The ``hybrid-reason baseline`` argument parser."""
    p = argparse.ArgumentParser(prog="hybrid-reason baseline", description="Run an LLM baseline (chain of thought "
                                "or direct answer) on a task, or evaluate a fixed-depth model.")
    p.add_argument("kind", choices=[*KINDS, "fixed-depth"])
    p.add_argument("--model", default="smollm2-135m", help="LM: hub id, folder, .gguf or alias; a HybridReasoner "
                   "folder means its backbone and its task (fixed-depth: the trained model)")
    p.add_argument("--task", help="task name (default: the hybrid model's task, else sort)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="override a task option")
    p.add_argument("--split", default="test", help="train, validation, test; 'eval' = test")
    p.add_argument("--limit", type=int, help="only the first N puzzles (ARC: tasks)")
    p.add_argument("--max-new-tokens", type=int, help="reply budget (default: cot 512, direct 256)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--attempts", type=int, default=1, help="sampled replies per puzzle (needs temperature > 0)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float32", help="float32 on CPU; bfloat16 on GPU")
    p.add_argument("--out", help="output folder (default: eval/results/baseline-KIND-TASK)")
    p.add_argument("--no-progress", action="store_true")
    return p


def task_for(model: str, name: str | None, options: dict) -> Any:
    """The task: ``name`` with ``options``, starting from a hybrid model folder's own task when given."""
    info = hybrid_model_info(model) if os.path.isdir(model) else None
    base = dict((info or {}).get("task") or {})
    if name is not None and name != base.get("name"):
        base = {"name": name}
    base.setdefault("name", "sort")
    return build_task_spec(base | options)


def fixed_depth_main(args: argparse.Namespace) -> None:
    """``baseline fixed-depth``: check the model is single-step (T = n = N_sup = 1), then evaluate it."""
    from . import hybrid as evaluation

    info = hybrid_model_info(args.model)
    if info is None:
        sys.exit(f"hybrid-reason baseline: --model {args.model!r} is not a saved HybridReasoner folder")
    core = info["core"]
    if (core["T"], core["n"], info["halt_max_steps"]) != (1, 1, 1):
        sys.exit(f"hybrid-reason baseline: {args.model} is not fixed-depth: T={core['T']}, n={core['n']}, "
                 f"halt_max_steps={info['halt_max_steps']} (train with --model.core.T 1 --model.core.n 1 "
                 "--model.halt_max_steps 1)")
    argv = ["--model", args.model, "--split", args.split, "--device", args.device]
    argv += ["--task", args.task] if args.task else []
    argv += [x for o in args.option for x in ("--option", o)]
    argv += (["--limit", str(args.limit)] if args.limit else []) + (["--out", args.out] if args.out else [])
    evaluation.main(argv + (["--no-progress"] if args.no_progress else []))


def main(argv: list[str] | None = None) -> BaselineResult | None:
    """``hybrid-reason baseline cot|direct|fixed-depth ...``."""
    args = parser().parse_args(argv)
    quiet_transformers()
    if args.kind == "fixed-depth":
        return fixed_depth_main(args)
    try:
        task = task_for(args.model, args.task, parse_options(args.option))
        settings = GenerationSettings(args.max_new_tokens or DEFAULT_MAX_NEW_TOKENS[args.kind], args.temperature,
                                      args.top_p, args.attempts, args.batch_size, args.seed)
        split = resolve_split(args.split)
        rows = select_rows(task.load(split), args.limit)
        lm = load_language_model(args.model, args.device, args.dtype)
        result = run_baseline(lm, task, rows, args.kind, settings, split, progress=not args.no_progress)
    except (OSError, ValueError) as err:
        sys.exit(f"hybrid-reason baseline: {err}")
    out = args.out or os.path.join("eval", "results", f"baseline-{args.kind}-{task.name}")
    command = "hybrid-reason baseline " + " ".join(sys.argv[2:] if argv is None else argv)
    write_baseline(result, out, command)
    m = result.metrics
    print(f"{args.kind} {lm.name} on {task.name} ({split}, {result.puzzles} puzzles): "
          + ", ".join(f"{k} {100 * v:.1f}%" for k, v in m.items())
          + f"; {result.tokens_per_puzzle():.1f} tokens, {result.seconds_per_puzzle():.2f} s per puzzle")
    print(f"hybrid-reason: wrote {out}")
    return result


__all__ = ["BaselineResult", "GenerationSettings", "LanguageModel", "Reply", "chat_prompt", "generate",
           "load_language_model", "main", "parse_reply", "run_baseline", "user_message", "write_baseline"]
