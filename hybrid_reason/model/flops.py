"""FLOP and memory model of a hybrid reasoner: the frozen backbone read at ``hidden_layer`` and one
supervision step of the trainable part (adapter, resampler, recursive core, heads). Pure arithmetic
from configs: nothing here builds a module or loads a weight.

Conventions (those of ``torch.utils.flop_counter.FlopCounterMode``, which the tests hold this model to):

* a multiply-add counts 2 FLOPs and only matmuls count: norms, softmax, activations, RoPE, bias adds
  and the loss are free;
* attention scores count the full square, 2·q·k·width for QKᵀ and as much for AV, causal models
  included (eager and math kernels compute all of it; a causal flash kernel skips about half);
* backward = 2 x forward for a matmul whose input needs a gradient (input grad + weight grad) and
  1 x where only its weight does: the adapter and the resampler's key/value projections, whose
  inputs come from the frozen backbone. A flash kernel's recomputation of the scores is not counted
  (model FLOPs, as MFU is defined).

Memory is in bytes. ``BackboneShape.peak_activation_bytes`` is the high-water mark of a no-grad
forward (the MLP of a layer with SDPA attention, which keeps no score matrix);
``core_activation_bytes`` is what one supervision step saves for backward (the last (n + 1)·L block
calls, the adapter, resampler and heads), with the efficient/flash SDPA kernels that CUDA uses.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..backbone.loading import resolve_layer
from ..errors import HybridReasonError
from .core import CoreConfig, swiglu_width

ENCODER_TYPES = frozenset({"bert", "roberta", "xlm-roberta", "camembert", "electra"})
_MOE_KEYS = ("num_experts", "num_local_experts", "n_routed_experts")
# bytes per weight of a quantized nn.Linear (bitsandbytes): nf4 + one fp32 absmax per 64 weights; int8
QUANT_BYTES = {"4bit": 0.5 + 4 / 64, "8bit": 1.0}
DTYPE_BYTES = {"float32": 4, "float": 4, "bfloat16": 2, "float16": 2, "half": 2, "float64": 8}


def dtype_bytes(name: str) -> int:
    """Bytes per element of a torch dtype name ("bfloat16" -> 2)."""
    if name not in DTYPE_BYTES:
        raise HybridReasonError(f"dtype {name!r}: expected one of {', '.join(DTYPE_BYTES)}")
    return DTYPE_BYTES[name]


# ================================================================================ backbone
@dataclass(frozen=True)
class BackboneShape:
    """The shapes of a HF decoder (Llama-like: gated MLP, RMSNorm, RoPE) or BERT-like encoder that
    FLOPs and memory depend on, cut at ``layers_run`` (the absolute ``hidden_layer``)."""

    model_type: str
    hidden_size: int
    num_layers: int
    layers_run: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    encoder: bool = False  # BERT-like: GELU MLP (2 matrices), LayerNorm, biases, learned positions
    qkv_bias: bool = False
    max_positions: int | None = None
    extra_embeddings: int = 0  # learned position and token-type rows (encoders)

    @classmethod
    def from_config(cls, config, hidden_layer: int = -1) -> BackboneShape:
        """Read a HF config (``AutoConfig``); ``hidden_layer`` as in ``BackboneSpec``."""
        config = config.get_text_config() if hasattr(config, "get_text_config") else config
        kind = str(getattr(config, "model_type", "?"))
        if any(getattr(config, key, 0) for key in _MOE_KEYS):
            raise HybridReasonError(f"backbone config {kind!r}: mixture-of-experts models are not modelled")
        need = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size")
        missing = [k for k in need if getattr(config, k, None) is None]
        if missing:
            raise HybridReasonError(
                f"backbone config {kind!r} lacks {', '.join(missing)}: not a Llama- or BERT-like model"
            )
        d, heads, layers = int(config.hidden_size), int(config.num_attention_heads), int(config.num_hidden_layers)
        try:
            run = resolve_layer(hidden_layer, layers)
        except ValueError as err:
            raise HybridReasonError(f"model.backbone.hidden_layer: {err}") from None
        encoder = kind in ENCODER_TYPES
        extra = 0
        if encoder:
            extra = int(getattr(config, "max_position_embeddings", 0)) + int(getattr(config, "type_vocab_size", 0))
        return cls(
            model_type=kind, hidden_size=d, num_layers=layers, layers_run=run, num_heads=heads,
            num_kv_heads=int(getattr(config, "num_key_value_heads", None) or heads),
            head_dim=int(getattr(config, "head_dim", None) or d // heads),
            intermediate_size=int(config.intermediate_size), vocab_size=int(config.vocab_size), encoder=encoder,
            qkv_bias=encoder or kind == "qwen2" or bool(getattr(config, "attention_bias", False)),
            max_positions=getattr(config, "max_position_embeddings", None), extra_embeddings=extra,
        )  # fmt: skip

    # ---------------------------------------------------------------- parameters
    @property
    def attention_width(self) -> int:
        """Width of the query heads (H · head_dim)."""
        return self.num_heads * self.head_dim

    def layer_linear_params(self) -> int:
        """Matmul weights of one block: q, k, v, o and the MLP (3 matrices gated, 2 for encoders)."""
        d, qw, kvw = self.hidden_size, self.attention_width, self.num_kv_heads * self.head_dim
        mlp = (2 if self.encoder else 3) * d * self.intermediate_size
        return d * qw + 2 * d * kvw + qw * d + mlp

    def layer_other_params(self) -> int:
        """Biases and norm weights of one block."""
        d, kvw = self.hidden_size, self.num_kv_heads * self.head_dim
        if self.encoder:  # biases everywhere, two LayerNorms (weight + bias)
            return self.attention_width + 2 * kvw + d + self.intermediate_size + d + 4 * d
        return (self.attention_width + 2 * kvw if self.qkv_bias else 0) + 2 * d

    def loaded_params(self) -> tuple[int, int]:
        """(matmul weights, other params) of the model as the project loads it: embeddings, blocks
        1..max(layers_run, 1) and the final norm; the layers above are never loaded."""
        d, blocks = self.hidden_size, max(self.layers_run, 1)
        embeddings = (self.vocab_size + self.extra_embeddings) * d + (2 * d if self.encoder else 0)
        head = d * d + d if self.encoder else d  # the encoder's pooler, the decoder's final norm
        return blocks * self.layer_linear_params(), embeddings + blocks * self.layer_other_params() + head

    def weight_bytes(self, dtype: str = "bfloat16", quantization: str | None = None) -> float:
        """Bytes of the loaded weights; bitsandbytes quantizes the blocks' matmul weights only."""
        linear, other = self.loaded_params()
        per_linear = QUANT_BYTES[quantization] if quantization else dtype_bytes(dtype)
        return linear * per_linear + other * dtype_bytes(dtype)

    # ---------------------------------------------------------------- FLOPs
    def layer_flops(self, tokens: int) -> int:
        """Forward FLOPs of one block over one sequence of ``tokens``: matmuls + full-square scores."""
        return 2 * tokens * self.layer_linear_params() + 4 * tokens * tokens * self.attention_width

    def flops(self, tokens: int, batch: int = 1) -> int:
        """Forward FLOPs of ``batch`` sequences padded to ``tokens``: layers 1..layers_run only (and an
        encoder's pooler, on the first token, when the last layer is read)."""
        pooler = 2 * self.hidden_size**2 if self.encoder and self.layers_run == self.num_layers else 0
        return batch * (self.layers_run * self.layer_flops(tokens) + pooler)

    # ---------------------------------------------------------------- memory
    def peak_activation_bytes(self, tokens: int, batch: int = 1, dtype: str = "bfloat16", padded: bool = False) -> int:
        """High-water mark of a no-grad forward of ``batch`` sequences of ``tokens`` (weights excluded).

        It is reached in a block's MLP, where the embeddings, the block's input, the residual, the
        normed input and the MLP's intermediates (gated: act(gate), up and their product; encoders:
        the pre- and post-GELU states) are alive at once; RoPE's cos/sin tables add 2 · head_dim per
        token. A right-padded batch also holds HF's [B, 1, L, L] boolean attention mask.
        """
        if self.layers_run == 0:
            return batch * tokens * self.hidden_size * dtype_bytes(dtype)
        mlp = (2 if self.encoder else 3) * self.intermediate_size
        rope = 0 if self.encoder else 2 * self.head_dim
        per_token = (4 * self.hidden_size + mlp + rope) * dtype_bytes(dtype)
        mask = tokens * tokens if padded else 0
        return batch * (tokens * per_token + mask)


