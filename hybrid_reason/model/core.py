"""The recursive core: a Tiny Recursive Model (TRM, arXiv 2510.04871) over answer slots.

One small network ``f`` (L post-norm blocks) is applied over and over:

    latent_recursion:  z <- f(z + y + x)  n times, then  y <- f(y + z)
    deep_recursion:    T latent recursions; the first T-1 under torch.no_grad(), the last with grad

``y`` is the answer state (TRM's z_H) and ``z`` the latent (TRM's z_L). The carry (y, z) returned
by ``deep_recursion`` is detached, so every supervision step backpropagates through one latent
recursion only: (n + 1) * L block calls with grad out of T * (n + 1) * L.

``unrolled=True`` is the non-recursive control (the ``deep`` baseline of the evaluation suites): the
same T * (n + 1) calls, each with its own L blocks (T * (n + 1) * L distinct blocks), all under grad.
It has the recursion's depth per supervision step without its weight sharing or truncated backprop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import HybridReasonError

# std of a unit normal truncated to [-2, 2]; dividing by it makes the truncated draw have the asked std.
_TRUNC_STD = 0.87962566103423978


@dataclass
class CoreConfig:
    """Sizes and recursion depths of the recursive core (TRM's defaults)."""

    d_model: int = 512
    num_heads: int = 8
    num_layers: int = 2
    expansion: float = 4.0
    mixer: Literal["attention", "mlp"] = "attention"
    n: int = 6  # latent updates per cycle (TRM's L_cycles)
    T: int = 3  # cycles per supervision step (TRM's H_cycles)
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    unrolled: bool = False  # distinct blocks for every call of f, full backprop (the `deep` baseline)

    def __post_init__(self) -> None:
        if self.mixer not in ("attention", "mlp"):
            raise HybridReasonError(f"core.mixer must be 'attention' or 'mlp', got {self.mixer!r}")
        for key in ("d_model", "num_heads", "num_layers", "n", "T"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise HybridReasonError(f"core.{key} must be an integer >= 1, got {value!r}")
        if self.d_model % self.num_heads:
            raise HybridReasonError(f"core.d_model {self.d_model} is not divisible by core.num_heads {self.num_heads}")
        if self.mixer == "attention" and (self.d_model // self.num_heads) % 2:
            raise HybridReasonError(
                f"core.d_model / core.num_heads = {self.d_model // self.num_heads} must be even "
                "(RoPE rotates pairs of channels)"
            )


class Carry(NamedTuple):
    """The recursion state kept between supervision steps: answer state y and latent z, [B, S, d]."""

    y: Tensor
    z: Tensor


def trunc_normal_(tensor: Tensor, std: float) -> Tensor:
    """Fill ``tensor`` from a normal truncated at 2 std, rescaled so its std really is ``std``."""
    if getattr(tensor, "_is_hf_initialized", False):  # already loaded by from_pretrained
        return tensor
    s = std / _TRUNC_STD
    return nn.init.trunc_normal_(tensor, std=s, a=-2 * s, b=2 * s)


def lecun_init_(linear: nn.Linear) -> None:
    """Truncated LeCun-normal weight (std 1/sqrt(fan_in)) and zero bias, as TRM initialises."""
    trunc_normal_(linear.weight, 1.0 / math.sqrt(linear.in_features))
    if linear.bias is not None and not getattr(linear.bias, "_is_hf_initialized", False):
        nn.init.zeros_(linear.bias)


def rms_norm(x: Tensor, eps: float) -> Tensor:
    """RMSNorm without a learnable scale, computed in float32."""
    dtype = x.dtype
    x = x.float()
    return (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)).to(dtype)


def swiglu_width(d: int, expansion: float) -> int:
    """TRM's SwiGLU inner width: expansion * d * 2/3 rounded to an integer (Python's round), then up to
    a multiple of 256 (TRM's ``_find_multiple(round(expansion * hidden_size * 2 / 3), 256)``)."""
    return 256 * -(round(expansion * d * 2 / 3) // -256)


def rope_cos_sin(seq_len: int, head_dim: int, theta: float, device) -> tuple[Tensor, Tensor]:
    """Rotary tables [S, head_dim] for positions 0..seq_len-1 (half-split layout), always float32."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(seq_len, device=device, dtype=torch.float32), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate query/key heads [B, H, S, hd] by the position tables, in the tables' dtype (float32), then
    cast back to x's dtype, as TRM does: a bf16 rotation would lose about one ulp per block call."""
    dtype = x.dtype
    x = x.to(cos.dtype)
    x1, x2 = x.chunk(2, dim=-1)
    return (x * cos + torch.cat([-x2, x1], dim=-1) * sin).to(dtype)


class SwiGLU(nn.Module):
    """SwiGLU feed-forward without biases: down(silu(gate(x)) * up(x))."""

    def __init__(self, d: int, expansion: float):
        super().__init__()
        inner = swiglu_width(d, expansion)
        self.gate_up = nn.Linear(d, 2 * inner, bias=False)
        self.down = nn.Linear(inner, d, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


class Attention(nn.Module):
    """Non-causal multi-head self-attention over slots, with RoPE, through SDPA."""

    def __init__(self, d: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.out = nn.Linear(d, d, bias=False)

    def forward(self, h: Tensor, rope: tuple[Tensor, Tensor]) -> Tensor:
        B, S, d = h.shape
        q, k, v = self.qkv(h).view(B, S, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        o = F.scaled_dot_product_attention(q, k, v, is_causal=False)
        return self.out(o.transpose(1, 2).reshape(B, S, d))


class SlotMLP(nn.Module):
    """TRM's ``mlp_t`` mixer: a SwiGLU along the slot axis (fixed sequence length, no positions).

    It works on the transposed state [B, d, S]; :class:`Block` takes its post-norm while still
    transposed, so over the slot axis, as TRM's reference does.
    """

    def __init__(self, seq_len: int, expansion: float):
        super().__init__()
        self.seq_len = seq_len
        self.mlp = SwiGLU(seq_len, expansion)

    def forward(self, t: Tensor) -> Tensor:
        """SwiGLU over the last (slot) axis of the transposed state t [B, d, S]."""
        if t.shape[-1] != self.seq_len:
            raise ValueError(f"the mlp mixer was built for {self.seq_len} slots, got {t.shape[-1]}")
        return self.mlp(t)


class Block(nn.Module):
    """Post-norm block: h = norm(h + mix(h)); h = norm(h + swiglu(h)).

    With the attention mixer both norms run over d. With the mlp mixer (TRM's ``mlp_t``) the state is
    transposed to [B, d, S], t = norm(t + mlp_t(t)) is taken over the slot axis, and only then is it
    transposed back; the channel SwiGLU and its norm over d follow.
    """

    def __init__(self, cfg: CoreConfig, seq_len: int):
        super().__init__()
        self.eps = cfg.norm_eps
        if cfg.mixer == "attention":
            self.mix = Attention(cfg.d_model, cfg.num_heads)
        else:
            self.mix = SlotMLP(seq_len, cfg.expansion)
        self.mlp = SwiGLU(cfg.d_model, cfg.expansion)

    def forward(self, h: Tensor, rope) -> Tensor:
        if isinstance(self.mix, SlotMLP):
            t = h.transpose(1, 2)
            h = rms_norm(t + self.mix(t), self.eps).transpose(1, 2)
        else:
            h = rms_norm(h + self.mix(h, rope), self.eps)
        return rms_norm(h + self.mlp(h), self.eps)


class RecursiveCore(nn.Module):
    """TRM's recursion with one shared network ``f`` for both the latent and the answer update (or, with
    ``cfg.unrolled``, a distinct network for every call)."""

    def __init__(self, cfg: CoreConfig, seq_len: int):
        super().__init__()
        self.cfg = cfg
        self.seq_len = seq_len
        networks = cfg.T * (cfg.n + 1) if cfg.unrolled else 1
        self.blocks = nn.ModuleList(Block(cfg, seq_len) for _ in range(networks * cfg.num_layers))
        # The initial carry: fixed random vectors (truncated normal, std 1), saved with the model.
        self.register_buffer("y_init", trunc_normal_(torch.empty(cfg.d_model), 1.0))
        self.register_buffer("z_init", trunc_normal_(torch.empty(cfg.d_model), 1.0))
        self.apply(init_module_)

    def initial_carry(self, batch_size: int, seq_len: int | None = None) -> Carry:
        """The carry every example starts from, broadcast to [B, S, d]."""
        shape = (batch_size, seq_len or self.seq_len, self.cfg.d_model)
        return Carry(self.y_init.expand(shape).clone(), self.z_init.expand(shape).clone())

    def rope(self, h: Tensor) -> tuple[Tensor, Tensor] | None:
        """Rotary tables for the attention mixer (None for the mlp mixer, which has no positions)."""
        if self.cfg.mixer != "attention":
            return None
        head_dim = self.cfg.d_model // self.cfg.num_heads
        return rope_cos_sin(h.shape[1], head_dim, self.cfg.rope_theta, h.device)

    def f(self, h: Tensor, injection: Tensor, rope, call: int = 0) -> Tensor:
        """The network: L blocks over (h + injection), input injection is additive. ``call`` numbers the
        calls of one supervision step; it picks the blocks only when the core is unrolled."""
        L = self.cfg.num_layers
        blocks = self.blocks[call * L : (call + 1) * L] if self.cfg.unrolled else self.blocks
        h = h + injection
        for block in blocks:
            h = block(h, rope)
        return h

    def latent_recursion(self, x: Tensor, y: Tensor, z: Tensor, rope, cycle: int = 0) -> tuple[Tensor, Tensor]:
        """n latent updates z <- f(z + y + x), then one answer update y <- f(y + z)."""
        first = cycle * (self.cfg.n + 1)
        for i in range(self.cfg.n):
            z = self.f(z, y + x, rope, first + i)
        y = self.f(y, z, rope, first + self.cfg.n)
        return y, z

    def deep_recursion(self, x: Tensor, carry: Carry) -> tuple[Carry, Tensor]:
        """One supervision step: T cycles, only the last under grad (all of them when unrolled).
        Returns (detached carry, y)."""
        y, z = carry
        rope = self.rope(x)
        with torch.set_grad_enabled(self.cfg.unrolled and torch.is_grad_enabled()):
            for cycle in range(self.cfg.T - 1):
                y, z = self.latent_recursion(x, y, z, rope, cycle)
        y, z = self.latent_recursion(x, y, z, rope, self.cfg.T - 1)
        return Carry(y.detach(), z.detach()), y

    def forward(self, x: Tensor, carry: Carry) -> tuple[Carry, Tensor]:
        """Alias of :meth:`deep_recursion`."""
        return self.deep_recursion(x, carry)


def init_module_(module: nn.Module) -> None:
    """TRM's initialisation for one module: truncated LeCun-normal Linear weights, zero biases."""
    if isinstance(module, nn.Linear):
        lecun_init_(module)
