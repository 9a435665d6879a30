"""`hybrid-reason plan --config RECIPE`: what a training recipe will cost on a GPU, before any run.

Nothing trains and no weight loads. The backbone is its config only: from the local HF cache, from
``--backbone-config`` (a folder, a config.json, or ``qwen2.5-0.5b`` / ``qwen2.5-1.5b``: Qwen2.5's real
shape written in code), or, for a Qwen2.5 hub id that is not cached, that shape. The prompts are the
recipe's task rendered (un-augmented) and tokenized; the arithmetic is ``hybrid_reason.model.flops``.
Every figure printed is an estimate. ``--validate`` checks the FLOP model against torch's
FlopCounterMode on CPU, on a random backbone of the recipe's shape and a real core step.
"""

from __future__ import annotations

import argparse
import dataclasses
import warnings
from dataclasses import dataclass, field

import numpy as np

from .errors import HybridReasonError
from .model.core import CoreConfig
from .model.flops import ACCELERATORS, Accelerator, BackboneShape, CoreShape, TrainingRun
from .plan_inputs import STATS, Lengths, backbone_config, plan_tokenizer, prompt_lengths, stand_in


# ------------------------------------------------------------------------------ the plan
@dataclass
class Plan:
    """What the command prints: the run's shape, the prompt lengths, and what they came from."""

    recipe: str
    run: TrainingRun
    lengths: list[Lengths]  # train, then the validation split
    spec: dict  # the recipe's model.backbone
    accelerator: Accelerator
    mfu: float
    about: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------ output