# ================================================================================ core
@dataclass(frozen=True)
class CoreShape:
    """What the trainable part's cost depends on: the core, the slots, the prefix and the widths."""

    core: CoreConfig = field(default_factory=CoreConfig)
    num_slots: int = 900  # answer slots
    answer_vocab: int = 12
    d_llm: int = 896
    num_context_slots: int = 0  # K resampler queries
    num_puzzle_ids: int = 0
    puzzle_prefix_len: int = 16

    @classmethod
    def from_config(cls, config) -> CoreShape:
        """From a ``HybridReasonerConfig`` whose ``backbone_hidden_size`` is known."""
        if config.backbone_hidden_size is None:
            raise HybridReasonError("config.backbone_hidden_size is unknown: set it (the backbone's hidden size)")
        return cls(
            config.core_config,
            config.num_slots,
            config.answer_vocab_size,
            config.backbone_hidden_size,
            config.num_context_slots,
            config.num_puzzle_ids,
            config.puzzle_prefix_len,
        )

    @property
    def seq_len(self) -> int:
        """The core's sequence: prefix (context slots or puzzle-ID prefix) + answer slots."""
        prefix = self.num_context_slots or (self.puzzle_prefix_len if self.num_puzzle_ids else 0)
        return prefix + self.num_slots

    @property
    def grad_calls(self) -> int:
        """Block calls with grad per supervision step: (n + 1) · L (all T · (n + 1) · L when unrolled)."""
        return self.core.T**self.core.unrolled * (self.core.n + 1) * self.core.num_layers

    @property
    def calls(self) -> int:
        """Block calls per supervision step: T · (n + 1) · L."""
        return self.core.T * (self.core.n + 1) * self.core.num_layers

    def block_flops(self) -> int:
        """Forward FLOPs of one block call over the core's sequence S'."""
        c, S = self.core, self.seq_len
        d, w = c.d_model, swiglu_width(c.d_model, c.expansion)
        if c.mixer == "attention":
            mix = 2 * S * 4 * d * d + 4 * S * S * d
        else:
            mix = 2 * d * 3 * S * swiglu_width(S, c.expansion)
        return mix + 2 * S * 3 * d * w

    def step_flops(self, prompt_tokens: int = 0, train: bool = True) -> dict[str, int]:
        """FLOPs of one supervision step for one example, by part; ``prompt_tokens`` is the length the
        resampler reads (its carry row, padded). Parts: adapter, resampler, blocks, heads, and the
        backward of each under ``backward`` (0 when ``train`` is False)."""
        d, S, K, L = self.core.d_model, self.num_slots, self.num_context_slots, prompt_tokens
        fwd = {
            "adapter": 2 * S * self.d_llm * d,
            "resampler": (4 * K * d * d + 4 * L * self.d_llm * d + 4 * K * L * d) if K else 0,
            "blocks": self.calls * self.block_flops(),
            "heads": 2 * S * d * self.answer_vocab + 2 * d,
        }
        bwd = {
            "adapter": fwd["adapter"],  # weight grad only: features come from the frozen backbone
            "resampler": (2 * (4 * K * d * d + 4 * K * L * d) + 4 * L * self.d_llm * d) if K else 0,
            "blocks": 2 * self.grad_calls * self.block_flops(),
            "heads": 2 * fwd["heads"],
        }
        return fwd | {"backward": sum(bwd.values()) if train else 0}

    def step_total(self, prompt_tokens: int = 0, train: bool = True) -> int:
        """Forward (+ backward when training) FLOPs of one supervision step for one example."""
        return sum(self.step_flops(prompt_tokens, train).values())

    # ---------------------------------------------------------------- parameters and memory
    def trainable_params(self) -> int:
        """Parameters of the HybridReasoner (adapter, resampler, core, heads). The puzzle-ID table is a
        buffer trained by its own sign-SGD: ``num_puzzle_ids · d`` more floats, not counted here."""
        c, d, S, K = self.core, self.core.d_model, self.num_slots, self.num_context_slots
        w = swiglu_width(d, c.expansion)
        mix = 4 * d * d if c.mixer == "attention" else 3 * self.seq_len * swiglu_width(self.seq_len, c.expansion)
        networks = c.T * (c.n + 1) if c.unrolled else 1
        blocks = networks * c.num_layers * (mix + 3 * d * w)
        adapter = self.d_llm * d + d + S * d
        resampler = K * d + 2 * d * d + 2 * self.d_llm * d + 4 * d if K else 0
        return adapter + resampler + blocks + d * self.answer_vocab + d + 1

    def block_activation_bytes(self, compute_bytes: int) -> int:
        """Bytes one block call with grad saves for backward, per example (norm inputs are saved in
        float32, RMSNorm computes in float32; SDPA saves q, k, v, its output and the logsumexp)."""
        c, S, a = self.core, self.seq_len, compute_bytes
        d, w = c.d_model, swiglu_width(c.d_model, c.expansion)
        norms = 2 * 4 * S * d + 2 * 4 * S
        mlp = a * S * d + 4 * a * S * w
        if c.mixer == "attention":
            mix = 8 * a * S * d + 4 * c.num_heads * S
        else:
            mix = a * S * d + 4 * a * d * swiglu_width(S, c.expansion)
        return norms + mlp + mix

    def activation_bytes(self, prompt_tokens: int = 0, compute_bytes: int = 2, autocast: bool = True) -> int:
        """Bytes one supervision step saves for backward, per example: the (n + 1) · L block calls of
        the last cycle, the adapter's and heads' inputs, the loss in float64, and the resampler's
        normed token states (cast once per projection under autocast), keys and values."""
        d, S, a, L, K = self.core.d_model, self.num_slots, compute_bytes, prompt_tokens, self.num_context_slots
        blocks = self.grad_calls * self.block_activation_bytes(a)
        heads = (a if autocast else 4) * self.seq_len * d + 3 * 8 * S * self.answer_vocab
        adapter = a * S * self.d_llm + S
        resampler = 0
        if K:
            copies = 2 if autocast else 1
            resampler = copies * a * L * self.d_llm + 2 * a * L * d + 4 * L + 12 * a * K * d
        return blocks + heads + adapter + resampler

    def carry_bytes(self, prompt_tokens: int = 0, state_bytes: int = 4) -> int:
        """Bytes one carry slot keeps between steps: y and z, the float32 slot features, labels, and
        (with a resampler) the float32 states of every prompt token."""
        d, S = self.core.d_model, self.num_slots
        tokens = prompt_tokens * (4 * self.d_llm + 1) if self.num_context_slots else 0
        return 2 * state_bytes * self.seq_len * d + S * (4 * self.d_llm + 1 + 8) + tokens


