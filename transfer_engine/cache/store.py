"""`FeatureCache`: a directory that many data sets and backbones share.

    DIR/te-cache.json       marker: format and version (written last when a cache is created)
    DIR/index.sqlite        the index (WAL): spaces, shards, checksums, rows, data sets
    DIR/writer.lock         the writer lock (flock)
    DIR/shards/<space>/NNNNNN.shard
    DIR/artifacts/<sha256><suffix>   files kept beside the rows, by content (`transfer_engine.cache.artifacts`)

Opening a cache and reading it never takes the writer lock; every change does, one operation at a time.
This module needs no torch (so `te cache info` answers at once); the feature rows themselves are handled
by `transfer_engine.cache.rows`, imported when a space is opened.
"""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

from transfer_engine._durable import makedirs_durably, write_text_durably
from transfer_engine.cache import artifacts, leases
from transfer_engine.cache.index import Index, SpaceRow
from transfer_engine.cache.lock import WriterLock, filesystem_errors, on_read_only_fs
from transfer_engine.cache.records import Dataset, Record, checked_records
from transfer_engine.cache.shards import SLOT_BYTES, ShardMaps, shard_relpath
from transfer_engine.cache.space import FORMAT_VERSION, FeatureSpace
from transfer_engine.cache.writer import DEFAULT_SHARD_BYTES, ShardWriter, make_space_folder
from transfer_engine.errors import NotACacheError, TEError, UsageError

if TYPE_CHECKING:
    from transfer_engine.cache.gc import GcReport
    from transfer_engine.cache.rows import CachedSpace
    from transfer_engine.cache.verify import VerifyReport

MARKER = "te-cache.json"
INDEX = "index.sqlite"
LOCK = "writer.lock"
FORMAT_NAME = "te-feature-cache"
_OWN_ENTRIES = {MARKER, MARKER + ".tmp", INDEX, INDEX + "-wal", INDEX + "-shm", INDEX + "-journal", LOCK, "shards",
                "artifacts", "nodes", "parts"}  # nodes/: the delta caches of a multi-machine te extract;
# parts/: which tar shards / Parquet files te extract has finished (`extract.ledger`)


