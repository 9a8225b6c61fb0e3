"""Out-of-fold class probabilities of one of te's heads: what te doctor judges labels with.

Every row of the pool (train+val) is predicted once, by the head fitted on the other folds (the folds of
`core.selection.assign_folds`: stratified, by content key, so copies of one image share a fold); rows
outside the pool (test) are predicted by the head fitted on the whole pool. The head is fitted as te train
fits it (`fit_head`, its defaults: the linear head's L-BFGS on features divided by one global scale), on
features given as one tensor, so the caller chooses what it holds in memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Sequence

import torch

from transfer_engine.core.selection import assign_folds
from transfer_engine.train.data import Split, TrainingData


@dataclass
class OutOfFold:
    """The probe's answers.

    Attributes:
        probabilities: float32 [N, C], row i predicted by a head that did not see row i.
        fold: int64 [N], the fold of each pooled row.
        held_out: float32 [M, C] of the rows given as `held_out` (a head fitted on the whole pool), or None.
        head: the head fitted on the whole pool (takes raw features), or None when no `held_out` was asked for.
    """

    probabilities: torch.Tensor
    fold: torch.Tensor
    held_out: torch.Tensor | None = None
    head: torch.nn.Module | None = None


_CHUNK = 8192  # rows summed at once for the global scale


@dataclass
class _Keyed:
    key: str
    label: int


def out_of_fold_probabilities(features: torch.Tensor, labels: torch.Tensor, keys: Sequence[str], num_classes: int,
                              *, head: str = "linear", folds: int = 5, seed: int = 0,
                              weight_decay: float | None = None, held_out: torch.Tensor | None = None) -> OutOfFold:
    """Class probabilities of every pooled row from `head` fitted on the other folds.

    Args:
        features: float32 [N, D] raw features of the pool (train+val).
        labels: int64 [N] their labels.
        keys: their content keys (the folds are dealt by key).
        num_classes: C.
        head: a head name (te heads), fitted with its te train defaults.
        folds: k.
        seed: seeds the fits.
        weight_decay: the head's weight decay (None: its te train default).
        held_out: float32 [M, D] rows to predict with the head fitted on the whole pool (test), or None.

    Returns:
        The `OutOfFold`.

    Raises:
        UsageError: an unknown head, fewer distinct images than folds.
        TrainingDiverged: a fit diverged.
    """
    from transfer_engine.heads import get_head_spec
    from transfer_engine.train.fit import default_hyperparameters, fit_head

    spec = get_head_spec(head)
    fold = torch.tensor(assign_folds([_Keyed(k, int(y)) for k, y in zip(keys, labels.tolist())], folds))
    data = _in_memory(features, num_classes)
    hp = default_hyperparameters(spec, weight_decay=weight_decay, train_rows=len(keys))
    probabilities = torch.zeros(len(keys), num_classes)
    for f in range(folds):
        held = fold == f
        fit_rows = _split(features, labels, keys, ~held)
        module = fit_head(spec, data, fit_rows, hp, seed=seed).module
        probabilities[held] = _probabilities(module, features[held])
    out = OutOfFold(probabilities, fold)
    if held_out is not None:  # the whole pool, without a copy of its features
        module = fit_head(spec, data, Split("pool", list(keys), labels, features), hp, seed=seed).module
        out.held_out, out.head = _probabilities(module, held_out), module
    return out


@torch.no_grad()
def _probabilities(module: torch.nn.Module, features: torch.Tensor, batch: int = 8192) -> torch.Tensor:
    module.eval()
    return torch.cat([module(features[i:i + batch]).float().softmax(1) for i in range(0, len(features), batch)]
                     or [torch.zeros(0)])


def _split(features: torch.Tensor, labels: torch.Tensor, keys: Sequence[str], mask: torch.Tensor) -> Split:
    index = mask.nonzero().flatten()
    return Split("pool", [keys[i] for i in index.tolist()], labels[index], features[index])


def _in_memory(features: torch.Tensor, num_classes: int) -> TrainingData:
    """A TrainingData over features already in memory (no cache behind them): what `fit_head` reads is the
    dimension, the classes and the global scale (the root mean square of the features, as te train's)."""
    squares = sum(float(features[i:i + _CHUNK].double().pow(2).sum()) for i in range(0, len(features), _CHUNK))
    scale = (squares / max(1, features.numel())) ** 0.5 or 1.0  # in chunks: no float64 copy of every row
    return TrainingData(cache=None, dataset="", class_names=[str(c) for c in range(num_classes)],
                        space=SimpleNamespace(dim=features.shape[1]), provenance=None, splits={}, in_memory=True,
                        scale=scale)
