"""`hybrid-reason plan`: its FLOP and memory model held to torch's own counters (FlopCounterMode, the
tensors autograd saves, the profiler's memory timeline) on tiny models built in code, and the
command run on recipes."""

from __future__ import annotations

import contextlib
import dataclasses
import sys

import numpy as np
import pytest
import torch
from transformers import AutoConfig, AutoModel

from hybrid_reason.backbone import Backbone, BackboneSpec, Encoded
from hybrid_reason.errors import HybridReasonError
from hybrid_reason.model.configuration import HybridReasonerConfig
from hybrid_reason.model.core import CoreConfig
from hybrid_reason.model.flops import BackboneShape, CoreShape, TrainingRun
from hybrid_reason.model.modeling import HybridReasoner
from hybrid_reason.plan import backbone_config, build_plan, count_flops, main, parser, stand_in
from hybrid_reason.tasks import build_task
from hybrid_reason.utils.testing import qwen_shaped_config, tiny_backbone

pytestmark = pytest.mark.usefixtures("one_thread")
ARCHS = ("qwen2", "llama", "bert")


@pytest.fixture(scope="module")
def backbones(tmp_path_factory):
    """Tiny random backbones of each architecture, 4 layers, 2,048 positions."""
    root = tmp_path_factory.mktemp("plan_backbones")
    return {
        arch: tiny_backbone(str(root / arch), arch=arch, hidden_size=32, num_layers=4, max_positions=2048)
        for arch in ARCHS
    }


@pytest.fixture(scope="module")
def arc_prompts():
    """Three real ARC-AGI-1 prompts (the shortest evaluation queries) with their slot spans."""
    task = build_task("arc1")
    rows = task.load("test")
    examples = sorted((task.render(rows[i]) for i in range(40)), key=lambda ex: len(ex.text))[:3]
    return [ex.text for ex in examples], [ex.slot_spans for ex in examples]


def relative_error(model: float, counted: float) -> float:
    return abs(model - counted) / counted


# ---------------------------------------------------------------------------------- FLOPs
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("layer", [2, -1])
def test_backbone_flops_match_flop_counter_on_real_prompts(backbones, arc_prompts, arch, layer):
    backbone = Backbone.load(BackboneSpec(name=backbones[arch], hidden_layer=layer), cache=False)
    texts, spans = arc_prompts
    lengths = [len(ids) for ids in backbone.tokenizer(texts)["input_ids"]]
    assert len(set(lengths)) == 3  # a right-padded batch: every row costs the longest
    with torch.no_grad():
        counted = count_flops(lambda: backbone.encode(texts, spans))
    shape = BackboneShape.from_config(AutoConfig.from_pretrained(backbones[arch]), layer)
    assert shape.layers_run == (2 if layer == 2 else 4)
    assert relative_error(shape.flops(max(lengths), batch=3), counted) < 0.05


@pytest.mark.parametrize(
    "mixer, context, ids, unrolled",
    [
        ("attention", 0, 0, False),
        ("mlp", 0, 0, False),
        ("attention", 3, 0, False),
        ("mlp", 3, 0, False),
        ("attention", 0, 7, False),
        ("attention", 0, 0, True),
    ],
)
def test_core_step_flops_match_flop_counter(mixer, context, ids, unrolled):
    core = {"d_model": 32, "num_heads": 4, "num_layers": 2, "n": 2, "T": 3, "mixer": mixer, "unrolled": unrolled}
    cfg = HybridReasonerConfig(
        core=core,
        answer_vocab_size=5,
        num_slots=10,
        num_context_slots=context,
        num_puzzle_ids=ids,
        backbone_hidden_size=24,
    )
    model = HybridReasoner(cfg).train()
    B, L = 2, 13
    tokens = (torch.randn(B, L, 24), torch.ones(B, L, dtype=torch.bool)) if context else (None, None)
    encoded = Encoded(torch.randn(B, 10, 24), torch.zeros(B, 10, dtype=torch.bool), *tokens)
    labels, puzzle_ids = torch.randint(0, 5, (B, 10)), torch.ones(B, dtype=torch.long) if ids else None
    forward = count_flops(lambda: model(encoded=encoded, labels=labels, puzzle_ids=puzzle_ids))
    step = count_flops(lambda: model(encoded=encoded, labels=labels, puzzle_ids=puzzle_ids).loss.backward())
    shape = CoreShape.from_config(cfg)
    assert relative_error(B * shape.step_total(L, train=False), forward) < 0.05
    assert relative_error(B * shape.step_total(L, train=True), step) < 0.05
    assert shape.trainable_params() == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("arch", ARCHS)
def test_loaded_parameters_match_the_truncated_model(backbones, arch):
    for layer in (0, 2, -1):
        backbone = Backbone.load(BackboneSpec(name=backbones[arch], hidden_layer=layer), cache=False)
        shape = BackboneShape.from_config(AutoConfig.from_pretrained(backbones[arch]), layer)
        assert sum(shape.loaded_params()) == sum(p.numel() for p in backbone.model.parameters())


