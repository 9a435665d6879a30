"""The frozen backbone: HF language models loaded by name, truncated at a layer, span-pooled into slot features;
``none``: no LLM, the symbols themselves (``SymbolBackbone``)."""

from .backbone import Backbone, BackboneIdentity
from .encoded import Encoded, pool_spans
from .feature_cache import FeatureCache
from .loading import (
    TOKENIZER_FOLDER,
    BackboneSpec,
    cache_root,
    materialize,
    resolve_backbone,
    resolve_layer,
    tokenizer_fingerprint,
)
from .symbols import NO_LLM, SymbolBackbone

__all__ = [
    "Backbone",
    "BackboneIdentity",
    "BackboneSpec",
    "Encoded",
    "FeatureCache",
    "TOKENIZER_FOLDER",
    "cache_root",
    "materialize",
    "pool_spans",
    "resolve_backbone",
    "resolve_layer",
    "tokenizer_fingerprint",
    "NO_LLM",
    "SymbolBackbone",
]
