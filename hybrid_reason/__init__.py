"""hybrid_reason: recursive reasoning (TRM) in a frozen LLM's latent space.

Importing the package registers ``HybridReasonerConfig`` / ``HybridReasoner`` with transformers'
AutoConfig / AutoModel, and marks them for ``trust_remote_code`` export, so a saved model loads with
``AutoModel.from_pretrained(path)`` here and ``AutoModel.from_pretrained(path, trust_remote_code=True)``
in a process that never imported hybrid_reason.
"""

from transformers import AutoConfig, AutoModel

from .backbone import Backbone, BackboneSpec, Encoded
from .configuration import HybridReasonerConfig
from .core import Carry, CoreConfig, RecursiveCore
from .modeling import HybridReasoner, HybridReasonerOutput

AutoConfig.register(HybridReasonerConfig.model_type, HybridReasonerConfig, exist_ok=True)
AutoModel.register(HybridReasonerConfig, HybridReasoner, exist_ok=True)
HybridReasonerConfig.register_for_auto_class()
HybridReasoner.register_for_auto_class("AutoModel")

__all__ = [
    "Backbone",
    "BackboneSpec",
    "Carry",
    "CoreConfig",
    "Encoded",
    "HybridReasoner",
    "HybridReasonerConfig",
    "HybridReasonerOutput",
    "RecursiveCore",
]
