"""Benchmarks: `hybrid-reason bench core` (one deep-supervision training step), `hybrid-reason bench
backbone` (slot-feature encoding throughput, truncated vs full stack) and `hybrid-reason bench ttt`
(test-time training's seconds per task, tasks adapted one at a time against several at once).

Speed is measured here, never asserted in tests. Variants run side by side in one process, so a
noisy shared machine affects them alike.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from typing import Literal

import torch
from jsonargparse import auto_cli
from jsonargparse.typing import NonNegativeInt, PositiveInt
from torch import nn

from .model.core import CoreConfig, RecursiveCore
from .model.flops import CoreShape
from .model.losses import deep_supervision_loss

PAPER_CORE = CoreConfig()  # TRM's paper size: d 512, 8 heads, 2 layers, n 6, T 3


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


def step_flops(core: CoreConfig, seq: int, prefix: int, batch: int, vocab: int) -> int:
    """Matmul FLOPs of one training step of ``batch`` examples, from the project's FLOP model
    (``model/flops.py``; a multiply-add counts 2; norms, activations, the loss and the optimizer are left
    out): T(n+1)L block calls forward, the (n+1)L calls under grad again backward at twice their forward
    cost (all of them when the core is unrolled), and the heads forward and backward."""
    shape = CoreShape(core, num_slots=seq, answer_vocab=vocab, num_context_slots=prefix)
    heads = 2 * seq * core.d_model * vocab + 2 * core.d_model
    return batch * ((shape.calls + 2 * shape.grad_calls) * shape.block_flops() + 3 * heads)


def matmul_gflops(size: int = 2048, steps: int = 5, device: str = "cpu", dtype: torch.dtype = torch.float32) -> float:
    """This machine's matmul rate at size x size, in GFLOP/s (median of ``steps``)."""
    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else lambda: None
    times = time_calls(lambda: (a @ b, sync()), steps, warmup=2)
    return 2 * size**3 / statistics.median(times) / 1e9


def core_train_step(
    cfg: CoreConfig,
    seq: int,
    prefix: int,
    batch: int,
    vocab: int,
    compile_blocks: bool,
    device: str = "cpu",
    bf16: bool = False,
) -> Callable[[], float]:
    """Build a core + heads + AdamW at the given sizes on ``device``; return a closure doing one training
    step (under bfloat16 autocast with ``bf16``, as Lightning's bf16-mixed).

    With ``prefix`` K the core runs K + seq slots (the ARC recipe's 16 context or ID slots); as in the
    model, the answer head reads the last seq slots and the halt head slot 0.
    """
    torch.manual_seed(0)
    S, d = prefix + seq, cfg.d_model
    core = RecursiveCore(cfg, S).to(device)
    heads = nn.ModuleDict({"answer": nn.Linear(d, vocab, bias=False), "halt": nn.Linear(d, 1)}).to(device)
    if compile_blocks:
        for i, block in enumerate(core.blocks):
            core.blocks[i] = torch.compile(block, dynamic=False)
    params = list(core.parameters()) + list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
    x = torch.randn(batch, S, d, device=device)
    labels = torch.randint(0, vocab, (batch, seq), device=device)
    carry = core.initial_carry(batch)

    def step() -> float:
        nonlocal carry
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=bf16):
            carry, y = core.deep_recursion(x, carry)
            logits, halt = heads["answer"](y[:, prefix:]), heads["halt"](y[:, 0]).squeeze(-1)
        total, _ = deep_supervision_loss(logits, halt, labels)
        (total / batch).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return total.item()

    return step


def bench_core(
    core: CoreConfig = PAPER_CORE,
    seq: PositiveInt = 81,
    prefix: NonNegativeInt = 0,
    batch: PositiveInt = 16,
    vocab: PositiveInt = 11,
    compile: bool = False,
    steps: PositiveInt = 3,
    warmup: NonNegativeInt = 1,
    threads: NonNegativeInt = 0,
    device: str = "cpu",
    bf16: bool = False,
) -> None:
    """Time one full deep-supervision training step (forward, loss, backward, AdamW step) of the core
    (``--core.d_model``, ``--core.n``, ... as in recipes; default TRM's paper size) over ``seq`` answer
    slots after ``prefix`` prefix slots (the ARC recipe: 16); print its GFLOP/s beside this machine's
    matmul rate, measured in the same run (2048x2048 on a CPU, 8192x8192 on a GPU; bfloat16 with ``bf16``).
    ``compile`` also times torch.compile'd blocks. ``--device cuda --bf16 true`` measures a GPU as the
    recipes train on one (bf16-mixed)."""
    torch.set_num_threads(threads or torch.get_num_threads())
    flops = step_flops(core, seq, prefix, batch, vocab)
    shape = CoreShape(core, num_slots=seq, num_context_slots=prefix)
    print(
        f"core: d={core.d_model} layers={core.num_layers} heads={core.num_heads} mixer={core.mixer} n={core.n} "
        f"T={core.T} unrolled={core.unrolled} prefix={prefix} seq={seq} batch={batch} "
        f"{'bf16 autocast' if bf16 else 'fp32'} on {device}, "
        f"{torch.get_num_threads()} threads; {shape.calls} block calls per step, {shape.grad_calls} with grad; "
        f"{flops / 1e9:.3g} GFLOP per step"
    )
    size = 8192 if torch.device(device).type == "cuda" else 2048  # a GPU needs a large product to reach its peak
    peak = matmul_gflops(size, device=device, dtype=torch.bfloat16 if bf16 else torch.float32)
    print(f"  {size}x{size} {'bf16' if bf16 else 'fp32'} matmul: {peak:7.1f} GFLOP/s")
    for variant in ["eager"] + (["compiled"] if compile else []):
        step = core_train_step(core, seq, prefix, batch, vocab, variant == "compiled", device, bf16)
        times = time_calls(step, steps, warmup)
        med = statistics.median(times)
        rate = flops / med / 1e9
        print(
            f"  {variant:9s} {med * 1e3:9.1f} ms/step (median of {steps}, min {min(times) * 1e3:.1f})"
            f"  {batch / med:8.2f} examples/s  {rate:7.1f} GFLOP/s ({rate / peak:.2f} x matmul)"
        )


