"""The Bradley-Terry loss and preference metrics (rlhf_exact/algo/preference.py) against
hand-computed values."""
import math

import pytest
import torch

from rlhf_exact.algo.preference import bradley_terry_loss, preference_metrics


def test_bradley_terry_loss_by_hand():
    rc, rr = torch.tensor([2.0, 0.0, -1.0]), torch.tensor([0.0, 0.0, 1.0])
    # -log sigmoid(d) = log(1 + exp(-d)) for d = 2, 0, -2
    want = (math.log1p(math.exp(-2)) + math.log(2) + math.log1p(math.exp(2))) / 4
    assert bradley_terry_loss(rc, rr, num_pairs=4).item() == pytest.approx(want, rel=1e-6)


def test_loss_sums_over_micro_batches_and_has_the_textbook_gradient():
    rc = torch.tensor([1.5, -0.5, 0.25, 3.0], requires_grad=True)
    rr = torch.tensor([0.5, 0.5, 0.25, -1.0])
    whole = bradley_terry_loss(rc, rr, 4)
    parts = bradley_terry_loss(rc[:1], rr[:1], 4) + bradley_terry_loss(rc[1:], rr[1:], 4)
    assert whole.item() == pytest.approx(parts.item(), rel=1e-6)
    whole.backward()
    # d/d r_chosen of -log sigmoid(d) / P = -(1 - sigmoid(d)) / P
    torch.testing.assert_close(rc.grad, -(1 - torch.sigmoid(rc.detach() - rr)) / 4)


def test_large_margins_stay_finite():
    loss = bradley_terry_loss(torch.tensor([-100.0], dtype=torch.bfloat16), torch.tensor([100.0]), 1)
    assert loss.dtype == torch.float32 and loss.item() == pytest.approx(200.0)


def test_preference_metrics():
    m = preference_metrics(torch.tensor([1.0, 2.0, 0.5, 3.0]), torch.tensor([0.0, 2.0, 1.0, 1.0]))
    assert m == {"accuracy": 0.5, "margin": pytest.approx((1 + 0 - 0.5 + 2) / 4)}


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="same"):
        bradley_terry_loss(torch.zeros(2), torch.zeros(3), 2)
