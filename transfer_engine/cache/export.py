"""`te cache export`: the features of one cached data set, as files the tools after te read.

embedding-reader, autofaiss and clip-retrieval read a folder of .npy shards with a folder of parquet
metadata numbered alike, or parquet files with an embedding column; FAISS users load .npy. The layouts
are `export_files`'s. Rows are the data set's records in their order (one per record: an image that two
records share is written twice), read and written `chunk_rows` at a time, so memory does not grow with
the data set. The float32 rows are `CachedSpace.gather`'s (what te's loader trains on); int8 rows are the
stored codes and scales, undecoded.

A killed export leaves no file that looks complete: every file is renamed into place once whole, and
DIR/export.json, which says what was written, comes last. An export that fails with an error removes
what it wrote.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from transfer_engine._durable import fsync_dir, makedirs_durably, write_text_durably
from transfer_engine.cache.choice import choose_dataset, choose_space, describe, record_coverage
from transfer_engine.cache.export_files import (EMBEDDINGS, INDEX_FILE, METADATA, METADATA_COLUMNS, SCALES,
                                                FaissIndex, RowFiles, metadata_table)
from transfer_engine.cache.lock import is_disk_full
from transfer_engine.core.configs.cache_export import CacheExportConfig
from transfer_engine.core.extras import FAISS_INSTALL, PYARROW_INSTALL
from transfer_engine.core.progress import Progress, ProgressLine, say_of
from transfer_engine.errors import CacheError, TEError, UsageError

if TYPE_CHECKING:
    from transfer_engine.cache.rows import CachedSpace
    from transfer_engine.cache.store import FeatureCache

EXPORT_JSON = "export.json"
EXPORT_FORMAT = "te-feature-export"
EXPORT_VERSION = 1
# What an export folder may hold: --overwrite removes these and refuses a folder holding anything else.
_TOP = re.compile(rf"{re.escape(EXPORT_JSON)}|{re.escape(INDEX_FILE)}|embeddings_[0-9]+\.parquet|\..+\.tmp-.+")
_INSIDE = {EMBEDDINGS: re.compile(r"embeddings_[0-9]+\.npy|\..+\.tmp-.+"),
           METADATA: re.compile(r"metadata_[0-9]+\.parquet|\..+\.tmp-.+"),
           SCALES: re.compile(r"scales_[0-9]+\.npy|\..+\.tmp-.+")}


@dataclass
class ExportSummary:
    """What `export_features` wrote (also DIR/export.json).

    Attributes:
        out: the export folder.
        cache: the cache read.
        dataset, split: the data set and the split exported (None: every split).
        space, backbone, stored: the feature space read: its id, backbone and stored dtype.
        format, dtype: the layout ("npy", "parquet") and the values written ("float32", "int8").
        dim, rows: features per row, rows written.
        normalized: whether float32 rows were L2-normalized.
        rows_per_file: the most rows a file holds.
        classes: the class name of each label.
        columns: the metadata columns, in order.
        files: the files written, relative to `out`, in row order (npy: embeddings, metadata and, int8,
            scales; parquet: embeddings).
        faiss: the index written (file, type, metric, rows, nlist, nprobe), or None.
        seconds: how long the export took.
    """

    out: str
    cache: str
    dataset: str
    split: str | None
    space: str
    backbone: str
    stored: str
    format: str
    dtype: str
    dim: int
    rows: int
    normalized: bool
    rows_per_file: int
    classes: list[str]
    columns: list[str]
    files: dict[str, list[str]]
    faiss: dict[str, Any] | None
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {"export_format": EXPORT_FORMAT, "version": EXPORT_VERSION, **asdict(self)}


def export_features(cache: str | os.PathLike, config: CacheExportConfig | None = None, *, out: str | os.PathLike,
                    overwrite: bool = False, progress: Progress = False, **fields: Any) -> ExportSummary:
    """Write the features of one data set of a cache as .npy or parquet files (and a FAISS index).

    Args:
        cache: the feature cache directory.
        config: what to write (`core.configs.CacheExportConfig`: format, dataset, split, backbone, space,
            dtype, normalize, rows_per_file, faiss, faiss_flat_rows, chunk_rows); or its fields as
            keywords (`fields`), which also override those of a config given.
        out: the export folder: new, empty, or (with `overwrite`) an earlier export.
        overwrite: replace the export at `out`.
        progress: lines for the user: True on stderr, False none, a function is handed each (`core.progress`).

    Returns:
        The `ExportSummary` (what DIR/export.json says).

    Raises:
        UsageError: no such cache, data set, split or space (or several spaces and no choice), --dtype
            int8 from a space not stored as int8, `out` in the way, pyarrow or (--faiss) faiss missing.
        TEError: the files cannot be written (the folder, the disk); what was written is removed.
        CacheError: the data set changed while it was exported.
    """
    from transfer_engine.cache import FeatureCache

    cfg = CacheExportConfig.of(config, **fields)
    say = say_of(progress)
    _require_modules(cfg)
    target = Path(out).expanduser().absolute()
    _check_out(target, overwrite)
    started = time.perf_counter()
    with FeatureCache.open(cache, create=False) as store:
        name = choose_dataset(store, cfg.dataset)
        classes = store.dataset_classes(name)
        dataset_id, total = _records(store, name, cfg.split)
        space = choose_space(store, name, record_coverage(store, name, cfg.split), backbone=cfg.backbone,
                             space_id=cfg.space)
        if cfg.dtype == "int8" and space.stored != "int8":
            raise UsageError(f"--dtype int8 writes the stored int8 codes, and space {describe(space)} stores "
                             f"{space.stored}; export --dtype float32 (the rows as te reads them)")
        summary = ExportSummary(str(target), str(store.root), name, cfg.split, space.id, space.config.backbone,
                                space.stored, cfg.format, cfg.dtype, space.dim, total, cfg.normalize,
                                cfg.rows_per_file, list(classes), list(METADATA_COLUMNS), {}, None, 0.0)
        created = _prepare_out(target)
        say(f"te cache export: {total} rows of data set {name!r}{_of_split(cfg.split, ', split')}, space "
            f"{describe(space)}, to {target} ({cfg.format}, {cfg.dtype})")
        try:
            _write(store, space, dataset_id, cfg, target, summary, progress)
            summary.seconds = round(time.perf_counter() - started, 3)
            write_text_durably(target / EXPORT_JSON, json.dumps(summary.to_dict(), indent=2) + "\n")
        except BaseException as exc:
            _remove_export(target, remove_folder=created)
            if isinstance(exc, OSError):
                raise _write_error(target, exc) from exc
            raise
    files = sum(map(len, summary.files.values()))
    say(f"te cache export: wrote {total} rows in {files} file{'s' if files > 1 else ''}"
        f"{' and ' + INDEX_FILE if summary.faiss else ''} to {target}")
    return summary


def _require_modules(cfg: CacheExportConfig) -> None:
    """pyarrow (both layouts write parquet) and, for --faiss, faiss: a one-line error when missing."""
    if importlib.util.find_spec("pyarrow") is None:
        raise UsageError(f"te cache export writes Parquet with pyarrow, which is not installed: {PYARROW_INSTALL}")
    if cfg.faiss and importlib.util.find_spec("faiss") is None:
        raise UsageError(f"--faiss builds the index with FAISS, which is not installed: {FAISS_INSTALL}")


def _records(store: "FeatureCache", name: str, split: str | None) -> tuple[int, int]:
    """(the data set's id, its records in `split`), or a UsageError naming the splits it has."""
    size = store.index.dataset_size(name, split)
    if size is None:  # stored again or deleted since its classes were read
        store.dataset_classes(name)
    dataset_id, total = size or (0, 0)
    if total == 0:
        splits, _ = store.index.dataset_counts(name)
        have = ", ".join(f"{s} ({n})" for s, n in splits.items()) or "none"
        raise UsageError(f"data set {name!r} has no records{_of_split(split, ' in split')} (it has: {have})")
    return dataset_id, total


def _of_split(split: str | None, words: str) -> str:
    return "" if split is None else f"{words} {split!r}"


def _chunks(store: "FeatureCache", space: "CachedSpace", dataset_id: int, cfg: CacheExportConfig, *,
            floats: bool, codes: bool) -> Iterator[tuple[list, np.ndarray | None, np.ndarray | None, np.ndarray | None]]:
    """(records, float32 rows, int8 codes, scales) of the next `chunk_rows` records, in record order."""
    from transfer_engine import ops

    for page in store.index.dataset_record_pages(dataset_id, cfg.split, cfg.chunk_rows):
        where = space.locate([key for _, key, _, _ in page])
        rows = space.gather(where).numpy() if floats else None
        if rows is not None and cfg.normalize:
            rows /= np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), np.finfo(np.float32).tiny)
        q = scales = None
        if codes:
            q, scales = (t.numpy() for t in ops.split_int8_rows(space.stored_rows(where), space.dim))
        yield page, rows, q, scales