def test_qwen_shape_flops_match_flop_counter_on_a_truncated_stack():
    config = qwen_shaped_config("0.5b")
    config.num_hidden_layers, config.vocab_size = 1, 1000  # one real-width block keeps it fast
    torch.manual_seed(0)
    model = AutoModel.from_config(config, attn_implementation="sdpa").eval()
    with torch.no_grad():
        counted = count_flops(lambda: model(input_ids=torch.randint(0, 1000, (1, 300)), use_cache=False))
    shape = BackboneShape.from_config(config, -1)
    assert (shape.hidden_size, shape.num_heads, shape.num_kv_heads, shape.intermediate_size) == (896, 14, 2, 4864)
    assert relative_error(shape.flops(300), counted) < 0.05


# ---------------------------------------------------------------------------------- memory
def saved_bytes(fn) -> int:
    """Bytes of the distinct storages autograd saves for backward while running ``fn``."""
    storages: dict[int, int] = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(storages.values())


@pytest.mark.parametrize("mixer, context", [("attention", 0), ("mlp", 0), ("attention", 4)])
@pytest.mark.parametrize("autocast", [False, True])
def test_core_activation_bytes_match_what_autograd_saves(mixer, context, autocast):
    S, d_llm, L, V = 30, 48, 50, 7
    cfg = HybridReasonerConfig(
        core={"d_model": 64, "num_heads": 4, "num_layers": 2, "n": 2, "T": 2, "mixer": mixer},
        answer_vocab_size=V,
        num_slots=S,
        num_context_slots=context,
        backbone_hidden_size=d_llm,
    )
    model = HybridReasoner(cfg).train()

    def step(B):
        tokens = (torch.randn(B, L, d_llm), torch.ones(B, L, dtype=torch.bool)) if context else (None, None)
        encoded = Encoded(torch.randn(B, S, d_llm), torch.zeros(B, S, dtype=torch.bool), *tokens)
        amp = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
        with amp:
            return saved_bytes(lambda: model(encoded=encoded, labels=torch.randint(0, V, (B, S))))

    per_example = (step(5) - step(3)) / 2  # the weights (and their autocast copies) cancel out
    model_bytes = CoreShape.from_config(cfg).activation_bytes(L, 2 if autocast else 4, autocast)
    assert relative_error(model_bytes, per_example) < 0.10


@pytest.mark.parametrize("lengths", [[384], [384, 200]])
def test_backbone_peak_activations_match_the_profiler(lengths):
    from torch.profiler import ProfilerActivity, profile
    from torch.profiler._memory_profiler import _CATEGORY_TO_INDEX, Category, MemoryProfileTimeline

    config = qwen_shaped_config("0.5b")
    config.num_hidden_layers, config.vocab_size = 2, 1000
    torch.manual_seed(0)
    model = AutoModel.from_config(config, attn_implementation="sdpa").eval()
    B, L = len(lengths), max(lengths)
    mask = torch.tensor([[1] * n + [0] * (L - n) for n in lengths])
    with (
        torch.no_grad(),
        profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof,
    ):
        model(input_ids=torch.randint(0, 1000, (B, L)), attention_mask=mask, use_cache=False)
    _, sizes = MemoryProfileTimeline(prof._memory_profile())._coalesce_timeline("cpu")
    sizes = np.asarray(sizes)
    live = sizes.sum(1) - sizes[:, _CATEGORY_TO_INDEX[Category.PARAMETER] + 1]  # column 0: uncategorised
    shape = BackboneShape.from_config(config, -1)
    assert relative_error(shape.peak_activation_bytes(L, B, "float32", padded=B > 1), live.max()) < 0.10


# ---------------------------------------------------------------------------------- the run
def test_run_flops_follow_steps_slots_and_halting():
    shape = BackboneShape.from_config(qwen_shaped_config("0.5b"), 16)
    core = CoreShape(CoreConfig(d_model=64, num_heads=4, n=2, T=2), num_slots=81, answer_vocab=9, d_llm=896)
    lengths = np.full(50, 107)
    run = TrainingRun(shape, core, lengths, lengths, steps=1000, batch=64, n_sup=16, mean_steps=16)
    flops = run.flops()
    assert run.lockstep and run.refill_batch == 64
    assert flops["training: backbone"] == pytest.approx(1000 * 64 / 16 * shape.flops(107))
    assert flops["training: core"] == 1000 * 64 * core.step_total(0)
    early = dataclasses.replace(run, mean_steps=4.0).flops()
    assert early["training: backbone"] == pytest.approx(4 * flops["training: backbone"])
    assert dataclasses.replace(run, mean_steps=4.0).refill_batch == 16
    assert flops["validation: core"] == 0  # no validation runs
    longer = dataclasses.replace(run, train=np.array([100] * 49 + [2000]))  # padding to the longest
    assert longer.backbone_per_example(longer.train, 64)[1] > 10 * longer.backbone_per_example(longer.train, 64)[0]


