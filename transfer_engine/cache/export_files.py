"""The files `te cache export` writes, and the FAISS index it can build over them.

Layouts (what embedding-reader, autofaiss and clip-retrieval read):

    npy      DIR/emb/embeddings_00000.npy        [n, dim] float32 (or int8 codes)
             DIR/scales/scales_00000.npy         [n] float32, int8 only: row = codes x scale
             DIR/metadata/metadata_00000.parquet key, path, label, class, split; row i = row i of the .npy
    parquet  DIR/embeddings_00000.parquet        the same columns and `embedding` (fixed-size list of
                                                 float32, or of int8 with a `scale` column)

The scales are a folder of their own: a reader of DIR/emb/*.npy must find the embeddings there and
nothing else. Each file is written under a temporary name beside it (".NAME.tmp-XXXX", which no reader's
*.npy or *.parquet matches) and renamed once complete; files of a set are numbered in row order, so a
folder's files sorted by name are its rows in order.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from transfer_engine._durable import replace_durably, temporary_file, write_durably

EMBEDDINGS = "emb"
SCALES = "scales"
METADATA = "metadata"
INDEX_FILE = "index.faiss"
METADATA_COLUMNS = ("key", "path", "label", "class", "split")
# --faiss above the flat size: an IVF index of about sqrt(rows) lists, trained on at most this many rows
# (held in memory as float32 while the lists are trained) and at least POINTS_PER_LIST rows per list, as
# faiss's k-means asks; a search looks at NPROBE lists (faiss's `index.nprobe`, stored in the file).
IVF_SAMPLE_ROWS = 32_768
POINTS_PER_LIST = 39
NPROBE = 16


def metadata_schema() -> Any:
    """The metadata columns (a pyarrow schema): the content key (hex), the record's origin as stored, the label
    (null when unlabelled), its class name, the split."""
    pa = _pyarrow()
    return pa.schema([("key", pa.string()), ("path", pa.string()), ("label", pa.int64()),
                      ("class", pa.string()), ("split", pa.string())])


def metadata_table(records: list[tuple[str, str, int | None, str]], classes: list[str]) -> Any:
    """The metadata of records [(path, key, label, split)], in their order (a pyarrow table)."""
    pa = _pyarrow()
    return pa.table({
        "key": pa.array([r[1] for r in records], pa.string()),
        "path": pa.array([r[0] for r in records], pa.string()),
        "label": pa.array([r[2] for r in records], pa.int64()),
        "class": pa.array([None if r[2] is None else classes[r[2]] for r in records], pa.string()),
        "split": pa.array([r[3] for r in records], pa.string()),
    }, schema=metadata_schema())


class _Part:
    """One numbered file set (e.g. embeddings_00003.npy + metadata_00003.parquet), written under temporary
    names; `finish` renames them into place, `abandon` removes them.

    Args:
        out: the export folder.
        names: {role ("embeddings", "metadata", "scales"): the file's path relative to `out`}.
    """

    def __init__(self, out: Path, names: dict[str, str]) -> None:
        self.names = names
        self.targets = [out / name for name in names.values()]
        self.temporary = [temporary_file(t) for t in self.targets]

    def finish(self) -> dict[str, str]:
        self.close()
        for tmp, target in zip(self.temporary, self.targets):
            replace_durably(tmp, target)
        self.temporary = []
        return self.names

    def abandon(self) -> None:
        try:
            self.close()
        finally:
            for tmp in self.temporary:
                tmp.unlink(missing_ok=True)

    def close(self) -> None:
        raise NotImplementedError

    def write(self, meta: Any, values: np.ndarray, scales: np.ndarray | None) -> None:
        raise NotImplementedError


def _npy_header(fh, dtype: np.dtype, shape: tuple[int, ...]) -> None:
    np.lib.format.write_array_header_1_0(fh, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
                                              "shape": shape})


class _NpyPart(_Part):
    """embeddings_N.npy (+ scales_N.npy) written front to back after a header that states the row count,
    and metadata_N.parquet beside them."""

    def __init__(self, out: Path, number: str, rows: int, dim: int, dtype: np.dtype, int8: bool) -> None:
        import pyarrow.parquet as pq

        names = {"embeddings": f"{EMBEDDINGS}/embeddings_{number}.npy",
                 "metadata": f"{METADATA}/metadata_{number}.parquet"}
        if int8:
            names["scales"] = f"{SCALES}/scales_{number}.npy"
        super().__init__(out, names)
        self.handles = [open(self.temporary[0], "wb")]
        _npy_header(self.handles[0], dtype, (rows, dim))
        if int8:
            self.handles.append(open(self.temporary[2], "wb"))
            _npy_header(self.handles[1], np.dtype(np.float32), (rows,))
        self.meta = pq.ParquetWriter(self.temporary[1], metadata_schema())

    def write(self, meta: Any, values: np.ndarray, scales: np.ndarray | None) -> None:
        self.handles[0].write(np.ascontiguousarray(values).data)
        if scales is not None:
            self.handles[1].write(np.ascontiguousarray(scales, dtype=np.float32).data)
        self.meta.write_table(meta)

    def close(self) -> None:
        for fh in self.handles:
            fh.close()
        self.meta.close()


class _ParquetPart(_Part):
    """embeddings_N.parquet: a row group per chunk written."""

    def __init__(self, out: Path, number: str, dim: int, int8: bool) -> None:
        import pyarrow.parquet as pq

        pa = _pyarrow()
        super().__init__(out, {"embeddings": f"embeddings_{number}.parquet"})
        fields = list(metadata_schema()) + [pa.field("embedding", pa.list_(pa.int8() if int8 else pa.float32(), dim))]
        if int8:
            fields.append(pa.field("scale", pa.float32()))
        self.schema = pa.schema(fields)
        self.writer = pq.ParquetWriter(self.temporary[0], self.schema)

    def write(self, meta: Any, values: np.ndarray, scales: np.ndarray | None) -> None:
        pa = _pyarrow()
        columns = list(meta.columns) + [pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(values)
                                                                                    .reshape(-1)), values.shape[1])]
        if scales is not None:
            columns.append(pa.array(np.asarray(scales, dtype=np.float32)))
        self.writer.write_table(pa.Table.from_arrays(columns, schema=self.schema))

    def close(self) -> None:
        self.writer.close()


class RowFiles:
    """Rows written into numbered files of at most `rows_per_file` rows, in the order given.

    Args:
        out: the export folder (its subfolders are made here).
        layout: "npy" or "parquet".
        total: how many rows will be written (a .npy header states its row count before the rows).
        rows_per_file: rows per file.
        dim: features per row.
        int8: codes and scales instead of float32 rows.
    """

    def __init__(self, out: Path, layout: str, total: int, rows_per_file: int, dim: int, int8: bool) -> None:
        self.out, self.layout, self.total = out, layout, total
        self.rows_per_file, self.dim, self.int8 = rows_per_file, dim, int8
        self.files: dict[str, list[str]] = {}  # role -> its files, in row order
        self.parts = 0
        self.written = 0
        self.digits = max(5, len(str(max(0, (total - 1) // rows_per_file))))
        self._part: _Part | None = None
        self._left = 0
        if layout == "npy":
            for folder in (EMBEDDINGS, METADATA) + ((SCALES,) if int8 else ()):
                (out / folder).mkdir(exist_ok=True)

    def write(self, meta: Any, values: np.ndarray, scales: np.ndarray | None = None) -> None:
        """Append rows: their metadata (a pyarrow table), values [n, dim] and (int8) scales [n]."""
        n = len(values)
        if self.written + n > self.total:
            raise RuntimeError(f"{self.written + n} rows written to an export of {self.total}")
        start = 0
        while start < n:
            if self._part is None:
                self._open()
            take = min(self._left, n - start)
            self._part.write(meta.slice(start, take), values[start:start + take],
                             None if scales is None else scales[start:start + take])
            start += take
            self._left -= take
            self.written += take
            if self._left == 0:
                for role, name in self._part.finish().items():
                    self.files.setdefault(role, []).append(name)
                self._part = None
                self.parts += 1

    def _open(self) -> None:
        number = f"{self.parts:0{self.digits}d}"
        rows = min(self.rows_per_file, self.total - self.written)
        dtype = np.dtype(np.int8 if self.int8 else np.float32)
        self._part = (_NpyPart(self.out, number, rows, self.dim, dtype, self.int8) if self.layout == "npy"
                      else _ParquetPart(self.out, number, self.dim, self.int8))
        self._left = rows

    def abandon(self) -> None:
        """Remove the file being written (the finished ones are the caller's to keep or remove)."""
        if self._part is not None:
            self._part.abandon()
            self._part = None


class FaissIndex:
    """An inner-product index over L2-normalized rows, ids = row numbers, added chunk by chunk.

    Up to `flat_rows` rows: `IndexFlatIP`, exact. Above: `IndexIVFFlat` of nlist = sqrt(rows) lists
    (at most IVF_SAMPLE_ROWS / POINTS_PER_LIST), trained on IVF_SAMPLE_ROWS rows (all rows when fewer)
    spread evenly at random over the export; a search looks at NPROBE of them. The IVF index needs its
    sample before any row is added, so it takes two passes over the rows: `sample` then `add`.
    """

    def __init__(self, total: int, dim: int, flat_rows: int) -> None:
        import faiss

        self.faiss, self.total, self.dim = faiss, total, dim
        self.added = 0
        self.quantizer = faiss.IndexFlatIP(dim)  # kept here: the IVF index refers to it
        if total <= flat_rows:
            self.index, self.nlist = self.quantizer, None
            self._picks = None
            return
        sample = min(total, IVF_SAMPLE_ROWS)
        self.nlist = max(1, min(round(math.sqrt(total)), sample // POINTS_PER_LIST))
        self.index = faiss.IndexIVFFlat(self.quantizer, dim, self.nlist, faiss.METRIC_INNER_PRODUCT)
        self.index.nprobe = min(self.nlist, NPROBE)
        self._picks = np.sort(np.random.default_rng(0).choice(total, sample, replace=False))
        self._sample = np.empty((sample, dim), dtype=np.float32)
        self._seen = 0

    @property
    def two_pass(self) -> bool:
        """Whether the rows must be given twice (IVF: `sample`, then `add`)."""
        return self._picks is not None

    def normalized(self, rows: np.ndarray) -> np.ndarray:
        x = np.array(rows, dtype=np.float32, order="C", copy=True)
        self.faiss.normalize_L2(x)
        return x

    def sample(self, rows: np.ndarray) -> None:
        """First pass of an IVF index: keep the sampled rows among these (the next rows of the export)."""
        lo, hi = np.searchsorted(self._picks, [self._seen, self._seen + len(rows)])
        self._sample[lo:hi] = self.normalized(rows[self._picks[lo:hi] - self._seen])
        self._seen += len(rows)

    def train(self) -> None:
        self.index.train(self._sample)
        self._sample = None

    def add(self, rows: np.ndarray) -> None:
        """Add the next rows of the export (ids follow on from those added before)."""
        self.index.add(self.normalized(rows))
        self.added += len(rows)

    def describe(self) -> dict[str, Any]:
        kind = type(self.index).__name__
        return {"file": INDEX_FILE, "type": kind, "metric": "inner_product", "normalized": True, "rows": self.added,
                **({"nlist": self.nlist, "nprobe": self.index.nprobe} if self.nlist else {})}

    def save(self, out: Path) -> None:
        write_durably(out / INDEX_FILE, lambda tmp: self.faiss.write_index(self.index, os.fspath(tmp)))


def _pyarrow():
    import pyarrow

    return pyarrow
