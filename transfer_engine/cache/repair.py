"""`te cache repair`: put a damaged cache back into a state that verifies, losing only what is damaged.

Two cases:

* The index is sound (sqlite's check passes): `te cache verify`'s `Damage` says what to drop. The index
  entries of damaged or missing rows are dropped (and of entries bound to a row written for another
  key); every shard that held one is rewritten with its good rows only (raw bytes, with fresh key slots
  and checksums), so the next `te extract` re-extracts exactly the dropped images and nothing else.
  Damage only in what the index or a key file says about good rows (a checksum, a key slot, a shard
  header, `space.json`) costs no row: the shard is rewritten from its good rows.
* The index itself is damaged: it is moved aside (`index.sqlite.damaged-<time>`, never deleted) and
  rebuilt from the shards: each space folder's `space.json` names the space, each shard's key file
  names the key of each row and proves its bytes. What the shards cannot tell is read back from the
  damaged copy where sqlite still can (data sets, artifact names, provenance); what it cannot is named
  in the report: the data sets to extract again, the shards whose rows had no key file.

Runs under the writer lock; other processes should not be using the cache while it runs (a reader that
has the old index open keeps reading the damaged copy).
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transfer_engine.cache import artifacts, gc, leases
from transfer_engine.cache import shards as shardfile
from transfer_engine.cache.index import DATASET_SHA256, Index
from transfer_engine.cache.space import config_digest
from transfer_engine.cache.verify import row_runs
from transfer_engine.cache.writer import KEYS_FROM_SHARD, write_space_file
from transfer_engine.errors import CorruptCacheError

if TYPE_CHECKING:
    from transfer_engine.cache.store import FeatureCache
    from transfer_engine.cache.verify import Damage


@dataclass
class RepairReport:
    """What repair did: the index entries it dropped (by shard), or how it rebuilt the index and what
    could not be recovered; `to_extract` names the data sets with images to extract again."""

    cache: str
    rebuilt_index: bool = False
    damaged_copy: str | None = None
    dropped: list[dict[str, Any]] = field(default_factory=list)   # {"shard", "rows", "why"}
    entries_dropped: int = 0
    shards_rewritten: int = 0
    spaces_restored: int = 0
    rows_restored: int = 0
    lost: list[str] = field(default_factory=list)                  # what could not be recovered, in words
    datasets_restored: list[str] = field(default_factory=list)
    artifacts_dropped: list[str] = field(default_factory=list)     # "NAME (FILE): what was wrong"
    to_extract: dict[str, int] = field(default_factory=dict)       # data set -> records without a row

    @property
    def changed(self) -> bool:
        return (self.rebuilt_index or self.entries_dropped > 0 or self.shards_rewritten > 0 or bool(self.lost)
                or bool(self.artifacts_dropped))

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "changed": self.changed}


def repair_cache(directory: str | os.PathLike) -> RepairReport:
    """Repair the cache in `directory` (see the module docstring).

    Raises:
        NotACacheError: `directory` is not a cache.
        CacheError: another process holds the writer lock for longer than the lock timeout.
    """
    from transfer_engine.cache.lock import WriterLock
    from transfer_engine.cache.store import LOCK, check_cache_dir

    root = check_cache_dir(directory)
    report = RepairReport(str(root))
    lock = WriterLock(root / LOCK)
    try:
        _repair_locked(root, lock, report)
    finally:
        lock.close()
    return report


def _repair_locked(root: Path, lock, report: RepairReport) -> None:
    from transfer_engine.cache.store import INDEX, FeatureCache
    from transfer_engine.cache.writer import DEFAULT_SHARD_BYTES

    with lock:
        index = _open_sound(root / INDEX)
        if index is None:
            _rebuild_index(root, report)
            index = Index(root / INDEX, create=False)
        cache = FeatureCache(root, index, lock, DEFAULT_SHARD_BYTES)
        try:
            if not report.rebuilt_index:
                _drop_damage(cache, report)
            else:  # artifact names read back from the damaged index: their files are checked as verify does
                from transfer_engine.cache.verify import Damage

                _drop_artifacts(cache, Damage(artifacts=set(artifacts.records(cache))), report)
            with index.snapshot():
                report.to_extract = {name: n for name in index.dataset_names()
                                     if (n := index.records_without_row(name)[0])}
        finally:
            cache.maps.forget()
            index.close()


def _open_sound(path: Path) -> Index | None:
    """The index when sqlite finds it sound, else None (it is damaged: rebuild it)."""
    try:
        index = Index(path, create=False)
    except CorruptCacheError:
        return None
    try:
        if index.integrity_check() == ["ok"]:
            return index
    except CorruptCacheError:
        pass
    index.close()
    return None


# -- a sound index: drop what verify found damaged ------------------------------------------------------
def _drop_damage(cache: "FeatureCache", report: RepairReport) -> None:
    verified = cache.verify()
    damage = verified.damage
    if not damage:
        return
    index = cache.index
    _drop_artifacts(cache, damage, report)
    with cache.lock, index.write():
        _restore_space_configs(cache, damage, report)
        rewrite = set(damage.rows)
        by_id = {s.id: s for s in index.shards()}
        spaces = {s.id: s for s in index.spaces()}
        for space_id, key in sorted(damage.entries):
            shard_row = index.locations(space_id, [key]).get(key)
            index.delete_rows(space_id, [key])
            report.entries_dropped += 1
            if shard_row is not None:
                rewrite.add(shard_row[0])
                report.dropped.append({"shard": _relpath(spaces, by_id, shard_row[0]), "rows": [shard_row[1]] * 2,
                                       "why": "the index bound another key to this row"})
        for shard_id in sorted(damage.shards):
            _drop_rows(index, spaces, by_id, shard_id, range(by_id[shard_id].rows), "the shard is lost", report)
            index.delete_shard(shard_id)
        for shard_id, rows in sorted(damage.rows.items()):
            if shard_id in by_id and rows:
                _drop_rows(index, spaces, by_id, shard_id, rows, "damaged or missing bytes", report)
        rewrite = sorted(s for s in rewrite if s in by_id and s not in damage.shards)
        gone = gc.rewrite_shards(cache, rewrite)
        report.shards_rewritten = len(rewrite)
    gc.unlink_shard_files(cache, gone)
    for name in sorted(damage.datasets):  # kept: dropping it would let gc drop its rows
        report.lost.append(f"data set {name!r}: its records or class names changed on disk and cannot be restored; "
                           f"run te extract --name {name} on its data to store it anew (its rows are reused)")
    for space_id in damage.space_files:
        space = index.space_by_id(space_id)
        if space is not None and config_digest(space.config) == space.digest:
            folder = cache.root / shardfile.space_relfolder(space.digest)
            (folder / shardfile.SPACE_FILE).unlink(missing_ok=True)
            write_space_file(folder, space)


def _drop_artifacts(cache: "FeatureCache", damage: "Damage", report: RepairReport) -> None:
    """A named artifact whose file is missing or no longer hashes as stored: its name is dropped (so the next
    te extract that needs it exports it again, instead of finding the name and a bad file) and its file,
    once no name points at it, removed."""
    if not damage.artifacts:
        return
    named = artifacts.records(cache)
    with cache.lock:
        with cache.index.write():
            for name in sorted(damage.artifacts):
                record = named.get(name)
                if record is None:
                    continue
                problem = artifacts.check(cache.root / record["file"], record)
                if not problem:
                    continue
                artifacts.drop_name(cache.index, name)
                report.artifacts_dropped.append(f"{name} ({record['file']}): {problem}")
        artifacts.remove_unreferenced(cache)
    damage.artifacts.clear()


def _restore_space_configs(cache: "FeatureCache", damage: "Damage", report: RepairReport) -> None:
    """A space whose stored config no longer hashes to its id gets it back from its `space.json`; when that
    is gone too, the space's rows are dropped (nothing can say what they are)."""
    index = cache.index
    for space_id in sorted(damage.spaces):
        space = index.space_by_id(space_id)
        saved = shardfile.read_space_file(cache.root / shardfile.space_relfolder(space.digest))
        if saved and saved.get("id") == space.digest and config_digest(saved.get("config")) == space.digest:
            index.set_space_config(space_id, saved["config"])
            damage.space_files.discard(space_id)
            continue
        by_id = {s.id: s for s in index.shards(space_id)}
        for shard_id, shard in by_id.items():
            _drop_rows(index, {space_id: space}, by_id, shard_id, range(shard.rows),
                       "its space's config was edited and no space.json says what it was", report)
            index.delete_shard(shard_id)  # its files are orphans now: te cache gc removes them
            damage.rows.pop(shard_id, None)
        index.delete_space(space_id)
        damage.space_files.discard(space_id)
        report.lost.append(f"space {space.digest[:12]}: its config was edited and cannot be restored; its rows are "
                           "dropped")


