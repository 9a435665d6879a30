"""hybrid_reason: recursive reasoning (TRM) in a frozen LLM's latent space.

Importing the package registers ``HybridReasonerConfig`` / ``HybridReasoner`` with transformers'
AutoConfig / AutoModel; a saved model folder carries the model's code (``model/remote_code.py``), so a saved model loads with
``AutoModel.from_pretrained(path)`` here and ``AutoModel.from_pretrained(path, trust_remote_code=True)``
in a process that never imported hybrid_reason.
"""

from transformers import AutoConfig, AutoModel

from .backbone import Backbone, BackboneSpec, Encoded
from .model.configuration import HybridReasonerConfig
from .model.core import Carry, CoreConfig, RecursiveCore
from .model.modeling import HybridReasoner, HybridReasonerOutput

AutoConfig.register(HybridReasonerConfig.model_type, HybridReasonerConfig, exist_ok=True)
AutoModel.register(HybridReasonerConfig, HybridReasoner, exist_ok=True)

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
