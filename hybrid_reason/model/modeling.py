"""HybridReasoner: a frozen LM's slot features -> adapter -> recursive core -> answer and halt heads.

The frozen backbone is *not* a submodule: its weights are never saved, trained, moved by DDP or
switched to train mode. The model keeps a pointer to it in ``config.backbone`` and loads it on
first use (``model.backbone``), so ``from_pretrained`` rebuilds it from the pointer. Only the
trainable parts (adapter, resampler or puzzle-ID table, core, heads) live in the state dict.

Joint LoRA (``config.backbone["lora_rank"] > 0``): the backbone is built at once, and its peft LoRA
adapters (never its frozen weights) are registered as ``backbone_lora``, a tree of ModuleDicts that
mirrors the adapted layers' paths (``backbone_lora.layers.0.self_attn.q_proj.lora_A.default.weight``).
They are the same module objects the backbone's forward runs, so the optimizer, DDP, an EMA and the
state dict see exactly the adapter. ``save_pretrained`` also writes them in peft format to
``backbone_lora/``; ``from_pretrained`` reads them from the state dict.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from transformers import PreTrainedModel
from transformers.utils import ModelOutput

from ..backbone.backbone import Backbone
from ..backbone.encoded import Encoded
from ..errors import HybridReasonError
from .configuration import HybridReasonerConfig
from .core import Carry, RecursiveCore, init_module_, rms_norm, trunc_normal_
from .losses import deep_supervision_loss
from .remote_code import AUTO_MAP, write_remote_code

LORA_FOLDER = "backbone_lora"


@dataclass
class HybridReasonerOutput(ModelOutput):
    """One supervision step's result.

    loss: mean over the batch of [CE + halt_weight * halt BCE] (when labels were given).
    logits: [B, S, V] answer logits per slot. halt_logits: [B] (> 0 means halt).
    carry: the detached (y, z) to pass to the next step. encoded: the backbone features used.
    exact: [B] whole-answer correctness (when labels were given).
    """

    loss: Tensor | None = None
    logits: Tensor | None = None
    halt_logits: Tensor | None = None
    carry: Carry | None = None
    encoded: Encoded | None = None
    exact: Tensor | None = None


class Adapter(nn.Module):
    """Slot features [B, S, d_llm] -> core inputs [B, S, d]: Linear of the RMS-normalised feature,
    a learned embedding in place of empty slots, plus a learned slot position embedding."""

    def __init__(self, d_llm: int, d: int, num_slots: int, eps: float):
        super().__init__()
        self.eps = eps
        self.proj = nn.Linear(d_llm, d, bias=False)
        self.empty = nn.Parameter(torch.empty(d))
        self.position = nn.Parameter(torch.empty(num_slots, d))

    def forward(self, features: Tensor, empty: Tensor) -> Tensor:
        x = self.proj(rms_norm(features.to(self.proj.weight.dtype), self.eps))
        x = torch.where(empty.unsqueeze(-1), self.empty.to(x.dtype), x)
        return x + self.position.to(x.dtype)


class Resampler(nn.Module):
    """K learned queries attend over all prompt-token states and become K prefix slots. They carry
    the task's demonstrations to the core in place of TRM's per-task ID embedding."""

    def __init__(self, d_llm: int, d: int, num_queries: int, num_heads: int, eps: float):
        super().__init__()
        self.eps = eps
        self.queries = nn.Parameter(torch.empty(num_queries, d))
        self.attn = nn.MultiheadAttention(d, num_heads, kdim=d_llm, vdim=d_llm, batch_first=True)

    def forward(self, tokens: Tensor, token_mask: Tensor) -> Tensor:
        kv = rms_norm(tokens.to(self.queries.dtype), self.eps)
        # laid out sequence-first in memory, as the attention reads it: the same values, and under
        # vmap (tasks adapted together) its key/value projections stay batched matmuls, not one per token
        kv = kv.transpose(0, 1).contiguous().transpose(0, 1)
        q = self.queries.unsqueeze(0).expand(tokens.shape[0], -1, -1)
        out, _ = self.attn(q, kv, kv, key_padding_mask=~token_mask, need_weights=False)
        return rms_norm(q + out, self.eps)


class PuzzleEmbedding(nn.Module):
    """TRM's per-task ID table [num_ids, d]: zero-initialised, and a persistent *buffer*, not a
    parameter, as in TRM. The dense optimiser never sees it, and an EMA that averages parameters
    only (Lightning's ``EMAWeightAveraging(use_buffers=False)``) copies it instead of averaging it.

    In training with grad, ``forward`` returns the batch's rows as a fresh leaf tensor and keeps it
    (``rows``, ``ids``). After backward, TRM's sparse sign-SGD reads ``rows.grad`` and updates only
    those rows of the table (``hybrid_reason.training.sign_sgd``).
    """

    def __init__(self, num_ids: int, d: int):
        super().__init__()
        self.register_buffer("weight", torch.zeros(num_ids, d))
        self.rows: Tensor | None = None
        self.ids: Tensor | None = None

    def forward(self, ids: Tensor) -> Tensor:
        """Rows of ``ids`` [B] -> [B, d] (a leaf that collects the gradient when training)."""
        rows = self.weight[ids]
        if self.training and torch.is_grad_enabled():
            rows = rows.detach().requires_grad_(True)
            self.rows, self.ids = rows, ids.detach()
        return rows


class HybridReasoner(PreTrainedModel):
    """A TRM recursive core reasoning over a frozen LLM's hidden states (see module docstring)."""

    config_class = HybridReasonerConfig
    base_model_prefix = "hybrid_reason"
    main_input_name = "texts"
    supports_gradient_checkpointing = False

    def __init__(self, config: HybridReasonerConfig, backbone_model: Backbone | None = None):
        super().__init__(config)
        self.__dict__["_backbone"] = None  # kept out of the module tree on purpose
        joint_lora = config.backbone_spec.lora_rank > 0
        if backbone_model is not None:  # (not `backbone=`: from_pretrained would read it as config.backbone)
            self.attach_backbone(backbone_model)
        elif config.backbone_hidden_size is None or joint_lora:  # joint LoRA: its adapters must exist now
            self.attach_backbone(_build_backbone(config.backbone_spec))
        core_cfg = config.core_config
        d, d_llm = core_cfg.d_model, config.backbone_hidden_size
        self.adapter = Adapter(d_llm, d, config.num_slots, core_cfg.norm_eps)
        self.resampler = None
        if config.num_context_slots:
            self.resampler = Resampler(d_llm, d, config.num_context_slots, core_cfg.num_heads, core_cfg.norm_eps)
        self.puzzle_emb = PuzzleEmbedding(config.num_puzzle_ids, d) if config.num_puzzle_ids else None
        self.core = RecursiveCore(core_cfg, config.seq_len)
        self.answer_head = nn.Linear(d, config.answer_vocab_size, bias=False)
        self.halt_head = nn.Linear(d, 1)
        self.backbone_lora = _lora_tree(self._backbone) if joint_lora else None  # last: older orders unchanged
        if self.backbone_lora is not None:
            self.backbone_lora.train(self.training)  # (the backbone set them to eval; no dropout: mode is moot)
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """TRM's initialisation: truncated LeCun Linear layers, halt head 0 / -5, zero ID table; the
        backbone's LoRA adapters keep peft's initialisation (B = 0: the adapted backbone starts as the base)."""
        if self.backbone_lora is not None and any(module is m for m in self.backbone_lora.modules()):
            return
        if module is self.halt_head:
            for p, value in ((module.weight, 0.0), (module.bias, -5.0)):
                if not getattr(p, "_is_hf_initialized", False):
                    p.fill_(value)
            return
        init_module_(module)
        d = self.config.core_config.d_model
        if isinstance(module, Adapter):
            trunc_normal_(module.empty, 1.0)
            trunc_normal_(module.position, 1.0 / math.sqrt(d))
        elif isinstance(module, Resampler):
            trunc_normal_(module.queries, 1.0)
        elif isinstance(module, PuzzleEmbedding) and not getattr(module.weight, "_is_hf_initialized", False):
            module.weight.zero_()  # TRM's puzzle-ID table starts at zero

    # ---------------------------------------------------------------- backbone
    @property
    def backbone(self) -> Backbone:
        """The frozen backbone, loaded from ``config.backbone`` on first use (with its LoRA, if saved)."""
        if self._backbone is None:
            lora_dir = os.path.join(self.name_or_path or "", LORA_FOLDER)
            spec = self.config.backbone_spec
            self.attach_backbone(Backbone.load(spec, lora_path=lora_dir if os.path.isdir(lora_dir) else None))
        return self._backbone

    def attach_backbone(self, backbone: Backbone) -> None:
        """Use ``backbone``; record its shape, or check it matches the one this model was trained on.
        A model whose LoRA adapters are in its module tree (joint LoRA) keeps the backbone they adapt."""
        cfg = self.config
        if getattr(self, "backbone_lora", None) is not None and backbone is not self._backbone:
            raise HybridReasonError(
                f"this model trains LoRA on its backbone (backbone.lora_rank {cfg.backbone_spec.lora_rank}): its "
                f"adapters live in the model, so its backbone cannot be replaced by {backbone.identity.name!r}"
            )
        if cfg.backbone_hidden_size not in (None, backbone.hidden_size):
            raise HybridReasonError(
                f"backbone {backbone.identity!r} has hidden size {backbone.hidden_size}, but this model was "
                f"trained on one of hidden size {cfg.backbone_hidden_size} (config.backbone_hidden_size)"
            )
        if cfg.backbone_tokenizer not in (None, backbone.tokenizer_fingerprint):
            raise HybridReasonError(
                f"backbone {backbone.identity!r} has tokenizer {backbone.tokenizer_fingerprint}, but this model was "
                f"trained with tokenizer {cfg.backbone_tokenizer} (config.backbone_tokenizer)"
            )
        cfg.backbone_hidden_size = backbone.hidden_size
        cfg.backbone_tokenizer = backbone.tokenizer_fingerprint
        self.__dict__["_backbone"] = backbone

    def encode(self, texts: list[str], slot_spans: list, names: list[str] | None = None) -> Encoded:
        """Run the backbone on texts and pool slot features, on this model's device."""
        device = self.answer_head.weight.device
        backbone = self.backbone
        if backbone.device != device:
            backbone.to(device)
        encoded = backbone.encode(texts, slot_spans, with_tokens=self.resampler is not None, names=names)
        return encoded.to(device)

    def save_pretrained(self, save_directory, *args, **kwargs):
        """Save config + trainable weights and the model's code (for ``trust_remote_code``); with LoRA on
        the backbone, its adapter goes to a subfolder."""
        self.config.auto_map = dict(AUTO_MAP)
        super().save_pretrained(save_directory, *args, **kwargs)
        write_remote_code(save_directory)
        if self._backbone is not None and self._backbone.has_lora:
            self._backbone.save_lora(os.path.join(save_directory, LORA_FOLDER))

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """``PreTrainedModel.from_pretrained`` (``AutoModel`` comes here too); a local folder is checked
        first (``check_saved_model``): a damaged weights file, or a config whose sizes disagree with the
        weights, is a one-line ``HybridReasonError`` naming the folder and the tensor. With joint LoRA the
        backbone is loaded first and passed on as ``backbone_model`` (the model is built on the meta device)."""
        folder = os.fspath(pretrained_model_name_or_path)
        config = kwargs.get("config")
        config = config if isinstance(config, HybridReasonerConfig) else None
        if os.path.isdir(folder) and not kwargs.get("subfolder") and not kwargs.get("ignore_mismatched_sizes"):
            config = check_saved_model(folder, config)
        if kwargs.get("backbone_model") is None:  # joint LoRA: the backbone must be real before the weights load
            hub = {
                k: kwargs[k] for k in ("revision", "subfolder", "cache_dir", "local_files_only", "token") if k in kwargs
            }
            config = config or cls.config_class.from_pretrained(folder, **hub)
            if config.backbone_spec.lora_rank > 0:  # (from_pretrained builds the model on the meta device)
                kwargs["backbone_model"] = _build_backbone(config.backbone_spec, real=True)
        return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)

    # ---------------------------------------------------------------- forward
    def embed(self, encoded: Encoded, puzzle_ids: Tensor | None = None) -> Tensor:
        """Core input x [B, prefix + S, d]: optional prefix (context slots or puzzle ID), then slots.

        Scale of the puzzle-ID prefix: TRM concatenates [ID row, zeros, token embeddings] and multiplies
        the whole sequence by sqrt(d); its token embeddings have std 1/sqrt(d), so its inputs have unit
        scale per element and its ID row enters as sqrt(d) x row. Our slot inputs already have that unit
        scale (the adapter is an RMS-normalised input through a LeCun-normal Linear: it stands for TRM's
        *scaled* embedding), so scaling them again would make them sqrt(d) times too large. Only the ID
        row is multiplied by sqrt(d): the core sees exactly TRM's [sqrt(d) row, 0, unit-scale inputs], and
        the table's sign-SGD steps (lr 1e-2 in table units) move the input by sqrt(d) x 1e-2, as in TRM.
        """
        x = self.adapter(encoded.features, encoded.empty)
        if self.resampler is not None:
            if encoded.tokens is None:
                raise ValueError("this model reads context slots: encode with with_tokens=True")
            x = torch.cat([self.resampler(encoded.tokens, encoded.token_mask).to(x.dtype), x], dim=1)
        elif self.puzzle_emb is not None:
            if puzzle_ids is None:
                raise ValueError("this model has a puzzle-ID embedding (num_puzzle_ids > 0): pass puzzle_ids")
            prefix = x.new_zeros(x.shape[0], self.config.puzzle_prefix_len, x.shape[-1])
            prefix[:, 0] = math.sqrt(x.shape[-1]) * self.puzzle_emb(puzzle_ids).to(x.dtype)
            x = torch.cat([prefix, x], dim=1)
        return x

    def initial_carry(self, batch_size: int) -> Carry:
        """The carry a fresh example starts from."""
        return self.core.initial_carry(batch_size, self.config.seq_len)

    def forward(
        self,
        texts: list[str] | None = None,
        slot_spans: list | None = None,
        encoded: Encoded | None = None,
        labels: Tensor | None = None,
        carry: Carry | None = None,
        puzzle_ids: Tensor | None = None,
        names: list[str] | None = None,
    ) -> HybridReasonerOutput:
        """One supervision step: (encode) -> embed -> deep recursion -> heads (-> loss).

        Give either ``texts`` + ``slot_spans`` (the backbone encodes them) or ``encoded`` features.
        ``carry`` defaults to the initial carry. ``labels`` [B, S] (-100 = ignored) adds the loss.
        """
        if encoded is None:
            if texts is None or slot_spans is None:
                raise ValueError("forward needs texts and slot_spans, or encoded features")
            encoded = self.encode(texts, slot_spans, names)
        x = self.embed(encoded, puzzle_ids)
        if carry is None:
            carry = self.initial_carry(x.shape[0])
        carry, y = self.core.deep_recursion(x, Carry(carry.y.to(x.dtype), carry.z.to(x.dtype)))
        logits = self.answer_head(y[:, self.config.num_prefix :])
        halt_logits = self.halt_head(y[:, 0]).squeeze(-1)
        loss = exact = None
        if labels is not None:
            total, parts = deep_supervision_loss(
                logits, halt_logits, labels.to(logits.device), self.config.loss, self.config.halt_loss_weight
            )
            loss, exact = total / logits.shape[0], parts["exact"]
        return HybridReasonerOutput(loss, logits, halt_logits, carry, encoded, exact)

    @torch.no_grad()
    def iterate(
        self,
        encoded: Encoded,
        steps: int | None = None,
        puzzle_ids: Tensor | None = None,
        initial: Carry | None = None,
    ) -> Iterator[HybridReasonerOutput]:
        """Run ``steps`` supervision steps (default N_sup) from ``initial`` (default: the initial carry),
        yielding each step's output: evaluation runs them all, and accuracy against step is the
        test-time compute curve. A perturbed ``initial`` [B, S', d] starts parallel trajectories."""
        carry = initial
        for _ in range(steps or self.config.halt_max_steps):
            out = self.forward(encoded=encoded, carry=carry, puzzle_ids=puzzle_ids)
            carry = out.carry
            yield out


