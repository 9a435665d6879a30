"""What `hybrid-reason plan` reads besides the recipe: the backbone's config and tokenizer (no weights),
and the prompt lengths of the recipe's task in that tokenizer."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

import numpy as np

from .errors import HybridReasonError

QWEN_SHAPES = {"qwen2.5-0.5b": "0.5b", "qwen2.5-1.5b": "1.5b"}
STAND_IN_ROWS = 200  # generated puzzles standing in for a hub dataset (same text layout)
STATS = ("mean", "median", "p90", "max")


# ------------------------------------------------------------------------------ backbone and tokenizer
def _qwen_shape(name: str) -> str | None:
    """The qwen_shaped_config size of a Qwen2.5 id or alias ("Qwen/Qwen2.5-0.5B-Instruct" -> "0.5b")."""
    base = name.lower().rstrip("/").split("/")[-1]
    return next((size for key, size in QWEN_SHAPES.items() if base.startswith(key)), None)


def backbone_config(name: str, revision: str | None, given: str | None):
    """(HF config, where it came from) for the recipe's backbone ``name`` or the ``given`` one
    (--backbone-config: a folder, a config.json, an alias, a cached hub id, or qwen2.5-0.5b/1.5b)."""
    from transformers import AutoConfig, PretrainedConfig

    from .backbone.loading import resolve_backbone
    from .utils.testing import qwen_shaped_config

    source = given or name
    size = _qwen_shape(source)
    if given and size and not os.path.exists(given):
        return qwen_shaped_config(size), f"Qwen2.5-{size.upper()}'s shape written in code (qwen_shaped_config)"
    if given and os.path.isfile(given):
        values, _ = PretrainedConfig.get_config_dict(given)
        return AutoConfig.for_model(**values), given
    try:
        path, gguf = resolve_backbone(source)
        config = AutoConfig.from_pretrained(path, gguf_file=gguf, revision=revision, local_files_only=True)
        return config, path if os.path.exists(path) else "the local HF cache"
    except (OSError, ValueError) as err:
        if size and not given:
            return qwen_shaped_config(size), (
                f"Qwen2.5-{size.upper()}'s shape written in code (qwen_shaped_config), not in the local HF cache"
            )
        raise HybridReasonError(
            f"backbone {source!r}: no config found locally ({str(err).splitlines()[0]}); pass "
            "--backbone-config PATH_OR_NAME (a folder, a config.json, or qwen2.5-0.5b)"
        ) from None


def _local_tokenizer(name: str, revision: str | None):
    """The fast tokenizer of a local folder, alias, .gguf file (its dequantized cache if present) or
    cached hub id; never downloads, never loads weights."""
    from pathlib import Path

    from transformers import AutoTokenizer

    from .backbone.loading import ALIASES, gguf_cache_dir, load_tokenizer, resolve_backbone

    path, gguf = resolve_backbone(name)
    if gguf is not None:
        cached = gguf_cache_dir(name if name in ALIASES else Path(gguf).stem)
        if (cached / "tokenizer.json").is_file():
            return load_tokenizer(str(cached), None)
        return AutoTokenizer.from_pretrained(path, gguf_file=gguf)
    if os.path.isdir(path):
        return load_tokenizer(path, revision)
    return AutoTokenizer.from_pretrained(path, revision=revision, local_files_only=True)


def plan_tokenizer(name: str, revision: str | None, given: str | None):
    """(tokenizer, description, whether it is the backbone's own): ``given`` (--tokenizer), else the
    backbone's own when local, else SmolLM2-135M's, which writes one token per digit as Qwen2.5's does."""
    if given:
        try:
            return _local_tokenizer(given, None), given, False
        except (OSError, ValueError) as err:
            raise HybridReasonError(f"--tokenizer {given!r}: {str(err).splitlines()[0]}") from None
    try:
        return _local_tokenizer(name, revision), f"{name}'s own", True
    except (OSError, ValueError):
        pass
    try:
        tokenizer = _local_tokenizer("smollm2-135m", None)
    except (OSError, ValueError) as err:
        raise HybridReasonError(
            f"backbone {name!r}: its tokenizer is not local and SmolLM2's stand-in is missing ({err}); pass --tokenizer"
        ) from None
    return (
        tokenizer,
        (
            f"SmolLM2-135M's (smollm2-135m), standing in for {name}'s, which is not local; "
            "both write one token per digit"
        ),
        False,
    )


# ------------------------------------------------------------------------------ prompts
@dataclass
class Lengths:
    """Prompt lengths (tokens) of one split: the rows it has, those measured, and how many exceed the
    prompt budget (they drop demonstrations to fit) or cannot fit at all."""

    split: str
    rows: int
    tokens: np.ndarray
    index: np.ndarray
    over_budget: int = 0
    unfit: int = 0

    def stat(self, name: str) -> int:
        """mean, median, p90 or max, in tokens."""
        fn = {"mean": np.mean, "median": np.median, "p90": lambda t: np.percentile(t, 90), "max": np.max}[name]
        return int(round(float(fn(self.tokens))))


def stand_in(task, hub_data: bool):
    """The task itself, or (for a hub source, unless ``--hub-data``) the same family generated offline
    with the same size: its text layout, hence its prompt lengths, is the same. (task, note)."""
    source = str(getattr(task, "source", ""))
    if hub_data or not source.startswith("hub:"):
        return task, ""
    counts = {f: STAND_IN_ROWS for f in ("num_train", "num_validation", "num_test") if hasattr(task, f)}
    note = f"{source} not read (pass --hub-data to download it): {STAND_IN_ROWS} generated puzzles of the same layout"
    return dataclasses.replace(task, source="generate", limit=None, **counts), note


def prompt_lengths(task, split: str, tokenizer, budget: int | None, max_prompts: int, seed: int) -> Lengths:
    """Render ``split`` (a seeded sample of ``max_prompts`` rows if larger) and count tokens; prompts
    over ``budget`` are rendered again under it, as training would (dropping demonstrations)."""
    rows = task.load(split)
    n = len(rows)
    if n == 0:
        raise HybridReasonError(f"data.task: split {split!r} of task {task.name!r} is empty")
    index = (
        np.arange(n) if n <= max_prompts else np.sort(np.random.default_rng(seed).choice(n, max_prompts, replace=False))
    )
    texts = [task.render(rows[int(i)]).text for i in index]
    tokens = np.array([len(ids) for ids in tokenizer(texts, add_special_tokens=True)["input_ids"]])
    count = lambda text: len(tokenizer(text, add_special_tokens=True)["input_ids"])  # noqa: E731
    over = np.nonzero(tokens > budget)[0] if budget else []
    unfit = 0
    for j in over:
        try:
            tokens[j] = count(task.render(rows[int(index[j])], max_tokens=budget, count_tokens=count).text)
        except ValueError:
            unfit += 1
    return Lengths(split, n, tokens, index, len(over), unfit)
