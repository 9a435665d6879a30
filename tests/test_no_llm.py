"""The ``none`` backbone (no LLM): symbol one-hots, TRM's scaled embedding, training, export and reloading."""

from __future__ import annotations

import math

import pytest
import torch
from remote_loading import assert_remote_code_logits
from test_training_common import make_data, make_module, make_trainer
from transformers import AutoModel

import hybrid_reason  # noqa: F401  (registers the Auto classes)
from hybrid_reason import HybridReasoner, HybridReasonerConfig
from hybrid_reason.backbone import Backbone, BackboneSpec, SymbolBackbone
from hybrid_reason.backbone.symbols import ASCII, SYMBOL_FEATURES
from hybrid_reason.cli import main as cli
from hybrid_reason.errors import HybridReasonError
from hybrid_reason.model.core import trunc_normal_
from hybrid_reason.tasks import TokenCount
from hybrid_reason.training.export import LAST

TEXTS = ["Sort: 13 10 5 6", "Sort: 7 0 12 3"]
SPANS = [[(6, 8), (9, 11), (12, 13), None], [(6, 7), (8, 9), (10, 12), (13, 14)]]


@pytest.fixture(scope="module")
def none():
    return Backbone.load(BackboneSpec(name="none"))


def onehot(*chars: str) -> torch.Tensor:
    """The expected feature of a span over ``chars``."""
    v = torch.zeros(SYMBOL_FEATURES)
    for p, ch in enumerate(chars):
        v[p * ASCII + ord(ch)] = 1.0
    return v


def test_load_none_gives_a_weightless_deterministic_symbol_backbone(none):
    assert isinstance(none, SymbolBackbone) and not list(none.parameters())
    assert none.hidden_size == 512 and none.context_length is None and none.cache is None
    assert not none.has_lora and none.num_layers_run == 0
    assert none.identity.name == "none" and none.tokenizer_fingerprint == SymbolBackbone().tokenizer_fingerprint
    enc = none.encode(TEXTS, SPANS)
    assert enc.features.shape == (2, 4, 512) and enc.features.dtype == torch.float32
    assert torch.equal(enc.features[0, 0], onehot("1", "3")) and torch.equal(enc.features[0, 2], onehot("5"))
    assert torch.equal(enc.features[1, 2], onehot("1", "2"))
    assert enc.empty.tolist() == [[False, False, False, True], [False] * 4] and not enc.features[0, 3].any()
    assert torch.equal(none.encode(TEXTS, SPANS).features, enc.features)


def test_tokens_are_characters(none):
    enc = none.encode(TEXTS, SPANS, with_tokens=True)
    assert enc.tokens.shape == (2, len(TEXTS[0]), 512)
    assert enc.token_mask.sum(1).tolist() == [len(t) for t in TEXTS]
    for b, text in enumerate(TEXTS):
        assert [int(i) for i in enc.tokens[b, : len(text)].argmax(-1)] == [ord(c) for c in text]
        assert not enc.tokens[b, len(text) :].any()
    count = TokenCount(none.tokenizer)
    assert count("Sort: 1 2\nSorted:") == len("Sort: 1 2\nSorted:")
    offsets = none.tokenizer("a\n b", return_offsets_mapping=True)["offset_mapping"]
    assert offsets == [(0, 1), (1, 2), (2, 3), (3, 4)]


@pytest.mark.parametrize(
    ("text", "span", "named"),
    [("Sort: 12345 1", (6, 11), "has 5 characters"), ("Sort: é 1", (6, 7), "not ASCII")],
)
def test_a_span_it_cannot_read_is_an_error_naming_example_and_slot(none, text, span, named):
    with pytest.raises(HybridReasonError, match=named) as err:
        none.encode([text], [[None, span]], names=["sort/17"])
    assert "'sort/17' slot 1" in str(err.value) and "\n" not in str(err.value)


def test_lora_or_quantization_on_none_is_refused():
    for spec in (BackboneSpec(name="none", lora_rank=4), BackboneSpec(name="none", quantization="4bit")):
        with pytest.raises(HybridReasonError, match="no weights"):
            Backbone.load(spec)


def none_config(**overrides) -> HybridReasonerConfig:
    kwargs = dict(
        backbone={"name": "none"},
        core={"d_model": 64, "num_heads": 4, "num_layers": 1, "n": 2, "T": 2},
        answer_vocab_size=16,
        num_slots=4,
        halt_max_steps=2,
    )
    return HybridReasonerConfig(**(kwargs | overrides))


