"""Tiny random Hugging Face backbones built offline, for tests and benchmarks.

``tiny_backbone(path)`` writes a randomly initialised model (Qwen2, Llama or BERT) and a real BPE
tokenizer to ``path``; ``Backbone.load(BackboneSpec(name=path))`` loads it like any local checkpoint.
``qwen_shaped_config()`` gives Qwen2.5's real shapes with random weights, for GPU throughput checks.
Nothing here touches the network.
"""

from __future__ import annotations

import json
import os
import random
import string
from functools import lru_cache

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoModel, BertConfig, LlamaConfig, PreTrainedConfig, PreTrainedTokenizerFast, Qwen2Config

from ..backbone.loading import TOKENIZER_FOLDER

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]
ARCHS = ("qwen2", "llama", "bert")
CHAT_TEMPLATE = (  # a minimal chat template for tiny causal LMs used as chat models in tests
    "{% for m in messages %}<s>{{ m['role'] }}\n{{ m['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant\n{% endif %}"
)


def _corpus(seed: int = 0) -> list[str]:
    """A small in-code corpus: digit grids (ARC/Sudoku-like), words and punctuation, with newlines."""
    rng = random.Random(seed)
    lines = []
    for _ in range(300):
        rows = ["".join(rng.choice("0123456789") for _ in range(rng.randint(2, 9))) for _ in range(rng.randint(1, 5))]
        lines.append("\n".join(rows))
    words = "input output example test grid puzzle answer sort the list maze wall path start goal".split()
    for _ in range(200):
        line = " ".join(rng.choice(words) for _ in range(rng.randint(2, 8)))
        lines.append(line + rng.choice(".:,;!?") + " " + str(rng.randint(0, 999)) + "\n")
    return lines


@lru_cache(maxsize=4)
def _tokenizer_json(vocab_size: int, seed: int) -> str:
    """Train the BPE tokenizer once per (vocab_size, seed) and return its JSON (training takes ~0.1 s)."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    # Whitespace is its own pre-token, so merges join digits and letters but never "\n" with a digit.
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(pattern=ws, behavior="isolated") for ws in (" ", "\n")]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIALS,
        initial_alphabet=list(string.printable),
        min_frequency=2,
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(seed), trainer=trainer)
    tok.decoder = decoders.Fuse()  # tokens are raw text pieces: join them with no inserted spaces
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    return tok.to_str()


def tiny_tokenizer(vocab_size: int = 256, seed: int = 0) -> PreTrainedTokenizerFast:
    """A real BPE tokenizer trained offline on digits, words, punctuation and newlines.

    Frequent digit pairs merge (``"12"`` is one token), a ``<s>`` BOS is prepended (offsets (0, 0)),
    and decoding reproduces the text exactly, newlines included.
    """
    tok = Tokenizer.from_str(_tokenizer_json(vocab_size, seed))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


def _config(arch: str, vocab_size: int, hidden_size: int, num_layers: int, max_positions: int) -> PreTrainedConfig:
    """A small config of the given architecture."""
    heads = max(1, hidden_size // 8)
    common = dict(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=heads,
        intermediate_size=2 * hidden_size,
        max_position_embeddings=max_positions,
    )
    ids = dict(
        pad_token_id=SPECIALS.index("<pad>"), bos_token_id=SPECIALS.index("<s>"), eos_token_id=SPECIALS.index("</s>")
    )
    if arch == "bert":
        return BertConfig(**common, pad_token_id=ids["pad_token_id"])
    kv = heads // 2 if heads % 2 == 0 else heads
    if arch == "qwen2":
        return Qwen2Config(**common, **ids, num_key_value_heads=kv, tie_word_embeddings=True)
    if arch == "llama":
        return LlamaConfig(**common, **ids, num_key_value_heads=kv)
    raise ValueError(f"unknown tiny backbone arch {arch!r}; choose one of {ARCHS}")


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, path: str) -> None:
    """Save so that ``AutoTokenizer`` reloads it as a plain fast tokenizer.

    Call it with a folder of its own (``<model>/tokenizer``, which ``Backbone.load`` looks for): next to
    a Qwen2 config, AutoTokenizer rebuilds any tokenizer.json as a Qwen2Tokenizer, ignoring
    ``tokenizer_class``, and that silently drops "\\n" from this vocabulary.
    """
    tokenizer.save_pretrained(path)
    cfg_path = os.path.join(path, "tokenizer_config.json")
    with open(cfg_path) as f:
        cfg = json.load(f)
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    with open(cfg_path, "w") as f:
        json.dump(cfg, f, indent=2)


def tiny_backbone(
    path: str,
    arch: str = "qwen2",
    hidden_size: int = 32,
    num_layers: int = 4,
    seed: int = 0,
    max_positions: int = 512,
    config: PreTrainedConfig | None = None,
) -> str:
    """Write a tiny randomly initialised HF model + BPE tokenizer to ``path`` and return ``path``.

    ``arch`` is "qwen2", "llama" (causal, no LM head saved) or "bert" (encoder). ``config`` overrides
    the built config (e.g. ``qwen_shaped_config()``); its vocabulary must cover the tokenizer's.
    """
    tokenizer = tiny_tokenizer()
    if config is None:
        config = _config(arch, len(tokenizer), hidden_size, num_layers, max_positions)
    if config.vocab_size < len(tokenizer):
        raise ValueError(f"config.vocab_size {config.vocab_size} < tokenizer size {len(tokenizer)}")
    torch.manual_seed(seed)
    model = AutoModel.from_config(config)
    model.save_pretrained(path)
    save_tokenizer(tokenizer, os.path.join(path, TOKENIZER_FOLDER))
    return path


def qwen_shaped_config(size: str = "0.5b") -> Qwen2Config:
    """Qwen2.5-{0.5B,1.5B}'s real shape (for GPU memory/throughput runs with random weights)."""
    shapes = {
        "0.5b": dict(
            hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2, intermediate_size=4864
        ),
        "1.5b": dict(
            hidden_size=1536,
            num_hidden_layers=28,
            num_attention_heads=12,
            num_key_value_heads=2,
            intermediate_size=8960,
        ),
    }
    if size not in shapes:
        raise ValueError(f"unknown Qwen2.5 size {size!r}; choose one of {sorted(shapes)}")
    return Qwen2Config(
        **shapes[size],
        vocab_size=151936,
        max_position_embeddings=32768,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        bos_token_id=151643,
        eos_token_id=151645,
        max_window_layers=21 if size == "0.5b" else 28,
    )


def tiny_chat_lm(path: str, embedding_scale: float = 1.0) -> str:
    """A tiny random Qwen2 causal LM saved at ``path`` whose tokenizer carries ``CHAT_TEMPLATE``.
    ``embedding_scale`` multiplies its (tied) embeddings: at the usual init (std 0.02) a 32-wide
    model's logits stay near 0 whatever adapters learn, so fine-tuning tests scale them up."""
    path = tiny_backbone(path, hidden_size=32, num_layers=2, max_positions=1024)
    if embedding_scale != 1.0:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(path)
        model.get_input_embeddings().weight.data *= embedding_scale
        model.save_pretrained(path)
    tokenizer = tiny_tokenizer()
    tokenizer.chat_template = CHAT_TEMPLATE
    save_tokenizer(tokenizer, os.path.join(path, TOKENIZER_FOLDER))
    return path