def _drop_rows(index: Index, spaces: dict, by_id: dict, shard_id: int, rows, why: str,
               report: RepairReport) -> None:
    for first, last in row_runs(sorted(set(rows))):
        dropped = index.delete_rows_at(shard_id, range(first, last + 1))
        report.entries_dropped += dropped
        if dropped:
            report.dropped.append({"shard": _relpath(spaces, by_id, shard_id), "rows": [first, last],
                                   "entries": dropped, "why": why})


def _relpath(spaces: dict, by_id: dict, shard_id: int) -> str:
    space = spaces.get(by_id[shard_id].space)
    return shardfile.shard_relpath(space.digest if space else "unknown", shard_id)


# -- a damaged index: rebuild it from the shards ---------------------------------------------------------
def _rebuild_index(root: Path, report: RepairReport) -> None:
    from transfer_engine.cache.space import FORMAT_VERSION

    damaged = root / f"index.sqlite.damaged-{time.strftime('%Y%m%d-%H%M%S')}"
    for suffix in ("", "-wal", "-shm"):
        if (root / f"index.sqlite{suffix}").exists():
            os.replace(root / f"index.sqlite{suffix}", Path(f"{damaged}{suffix}"))
    report.rebuilt_index = True
    report.damaged_copy = str(damaged) if damaged.exists() else None  # None: there was no index file at all
    salvaged = _salvage(damaged, report)
    index = Index(root / "index.sqlite", create=True)
    try:
        with index.write():
            index.set_meta("format_version", str(FORMAT_VERSION))
            index.set_meta(KEYS_FROM_SHARD, "1")
            for key, value in salvaged.meta.items():
                index.set_meta(key, value)
            for folder in sorted((root / "shards").glob("*")) if (root / "shards").is_dir() else []:
                if folder.is_dir():
                    _restore_space(root, index, folder, report)
            for name, (classes, records) in salvaged.datasets.items():
                _restore_dataset(index, name, classes, records, salvaged.digests.get(DATASET_SHA256 + name), report)
    finally:
        index.close()


