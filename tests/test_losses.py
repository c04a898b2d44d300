"""The EMD loss (NIMA Eq. 1, r = 2): exact values, a slow reference, batch averaging, gradients."""

from __future__ import annotations

import math

import pytest
import torch

from beholder.losses import EMDLoss, emd


def slow_emd(p, q, r=2.0):
    """Literal transcription of the paper's formula, one sample and one bin at a time."""
    distances = []
    for row_p, row_q in zip(p.tolist(), q.tolist()):
        cdf_p = cdf_q = 0.0
        total = 0.0
        for a, b in zip(row_p, row_q):
            cdf_p += a
            cdf_q += b
            total += abs(cdf_p - cdf_q) ** r
        distances.append((total / len(row_p)) ** (1.0 / r))
    return distances


def one_hot(index: int, k: int = 10) -> torch.Tensor:
    row = torch.zeros(k, dtype=torch.float64)
    row[index] = 1.0
    return row


def test_identical_distributions_have_zero_distance() -> None:
    p = torch.softmax(torch.randn(4, 10, dtype=torch.float64), dim=1)
    assert torch.equal(emd(p, p), torch.zeros(4, dtype=torch.float64))


def test_hand_computed_values() -> None:
    # All mass on score 1 vs all on score 10: CDFs differ by 1 in bins 1..9, 0 in bin 10.
    assert emd(one_hot(0)[None], one_hot(9)[None]).item() == pytest.approx(math.sqrt(9 / 10))
    # Adjacent bins differ in one CDF step only.
    assert emd(one_hot(4)[None], one_hot(5)[None]).item() == pytest.approx(math.sqrt(1 / 10))
    # Half the mass moved by one bin: one CDF step of 0.5.
    half = torch.zeros(1, 10, dtype=torch.float64)
    half[0, 4] = half[0, 5] = 0.5
    assert emd(one_hot(4)[None], half).item() == pytest.approx(math.sqrt(0.25 / 10))
    # r = 1 is the mean absolute CDF difference.
    assert emd(one_hot(0)[None], one_hot(9)[None], r=1.0).item() == pytest.approx(0.9)


def test_matches_slow_reference_loop() -> None:
    generator = torch.Generator().manual_seed(0)
    p = torch.softmax(torch.randn(16, 10, generator=generator, dtype=torch.float64), dim=1)
    q = torch.softmax(torch.randn(16, 10, generator=generator, dtype=torch.float64), dim=1)
    expected = torch.tensor(slow_emd(p, q), dtype=torch.float64)
    torch.testing.assert_close(emd(p, q), expected)


def test_loss_is_the_batch_mean_of_per_sample_distances() -> None:
    logits = torch.tensor([[5.0] + [0.0] * 9, [0.0] * 9 + [5.0]], dtype=torch.float64)
    target = torch.stack([one_hot(0), one_hot(0)])
    per_sample = slow_emd(torch.softmax(logits, 1), target)
    loss = EMDLoss()(logits, target)
    assert loss.item() == pytest.approx(sum(per_sample) / 2)
    # Not the root of the batch-mean of squared CDF differences (a common mistake).
    wrong = math.sqrt(sum(d**2 for d in per_sample) / 2)
    assert loss.item() != pytest.approx(wrong)


def test_gradients_flow_to_the_logits() -> None:
    logits = torch.randn(3, 10, requires_grad=True)
    target = torch.softmax(torch.randn(3, 10), dim=1)
    EMDLoss()(logits, target).backward()
    assert logits.grad is not None
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    # A gradient step lowers the loss.
    with torch.no_grad():
        stepped = logits - 1.0 * logits.grad
    assert EMDLoss()(stepped, target) < EMDLoss()(logits, target)


def test_shape_mismatch_is_rejected() -> None:
    with pytest.raises(ValueError, match="shape mismatch"):
        emd(torch.ones(2, 10) / 10, torch.ones(2, 5) / 5)