# ================================================================================ a training run
@dataclass(frozen=True)
class Accelerator:
    """Dense (no sparsity) peak TFLOP/s of a GPU for 16-bit and fp32 matmuls, and its memory in GB."""

    name: str
    tflops_16: float
    tflops_32: float
    memory_gb: float


ACCELERATORS = {
    "h100": Accelerator("H100 SXM", 989, 67, 80), "h100-pcie": Accelerator("H100 PCIe", 756, 51, 80),
    "h200": Accelerator("H200", 989, 67, 141), "a100": Accelerator("A100 80GB", 312, 19.5, 80),
    "a100-40gb": Accelerator("A100 40GB", 312, 19.5, 40), "l40s": Accelerator("L40S", 362, 91.6, 48),
    "l4": Accelerator("L4", 121, 30.3, 24), "rtx4090": Accelerator("RTX 4090", 165, 82.6, 24),
}  # fmt: skip


def padded_cost(lengths: np.ndarray, batch: int, fn, seed: int = 0, draws: int = 256) -> float:
    """E[fn(longest of ``batch`` prompts drawn from ``lengths``)]: per example of a right-padded batch."""
    longest = np.random.default_rng(seed).choice(lengths, size=(draws, max(1, batch))).max(1)
    return float(np.mean([fn(int(m)) for m in longest]))