def si(x: float, unit: str = "FLOP") -> str:
    """``x`` with an SI prefix: 1.23 TFLOP."""
    for scale, prefix in ((1e18, "E"), (1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.3g} {prefix}{unit}"
    return f"{x:.3g} {unit}"


def duration(seconds: float) -> str:
    """Seconds as minutes, hours or days."""
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h" if seconds < 3 * 86400 else f"{seconds / 86400:.1f} days"


def table(head: list[str], rows: list[list]) -> list[str]:
    """A Markdown table (first column left-aligned, the others right-aligned)."""
    lines = ["| " + " | ".join(head) + " |", "|---" + "|---:" * (len(head) - 1) + "|"]
    return lines + ["| " + " | ".join(str(x) for x in row) + " |" for row in rows]


def render(plan: Plan) -> str:
    """The plan as Markdown."""
    run, acc, dtype = plan.run, plan.accelerator, plan.spec["dtype"]
    bb, core, train = run.backbone, run.core, plan.lengths[0]
    out = [f"## Plan for {plan.recipe} (estimates, never measured on a GPU)", ""]
    out += [f"- {key}: {value}" for key, value in plan.about.items()] + ["", "### Prompt lengths (tokens)", ""]
    out += table(
        ["split", "rows", "measured", "mean", "median", "p90", "max", "over budget (dropped demos / unfit)"],
        [
            [x.split, x.rows, len(x.tokens), *(x.stat(k) for k in STATS), f"{x.over_budget} / {x.unfit}"]
            for x in plan.lengths
        ],
    )
    out += ["", f"### One training example (backbone layers 1-{bb.layers_run} of {bb.num_layers}, {dtype}, alone)", ""]
    out += table(
        ["prompt", "tokens", "backbone FLOPs", "backbone peak activations"],
        [
            [k, train.stat(k), si(bb.flops(train.stat(k))), si(bb.peak_activation_bytes(train.stat(k), 1, dtype), "B")]
            for k in STATS
        ],
    )
    part, L = core.step_flops(run.carry_tokens), run.carry_tokens
    out += ["", f"### Core: one supervision step of one example (sequence {core.seq_len}, d {core.core.d_model})", ""]
    out += table(["part", "FLOPs"], [
        [f"forward: T·(n+1)·L = {core.calls} block calls", si(part["blocks"])],
        [f"forward: adapter / resampler ({L} carry tokens) / heads", " / ".join(si(part[k]) for k in ("adapter", "resampler", "heads"))],
        [f"backward: the last (n+1)·L = {core.grad_calls} block calls, adapter, resampler, heads", si(part["backward"])],
        ["total", si(sum(part.values()))]])  # fmt: skip
    flops = run.flops()
    secs, total = run.seconds(flops, acc, plan.mfu), sum(flops.values())
    out += [
        "",
        f"### Whole run on {run.gpus} x {acc.name} at MFU {plan.mfu:g} (dense peak {acc.tflops_16:g} TFLOP/s "
        f"bf16, {acc.tflops_32:g} fp32)",
        "",
    ]
    out += table(
        ["part", "FLOPs", "share", "time"],
        [[k, si(v), f"{100 * v / total:.1f}%", duration(secs[k])] for k, v in flops.items()]
        + [["total", si(total), "100%", duration(sum(secs.values()))]],
    )
    useful, padded = run.backbone_per_example(run.train, run.refill_batch)
    share = (flops["training: backbone"] + flops["validation: backbone"]) / total
    out += [
        "",
        f"Backbone {100 * share:.1f}% / core {100 * (1 - share):.1f}% of the FLOPs. A training example costs "
        f"{si(useful)} in the backbone alone, {si(padded)} in a refill of {run.refill_batch} prompts padded to the "
        f"longest ({padded / useful:.2f}x).",
        "",
        f"### Memory per GPU ({run.batch} carry slots, {run.precision})",
        "",
    ]
    mem = run.memory()
    out += table(
        ["item", "GB"],
        [
            [k if k != "peak" else "**peak** (the first three + the largest transient)", f"{v / 1e9:.2f}"]
            for k, v in mem.items()
        ],
    )
    fits = "fits" if mem["peak"] <= acc.memory_gb * 1e9 else "does NOT fit"
    out += [
        "",
        f"The peak {fits} in the {acc.memory_gb:g} GB of a {acc.name}. Not included: the CUDA context, "
        "cuBLAS/SDPA workspaces and allocator fragmentation (typically 1-3 GB).",
        "",
        "### Assumptions",
        "",
    ]
    return "\n".join(out + [f"- {note}" for note in plan.notes])


# ------------------------------------------------------------------------------ from a recipe
def _plain(value) -> dict:
    """A jsonargparse Namespace (or dict) as a plain dict."""
    return value.as_dict() if hasattr(value, "as_dict") else dict(value)


def _gpus(trainer, given: int | None) -> int:
    """GPUs of the run: --gpus, else trainer.devices (when a count or a list) x trainer.num_nodes."""
    if given:
        return given
    devices = trainer.devices
    count = len(devices) if isinstance(devices, (list, tuple)) else int(devices) if str(devices).isdigit() else 1
    return max(1, count) * int(trainer.num_nodes or 1)


def _val_examples(trainer, data, rows: int | None) -> int:
    """Examples of one validation run: limit_val_batches (batches or a fraction) of the split."""
    limit, batch = trainer.limit_val_batches, data.eval_batch_size or data.batch_size
    rows = min(rows or 10**12, data.val_limit or 10**12)
    if limit is None:
        return rows
    return min(int(limit) * batch, rows) if isinstance(limit, int) else int(np.ceil(float(limit) * rows))


def build_plan(args: argparse.Namespace) -> tuple[Plan, object, object, object]:
    """(Plan, task, backbone config, tokenizer) for the recipe and flags in ``args``."""
    from .training.data import task_from_spec
    from .training.recipe_cli import parse_recipe

    with warnings.catch_warnings():  # LightningCLI warns that `hybrid-reason plan`'s own argv is not its args
        warnings.filterwarnings("ignore", message=".*args parameter is intended to run from within Python")
        cfg = parse_recipe(args.config, *args.overrides)
    model, data, trainer, spec = cfg.model, cfg.data, cfg.trainer, _plain(cfg.model.backbone)
    if spec["dtype"] == "auto":  # what Backbone.load picks on a CUDA device
        spec["dtype"] = "bfloat16"
    try:
        task = task_from_spec(_plain(data.task))
    except ValueError as err:
        raise HybridReasonError(str(err)) from None
    config, config_source = backbone_config(spec["name"], spec["revision"], args.backbone_config)
    shape = BackboneShape.from_config(config, spec["hidden_layer"])
    tokenizer, tok_name, own = plan_tokenizer(spec["name"], spec["revision"], args.tokenizer)
    limits = [shape.max_positions, spec["max_length"], tokenizer.model_max_length if own else None]
    budget = min((int(x) for x in limits if isinstance(x, int) and 0 < x < 10**9), default=None)
    task, stand_note = stand_in(task, args.hub_data)
    lengths = [
        prompt_lengths(task, s, tokenizer, budget, args.max_prompts, args.seed)
        for s in dict.fromkeys(["train", data.val_split])
    ]
    lengths += lengths[:1] * (2 - len(lengths))  # validating on the training split
    steps, n_sup = trainer.max_steps, model.halt_max_steps
    if not steps or steps < 0:
        raise HybridReasonError(f"trainer.max_steps is {steps}: a plan needs a finite number of steps")
    mean_steps = args.mean_steps or n_sup
    if not 1 <= mean_steps <= n_sup:
        raise HybridReasonError(f"--mean-steps {mean_steps} must be in 1..{n_sup} (model.halt_max_steps)")
    interval = trainer.val_check_interval
    optimizer = model.optimizer  # a class_path section, or the default: the adamw function
    optimizer = (
        _plain(optimizer).get("class_path", "?")
        if hasattr(optimizer, "keys")
        else getattr(optimizer, "__name__", "AdamW")
    )
    run = TrainingRun(
        backbone=shape, train=lengths[0].tokens, evaluation=lengths[1].tokens, steps=steps, batch=data.batch_size,
        core=CoreShape(CoreConfig(**_plain(model.core)), task.num_slots, task.vocab_size, shape.hidden_size,
                       model.num_context_slots, model.num_puzzle_ids, model.puzzle_prefix_len),
        n_sup=n_sup, mean_steps=mean_steps, gpus=_gpus(trainer, args.gpus), backbone_dtype=spec["dtype"],
        quantization=spec["quantization"], precision=str(trainer.precision),
        optimizer_states=2 if "adam" in str(optimizer).lower() else 1, eval_steps=model.eval_steps or n_sup,
        eval_batch=data.eval_batch_size or data.batch_size, seed=args.seed,
        val_runs=steps // interval if isinstance(interval, int) and interval > 0 else 0,
        val_examples=_val_examples(trainer, data, None if stand_note else lengths[1].rows),
    )  # fmt: skip
    acc = ACCELERATORS[args.accelerator]
    if args.peak_tflops:
        acc = dataclasses.replace(
            acc,
            name=f"{acc.name} (peak set to {args.peak_tflops:g})",
            tflops_16=args.peak_tflops,
            tflops_32=args.peak_tflops,
        )
    plan = Plan(args.config, run, lengths, spec, acc, args.mfu)
    plan.about = _about(run, spec, config_source, tok_name, task, budget, str(optimizer))
    plan.notes = _assumptions(run, stand_note, args)
    return plan, task, config, tokenizer


def _about(
    run: TrainingRun, spec: dict, config_source: str, tok_name: str, task, budget, optimizer: str
) -> dict[str, str]:
    """The header lines: what the plan is about."""
    bb, core, c = run.backbone, run.core, run.core.core
    quant = f", {spec['quantization']}" if spec["quantization"] else ""
    return {
        "backbone": f"{spec['name']} ({bb.model_type}; config: {config_source}): {bb.num_layers} layers, hidden "
                    f"{bb.hidden_size}, read at layer {bb.layers_run}, so layers {bb.layers_run + 1}-{bb.num_layers} never "
                    f"run; {spec['dtype']}{quant}; prompt budget {budget} tokens",
        "tokenizer": tok_name,
        "task": f"{task.name}: {core.num_slots} answer slots, {core.answer_vocab} symbols",
        "core": f"d {c.d_model}, {c.num_heads} heads, {c.num_layers} layers, {c.mixer} mixer, n {c.n}, T {c.T}: "
                f"{core.calls} block calls per supervision step, {core.grad_calls} with grad; sequence {core.seq_len} "
                f"({core.seq_len - core.num_slots} prefix + {core.num_slots}); {core.trainable_params() / 1e6:.2f}M "
                "trainable parameters",
        "run": f"{run.steps:,} steps x {run.batch} carry slots x {run.gpus} GPU(s) (global batch {run.batch * run.gpus}); "
               f"N_sup {run.n_sup}; {run.precision}; {optimizer.split('.')[-1]}",
    }  # fmt: skip


def _assumptions(run: TrainingRun, stand_note: str, args) -> list[str]:
    """What the figures assume."""
    notes = [f"Prompts rendered without augmentation; at most {args.max_prompts} per split (a seeded sample)."]
    notes += [stand_note + "."] if stand_note else []
    if run.lockstep:
        notes.append(
            f"Mean halting step {run.mean_steps:g} = N_sup (the halt head starts at bias -5; --mean-steps sets "
            "another): all slots halt together and refill in one step every N_sup steps, in one batch "
            "padded to its longest prompt."
        )
    else:
        notes.append(
            f"Mean halting step {run.mean_steps:g} (--mean-steps): about {run.refill_batch} refills per step, "
            "in one batch padded to its longest prompt. Backbone FLOPs scale as 1 / mean halting step."
        )
    if run.core.num_context_slots:
        notes.append(
            f"The carry's token states are padded to the longest prompt it has held ({run.carry_tokens} "
            "tokens, the longest measured): Encoded.replace never trims them and the resampler reads all "
            "of them at every step."
        )
    return notes + [
        f"Validation: {run.val_runs} runs (max_steps / val_check_interval) of {run.val_examples} examples, "
        f"{run.eval_steps} supervision steps each, in batches of {run.eval_batch}.",
        "FLOPs: matmuls only (2 per multiply-add), attention scores over the full square, backward = 2 x forward "
        "(1 x for matmuls whose input is frozen). Time = FLOPs / (GPUs x dense peak x MFU), the backbone at its "
        "dtype's peak, the core at the trainer precision's. Memory: SDPA attention (no score matrix); under mixed "
        "precision float32 weights, grads, optimizer states and EMA, plus bf16 autocast copies of the weights.",
    ]


# ------------------------------------------------------------------------------ --validate
def count_flops(fn) -> int:
    """FLOPs torch's FlopCounterMode counts in ``fn()``, with SDPA on its math kernel (CPU's fused
    kernel is invisible to the counter; the math one runs plain matmuls)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def validate(plan: Plan, task, config, tokenizer, layers: int) -> list[tuple[str, int, int]]:
    """(what, model FLOPs, counted FLOPs) on CPU: a random backbone of the recipe's shape cut at
    ``layers`` blocks on the training prompts nearest the median and p90 lengths, and one forward +
    backward supervision step of the recipe's core (the resampler reading at most 2,048 tokens)."""
    import copy

    import torch
    from transformers import AutoModel

    from .backbone.backbone import Backbone
    from .backbone.encoded import Encoded
    from .backbone.loading import BackboneSpec
    from .model.configuration import HybridReasonerConfig
    from .model.modeling import HybridReasoner

    run = plan.run
    keep = max(1, min(layers, run.backbone.layers_run))
    cut = copy.deepcopy(config.get_text_config() if hasattr(config, "get_text_config") else config)
    cut.num_hidden_layers = keep
    if isinstance(getattr(cut, "layer_types", None), list):
        cut.layer_types = cut.layer_types[:keep]
    torch.manual_seed(run.seed)
    backbone = Backbone(
        AutoModel.from_config(cut, attn_implementation="sdpa"),
        tokenizer,
        BackboneSpec(name="random", hidden_layer=keep),
        keep,
        keep,
        cache=None,
    )
    shape, rows, train = dataclasses.replace(run.backbone, layers_run=keep, num_layers=keep), [], plan.lengths[0]
    for q in (50, 90):
        j = int(np.argmin(np.abs(train.tokens - np.percentile(train.tokens, q))))
        ex = task.render(task.load("train")[int(train.index[j])])
        n = len(tokenizer(ex.text)["input_ids"])
        with torch.no_grad():
            counted = count_flops(lambda ex=ex: backbone.encode([ex.text], [ex.slot_spans]))
        rows.append((f"backbone, {keep} layers, a p{q} training prompt ({n} tokens)", shape.flops(n), counted))
    c = run.core
    model = HybridReasoner(HybridReasonerConfig(
        core=dataclasses.asdict(c.core), answer_vocab_size=c.answer_vocab, num_slots=c.num_slots,
        num_context_slots=c.num_context_slots, num_puzzle_ids=c.num_puzzle_ids, puzzle_prefix_len=c.puzzle_prefix_len,
        backbone_hidden_size=c.d_llm)).train()  # fmt: skip
    L = min(run.carry_tokens, 2048)
    tokens = (torch.randn(1, L, c.d_llm), torch.ones(1, L, dtype=torch.bool)) if c.num_context_slots else (None, None)
    encoded = Encoded(torch.randn(1, c.num_slots, c.d_llm), torch.zeros(1, c.num_slots, dtype=torch.bool), *tokens)
    labels = torch.randint(0, c.answer_vocab, (1, c.num_slots))
    ids = torch.ones(1, dtype=torch.long) if c.num_puzzle_ids else None
    counted = count_flops(lambda: model(encoded=encoded, labels=labels, puzzle_ids=ids).loss.backward())
    rows.append((f"core, one supervision step, forward + backward ({L} resampler tokens)", c.step_total(L), counted))
    return rows


# ------------------------------------------------------------------------------ command
def parser() -> argparse.ArgumentParser:
    """Flags of `hybrid-reason plan`; other `--key value` pairs override the recipe (as for fit)."""
    p = argparse.ArgumentParser(
        prog="hybrid-reason plan",
        description=__doc__,
        allow_abbrev=False,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", required=True, help="the training recipe (YAML)")
    p.add_argument("--backbone-config", help="a model folder, a config.json, or qwen2.5-0.5b / qwen2.5-1.5b")
    p.add_argument("--tokenizer", help="count prompt tokens with this tokenizer (hub id in the cache, folder, alias)")
    p.add_argument("--accelerator", choices=sorted(ACCELERATORS), default="h100")
    p.add_argument("--peak-tflops", type=float, help="override the accelerator's dense peak (TFLOP/s)")
    p.add_argument("--mfu", type=float, default=0.35, help="model FLOPs utilisation assumed (default 0.35)")
    p.add_argument("--gpus", type=int, help="GPUs of the run (default: trainer.devices when a number, else 1)")
    p.add_argument("--mean-steps", type=float, help="mean halting step of a training example (default N_sup)")
    p.add_argument("--max-prompts", type=int, default=4000, help="prompts measured per split (a seeded sample)")
    p.add_argument("--hub-data", action="store_true", help="read hub datasets (may download) instead of stand-ins")
    p.add_argument("--validate", action="store_true", help="check the FLOP model with FlopCounterMode on CPU")
    p.add_argument("--validate-layers", type=int, default=4, help="backbone blocks built for --validate")
    p.add_argument("--seed", type=int, default=0)
    return p


def main(argv: list[str] | None = None) -> None:
    """Entry point of `hybrid-reason plan --config RECIPE [flags] [--recipe.key value ...]`."""
    args, args.overrides = parser().parse_known_args(argv)
    plan, task, config, tokenizer = build_plan(args)
    print(render(plan))
    if args.validate:
        rows = validate(plan, task, config, tokenizer, args.validate_layers)
        print("\n### FLOP model against torch's FlopCounterMode (CPU, random weights)\n")
        print(
            "\n".join(
                table(
                    ["what", "model", "FlopCounterMode", "error"],
                    [[w, f"{m:,}", f"{c:,}", f"{100 * (m - c) / c:+.3f}%"] for w, m, c in rows],
                )
            )
        )
