"""Likely label errors: confident learning (cleanlab's `find_label_issues`) on te's own probe.

Each train and val record is given class probabilities by a head that did not see it (te train's head,
k-fold over train+val: `transfer_engine.train.out_of_fold_probabilities`, folds by content key so copies
share one); cleanlab estimates from them how often each class is filed under each other one and flags the
records whose given label is least likely, ranked by the probability the probe gives their label
(self-confidence, lowest first). The probe's probabilities are averaged with a second opinion that costs
no fit: the labels of each record's nearest train+val neighbours in te doctor's own neighbour graph (the
k-nearest-neighbour vote cleanlab's Datalab judges labels with when it is given features, on the graph te
doctor has already built for the near duplicates and outliers; docs/doctor.md, "Likely label errors").
Test labels are not judged, and do not vote: leaving out the test images a model disagrees with would
raise its test accuracy by construction.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from transfer_engine.doctor.neighbours import Neighbours
from transfer_engine.doctor.rows import Rows
from transfer_engine.errors import TEError, UsageError

# The linear probe's weight decay. Confident learning reads probabilities, so the best-calibrated probe is
# wanted rather than the most accurate: on the tuning sets the out-of-fold log loss was lowest at 1e-2 (digits,
# glyphs) or 1e-1 (icons), and highest at te train's default 1e-4, whose L-BFGS fits are also the slowest
# (docs/doctor.md, "Label errors"). A fixed value: choosing it per data set costs k fits per candidate.
PROBE_WEIGHT_DECAY = 1e-2
# Each of the probe's fits reads at most this many rows (a sample stratified by class; every row is still
# judged out of fold): the memory of a fit stops growing with the data set (docs/doctor.md, "Scale"). Every
# real set of the benchmark is smaller, so none of its figures depends on it.
PROBE_FIT_ROWS = 20_000
INSTALL = "pip install 'transfer-engine[doctor]' (or: pip install cleanlab)"


@dataclass
class LabelIssues:
    """What the probe and cleanlab found.

    Attributes:
        pool: positions (into Rows' records) of the train+val records judged.
        probabilities: float32 [len(pool), C] what cleanlab judged: the probe's out-of-fold probabilities,
            averaged with the neighbours' vote where a neighbour is in train+val.
        flagged: positions into `pool` of the likely label errors, most likely first.
        quality: float32 [len(pool)] the probability `probabilities` give each record's label.
        accuracy: the probe's own out-of-fold accuracy on the pool (before the neighbours' vote).
        neighbours: the neighbours per image whose labels voted (0: the probe alone).
        weight_decay: the probe's weight decay (None: the head's te train default).
        test_probabilities: float32 [T, C] of the test records (the probe fitted on the whole pool), or None.
        test: positions of the test records.
        head: the probe fitted on the whole pool (raw features), or None.
    """

    pool: np.ndarray
    probabilities: np.ndarray
    flagged: np.ndarray
    quality: np.ndarray
    accuracy: float
    neighbours: int
    weight_decay: float | None
    test: np.ndarray
    test_probabilities: np.ndarray | None
    head: object | None

    @property
    def predicted(self) -> np.ndarray:
        return self.probabilities.argmax(1)


def require_cleanlab() -> None:
    """Raise a one-line UsageError when cleanlab is not installed."""
    import importlib.util

    if importlib.util.find_spec("cleanlab") is None:
        raise UsageError(f"te doctor finds label errors with cleanlab, which is not installed: {INSTALL}")


def neighbour_vote(rows: Rows, pool: np.ndarray, found: Neighbours) -> np.ndarray:
    """float64 [len(pool), C]: the share of each class among the labels of each pooled record's nearest
    neighbours (`found`, over distinct images), counting train+val records only, each neighbouring image one
    vote (split among its records when copies of it carry several labels). The record's own image never
    votes, so its copies do not vouch for it, as they share a fold in the probe. A row of zeros where no
    neighbour is in train+val.
    """
    from scipy import sparse

    images, classes = len(rows.keys), rows.num_classes
    own = rows.record_key[pool]
    per_image = sparse.csr_matrix((np.ones(len(pool)), (own, rows.labels[pool])), shape=(images, classes))
    counts = np.asarray(per_image.sum(1)).ravel()
    per_image = sparse.diags(np.divide(1.0, counts, out=np.zeros(images), where=counts > 0)) @ per_image
    index = found.index[own]
    row, col = np.nonzero(index >= 0)
    near = sparse.csr_matrix((np.ones(len(row)), (row, index[row, col])), shape=(len(pool), images))
    votes = np.asarray((near @ per_image).todense())
    total = votes.sum(1, keepdims=True)
    return np.divide(votes, total, out=np.zeros_like(votes), where=total > 0)


def find_label_issues(rows: Rows, *, head: str, folds: int, seed: int, neighbours: Neighbours | None = None,
                      max_fit_rows: int | None = None) -> LabelIssues:
    """Fit the probe k times over train+val, average its out-of-fold probabilities with the vote of each
    record's `neighbours` (None, or a class with no more train+val records than neighbours: the probe alone),
    and let cleanlab rank the labels they doubt. Each fit reads at most `max_fit_rows` rows (default
    PROBE_FIT_ROWS).

    Raises:
        UsageError: cleanlab missing, an unknown head, fewer distinct images than folds.
    """
    import torch
    from cleanlab.filter import find_label_issues as cleanlab_find

    from transfer_engine.train import out_of_fold_probabilities

    pool = rows.in_split("train", "val")
    test = rows.in_split("test")
    labels = rows.labels[pool]
    keys = [rows.keys[u] for u in rows.record_key[pool].tolist()]
    # the raw features read from the cache as each fit needs them (`Rows.gathered`), at most PROBE_FIT_ROWS of
    # them a fit: no copy of the pool's or the test's features is held
    weight_decay = PROBE_WEIGHT_DECAY if head == "linear" else None
    oof = out_of_fold_probabilities(rows.gathered(pool), torch.from_numpy(labels), keys, rows.num_classes, head=head,
                                    folds=folds, seed=seed, weight_decay=weight_decay,
                                    held_out=rows.gathered(test) if len(test) else None,
                                    max_fit_rows=max_fit_rows or PROBE_FIT_ROWS)
    probabilities = oof.probabilities.numpy().astype(np.float64)
    probabilities /= probabilities.sum(1, keepdims=True)
    accuracy = float((probabilities.argmax(1) == labels).mean()) if len(pool) else 0.0
    k = 0 if neighbours is None else neighbours.index.shape[1]
    if len(pool) and np.bincount(labels)[np.unique(labels)].min() <= k:
        k = 0  # a class of k images or fewer cannot fill a neighbourhood: its images would be outvoted
    if k:  # an equal-weight average of two opinions: nothing here was tuned to a data set
        votes = neighbour_vote(rows, pool, neighbours)
        voted = votes.sum(1) > 0
        probabilities[voted] = (probabilities[voted] + votes[voted]) / 2
    present = np.unique(labels)
    try:
        if len(present) == rows.num_classes:
            flagged = cleanlab_find(labels, probabilities, return_indices_ranked_by="self_confidence", n_jobs=1)
        else:  # cleanlab counts every column as a class: judge on the classes the pool has
            column = {c: i for i, c in enumerate(present)}
            sub = probabilities[:, present]
            flagged = cleanlab_find(np.array([column[c] for c in labels]), sub / sub.sum(1, keepdims=True),
                                    return_indices_ranked_by="self_confidence", n_jobs=1)
    except (ValueError, AssertionError) as exc:  # e.g. a class with too few records for its noise estimate
        raise TEError(f"cleanlab could not judge the labels of {rows.dataset!r}: {exc}") from None
    quality = probabilities[np.arange(len(pool)), labels].astype(np.float32)
    return LabelIssues(pool, probabilities.astype(np.float32), np.asarray(flagged, dtype=np.int64), quality, accuracy,
                       k, weight_decay, test, None if oof.held_out is None else oof.held_out.numpy(), oof.head)
