"""Joint LoRA (issue 11.4, ``model.backbone.lora_rank: R``): the backbone's LoRA adapters live in the
HybridReasoner's module tree and its frozen base does not, so the optimizer, the EMA and checkpoints
see exactly the adapter; the backbone runs under grad at every step; export writes ``backbone_lora/``
and the state dict, and ``from_pretrained`` gives the same logits. (2-rank DDP: test_joint_lora_ddp.py.)
"""

from __future__ import annotations

import copy
import sys

import pytest
import test_training_cli as cli_tests
import test_training_resume as resume
import torch
from lightning.pytorch.callbacks import Callback
from peft import PeftModel
from remote_loading import assert_remote_code_logits
from safetensors.torch import load_file, save_file
from test_training_common import make_data, make_module, make_trainer
from transformers import AutoModel

import hybrid_reason  # noqa: F401  (registers the Auto classes)
from hybrid_reason import Backbone, BackboneSpec, HybridReasoner
from hybrid_reason.errors import HybridReasonError
from hybrid_reason.model.modeling import LORA_FOLDER, check_saved_model
from hybrid_reason.training.export import LAST, export_checkpoint
from hybrid_reason.training.recipe_cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

RANK = 4
TEXTS = ["Sort: 3 1 2 0", "Sort: 4 2 0 1"]
SPANS = [[(6, 7), (8, 9), (10, 11), (12, 13)]] * 2
LORA_KEYS = {
    f"backbone_lora.layers.{i}.self_attn.{proj}_proj.lora_{ab}.default.weight"
    for i in (0, 1)
    for proj in "qkvo"
    for ab in "AB"
}


def lora_module(backbone_path: str, init_seed: int = 0, **kwargs):
    """The tiny Sort module of the training tests, with rank-4 LoRA on its (2-layer) backbone."""
    return make_module(backbone_path, init_seed, backbone=BackboneSpec(name=backbone_path, lora_rank=RANK), **kwargs)


def lora_state(model: HybridReasoner) -> dict[str, torch.Tensor]:
    """Copies of the model's LoRA weights, by state-dict name."""
    return {k: v.detach().clone() for k, v in model.state_dict().items() if k.startswith("backbone_lora.")}


def frozen_state(backbone: Backbone) -> dict[str, torch.Tensor]:
    """Copies of the backbone's frozen weights."""
    return {n: p.detach().clone() for n, p in backbone.model.named_parameters() if not p.requires_grad}


class EMAWhileValidating(Callback):
    """Checks, at every validation (after the EMA callback swapped its weights in), that the LoRA tensors
    the backbone's forward runs hold the averaged values recorded after the last EMA update."""

    def __init__(self):
        self.averaged: dict[str, torch.Tensor] | None = None
        self.checked = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        ema = next(c for c in trainer.callbacks if type(c).__name__ == "EMAWeightAveraging")
        self.averaged = lora_state(ema._average_model.module.model)

    def on_validation_epoch_start(self, trainer, pl_module):
        if self.averaged is None:
            return
        model = pl_module.model
        names = {id(p): "backbone_lora." + n for n, p in model.backbone_lora.named_parameters()}
        run = {names[id(p)]: p.detach() for p in model.backbone.lora_parameters()}  # what the forward uses
        assert run.keys() == self.averaged.keys()
        for name, value in run.items():
            assert torch.equal(value, self.averaged[name]), name
        self.checked += 1


def train(backbone_path: str, root: str, steps: int = 6, callbacks: list | None = None):
    """Fit the LoRA module for ``steps`` steps (checkpoints every 2, validation every 4); (module, trainer)."""
    module = lora_module(backbone_path)
    trainer = make_trainer(root, steps, callbacks=callbacks)
    trainer.fit(module, make_data())
    return module, trainer


# ------------------------------------------------------------------------------ the module tree
def test_the_module_tree_holds_the_adapter_and_not_the_frozen_base(backbone_path):
    module = lora_module(backbone_path)
    model, backbone = module.model, module.model.backbone
    lora = {id(p) for p in backbone.lora_parameters()}
    assert len(lora) == len(LORA_KEYS) and lora == {id(p) for p in model.backbone_lora.parameters()}
    frozen = {id(p) for p in backbone.model.parameters() if not p.requires_grad}
    assert frozen and frozen.isdisjoint(id(p) for p in module.parameters())
    assert lora <= {id(p) for p in module.parameters()}  # the same tensors the backbone's forward runs
    keys = set(model.state_dict())
    assert {k for k in keys if k.startswith("backbone_lora.")} == LORA_KEYS
    assert not any("base_layer" in k or "embed" in k for k in keys)
    assert backbone.cache is None  # features change as the adapter trains: never cached
    # peft's initialisation survives the model's own (B = 0): the adapted backbone starts as the base
    plain = Backbone.load(BackboneSpec(name=backbone_path), cache=False)
    assert torch.equal(model.encode(TEXTS, SPANS).features, plain.encode(TEXTS, SPANS).features.detach())