def test_qwen_ids_without_a_cache_use_the_shape_written_in_code_and_unknown_ids_name_the_flag():
    config, where = backbone_config("Qwen/Qwen2.5-0.5B-Instruct", None, None)
    assert (config.num_hidden_layers, config.hidden_size) == (24, 896) and "written in code" in where
    config, _ = backbone_config("Qwen/Qwen2.5-0.5B-Instruct", None, "qwen2.5-1.5b")
    assert (config.num_hidden_layers, config.hidden_size) == (28, 1536)
    with pytest.raises(HybridReasonError, match="--backbone-config"):
        backbone_config("nobody/no-such-model-here", None, None)


def test_hub_sources_stand_in_with_generated_puzzles_of_the_same_layout(tmp_path):
    hub = build_task("sudoku", size=9, source="hub:sapientinc/sudoku-extreme", limit=1000)
    task, note = stand_in(hub, hub_data=False)
    assert task.source == "generate" and task.num_train == 200 and "hub:sapientinc/sudoku-extreme" in note
    assert stand_in(hub, hub_data=True) == (hub, "")
    csv = tmp_path / "train.csv"  # a Sudoku-Extreme row: '.' for a blank
    answer = "".join(str(1 + (3 * (i // 9) + i // 27 + i % 9) % 9) for i in range(81))
    question = "".join(digit if i % 3 else "." for i, digit in enumerate(answer))
    csv.write_text(f"source,question,answer,rating\nx,{question},{answer},5\n")
    real = build_task("sudoku", size=9, source=str(csv)).render(
        build_task("sudoku", size=9, source=str(csv)).load("train")[0]
    )
    generated = task.render(build_task("sudoku", size=9, num_train=3).load("train")[0])
    assert len(real.text) == len(generated.text) and real.text.count("\n") == generated.text.count("\n")


# ---------------------------------------------------------------------------------- the command
RECIPE = """
trainer: {{accelerator: cpu, devices: 1, precision: 32-true, max_steps: 300, val_check_interval: 100,
          limit_val_batches: 2}}
model:
  backbone: {{name: {path}, hidden_layer: 2}}
  core: {{d_model: 32, num_heads: 4, num_layers: 2, n: 2, T: 2}}
  num_context_slots: 2
  halt_max_steps: 4
data:
  task: {{name: sort, length: 6, min_length: 4, num_train: 60, num_validation: 12, num_test: 12}}
  batch_size: 8
  eval_batch_size: 4
"""


@pytest.fixture
def recipe(backbones, tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["hybrid-reason"])
    path = tmp_path / "tiny.yaml"
    path.write_text(RECIPE.format(path=backbones["qwen2"]))
    return str(path)


def test_plan_command_measures_the_recipes_prompts_and_prints_its_costs(recipe, capsys):
    args, args.overrides = parser().parse_known_args(["--config", recipe, "--max-prompts", "40", "--gpus", "2"])
    plan, task, _, tokenizer = build_plan(args)
    train, val = plan.lengths
    rows = task.load("train")
    assert (train.rows, len(train.tokens), val.rows, len(val.tokens)) == (60, 40, 12, 12)
    texts = [task.render(rows[int(i)]).text for i in train.index]
    assert train.tokens.tolist() == [len(ids) for ids in tokenizer(texts)["input_ids"]]  # the backbone's own
    run = plan.run
    assert (run.steps, run.batch, run.gpus, run.n_sup, run.val_runs, run.val_examples) == (300, 8, 2, 4, 3, 8)
    assert run.backbone.layers_run == 2 and run.carry_tokens == train.tokens.max()
    assert plan.about["tokenizer"].endswith("'s own")
    main(["--config", recipe, "--accelerator", "a100", "--validate", "--validate-layers", "2"])
    out = capsys.readouterr().out
    every = np.array([len(ids) for ids in tokenizer([task.render(r).text for r in rows])["input_ids"]])
    stats = [round(every.mean()), round(np.median(every)), round(np.percentile(every, 90)), every.max()]
    assert "| train | 60 | 60 | " + " | ".join(str(int(x)) for x in stats) + " |" in out  # all 60 measured
    assert "on 1 x A100 80GB" in out and "### Memory per GPU (8 carry slots, 32-true)" in out
    errors = [line.split("|")[-2].strip() for line in out.splitlines() if line.startswith(("| backbone,", "| core,"))]
    assert len(errors) == 3 and all(abs(float(e.rstrip("%"))) < 5 for e in errors)


def test_plan_overrides_and_bad_flags(recipe):
    args, args.overrides = parser().parse_known_args(["--config", recipe, "--model.core.n", "5"])
    assert build_plan(args)[0].run.core.calls == 2 * 6 * 2
    args, args.overrides = parser().parse_known_args(["--config", recipe, "--mean-steps", "9"])
    with pytest.raises(HybridReasonError, match="--mean-steps"):
        build_plan(args)
