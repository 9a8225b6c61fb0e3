"""Likely label errors: confident learning (cleanlab's `find_label_issues`) on te's own probe.

Each train and val record is given class probabilities by a head that did not see it (te train's head,
k-fold over train+val: `transfer_engine.train.out_of_fold_probabilities`, folds by content key so copies
share one); cleanlab estimates from them how often each class is filed under each other one and flags the
records whose given label is least likely, ranked by the probability the probe gives their label
(self-confidence, lowest first). Test labels are not judged: leaving out the test images a model disagrees
with would raise its test accuracy by construction.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from transfer_engine.doctor.rows import Rows
from transfer_engine.errors import TEError, UsageError

# The linear probe's weight decay. Confident learning reads probabilities, so the best-calibrated probe is
# wanted rather than the most accurate: on the tuning sets the out-of-fold log loss was lowest at 1e-2 (digits,
# glyphs) or 1e-1 (icons), and highest at te train's default 1e-4, whose L-BFGS fits are also the slowest
# (docs/doctor.md, "Label errors"). A fixed value: choosing it per data set costs k fits per candidate.
PROBE_WEIGHT_DECAY = 1e-2
INSTALL = "pip install 'transfer-engine[doctor]' (or: pip install cleanlab)"


@dataclass
class LabelIssues:
    """What the probe and cleanlab found.

    Attributes:
        pool: positions (into Rows' records) of the train+val records judged.
        probabilities: float32 [len(pool), C] out-of-fold.
        flagged: positions into `pool` of the likely label errors, most likely first.
        quality: float32 [len(pool)] the probability the probe gives each record's label.
        accuracy: the probe's out-of-fold accuracy on the pool.
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


def find_label_issues(rows: Rows, *, head: str, folds: int, seed: int) -> LabelIssues:
    """Fit the probe k times over train+val and let cleanlab rank the labels it doubts.

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
    features, targets = torch.from_numpy(rows.raw(pool)), torch.from_numpy(labels)
    weight_decay = PROBE_WEIGHT_DECAY if head == "linear" else None
    oof = out_of_fold_probabilities(features, targets, keys, rows.num_classes, head=head, folds=folds, seed=seed,
                                    weight_decay=weight_decay,
                                    held_out=torch.from_numpy(rows.raw(test)) if len(test) else None)
    probabilities = oof.probabilities.numpy().astype(np.float64)
    probabilities /= probabilities.sum(1, keepdims=True)
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
    accuracy = float((probabilities.argmax(1) == labels).mean()) if len(pool) else 0.0
    return LabelIssues(pool, probabilities.astype(np.float32), np.asarray(flagged, dtype=np.int64), quality, accuracy,
                       weight_decay, test, None if oof.held_out is None else oof.held_out.numpy(), oof.head)