@dataclass(frozen=True)
class TrainingRun:
    """A run of the persistent-carry trainer: ``steps`` optimizer steps of ``batch`` carry slots per
    GPU. Every slot runs one supervision step per optimizer step; a slot is refilled (one backbone
    pass) after ``mean_steps`` steps on average. ``train`` and ``evaluation`` are prompt lengths."""

    backbone: BackboneShape
    core: CoreShape
    train: np.ndarray
    evaluation: np.ndarray
    steps: int
    batch: int
    n_sup: int
    mean_steps: float
    gpus: int = 1
    backbone_dtype: str = "bfloat16"
    quantization: str | None = None
    precision: str = "bf16-mixed"
    optimizer_states: int = 2  # AdamW
    eval_steps: int = 16
    eval_batch: int = 32
    val_runs: int = 0
    val_examples: int = 0
    seed: int = 0

    @property
    def lockstep(self) -> bool:
        """Without early halting every slot halts at N_sup together, so all of them refill at once."""
        return self.mean_steps >= self.n_sup

    @property
    def refill_batch(self) -> int:
        """Prompts one refill encodes in one batch, padded to the longest of them."""
        return self.batch if self.lockstep else max(1, round(self.batch / self.mean_steps))

    @property
    def carry_tokens(self) -> int:
        """Token states per carry slot (resampler only): padded to the longest prompt the carry has
        held, as ``Encoded.replace`` never trims them; soon the longest of the training split."""
        return int(self.train.max()) if self.core.num_context_slots else 0

    @property
    def compute_bytes(self) -> int:
        """Bytes of the core's matmul operands under the trainer's precision."""
        return 2 if str(self.precision).startswith(("bf16", "16")) else 4

    def backbone_per_example(self, lengths: np.ndarray, batch: int) -> tuple[float, float]:
        """(unpadded, padded) backbone FLOPs per example, in batches of ``batch`` prompts."""
        useful = float(np.mean([self.backbone.flops(int(n)) for n in lengths]))
        return useful, padded_cost(lengths, batch, self.backbone.flops, self.seed)

    def flops(self) -> dict[str, float]:
        """FLOPs of the whole run: training refills (backbone: each example once), training steps
        (core: every slot, every step, forward + backward) and validation (forward only)."""
        eval_tokens = (
            int(padded_cost(self.evaluation, self.eval_batch, float, self.seed)) if self.core.num_context_slots else 0
        )
        val = self.val_runs * self.val_examples
        return {
            "training: backbone": self.steps
            * self.gpus
            * self.batch
            / self.mean_steps
            * self.backbone_per_example(self.train, self.refill_batch)[1],
            "training: core": self.steps * self.gpus * self.batch * self.core.step_total(self.carry_tokens),
            "validation: backbone": val * self.backbone_per_example(self.evaluation, self.eval_batch)[1],
            "validation: core": val * self.eval_steps * self.core.step_total(eval_tokens, train=False),
        }

    def seconds(self, flops: dict[str, float], accelerator: Accelerator, mfu: float) -> dict[str, float]:
        """Wall seconds per part: FLOPs / (GPUs x dense peak of the part's dtype x MFU)."""
        peak = {2: accelerator.tflops_16 * 1e12, 4: accelerator.tflops_32 * 1e12}
        rate = {"backbone": peak[min(4, dtype_bytes(self.backbone_dtype))], "core": peak[self.compute_bytes]}
        return {k: v / (self.gpus * mfu * rate[k.split(": ")[1]]) for k, v in flops.items()}

    def memory(self) -> dict[str, float]:
        """Bytes per GPU by item; ``peak`` = the first three (always held) + the largest transient."""
        B, L, P = self.batch, self.carry_tokens, self.core.trainable_params()
        mixed, a = "mixed" in str(self.precision), self.compute_bytes
        param = 4 if mixed or a == 4 else 2
        refill_len = int(padded_cost(self.train, self.refill_batch, float, self.seed))
        mem = {
            "backbone weights": self.backbone.weight_bytes(self.backbone_dtype, self.quantization),
            "trainable weights, grads, optimizer states, EMA": P * param * (3 + self.optimizer_states) + (2 * P if mixed else 0)
            + 2 * 4 * self.core.num_puzzle_ids * self.core.core.d_model,  # the ID table and its EMA copy
            "carry": B * self.core.carry_bytes(L),
            "core step: activations saved for backward": B * self.core.activation_bytes(L, a, mixed),
            "refill: backbone forward": self.backbone.peak_activation_bytes(
                refill_len, self.refill_batch, self.backbone_dtype, padded=self.refill_batch > 1),
            "refill: carry token-state copies": 5 * B * L * 4 * self.core.d_llm,  # Encoded.replace: pad, cat, select
        }  # fmt: skip
        mem["peak"] = sum(list(mem.values())[:3]) + max(list(mem.values())[3:])
        return mem
