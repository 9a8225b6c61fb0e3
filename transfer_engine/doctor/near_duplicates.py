"""Near duplicates: two distinct images (different bytes) whose cached features have a cosine of at least
the threshold: the same picture resized, re-encoded, cropped a little or colour-shifted
(docs/doctor.md says how the threshold was chosen and what it cannot tell apart).

Pairs come from each image's nearest neighbours (`neighbours.nearest`), so an image with more than
`NEIGHBOURS` copies above the threshold shows only its nearest ones: it is flagged all the same.

With the copy signature (`signature_pairs`: backbone dct_signature, cached beside the features) the rule is
another: a candidate (a nearest neighbour in either space) is the same picture when its signature's cosine
reaches the signature threshold and its features' cosine the floor. Pooled features put distinct images of
one class as close as a re-encoded copy; the signature, a thumbnail's low frequencies, does not, and the
floor keeps out distinct images whose thumbnails happen to match (docs/doctor.md, "The copy signature").

With the copy thumbnails (`aligned_pairs`: backbone copy_thumbnail) the rule is the sharpest of the three: a
candidate (a nearest neighbour by the features, or by the signature te doctor computes from the thumbnails)
whose features reach the floor is the same picture when the two thumbnails line up (`doctor.aligned`: the
best crop box of one against the other whole) at the aligned threshold or above (docs/doctor.md, "Aligned
thumbnails").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from transfer_engine.doctor.matrix import CachedMatrix, pair_cosines
from transfer_engine.doctor.neighbours import Neighbours
from transfer_engine.doctor.rows import SPLITS, Rows


@dataclass(frozen=True)
class NearPair:
    """Two distinct images (rows of `Rows.features`), their features' cosine and, when the copy signature
    judged them, the signature's cosine, or when their thumbnails did, the aligned score."""

    a: int
    b: int
    cosine: float
    signature: float | None = None
    aligned: float | None = None


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


def signature_pairs(features: Neighbours, signature: Neighbours, feature_rows: "np.ndarray | CachedMatrix",
                    signature_rows: "np.ndarray | CachedMatrix", threshold: float, floor: float) -> list[NearPair]:
    """Every pair of distinct images that is a nearest neighbour in either space, whose signatures have a
    cosine of at least `threshold` and whose features one of at least `floor`; once each, highest signature
    cosine first. `feature_rows` and `signature_rows`: the L2-normalised rows of the two spaces."""
    pairs = _candidates([features, signature])
    if not len(pairs):
        return []
    a, b = pairs[:, 0], pairs[:, 1]
    same = pair_cosines(signature_rows, pairs)
    close = pair_cosines(feature_rows, pairs)
    keep = np.flatnonzero((same >= threshold) & (close >= floor))
    found = [NearPair(int(a[i]), int(b[i]), float(close[i]), float(same[i])) for i in keep.tolist()]
    return sorted(found, key=lambda p: (-p.signature, p.a, p.b))


def aligned_pairs(graphs: list[Neighbours], feature_rows: "np.ndarray | CachedMatrix",
                  thumbnails: "np.ndarray | CachedMatrix", threshold: float, floor: float) -> list[NearPair]:
    """Every pair of distinct images that is a nearest neighbour in one of `graphs`, whose features have a
    cosine of at least `floor` and whose thumbnails an aligned score (`doctor.aligned`) of at least
    `threshold`; once each, highest aligned score first. `feature_rows`: the L2-normalised features."""
    from transfer_engine.doctor.aligned import aligned_scores

    pairs = _candidates(graphs)
    if not len(pairs):
        return []
    close = pair_cosines(feature_rows, pairs)
    pairs, close = pairs[close >= floor], close[close >= floor]
    scores = aligned_scores(thumbnails, pairs)
    keep = np.flatnonzero(scores >= threshold)
    found = [NearPair(int(pairs[i, 0]), int(pairs[i, 1]), float(close[i]), aligned=float(scores[i]))
             for i in keep.tolist()]
    return sorted(found, key=lambda p: (-p.aligned, p.a, p.b))


def _candidates(graphs: list[Neighbours]) -> np.ndarray:
    """int64 [P, 2]: every pair of distinct rows that is a nearest neighbour in one of `graphs`, once each
    (smaller row first, sorted)."""
    pairs = np.concatenate([_neighbour_pairs(g) for g in graphs])
    return np.unique(np.sort(pairs, axis=1), axis=0) if len(pairs) else pairs


def _neighbour_pairs(neighbours: Neighbours) -> np.ndarray:
    """int64 [P, 2]: every (row, one of its neighbours)."""
    rows, cols = np.nonzero(neighbours.index >= 0)
    pairs = np.stack([rows, neighbours.index[rows, cols]], axis=1).astype(np.int64)
    return pairs[pairs[:, 0] != pairs[:, 1]]


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
