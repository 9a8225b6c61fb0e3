"""#18: LogME, the score te compare ranks backbones by without training, is the paper's evidence: checked
against a direct evaluation of the formula with explicit matrices, at a point no neighbour beats, and it
ranks features that carry the labels above features that do not (real digits)."""

from __future__ import annotations

import math

import pytest
import torch
from sklearn.datasets import load_digits

from transfer_engine.compare import logme, logme_evidence


def _direct_evidence(f: torch.Tensor, y: torch.Tensor, alpha: float, beta: float) -> float:
    """The evidence formula with A built and inverted explicitly: slow, obviously the paper's."""
    n, d = f.shape
    a = alpha * torch.eye(d, dtype=torch.float64) + beta * f.T @ f
    m = beta * torch.linalg.solve(a, f.T @ y)
    return float(n / 2 * math.log(beta) + d / 2 * math.log(alpha) - n / 2 * math.log(2 * math.pi)
                 - beta / 2 * ((f @ m - y) ** 2).sum() - alpha / 2 * (m @ m) - torch.linalg.slogdet(a)[1] / 2) / n


@pytest.mark.parametrize("n,d", [(200, 16), (30, 64)])  # more samples than features, and fewer
def test_the_evidence_is_the_formula_at_its_maximum(n, d):
    g = torch.Generator().manual_seed(0)
    f = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = (f[:, 0] + 0.5 * torch.randn(n, generator=g, dtype=torch.float64) > 0).to(torch.float64)
    found = logme_evidence(f, y)
    assert found.iterations < 100
    assert found.evidence == pytest.approx(_direct_evidence(f, y, found.alpha, found.beta), rel=1e-9, abs=1e-9)
    for da, db in ((1.1, 1), (0.9, 1), (1, 1.1), (1, 0.9), (1.1, 1.1), (0.9, 0.9)):
        assert _direct_evidence(f, y, found.alpha * da, found.beta * db) <= found.evidence + 1e-6


def test_features_that_carry_the_labels_score_higher_than_noise():
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32)
    labels = torch.tensor(digits.target)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    half = 0.5 * x / x.std() + noise  # the same pixels, half drowned
    scores = [logme(x, labels), logme(half, labels), logme(noise, labels)]
    assert scores == sorted(scores, reverse=True) and scores[0] - scores[2] > 0.5


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="at least 2 classes"):
        logme(torch.randn(10, 3), torch.zeros(10, dtype=torch.int64))
    with pytest.raises(ValueError, match="expected features"):
        logme(torch.randn(10, 3), torch.zeros(9, dtype=torch.int64))
    with pytest.raises(ValueError, match="NaN"):
        logme(torch.full((4, 2), float("nan")), torch.tensor([0, 1, 0, 1]))