def _restore_dataset(index: Index, name: str, classes: list[str], records: list[tuple], recorded: str | None,
                     report: RepairReport) -> None:
    """Put back a data set read from the damaged index, unless it no longer hashes as it was stored."""
    index.put_dataset(name, classes, records)
    if recorded is not None and index.meta(DATASET_SHA256 + name) != recorded:
        index.delete_dataset(name)
        report.lost.append(f"data set {name!r}: its records were damaged in the index; run te extract --name {name} "
                           "on its data again (the features are kept: only the list is lost)")
        return
    report.datasets_restored.append(name)


@dataclass
class _Salvaged:
    meta: dict[str, str] = field(default_factory=dict)
    digests: dict[str, str] = field(default_factory=dict)   # data-set SHA-256s as recorded
    datasets: dict[str, tuple[list[str], list[tuple]]] = field(default_factory=dict)


_REBUILT_META = ("format_version", KEYS_FROM_SHARD)


def _salvage(damaged: Path, report: RepairReport) -> _Salvaged:
    """What sqlite can still read of the damaged index (a scratch copy is read: the kept one stays as it was):
    the meta records (artifact names, provenance, backend choices) and the data sets, each whole or not at all."""
    out = _Salvaged()
    if not damaged.exists():
        report.lost.append("every data set (which images, labels and splits; their features are kept) and artifact "
                           "name: the index file was missing; run te extract on each data set's images again, it "
                           "reuses the rows")
        return out
    scratch = damaged.with_name(damaged.name + ".scratch")
    try:
        for suffix in ("", "-wal"):
            if Path(f"{damaged}{suffix}").exists():
                shutil.copyfile(f"{damaged}{suffix}", f"{scratch}{suffix}")
        conn = sqlite3.connect(scratch)
    except (OSError, sqlite3.Error) as exc:
        report.lost.append(f"every data set and artifact name: the damaged index cannot be read ({exc})")
        return out
    try:
        out.meta = _read_meta(conn, report)
        out.digests = dict(_read(conn, "SELECT key, value FROM meta WHERE substr(key, 1, ?) = ?", report, None,
                                 (len(DATASET_SHA256), DATASET_SHA256)) or [])
        names = _read(conn, "SELECT id, name, class_names FROM datasets ORDER BY name", report,
                      "every data set (which images, labels and splits; their features are kept): run te extract on "
                      "each data set's images again, it reuses the rows")
        for dataset_id, name, classes in names or []:
            records = _read(conn, "SELECT idx, path, key, label, split FROM records WHERE dataset = ? ORDER BY idx",
                            report, None, (dataset_id,))
            if records is None:
                report.lost.append(f"data set {name!r}: its records were in the damaged index; run `te extract "
                                   f"--name {name}` on its data again (the features are kept: only the list is lost)")
                continue
            out.datasets[name] = (json.loads(classes), [(i, p, k.hex(), lab, sp) for i, p, k, lab, sp in records])
    finally:
        conn.close()
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(f"{scratch}{suffix}").unlink(missing_ok=True)
    return out