class FeatureCache:
    """A feature cache directory. Create or open one with `FeatureCache.open(dir)`.

    Attributes:
        root: the directory.
        index: the sqlite index.
        lock: the writer lock (held only while changing the cache).
        maps: memory maps of the shards, shared by every space of this cache object.
        max_shard_bytes: the size at which a shard is sealed and a new one begun.
    """

    def __init__(self, root: Path, index: Index, lock: WriterLock, max_shard_bytes: int) -> None:
        self.root = root
        self.index = index
        self.lock = lock
        self.maps = ShardMaps(root)
        self.max_shard_bytes = max_shard_bytes
        self._leases: dict[str, str] = {}  # space digest -> token of this object's writer lease on it

    @classmethod
    def open(cls, directory: str | os.PathLike, *, create: bool = True, lock_timeout: float = 60.0,
             max_shard_bytes: int = DEFAULT_SHARD_BYTES) -> "FeatureCache":
        """Open the cache in `directory`, creating it (and the directory) when `create` is true.

        Args:
            directory: the cache directory.
            create: make a new cache when there is none (False: a missing cache is an error).
            lock_timeout: seconds a change waits for another writer process before failing.
            max_shard_bytes: bytes of rows per shard before a new shard is begun.

        Returns:
            The open `FeatureCache`.

        Raises:
            NotACacheError: the directory is missing (create=False), is a file, or holds something else.
            UsageError: the cache was written by a newer format version.
        """
        root = Path(directory).expanduser().absolute()
        marker = root / MARKER
        if not create or (root.exists() and not root.is_dir()):
            check_cache_dir(root)
        if not marker.is_file():
            _refuse_foreign(root)  # before the lock file: a refused folder is left as it was
            with filesystem_errors(root):
                makedirs_durably(root)
                lock = WriterLock(root / LOCK, lock_timeout)
                try:
                    with lock:  # two processes creating one cache at once: the second finds the first's
                        if not marker.is_file():
                            _create(root)
                finally:
                    lock.close()
        _check_marker(marker)
        # A cache this process cannot write (a read-only file system, a folder of another user) is opened
        # for reading: sqlite's mode=ro, no writer lock, no leases; a change is then one line saying why not.
        read_only = not writable(root)
        return cls(root, Index(root / INDEX, create=False, busy_timeout=lock_timeout, read_only=read_only),
                   WriterLock(root / LOCK, lock_timeout), max_shard_bytes)

    # -- lifetime ---------------------------------------------------------------------------------------
    def close(self) -> None:
        """Release this object's writer leases, close the index and the lock file; views already gathered
        stay valid."""
        self.maps.forget()
        self._release_leases()
        self.index.close()
        self.lock.close()

    # -- writer leases ----------------------------------------------------------------------------------
    def lease(self, space_digest: str) -> None:
        """Hold a writer lease on a space (inside the caller's write transaction, under the lock), so
        `gc` keeps rows written here that no data set names yet; see `transfer_engine.cache.leases`.

        Taken once per space per cache object and kept until `close`; taken again when the transaction
        that recorded it was rolled back.
        """
        token = self._leases.get(space_digest)
        if token is None or not leases.held(self.index, token):
            self._leases[space_digest] = leases.take(self.index, space_digest)

    def own_leases(self) -> list[str]:
        """Tokens of the leases this object holds."""
        return list(self._leases.values())

    def _release_leases(self) -> None:
        """Drop this object's leases (a process that dies instead leaves stale ones that gc prunes)."""
        if not self._leases:
            return
        tokens, self._leases = list(self._leases.values()), {}
        try:
            with self.lock, self.index.write():
                for token in tokens:
                    leases.release(self.index, token)
        except (TEError, OSError, sqlite3.Error):  # a lock timeout or a damaged index: the leases go stale
            pass

    def __enter__(self) -> "FeatureCache":
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"FeatureCache({str(self.root)!r})"

    # -- spaces -----------------------------------------------------------------------------------------
    def space(self, space: FeatureSpace | None = None, **fields: Any) -> "CachedSpace":
        """Get or create a feature space.

        Args:
            space: the `FeatureSpace`, or None to build one from `fields`
                (backbone, weights_digest, transform, dim, stored, pooling, precision).

        Returns:
            A `CachedSpace` for appending and reading its rows.
        """
        from transfer_engine.cache.rows import CachedSpace
        from transfer_engine.ops import row_bytes

        if space is None:
            space = FeatureSpace(**fields)
        elif fields:
            raise UsageError("give either a FeatureSpace or its fields, not both")
        row = self.space_row(space, row_bytes(space.dim, space.stored))
        return CachedSpace(self, row, space)

    def space_row(self, space: FeatureSpace, row_bytes: int) -> SpaceRow:
        """The index row of `space`, created (with a writer lease) when missing; needs no torch.

        `row_bytes` is the width of one stored row (`ops.row_bytes(dim, stored)`), given by the caller
        because computing it is the ops' business."""
        row = self.index.space(space.id)
        if row is None:
            with self.lock, self.index.write():
                row = self.index.space(space.id)
                if row is None:
                    sid = self.index.insert_space(space.id, space.dim, space.stored, row_bytes, space.to_dict())
                    row = SpaceRow(sid, space.id, space.dim, space.stored, row_bytes, space.to_dict())
                    self.lease(space.id)  # gc keeps the new, still empty space for this writer
                    make_space_folder(self.root, row)  # before the commit: never a space without space.json
        return row

    def append_encoded(self, space: SpaceRow, keys: list[str], rows: bytes | memoryview,
                       slots: bytes | None = None) -> tuple[SpaceRow, int]:
        """Store already encoded rows (`rows`: one whole row per key, back to back; keys distinct) of the
        keys the space lacks, durably, in one transaction under the writer lock; needs no torch.
        `slots`: their key-file slots, when the caller has checked ones (see `ShardWriter.append`).

        Returns:
            (the space's index row, which is `space` unless a gc of an older te had dropped it and it was
            put back; how many rows were added).
        """
        view = memoryview(rows).cast("B")
        width = space.row_bytes
        with self.lock, self.index.write():
            space = self._keep_space_row(space)
            self.lease(space.digest)
            present = self.index.locations(space.id, keys)
            keep = [i for i, k in enumerate(keys) if k not in present]
            if not keep:
                return space, 0
            if len(keep) != len(keys):
                view = memoryview(b"".join(view[i * width:(i + 1) * width] for i in keep))
                keys = [keys[i] for i in keep]
                if slots is not None:
                    slots = b"".join(slots[i * SLOT_BYTES:(i + 1) * SLOT_BYTES] for i in keep)
            placed = ShardWriter(self.root, self.index, space, self.max_shard_bytes).append(view, keys, slots)
            # by key: sqlite's b-tree takes sorted inserts several times faster than random ones
            self.index.insert_rows(space.id, sorted(zip(keys, (s for s, _ in placed), (r for _, r in placed))))
        return space, len(keys)

    def _keep_space_row(self, space: SpaceRow) -> SpaceRow:
        """`space`, put back when it is gone (a gc of an older te dropped it while this writer held it):
        rows must never be written under a space the index does not have."""
        if self.index.space_by_id(space.id) is not None:
            return space
        other = self.index.space(space.digest)
        if other is not None:  # re-created by someone else under a new id: write there
            return other
        self.index.insert_space(space.digest, space.dim, space.stored, space.row_bytes, space.config,
                                space_id=space.id)
        make_space_folder(self.root, space)
        return space

    def spaces(self) -> list[FeatureSpace]:
        """Every space the cache holds, oldest first."""
        return [FeatureSpace.from_dict(row.config) for row in self.index.spaces()]

    def open_space(self, space_id: str) -> "CachedSpace":
        """An existing space by its id or an unambiguous prefix of it (as `te cache info` prints).

        Raises:
            UsageError: no space, or more than one, matches.
        """
        matches = [s for s in self.spaces() if s.id.startswith(space_id)]
        if len(matches) != 1:
            known = ", ".join(s.id[:12] for s in self.spaces()) or "none"
            what = "no space" if not matches else f"{len(matches)} spaces"
            raise UsageError(f"{what} of {self.root} match {space_id!r}; spaces: {known}")
        return self.space(matches[0])

    def set_provenance(self, space_id: str, provenance: dict[str, Any]) -> None:
        """Record how a space's backbone can be rebuilt (weights name or file, seed, plugin).

        The space id already pins the weights by content (their digest); provenance says where those
        weights come from, so `te train` can write a run that `te export` rebuilds without asking.
        """
        with self.lock, self.index.write():
            self.index.set_meta(f"provenance:{space_id}", json.dumps(provenance, sort_keys=True))

    def provenance(self, space_id: str) -> dict[str, Any] | None:
        """What `set_provenance` recorded for the space (None for spaces written without it)."""
        text = self.index.meta(f"provenance:{space_id}")
        return json.loads(text) if text else None

    # -- artifacts --------------------------------------------------------------------------------------
    def put_artifact(self, name: str, write: Callable[[Path], None], suffix: str = "") -> Path:
        """Store the file `write(tmp_path)` writes as artifact `name` (content-addressed; see
        `transfer_engine.cache.artifacts`); returns the stored file."""
        return artifacts.put(self, name, write, suffix)

    def artifact(self, name: str) -> tuple[Path | None, str]:
        """Artifact `name`'s file once its SHA-256 checks out, or (None, why not: "not stored", "missing", ...)."""
        return artifacts.get(self, name)

    def shard_path(self, space_digest: str, shard_id: int) -> Path:
        """The file of one shard."""
        return self.root / shard_relpath(space_digest, shard_id)

    # -- data sets --------------------------------------------------------------------------------------
    def put_dataset(self, name: str, records: Iterable[Record | Sequence], class_names: Sequence[str]) -> int:
        """Store data set `name` (replacing any data set of that name) in one transaction.

        `records` is streamed: each record is validated and written as it is taken, so a generator over
        millions of records costs no memory per record (sqlite spills the transaction to its WAL). A bad
        record rolls the whole transaction back: the cache keeps the previous data set of that name.

        Args:
            name: the data set's name.
            records: `Record`s (or (path, key, label, split) tuples), in the order to keep; any iterable.
            class_names: the name of each label.

        Returns:
            How many records were stored (read them back with `dataset(name)`).

        Raises:
            UsageError: an empty name, a key that is not a hex digest, a label out of range, an empty split.
        """
        classes = list(class_names) if not isinstance(class_names, str) else class_names
        checked = checked_records(name, records, classes)  # checks the name and class names now
        stored = 0

        def rows():
            nonlocal stored
            for stored, r in enumerate(checked, start=1):
                yield stored - 1, r.path, r.key, r.label, r.split

        with self.lock, self.index.write():
            self.index.put_dataset(name, classes, rows())
        return stored

    def dataset(self, name: str) -> Dataset:
        """Data set `name` with its records in order.

        Raises:
            UsageError: the cache has no data set of that name (the message lists those it has).
        """
        with self.index.snapshot():
            class_names = self.index.dataset_classes(name)
            rows = self.index.dataset_records(name)
        if class_names is None:
            raise self._no_dataset(name)
        return Dataset(name, class_names, [Record(*r) for r in rows])

    def dataset_classes(self, name: str) -> list[str]:
        """The class names of data set `name`, without reading its records.

        Raises:
            UsageError: the cache has no data set of that name (the message lists those it has).
        """
        class_names = self.index.dataset_classes(name)
        if class_names is None:
            raise self._no_dataset(name)
        return class_names

    def _no_dataset(self, name: str) -> UsageError:
        names = ", ".join(self.datasets()) or "none"
        return UsageError(f"cache {self.root} has no data set {name!r}; it has: {names}")

    def datasets(self) -> list[str]:
        """Names of the stored data sets, sorted."""
        return self.index.dataset_names()

    def delete_dataset(self, name: str) -> bool:
        """Forget a data set (its rows stay until `gc`); True when it existed."""
        with self.lock, self.index.write():
            return self.index.delete_dataset(name)

    # -- maintenance ------------------------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        """What the cache holds: spaces (rows, shards, bytes on disk) and data sets (counts per split/label)."""
        from transfer_engine.cache.report import describe

        return describe(self)

    def verify(self) -> "VerifyReport":
        """Recompute every checksum and cross-check index and shards; changes nothing."""
        from transfer_engine.cache.verify import verify_cache

        return verify_cache(self)

    def gc(self, dry_run: bool = False) -> "GcReport":
        """Drop rows no data set references (and spaces left empty); see `transfer_engine.cache.gc`."""
        from transfer_engine.cache.gc import collect_garbage

        return collect_garbage(self, dry_run=dry_run)


