"""Stablemax / softmax cross-entropy per example and the halt loss, against hand computations."""

import math

import pytest
import torch

from hybrid_reason.model.losses import (
    IGNORE,
    deep_supervision_loss,
    exact_correct,
    example_loss,
    stablemax_log_probs,
)


def test_stablemax_matches_its_definition():
    logits = torch.tensor([[2.0, 0.0, -1.0, -3.0]])
    s = [3.0, 1.0, 1 / 2, 1 / 4]
    want = [math.log(v / sum(s)) for v in s]
    got = stablemax_log_probs(logits)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got[0], torch.tensor(want, dtype=torch.float64))


def test_stablemax_is_finite_where_softmax_would_overflow_in_low_precision():
    logits = torch.tensor([[1e4, -1e4, 0.0]], dtype=torch.bfloat16)
    assert torch.isfinite(stablemax_log_probs(logits)).all()


@pytest.mark.parametrize("kind", ["stablemax", "softmax"])
def test_example_loss_averages_over_labelled_slots_only(kind):
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 5)
    labels = torch.tensor([[1, IGNORE, 3, IGNORE], [0, 1, 2, 3]])
    got = example_loss(logits, labels, kind)
    logp = stablemax_log_probs(logits) if kind == "stablemax" else torch.log_softmax(logits, -1).double()
    want0 = -(logp[0, 0, 1] + logp[0, 2, 3]) / 2
    want1 = -sum(logp[1, i, i] for i in range(4)) / 4
    torch.testing.assert_close(got, torch.stack([want0, want1]).float())


def test_example_with_no_labels_costs_nothing_and_is_not_exact():
    logits = torch.randn(1, 3, 4)
    labels = torch.full((1, 3), IGNORE)
    assert example_loss(logits, labels, "softmax").item() == 0.0
    assert not exact_correct(logits, labels).item()


def test_exact_needs_every_labelled_slot_right():
    logits = torch.zeros(2, 3, 4)
    logits[:, 0, 1] = logits[:, 1, 2] = logits[:, 2, 3] = 5
    labels = torch.tensor([[1, 2, IGNORE], [1, 2, 0]])
    assert exact_correct(logits, labels).tolist() == [True, False]


def test_deep_supervision_loss_sums_ce_and_half_halt_bce():
    torch.manual_seed(1)
    logits = torch.randn(3, 4, 6, requires_grad=True)
    labels = torch.randint(0, 6, (3, 4))
    halt = torch.tensor([-5.0, 0.0, 2.0], requires_grad=True)
    total, parts = deep_supervision_loss(logits, halt, labels, "stablemax", 0.5)
    exact = exact_correct(logits, labels).float()
    bce = torch.nn.functional.binary_cross_entropy_with_logits(halt, exact, reduction="sum")
    torch.testing.assert_close(total, example_loss(logits, labels, "stablemax").sum() + 0.5 * bce)
    total.backward()
    assert logits.grad.abs().sum() > 0 and halt.grad.abs().sum() > 0
    assert not parts["ce"].requires_grad


def test_unknown_loss_is_named():
    with pytest.raises(ValueError, match="'hinge'"):
        example_loss(torch.zeros(1, 1, 2), torch.zeros(1, 1, dtype=torch.long), "hinge")