# ------------------------------------------------------------------------- joint LoRA
def _build_backbone(spec, real: bool = False) -> Backbone:
    """The backbone of ``spec``: loaded (uncached with LoRA, whose features change as it trains), or,
    with LoRA on the meta device (shape checks, ``from_pretrained``'s empty model), unless ``real``,
    its weightless skeleton."""
    if spec.lora_rank > 0 and not real and torch.get_default_device().type == "meta":
        return Backbone.skeleton(spec)
    return Backbone.load(spec, cache=spec.lora_rank == 0)


def _lora_tree(backbone: Backbone) -> nn.ModuleDict:
    """The backbone's LoRA adapters as nested ModuleDicts along their layers' paths (the same module
    objects its forward runs: registering them puts exactly the adapter in the module tree)."""
    layer = backbone.layer
    if layer == 0:
        raise HybridReasonError(
            "backbone.lora_rank > 0 needs backbone.hidden_layer >= 1: at layer 0 (the embeddings) no adapted layer runs"
        )
    adapters = backbone.lora_modules()
    if not adapters:
        raise HybridReasonError(f"backbone {backbone.identity.name!r} has no LoRA adapters (backbone.lora_targets)")
    root = nn.ModuleDict()
    for path, modules in adapters.items():
        *parents, leaf = path.split(".")
        node = root
        for part in parents:
            if part not in node:
                node[part] = nn.ModuleDict()
            node = node[part]
        node[leaf] = modules
    return root


