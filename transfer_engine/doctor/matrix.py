"""Feature rows read from the cache when they are used, never held whole: what keeps te doctor's memory flat
in the number of rows (docs/doctor.md, "Scale").

A `CachedMatrix` stands for the L2-normalised rows of one cached feature space, one row per distinct image:
indexed like a NumPy array (a slice, or an array of row numbers of any shape) it reads those rows from the
cache's shards, decodes them to float32 and normalises them; `raw` gives them as cached. Everything te doctor
computes on the features (the neighbour search, the candidates' cosines, the probe's fits, the thumbnails'
alignment) takes them a bounded block at a time. The shards' memory maps are dropped after each read, so the
pages a pass has touched are not kept resident either (a map counts in the process's memory for as long as it
lives).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

if TYPE_CHECKING:
    import torch

# Rows decoded at once by `blocks_of` (float32 [BLOCK_ROWS, D] in flight: 5 MB at 1,280 dimensions).
BLOCK_ROWS = 1024


class CachedMatrix:
    """float32 [U, D], L2-normalised: rows of a cached space for a list of content keys, read when indexed.

    Attributes:
        space: the `CachedSpace` read.
        shape: (U, D).
    """

    dtype = np.dtype(np.float32)
    ndim = 2

    def __init__(self, space: Any, keys: list[str]) -> None:
        self.space = space
        self._locations = space.locate(keys)
        self.shape = (len(keys), space.dim)

    def __len__(self) -> int:
        return self.shape[0]

    def raw(self, index: "slice | np.ndarray | torch.Tensor") -> "torch.Tensor":
        """float32 [..., D]: the rows at `index` (a slice, or row numbers of any shape) as cached, unnormalised."""
        import torch

        if isinstance(index, slice) and index.step in (None, 1):  # a run of rows: their locations are a view
            start, stop, _ = index.indices(self.shape[0])
            shape = (max(0, stop - start),)
            locations = self._locations.subset(slice(start, stop))
        else:
            positions = (torch.arange(*index.indices(self.shape[0])) if isinstance(index, slice)
                         else torch.as_tensor(np.asarray(index), dtype=torch.int64))
            shape = tuple(positions.shape)
            flat = positions.reshape(-1)
            if len(flat) and (int(flat.min()) < 0 or int(flat.max()) >= self.shape[0]):
                raise IndexError(f"row numbers outside 0..{self.shape[0] - 1}")
            locations = self._locations.subset(flat)
        try:
            out = self.space.gather(locations)
        finally:
            self.space.cache.maps.forget()  # the pages read are not kept mapped (and resident) for the next read
        return out.reshape(*shape, self.shape[1])

    def __getitem__(self, index: "slice | np.ndarray") -> np.ndarray:
        """float32 [..., D]: the rows at `index`, L2-normalised."""
        rows = self.raw(index).numpy()
        norms = np.sqrt(np.einsum("...d,...d->...", rows, rows))
        rows /= np.maximum(norms, 1e-12)[..., None]
        return rows

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        """Every row, normalised (only for a matrix known to be small: the exact search's, a test's)."""
        whole = self[:]
        return whole if dtype is None else whole.astype(dtype)


def blocks_of(matrix: "np.ndarray | CachedMatrix", rows: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """(first row, rows) over a NumPy matrix or a `CachedMatrix` alike, `rows` (default BLOCK_ROWS) at a time."""
    rows = rows or BLOCK_ROWS
    for start in range(0, len(matrix), rows):
        yield start, np.asarray(matrix[start:start + rows], dtype=np.float32)


def pair_cosines(matrix: "np.ndarray | CachedMatrix", pairs: np.ndarray, rows: int | None = None) -> np.ndarray:
    """float32 [P]: the dot product of the two rows of each pair (int64 [P, 2]) of L2-normalised `matrix`, a
    block of `rows` pairs (default BLOCK_ROWS / 2) at a time (the candidate pairs of a large set are many times
    its rows)."""
    rows = rows or max(1, BLOCK_ROWS // 2)
    out = np.empty(len(pairs), dtype=np.float32)
    for start in range(0, len(pairs), rows):
        block = pairs[start:start + rows]
        both = np.asarray(matrix[block], dtype=np.float32)  # [B, 2, D]
        out[start:start + len(block)] = np.einsum("nd,nd->n", both[:, 0], both[:, 1])
    return out


__all__ = ["BLOCK_ROWS", "CachedMatrix", "blocks_of", "pair_cosines"]
