"""Each distinct image's nearest neighbours by cosine, without an N x N matrix: scikit-learn's exact search
on small data, FAISS above.

- Up to `EXACT_MAX_ROWS` rows: scikit-learn's brute-force k-nearest-neighbour search (euclidean on the
  L2-normalised features, whose order is the cosine's), which works through the rows in chunks of bounded
  memory. Exact.
- Above: the features are projected on their top `PROJECTED_DIM` principal components (from a sample of
  `PCA_SAMPLE` rows), FAISS's HNSW graph finds `CANDIDATES` candidates per row in that space, and each
  candidate is scored again on the full features: the cosines reported are exact, the candidate list is
  approximate (its recall against the exact search: docs/doctor.md, "Scale").
Memory is a fixed number of bytes per row either way (the features, the projection, the graph, k
neighbours); the size where the second way wins was measured (docs/doctor.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from transfer_engine.core.extras import FAISS_INSTALL
from transfer_engine.errors import UsageError

NEIGHBOURS = 10           # per row: enough for the outlier score and for the near duplicates of one image
EXACT_MAX_ROWS = 20_000   # docs/doctor.md, "Scale": where scikit-learn's exact search stops being affordable
PROJECTED_DIM = 128
PCA_SAMPLE = 20_000
CANDIDATES = 24
HNSW_LINKS = 32
HNSW_EF_SEARCH = 48
RESCORE_ROWS = 1024       # rows whose candidates are re-scored at once (their candidates: RESCORE_ROWS x CANDIDATES x D floats)


@dataclass
class Neighbours:
    """For each row, its k nearest other rows, best first.

    Attributes:
        index: int64 [N, k] row numbers (-1 where a row has fewer than k others).
        cosine: float32 [N, k] their cosines (-inf where index is -1).
        method: "exact (scikit-learn)" or "FAISS HNSW on the top PCA components, re-scored exactly".
    """

    index: np.ndarray
    cosine: np.ndarray
    method: str


def nearest(features: np.ndarray, k: int = NEIGHBOURS, *, exact_max_rows: int = EXACT_MAX_ROWS) -> Neighbours:
    """The `k` nearest neighbours of every row of L2-normalised `features` (the row itself left out).

    Raises:
        UsageError: more than `exact_max_rows` rows and FAISS is not installed (the message says how).
    """
    n = features.shape[0]
    k = min(k, n - 1)
    if k < 1:
        return Neighbours(np.zeros((n, 0), np.int64), np.zeros((n, 0), np.float32), "none")
    if n <= exact_max_rows:
        return _exact(features, k)
    return _approximate(features, k)


def _exact(features: np.ndarray, k: int) -> Neighbours:
    from sklearn.neighbors import NearestNeighbors

    search = NearestNeighbors(n_neighbors=k + 1, algorithm="brute", metric="euclidean").fit(features)
    distance, index = search.kneighbors(features)
    return _without_self(index, (1.0 - distance.astype(np.float64) ** 2 / 2).astype(np.float32), k,
                         "exact (scikit-learn)")


def _approximate(features: np.ndarray, k: int) -> Neighbours:
    try:
        import faiss
    except ImportError:
        raise UsageError(f"te doctor searches more than {EXACT_MAX_ROWS:,} images with FAISS, which is not installed: "
                         f"{FAISS_INSTALL}") from None
    n, d = features.shape
    rng = np.random.default_rng(0)
    sample = features[np.sort(rng.choice(n, min(n, PCA_SAMPLE), replace=False))]
    mean = sample.mean(0)
    centred = sample - mean
    basis = _principal_directions(centred, min(PROJECTED_DIM, d - 1), rng)
    projected = np.empty((n, basis.shape[1]), dtype=np.float32)
    for start in range(0, n, RESCORE_ROWS):
        block = (features[start:start + RESCORE_ROWS] - mean) @ basis
        block /= np.maximum(np.linalg.norm(block, axis=1, keepdims=True), 1e-12)
        projected[start:start + len(block)] = block
    graph = faiss.IndexHNSWFlat(projected.shape[1], HNSW_LINKS, faiss.METRIC_INNER_PRODUCT)
    graph.add(projected)
    graph.hnsw.efSearch = max(HNSW_EF_SEARCH, CANDIDATES)
    index = np.empty((n, k), dtype=np.int64)
    cosine = np.empty((n, k), dtype=np.float32)
    for start in range(0, n, RESCORE_ROWS):
        rows = features[start:start + RESCORE_ROWS]
        _, found = graph.search(projected[start:start + len(rows)], min(n, CANDIDATES + 1))
        # the exact cosines of the candidates, on the full features
        exact = np.einsum("nd,nkd->nk", rows, features[np.maximum(found, 0)])
        exact[found < 0] = -np.inf
        exact[found == np.arange(start, start + len(rows))[:, None]] = -np.inf  # the row itself
        order = np.argsort(-exact, axis=1, kind="stable")[:, :k]
        index[start:start + len(rows)] = np.take_along_axis(found, order, 1)
        cosine[start:start + len(rows)] = np.take_along_axis(exact, order, 1)
    index[~np.isfinite(cosine)] = -1
    return Neighbours(index, cosine, "FAISS HNSW on the top PCA components, re-scored exactly")


def _principal_directions(centred: np.ndarray, r: int, rng: np.random.Generator) -> np.ndarray:
    """The top `r` principal directions (D x r) of a centred sample, by a randomized range finder with two
    power iterations on the D x D covariance, orthonormalised through small (r x r) eigen problems: matrix
    products and small LAPACK calls only (a full SVD, eigen-decomposition or QR of the large matrices took
    far longer with the LAPACK numpy ships here)."""
    cov = (centred.T @ centred).astype(np.float64)
    q = _orthonormal(cov @ rng.standard_normal((cov.shape[0], r + 8)))
    for _ in range(2):
        q = _orthonormal(cov @ q)
    _, vectors = np.linalg.eigh(q.T @ cov @ q)
    return np.ascontiguousarray((q @ vectors[:, ::-1])[:, :r], dtype=np.float32)


def _orthonormal(y: np.ndarray) -> np.ndarray:
    """An orthonormal basis of y's columns: y (y^T y)^(-1/2)."""
    values, vectors = np.linalg.eigh(y.T @ y)
    keep = values > values.max() * 1e-12
    return y @ (vectors[:, keep] / np.sqrt(values[keep]))


def _without_self(index: np.ndarray, cosine: np.ndarray, k: int, method: str) -> Neighbours:
    """Drop each row from its own list (it is usually first, but a copy may tie with it)."""
    own = index == np.arange(index.shape[0])[:, None]
    keep = ~own
    # rows where the row itself was not returned (ties): drop the last neighbour instead
    missing = keep.all(1)
    keep[missing, -1] = False
    out_index = index[keep].reshape(index.shape[0], k)
    out_cos = cosine[keep].reshape(index.shape[0], k)
    return Neighbours(out_index, out_cos, method)
