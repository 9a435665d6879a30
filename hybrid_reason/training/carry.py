"""The persistent carry of TRM's deep supervision: what each training batch slot keeps between steps,
and its compact, exact checkpoint form.

A checkpoint must give back every bit of the carry (a resumed run is bit-identical to an unbroken
one), but most of the carry's floats are zeros or already low-precision values: the features of empty
slots, the padding of the prompt-token states, the rows of halted slots (refilled before they are read
again), and, with a bfloat16 backbone, hidden states that are bfloat16 values held in float32.
``pack`` stores only the vectors with a non-zero bit, as the smallest float type that holds them
exactly, and ``unpack`` rebuilds the tensor bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from ..backbone.encoded import Encoded

_SAME_SIZE_INT = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
_NARROWER = {
    torch.float64: (torch.float32, torch.bfloat16, torch.float16),
    torch.float32: (torch.bfloat16, torch.float16),
}


def exact_narrowest(values: Tensor) -> Tensor:
    """``values`` in the narrowest float type that holds every one of them exactly (itself if none does)."""
    for dtype in _NARROWER.get(values.dtype, ()):
        narrow = values.to(dtype)
        if torch.equal(
            narrow.to(values.dtype).view(_SAME_SIZE_INT[values.element_size()]),
            values.view(_SAME_SIZE_INT[values.element_size()]),
        ):
            return exact_narrowest(narrow)
    return values


def pack(t: Tensor, rows: Tensor) -> dict[str, Any]:
    """The exact compact form of a float tensor [B, N, d]: the vectors ``t[b, n]`` of the rows ``rows``
    ([B] bool) that have a non-zero bit, in the narrowest exact float type; everything else is zero
    when unpacked (the rows not kept, and vectors that are all +0.0 bits)."""
    t = t.detach().cpu()
    bits = t.view(_SAME_SIZE_INT[t.element_size()])
    keep = rows.cpu()[:, None] & (bits != 0).any(-1)
    return {
        "values": exact_narrowest(t[keep]),
        "keep": keep,
        "dtype": str(t.dtype).removeprefix("torch."),
        "dim": t.shape[-1],
    }


def unpack(packed: dict[str, Any], device: torch.device | str = "cpu") -> Tensor:
    """The tensor ``pack`` stored (every bit of the kept vectors, zeros elsewhere), on ``device``."""
    keep = packed["keep"]
    out = torch.zeros(*keep.shape, packed["dim"], dtype=getattr(torch, packed["dtype"]))
    out[keep] = packed["values"].to(out.dtype)
    return out.to(device)


@dataclass
class SlotCarry:
    """What each of the B slots keeps between training steps."""

    encoded: Encoded  # backbone features of the slot's example
    labels: Tensor  # [B, S]
    ids: list[str]  # readable example ids
    index: Tensor  # [B] stream index of the example
    puzzle_ids: Tensor  # [B]
    y: Tensor  # [B, prefix + S, d] answer state
    z: Tensor  # [B, prefix + S, d] latent
    steps: Tensor  # [B] supervision steps run so far
    min_steps: Tensor  # [B] exploration: may not halt before this many steps
    halted: Tensor  # [B] bool: refill before the next step

    def state(self) -> dict[str, Any]:
        """The checkpoint form: plain CPU tensors, strings, lists and None. Features, prompt-token states,
        y and z are packed (see ``pack``); halted slots keep only their ids and counters, since the next
        step refills them before anything reads their features or recursion state."""
        live = ~self.halted.cpu()
        enc = self.encoded
        out: dict[str, Any] = {
            "features": pack(enc.features, live),
            "empty": enc.empty.cpu().clone(),
            "tokens": None if enc.tokens is None else pack(enc.tokens, live),
            "token_mask": None if enc.token_mask is None else enc.token_mask.cpu().clone(),
            "y": pack(self.y, live),
            "z": pack(self.z, live),
            "ids": list(self.ids),
        }
        for f in fields(self):
            if f.name not in out and f.name != "encoded":
                out[f.name] = getattr(self, f.name).detach().cpu().clone()  # a copy, even on CPU
        return out

    @classmethod
    def from_state(cls, state: dict[str, Any], device: torch.device) -> SlotCarry:
        """Rebuild a carry from ``state()`` on ``device`` (or from the dense form of earlier versions)."""
        state = {k.removeprefix("encoded."): v for k, v in state.items()}
        move = lambda v: unpack(v, device) if isinstance(v, dict) else v.to(device) if isinstance(v, Tensor) else v  # noqa: E731
        enc = Encoded(*(move(state[k]) for k in ("features", "empty", "tokens", "token_mask")))
        rest = {f.name: move(state[f.name]) for f in fields(cls) if f.name != "encoded"}
        return cls(encoded=enc, **rest)


def state_bytes(state: Any) -> int:
    """Bytes of the tensors in a (nested) checkpoint value: what the carry adds to a checkpoint."""
    if isinstance(state, Tensor):
        return state.numel() * state.element_size()
    if isinstance(state, dict):
        return sum(state_bytes(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return sum(state_bytes(v) for v in state)
    return 0


def gather_to_rank_zero(obj: Any) -> list[Any]:
    """Every rank's ``obj`` on rank 0 (other ranks get an empty list); ``[obj]`` without DDP."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [obj]
    rank, world = dist.get_rank(), dist.get_world_size()
    out = [None] * world if rank == 0 else None
    dist.gather_object(obj, out, dst=0)
    return out or []
