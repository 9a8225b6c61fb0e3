"""Out-of-fold class probabilities of one of te's heads: what te doctor judges labels with.

Every row of the pool (train+val) is predicted once, by the head fitted on the other folds (the folds of
`core.selection.assign_folds`: stratified, by content key, so copies of one image share a fold); rows
outside the pool (test) are predicted by the head fitted on the whole pool. The head is fitted as te train
fits it (`fit_head`, its defaults: the linear head's L-BFGS on features divided by one global scale), on
features given as one tensor, or as rows taken when needed (`GatheredRows`: rows of a matrix the caller
already holds; te doctor's `RecordFeatures`: rows read from the cache), so the caller chooses what it holds in
memory. With `max_fit_rows`, each fit reads at most that many rows (a sample stratified by class), so the
memory of a fit does not grow with the pool; every pooled row is still predicted.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Protocol, Sequence

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


_CHUNK = 2048  # rows summed at once for the global scale, and predicted at once (float32 [_CHUNK, D] in flight)


@dataclass(frozen=True)
class GatheredRows:
    """Rows taken from one matrix when needed, never copied whole: row i is `matrix[index[i]]`, multiplied by
    `scale[index[i]]` when a scale is given (te doctor: its L2-normalised features and their norms give the
    raw features of its records, copies of one image sharing a row).

    Attributes:
        matrix: float32 [U, D].
        index: int64 [N], the row of `matrix` of each row.
        scale: float32 [U], or None.
    """

    matrix: torch.Tensor
    index: torch.Tensor
    scale: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.index)

    @property
    def dim(self) -> int:
        return self.matrix.shape[1]

    def take(self, positions: "torch.Tensor | slice") -> torch.Tensor:
        """float32 [len(positions), D]: a copy of these rows."""
        u = self.index[positions]
        out = self.matrix[u]
        if self.scale is not None:
            out *= self.scale[u, None]
        return out


class RowSource(Protocol):
    """Rows taken when needed: `GatheredRows`, or any object with these three."""

    dim: int

    def __len__(self) -> int: ...

    def take(self, positions: "torch.Tensor | slice") -> torch.Tensor: ...


@dataclass
class _Keyed:
    key: str
    label: int


def out_of_fold_probabilities(features: "torch.Tensor | RowSource", labels: torch.Tensor, keys: Sequence[str],
                              num_classes: int, *, head: str = "linear", folds: int = 5, seed: int = 0,
                              weight_decay: float | None = None,
                              held_out: "torch.Tensor | RowSource | None" = None,
                              max_fit_rows: int | None = None) -> OutOfFold:
    """Class probabilities of every pooled row from `head` fitted on the other folds.

    Args:
        features: float32 [N, D] raw features of the pool (train+val), or `GatheredRows` giving them. Only
            one fold's fit rows are copied at a time (the whole pool's too, for `held_out`, when given as
            `GatheredRows`).
        labels: int64 [N] their labels.
        keys: their content keys (the folds are dealt by key).
        num_classes: C.
        head: a head name (te heads), fitted with its te train defaults.
        folds: k.
        seed: seeds the fits.
        weight_decay: the head's weight decay (None: its te train default).
        held_out: float32 [M, D] rows to predict with the head fitted on the whole pool (test), or
            `GatheredRows` giving them, or None.
        max_fit_rows: each fit (a fold's, the whole pool's) reads at most this many rows, a sample stratified
            by class (`fit_sample`); None: every row.

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
    rows = _gathered(features)
    data = _in_memory(rows, num_classes)
    hp = default_hyperparameters(spec, weight_decay=weight_decay, train_rows=len(keys))
    probabilities = torch.zeros(len(keys), num_classes)
    for f in range(folds):
        held = fold == f
        # the fold's fit rows are copied for its fit only: freed before the next fold's are taken
        fit = fit_sample((~held).nonzero().flatten(), labels, max_fit_rows, seed)
        module = fit_head(spec, data, _split(rows, labels, keys, fit), hp, seed=seed).module
        probabilities[held] = _probabilities(module, rows, held.nonzero().flatten())
    out = OutOfFold(probabilities, fold)
    if held_out is not None:  # the whole pool (a tensor given and no sample: without a copy of its features)
        fit = fit_sample(torch.arange(len(keys)), labels, max_fit_rows, seed)
        whole = (_split(rows, labels, keys, fit) if len(fit) < len(keys) or not isinstance(features, torch.Tensor)
                 else Split("pool", list(keys), labels, features))
        module = fit_head(spec, data, whole, hp, seed=seed).module
        del whole
        out.held_out, out.head = _probabilities(module, _gathered(held_out)), module
    return out


def fit_sample(positions: torch.Tensor, labels: torch.Tensor, max_rows: int | None, seed: int) -> torch.Tensor:
    """int64, sorted: `positions` when there are at most `max_rows` of them (or no limit), else a random sample
    of about `max_rows` of them stratified by class: each class keeps its share, and at least one row (a class
    left out of a fit would look like a label error wherever it is)."""
    if max_rows is None or len(positions) <= max_rows:
        return positions
    generator = torch.Generator().manual_seed(seed)
    classes = labels[positions]
    kept = []
    for c in torch.unique(classes).tolist():
        mine = positions[classes == c]
        share = max(1, round(len(mine) * max_rows / len(positions)))
        kept.append(mine[torch.randperm(len(mine), generator=generator)[:share]])
    return torch.sort(torch.cat(kept)).values


def _gathered(features: "torch.Tensor | RowSource") -> RowSource:
    return GatheredRows(features, torch.arange(len(features))) if isinstance(features, torch.Tensor) else features


@torch.no_grad()
def _probabilities(module: torch.nn.Module, rows: RowSource, positions: torch.Tensor | None = None,
                   batch: int | None = None) -> torch.Tensor:
    """float32 [len(positions), C] (every row when None), `batch` (default _CHUNK) rows copied at a time."""
    module.eval()
    batch = batch or _CHUNK
    positions = torch.arange(len(rows)) if positions is None else positions
    return torch.cat([module(rows.take(positions[i:i + batch])).float().softmax(1)
                      for i in range(0, len(positions), batch)] or [torch.zeros(0)])


def _split(rows: RowSource, labels: torch.Tensor, keys: Sequence[str], index: torch.Tensor) -> Split:
    return Split("pool", [keys[i] for i in index.tolist()], labels[index], rows.take(index))


def _in_memory(rows: RowSource, num_classes: int) -> TrainingData:
    """A TrainingData over features already in memory (no cache behind them): what `fit_head` reads is the
    dimension, the classes and the global scale (the root mean square of the features, as te train's)."""
    squares = sum(float(rows.take(slice(i, i + _CHUNK)).double().pow(2).sum()) for i in range(0, len(rows), _CHUNK))
    scale = (squares / max(1, len(rows) * rows.dim)) ** 0.5 or 1.0  # in chunks: no float64 copy of every row
    return TrainingData(cache=None, dataset="", class_names=[str(c) for c in range(num_classes)],
                        space=SimpleNamespace(dim=rows.dim), provenance=None, splits={}, in_memory=True,
                        scale=scale)
