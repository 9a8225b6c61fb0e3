"""Near duplicates: two distinct images (different bytes) whose cached features have a cosine of at least
the threshold: the same picture resized, re-encoded, cropped a little or colour-shifted
(docs/doctor.md says how the threshold was chosen and what it cannot tell apart).

Pairs come from each image's nearest neighbours (`neighbours.nearest`), so an image with more than
`NEIGHBOURS` copies above the threshold shows only its nearest ones: it is flagged all the same.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from transfer_engine.doctor.neighbours import Neighbours
from transfer_engine.doctor.rows import SPLITS, Rows


@dataclass(frozen=True)
class NearPair:
    """Two distinct images (rows of `Rows.features`) and their cosine."""

    a: int
    b: int
    cosine: float


def near_pairs(neighbours: Neighbours, threshold: float) -> list[NearPair]:
    """Every pair of distinct images at or above `threshold`, once each, highest cosine first."""
    rows, cols = np.nonzero(neighbours.cosine >= threshold)
    others = neighbours.index[rows, cols]
    seen: dict[tuple[int, int], float] = {}
    for a, b, c in zip(rows.tolist(), others.tolist(), neighbours.cosine[rows, cols].tolist()):
        if b < 0 or a == b:
            continue
        key = (min(a, b), max(a, b))
        seen[key] = max(seen.get(key, -1.0), c)
    return sorted((NearPair(a, b, c) for (a, b), c in seen.items()), key=lambda p: (-p.cosine, p.a, p.b))


def splits_of_images(rows: Rows) -> list[set[str]]:
    """The splits each distinct image has records in."""
    return [{str(rows.splits[r]) for r in records} for records in rows.records_of]


def pair_kind(a_splits: set[str], b_splits: set[str]) -> str:
    """"train-test", "train-val", "val-test" for a pair across splits (the earliest split each side has),
    else "within train" etc."""
    rank = {s: i for i, s in enumerate(SPLITS)}
    first_a = min(a_splits, key=rank.get)
    first_b = min(b_splits, key=rank.get)
    if first_a == first_b and a_splits == b_splits and len(a_splits) == 1:
        return f"within {first_a}"
    low, high = sorted((first_a, first_b), key=rank.get)
    if low == high:  # one side is also in a later split: the pair crosses through that copy
        high = max(a_splits | b_splits, key=rank.get)
    return f"{low}-{high}"


def leaked_by_near_copy(rows: Rows, pairs: list[NearPair]) -> dict[int, tuple[int, float]]:
    """{held-out record: (a record of an earlier split it nearly duplicates, the cosine)}, the closest one."""
    rank = {s: i for i, s in enumerate(SPLITS)}
    records_of = rows.records_of
    leaked: dict[int, tuple[int, float]] = {}
    for p in pairs:
        for mine, other in ((p.a, p.b), (p.b, p.a)):
            earlier = min(records_of[other], key=lambda r: (rank[rows.splits[r]], r))
            for r in records_of[mine]:
                if rank[rows.splits[r]] > rank[rows.splits[earlier]] and (r not in leaked or leaked[r][1] < p.cosine):
                    leaked[r] = (earlier, p.cosine)
    return leaked
