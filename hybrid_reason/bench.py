"""Benchmarks: `hybrid-reason bench core` (one deep-supervision training step) and
`hybrid-reason bench backbone` (slot-feature encoding throughput, truncated vs full stack).

Speed is measured here, never asserted in tests. Variants run side by side in one process, so a
noisy shared machine affects them alike.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch
from torch import nn

from .model.core import CoreConfig, RecursiveCore
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


def core_train_step(args: argparse.Namespace, compile_blocks: bool) -> Callable[[], float]:
    """Build a core + heads + AdamW at the given sizes; return a closure doing one training step."""
    torch.manual_seed(0)
    cfg = CoreConfig(d_model=args.d, num_heads=args.heads, num_layers=args.layers, mixer=args.mixer, n=args.n, T=args.T)
    core = RecursiveCore(cfg, args.seq)
    heads = nn.ModuleDict({"answer": nn.Linear(args.d, args.vocab, bias=False), "halt": nn.Linear(args.d, 1)})
    if compile_blocks:
        for i, block in enumerate(core.blocks):
            core.blocks[i] = torch.compile(block, dynamic=False)
    params = list(core.parameters()) + list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
    x = torch.randn(args.batch, args.seq, args.d)
    labels = torch.randint(0, args.vocab, (args.batch, args.seq))
    carry = core.initial_carry(args.batch)

    def step() -> float:
        nonlocal carry
        carry, y = core.deep_recursion(x, carry)
        total, _ = deep_supervision_loss(heads["answer"](y), heads["halt"](y[:, 0]).squeeze(-1), labels)
        (total / args.batch).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return total.item()

    return step


def bench_core(args: argparse.Namespace) -> None:
    """Time one full deep-supervision training step (forward, loss, backward, AdamW step)."""
    torch.set_num_threads(args.threads or torch.get_num_threads())
    calls = args.T * (args.n + 1) * args.layers
    print(
        f"core: d={args.d} layers={args.layers} heads={args.heads} mixer={args.mixer} n={args.n} T={args.T} "
        f"seq={args.seq} batch={args.batch} fp32, {torch.get_num_threads()} threads; "
        f"{calls} block calls per step, {(args.n + 1) * args.layers} with grad"
    )
    variants = ["eager"] + (["compiled"] if args.compile else [])
    for variant in variants:
        step = core_train_step(args, compile_blocks=variant == "compiled")
        times = time_calls(step, args.steps, args.warmup)
        med = statistics.median(times)
        print(
            f"  {variant:9s} {med * 1e3:9.1f} ms/step (median of {args.steps}, min {min(times) * 1e3:.1f})"
            f"  {args.batch / med:8.2f} examples/s"
        )


def bench_backbone(args: argparse.Namespace) -> None:
    """Tokens/s of slot-feature encoding at one layer (truncated stack) against all layers."""
    from .backbone import Backbone, BackboneSpec

    torch.set_num_threads(args.threads or torch.get_num_threads())
    rows = ["".join(str((r * 7 + c * 3) % 10) for c in range(args.width)) for r in range(args.rows + args.batch)]
    texts = ["\n".join(rows[b : b + args.rows]) for b in range(args.batch)]  # distinct prompts
    spans = [(r * (args.width + 1) + c, r * (args.width + 1) + c + 1) for r in range(args.rows) for c in range(args.width)]
    slot_spans = [spans] * args.batch
    for layer in (args.layer, -1):
        backbone = Backbone.load(BackboneSpec(name=args.backbone, hidden_layer=layer), cache=False)
        tokens = sum(len(ids) for ids in backbone.tokenizer(texts)["input_ids"])
        times = time_calls(lambda: backbone.encode(texts, slot_spans), args.steps, args.warmup)
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