# ------------------------------------------------------------------------- checking a saved folder
WEIGHTS_FILE = "model.safetensors"


def check_saved_model(folder: str | os.PathLike, config: HybridReasonerConfig | None = None) -> HybridReasonerConfig:
    """Check a saved HybridReasoner folder without reading any tensor data: ``config.json`` is a valid
    hybrid_reason config, ``model.safetensors`` is complete, and every tensor has the shape that the
    config (or ``config``) implies. Returns the config; a problem is a one-line ``HybridReasonError``
    naming the folder and, for weights, the tensor."""
    folder = os.fspath(folder)
    config = config or read_saved_config(folder)
    if config.backbone_hidden_size is None:
        raise HybridReasonError(
            f"{folder}: config.json has no backbone_hidden_size, so it was not saved by HybridReasoner"
        )
    saved = _saved_shapes(folder)
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        expected = {k: tuple(v.shape) for k, v in HybridReasoner(config).state_dict().items()}
    for name, shape in expected.items():
        if name not in saved:
            raise HybridReasonError(f"{folder}: {WEIGHTS_FILE} lacks tensor {name} (shape {list(shape)})")
        if saved[name] != shape:
            raise HybridReasonError(
                f"{folder}: tensor {name} has shape {list(saved[name])} in {WEIGHTS_FILE}, "
                f"but config.json implies {list(shape)}"
            )
    extra = sorted(set(saved) - set(expected))
    if extra:
        raise HybridReasonError(
            f"{folder}: {WEIGHTS_FILE} has tensor {extra[0]}, which config.json's model does not have"
        )
    return config