def _write(store: "FeatureCache", space: "CachedSpace", dataset_id: int, cfg: CacheExportConfig, out: Path,
           summary: ExportSummary, progress: Progress) -> None:
    int8 = cfg.dtype == "int8"
    files = RowFiles(out, cfg.format, summary.rows, cfg.rows_per_file, space.dim, int8)
    index = FaissIndex(summary.rows, space.dim, cfg.faiss_flat_rows) if cfg.faiss else None
    line = ProgressLine(enabled=progress)
    try:
        for records, rows, q, scales in _chunks(store, space, dataset_id, cfg, floats=not int8 or index is not None,
                                                codes=int8):
            files.write(metadata_table(records, summary.classes), q if int8 else rows, scales)
            if index is not None:
                (index.sample if index.two_pass else index.add)(rows)
            if line.due():
                line.draw(f"te cache export: {files.written}/{summary.rows} rows")
    finally:
        files.abandon()
    _same_count(summary, files.written)
    summary.files = files.files
    if index is None:
        return
    if index.two_pass:  # the IVF lists are trained on the sample; then every row is read again and added
        line.message(f"te cache export: training {index.nlist} IVF lists on a sample of the rows")
        index.train()
        for _, rows, _, _ in _chunks(store, space, dataset_id, cfg, floats=True, codes=False):
            index.add(rows)
        _same_count(summary, index.added)
    index.save(out)
    summary.faiss = index.describe()