def _create(root: Path) -> None:
    """Make a new cache in `root` (called under the writer lock); the marker is written last."""
    _refuse_foreign(root)
    index = Index(root / INDEX, create=True)
    index.set_meta("format_version", str(FORMAT_VERSION))
    index.close()
    write_text_durably(root / MARKER, json.dumps({"format": FORMAT_NAME, "version": FORMAT_VERSION}) + "\n")


def writable(root: Path) -> bool:
    """Whether this process can change the cache in `root` (its file system is mounted read-write and the
    folder is writable for this user)."""
    return not on_read_only_fs(root) and os.access(root, os.W_OK)


def check_cache_dir(directory: str | os.PathLike) -> Path:
    """The absolute path of an existing cache directory with a readable marker of a format this te reads.

    Raises:
        NotACacheError: the directory is missing, is a file, or holds something else.
        UsageError: the cache was written by a newer format version.
    """
    root = Path(directory).expanduser().absolute()
    if root.exists() and not root.is_dir():
        raise NotACacheError(f"{root} is a file; expected a feature cache directory")
    if not (root / MARKER).is_file():
        if not root.exists():
            raise NotACacheError(f"{root} does not exist; expected a feature cache directory "
                                 "(te extract --cache DIR makes one)")
        raise NotACacheError(f"{root} is not a te feature cache (it has no {MARKER})")
    _check_marker(root / MARKER)
    return root


