"""Each distinct image's nearest neighbours by cosine, without an N x N matrix: scikit-learn's exact search
on small data, FAISS above.

- Up to `EXACT_MAX_ROWS` rows: scikit-learn's brute-force k-nearest-neighbour search (euclidean on the
  L2-normalised features, whose order is the cosine's), which works through the rows in chunks of bounded
  memory. Exact.
- Above: the features are projected on their top `PROJECTED_DIM` principal components (from a sample of
  `PCA_SAMPLE` rows), FAISS's HNSW graph finds `CANDIDATES` candidates per row in that space, and each
  candidate is scored again on the full features: the cosines reported are exact, the candidate list is
  approximate (its recall against the exact search: docs/doctor.md, "Scale").
The features are read a block at a time (`features` may be a `CachedMatrix`, read from the cache when
indexed): the exact search holds at most `EXACT_MAX_ROWS` of them and works through its distances in blocks of
`SEARCH_MEMORY_MIB`; the FAISS way holds its sample, the projection (`PROJECTED_DIM` floats a row), the
graph and k neighbours a row. The size where the second way wins was measured (docs/doctor.md, "Scale").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from transfer_engine.core.extras import FAISS_INSTALL
from transfer_engine.doctor.matrix import blocks_of
from transfer_engine.errors import UsageError

if TYPE_CHECKING:
    from transfer_engine.doctor.matrix import CachedMatrix

NEIGHBOURS = 10           # per row: enough for the outlier score and for the near duplicates of one image
EXACT_MAX_ROWS = 20_000   # docs/doctor.md, "Scale": where scikit-learn's exact search stops being affordable
PROJECTED_DIM = 128
PCA_SAMPLE = 20_000
CANDIDATES = 24
HNSW_LINKS = 32
HNSW_EF_SEARCH = 48
SEARCH_ROWS = 16_384      # rows searched in one call (FAISS's threads want large calls; their candidates: SEARCH_ROWS x
                          # (CANDIDATES + 1) row numbers)
RESCORE_ROWS = 256        # rows whose candidates are re-scored at once (their candidates: RESCORE_ROWS x CANDIDATES x D floats)
SEARCH_MEMORY_MIB = 64    # the exact search's distances in flight (scikit-learn's working_memory; its default, 1 GiB, held
                          # all of 10,000 rows' distances at once)


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


def nearest(features: "np.ndarray | CachedMatrix", k: int = NEIGHBOURS, *,
            exact_max_rows: int | None = None) -> Neighbours:
    """The `k` nearest neighbours of every row of L2-normalised `features` (the row itself left out): a NumPy
    matrix, or a `CachedMatrix` read a block at a time.

    Raises:
        UsageError: more than `exact_max_rows` rows and FAISS is not installed (the message says how).
    """
    n = features.shape[0]
    k = min(k, n - 1)
    if k < 1:
        return Neighbours(np.zeros((n, 0), np.int64), np.zeros((n, 0), np.float32), "none")
    if n <= (EXACT_MAX_ROWS if exact_max_rows is None else exact_max_rows):
        return _exact(features, k)
    return _approximate(features, k)


def _exact(features: "np.ndarray | CachedMatrix", k: int) -> Neighbours:
    import sklearn
    from sklearn.neighbors import NearestNeighbors

    matrix = np.asarray(features, dtype=np.float32)  # at most EXACT_MAX_ROWS rows
    with sklearn.config_context(working_memory=SEARCH_MEMORY_MIB):
        search = NearestNeighbors(n_neighbors=k + 1, algorithm="brute", metric="euclidean").fit(matrix)
        distance, index = search.kneighbors(matrix)
    del matrix
    return _without_self(index, (1.0 - distance.astype(np.float64) ** 2 / 2).astype(np.float32), k,
                         "exact (scikit-learn)")


def _approximate(features: "np.ndarray | CachedMatrix", k: int) -> Neighbours:
    try:
        import faiss
    except ImportError:
        raise UsageError(f"te doctor searches more than {EXACT_MAX_ROWS:,} images with FAISS, which is not installed: "
                         f"{FAISS_INSTALL}") from None
    n, d = features.shape
    rng = np.random.default_rng(0)
    centred = features[np.sort(rng.choice(n, min(n, PCA_SAMPLE), replace=False))]
    mean = centred.mean(0)
    centred -= mean
    basis = _principal_directions(centred, min(PROJECTED_DIM, d - 1), rng)
    del centred

    def project(block: np.ndarray) -> np.ndarray:
        out = (block - mean) @ basis
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)

    # the projection (PROJECTED_DIM floats a row) is held until the graph has its own copy: FAISS builds a worse
    # graph when the rows are added a batch at a time (docs/doctor.md, "Scale")
    projected = np.empty((n, basis.shape[1]), dtype=np.float32)
    for start, block in blocks_of(features):
        projected[start:start + len(block)] = project(block)
    graph = faiss.IndexHNSWFlat(basis.shape[1], HNSW_LINKS, faiss.METRIC_INNER_PRODUCT)
    graph.add(projected)
    del projected
    graph.hnsw.efSearch = max(HNSW_EF_SEARCH, CANDIDATES)
    index = np.empty((n, k), dtype=np.int64)
    cosine = np.empty((n, k), dtype=np.float32)
    for first in range(0, n, SEARCH_ROWS):
        last = min(n, first + SEARCH_ROWS)
        _, candidates = graph.search(graph.reconstruct_n(first, last - first), min(n, CANDIDATES + 1))
        for start in range(first, last, RESCORE_ROWS):
            rows = features[start:min(last, start + RESCORE_ROWS)]
            found = candidates[start - first:start - first + len(rows)]
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
