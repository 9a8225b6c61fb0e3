"""Outliers (far from every class) and class balance.

An image's outlier score is one minus the mean cosine to its `NEIGHBOURS` nearest distinct images, of any
class: an image unlike anything else in the data set (a photo among scans, a blank frame) scores high
whatever its label. It is flagged when its score is beyond the far-out fence of the data set's own scores
(third quartile + FENCE x the interquartile range, Tukey's rule): a rule relative to the data, since how
close images sit differs from one data set and backbone to another.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from transfer_engine.doctor.neighbours import Neighbours
from transfer_engine.doctor.rows import SPLITS, Rows

FENCE = 3.0


@dataclass
class Outliers:
    """Attributes: score per distinct image; fence; flagged: distinct images beyond it, highest first."""

    score: np.ndarray
    fence: float
    flagged: np.ndarray


def find_outliers(neighbours: Neighbours) -> Outliers:
    """Score every distinct image by its neighbours and flag those beyond the far-out fence."""
    cos = np.where(neighbours.index >= 0, neighbours.cosine, np.nan)
    with np.errstate(invalid="ignore"):
        score = 1.0 - np.nanmean(cos, axis=1) if cos.shape[1] else np.zeros(cos.shape[0])
    score = np.nan_to_num(score, nan=0.0).astype(np.float32)
    q1, q3 = np.percentile(score, [25, 75]) if len(score) else (0.0, 0.0)
    fence = float(q3 + FENCE * (q3 - q1))
    flagged = np.flatnonzero(score > fence)
    return Outliers(score, fence, flagged[np.argsort(-score[flagged], kind="stable")])


def class_balance(rows: Rows) -> dict:
    """Records per class and split, the train split's largest-to-smallest class ratio, and the classes a split
    lacks."""
    counts = {s: np.bincount(rows.labels[rows.splits == s], minlength=rows.num_classes) for s in SPLITS}
    train = counts["train"]
    present = train[train > 0]
    return {"counts": {name: {s: int(counts[s][i]) for s in SPLITS} for i, name in enumerate(rows.class_names)},
            "train_ratio": float(present.max() / present.min()) if len(present) else None,
            "missing": {s: [rows.class_names[i] for i in np.flatnonzero(counts[s] == 0)]
                        for s in SPLITS if counts[s].sum() and (counts[s] == 0).any()}}
