"""Full-batch multinomial logistic regression: preconditioned L-BFGS on features held in memory.

The objective is scikit-learn's (`LogisticRegression(C=1 / (weight_decay * N))` on the same features):

    mean_n CE(W x_n + b, y_n) + weight_decay / 2 * ||W||^2          (the bias is not penalized)

What makes it fast, each exact in the sense that the optimum does not change:
- Centering: the logits are computed as W (x - m) + b' with m the mean feature, then b = b' - W m.
  Pooled backbone features are non-negative, so the mean is by far their largest direction; removing it
  from the geometry the optimizer sees costs one [C, D] x [D] product per evaluation.
- Preconditioning: L-BFGS runs on V = W A^(1/2), where A = c Sigma + weight_decay * I, Sigma is
  approximated by the top `rank` eigenpairs of the feature covariance (randomized range finder on a
  subsample, a few passes) and c, the softmax's share of the curvature, is re-estimated from the
  predictions a few times during the fit. Directions of large feature variance no longer dominate the
  curvature, and L-BFGS needs far fewer evaluations (docs/train.md, "Measurements").
  Applying A^(-1/2) to V costs O(C D rank), nothing next to the O(N D C) products.
- bf16 products on CPUs with native bf16 (faster than fp32 there): the solver runs in bf16 until it stops
  improving, then polishes in float32 until the gradient test passes, so the answer is float32's.
- Gradients by hand (two products per evaluation, no autograd graph); the line search is PyTorch's
  strong-Wolfe search.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch.optim.lbfgs import _strong_wolfe

# Stopping: the largest |gradient| entry of the objective in W (scikit-learn's test, its default 1e-4),
# or a relative change of the objective below FTOL over an iteration (float32 rounding: the line
# search can go no further); bf16 hands over to float32 when its change falls below FTOL_LOW.
GTOL = 1e-4
FTOL = 1e-12
FTOL_LOW = 1e-7
HISTORY = 10
# Iterations after which the preconditioner's curvature is re-estimated from the current predictions.
REFRESH = frozenset({3, 10, 30, 100})
# Rows of the subsample whose covariance gives the preconditioner, and its rank.
PRECOND_ROWS = 8192
PRECOND_RANK = 64
# Rows converted to float64 at once for the mean feature.
MEAN_ROWS = 1024


@dataclass
class Preconditioner:
    """A^(-1/2), applied from the right, for A = curvature * Sigma + weight_decay * I, where Sigma is
    approximated by U diag(top) U^T + rest (I - U U^T).

    `curvature` is the softmax's share of the Hessian (1/C while predictions are uniform, less once they
    are confident): `solve` re-estimates it as the fit proceeds (`with_curvature`).
    """

    basis: torch.Tensor | None  # [D, r] orthonormal, or None (then A is a multiple of I)
    top: torch.Tensor | None  # [r] leading eigenvalues of the covariance
    rest: float  # mean of the other eigenvalues
    weight_decay: float
    curvature: float

    def __post_init__(self) -> None:
        self.rest_scale = (self.curvature * self.rest + self.weight_decay) ** -0.5
        self.top_scale = None if self.top is None else (self.curvature * self.top + self.weight_decay).rsqrt()

    def with_curvature(self, curvature: float) -> "Preconditioner":
        return Preconditioner(self.basis, self.top, self.rest, self.weight_decay, curvature)

    def apply(self, v: torch.Tensor) -> torch.Tensor:
        """v A^(-1/2) for v [C, D] (A^(-1/2) is symmetric, so this also maps W-gradients to V-gradients)."""
        out = v * self.rest_scale
        if self.basis is not None:
            out = out + ((v @ self.basis) * (self.top_scale - self.rest_scale)) @ self.basis.t()
        return out

    def apply_inverse(self, w: torch.Tensor) -> torch.Tensor:
        """w A^(1/2): the V that gives W = w (for warm starts)."""
        out = w / self.rest_scale
        if self.basis is not None:
            out = out + ((w @ self.basis) * (1.0 / self.top_scale - 1.0 / self.rest_scale)) @ self.basis.t()
        return out


def covariance_preconditioner(x: torch.Tensor, mean: torch.Tensor, num_classes: int, weight_decay: float, *,
                              scale: float = 1.0, rank: int = PRECOND_RANK, rows: int = PRECOND_ROWS,
                              seed: int = 0) -> Preconditioner:
    """The top-`rank` eigenpairs of the covariance of (a subsample of) `x * scale` (whose mean is `mean`),
    by a randomized range finder with one power iteration; see the module docstring."""
    n, d = x.shape
    gen = torch.Generator().manual_seed(seed)
    sample = x if n <= rows else x[torch.randperm(n, generator=gen)[:rows].sort().values.to(x.device)]
    sample = sample.float() * scale - mean
    trace = float(sample.pow(2).sum()) / sample.shape[0]
    span = min(d, sample.shape[0] - 1)  # directions the data spans (fewer than d when rows are few)
    r = min(rank, span - 1)
    if r < 1 or trace <= 0:
        return Preconditioner(None, None, max(trace / max(span, 1), 0.0), weight_decay, 1.0 / num_classes)
    omega = torch.randn(d, r + 8, generator=gen).to(sample.device)
    q = torch.linalg.qr(sample.t() @ (sample @ omega)).Q
    q = torch.linalg.qr(sample.t() @ (sample @ q)).Q  # one power iteration sharpens the leading subspace
    b = sample @ q
    eig, vec = torch.linalg.eigh((b.t() @ b) / sample.shape[0])
    eig, vec = eig.flip(0)[:r].clamp_min(0), vec.flip(1)[:, :r]
    # Directions beyond the top r get the r-th eigenvalue, not the mean of the rest: real features have a
    # long decaying tail, whose mean under-weights the tail's head (the mean made L-BFGS slower than no
    # preconditioner on real features; the r-th eigenvalue did not: docs/train.md, "Measurements").
    rest = float(eig[-1])
    return Preconditioner((q @ vec).contiguous(), eig, rest, weight_decay, 1.0 / num_classes)


def _mean(x: torch.Tensor, rows: int = MEAN_ROWS) -> torch.Tensor:
    """float64 [D]: the mean row of `x`, summed in float64 `rows` rows at a time (`x.mean(0, dtype=float64)`
    converts all of `x` to float64 first: twice the features' memory)."""
    total = torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
    for start in range(0, x.shape[0], rows):
        total += x[start:start + rows].sum(0, dtype=torch.float64)
    return total / max(1, x.shape[0])


@dataclass
class LbfgsResult:
    """The solution, how it was reached, and what a warm start needs."""

    weight: torch.Tensor  # [C, D]
    bias: torch.Tensor  # [C]
    objective: float
    evaluations: int
    iterations: int
    converged: bool
    curve: list[dict] = field(default_factory=list)


class LinearProblem:
    """The objective of the module docstring on features `x / scale` and labels `y`.

    Args:
        x: float32 [N, D] (the problem is posed on x / scale).
        y: int64 [N].
        num_classes: C.
        weight_decay: the L2 penalty (> 0 keeps the problem strictly convex).
        scale: the global feature scale.
        low_precision: compute the products in bf16 first (when the device does them natively).
        seed: the preconditioner's random projection.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, num_classes: int, weight_decay: float, *,
                 scale: float = 1.0, low_precision: bool = False, seed: int = 0) -> None:
        self.x, self.y = x, y
        self.n, self.d = x.shape
        self.c = num_classes
        self.wd = float(weight_decay)
        # The problem is posed on x / scale; dividing W instead of x spares a copy of the features.
        self.inv_scale = 1.0 / float(scale)
        self.mean = _mean(x).float() * self.inv_scale
        self.x_low = x.to(torch.bfloat16) if low_precision else None
        self.precond = covariance_preconditioner(x, self.mean, num_classes, self.wd, scale=self.inv_scale, seed=seed)
        self.evaluations = 0
        self.curvature = 1.0 / num_classes
        self._rows = torch.arange(self.n, device=x.device)

    # -- coordinates: flat = [V (C*D), b' (C)] -------------------------------------------------------------
    def unpack(self, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(W, b) of the original problem from the flat optimizer variables."""
        w = self.precond.apply(flat[:-self.c].view(self.c, self.d))
        return w, flat[-self.c:] - w @ self.mean

    def pack(self, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """The flat variables of (W, b): the inverse of `unpack` (for warm starts)."""
        v = self.precond.apply_inverse(weight.float())
        return torch.cat([v.reshape(-1), bias.float() + weight.float() @ self.mean])

    def value_and_grad(self, flat: torch.Tensor, low: bool) -> tuple[float, torch.Tensor, torch.Tensor]:
        """Objective, its gradient in the flat variables, and its gradient in W (for the stopping test)."""
        self.evaluations += 1
        v, b_centered = flat[:-self.c].view(self.c, self.d), flat[-self.c:]
        w = self.precond.apply(v)
        x = self.x_low if low else self.x
        logits = (x @ (w * self.inv_scale).to(x.dtype).t()).float()
        logits += b_centered - w @ self.mean
        lse = torch.logsumexp(logits, dim=1)
        picked = logits.gather(1, self.y[:, None]).squeeze(1)
        loss = float((lse - picked).mean()) + 0.5 * self.wd * float(w.pow(2).sum())
        probs = logits.sub_(lse[:, None]).exp_()  # softmax, in place of the logits
        # The softmax's curvature share, 1/C at uniform predictions, ~0 when confident (Preconditioner).
        self.curvature = float((1.0 - probs.pow(2).sum(1)).mean()) / max(1, self.c - 1)
        probs[self._rows, self.y] -= 1.0
        probs /= self.n
        g_sum = probs.sum(0)
        grad_w = (probs.t().to(x.dtype) @ x).float() * self.inv_scale - torch.outer(g_sum, self.mean) + self.wd * w
        grad_v = self.precond.apply(grad_w)
        return loss, torch.cat([grad_v.reshape(-1), g_sum]), grad_w

    def grad_w(self, flat_grad: torch.Tensor) -> torch.Tensor:
        """The gradient in W from the gradient in the flat variables."""
        return self.precond.apply_inverse(flat_grad[:-self.c].view(self.c, self.d))


def solve(problem: LinearProblem, *, start: torch.Tensor | None = None, max_iterations: int = 500,
          gtol: float = GTOL, on_iteration: Callable[[int, float, torch.Tensor, torch.Tensor], None] | None = None
          ) -> LbfgsResult:
    """Minimize the problem with L-BFGS (strong-Wolfe line search), bf16 first when enabled, then float32.

    Args:
        problem: the objective.
        start: flat variables to start from (a warm start, `problem.pack(W, b)`), else zeros.
        max_iterations: iterations in all.
        gtol: stop when every entry of the gradient in W is at most this in magnitude.
        on_iteration: called after each iteration with (iteration, objective, W, b) (for the learning curve).

    Returns:
        The `LbfgsResult`.
    """
    device = problem.x.device
    flat = start.clone() if start is not None else torch.zeros(problem.c * problem.d + problem.c, device=device)
    low = problem.x_low is not None
    f, g, gw = problem.value_and_grad(flat, low)
    history: list[tuple[torch.Tensor, torch.Tensor, float]] = []
    curve: list[dict] = []
    converged = False
    iteration = 0
    for iteration in range(1, max_iterations + 1):
        if float(gw.abs().max()) <= gtol:
            if not low:
                converged = True
                break
            low = False  # bf16 found its answer: confirm it, and finish, in float32
            f, g, gw = problem.value_and_grad(flat, low)
            continue
        d = _direction(g, history)
        gtd = float(g.dot(d))
        if gtd > -1e-12:  # not a descent direction (the history went stale): restart from the gradient
            history.clear()
            d, gtd = -g, -float(g.dot(g))
        t = min(1.0, 1.0 / float(g.abs().sum())) if not history else 1.0

        def evaluate(x0: torch.Tensor, step: float, direction: torch.Tensor) -> tuple[float, torch.Tensor]:
            value, grad, _ = problem.value_and_grad(x0 + step * direction, low)
            return value, grad

        f_new, g_new, t, _ = _strong_wolfe(evaluate, flat, t, d, f, g, gtd)
        step = t * d
        flat = flat + step
        y = g_new - g
        ys = float(y.dot(step))
        if ys > 1e-10:
            history.append((step, y, 1.0 / ys))
            if len(history) > HISTORY:
                history.pop(0)
        change = abs(f - f_new)
        # The line search returns the gradient at the point it chose (not always the last evaluated):
        # its W part follows exactly, since V = W A^(1/2) is linear.
        f, g, gw = f_new, g_new, problem.grad_w(g_new)
        if iteration in REFRESH and not 0.5 <= problem.curvature / problem.precond.curvature <= 2.0:
            # Predictions grew confident (or less): the preconditioner's curvature no longer fits. Same
            # point, new coordinates; the L-BFGS history belongs to the old ones.
            w, b = problem.unpack(flat)
            problem.precond = problem.precond.with_curvature(problem.curvature)
            flat = problem.pack(w, b)
            g = torch.cat([problem.precond.apply(gw).reshape(-1), g[-problem.c:]])
            history.clear()
        if on_iteration is not None:
            w, b = problem.unpack(flat)
            on_iteration(iteration, f, w, b)
        curve.append({"iteration": iteration, "objective": f})
        if change <= (FTOL_LOW if low else FTOL) * max(1.0, abs(f)) or not math.isfinite(f):
            if not low:
                converged = math.isfinite(f)
                break
            low = False  # bf16 stopped improving: go on in float32 from here
            history.clear()
            f, g, gw = problem.value_and_grad(flat, low)
    w, b = problem.unpack(flat)
    return LbfgsResult(w.detach().clone(), b.detach().clone(), f, problem.evaluations, iteration, converged, curve)


def _direction(g: torch.Tensor, history: list[tuple[torch.Tensor, torch.Tensor, float]]) -> torch.Tensor:
    """-H g by the L-BFGS two-loop recursion."""
    q = -g
    alphas = []
    for s, y, rho in reversed(history):
        a = rho * float(s.dot(q))
        alphas.append(a)
        q = q - a * y
    if history:
        s, y, rho = history[-1]
        q = q * (1.0 / (rho * float(y.dot(y))))
    for (s, y, rho), a in zip(history, reversed(alphas)):
        b = rho * float(y.dot(q))
        q = q + (a - b) * s
    return q