def _read_meta(conn: sqlite3.Connection, report: RepairReport) -> dict[str, str]:
    rows = _read(conn, "SELECT key, value FROM meta", report, "the artifact names and provenance (te rebuilds "
                                                               "artifacts when it next needs them)")
    return {k: v for k, v in rows or []
            if k not in _REBUILT_META and not k.startswith((leases.PREFIX, DATASET_SHA256))}


def _read(conn: sqlite3.Connection, sql: str, report: RepairReport, what: str | None,
          params: tuple = ()) -> list[tuple] | None:
    try:
        return conn.execute(sql, params).fetchall()
    except (sqlite3.Error, ValueError) as exc:
        if what:
            report.lost.append(f"{what}: unreadable in the damaged index ({exc})")
        return None


def _restore_space(root: Path, index: Index, folder: Path, report: RepairReport) -> None:
    """Put a space folder's space and its shards' good rows back into a new index."""
    from transfer_engine.ops import row_bytes

    saved = shardfile.read_space_file(folder)
    files = sorted(folder.glob("*.shard"))
    rel = folder.relative_to(root).as_posix()
    digest = saved.get("id") if saved else None
    if not saved or config_digest(saved.get("config")) != digest or not str(digest).startswith(folder.name):
        if files:
            report.lost.append(f"{rel}: {len(files)} shards whose space is unknown (no sound {shardfile.SPACE_FILE}); "
                               "their rows are extracted again when needed")
        return
    config = saved["config"]
    width = row_bytes(config["dim"], config["stored"])
    space_id = index.insert_space(digest, config["dim"], config["stored"], width, config)
    report.spaces_restored += 1
    seen: set[str] = set()
    for path in files:
        _restore_shard(root, index, space_id, digest, config, width, path, seen, report)


def _restore_shard(root: Path, index: Index, space_id: int, digest: str, config: dict, width: int, path: Path,
                   seen: set[str], report: RepairReport) -> None:
    rel = path.relative_to(root).as_posix()
    try:
        shard_id = int(path.stem)
        with open(path, "rb") as f:
            header = shardfile.ShardHeader.unpack(f.read(shardfile.HEADER_BYTES), rel)
            data = f.read()
        rows = len(data) // width
        slots = shardfile.read_key_slots(shardfile.keys_path(path), rows)
    except FileNotFoundError:
        report.lost.append(f"{rel}: no key file (written before te kept them, or lost): its rows cannot be bound "
                           "to their images")
        return
    except (ValueError, CorruptCacheError) as exc:
        report.lost.append(f"{rel}: unreadable ({exc})")
        return
    if header != shardfile.ShardHeader(dim=config["dim"], row_bytes=width, stored=config["stored"], space_id=digest):
        report.lost.append(f"{rel}: its header does not match its space folder")
        return
    rows = min(rows, len(slots))
    good = [(slots[r].key, r) for r in range(rows)
            if slots[r].key and slots[r].matches(data[r * width:(r + 1) * width]) and slots[r].key not in seen]
    bad = rows - len(good)
    if bad:
        report.lost.append(f"{rel}: {bad} of {rows} rows failed their key file's check (or repeat a key)")
    if not good:
        return
    seen.update(k for k, _ in good)
    view = memoryview(data)[: rows * width]
    index.insert_shard(space_id, rows, shard_id=shard_id)
    index.set_shard_rows(shard_id, rows)
    index.put_blocks(shard_id, shardfile.extend_block_checksums(0, view, width, None))
    index.seal_shard(shard_id, shardfile.sha256_of_rows(path, rows, width), rows)
    index.insert_rows(space_id, ((k, shard_id, r) for k, r in good))
    report.rows_restored += len(good)