def test_the_adapter_on_a_symbol_is_trms_sqrt_d_scaled_embedding(none):
    torch.manual_seed(0)
    model = HybridReasoner(none_config()).eval()
    eps, W = model.config.core_config.norm_eps, model.adapter.proj.weight.detach()  # [d, 512]
    table = W.T * math.sqrt(SYMBOL_FEATURES) / math.sqrt(1 + SYMBOL_FEATURES * eps)  # [512, d]: one row per symbol
    enc = none.encode(TEXTS, SPANS)
    with torch.no_grad():
        x = model.adapter(enc.features, enc.empty) - model.adapter.position
    torch.testing.assert_close(x[0, 2], table[ord("5")])  # one character: a plain table lookup
    two = (table[ord("1")] + table[ASCII + ord("3")]) * math.sqrt((1 + 512 * eps) / (2 + 512 * eps))
    torch.testing.assert_close(x[0, 0], two)  # two characters: (e_1 + e_3) / sqrt(2), up to eps
    # TRM: an embedding initialised with std 1/sqrt(d), multiplied by sqrt(d). Same law: unit-scale elements.
    d = model.config.core_config.d_model
    trm = trunc_normal_(torch.empty(SYMBOL_FEATURES, d), 1 / math.sqrt(d)) * math.sqrt(d)
    ours = W.T * math.sqrt(SYMBOL_FEATURES)
    assert abs(float(ours.std()) - 1) < 0.02 and abs(float(trm.std()) - 1) < 0.02
    assert abs(float(ours.abs().max()) - float(trm.abs().max())) < 0.1  # both truncated at the same bound
    assert math.sqrt(1 + SYMBOL_FEATURES * eps) == pytest.approx(1 / 0.9974, abs=1e-4)  # the docstring's factor


def test_the_resampler_reads_every_character():
    torch.manual_seed(0)
    model = HybridReasoner(none_config(num_context_slots=3)).eval()
    out = model(texts=TEXTS, slot_spans=SPANS, labels=torch.tensor([[0, 1, 2, 3]] * 2))
    assert out.logits.shape == (2, 4, 16) and out.encoded.tokens.shape[:2] == (2, len(TEXTS[0]))
    with torch.no_grad():
        other = model(texts=["Sort: 13 10 5 6", "Sort: 7 0 12 4"], slot_spans=[SPANS[0], SPANS[1][:3] + [None]])
        again = model(texts=["Sort: 13 10 5 6", "Sort: 7 0 12 9"], slot_spans=[SPANS[0], SPANS[1][:3] + [None]])
    assert not torch.equal(other.logits[1], again.logits[1])  # a character under no slot reaches the core
    assert torch.equal(other.logits[0], again.logits[0])


def test_save_and_reload_through_automodel_and_remote_code(tmp_path):
    torch.manual_seed(0)
    model = HybridReasoner(none_config()).eval()
    model.save_pretrained(tmp_path / "model")
    assert (tmp_path / "model" / "symbols.py").is_file()
    with torch.no_grad():
        want = model(texts=TEXTS, slot_spans=SPANS).logits
    reloaded = AutoModel.from_pretrained(tmp_path / "model").eval()
    assert isinstance(reloaded.backbone, SymbolBackbone)
    with torch.no_grad():
        assert torch.equal(reloaded(texts=TEXTS, slot_spans=SPANS).logits, want)
    assert_remote_code_logits(
        tmp_path / "model", TEXTS, SPANS, want, tmp_path, 'assert type(m.backbone).__name__ == "SymbolBackbone"'
    )


@pytest.mark.usefixtures("one_thread")
def test_a_none_model_trains_exports_and_reloads_with_identical_logits(tmp_path):
    module = make_module("none", halt_max_steps=2)
    before = module.model.adapter.proj.weight.detach().clone()
    trainer = make_trainer(str(tmp_path), max_steps=6)
    trainer.fit(module, make_data(batch_size=8))
    assert trainer.global_step == 6 and torch.isfinite(trainer.callback_metrics["val/exact_acc"])
    assert module.counters["encoded_rows"] > 0 and module.model.config.backbone_hidden_size == 512
    assert not torch.equal(module.model.adapter.proj.weight.detach(), before)  # the symbol embedding learned
    out = tmp_path / "exported"
    cli(["export", str(tmp_path / "ckpt" / LAST), str(out)])
    reloaded = AutoModel.from_pretrained(out).eval()
    assert reloaded.config.backbone["name"] == "none" and isinstance(reloaded.backbone, SymbolBackbone)
    state = torch.load(tmp_path / "ckpt" / LAST, map_location="cpu", weights_only=True)["state_dict"]
    module.model.load_state_dict({k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")})
    with torch.no_grad():
        want = module.model.eval()(texts=TEXTS, slot_spans=SPANS).logits
        assert torch.equal(reloaded(texts=TEXTS, slot_spans=SPANS).logits, want)