def _same_count(summary: ExportSummary, written: int) -> None:
    if written != summary.rows:
        raise CacheError(f"data set {summary.dataset!r} changed while it was exported ({summary.rows} records "
                         f"expected, {written} read); run te cache export again")


# -- the export folder ------------------------------------------------------------------------------------
def _ours(entry: Path, top: bool = True) -> bool:
    """Whether `entry` of an export folder is something te cache export writes."""
    if top and entry.name in _INSIDE and entry.is_dir() and not entry.is_symlink():
        return all(_ours(e, top=False) and _INSIDE[entry.name].fullmatch(e.name) for e in entry.iterdir())
    return entry.is_file() and not entry.is_symlink() and (not top or bool(_TOP.fullmatch(entry.name)))


def _check_out(out: Path, overwrite: bool) -> None:
    """The checks on --out that come before any work."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; expected a directory for the export")
    if not out.is_dir():
        above = next(p for p in out.parents if p.exists())
        if not above.is_dir():
            raise UsageError(f"--out {out}: {above} is a file, not a folder")
        return
    entries = sorted(out.iterdir())
    if not entries:
        return
    foreign = [e.name for e in entries if not _ours(e)]
    if foreign:
        raise UsageError(f"--out {out} holds files te cache export does not write ({', '.join(foreign[:3])}"
                         f"{', ...' if len(foreign) > 3 else ''}); choose a new or empty directory")
    if not overwrite:
        state = "an export" if (out / EXPORT_JSON).is_file() else "an unfinished export (no export.json)"
        raise UsageError(f"--out {out} already holds {state}; pass --overwrite to replace it, or choose another --out")


def _prepare_out(out: Path) -> bool:
    """Make `out` ready for the files (an earlier export's files removed, export.json first, so a killed
    replacement never looks finished); whether the folder was created here."""
    created = not out.exists()
    try:
        makedirs_durably(out)
        if not os.access(out, os.W_OK | os.X_OK):
            raise PermissionError(13, "Permission denied")
        _remove_export(out, remove_folder=False)
    except OSError as exc:
        raise _write_error(out, exc) from exc
    return created


def _remove_export(out: Path, *, remove_folder: bool) -> None:
    """Remove what an export wrote in `out` (export.json first), and `out` itself when `remove_folder`."""
    if not out.is_dir():
        return
    (out / EXPORT_JSON).unlink(missing_ok=True)
    for entry in sorted(out.iterdir()):
        if not _ours(entry):
            continue
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
    if remove_folder and not any(out.iterdir()):
        out.rmdir()
    else:
        fsync_dir(out)


def _write_error(out: Path, exc: OSError) -> TEError:
    what = exc.strerror or str(exc)
    if is_disk_full(exc):
        return TEError(f"no space left to write the export to {out}: free space and run the same command again")
    return TEError(f"cannot write the export to {out}: {what}")
