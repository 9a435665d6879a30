"""Backbone: loading, layer truncation, freezing, span pooling, padding, quantization, LoRA.

Tiny random HF models built in code stand in for the LLM; tests marked slow use the real SmolLM2
(dequantized once into the user cache, then reused).
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import random
import warnings
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
from transformers import AutoModel, AutoTokenizer

from hybrid_reason.backbone import (
    Backbone,
    BackboneIdentity,
    BackboneSpec,
    Encoded,
    materialize,
    resolve_backbone,
    resolve_layer,
    tokenizer_fingerprint,
)
from hybrid_reason.backbone.backbone import micro_batches
from hybrid_reason.backbone.loading import SMOLLM2_GGUF, check_backbone, find_layers, torch_dtype
from hybrid_reason.errors import HybridReasonError
from hybrid_reason.utils.atomic_io import write_dir_atomically
from hybrid_reason.utils.testing import qwen_shaped_config, tiny_backbone, tiny_tokenizer

NUM_LAYERS = 4


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, str]:
    """Paths of tiny random qwen2 / llama / bert backbones."""
    root = tmp_path_factory.mktemp("tiny")
    paths = {
        arch: tiny_backbone(str(root / arch), arch, num_layers=NUM_LAYERS, seed=1, max_positions=4096)
        for arch in ("qwen2", "llama", "bert")
    }
    # bitsandbytes quantizes in blocks of 64 inputs: quantized tests need hidden sizes of 64 and more
    paths.update(
        {
            f"{arch}64": tiny_backbone(str(root / f"{arch}64"), arch, hidden_size=64, num_layers=NUM_LAYERS)
            for arch in ("qwen2", "llama")
        }
    )
    return paths


def load(path: str, **spec) -> Backbone:
    """A tiny backbone without feature cache (so every encode really runs the model)."""
    return Backbone.load(BackboneSpec(name=path, **spec), cache=False)


def grid_text(rng: random.Random, rows: int, cols: int) -> str:
    """An ARC-like digit grid."""
    return "\n".join("".join(rng.choice("0123456789") for _ in range(cols)) for _ in range(rows))


def brute_force_features(backbone: Backbone, text: str, spans, token_states: torch.Tensor) -> torch.Tensor:
    """Slot features straight from the definition: mean over tokens with ts < e and te > s and te > ts."""
    offsets = backbone.tokenizer(text, return_offsets_mapping=True)["offset_mapping"]
    out = torch.zeros(len(spans), token_states.shape[-1])
    for j, span in enumerate(spans):
        if span is None:
            continue
        s, e = span
        idx = [t for t, (ts, te) in enumerate(offsets) if ts < e and te > s and te > ts]
        out[j] = token_states[idx].mean(0)
    return out


# ------------------------------------------------------------------------------ testing helpers
def test_tiny_tokenizer_merges_digits_and_round_trips_newlines(tiny):
    tok = Backbone.load(BackboneSpec(name=tiny["qwen2"]), cache=False).tokenizer
    assert tok.tokenize("12") == ["12"], "digit pairs must merge for the merge-alignment tests to mean anything"
    text = "input:\n0120\n3300\n\noutput: 12 ab!\n"
    ids = tok(text)["input_ids"]
    assert tok.convert_ids_to_tokens(ids[0]) == "<s>"
    assert tok.decode(ids, skip_special_tokens=True) == text
    # saved in its own folder (next to a Qwen2 config AutoTokenizer would make it a Qwen2Tokenizer,
    # which drops "\n"), AutoTokenizer reloads it as a plain fast tokenizer
    auto = AutoTokenizer.from_pretrained(tiny["qwen2"] + "/tokenizer")
    assert auto.decode(auto(text)["input_ids"], skip_special_tokens=True) == text


def test_qwen_shaped_config_has_qwen25_05b_shape():
    cfg = qwen_shaped_config()
    shape = (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads)
    assert shape == (896, 24, 14, 2)
    assert (cfg.intermediate_size, cfg.vocab_size, cfg.max_position_embeddings) == (4864, 151936, 32768)
    assert cfg.rope_parameters["rope_theta"] == 1e6 and cfg.tie_word_embeddings
    with pytest.raises(ValueError, match="unknown Qwen2.5 size"):
        qwen_shaped_config("7b")


# ------------------------------------------------------------------------------ resolution
def test_resolve_backbone_aliases_paths_and_hub_ids(tiny, tmp_path):
    folder, gguf = resolve_backbone("smollm2-135m")
    assert gguf == SMOLLM2_GGUF and (Path(folder) / gguf).is_file()
    folder, gguf = resolve_backbone("minilm-l6")
    assert gguf is None and (Path(folder) / "config.json").is_file()
    assert resolve_backbone(tiny["qwen2"]) == (tiny["qwen2"], None)
    (tmp_path / "m.gguf").write_bytes(b"")
    assert resolve_backbone(str(tmp_path / "m.gguf")) == (str(tmp_path), "m.gguf")
    assert resolve_backbone("Qwen/Qwen2.5-0.5B-Instruct") == ("Qwen/Qwen2.5-0.5B-Instruct", None)
    with pytest.raises(HybridReasonError, match="no such folder"):
        resolve_backbone("./does/not/exist")


@pytest.mark.parametrize("name", ["no-such-backbone", "qwen", "a/b/c", "org/", "org/na me", "org/..x", "org--x/y"])
def test_a_name_that_is_no_path_alias_or_hub_id_is_refused_at_once(name):
    with pytest.raises(HybridReasonError, match="not a local folder, a .gguf file, an alias .* or a hub id"):
        materialize(name)


def test_a_hub_id_not_in_the_cache_is_refused_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))  # an empty cache
    with pytest.raises(
        HybridReasonError,
        match="'someorg/some-model' is not a local folder and, as a hub id, it is "
        "not in the local Hugging Face cache while HF_HUB_OFFLINE is set",
    ):
        Backbone.load(BackboneSpec(name="someorg/some-model"))


def test_write_dir_atomically_never_leaves_half_a_folder(tmp_path):
    final = tmp_path / "backbones" / "m"

    def failing(tmp: Path) -> None:
        (tmp / "model.safetensors").write_bytes(b"half")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        write_dir_atomically(final, failing)
    assert not final.exists() and list(final.parent.iterdir()) == []
    orphan = final.parent / f".m.tmp-{2**22 + 12345}-deadbeef"  # a dead process's leftover
    orphan.mkdir()
    write_dir_atomically(final, lambda tmp: (tmp / "a").write_text("1"))
    write_dir_atomically(final, lambda tmp: (tmp / "b").write_text("2"))  # replaces the old copy
    assert sorted(p.name for p in final.iterdir()) == ["b"]
    assert sorted(p.name for p in final.parent.iterdir()) == ["m"]


# ------------------------------------------------------------------------------ hidden_layer
def test_resolve_layer_follows_python_indexing():
    assert [resolve_layer(k, 4) for k in (0, 1, 4, -1, -2, -5)] == [0, 1, 4, 4, 3, 0]
    for bad in (5, -6):
        with pytest.raises(HybridReasonError, match=f"hidden_layer {bad} out of range"):
            resolve_layer(bad, 4)


def test_hidden_layer_out_of_range_names_the_key_before_weights_load(tiny, tmp_path):
    weights = Path(tiny["qwen2"]) / "model.safetensors"
    assert check_backbone(BackboneSpec(name=tiny["qwen2"], hidden_layer=-2)) == NUM_LAYERS - 1
    with pytest.raises(
        HybridReasonError, match=r"^model.backbone.hidden_layer 9 out of range for a model with 4 layers"
    ):
        check_backbone(BackboneSpec(name=tiny["qwen2"], hidden_layer=9), key="model.backbone")
    # the same from Backbone.load, with the weights unreadable: the layer is checked first
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text((Path(tiny["qwen2"]) / "config.json").read_text())
    (tmp_path / "m" / "model.safetensors").write_bytes(weights.read_bytes()[:100])
    (tmp_path / "m" / "tokenizer").symlink_to(Path(tiny["qwen2"]) / "tokenizer")
    with pytest.raises(HybridReasonError, match=r"^backbone.hidden_layer -6 out of range"):
        Backbone.load(BackboneSpec(name=str(tmp_path / "m"), hidden_layer=-6))
    with pytest.raises(HybridReasonError, match=r"cannot read its weights in .*/m \("):
        Backbone.load(BackboneSpec(name=str(tmp_path / "m")))


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("dtype", "bf16", r"backbone.dtype must be one of \('auto', 'float32', 'bfloat16', 'float16'\), got 'bf16'"),
        ("quantization", "3bit", r"backbone.quantization must be one of \(None, '4bit', '8bit'\)"),
        ("lora_rank", -1, "backbone.lora_rank must be an integer >= 0, got -1"),
        ("max_batch_tokens", 0, "backbone.max_batch_tokens must be an integer >= 1, got 0"),
        ("name", "", "backbone.name must be a model name or path"),
    ],
)
def test_backbone_spec_values_are_checked_when_the_spec_is_built(key, value, message):
    with pytest.raises(HybridReasonError, match=message):
        BackboneSpec(**{key: value})


@pytest.mark.parametrize("arch", ["qwen2", "llama", "bert"])
def test_features_equal_full_model_output_hidden_states(tiny, arch):
    text = "input:\n0120\n3300\nab 12"
    full = AutoModel.from_pretrained(tiny[arch]).eval()
    tok = load(tiny[arch]).tokenizer
    with torch.no_grad():
        reference = full(**tok(text, return_tensors="pt"), output_hidden_states=True).hidden_states
    assert len(reference) == NUM_LAYERS + 1
    for k in [*range(NUM_LAYERS + 1), -1, -2, -(NUM_LAYERS + 1)]:
        got = load(tiny[arch], hidden_layer=k).encode([text], [[(0, 1)]], with_tokens=True).tokens[0]
        torch.testing.assert_close(got, reference[k][0], atol=1e-5, rtol=1e-5, msg=f"{arch} layer {k}")
    assert not torch.allclose(reference[1], reference[2])  # the layers differ, so the check can fail


@pytest.mark.parametrize("arch", ["qwen2", "bert"])
def test_layers_above_hidden_layer_are_neither_loaded_nor_run(tiny, arch):
    for k in range(NUM_LAYERS + 1):
        backbone = load(tiny[arch], hidden_layer=k)
        blocks = find_layers(backbone.model, backbone.config.num_hidden_layers)
        assert len(blocks) == max(k, 1)
        calls = []
        for block in blocks:
            block.register_forward_hook(lambda *_, calls=calls: calls.append(1), prepend=True)  # before the capture
        norm = getattr(backbone.model, "norm", None)  # the decoder's final norm runs only for the last layer
        norm_calls = []
        if norm is not None:
            norm.register_forward_hook(lambda *_, seen=norm_calls: seen.append(1))
        backbone.encode(["12 ab", "3"], [[(0, 2)], [(0, 1)]])
        assert len(calls) == k == backbone.num_layers_run, f"layer {k}: {len(calls)} blocks ran"
        if norm is not None:
            assert len(norm_calls) == int(k == NUM_LAYERS)


# ------------------------------------------------------------------------------ frozen
def test_backbone_is_frozen_and_stays_in_eval_mode(tiny):
    backbone = load(tiny["llama"], hidden_layer=2)
    assert all(not p.requires_grad for p in backbone.parameters())
    backbone.train()
    assert backbone.training and not any(m.training for m in backbone.model.modules())
    enc = backbone.encode(["12 ab"], [[(0, 2), None]])
    assert not enc.features.requires_grad and enc.features.dtype == torch.float32
    assert backbone.lora_parameters() == []


# ------------------------------------------------------------------------------ pooling
def test_merged_token_is_shared_by_the_slots_it_covers(tiny):
    backbone = load(tiny["qwen2"], hidden_layer=2)
    text = "12\n7"
    assert backbone.tokenizer.tokenize(text)[0] == "12"
    enc = backbone.encode([text], [[(0, 1), (1, 2), (0, 2), (3, 4), None]], with_tokens=True)
    state_12 = enc.tokens[0, 1]  # token 0 is <s>
    for j in range(3):
        torch.testing.assert_close(enc.features[0, j], state_12)
    torch.testing.assert_close(enc.features[0, 3], enc.tokens[0, 3])
    assert enc.empty[0].tolist() == [False, False, False, False, True]
    assert enc.features[0, 4].abs().sum() == 0


@pytest.mark.parametrize("arch", ["qwen2", "bert"])
def test_pooling_matches_the_definition_on_random_spans(tiny, arch):
    backbone = load(tiny[arch], hidden_layer=3)
    rng = random.Random(0)
    texts = [grid_text(rng, rng.randint(2, 6), rng.randint(2, 9)) + " out: " + grid_text(rng, 2, 3) for _ in range(3)]
    spans = []
    for text in texts:
        row = []
        for _ in range(12):
            s = rng.randrange(len(text))
            row.append(None if rng.random() < 0.2 else (s, min(len(text), s + rng.randint(1, 6))))
        spans.append(row)
    enc = backbone.encode(texts, spans, with_tokens=True)
    for b, text in enumerate(texts):
        expected = brute_force_features(backbone, text, spans[b], enc.tokens[b])
        torch.testing.assert_close(enc.features[b], expected, atol=1e-5, rtol=1e-5)


def test_pooling_is_exact_at_arc_scale(tiny):
    backbone = load(tiny["qwen2"], hidden_layer=1)
    rng = random.Random(1)
    text = grid_text(rng, 30, 30)  # 900 digit slots
    spans = [(r * 31 + c, r * 31 + c + 1) for r in range(30) for c in range(30)]
    text = "\n\n".join([grid_text(rng, 30, 30)] * 3 + [text])  # ~1.5k tokens of context before the slots
    offset = len(text) - (30 * 31 - 1)
    spans = [(s + offset, e + offset) for s, e in spans]
    enc = backbone.encode([text, text], [spans, spans], with_tokens=True)  # speed: `hybrid-reason bench backbone`
    expected = brute_force_features(backbone, text, spans[:60], enc.tokens[0])
    torch.testing.assert_close(enc.features[0, :60], expected, atol=1e-5, rtol=1e-5)


def test_span_errors_name_the_example_and_slot(tiny):
    backbone = Backbone.load(BackboneSpec(name="minilm-l6", hidden_layer=1), cache=False)
    with pytest.raises(ValueError, match=r"example 'ex7' slot 1: span \(5, 6\) \(' '\) overlaps no token"):
        backbone.encode(["a", "hello world"], [[(0, 1), None], [(0, 5), (5, 6)]], names=["ex0", "ex7"])
    with pytest.raises(ValueError, match="example 1 slot 0: span \\(3, 9\\) is not a non-empty range"):
        backbone.encode(["abc", "abcde"], [[(0, 1)], [(3, 9)]])
    with pytest.raises(ValueError, match="different slot counts"):
        backbone.encode(["abc", "abc"], [[(0, 1)], [(0, 1), None]])
    with pytest.raises(ValueError, match="2 texts but 1 slot span lists"):
        backbone.encode(["abc", "abc"], [[(0, 1)]])


# ------------------------------------------------------------------------------ padding, context
@pytest.mark.parametrize("arch", ["qwen2", "llama", "bert"])
def test_right_padded_batch_equals_each_example_alone(tiny, arch):
    backbone = load(tiny[arch], hidden_layer=-1)
    texts = ["1", "0120\n3300\nab 12 cd", "9\n8 7"]
    spans = [[(0, 1), None], [(0, 2), (15, 17)], [(0, 1), (4, 5)]]
    batch = backbone.encode(texts, spans, with_tokens=True)
    for b in range(len(texts)):
        alone = backbone.encode([texts[b]], [spans[b]], with_tokens=True)
        torch.testing.assert_close(batch.features[b], alone.features[0], atol=1e-5, rtol=1e-5)
        n = alone.tokens.shape[1]
        torch.testing.assert_close(batch.tokens[b, :n], alone.tokens[0], atol=1e-5, rtol=1e-5)
        assert batch.token_mask[b].sum() == n and batch.tokens[b, n:].abs().sum() == 0


def test_micro_batches_keep_padding_within_the_token_budget():
    lengths = [100, 40, 30, 30, 5]  # sorted longest first
    assert micro_batches(lengths, None, range(5)) == [[0, 1, 2, 3, 4]]
    assert micro_batches(lengths, 120, range(5)) == [[0], [1, 2, 3], [4]]  # 40 x 3 = 120 fits, 40 x 4 does not
    assert micro_batches(lengths, 50, [7, 8, 9, 10, 11]) == [[7], [8], [9], [10], [11]]  # a row over budget runs alone


@pytest.mark.parametrize("arch", ["qwen2", "bert"])
def test_micro_batched_encode_equals_each_row_alone_and_counts_padding(tiny, arch):
    backbone = load(tiny[arch], hidden_layer=-1)
    rng = random.Random(3)
    texts = [grid_text(rng, rng.randint(1, 8), rng.randint(2, 9)) for _ in range(7)]
    spans = [[(0, 1), None, (len(t) - 1, len(t))] for t in texts]
    lengths = [len(backbone.tokenizer(t)["input_ids"]) for t in texts]
    budget = 2 * max(lengths)  # forces several micro-batches of at most two long rows
    order = sorted(range(len(texts)), key=lambda i: -lengths[i])
    groups = micro_batches([lengths[i] for i in order], budget, order)
    assert 1 < len(groups) < len(texts)
    batched = backbone.encode(texts, spans, with_tokens=True, max_batch_tokens=budget)
    micro = backbone.padded_tokens
    assert backbone.real_tokens == sum(lengths)
    assert micro == sum(len(g) * max(lengths[i] for i in g) for g in groups) <= budget * len(groups)
    assert batched.tokens.shape[1] == max(lengths)
    for b in range(len(texts)):  # every row comes back in its own place, equal to its features alone
        alone = backbone.encode([texts[b]], [spans[b]], with_tokens=True)
        torch.testing.assert_close(batched.features[b], alone.features[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(batched.tokens[b, : lengths[b]], alone.tokens[0], atol=1e-5, rtol=1e-5)
        assert batched.empty[b].tolist() == [False, True, False]
    one_pass = load(tiny[arch], hidden_layer=-1, max_batch_tokens=None)
    one_pass.encode(texts, spans)
    assert one_pass.padded_tokens == len(texts) * max(lengths) > micro  # one pass pads every row to the longest


def test_prompt_longer_than_context_is_rejected_by_name(tmp_path):
    path = tiny_backbone(str(tmp_path / "short"), "llama", max_positions=64)
    backbone = load(path)
    long_text = " ".join(["abc"] * 40)
    n = len(backbone.tokenizer(long_text)["input_ids"])
    assert n > 64
    message = rf"example 'arc/007bbfb7#3' has {n} tokens, more than .*short's context of 64"
    with pytest.raises(ValueError, match=message):
        backbone.encode(["1", long_text], [[(0, 1)], [(0, 1)]], names=["ok", "arc/007bbfb7#3"])
    capped = load(path, max_length=8)
    assert capped.context_length == 8
    n = len(capped.tokenizer("abc abc ab")["input_ids"])
    with pytest.raises(ValueError, match=f"example 0 has {n} tokens, more than .*context of 8"):
        capped.encode(["abc abc ab"], [[(0, 1)]])


# ------------------------------------------------------------------------------ Encoded
def test_encoded_select_cat_replace_and_to():
    def rows(n: int, length: int, value: float) -> Encoded:
        mask = torch.ones(n, length, dtype=torch.bool)
        return Encoded(
            torch.full((n, 3, 2), value), torch.zeros(n, 3, dtype=torch.bool), torch.full((n, length, 2), value), mask
        )

    a, b = rows(3, 4, 1.0), rows(2, 6, 2.0)
    both = Encoded.cat([a, b])
    assert both.tokens.shape == (5, 6, 2)
    assert both.token_mask[:3, 4:].sum() == 0 and both.tokens[:3, 4:].abs().sum() == 0
    picked = both.select([4, 0])
    assert picked.features[:, 0, 0].tolist() == [2.0, 1.0]
    refilled = a.replace([2, 0], b)
    assert refilled.features[:, 0, 0].tolist() == [2.0, 1.0, 2.0] and refilled.tokens.shape[1] == 6
    assert len(refilled.to("cpu")) == 3
    with pytest.raises(ValueError, match="some parts carry token states"):
        Encoded.cat([a, Encoded(a.features, a.empty)])
    with pytest.raises(ValueError, match="3 rows to replace but 2 given"):
        a.replace([0, 1, 2], b)


# ------------------------------------------------------------------------------ identity, dtype, device
def test_identity_fingerprint_and_hidden_size(tiny):
    a = load(tiny["qwen2"], hidden_layer=-2)
    assert a.identity == BackboneIdentity(tiny["qwen2"], None, NUM_LAYERS - 1)
    assert a.hidden_size == 32
    assert a.tokenizer_fingerprint == load(tiny["llama"]).tokenizer_fingerprint
    assert a.tokenizer_fingerprint == tokenizer_fingerprint(tiny_tokenizer())
    minilm = Backbone.load(BackboneSpec(name="minilm-l6"), cache=False)
    assert minilm.tokenizer_fingerprint != a.tokenizer_fingerprint and minilm.hidden_size == 384
    assert len(a.tokenizer_fingerprint) == 16


def test_bfloat16_weights_still_give_float32_features_and_warn_on_cpu(tiny):
    fp32 = load(tiny["qwen2"], hidden_layer=2).encode(["12 ab"], [[(0, 2), (3, 5)]])
    backbone = load(tiny["qwen2"], hidden_layer=2, dtype="bfloat16").to("cpu")
    assert backbone.device == torch.device("cpu") and next(backbone.model.parameters()).dtype == torch.bfloat16
    with pytest.warns(UserWarning, match="runs in bfloat16 on CPU, about 3x slower than float32"):
        bf16 = backbone.encode(["12 ab"], [[(0, 2), (3, 5)]])
    assert bf16.features.dtype == torch.float32
    torch.testing.assert_close(bf16.features, fp32.features, atol=0.1, rtol=0.05)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        backbone.encode(["3"], [[(0, 1)]])  # once is enough
        load(tiny["qwen2"], hidden_layer=2).encode(["3"], [[(0, 1)]])  # float32: no warning


def test_auto_dtype_is_float32_on_cpu_and_bfloat16_on_cuda(tiny):
    assert BackboneSpec().dtype == "auto"
    assert torch_dtype("auto") == torch_dtype("auto", "cpu") == torch.float32
    assert torch_dtype("auto", "cuda:0") == torch.bfloat16 and torch_dtype("bfloat16", "cpu") == torch.bfloat16
    backbone = load(tiny["qwen2"], hidden_layer=2)
    assert backbone.dtype == torch.float32 and "|float32|" in backbone.cache_identity
    if torch.cuda.is_available():  # the device machine: auto follows the backbone to CUDA and back
        backbone.to("cuda")
        assert backbone.dtype == torch.bfloat16 and "|bfloat16|" in backbone.cache_identity
        assert backbone.to("cpu").dtype == torch.float32


def test_minilm_encoder_backbone_works():
    backbone = Backbone.load(BackboneSpec(name="minilm-l6", hidden_layer=3), cache=False)
    assert backbone.num_layers == 6 and backbone.context_length == 512
    text = "the grid is 3 by 3"
    enc = backbone.encode([text], [[(0, 3), (12, 13), None]], with_tokens=True)
    full = AutoModel.from_pretrained(resolve_backbone("minilm-l6")[0]).eval()
    with torch.no_grad():
        reference = full(**backbone.tokenizer(text, return_tensors="pt"), output_hidden_states=True).hidden_states[3]
    torch.testing.assert_close(enc.tokens[0], reference[0], atol=1e-5, rtol=1e-5)
    expected = brute_force_features(backbone, text, [(0, 3), (12, 13)], reference[0])
    torch.testing.assert_close(enc.features[0, :2], expected)


# ------------------------------------------------------------------------------ quantization, LoRA
@pytest.mark.parametrize("quantization", ["4bit", "8bit"])
def test_quantized_backbone_encodes_close_to_fp32(tiny, quantization):
    import bitsandbytes as bnb

    texts, spans = ["0120\n3300\nab 12", "9\n8"], [[(0, 1), (10, 12)], [(0, 1), (2, 3)]]
    reference = load(tiny["llama64"]).encode(texts, spans).features
    backbone = load(tiny["llama64"], quantization=quantization)
    kind = bnb.nn.Linear4bit if quantization == "4bit" else bnb.nn.Linear8bitLt
    assert any(isinstance(m, kind) for m in backbone.model.modules())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        features = backbone.encode(texts, spans).features
    assert features.dtype == torch.float32 and torch.isfinite(features).all()
    cosine = torch.nn.functional.cosine_similarity(features, reference, dim=-1)
    assert cosine.min() > (0.9 if quantization == "4bit" else 0.99), cosine
    with pytest.raises(ValueError, match="quantization must be"):
        load(tiny["llama"], quantization="3bit")


@pytest.mark.parametrize("quantization", [None, "4bit"])
def test_lora_weights_train_and_base_weights_do_not(tiny, quantization):
    backbone = Backbone.load(BackboneSpec(name=tiny["qwen264"], hidden_layer=3, lora_rank=4, quantization=quantization))
    lora = backbone.lora_parameters()
    names = [n for n, p in backbone.named_parameters() if p.requires_grad]
    assert lora and all("lora_" in n for n in names)
    assert {n.split(".")[-4] for n in names} == {"q_proj", "k_proj", "v_proj", "o_proj"}
    backbone.train()
    enc = backbone.encode(["0120\n33 ab"], [[(0, 2), (5, 7)]])
    assert enc.features.requires_grad
    (enc.features**2).sum().backward()
    for name, p in backbone.named_parameters():
        if "lora_B" in name:  # lora_B starts at zero, so lora_A's first gradient is zero: B's is not
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        elif "lora_A" in name:
            assert p.grad is not None, name
        else:
            assert p.grad is None, name
    with torch.no_grad():
        assert not backbone.encode(["12"], [[(0, 2)]]).features.requires_grad  # respects the caller's no_grad


def test_lora_saves_loads_and_bypasses_the_feature_cache(tiny, tmp_path):
    backbone = Backbone.load(BackboneSpec(name=tiny["qwen2"], hidden_layer=3, lora_rank=4))
    with torch.no_grad():
        for p in backbone.lora_parameters():
            p.normal_()
    texts, spans = ["0120\n33 ab"], [[(0, 2), (5, 7)]]
    calls = []
    backbone.model.register_forward_pre_hook(lambda *_: calls.append(1))
    first = backbone.encode(texts, spans).features.detach()
    second = backbone.encode(texts, spans).features.detach()
    assert len(calls) == 2, "with LoRA the features change as it trains: no caching"
    torch.testing.assert_close(first, second)
    backbone.save_lora(str(tmp_path / "lora"))
    reloaded = Backbone.load(BackboneSpec(name=tiny["qwen2"], hidden_layer=3), lora_path=str(tmp_path / "lora"))
    assert reloaded.has_lora and reloaded.lora_parameters()
    torch.testing.assert_close(reloaded.encode(texts, spans).features.detach(), first)
    plain = load(tiny["qwen2"], hidden_layer=3).encode(texts, spans).features
    assert not torch.allclose(plain, first)
    with pytest.raises(ValueError, match="has no LoRA adapter"):
        load(tiny["qwen2"]).save_lora(str(tmp_path / "none"))


# ------------------------------------------------------------------------------ real SmolLM2 (slow)
@pytest.fixture(scope="session")
def smollm2() -> Backbone:
    """The real SmolLM2-135M at layer 12 (the first use dequantizes the GGUF into the user cache)."""
    return Backbone.load(BackboneSpec(name="smollm2-135m", hidden_layer=12), cache=False)


@pytest.mark.slow
def test_smollm2_cache_is_reused(smollm2):
    folder = Path(materialize("smollm2-135m"))
    assert (folder / "model.safetensors").is_file() and (folder / "hybrid_reason_source.json").is_file()
    backbone = Backbone.load(BackboneSpec(name="smollm2-135m", hidden_layer=-1), cache=False)  # load time: README
    assert backbone.num_layers == 30 and backbone.hidden_size == 576 and backbone.context_length == 8192
    assert backbone.tokenizer_fingerprint == smollm2.tokenizer_fingerprint


@pytest.mark.slow
def test_smollm2_cache_equals_the_gguf(smollm2):
    folder, gguf = resolve_backbone("smollm2-135m")
    gguf_tok = AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
    text = "Input:\n0120\n3300\nOutput: {}"
    assert tokenizer_fingerprint(gguf_tok) == smollm2.tokenizer_fingerprint
    assert gguf_tok(text, return_offsets_mapping=True) == smollm2.tokenizer(text, return_offsets_mapping=True)
    gguf_model = AutoModel.from_pretrained(folder, gguf_file=gguf, dtype=torch.float32).eval()
    with torch.no_grad():
        reference = gguf_model(**gguf_tok(text, return_tensors="pt"), output_hidden_states=True).hidden_states[12]
    got = smollm2.encode([text], [[(7, 8)]], with_tokens=True).tokens[0]
    torch.testing.assert_close(got, reference[0], atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_smollm2_digit_slots_read_one_token_each(smollm2):
    rng = random.Random(3)
    grid = grid_text(rng, 5, 7)
    text = "Example input:\n" + grid + "\nTest input:\n" + grid
    start = len(text) - len(grid)
    spans = [(start + i, start + i + 1) for i, ch in enumerate(grid) if ch != "\n"]
    enc = smollm2.encode([text], [spans + [None]], with_tokens=True)
    offsets = smollm2.tokenizer(text, return_offsets_mapping=True)["offset_mapping"]
    index = {tuple(o): t for t, o in enumerate(offsets)}
    for j, span in enumerate(spans):
        assert span in index, f"digit {span} is not a token of its own"
        torch.testing.assert_close(enc.features[0, j], enc.tokens[0, index[span]])
    assert enc.empty[0, -1] and not enc.empty[0, :-1].any()
    # the same grid reads differently after the demonstrations: the features carry context
    assert not torch.allclose(enc.features[0, 0], enc.tokens[0, index[(15, 16)]])


@pytest.mark.slow
def test_smollm2_context_error_names_the_example(smollm2):
    text = "0 " * 8200
    message = r"example 'arc/007bbfb7#3' has \d+ tokens, more than smollm2-135m's context of 8192"
    with pytest.raises(ValueError, match=message):
        smollm2.encode([text], [[(0, 1)]], names=["arc/007bbfb7#3"])