def test_the_ema_copy_shares_the_frozen_base_and_copies_the_adapter(backbone_path):
    module = lora_module(backbone_path)
    twin = copy.deepcopy(module)  # what EMAWeightAveraging's AveragedModel does
    assert twin.model.backbone is module.model.backbone
    mine, its = list(module.model.backbone_lora.parameters()), list(twin.model.backbone_lora.parameters())
    assert len(mine) == len(its) == len(LORA_KEYS)
    assert all(a is not b and torch.equal(a, b) for a, b in zip(mine, its))


def test_the_backbone_runs_under_grad_so_the_loss_reaches_the_adapter(backbone_path):
    model = lora_module(backbone_path).model.train()
    with torch.no_grad():  # a non-zero B, so that A gets a gradient too
        for name, p in model.backbone_lora.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    out = model(texts=TEXTS, slot_spans=SPANS, labels=torch.tensor([[0, 1, 2, 3], [0, 1, 2, 4]]))
    out.loss.backward()
    grads = {n: p.grad for n, p in model.backbone_lora.named_parameters()}
    assert all(g is not None and bool(g.abs().sum() > 0) for g in grads.values()), grads.keys()
    assert all(p.grad is None for p in model.backbone.model.parameters() if not p.requires_grad)


def test_a_half_precision_base_keeps_a_float32_adapter(backbone_path):
    """What ``dtype: auto`` does when the backbone moves to CUDA (bfloat16 frozen weights), here on CPU:
    the adapter, which the optimizer and the EMA hold, stays the same float32 tensors and still trains."""
    model = lora_module(backbone_path).model
    held = [(p, p.dtype) for p in model.backbone_lora.parameters()]
    model.backbone._cast_frozen(torch.bfloat16)
    assert model.backbone.dtype == torch.bfloat16
    assert all(p.dtype == torch.bfloat16 for p in model.backbone.model.parameters() if not p.requires_grad)
    assert [(p, p.dtype) for p in model.backbone_lora.parameters()] == held and held[0][1] == torch.float32
    assert {id(p) for p in model.backbone.lora_parameters()} == {id(p) for p, _ in held}
    with pytest.warns(UserWarning, match="bfloat16 on CPU"):
        features = model.encode(TEXTS, SPANS).features
    features.sum().backward()
    grads = {n: p.grad for n, p in model.backbone_lora.named_parameters()}
    assert all(g is not None and g.dtype == torch.float32 for g in grads.values())
    assert all(bool(g.abs().sum() > 0) for n, g in grads.items() if "lora_B" in n)  # (A's is 0 while B is 0)


# ------------------------------------------------------------------------------ training
def test_training_moves_the_adapter_not_the_base_and_validates_on_the_ema_adapter(backbone_path, tmp_path):
    module = lora_module(backbone_path)
    before, base = lora_state(module.model), frozen_state(module.model.backbone)
    check = EMAWhileValidating()
    trainer = make_trainer(str(tmp_path), 8, callbacks=[check])
    trainer.fit(module, make_data())
    assert check.checked == 2  # validations after steps 4 and 8 ran on the averaged adapter
    after = lora_state(module.model)
    assert all(not torch.equal(after[k], before[k]) for k in LORA_KEYS)
    assert all(torch.equal(p, base[n]) for n, p in frozen_state(module.model.backbone).items())
    optimized = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert {id(p) for p in module.model.backbone.lora_parameters()} <= optimized
    c = module.counters
    assert c["encoded_rows"] == c["slot_steps"] == 8 * 6  # every slot through the backbone at every step
    ckpt = torch.load(tmp_path / "ckpt" / LAST, weights_only=True)
    assert {k for k in ckpt["state_dict"] if "backbone_lora" in k} == {"model." + k for k in LORA_KEYS}
    assert not any("base_layer" in k for k in ckpt["state_dict"])
    for k in LORA_KEYS:  # after fit the module holds the EMA weights, which the checkpoint stores
        assert torch.equal(ckpt["state_dict"]["model." + k], after[k])
        assert not torch.equal(ckpt["current_model_state"]["model." + k], after[k])


def test_resume_with_joint_lora_matches_an_unbroken_run(backbone_path, tmp_path):
    """Staggered halting and resampler slots (as tests/test_training_resume.py): the slots that live
    across the checkpoint are encoded again from the prompts it keeps."""

    def build(init_seed=0):
        module = lora_module(backbone_path, init_seed, num_context_slots=2, halt_max_steps=4, halt_exploration_prob=0.5)
        with torch.no_grad():
            module.model.halt_head.bias.fill_(2.0)
        return module

    unbroken_module = build()
    unbroken = make_trainer(str(tmp_path / "a"), resume.STEPS)
    unbroken.fit(unbroken_module, make_data())
    want = resume.final_state(unbroken, unbroken_module)

    crashed = make_trainer(str(tmp_path / "b"), resume.STEPS, callbacks=[resume.Crash(at=5)])
    with pytest.raises(RuntimeError, match="simulated crash"):
        crashed.fit(build(), make_data())
    last = str(tmp_path / "b" / "ckpt" / LAST)
    carry = torch.load(last, weights_only=True)["carry"]["ranks"][0]
    assert 0 < int(carry["halted"].sum()) < 6 and len(carry["prompts"]) == 6
    resumed_module = build(init_seed=123)  # other initial weights, the adapter's included
    resumed = make_trainer(str(tmp_path / "b"), resume.STEPS)
    resumed.fit(resumed_module, make_data(), ckpt_path=last, weights_only=True)
    got = resume.final_state(resumed, resumed_module)

    assert got.keys() == want.keys() and {f"weights.{k}" for k in LORA_KEYS} <= got.keys()
    assert {f"ema.{k}" for k in LORA_KEYS} <= got.keys()
    for key in want:
        assert torch.equal(got[key], want[key]), key
    assert resumed_module.counters == unbroken_module.counters


