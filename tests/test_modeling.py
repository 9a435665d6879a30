"""HybridReasoner: forward, frozen backbone, save/load round trips, Auto classes, prefixes."""

import json
import os
import re
from pathlib import Path

import pytest
import torch
from remote_loading import assert_remote_code_logits
from safetensors.torch import load_file
from transformers import AutoModel

import hybrid_reason  # noqa: F401  (registers the Auto classes)
from hybrid_reason import Backbone, BackboneSpec, HybridReasoner, HybridReasonerConfig
from hybrid_reason.utils.testing import TOKENIZER_FOLDER, save_tokenizer, tiny_backbone, tiny_tokenizer

TEXTS = ["Sort: 3 1 2 0", "Sort: 9 7 8 5"]
SPANS = [[(6, 7), (8, 9), (10, 11), (12, 13)]] * 2
LABELS = torch.tensor([[0, 1, 2, 3], [5, 7, 8, 9]])


@pytest.fixture(scope="module")
def backbone_dir(tmp_path_factory):
    return tiny_backbone(str(tmp_path_factory.mktemp("bb") / "qwen"), arch="qwen2", hidden_size=32, num_layers=4)


def make_config(backbone_dir, **overrides):
    kwargs = dict(
        backbone={"name": backbone_dir, "hidden_layer": 2},
        core={"d_model": 32, "num_heads": 4, "num_layers": 2, "n": 2, "T": 2},
        answer_vocab_size=10,
        num_slots=4,
        halt_max_steps=3,
    )
    kwargs.update(overrides)
    return HybridReasonerConfig(**kwargs)


def make_model(backbone_dir, seed=0, **overrides):
    torch.manual_seed(seed)
    return HybridReasoner(make_config(backbone_dir, **overrides)).eval()


def test_forward_shapes_loss_and_initial_halt(backbone_dir):
    model = make_model(backbone_dir)
    out = model(texts=TEXTS, slot_spans=SPANS, labels=LABELS)
    assert out.logits.shape == (2, 4, 10)
    assert out.halt_logits.shape == (2,)
    torch.testing.assert_close(out.halt_logits, torch.full((2,), -5.0))  # weight 0, bias -5
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    assert out.exact.dtype == torch.bool and out.exact.shape == (2,)
    assert out.carry.y.shape == (2, 4, 32) and out.carry.y.grad_fn is None
    assert out.encoded.features.shape == (2, 4, 32)


def test_backbone_is_frozen_outside_the_module_tree(backbone_dir):
    model = make_model(backbone_dir).train()
    backbone = model.backbone
    assert not any(m.training for m in backbone.model.modules())  # model.train() did not reach it
    backbone.train()
    assert not any(m.training for m in backbone.model.modules())  # nor does a direct call
    assert not any(p.requires_grad for p in backbone.parameters())
    own = {id(p) for p in model.parameters()}
    assert not any(id(p) in own for p in backbone.parameters())
    assert not any(k.startswith("backbone") for k in model.state_dict())
    out = model(texts=TEXTS, slot_spans=SPANS, labels=LABELS)
    out.loss.backward()
    assert all(p.grad is None for p in backbone.parameters())
    assert model.adapter.proj.weight.grad.abs().sum() > 0
    assert not out.encoded.features.requires_grad


def test_save_writes_only_trainable_weights_and_reload_is_identical(backbone_dir, tmp_path):
    model = make_model(backbone_dir)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)  # not the init: the load must bring the weights
    model.save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    assert set(weights) == set(model.state_dict())
    assert sum(v.numel() for v in weights.values()) == sum(p.numel() for p in model.parameters()) + 2 * 32
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "hybrid_reason" and config["backbone_hidden_size"] == 32
    assert config["auto_map"]["AutoModel"].endswith("modeling.HybridReasoner")

    reloaded = AutoModel.from_pretrained(tmp_path).eval()
    assert type(reloaded) is HybridReasoner
    with torch.no_grad():
        a = model(texts=TEXTS, slot_spans=SPANS).logits
        b = reloaded(texts=TEXTS, slot_spans=SPANS).logits
    assert torch.equal(a, b)


def test_trust_remote_code_loads_in_a_process_that_never_imported_the_package(backbone_dir, tmp_path):
    model = make_model(backbone_dir)
    model.save_pretrained(tmp_path / "model")
    with torch.no_grad():
        want = model(texts=TEXTS, slot_spans=SPANS).logits
    assert_remote_code_logits(tmp_path / "model", TEXTS, SPANS, want, tmp_path)


