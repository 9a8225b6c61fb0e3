"""k-fold cross-validation of one head setting over train+val (the rule: `core.selection`).

`FoldPlan` pools train and val (never test), deals the pool's rows to k stratified folds by content
key, and holds each fold's fit rows and held-out rows; `cross_validate` fits the head once per fold on
the other folds and predicts the fold, so every pooled image is predicted once by a fit that did not
see it. The per-image correctness it returns is what two candidates are compared on.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from transfer_engine.core.selection import CrossValidated, assign_folds, pool_digest
from transfer_engine.train.metrics import evaluate

if TYPE_CHECKING:
    from transfer_engine.heads import HeadSpec
    from transfer_engine.train.data import Split, TrainingData
    from transfer_engine.train.fit import HyperParameters

POOLED = ("train", "val")


@dataclass
class _Row:
    key: str
    label: int


@dataclass
class FoldPlan:
    """The pooled train+val rows and their k folds.

    Attributes:
        k: folds.
        pool: train+val as one split (train's rows first, then val's).
        fold: int64 [len(pool)], the fold of each pooled row.
        digest: `core.selection.pool_digest` of the pool's keys.
    """

    k: int
    pool: "Split"
    fold: torch.Tensor
    digest: str
    _splits: dict[int, tuple["Split", "Split"]] = field(default_factory=dict, repr=False)

    @classmethod
    def of(cls, data: "TrainingData", k: int) -> "FoldPlan":
        """The plan for `data`'s train and val splits.

        Raises:
            UsageError: k < 2 or fewer distinct images than folds.
        """
        pool = data.combined(POOLED)
        rows = [_Row(key, int(label)) for key, label in zip(pool.keys, pool.labels.tolist())]
        fold = torch.tensor(assign_folds(rows, k), dtype=torch.int64)
        return cls(k, pool, fold, pool_digest(pool.keys))

    def split(self, f: int) -> tuple["Split", "Split"]:
        """(rows to fit on, held-out rows) of fold `f`."""
        if f not in self._splits:
            held = self.fold == f
            self._splits[f] = (_subset(self.pool, ~held, f"folds != {f}"), _subset(self.pool, held, f"fold {f}"))
        return self._splits[f]


@dataclass
class FoldScore:
    """`cross_validate`'s answer: the pooled score, the mean out-of-fold loss, the time it took, and each
    fold's `Fitted.warm` (a start for the next setting's fit on the same fold)."""

    score: CrossValidated
    loss: float
    seconds: float
    warm: list[Any] = field(default_factory=list)


def cross_validate(spec: "HeadSpec", data: "TrainingData", hp: "HyperParameters", plan: FoldPlan, *,
                   seed: int = 0, device: torch.device | None = None, warm: list[Any] | None = None) -> FoldScore:
    """Fit `spec` with `hp` on each fold's complement and judge it on the fold.

    Args:
        spec: the head.
        data: where the features come from.
        hp: the setting judged.
        plan: the folds (`FoldPlan.of(data, k)`).
        seed: every fold's fit uses it.
        device: where to compute.
        warm: per fold, a start for its fit: `FoldScore.warm` of another setting's cross-validation on
            the same plan. Never a fit that saw the fold's rows (a fit on train, say): L-BFGS stops once
            its gradient test passes, near its start, and that start would carry the held-out labels.

    Returns:
        The `FoldScore`.

    Raises:
        TrainingDiverged: a fold's fit diverged.
    """
    from transfer_engine.train.fit import fit_head

    start = time.perf_counter()
    correct = torch.zeros(len(plan.pool), dtype=torch.bool)
    loss_sum, accuracies, warms = 0.0, [], []
    for f in range(plan.k):
        fit_rows, held = plan.split(f)
        fitted = fit_head(spec, data, fit_rows, hp, seed=seed, device=device, warm=warm[f] if warm else None)
        result = evaluate(fitted.module, data, held)
        correct[plan.fold == f] = result.predictions == held.labels
        loss_sum += result.loss * len(held) if math.isfinite(result.loss) else math.inf
        accuracies.append(result.accuracy)
        warms.append(fitted.warm)
    score = CrossValidated(plan.k, tuple(bool(c) for c in correct.tolist()), tuple(accuracies), plan.digest)
    return FoldScore(score, loss_sum / max(1, len(plan.pool)), time.perf_counter() - start, warms)


def _subset(split: "Split", mask: torch.Tensor, name: str) -> "Split":
    from transfer_engine.train.data import Split

    index = mask.nonzero().flatten()
    features = split.features[index] if split.features is not None else None
    return Split(name, [split.keys[i] for i in index.tolist()], split.labels[index], features)