def read_saved_config(folder: str) -> HybridReasonerConfig:
    """A saved folder's ``config.json`` as a HybridReasonerConfig (one-line errors naming the file)."""
    path = os.path.join(folder, "config.json")
    if not os.path.isfile(path):
        raise HybridReasonError(f"{folder} is not a saved HybridReasoner folder (no config.json)")
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise HybridReasonError(f"{path} is not a readable JSON file ({err})") from None
    model_type = raw.get("model_type") if isinstance(raw, dict) else None
    if model_type != HybridReasonerConfig.model_type:
        raise HybridReasonError(f"{path}: model_type is {model_type!r}, not {HybridReasonerConfig.model_type!r}")
    try:
        return HybridReasonerConfig.from_dict(raw)
    except (TypeError, ValueError) as err:  # HybridReasonError included: prefix the file
        raise HybridReasonError(f"{path}: {err}") from None


def _saved_shapes(folder: str) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape from the safetensors header (which also proves the file is complete)."""
    from safetensors import SafetensorError, safe_open

    path = os.path.join(folder, WEIGHTS_FILE)
    if not os.path.isfile(path):
        raise HybridReasonError(f"{folder}: no {WEIGHTS_FILE}")
    try:
        with safe_open(path, framework="pt") as f:
            return {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}
    except (SafetensorError, OSError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise HybridReasonError(f"{path} is damaged or not a safetensors file ({reason})") from None
