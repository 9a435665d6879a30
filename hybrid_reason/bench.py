"""Benchmarks: `hybrid-reason bench core` (one deep-supervision training step) and
`hybrid-reason bench backbone` (slot-feature encoding throughput, truncated vs full stack).

Speed is measured here, never asserted in tests. Variants run side by side in one process, so a
noisy shared machine affects them alike.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from functools import partial

import torch
from torch import nn

from .model.core import CoreConfig, RecursiveCore, swiglu_width
from .model.losses import deep_supervision_loss


def time_calls(fn: Callable[[], object], steps: int, warmup: int) -> list[float]:
    """Wall-clock seconds of ``steps`` calls of ``fn`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def step_flops(args: argparse.Namespace) -> int:
    """Matmul FLOPs of one training step (a multiply-add counts 2; norms, activations, the loss and the
    optimizer are left out). With S = prefix + seq slots, batch B, width d and SwiGLU width w(d):

        one block call:  channel SwiGLU 6·B·S·d·w(d)
                         + attention 8·B·S·d² (qkv, out) + 4·B·S²·d (scores, values)
                           or mlp mixer 6·B·d·S·w(S)
        heads:           2·B·seq·d·V (answer) + 2·B·d (halt)
        one step:        (T + 2)·(n + 1)·L block calls + 3 heads: T(n+1)L forward calls, and the
                         (n+1)L calls under grad again backward at 2x their forward cost.
    """
    S, B, d = args.prefix + args.seq, args.batch, args.d
    block = 6 * B * S * d * swiglu_width(d, CoreConfig.expansion)
    if args.mixer == "attention":
        block += 8 * B * S * d * d + 4 * B * S * S * d
    else:
        block += 6 * B * d * S * swiglu_width(S, CoreConfig.expansion)
    heads = 2 * B * args.seq * d * args.vocab + 2 * B * d
    return (args.T + 2) * (args.n + 1) * args.layers * block + 3 * heads


def matmul_gflops(size: int = 2048, steps: int = 5) -> float:
    """This machine's fp32 matmul rate at size x size, in GFLOP/s (median of ``steps``)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    times = time_calls(lambda: a @ b, steps, warmup=2)
    return 2 * size**3 / statistics.median(times) / 1e9


def core_train_step(args: argparse.Namespace, compile_blocks: bool) -> Callable[[], float]:
    """Build a core + heads + AdamW at the given sizes; return a closure doing one training step.

    With ``--prefix K`` the core runs K + seq slots (the ARC recipe's 16 context or ID slots); as in the
    model, the answer head reads the last seq slots and the halt head slot 0.
    """
    torch.manual_seed(0)
    cfg = CoreConfig(d_model=args.d, num_heads=args.heads, num_layers=args.layers, mixer=args.mixer, n=args.n, T=args.T)
    S = args.prefix + args.seq
    core = RecursiveCore(cfg, S)
    heads = nn.ModuleDict({"answer": nn.Linear(args.d, args.vocab, bias=False), "halt": nn.Linear(args.d, 1)})
    if compile_blocks:
        for i, block in enumerate(core.blocks):
            core.blocks[i] = torch.compile(block, dynamic=False)
    params = list(core.parameters()) + list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
    x = torch.randn(args.batch, S, args.d)
    labels = torch.randint(0, args.vocab, (args.batch, args.seq))
    carry = core.initial_carry(args.batch)

    def step() -> float:
        nonlocal carry
        carry, y = core.deep_recursion(x, carry)
        total, _ = deep_supervision_loss(
            heads["answer"](y[:, args.prefix :]), heads["halt"](y[:, 0]).squeeze(-1), labels
        )
        (total / args.batch).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return total.item()

    return step


def bench_core(args: argparse.Namespace) -> None:
    """Time one full deep-supervision training step (forward, loss, backward, AdamW step); print its
    GFLOP/s (``step_flops``) beside this machine's 2048x2048 fp32 matmul rate, measured in the same run."""
    torch.set_num_threads(args.threads or torch.get_num_threads())
    calls = args.T * (args.n + 1) * args.layers
    flops = step_flops(args)
    print(
        f"core: d={args.d} layers={args.layers} heads={args.heads} mixer={args.mixer} n={args.n} T={args.T} "
        f"prefix={args.prefix} seq={args.seq} batch={args.batch} fp32, {torch.get_num_threads()} threads; "
        f"{calls} block calls per step, {(args.n + 1) * args.layers} with grad; {flops / 1e9:.3g} GFLOP per step"
    )
    peak = matmul_gflops()
    print(f"  2048x2048 fp32 matmul: {peak:7.1f} GFLOP/s")
    variants = ["eager"] + (["compiled"] if args.compile else [])
    for variant in variants:
        step = core_train_step(args, compile_blocks=variant == "compiled")
        times = time_calls(step, args.steps, args.warmup)
        med = statistics.median(times)
        rate = flops / med / 1e9
        print(
            f"  {variant:9s} {med * 1e3:9.1f} ms/step (median of {args.steps}, min {min(times) * 1e3:.1f})"
            f"  {args.batch / med:8.2f} examples/s  {rate:7.1f} GFLOP/s ({rate / peak:.2f} x matmul)"
        )


def bench_backbone(args: argparse.Namespace) -> None:
    """Tokens/s of slot-feature encoding at one layer (truncated stack) against all layers."""
    from .backbone import Backbone, BackboneSpec

    torch.set_num_threads(args.threads or torch.get_num_threads())
    rows = ["".join(str((r * 7 + c * 3) % 10) for c in range(args.width)) for r in range(args.rows + args.batch)]
    texts = ["\n".join(rows[b : b + args.rows]) for b in range(args.batch)]  # distinct prompts
    spans = [
        (r * (args.width + 1) + c, r * (args.width + 1) + c + 1) for r in range(args.rows) for c in range(args.width)
    ]
    slot_spans = [spans] * args.batch
    for layer in (args.layer, -1):
        backbone = Backbone.load(BackboneSpec(name=args.backbone, hidden_layer=layer), cache=False)
        tokens = sum(len(ids) for ids in backbone.tokenizer(texts)["input_ids"])
        times = time_calls(partial(backbone.encode, texts, slot_spans), args.steps, args.warmup)
        med = statistics.median(times)
        print(
            f"  {args.backbone} hidden_layer={layer:>3} ({backbone.num_layers_run} layers run): "
            f"{med * 1e3:8.1f} ms/batch  {tokens / med:9.0f} tokens/s  (batch {args.batch} x {tokens // args.batch} tokens)"
        )


def parser() -> argparse.ArgumentParser:
    """Command-line flags of `hybrid-reason bench`."""
    p = argparse.ArgumentParser(prog="hybrid-reason bench", description=__doc__)
    sub = p.add_subparsers(dest="what", required=True)
    core = sub.add_parser("core", help="one deep-supervision training step of the recursive core")
    core.add_argument("--d", type=int, default=512)
    core.add_argument("--heads", type=int, default=8)
    core.add_argument("--layers", type=int, default=2)
    core.add_argument("--mixer", choices=["attention", "mlp"], default="attention")
    core.add_argument("--n", type=int, default=6)
    core.add_argument("--T", type=int, default=3)
    core.add_argument("--seq", type=int, default=81)
    core.add_argument("--prefix", type=int, default=0, help="prefix slots before the answer slots (ARC recipe: 16)")
    core.add_argument("--batch", type=int, default=16)
    core.add_argument("--vocab", type=int, default=11)
    core.add_argument("--compile", action="store_true", help="also time torch.compile'd blocks, side by side")
    bb = sub.add_parser("backbone", help="slot-feature encoding: chosen layer vs all layers")
    bb.add_argument("--backbone", default="smollm2-135m")
    bb.add_argument("--layer", type=int, default=8)
    bb.add_argument("--rows", type=int, default=30, help="rows of the digit grid in the prompt")
    bb.add_argument("--width", type=int, default=30, help="digits per row (one slot each)")
    bb.add_argument("--batch", type=int, default=4)
    for s in (core, bb):
        s.add_argument("--steps", type=int, default=3)
        s.add_argument("--warmup", type=int, default=1)
        s.add_argument("--threads", type=int, default=0)
    return p


def main(argv: list[str] | None = None) -> None:
    """Entry point of `hybrid-reason bench core|backbone`."""
    args = parser().parse_args(argv)
    {"core": bench_core, "backbone": bench_backbone}[args.what](args)


if __name__ == "__main__":
    main()