def _own_entry(name: str) -> bool:
    """A name a cache's own files take, the marker's temporary file of an interrupted creation included."""
    return name in _OWN_ENTRIES or name.startswith(f".{MARKER}.tmp-")


def _refuse_foreign(root: Path) -> None:
    """`NotACacheError` when `root` holds files that are not a cache's (a cache is made only in a new or
    empty folder, or over the remains of an interrupted creation)."""
    foreign = sorted(p.name for p in root.iterdir() if not _own_entry(p.name)) if root.is_dir() else []
    if foreign:
        raise NotACacheError(f"{root} is not empty and not a te feature cache (it holds {', '.join(foreign[:3])}"
                             f"{', ...' if len(foreign) > 3 else ''}); choose a new or empty directory")


def _check_marker(marker: Path) -> None:
    try:
        data = json.loads(marker.read_text())
        name, version = data["format"], int(data["version"])
    except (ValueError, KeyError, TypeError) as exc:
        raise NotACacheError(f"{marker} is not a te cache marker ({exc})") from None
    if name != FORMAT_NAME:
        raise NotACacheError(f"{marker} names format {name!r}; expected {FORMAT_NAME!r}")
    if version > FORMAT_VERSION:
        raise UsageError(f"{marker.parent} is a cache of format version {version}; this te reads up to "
                         f"{FORMAT_VERSION} (upgrade transfer-engine)")