# ------------------------------------------------------------------------------ export and loading
def test_export_writes_the_adapter_and_from_pretrained_gives_the_same_logits(backbone_path, tmp_path):
    module, _ = train(backbone_path, str(tmp_path), steps=6)
    out = tmp_path / "exported"
    export_checkpoint(str(tmp_path / "ckpt" / LAST), str(out))
    assert (out / LORA_FOLDER / "adapter_config.json").is_file()
    weights = load_file(out / "model.safetensors")
    ema = lora_state(module.model)  # after fit: the EMA weights, as exported
    assert {k for k in weights if k.startswith("backbone_lora.")} == LORA_KEYS
    assert all(torch.equal(weights[k], ema[k]) for k in LORA_KEYS)

    model = module.model.eval()
    with torch.no_grad():
        want = model(texts=TEXTS, slot_spans=SPANS).logits
        reloaded = AutoModel.from_pretrained(out).eval()
        assert type(reloaded) is HybridReasoner and reloaded.backbone is not model.backbone
        assert torch.equal(reloaded(texts=TEXTS, slot_spans=SPANS).logits, want)

        # backbone_lora/ is a plain peft adapter: on the base model it gives the trained backbone's states
        base = AutoModel.from_pretrained(backbone_path)
        peft_model = PeftModel.from_pretrained(base, str(out / LORA_FOLDER)).eval()
        batch = model.backbone.tokenizer(TEXTS, return_tensors="pt")
        got = peft_model(**batch).last_hidden_state
        assert torch.equal(got, model.backbone.hidden_states(batch["input_ids"], batch["attention_mask"].bool()))
    assert_remote_code_logits(
        out, TEXTS, SPANS, want, tmp_path, f"assert len(m.backbone.lora_parameters()) == {len(LORA_KEYS)}"
    )


def test_the_recipe_cli_fits_and_exports_a_joint_lora_model(backbone_path, tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["hybrid-reason"])
    recipe = cli_tests.write_recipe(tmp_path / "tiny.yaml", backbone_path, str(tmp_path / "runs"))
    run = main(["fit", "--config", recipe, "--model.backbone.lora_rank", str(RANK)])
    folder = tmp_path / "runs" / "version_0" / "hf_model"
    assert (folder / LORA_FOLDER / "adapter_model.safetensors").is_file()
    with torch.no_grad():
        want = run.model.model.eval()(texts=TEXTS, slot_spans=SPANS).logits
        assert torch.equal(AutoModel.from_pretrained(folder).eval()(texts=TEXTS, slot_spans=SPANS).logits, want)


def test_shape_checks_build_the_adapter_without_reading_backbone_weights(backbone_path, tmp_path):
    model = lora_module(backbone_path).model
    model.save_pretrained(tmp_path / "model")
    with torch.device("meta"):  # what check_saved_model and from_pretrained do first
        skeleton = HybridReasoner(model.config)
    assert {k for k in skeleton.state_dict() if k.startswith("backbone_lora.")} == LORA_KEYS
    assert {p.device.type for p in skeleton.backbone.model.parameters()} == {"meta"}
    weights = load_file(tmp_path / "model" / "model.safetensors")
    missing = sorted(LORA_KEYS)[0]
    save_file({k: v for k, v in weights.items() if k != missing}, tmp_path / "model" / "model.safetensors")
    with pytest.raises(HybridReasonError, match=f"lacks tensor {missing}"):
        check_saved_model(tmp_path / "model")
    with pytest.raises(HybridReasonError, match=f"lacks tensor {missing}"):
        AutoModel.from_pretrained(tmp_path / "model")


def test_a_joint_lora_model_keeps_its_backbone_and_needs_a_layer_to_adapt(backbone_path):
    model = lora_module(backbone_path).model
    with pytest.raises(HybridReasonError, match="trains LoRA on its backbone.*cannot be replaced"):
        model.attach_backbone(Backbone.load(BackboneSpec(name=backbone_path)))
    model.attach_backbone(model.backbone)  # the same one is fine
    with pytest.raises(HybridReasonError, match="needs backbone.hidden_layer >= 1"):
        make_module(backbone_path, backbone=BackboneSpec(name=backbone_path, lora_rank=RANK, hidden_layer=0))
