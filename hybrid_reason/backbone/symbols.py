"""The ``none`` backbone: no LLM, the puzzle's own symbols as features (TRM from scratch).

``Backbone.load(BackboneSpec(name="none"))`` returns a ``SymbolBackbone``. It has no weights, loads
nothing and is deterministic. A slot's feature is the position-wise one-hot of the characters of its
span: ``SYMBOL_POSITIONS`` (4) character positions x 128 ASCII codes = 512 features, so a slot over
"7" has a single 1 at feature ord("7") and one over "13" has ones at ord("1") and 128 + ord("3").
An empty slot (span None) is all zeros and flagged empty, as for an LLM backbone. A span longer than 4
characters, or a non-ASCII character under a span, is a ``HybridReasonError`` naming the example and
the slot.

**Why this is TRM's embedding.** The model's adapter RMS-normalises a feature and applies a
LeCun-initialised ``Linear(512, d)`` (weight W, element std 1/sqrt(512)). For a one-character slot
the one-hot e_c has RMS 1/sqrt(512), so the adapter computes sqrt(512) · W[:, c]: a learned table
E = sqrt(512) · Wᵀ looked up at the symbol, every element of unit scale. TRM initialises its token
embedding with std 1/sqrt(d) and multiplies it by sqrt(d): also a learned table of unit-scale
elements, trained through the same sqrt(size) factor. The two agree up to the RMSNorm's eps: the
factor (1 + 512 · eps)^-1/2 = 0.9974 at eps 1e-5 (tests/test_no_llm.py checks this numerically). A
span of L characters gets the sum of its L position-wise embeddings divided by sqrt(L), again of
unit scale. The adapter's learned slot-position embedding is added on top, as for any backbone.

``encode(..., with_tokens=True)`` (the resampler) gives one token per character of the text, its
state the one-hot of that character at position 0. The tokenizer is a real character-level
``PreTrainedTokenizerFast`` (one token per character, the 128 ASCII codes, ``<unk>`` for the rest),
so prompt budgets and token counts are counted in characters. ``context_length`` is None (no limit)
unless ``backbone.max_length`` sets one, in characters.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import torch
from torch import Tensor, nn

from ..errors import HybridReasonError
from .backbone import BackboneIdentity
from .encoded import Encoded, Span, check_batch, label_of
from .loading import BackboneSpec, tokenizer_fingerprint

NO_LLM = "none"  # the backbone name that means "no LLM"
SYMBOL_POSITIONS = 4  # characters a slot's span may hold
ASCII = 128  # codes per position
SYMBOL_FEATURES = SYMBOL_POSITIONS * ASCII


@lru_cache(maxsize=1)
def _tokenizer_json() -> str:
    """The character-level tokenizer as JSON (built once)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    vocab = {chr(i): i for i in range(ASCII)} | {"<unk>": ASCII, "<pad>": ASCII + 1}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")  # every character alone
    tok.decoder = decoders.Fuse()
    return tok.to_str()


