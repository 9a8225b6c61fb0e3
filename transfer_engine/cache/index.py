"""The index: sqlite3 in WAL mode, the only place that says which shard bytes are real.

Tables: spaces, shards (committed row count, seal digest), blocks (CRC32 per block of rows), rows
(space, key) -> (shard, row), datasets and records (path, key, label, split). WAL lets readers keep
reading a consistent snapshot while one writer commits; `synchronous=FULL` makes a commit durable
before `commit` returns, which is what lets shard bytes be fsync'd first and referenced second.

Keys are stored as BLOBs (32 bytes for a SHA-256) and cross this class's methods as hex strings: the
index is ~45 bytes a row, about 2% of an int8 row of 2048 features.

A damaged database file (sqlite's "file is not a database", "database disk image is malformed") is
a `CorruptCacheError` naming `te cache repair`, from whichever call meets it first: every command
that opens a cache then says the same one line.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from transfer_engine.cache.lock import (disk_full_error, filesystem_errors, is_disk_full, is_read_only,
                                        on_read_only_fs, read_only_error)
from transfer_engine.errors import CacheError, CorruptCacheError

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS spaces (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    digest TEXT NOT NULL UNIQUE,
    dim INTEGER NOT NULL,
    stored TEXT NOT NULL,
    row_bytes INTEGER NOT NULL,
    config TEXT NOT NULL,
    created REAL NOT NULL
);
-- AUTOINCREMENT: a committed shard id is never reused, so a file name never means two shards.
CREATE TABLE IF NOT EXISTS shards (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    space INTEGER NOT NULL REFERENCES spaces(id),
    rows INTEGER NOT NULL,
    capacity INTEGER NOT NULL,
    sealed_sha256 TEXT
);
CREATE TABLE IF NOT EXISTS blocks (
    shard INTEGER NOT NULL REFERENCES shards(id),
    block INTEGER NOT NULL,
    rows INTEGER NOT NULL,
    crc32 INTEGER NOT NULL,
    PRIMARY KEY (shard, block)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS rows (
    space INTEGER NOT NULL,
    key BLOB NOT NULL,
    shard INTEGER NOT NULL,
    row INTEGER NOT NULL,
    PRIMARY KEY (space, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS datasets (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    class_names TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS records (
    dataset INTEGER NOT NULL REFERENCES datasets(id),
    idx INTEGER NOT NULL,
    path TEXT NOT NULL,
    key BLOB NOT NULL,
    label INTEGER,
    split TEXT NOT NULL,
    PRIMARY KEY (dataset, idx)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS records_key ON records (key);
"""

# What sqlite says when the file itself is damaged (as opposed to busy, full or read-only).
_DAMAGE = ("malformed", "not a database", "file is encrypted", "disk image", "database corrupt")


def is_damage(exc: BaseException) -> bool:
    """True when a sqlite error means the database file is damaged."""
    return type(exc) is sqlite3.DatabaseError or (isinstance(exc, sqlite3.DatabaseError)
                                                   and any(s in str(exc).lower() for s in _DAMAGE))


def damaged_index_error(path: Path, exc: BaseException) -> CorruptCacheError:
    """The one line every command prints for a damaged index file: what, and the way out."""
    return CorruptCacheError(f"the index {path} is damaged (sqlite: {exc}); run `te cache repair {path.parent}` "
                             "to rebuild it from the shards (it says what cannot be recovered)")


# meta key prefix: the SHA-256 of a data set as stored (so verify catches a changed byte in its records)
DATASET_SHA256 = "dataset_sha256:"


def _dataset_hash(name: str, class_names_json: str) -> "hashlib._Hash":
    return hashlib.sha256(json.dumps([name, class_names_json]).encode("utf-8", "surrogatepass") + b"\n")


def _record_bytes(idx: int, path: str, key: bytes, label: int | None, split: str) -> bytes:
    return json.dumps([idx, path, key.hex(), label, split]).encode("utf-8", "surrogatepass") + b"\n"


# sqlite's limit on bound parameters is 32766 since 3.32 (999 before); stay well under both.
_CHUNK = 900


