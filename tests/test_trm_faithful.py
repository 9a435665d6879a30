"""Where the code says it does what TRM's reference code does, it does (issue 9): the mlp mixer's
post-norm axis, the puzzle-ID prefix (scale, sparse sign-SGD, outside the EMA), exploration redrawn
at every step, the halt target of an unlabelled example, RoPE in float32 and the SwiGLU width."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback, EMAWeightAveraging
from test_training_common import make_data, make_module, make_trainer

from hybrid_reason import HybridReasoner, HybridReasonerConfig
from hybrid_reason.backbone.encoded import Encoded
from hybrid_reason.errors import HybridReasonError
from hybrid_reason.model.core import Block, CoreConfig, apply_rope, rope_cos_sin, swiglu_width
from hybrid_reason.model.losses import IGNORE, deep_supervision_loss
from hybrid_reason.training.module import exploration_min_steps
from hybrid_reason.training.sign_sgd import sparse_sign_sgd_

EPS = 1e-5


# ------------------------------------------------------------------------------ 1. the mlp mixer
def ref_swiglu(x: torch.Tensor, swiglu) -> torch.Tensor:
    """SwiGLU over the last axis with the weights of ``swiglu``: down(silu(gate) * up)."""
    gate, up = F.linear(x, swiglu.gate_up.weight).chunk(2, dim=-1)
    return F.linear(F.silu(gate) * up, swiglu.down.weight)


def ref_norm(x: torch.Tensor) -> torch.Tensor:
    """RMSNorm over the last axis, no scale."""
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + EPS)


def test_mlp_mixer_block_matches_trm_reference_written_from_its_description():
    torch.manual_seed(0)
    block = Block(CoreConfig(d_model=32, num_heads=4, mixer="mlp"), seq_len=9)
    h = torch.randn(2, 9, 32) * 3
    # TRM's mlp_t: transpose to [B, d, S], SwiGLU over positions, norm while still transposed (over the
    # slot axis), transpose back; then the channel SwiGLU with its norm over d.
    t = h.transpose(1, 2)
    t = ref_norm(t + ref_swiglu(t, block.mix.mlp))
    want = t.transpose(1, 2)
    want = ref_norm(want + ref_swiglu(want, block.mlp))
    torch.testing.assert_close(block(h, None), want)
    assert block.mix.mlp.down.in_features == swiglu_width(9, 4.0)
    # The form that normalises over d after transposing back is another function, far from this one.
    other = ref_norm(h + ref_swiglu(h.transpose(1, 2), block.mix.mlp).transpose(1, 2))
    other = ref_norm(other + ref_swiglu(other, block.mlp))
    assert (other - want).abs().max() > 0.1


# ------------------------------------------------------------------------------ 2. the puzzle-ID prefix
def id_model(num_ids: int = 6, prefix: int = 3, d: int = 32) -> HybridReasoner:
    """A model with a puzzle-ID table over a 16-wide backbone (never loaded: only ``embed`` runs)."""
    torch.manual_seed(0)
    config = HybridReasonerConfig(
        backbone={"name": "unused"}, backbone_hidden_size=16, core={"d_model": d, "num_heads": 4, "n": 1, "T": 1},
        answer_vocab_size=5, num_slots=4, num_puzzle_ids=num_ids, puzzle_prefix_len=prefix,
    )  # fmt: skip
    return HybridReasoner(config)


def test_id_prefix_is_scaled_by_sqrt_d_and_the_slot_inputs_are_not():
    model = id_model().eval()
    assert model.puzzle_emb.weight.abs().sum() == 0  # zero-initialised, as TRM's table
    assert "puzzle_emb.weight" in model.state_dict() and "puzzle_emb.weight" not in dict(model.named_parameters())
    row = torch.randn(32)
    model.puzzle_emb.weight[3] = row
    encoded = Encoded(torch.randn(2, 4, 16), torch.zeros(2, 4, dtype=torch.bool))
    x = model.embed(encoded, torch.tensor([3, 0]))
    assert x.shape == (2, 3 + 4, 32)
    torch.testing.assert_close(x[0, 0], math.sqrt(32) * row)  # TRM: sqrt(d) x [ID row, zeros, embeddings]
    assert x[1, 0].abs().sum() == 0 and x[:, 1:3].abs().sum() == 0
    torch.testing.assert_close(x[:, 3:], model.adapter(encoded.features, encoded.empty))  # already unit scale
    assert 0.7 < x[:, 3:].pow(2).mean().sqrt() < 1.3


def test_id_rows_collect_the_gradient_of_the_scaled_prefix():
    model = id_model().train()
    encoded = Encoded(torch.randn(2, 4, 16), torch.zeros(2, 4, dtype=torch.bool))
    x = model.embed(encoded, torch.tensor([5, 2]))
    x[:, 0].sum().backward()
    table = model.puzzle_emb
    assert table.ids.tolist() == [5, 2]
    torch.testing.assert_close(table.rows.grad, torch.full((2, 32), math.sqrt(32)))
    assert table.weight.grad is None


def test_trained_id_table_survives_save_and_load(tmp_path):
    model = id_model()
    model.puzzle_emb.weight[2] = torch.arange(32.0)
    model.save_pretrained(tmp_path)
    again = HybridReasoner.from_pretrained(tmp_path)
    assert torch.equal(again.puzzle_emb.weight, model.puzzle_emb.weight)  # loaded, not re-zeroed by the init


def test_sign_sgd_moves_only_the_seen_rows_by_the_sign_of_their_summed_gradient():
    table = torch.randn(6, 4)
    before = table.clone()
    ids = torch.tensor([1, 3, 1])
    grad = torch.tensor([[1.0, -2.0, 0.5, 3.0], [-1.0, 4.0, 0.0, 1.0], [-3.0, 1.0, -0.5, 0.1]])
    sparse_sign_sgd_(table, ids, grad, lr=0.01, weight_decay=0.1)
    decay = 1 - 0.01 * 0.1
    # Row 1 sums its two gradients: [-2, -1, 0, 3.1] -> signs [-1, -1, 0, +1] (a zero sum only decays).
    torch.testing.assert_close(table[1], before[1] * decay - 0.01 * torch.tensor([-1.0, -1.0, 0.0, 1.0]))
    torch.testing.assert_close(table[3], before[3] * decay - 0.01 * torch.tensor([-1.0, 1.0, 0.0, 1.0]))
    for unseen in (0, 2, 4, 5):
        assert torch.equal(table[unseen], before[unseen])  # no update and no weight decay


class RecordIds(Callback):
    """Records the carry's puzzle IDs at every training step."""

    def __init__(self):
        self.ids: list[list[int]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.ids.append(pl_module.carry.puzzle_ids.tolist())


def test_id_table_trains_by_sign_sgd_on_the_schedule_and_outside_the_ema(backbone_path, tmp_path):
    module = make_module(backbone_path, num_puzzle_ids=256, puzzle_prefix_len=2, puzzle_lr=0.06)
    record = RecordIds()
    trainer = make_trainer(str(tmp_path), max_steps=1, callbacks=[record], limit_val_batches=0)
    trainer.fit(module, make_data())
    table = module.model.puzzle_emb.weight
    assert [g["name"] for g in trainer.optimizers[0].param_groups] == ["main"]  # not in the dense optimizer
    seen = sorted(set(record.ids[0]))
    assert seen and table[seen].abs().sum(-1).gt(0).all()
    assert table.abs().sum() == table[seen].abs().sum()  # every other row is still 0
    lr = 0.06 / 3  # the first of 3 warm-up steps: the ID table follows the dense schedule, as in TRM
    steps = table[seen].abs().unique().tolist()  # from 0, one step: -lr * sign(grad)
    assert pytest.approx(lr) in steps and all(v == 0 or v == pytest.approx(lr) for v in steps)

    trainer = make_trainer(str(tmp_path / "more"), max_steps=4, limit_val_batches=0)
    module = make_module(backbone_path, num_puzzle_ids=256, puzzle_prefix_len=2)
    trainer.fit(module, make_data())
    ckpt = torch.load(tmp_path / "more" / "ckpt" / "last.ckpt", weights_only=True)
    ema, raw = ckpt["state_dict"], ckpt["current_model_state"]
    assert not torch.equal(ema["model.answer_head.weight"], raw["model.answer_head.weight"])  # averaged
    assert raw["model.puzzle_emb.weight"].abs().sum() > 0
    assert torch.equal(ema["model.puzzle_emb.weight"], raw["model.puzzle_emb.weight"])  # copied, not averaged


def test_an_ema_that_averages_buffers_is_refused_with_an_id_table(backbone_path, tmp_path):
    module = make_module(backbone_path, num_puzzle_ids=256, puzzle_prefix_len=2)
    trainer = make_trainer(str(tmp_path), max_steps=1, limit_val_batches=0)
    trainer.callbacks[:] = [
        EMAWeightAveraging(decay=0.9) if isinstance(c, EMAWeightAveraging) else c for c in trainer.callbacks
    ]
    with pytest.raises(HybridReasonError, match="ema.use_buffers must be false"):
        trainer.fit(module, make_data())


# ------------------------------------------------------------------------------ 3. exploration
def test_exploration_draw_is_a_pure_function_of_seed_step_and_rank():
    draw = lambda step, rank=0, seed=0: exploration_min_steps(seed, step, rank, 4000, 0.1, 16)  # noqa: E731
    assert torch.equal(draw(7), draw(7))
    assert not torch.equal(draw(7), draw(8)) and not torch.equal(draw(7, rank=1), draw(7))
    assert not torch.equal(draw(7, seed=1), draw(7))
    values = draw(3)
    explored = values[values > 0]
    assert set(explored.unique().tolist()) == set(range(2, 17))  # from [2, N_sup]
    assert 0.08 < len(explored) / len(values) < 0.12  # probability 0.1


class RecordHalting(Callback):
    """Records, per step, the carry's ids, step counts, this step's exploration minimum and halted flags."""

    def __init__(self):
        self.rows: list[tuple[list[str], list[int], list[int], list[bool]]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        c = pl_module.carry
        self.rows.append((list(c.ids), c.steps.tolist(), c.min_steps.tolist(), c.halted.tolist()))


def test_exploration_minimum_is_redrawn_at_every_step(backbone_path, tmp_path):
    n_sup, prob = 6, 0.5
    module, record = make_module(backbone_path, halt_max_steps=n_sup, halt_exploration_prob=prob), RecordHalting()
    with torch.no_grad():
        module.model.halt_head.bias.fill_(5.0)  # every slot wants to halt at once: only exploration holds it
    trainer = make_trainer(str(tmp_path), max_steps=8, callbacks=[record], limit_val_batches=0)
    trainer.fit(module, make_data(batch_size=16))
    redrawn = False
    for k, (ids, steps, mins, halted) in enumerate(record.rows):
        assert mins == exploration_min_steps(0, k, 0, 16, prob, n_sup).tolist()  # drawn at step k, for every slot
        assert halted == [s >= n_sup or s >= m for s, m in zip(steps, mins)]
        if k:
            prev_ids, _, prev_mins, _ = record.rows[k - 1]
            kept = [i for i in range(16) if ids[i] == prev_ids[i]]
            redrawn |= any(mins[i] != prev_mins[i] for i in kept)
    assert redrawn  # a slot that lived on got a new minimum (a per-example draw would keep it)


def test_a_resumed_run_explores_and_trains_its_id_table_exactly_as_an_unbroken_one(backbone_path, tmp_path):
    from test_training_resume import Crash, final_state

    def module(seed=0):
        m = make_module(backbone_path, init_seed=seed, halt_max_steps=4, halt_exploration_prob=0.5,
                        num_puzzle_ids=256, puzzle_prefix_len=2)  # fmt: skip
        with torch.no_grad():
            m.model.halt_head.bias.fill_(5.0)  # halting is decided by exploration
        return m

    unbroken_module, unbroken_record = module(), RecordHalting()
    unbroken = make_trainer(str(tmp_path / "a"), 8, callbacks=[unbroken_record])
    unbroken.fit(unbroken_module, make_data())
    with pytest.raises(RuntimeError, match="simulated crash"):
        make_trainer(str(tmp_path / "b"), 8, callbacks=[Crash(at=5)]).fit(module(), make_data())
    resumed_module, resumed_record = module(seed=123), RecordHalting()
    resumed = make_trainer(str(tmp_path / "b"), 8, callbacks=[resumed_record])
    resumed.fit(resumed_module, make_data(), ckpt_path=str(tmp_path / "b" / "ckpt" / "last.ckpt"), weights_only=True)
    assert resumed_record.rows == unbroken_record.rows[4:]  # the same draws, halts and refills from step 4 on
    want, got = final_state(unbroken, unbroken_module), final_state(resumed, resumed_module)
    assert got.keys() == want.keys() and "weights.puzzle_emb.weight" in want
    for key in want:
        assert torch.equal(got[key], want[key]), key


# ------------------------------------------------------------------------------ 4. the halt target
def test_an_example_without_labels_is_a_correct_halt_target():
    logits = torch.randn(2, 3, 5)
    labels = torch.tensor([[IGNORE] * 3, [0, 1, 2]])
    logits[1, 0, 4] = 50  # example 1 is wrong
    halt = torch.tensor([0.3, -0.7])
    total, parts = deep_supervision_loss(logits, halt, labels, "softmax", halt_weight=1.0)
    assert torch.equal(
        parts["halt_bce"], F.binary_cross_entropy_with_logits(halt, torch.tensor([1.0, 0.0]), reduction="none")
    )
    assert parts["exact"].tolist() == [False, False]  # the metric still does not call it exact
    assert parts["ce"][0] == 0


# ------------------------------------------------------------------------------ 5. RoPE in float32
def test_rope_in_float32_beats_a_bf16_rotation_against_float64():
    torch.manual_seed(0)
    S, hd = 128, 64
    q = (torch.randn(2, 4, S, hd) * 3).to(torch.bfloat16)
    cos, sin = rope_cos_sin(S, hd, 1e4, "cpu")
    assert cos.dtype == sin.dtype == torch.float32
    inv = 1.0 / 1e4 ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd)
    angles = torch.outer(torch.arange(S, dtype=torch.float64), inv).repeat(1, 2)
    x, (x1, x2) = q.double(), q.double().chunk(2, -1)
    want = x * angles.cos() + torch.cat([-x2, x1], -1) * angles.sin()

    got = apply_rope(q, cos, sin)
    assert got.dtype == torch.bfloat16
    b1, b2 = q.chunk(2, -1)
    bf16 = q * cos.bfloat16() + torch.cat([-b2, b1], -1) * sin.bfloat16()  # the rotation in bf16
    err, err_bf16 = (got.double() - want).abs().mean(), (bf16.double() - want).abs().mean()
    assert err < 0.8 * err_bf16
    assert (got == want.to(torch.bfloat16)).float().mean() > 0.98  # float32, then one rounding to bf16


# ------------------------------------------------------------------------------ 6. the SwiGLU width
def test_swiglu_width_rounds_to_an_integer_before_the_multiple_of_256():
    # 1.0015625 * 384 * 2/3 = 256.4: TRM rounds it to 256 (one block of 256); ceil(256.4 / 256) gives 512.
    assert swiglu_width(384, 1.0015625) == 256 and 256 * math.ceil(1.0015625 * 384 * 2 / 3 / 256) == 512
    assert swiglu_width(384, 1.001953125) == 256  # 256.5: Python's round (half to even) gives 256, as TRM's
    assert swiglu_width(512, 4) == 1536 and swiglu_width(81, 4) == 256 and swiglu_width(97, 4) == 512