def bench_backbone(
    backbone: str = "smollm2-135m",
    layer: int = 8,
    rows: PositiveInt = 30,
    width: PositiveInt = 30,
    batch: PositiveInt = 4,
    steps: PositiveInt = 3,
    warmup: NonNegativeInt = 1,
    threads: NonNegativeInt = 0,
) -> None:
    """Tokens/s of slot-feature encoding of ``batch`` prompts of a ``rows`` x ``width`` digit grid (one
    slot per digit) at ``layer`` (the truncated stack) against all layers; the feature cache is off."""
    from .backbone import Backbone, BackboneSpec

    torch.set_num_threads(threads or torch.get_num_threads())
    grid = ["".join(str((r * 7 + c * 3) % 10) for c in range(width)) for r in range(rows + batch)]
    texts = ["\n".join(grid[b : b + rows]) for b in range(batch)]  # distinct prompts
    spans = [(r * (width + 1) + c, r * (width + 1) + c + 1) for r in range(rows) for c in range(width)]
    slot_spans = [spans] * batch
    for hidden_layer in (layer, -1):
        model = Backbone.load(BackboneSpec(name=backbone, hidden_layer=hidden_layer), cache=False)
        tokens = sum(len(ids) for ids in model.tokenizer(texts)["input_ids"])
        times = time_calls(partial(model.encode, texts, slot_spans), steps, warmup)
        med = statistics.median(times)
        print(
            f"  {backbone} hidden_layer={hidden_layer:>3} ({model.num_layers_run} layers run): "
            f"{med * 1e3:8.1f} ms/batch  {tokens / med:9.0f} tokens/s  (batch {batch} x {tokens // batch} tokens)"
        )


def bench_ttt(
    model: str,
    task_batch: list[PositiveInt] = [1, 4, 16],  # noqa: B006  (jsonargparse reads the default)
    limit: PositiveInt = 16,
    split: str = "test",
    steps: PositiveInt = 8,
    params: Literal["all", "adapter", "core-lora", "id"] = "all",
    learning_rate: float | None = None,
    batch_size: PositiveInt = 8,
    repeats: PositiveInt = 2,
    cache: bool = True,
    threads: NonNegativeInt = 0,
    device: str = "cpu",
) -> None:
    """Test-time training's seconds per task on the first ``limit`` tasks of ``split`` of a saved model's
    task, with ``task_batch`` tasks adapted at once, for each value of the list side by side: one untimed
    warm-up, then ``repeats`` rounds over the values in turn (median). Also prints how far each value's
    losses are from the first value's (the same tasks adapted, only grouped differently). With ``cache``
    the backbone's feature cache is warmed by the warm-up, so the core's adaptation is timed; without,
    every example is encoded by the backbone again."""
    from .evaluation.hybrid import evaluate_model
    from .evaluation.models import load_model, model_budget, model_config
    from .evaluation.puzzles import load_rows, task_spec
    from .evaluation.ttt import TTTSettings
    from .tasks import task_from_spec

    torch.set_num_threads(threads or torch.get_num_threads())
    task = task_from_spec(task_spec(model_config(model).task, None, None), "--task")
    net = load_model(model, device)
    if not cache:
        net.backbone.cache = None
    rows = load_rows(task, split, limit, model_budget(net))
    settings = TTTSettings(steps, params, learning_rate, batch_size, seed=0)
    run = lambda g: evaluate_model(net, task, rows, progress=False, ttt=replace(settings, task_batch=g)).ttt  # noqa: E731
    print(
        f"test-time training of {model} ({task.name} {split}, {len(rows)} rows): {steps} steps of {batch_size} "
        f"examples, params {params}, lr {settings.lr}; {torch.get_num_threads()} threads on {device}; "
        f"feature cache {'warm' if cache else 'off'}"
    )
    run(task_batch[0])
    seconds, losses = {g: [] for g in task_batch}, {}
    for _ in range(repeats):
        for g in task_batch:
            report = run(g)
            seconds[g].append(report.seconds_per_task())
            losses[g] = report.losses
    print(f"| task_batch | s per task (median) | min | speed against task_batch {task_batch[0]} | max loss gap |")
    print("|---:|---:|---:|---:|---:|")
    first = statistics.median(seconds[task_batch[0]])
    for g in task_batch:
        med = statistics.median(seconds[g])
        gap = max(abs(a - b) for t, ls in losses[g].items() for a, b in zip(ls, losses[task_batch[0]][t]))
        print(f"| {g} | {med:.3f} | {min(seconds[g]):.3f} | {first / med:.2f}x | {gap:.1e} |")


def main(argv: list[str] | None = None) -> None:
    """Entry point of `hybrid-reason bench core|backbone|ttt`: flags from the typed signatures above."""
    auto_cli({"core": bench_core, "backbone": bench_backbone, "ttt": bench_ttt}, args=argv)


if __name__ == "__main__":
    main()