@dataclass(frozen=True)
class SpaceRow:
    id: int
    digest: str
    dim: int
    stored: str
    row_bytes: int
    config: dict


@dataclass(frozen=True)
class ShardRow:
    id: int
    space: int
    rows: int
    capacity: int
    sealed_sha256: str | None


def _chunks(items: Sequence, size: int = _CHUNK) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


_blob = bytes.fromhex


class Index:
    """One sqlite connection to a cache's index, shared by the threads of one `FeatureCache`.

    Args:
        path: the database file.
        create: make the file and schema when missing (else a missing file raises sqlite3.OperationalError).
        busy_timeout: seconds sqlite waits on another connection's write lock.
        read_only: open for reading only (a cache on a read-only file system, or in a folder this user may
            not write): `write()` is then a `ReadOnlyCacheError`, never sqlite's "unable to open".
    """

    def __init__(self, path: Path, *, create: bool, busy_timeout: float = 60.0, read_only: bool = False) -> None:
        self.path = Path(path)
        self.busy_timeout = busy_timeout
        self.read_only = read_only
        self._lock = threading.RLock()
        with filesystem_errors(self.path.parent, writing=not read_only):
            self._conn = self._connect(create)

    def _connect(self, create: bool) -> sqlite3.Connection:
        """Open the file (`read_only`: sqlite's mode=ro, and immutable=1 on a read-only file system where
        no -shm file exists for a reader to use) and read its schema, so that a file that is not a
        database fails here, not in the middle of a job."""
        mode = "ro" if self.read_only else ("rwc" if create else "rw")
        try:
            return self._probe(f"file:{self.path.as_posix()}?mode={mode}", create)
        except sqlite3.OperationalError as exc:
            if not (self.read_only and "unable to open" in str(exc) and self.path.is_file()):
                raise self._open_error(exc) from None
            if not on_read_only_fs(self.path.parent):  # a folder this user may not write: a writer may exist
                raise CacheError(f"cannot read the index {self.path} ({exc}): sqlite needs to create "
                                 f"{self.path.name}-shm beside it and {self.path.parent} is not writable for this "
                                 "user; run te as the cache's owner or make the folder writable") from None
        # A read-only file system and no -wal/-shm that sqlite could read the log through: no writer has the
        # index open and none can write through this mount, so the file is read as it is (immutable: no
        # locks, no -shm). A writer on another, writable mount of the same disk would break this.
        try:
            return self._probe(f"file:{self.path.as_posix()}?mode=ro&immutable=1", create)
        except sqlite3.OperationalError as exc:
            raise self._open_error(exc) from None

    def _open_error(self, exc: sqlite3.OperationalError) -> BaseException:
        if is_disk_full(exc, self.path.parent):
            return disk_full_error(self.path.parent, exc)
        if is_damage(exc):
            return damaged_index_error(self.path, exc)
        # the marker says "cache", but its index is gone
        return CorruptCacheError(f"cannot open the index {self.path} ({exc}); run `te cache repair "
                                 f"{self.path.parent}` to rebuild it from the shards")

    def _probe(self, uri: str, create: bool) -> sqlite3.Connection:
        conn = sqlite3.connect(uri, uri=True, timeout=self.busy_timeout, isolation_level=None,
                               check_same_thread=False)
        try:
            with self._translated():
                if not self.read_only:
                    conn.execute("PRAGMA synchronous=FULL")
                if create:
                    conn.execute("PRAGMA journal_mode=WAL")  # persistent: stored in the file
                    conn.executescript(SCHEMA)
                else:
                    conn.execute("SELECT count(*) FROM sqlite_master").fetchall()
        except BaseException:
            conn.close()
            raise
        return conn

    @contextmanager
    def _translated(self) -> Iterator[None]:
        """sqlite's errors for a damaged file become the `CorruptCacheError` users can act on; a full disk
        (and a write to a read-only index) the one line that says so."""
        try:
            yield
        except sqlite3.DatabaseError as exc:
            if is_damage(exc):
                raise damaged_index_error(self.path, exc) from None
            if is_disk_full(exc, self.path.parent):
                raise disk_full_error(self.path.parent, exc) from exc
            if is_read_only(exc):
                raise read_only_error(self.path.parent, exc) from exc
            raise

    def close(self) -> None:
        with self._lock:
            try:
                self._conn.close()
            except sqlite3.Error:  # a checkpoint on a full disk: what is committed stays in the -wal
                pass

    # -- transactions --------------------------------------------------------------------------------
    @contextmanager
    def write(self) -> Iterator[None]:
        """One write transaction (BEGIN IMMEDIATE ... COMMIT), rolled back on any exception.

        A full disk met inside (sqlite's or a shard file's ENOSPC) is the one `DiskFullError` naming the
        cache; the first error is the one raised (a rollback that fails too is not what went wrong)."""
        if self.read_only:
            raise read_only_error(self.path.parent)
        with self._lock, self._translated(), filesystem_errors(self.path.parent):
            try:
                self._conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:  # te's writers take the flock first: this is someone else
                if is_damage(exc) or is_disk_full(exc, self.path.parent) or is_read_only(exc):
                    raise
                raise CacheError(f"{self.path} stayed locked by another connection for over {self.busy_timeout:g} s "
                                 f"({exc})") from None
            try:
                yield
            except BaseException:
                try:
                    self._conn.execute("ROLLBACK")
                except sqlite3.Error:  # sqlite rolled back itself (SQLITE_FULL does); never mask the first error
                    pass
                raise
            try:
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:
                    try:
                        self._conn.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass
                raise

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """Reads that see one consistent state (a WAL read transaction); never blocks on a writer."""
        with self._lock, self._translated():
            self._conn.execute("BEGIN")
            try:
                yield
            finally:
                self._conn.execute("COMMIT")

    def _q(self, sql: str, params: Sequence = ()) -> list[tuple]:
        with self._lock, self._translated():
            return self._conn.execute(sql, params).fetchall()

    def _x(self, sql: str, params: Sequence = ()) -> int:
        with self._lock, self._translated():
            return self._conn.execute(sql, params).lastrowid

    def _many(self, sql: str, rows: Iterable[Sequence]) -> None:
        with self._lock, self._translated():
            self._conn.executemany(sql, rows)

    # -- meta -------------------------------------------------------------------------------------------
    def delete_meta(self, key: str) -> None:
        self._x("DELETE FROM meta WHERE key = ?", (key,))

    def set_meta(self, key: str, value: str) -> None:
        self._x("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def meta_with_prefix(self, prefix: str) -> dict[str, str]:
        """{key: value} of every meta entry whose key starts with `prefix`."""
        rows = self._q("SELECT key, value FROM meta WHERE substr(key, 1, ?) = ?", (len(prefix), prefix))
        return dict(rows)

    def set_meta_json(self, key: str, value: Any) -> None:
        self.set_meta(key, json.dumps(value, sort_keys=True))

    def meta(self, key: str) -> str | None:
        rows = self._q("SELECT value FROM meta WHERE key = ?", (key,))
        return rows[0][0] if rows else None

    def integrity_check(self) -> list[str]:
        """sqlite's own full consistency check, indexes against their tables too (quick_check is not:
        a flipped byte in the records' key index would pass it): ["ok"] when the database file is sound."""
        return [r[0] for r in self._q("PRAGMA integrity_check")]

    # -- spaces -----------------------------------------------------------------------------------------
    def space(self, digest: str) -> SpaceRow | None:
        rows = self._q("SELECT id, digest, dim, stored, row_bytes, config FROM spaces WHERE digest = ?", (digest,))
        return SpaceRow(*rows[0][:5], json.loads(rows[0][5])) if rows else None

    def spaces(self) -> list[SpaceRow]:
        return [SpaceRow(*r[:5], json.loads(r[5]))
                for r in self._q("SELECT id, digest, dim, stored, row_bytes, config FROM spaces ORDER BY id")]

    def space_by_id(self, space_id: int) -> SpaceRow | None:
        rows = self._q("SELECT id, digest, dim, stored, row_bytes, config FROM spaces WHERE id = ?", (space_id,))
        return SpaceRow(*rows[0][:5], json.loads(rows[0][5])) if rows else None

    def insert_space(self, digest: str, dim: int, stored: str, row_bytes: int, config: dict,
                     space_id: int | None = None) -> int:
        """A new space; `space_id` puts one back under the id its rows and shards already name."""
        return self._x("INSERT INTO spaces (id, digest, dim, stored, row_bytes, config, created) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?)",
                       (space_id, digest, dim, stored, row_bytes, json.dumps(config, sort_keys=True), time.time()))

    def set_space_config(self, space_id: int, config: dict) -> None:
        self._x("UPDATE spaces SET config = ? WHERE id = ?", (json.dumps(config, sort_keys=True), space_id))

    def space_ids_in_use(self) -> set[int]:
        """Space ids that rows or shards name (a space the index lost still has these)."""
        return {r[0] for r in self._q("SELECT DISTINCT space FROM rows UNION SELECT DISTINCT space FROM shards")}

    def delete_space(self, space_id: int) -> None:
        self._x("DELETE FROM spaces WHERE id = ?", (space_id,))

    # -- shards and their checksums ---------------------------------------------------------------------
    def shards(self, space_id: int | None = None) -> list[ShardRow]:
        if space_id is None:
            rows = self._q("SELECT id, space, rows, capacity, sealed_sha256 FROM shards ORDER BY id")
        else:
            rows = self._q("SELECT id, space, rows, capacity, sealed_sha256 FROM shards WHERE space = ? ORDER BY id",
                           (space_id,))
        return [ShardRow(*r) for r in rows]

    def open_shard(self, space_id: int) -> ShardRow | None:
        """The space's newest shard with room left, if any."""
        rows = self._q("SELECT id, space, rows, capacity, sealed_sha256 FROM shards "
                       "WHERE space = ? AND rows < capacity ORDER BY id DESC LIMIT 1", (space_id,))
        return ShardRow(*rows[0]) if rows else None

    def insert_shard(self, space_id: int, capacity: int, shard_id: int | None = None) -> int:
        """A new, empty shard; `shard_id` puts one back under the id its file is named by (a rebuilt index)."""
        return self._x("INSERT INTO shards (id, space, rows, capacity) VALUES (?, ?, 0, ?)",
                       (shard_id, space_id, capacity))

    def set_shard_rows(self, shard_id: int, rows: int) -> None:
        self._x("UPDATE shards SET rows = ? WHERE id = ?", (rows, shard_id))

    def seal_shard(self, shard_id: int, sha256: str, rows: int) -> None:
        """Mark a shard full: no more rows go to it, and its whole row area has digest `sha256`."""
        self._x("UPDATE shards SET sealed_sha256 = ?, capacity = ? WHERE id = ?", (sha256, rows, shard_id))

    def close_shard(self, shard_id: int) -> None:
        """Take a shard out of the running for new rows (gc is about to empty it)."""
        self._x("UPDATE shards SET capacity = rows WHERE id = ?", (shard_id,))

    def delete_shard(self, shard_id: int) -> None:
        self._x("DELETE FROM blocks WHERE shard = ?", (shard_id,))
        self._x("DELETE FROM shards WHERE id = ?", (shard_id,))

    def blocks(self, shard_id: int) -> list[tuple[int, int, int]]:
        """[(block, rows, crc32)] of a shard, in order."""
        return self._q("SELECT block, rows, crc32 FROM blocks WHERE shard = ? ORDER BY block", (shard_id,))

    def partial_block(self, shard_id: int, committed: int, block_rows: int) -> tuple[int, int] | None:
        """(rows, crc32) of the block that holds row `committed`, when that block is partly filled."""
        block, in_block = divmod(committed, block_rows)
        if not in_block:
            return None
        rows = self._q("SELECT rows, crc32 FROM blocks WHERE shard = ? AND block = ?", (shard_id, block))
        return (rows[0][0], rows[0][1]) if rows else None

    def put_blocks(self, shard_id: int, entries: Iterable[tuple[int, int, int]]) -> None:
        self._many("INSERT OR REPLACE INTO blocks (shard, block, rows, crc32) VALUES (?, ?, ?, ?)",
                   [(shard_id, b, n, crc) for b, n, crc in entries])

    # -- rows -------------------------------------------------------------------------------------------
    def locations(self, space_id: int, keys: Sequence[str]) -> dict[str, tuple[int, int]]:
        """{key: (shard, row)} for the keys the space holds."""
        found: dict[str, tuple[int, int]] = {}
        for chunk in _chunks(keys):
            marks = ",".join("?" * len(chunk))
            for key, shard, row in self._q(f"SELECT key, shard, row FROM rows WHERE space = ? AND key IN ({marks})",
                                           (space_id, *map(_blob, chunk))):
                found[key.hex()] = (shard, row)
        return found

    def insert_rows(self, space_id: int, entries: Iterable[tuple[str, int, int]]) -> None:
        self._many("INSERT INTO rows (space, key, shard, row) VALUES (?, ?, ?, ?)",
                   [(space_id, _blob(key), shard, row) for key, shard, row in entries])

    def move_rows(self, space_id: int, entries: Iterable[tuple[str, int, int]]) -> None:
        self._many("UPDATE rows SET shard = ?, row = ? WHERE space = ? AND key = ?",
                   [(shard, row, space_id, _blob(key)) for key, shard, row in entries])

    def count_rows(self, space_id: int) -> int:
        return self._q("SELECT count(*) FROM rows WHERE space = ?", (space_id,))[0][0]

    def rows_of_shard(self, shard_id: int) -> list[tuple[str, int]]:
        """[(key, row)] stored in a shard, by row."""
        return [(k.hex(), r) for k, r in self._q("SELECT key, row FROM rows WHERE shard = ? ORDER BY row", (shard_id,))]

    def delete_rows_at(self, shard_id: int, rows: Iterable[int]) -> int:
        """Forget the index rows pointing at these row numbers of a shard; how many were dropped."""
        wanted = sorted(set(rows))
        dropped = 0
        for chunk in _chunks(wanted):
            marks = ",".join("?" * len(chunk))
            dropped += self._q(f"SELECT count(*) FROM rows WHERE shard = ? AND row IN ({marks})",
                               (shard_id, *chunk))[0][0]
            self._x(f"DELETE FROM rows WHERE shard = ? AND row IN ({marks})", (shard_id, *chunk))
        return dropped

    def keys_of_space(self, space_id: int) -> list[str]:
        return [k.hex() for (k,) in self._q("SELECT key FROM rows WHERE space = ?", (space_id,))]

    def key_blobs_of_space(self, space_id: int, chunk: int = 1 << 16) -> Iterator[list[bytes]]:
        """The space's keys as raw bytes, `chunk` at a time, in key order (for millions of keys: no str
        per key, no list of them all)."""
        with self._lock, self._translated():
            cursor = self._conn.execute("SELECT key FROM rows WHERE space = ? ORDER BY key", (space_id,))
            while True:
                rows = cursor.fetchmany(chunk)
                if not rows:
                    return
                yield [k for (k,) in rows]

    def rows_per_shard(self) -> dict[int, int]:
        """{shard id: how many index rows point into it}."""
        return dict(self._q("SELECT shard, count(*) FROM rows GROUP BY shard"))

    def unreferenced_rows(self) -> list[tuple[int, str, int, int]]:
        """[(space, key, shard, row)] whose key no data-set record names."""
        return [(s, k.hex(), sh, r) for s, k, sh, r in self._q(
            "SELECT space, key, shard, row FROM rows WHERE key NOT IN (SELECT key FROM records) ORDER BY shard, row")]

    def delete_rows(self, space_id: int, keys: Sequence[str]) -> None:
        self._many("DELETE FROM rows WHERE space = ? AND key = ?", [(space_id, _blob(k)) for k in keys])

    def row_problems(self) -> list[str]:
        """Rows the index points at that cannot exist: past a shard's end, in another space's shard, in no
        shard at all, or in a slot another key also claims (at most 20 of each kind)."""
        out = [f"{n} keys point at row {row} of shard {shard}; a row holds one key's features"
               for shard, row, n in self._q("SELECT shard, row, count(*) AS n FROM rows GROUP BY shard, row "
                                            "HAVING n > 1 LIMIT 20")]
        out += [f"key {key.hex()} points at row {row} of shard {shard}, which commits only {rows} rows"
               for key, shard, row, rows in self._q(
                   "SELECT r.key, r.shard, r.row, s.rows FROM rows r JOIN shards s ON s.id = r.shard "
                   "WHERE r.row < 0 OR r.row >= s.rows LIMIT 20")]
        out += [f"key {key.hex()} of space {space} points at shard {shard}, which belongs to space {owner}"
                for key, space, shard, owner in self._q(
                    "SELECT r.key, r.space, r.shard, s.space FROM rows r JOIN shards s ON s.id = r.shard "
                    "WHERE r.space != s.space LIMIT 20")]
        out += [f"key {key.hex()} points at shard {shard}, which the index does not have"
                for key, shard in self._q("SELECT key, shard FROM rows WHERE shard NOT IN (SELECT id FROM shards) "
                                          "LIMIT 20")]
        return out

    # -- data sets --------------------------------------------------------------------------------------
    def put_dataset(self, name: str, class_names: list[str], records: Iterable[tuple]) -> None:
        """Replace data set `name` with these records ((idx, path, key, label, split) tuples).

        `records` is consumed as a stream (executemany over a generator): nothing per record is held.
        Call it inside `write()`, so the replacement is one transaction.
        """
        self.delete_dataset(name)
        dataset_id = self._x("INSERT INTO datasets (name, class_names, created) VALUES (?, ?, ?)",
                             (name, json.dumps(class_names), time.time()))
        digest = _dataset_hash(name, json.dumps(class_names))

        def rows():
            for idx, path, key, label, split in records:
                blob = _blob(key)
                digest.update(_record_bytes(idx, path, blob, label, split))
                yield dataset_id, idx, path, blob, label, split

        self._many("INSERT INTO records (dataset, idx, path, key, label, split) VALUES (?, ?, ?, ?, ?, ?)", rows())
        self.set_meta(DATASET_SHA256 + name, digest.hexdigest())

    def dataset_sha256(self, name: str) -> tuple[str | None, str | None]:
        """(the SHA-256 recorded when data set `name` was stored, the one its stored rows give now): they
        differ when a byte of its name, class names or records changed (None recorded: an older te wrote it)."""
        rows = self._q("SELECT id, class_names FROM datasets WHERE name = ?", (name,))
        if not rows:
            return self.meta(DATASET_SHA256 + name), None
        digest = _dataset_hash(name, rows[0][1])
        with self._lock, self._translated():
            for record in self._conn.execute("SELECT idx, path, key, label, split FROM records WHERE dataset = ? "
                                             "ORDER BY idx", (rows[0][0],)):
                digest.update(_record_bytes(*record))
        return self.meta(DATASET_SHA256 + name), digest.hexdigest()

    def digested_dataset_names(self) -> list[str]:
        """Names that a data-set SHA-256 is recorded for (each should be a stored data set)."""
        return sorted(k[len(DATASET_SHA256):] for k in self.meta_with_prefix(DATASET_SHA256))

    def dataset_classes(self, name: str) -> list[str] | None:
        """Class names of data set `name`, or None when there is no such data set."""
        rows = self._q("SELECT class_names FROM datasets WHERE name = ?", (name,))
        return json.loads(rows[0][0]) if rows else None

    def dataset_records(self, name: str) -> list[tuple]:
        """[(path, key, label, split)] of data set `name`, in order."""
        return [(p, k.hex(), label, split) for p, k, label, split in self._q(
            "SELECT r.path, r.key, r.label, r.split FROM records r JOIN datasets d ON d.id = r.dataset "
            "WHERE d.name = ? ORDER BY r.idx", (name,))]

    def dataset_names(self) -> list[str]:
        return [r[0] for r in self._q("SELECT name FROM datasets ORDER BY name")]

    def delete_dataset(self, name: str) -> bool:
        rows = self._q("SELECT id FROM datasets WHERE name = ?", (name,))
        if rows:
            self._x("DELETE FROM records WHERE dataset = ?", (rows[0][0],))
            self._x("DELETE FROM datasets WHERE id = ?", (rows[0][0],))
        self.delete_meta(DATASET_SHA256 + name)
        return bool(rows)

    def records_without_row(self, name: str, limit: int = 3) -> tuple[int, list[str]]:
        """(how many, the paths of up to `limit`) records of data set `name` whose key has a row in no space."""
        # rows' primary key is (space, key): a lookup by key alone scans the table once per record
        # (quadratic). Asked space by space (CROSS JOIN fixes that order), each is a primary-key search:
        # O(records x spaces x log rows).
        where = ("FROM records r JOIN datasets d ON d.id = r.dataset WHERE d.name = ? AND NOT EXISTS "
                 "(SELECT 1 FROM spaces s CROSS JOIN rows w WHERE w.space = s.id AND w.key = r.key)")
        count = self._q(f"SELECT count(*) {where}", (name,))[0][0]
        paths = [p for (p,) in self._q(f"SELECT r.path {where} ORDER BY r.idx LIMIT ?", (name, limit))] if count else []
        return count, paths

    def dataset_coverage(self, name: str, space_id: int, split: str | None = None) -> int:
        """How many of data set `name`'s records (of `split`, or all) have a row in space `space_id`."""
        where, params = ("", (space_id, name)) if split is None else (" AND r.split = ?", (space_id, name, split))
        return self._q("SELECT count(*) FROM records r JOIN datasets d ON d.id = r.dataset "
                       f"JOIN rows w ON w.space = ? AND w.key = r.key WHERE d.name = ?{where}", params)[0][0]

    def dataset_size(self, name: str, split: str | None = None) -> tuple[int, int] | None:
        """(the data set's id, how many records it has in `split`, or in all) of data set `name`, read in one
        snapshot; None when there is no such data set. A data set stored again gets a new id."""
        with self.snapshot():
            rows = self._q("SELECT id FROM datasets WHERE name = ?", (name,))
            if not rows:
                return None
            where, params = ("", (rows[0][0],)) if split is None else (" AND split = ?", (rows[0][0], split))
            return rows[0][0], self._q(f"SELECT count(*) FROM records WHERE dataset = ?{where}", params)[0][0]

    def dataset_record_pages(self, dataset_id: int, split: str | None = None,
                             page: int = 8192) -> Iterator[list[tuple[str, str, int | None, str]]]:
        """The records [(path, key, label, split)] of the data set with id `dataset_id` (of `split`, or all), in
        order, `page` at a time: each page is one query by primary key, so millions of records stream in
        flat memory and no read transaction is held between pages. A data set stored again meanwhile has a
        new id: its old records are gone and the pages end early (callers compare the count)."""
        after = -1
        where = "" if split is None else " AND split = ?"
        while True:
            params = (dataset_id, after) if split is None else (dataset_id, after, split)
            rows = self._q(f"SELECT idx, path, key, label, split FROM records WHERE dataset = ? AND idx > ?{where} "
                           "ORDER BY idx LIMIT ?", (*params, page))
            if not rows:
                return
            after = rows[-1][0]
            yield [(p, k.hex(), label, s) for _, p, k, label, s in rows]

    def dataset_counts(self, name: str) -> tuple[dict[str, int], dict[int | None, int]]:
        """({split: records}, {label: records}) of data set `name`."""
        splits = dict(self._q("SELECT r.split, count(*) FROM records r JOIN datasets d ON d.id = r.dataset "
                              "WHERE d.name = ? GROUP BY r.split ORDER BY r.split", (name,)))
        labels = dict(self._q("SELECT r.label, count(*) FROM records r JOIN datasets d ON d.id = r.dataset "
                              "WHERE d.name = ? GROUP BY r.label ORDER BY r.label", (name,)))
        return splits, labels
