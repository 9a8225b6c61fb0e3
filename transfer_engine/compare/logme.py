"""LogME: how well a backbone's features suit a labelled data set, without training (You et al., 2021).

For each class c, the one-hot column y of the labels is modelled as y = F w + noise, with the prior
w ~ N(0, 1/alpha I) and noise ~ N(0, 1/beta I). The log evidence of (alpha, beta),

    L = n/2 log beta + d/2 log alpha - n/2 log 2pi - beta/2 ||F m - y||^2 - alpha/2 m'm - 1/2 log|A|,
    A = alpha I + beta F'F,  m = beta A^-1 F'y,

is maximized over alpha and beta by the paper's fixed-point iteration (MacKay's updates):
gamma = sum_i beta s_i / (alpha + beta s_i) over the eigenvalues s_i of F'F, alpha = gamma / m'm,
beta = (n - gamma) / ||F m - y||^2. One SVD of F serves every class and every iteration, so the cost
is that of the one SVD. LogME is the mean over classes of max L / n; higher is better, and values are
comparable across backbones on the same data set.

Everything is float64: the evidence is a sum of terms of order n that cancel to order 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

MAX_ITERATIONS = 100
TOLERANCE = 1e-3  # relative change of alpha / beta at which the fixed point is reached (the paper's)


@dataclass(frozen=True)
class Evidence:
    """The maximized evidence of one label column and where it was reached."""

    evidence: float  # max over (alpha, beta) of the log evidence, divided by n
    alpha: float
    beta: float
    iterations: int


def logme(features: torch.Tensor, labels: torch.Tensor) -> float:
    """LogME of `features` [n, d] for integer class `labels` [n]: the mean per-class evidence per sample.

    Raises:
        ValueError: shapes that do not match, fewer than 2 samples or 2 classes, non-finite features.
    """
    f, y = _checked(features, labels)
    classes = torch.unique(y)
    if len(classes) < 2:
        raise ValueError("LogME needs labels of at least 2 classes")
    u, s, _ = torch.linalg.svd(f, full_matrices=False)
    sigma2 = s * s
    onehot = (y[:, None] == classes[None, :]).to(torch.float64)
    return float(sum(_maximize(u, sigma2, f.shape, onehot[:, c]).evidence for c in range(len(classes)))
                 / len(classes))


def logme_evidence(features: torch.Tensor, target: torch.Tensor) -> Evidence:
    """The maximized evidence of one real-valued target column [n] (a one-hot column for classification)."""
    f = features.to(torch.float64)
    u, s, _ = torch.linalg.svd(f, full_matrices=False)
    return _maximize(u, s * s, f.shape, target.to(torch.float64))


def _checked(features: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if features.dim() != 2 or labels.dim() != 1 or len(features) != len(labels):
        raise ValueError(f"expected features [n, d] and labels [n], got {list(features.shape)} and "
                         f"{list(labels.shape)}")
    if len(features) < 2:
        raise ValueError("LogME needs at least 2 samples")
    f = features.to(torch.float64)
    if not torch.isfinite(f).all():
        raise ValueError("features hold NaN or inf")
    return f, labels.to(torch.int64)


def _maximize(u: torch.Tensor, sigma2: torch.Tensor, shape: torch.Size, y: torch.Tensor) -> Evidence:
    """Fixed-point maximization of the evidence of column y, in the SVD basis (u: n x k, sigma2: k)."""
    n, d = shape
    z = u.T @ y                                   # y's coordinates in the span of F's columns
    z2 = z * z
    outside = max(float(y @ y - z2.sum()), 0.0)   # the part of ||y||^2 no weight vector can explain
    alpha, beta = 1.0, 1.0
    iterations = 0
    for iterations in range(1, MAX_ITERATIONS + 1):
        shrink = alpha + beta * sigma2
        gamma = float((beta * sigma2 / shrink).sum())
        m2 = float((beta * beta * sigma2 * z2 / (shrink * shrink)).sum())
        residual = float((alpha * alpha * z2 / (shrink * shrink)).sum()) + outside
        new_alpha = gamma / max(m2, 1e-300)
        new_beta = (n - gamma) / max(residual, 1e-300)
        done = abs(new_alpha - alpha) / alpha < TOLERANCE and abs(new_beta - beta) / beta < TOLERANCE
        alpha, beta = new_alpha, new_beta
        if done:
            break
    return Evidence(_evidence(sigma2, z2, outside, n, d, alpha, beta) / n, alpha, beta, iterations)


def _evidence(sigma2: torch.Tensor, z2: torch.Tensor, outside: float, n: int, d: int, alpha: float,
              beta: float) -> float:
    """The log evidence at (alpha, beta), from the SVD (the docstring's formula, term by term)."""
    shrink = alpha + beta * sigma2
    m2 = float((beta * beta * sigma2 * z2 / (shrink * shrink)).sum())
    residual = float((alpha * alpha * z2 / (shrink * shrink)).sum()) + outside
    log_det = float(torch.log(shrink).sum()) + (d - len(sigma2)) * math.log(alpha)
    return (n / 2 * math.log(beta) + d / 2 * math.log(alpha) - n / 2 * math.log(2 * math.pi)
            - beta / 2 * residual - alpha / 2 * m2 - log_det / 2)