def test_a_backbone_of_another_hidden_size_is_refused(backbone_dir, tmp_path):
    make_model(backbone_dir).save_pretrained(tmp_path / "model")
    other = tiny_backbone(str(tmp_path / "wide"), hidden_size=48)
    model = HybridReasoner.from_pretrained(tmp_path / "model", backbone={"name": other, "hidden_layer": 2})
    with pytest.raises(ValueError, match=r"hidden size 48.*hidden size 32 \(config.backbone_hidden_size\)"):
        model(texts=TEXTS, slot_spans=SPANS)


def test_a_backbone_with_another_tokenizer_is_refused(backbone_dir, tmp_path):
    make_model(backbone_dir).save_pretrained(tmp_path / "model")
    other = tiny_backbone(str(tmp_path / "other"), hidden_size=32)
    save_tokenizer(tiny_tokenizer(vocab_size=200), os.path.join(other, TOKENIZER_FOLDER))
    backbone = Backbone.load(BackboneSpec(name=other, hidden_layer=2))
    with pytest.raises(ValueError, match=r"has tokenizer \w+, but this model was trained with tokenizer"):
        HybridReasoner.from_pretrained(tmp_path / "model", backbone_model=backbone)


def test_context_resampler_adds_prefix_slots_that_learn(backbone_dir):
    model = make_model(backbone_dir, num_context_slots=3).train()
    assert model.config.seq_len == 7
    out = model(texts=TEXTS, slot_spans=SPANS, labels=LABELS)
    assert out.logits.shape == (2, 4, 10) and out.carry.y.shape == (2, 7, 32)
    assert out.encoded.tokens is not None
    out.loss.backward()
    assert model.resampler.queries.grad.abs().sum() > 0


def test_puzzle_id_embedding_starts_at_zero_and_only_used_rows_learn(backbone_dir):
    model = make_model(backbone_dir, num_puzzle_ids=5).train()
    assert model.config.seq_len == 16 + 4
    assert model.puzzle_emb.weight.abs().sum() == 0
    with pytest.raises(ValueError, match="pass puzzle_ids"):
        model(texts=TEXTS, slot_spans=SPANS)
    out = model(texts=TEXTS, slot_spans=SPANS, labels=LABELS, puzzle_ids=torch.tensor([1, 3]))
    out.loss.backward()
    table = model.puzzle_emb  # a buffer (TRM): only the batch's rows get a gradient, for the sign-SGD
    assert table.ids.tolist() == [1, 3] and (table.rows.grad.abs().sum(-1) > 0).all()
    assert table.weight.grad is None and "puzzle_emb.weight" not in dict(model.named_parameters())


def test_iterate_runs_the_requested_steps_from_the_carry(backbone_dir):
    model = make_model(backbone_dir)
    encoded = model.encode(TEXTS, SPANS)
    outs = list(model.iterate(encoded))
    assert len(outs) == 3  # halt_max_steps
    assert len(list(model.iterate(encoded, steps=5))) == 5
    assert not torch.equal(outs[0].logits, outs[1].logits)
    second = model(encoded=encoded, carry=outs[0].carry).logits
    torch.testing.assert_close(second, outs[1].logits)


def test_config_rejects_unknown_keys_and_bad_values(backbone_dir):
    with pytest.raises(ValueError, match="unknown key core.nn"):
        make_config(backbone_dir, core={"nn": 3})
    with pytest.raises(ValueError, match="unknown key backbone.layer"):
        make_config(backbone_dir, backbone={"name": backbone_dir, "layer": 3})
    with pytest.raises(ValueError, match="config.loss"):
        make_config(backbone_dir, loss="hinge")


def test_an_encoder_backbone_works_too(tmp_path):
    path = tiny_backbone(str(tmp_path / "bert"), arch="bert", hidden_size=32)
    model = make_model(path)
    out = model(texts=TEXTS, slot_spans=SPANS, labels=LABELS)
    assert out.logits.shape == (2, 4, 10) and torch.isfinite(out.loss)


def readme_python_example() -> str:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    return next(b for b in blocks if "AutoModel.from_pretrained" in b)


@pytest.mark.slow
def test_readme_example_runs_on_smollm2(tmp_path, monkeypatch):
    """The README's Python example, verbatim, on the real SmolLM2 backbone."""
    monkeypatch.chdir(tmp_path)
    exec(compile(readme_python_example(), "README.md", "exec"), {})
    assert (tmp_path / "my_model" / "model.safetensors").stat().st_size < 5_000_000  # no backbone inside