def char_tokenizer():
    """A real fast tokenizer with one token per character (ids 0-127 = ASCII codes, 128 = ``<unk>``,
    129 = ``<pad>``), no special tokens added: token counts are character counts."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_tokenizer_json()), unk_token="<unk>", pad_token="<pad>"
    )


class SymbolBackbone(nn.Module):
    """The ``none`` backbone (see the module docstring): same interface as ``Backbone``, no weights."""

    has_lora = False
    cache = None  # nothing to cache: a feature costs less than a cache lookup
    layer = num_layers = num_layers_run = 0

    def __init__(self, spec: BackboneSpec | None = None):
        super().__init__()
        self.spec = spec or BackboneSpec(name=NO_LLM)
        if self.spec.name != NO_LLM:
            raise HybridReasonError(f"SymbolBackbone is the {NO_LLM!r} backbone, got backbone.name {self.spec.name!r}")
        for key, bad in (("lora_rank", self.spec.lora_rank > 0), ("quantization", self.spec.quantization is not None)):
            if bad:
                raise HybridReasonError(f"backbone.{key}: the {NO_LLM!r} backbone has no weights to adapt or quantize")
        self.tokenizer = char_tokenizer()
        self.tokenizer_fingerprint = tokenizer_fingerprint(self.tokenizer)
        self.context_length = self.spec.max_length  # in characters; None: no limit
        self.register_buffer("_anchor", torch.zeros(0), persistent=False)  # follows .to(device)
        self.real_tokens = self.padded_tokens = 0  # no forward pass ever runs

    @classmethod
    def load(
        cls,
        spec: BackboneSpec | None = None,
        cache=None,
        lora_path: str | None = None,
        device: str | torch.device | None = None,
    ) -> SymbolBackbone:
        """``Backbone.load``'s signature: ``cache`` is ignored (nothing to cache); a LoRA path is refused."""
        if lora_path is not None:
            raise HybridReasonError(f"the {NO_LLM!r} backbone has no weights: cannot load the LoRA adapter {lora_path}")
        backbone = cls(spec)
        return backbone.to(device) if device is not None else backbone

    # ------------------------------------------------------------------ what callers read
    @property
    def identity(self) -> BackboneIdentity:
        """("none", None, 0)."""
        return BackboneIdentity(NO_LLM, None, 0)

    @property
    def hidden_size(self) -> int:
        """Width of the features: 4 positions x 128 codes."""
        return SYMBOL_FEATURES

    @property
    def device(self) -> torch.device:
        """Where features are built."""
        return self._anchor.device

    @property
    def dtype(self) -> torch.dtype:
        """Features are float32."""
        return torch.float32

    @property
    def cache_identity(self) -> str:
        """What determines the features besides text and spans: the encoding itself."""
        return f"{NO_LLM}|onehot{SYMBOL_POSITIONS}x{ASCII}"

    def keep_features_in(self, directory: str) -> None:
        """Nothing: one-hot features cost less than reading them back."""

    def lora_parameters(self) -> list[nn.Parameter]:
        """None: there are no weights."""
        return []

    def save_lora(self, path: str) -> None:
        """Refused: there is no adapter."""
        raise HybridReasonError(f"the {NO_LLM!r} backbone has no LoRA adapter to save to {path}")

    # ------------------------------------------------------------------ encode
    def encode(
        self,
        texts: list[str],
        slot_spans: list[list[Span]],
        with_tokens: bool = False,
        names: list[str] | None = None,
        max_batch_tokens: int | None = None,
    ) -> Encoded:
        """Slot features [B, S, 512]: the position-wise one-hot of each span's characters (zeros and
        empty for a None span). with_tokens: also every character's one-hot [B, L, 512] with its mask.
        names: per-example names used in errors. max_batch_tokens: accepted and unused."""
        names = list(names) if names is not None else None
        check_batch(texts, slot_spans, names)
        rows = [_slot_onehot(text, spans, label_of(names, i)) for i, (text, spans) in enumerate(zip(texts, slot_spans))]
        features = torch.stack([r[0] for r in rows]).to(self.device)
        empty = torch.stack([r[1] for r in rows]).to(self.device)
        if not with_tokens:
            return Encoded(features, empty)
        tokens, mask = _char_tokens(texts, names)
        return Encoded(features, empty, tokens.to(self.device), mask.to(self.device))

    def extra_repr(self) -> str:
        return f"name={NO_LLM!r}, features={SYMBOL_POSITIONS}x{ASCII} one-hot"


def _codes(piece: str, label: str, where: str) -> list[int]:
    """ASCII codes of ``piece``; a non-ASCII character is a one-line error naming ``where``."""
    codes = [ord(ch) for ch in piece]
    bad = next((i for i, c in enumerate(codes) if c >= ASCII), None)
    if bad is not None:
        raise HybridReasonError(
            f"example {label} {where}: character {bad} ({piece[bad]!r}) is not ASCII; the "
            f"{NO_LLM!r} backbone reads ASCII symbols only"
        )
    return codes


def _slot_onehot(text: str, spans: Sequence[Span], label: str) -> tuple[Tensor, Tensor]:
    """(features [S, 512], empty [S]) of one example."""
    features = torch.zeros(len(spans), SYMBOL_FEATURES)
    empty = torch.tensor([s is None for s in spans], dtype=torch.bool)
    rows: list[int] = []
    cols: list[int] = []
    for j, span in enumerate(spans):
        if span is None:
            continue
        piece = text[span[0] : span[1]]
        if len(piece) > SYMBOL_POSITIONS:
            raise HybridReasonError(
                f"example {label} slot {j}: span {tuple(span)} ({piece!r}) has {len(piece)} "
                f"characters; the {NO_LLM!r} backbone reads at most {SYMBOL_POSITIONS}"
            )
        codes = _codes(piece, label, f"slot {j} (span {tuple(span)})")
        rows += [j] * len(codes)
        cols += [p * ASCII + c for p, c in enumerate(codes)]
    features[rows, cols] = 1.0
    return features, empty


def _char_tokens(texts: list[str], names: list[str] | None) -> tuple[Tensor, Tensor]:
    """(tokens [B, L, 512], mask [B, L]): one token per character, right-padded with zeros."""
    length = max(len(t) for t in texts)
    tokens = torch.zeros(len(texts), length, SYMBOL_FEATURES)
    mask = torch.zeros(len(texts), length, dtype=torch.bool)
    for b, text in enumerate(texts):
        codes = torch.tensor(_codes(text, label_of(names, b), "text"), dtype=torch.long)
        tokens[b, torch.arange(len(text)), codes] = 1.0
        mask[b, : len(text)] = True
    return tokens, mask
