"""Pure tensor code of the backbone's output: ``Encoded`` rows and span pooling.

A slot's feature is the mean of the hidden states of the tokens whose character range [ts, te)
overlaps its span [s, e): ts < e and te > s and te > ts (special tokens, (0, 0), never match).
Merged tokens are shared: if "12" is one token, slots over "1" and over "2" both get its state.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

Span = tuple[int, int] | None


@dataclass
class Encoded:
    """Backbone output for a batch.

    features [B, S, d] float32 (zeros on empty slots), empty [B, S] bool, and, when asked for,
    tokens [B, L, d] float32 (every prompt token's state, zeros on padding) with token_mask [B, L].
    """

    features: Tensor
    empty: Tensor
    tokens: Tensor | None = None
    token_mask: Tensor | None = None

    def __len__(self) -> int:
        return self.features.shape[0]

    def to(self, device: torch.device | str) -> Encoded:
        """The same rows on ``device``."""
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return Encoded(move(self.features), move(self.empty), move(self.tokens), move(self.token_mask))

    def select(self, index: Sequence[int] | Tensor) -> Encoded:
        """Rows ``index`` (a list or tensor of row numbers, or a bool mask)."""
        index = torch.as_tensor(index, device=self.features.device)
        pick = lambda t: None if t is None else t[index.to(t.device)]  # noqa: E731
        return Encoded(pick(self.features), pick(self.empty), pick(self.tokens), pick(self.token_mask))

    @staticmethod
    def cat(parts: Sequence[Encoded]) -> Encoded:
        """Concatenate rows; token states are right-padded to the longest. All parts must agree on
        whether they carry tokens."""
        if not parts:
            raise ValueError("Encoded.cat needs at least one part")
        has_tokens = {p.tokens is not None for p in parts}
        if len(has_tokens) > 1:
            raise ValueError("Encoded.cat: some parts carry token states and some do not")
        features = torch.cat([p.features for p in parts])
        empty = torch.cat([p.empty for p in parts])
        if not has_tokens.pop():
            return Encoded(features, empty)
        length = max(p.tokens.shape[1] for p in parts)
        tokens = torch.cat([F.pad(p.tokens, (0, 0, 0, length - p.tokens.shape[1])) for p in parts])
        mask = torch.cat([F.pad(p.token_mask, (0, length - p.token_mask.shape[1])) for p in parts])
        return Encoded(features, empty, tokens, mask)

    def replace(self, index: Sequence[int] | Tensor, other: Encoded) -> Encoded:
        """A copy with rows ``index`` replaced by ``other``'s rows, in order (refilling carry slots)."""
        index = torch.as_tensor(index, dtype=torch.long).reshape(-1)
        if len(index) != len(other):
            raise ValueError(f"Encoded.replace: {len(index)} rows to replace but {len(other)} given")
        order = torch.arange(len(self))
        order[index] = len(self) + torch.arange(len(other))
        return Encoded.cat([self, other.to(self.features.device)]).select(order)

    def trimmed(self) -> Encoded:
        """Token states cut to the longest real prompt of the batch (drops all-padding columns)."""
        if self.tokens is None:
            return self
        length = int(self.token_mask.sum(1).max()) if len(self) else 0
        return Encoded(self.features, self.empty, self.tokens[:, :length], self.token_mask[:, :length])


def label_of(names: list[str] | None, i: int) -> str:
    """How errors name example ``i``: its name quoted, or its index."""
    return repr(names[i]) if names is not None else str(i)


def check_batch(texts: list[str], slot_spans: list[list[Span]], names: list[str] | None) -> None:
    """Reject ragged or mismatched batches and malformed spans, naming the example and slot."""
    if not texts:
        raise ValueError("encode needs at least one text")
    if len(slot_spans) != len(texts) or (names is not None and len(names) != len(texts)):
        raise ValueError(
            f"encode: {len(texts)} texts but {len(slot_spans)} slot span lists"
            + ("" if names is None else f" and {len(names)} names")
        )
    if len({len(s) for s in slot_spans}) > 1:
        raise ValueError(f"encode: examples have different slot counts {sorted({len(s) for s in slot_spans})}")
    for i, (text, spans) in enumerate(zip(texts, slot_spans)):
        for j, span in enumerate(spans):
            if span is not None and not (len(span) == 2 and 0 <= span[0] < span[1] <= len(text)):
                raise ValueError(
                    f"example {label_of(names, i)} slot {j}: span {tuple(span)} is not a non-empty "
                    f"range inside the text of {len(text)} characters"
                )


def slot_token_ranges(offsets: np.ndarray, spans: list[Span], label: str, text: str):
    """Per slot, the first and last token overlapping its span (a contiguous run), and empty flags.

    Valid tokens (te > ts) have non-decreasing offsets, so the tokens with te > s form a suffix and
    those with ts < e a prefix: their intersection is found with two binary searches.
    """
    S = len(spans)
    empty = np.array([s is None for s in spans], dtype=bool)
    first = np.zeros(S, dtype=np.int64)
    last = np.zeros(S, dtype=np.int64)
    if empty.all():
        return first, last, empty
    vidx = np.nonzero(offsets[:, 1] > offsets[:, 0])[0]
    ts, te = offsets[vidx, 0], offsets[vidx, 1]
    if (np.diff(ts) < 0).any() or (np.diff(te) < 0).any():
        raise ValueError(f"example {label}: the tokenizer's character offsets are not monotonic")
    starts = np.array([0 if s is None else s[0] for s in spans])
    ends = np.array([0 if s is None else s[1] for s in spans])
    lo = np.searchsorted(te, starts, side="right")  # first token ending after s
    hi = np.searchsorted(ts, ends, side="left") - 1  # last token starting before e
    bad = np.nonzero(~empty & (lo > hi))[0]
    if len(bad):
        j = int(bad[0])
        raise ValueError(
            f"example {label} slot {j}: span {spans[j]} ({text[spans[j][0] : spans[j][1]]!r}) overlaps no token"
        )
    first[~empty] = vidx[lo[~empty]]
    last[~empty] = vidx[hi[~empty]]
    return first, last, empty


def pool_spans(states: Tensor, valid: Tensor, first: Tensor, last: Tensor, empty: Tensor) -> Tensor:
    """Mean of ``states`` [B, L, d] over valid tokens first..last (inclusive) per slot -> [B, S, d] float32.

    Prefix sums over the tokens that slots cover (for ARC, the test grid at the end of a 10k-token
    prompt) make it linear in tokens whatever the span lengths. They run in float64, one example at
    a time, so differences of large sums stay exact. Empty slots get zeros.
    """
    out = states.new_zeros(first.shape + states.shape[-1:], dtype=torch.float32)
    for b in range(states.shape[0]):
        used = ~empty[b]
        if not used.any():
            continue
        a, z = int(first[b][used].min()), int(last[b][used].max()) + 1
        ok = valid[b, a:z]
        sums = F.pad(torch.where(ok[:, None], states[b, a:z], 0).double().cumsum(0), (0, 0, 1, 0))
        counts = F.pad(ok.long().cumsum(0), (1, 0))  # sums[i], counts[i]: over tokens a .. a+i-1
        lo, hi = (first[b][used] - a), (last[b][used] + 1 - a)
        mean = (sums[hi] - sums[lo]) / (counts[hi] - counts[lo]).clamp(min=1)[:, None]
        out[b, used] = mean.float()
    return out
