"""FeatureCache: keys, LRU eviction by bytes, disk round trip, and Backbone.encode running only misses."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from hybrid_reason.backbone import Backbone, BackboneSpec
from hybrid_reason.backbone.feature_cache import FeatureCache, entry_nbytes
from hybrid_reason.utils.testing import tiny_backbone


def entry(value: float, slots: int = 4, d: int = 8) -> dict[str, torch.Tensor]:
    """A cache entry of (slots * d + slots) float32/bool values."""
    return {"features": torch.full((slots, d), value), "empty": torch.zeros(slots, dtype=torch.bool)}


# ------------------------------------------------------------------------------ the cache alone
def test_key_depends_on_every_part():
    base = ("tiny@None|None|float32|tok=ab", 3, "12\n34", [(0, 1), None])
    key = FeatureCache.make_key(*base)
    assert key == FeatureCache.make_key(*base) and len(key) == 64
    assert key == FeatureCache.make_key(base[0], 3, "12\n34", [[0, 1], None])  # lists and tuples alike
    variants = [
        ("other", 3, "12\n34", [(0, 1), None]),
        (base[0], 2, "12\n34", [(0, 1), None]),
        (base[0], 3, "12\n35", [(0, 1), None]),
        (base[0], 3, "12\n34", [(0, 2), None]),
        (base[0], 3, "12\n34", [(0, 1), (1, 2)]),
        (base[0], 3, "12\n34", [(0, 1)]),
    ]
    assert len({FeatureCache.make_key(*v) for v in variants} | {key}) == len(variants) + 1


def test_lru_evicts_least_recently_used_under_the_byte_bound():
    size = entry_nbytes(entry(0.0))
    assert size == 4 * 8 * 4 + 4
    cache = FeatureCache(max_bytes=3 * size)
    for i in range(3):
        cache.put(f"k{i}", entry(float(i)))
    assert cache.get("k0")["features"][0, 0] == 0.0  # k0 is now the most recent: k1 is the oldest
    cache.put("k3", entry(3.0))
    assert "k1" not in cache and all(k in cache for k in ("k0", "k2", "k3"))
    assert cache.nbytes == 3 * size <= cache.max_bytes and len(cache) == 3
    cache.put("big", entry(9.0, slots=40))  # larger than the whole bound: not kept, nothing evicted
    assert "big" not in cache and len(cache) == 3
    cache.put("k2", entry(2.5))  # replacing an entry does not double count it
    assert cache.nbytes == 3 * size and cache.get("k2")["features"][0, 0] == 2.5
    assert cache.get("k1") is None and cache.hits == 2 and cache.misses == 1
    with pytest.raises(ValueError, match="max_bytes must be >= 0"):
        FeatureCache(max_bytes=-1)


def test_put_copies_so_callers_cannot_corrupt_entries():
    cache = FeatureCache()
    value = entry(1.0)
    cache.put("k", value)
    value["features"].fill_(7.0)
    assert cache.get("k")["features"].max() == 1.0


def test_disk_round_trip_survives_a_new_process_cache(tmp_path):
    first = FeatureCache(max_bytes=0, directory=tmp_path / "features")  # memory bound 0: disk only
    stored = {**entry(1.5), "tokens": torch.randn(11, 8)}
    stored["empty"][2] = True
    key = FeatureCache.make_key("b", 1, "text", [(0, 1)])
    first.put(key, stored)
    assert len(first) == 0 and key in first
    assert sorted(os.listdir(tmp_path / "features")) == [f"{key}.safetensors"]  # no temp file left behind
    second = FeatureCache(directory=tmp_path / "features")
    loaded = second.get(key)
    assert set(loaded) == {"features", "empty", "tokens"} and loaded["empty"].dtype == torch.bool
    for name in stored:
        torch.testing.assert_close(loaded[name], stored[name])
    assert len(second) == 1 and second.hits == 1  # now also in memory
    assert FeatureCache(directory=tmp_path / "features").get("0" * 64) is None


# ------------------------------------------------------------------------------ with a backbone
@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory) -> str:
    return tiny_backbone(str(tmp_path_factory.mktemp("tiny") / "qwen2"), "qwen2", num_layers=3)


def counting(backbone: Backbone) -> list[int]:
    """Batch sizes of every model forward the backbone runs."""
    sizes: list[int] = []
    backbone.model.register_forward_pre_hook(
        lambda m, args, kwargs: sizes.append(kwargs["input_ids"].shape[0]), with_kwargs=True
    )
    return sizes


TEXTS = ["0120\n3300", "12 ab\n7", "9\n8 7 6"]
SPANS = [[(0, 2), (5, 6), None], [(0, 1), (1, 2), (6, 7)], [(0, 1), (2, 3), None]]


def test_encode_runs_only_the_examples_not_cached(tiny_path):
    backbone = Backbone.load(BackboneSpec(name=tiny_path, hidden_layer=2), cache=FeatureCache())
    sizes = counting(backbone)
    fresh = backbone.encode(TEXTS[:2], SPANS[:2])
    assert sizes == [2]
    again = backbone.encode(TEXTS[:2], SPANS[:2])
    assert sizes == [2], "a frozen backbone never encodes the same text twice"
    torch.testing.assert_close(again.features, fresh.features)
    mixed = backbone.encode([TEXTS[2], TEXTS[0], TEXTS[2]], [SPANS[2], SPANS[0], SPANS[2]])
    assert sizes == [2, 1], "only the one new example runs, once even if it appears twice"
    reference = Backbone.load(BackboneSpec(name=tiny_path, hidden_layer=2), cache=False).encode(TEXTS, SPANS)
    torch.testing.assert_close(mixed.features, reference.features[[2, 0, 2]], atol=1e-5, rtol=1e-5)
    assert mixed.empty.tolist() == reference.empty[[2, 0, 2]].tolist()


def test_tokens_are_cached_when_asked_and_padded_on_return(tiny_path):
    backbone = Backbone.load(BackboneSpec(name=tiny_path, hidden_layer=-1))
    sizes = counting(backbone)
    backbone.encode(TEXTS[:1], SPANS[:1])
    with_tokens = backbone.encode(TEXTS, SPANS, with_tokens=True)  # the first entry lacks tokens: re-run
    assert sizes == [1, 3]
    again = backbone.encode(TEXTS, SPANS, with_tokens=True)
    assert sizes == [1, 3]
    torch.testing.assert_close(again.tokens, with_tokens.tokens)
    assert again.token_mask.tolist() == with_tokens.token_mask.tolist()
    assert backbone.encode(TEXTS[1:2], SPANS[1:2]).tokens is None and sizes == [1, 3]


def test_cache_key_separates_layers_and_spans(tiny_path):
    cache = FeatureCache()
    low = Backbone.load(BackboneSpec(name=tiny_path, hidden_layer=1), cache=cache)
    high = Backbone.load(BackboneSpec(name=tiny_path, hidden_layer=2), cache=cache)
    a = low.encode(TEXTS[:1], SPANS[:1]).features
    b = high.encode(TEXTS[:1], SPANS[:1]).features
    assert not torch.allclose(a, b) and len(cache) == 2
    moved = low.encode(TEXTS[:1], [[(1, 2), (5, 6), None]]).features
    assert not torch.allclose(moved[0, 0], a[0, 0]) and len(cache) == 3


def test_disk_cache_is_shared_across_backbone_instances(tiny_path, tmp_path):
    first = Backbone.load(BackboneSpec(name=tiny_path, hidden_layer=2), cache=FeatureCache(directory=tmp_path))
    expected = first.encode(TEXTS, SPANS).features
    second = Backbone.load(BackboneSpec(name=tiny_path, hidden_layer=2), cache=FeatureCache(directory=tmp_path))
    sizes = counting(second)
    torch.testing.assert_close(second.encode(TEXTS, SPANS).features, expected)
    assert sizes == [] and len(os.listdir(tmp_path)) == len(TEXTS)


def test_no_cache_means_every_call_runs(tiny_path):
    backbone = Backbone.load(BackboneSpec(name=tiny_path), cache=False)
    sizes = counting(backbone)
    backbone.encode(TEXTS, SPANS)
    backbone.encode(TEXTS, SPANS)
    assert backbone.cache is None and sizes == [3, 3]
