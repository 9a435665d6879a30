"""The persistent carry of TRM's deep supervision: what each training batch slot keeps between steps."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from ..backbone.encoded import Encoded


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
        """Plain CPU tensors, strings and None (what a checkpoint stores)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "encoded":
                out |= {f"encoded.{k}": None if v is None else v.detach().cpu() for k, v in vars(value).items()}
            elif isinstance(value, Tensor):
                out[f.name] = value.detach().cpu()
            else:
                out[f.name] = list(value)
        return out

    @classmethod
    def from_state(cls, state: dict[str, Any], device: torch.device) -> "SlotCarry":
        """Rebuild a carry from ``state()`` on ``device``."""
        move = lambda v: v.to(device) if isinstance(v, Tensor) else v  # noqa: E731
        enc = Encoded(**{k[len("encoded.") :]: move(v) for k, v in state.items() if k.startswith("encoded.")})
        rest = {f.name: move(state[f.name]) for f in fields(cls) if f.name != "encoded"}
        return cls(encoded=enc, **rest)


def gather_to_rank_zero(obj: Any) -> list[Any]:
    """Every rank's ``obj`` on rank 0 (other ranks get an empty list); ``[obj]`` without DDP."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [obj]
    rank, world = dist.get_rank(), dist.get_world_size()
    out = [None] * world if rank == 0 else None
    dist.gather_object(obj, out, dst=0)
    return out or []
