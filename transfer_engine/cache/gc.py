"""`te cache gc`: drop the rows no data set references, and the spaces left without rows.

A row is live while any data set has a record with its key (in any space: data sets name images, not
backbones). Shards whose rows all died are deleted; shards with some dead rows are rewritten: their live
rows are copied (raw bytes, no re-encoding) through the ordinary append path, the index is re-pointed in
one transaction, and only then are the old files unlinked. A crash midway leaves either the old state or
the new one, plus at worst orphan files that the next gc removes. Files of interrupted writers (orphans,
uncommitted tails) are removed too, and artifact files no name points at. Runs under the writer lock;
readers keep reading (a reader that located rows before gc rewrote their shard gets a clear error and
locates again).

A space some live process holds a writer lease on (`transfer_engine.cache.leases`: a `te extract` whose
rows no data set names yet) is left whole: no row, no shard, not the space; leases of dead processes are
pruned first. Rows and shards of a space the index no longer has (a cache damaged by an older te) can
never be read: they are dropped like dead rows, never a KeyError.
"""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from transfer_engine.cache import artifacts, leases
from transfer_engine.cache import shards as shardfile
from transfer_engine.cache.writer import ShardWriter

if TYPE_CHECKING:
    from transfer_engine.cache.index import Index
    from transfer_engine.cache.store import FeatureCache


@dataclass
class GcReport:
    """What gc dropped (or, with dry_run, would drop) and the bytes it freed (would free, estimated)."""

    dry_run: bool
    rows_dropped: int = 0
    spaces_dropped: list[str] = field(default_factory=list)
    shards_removed: int = 0
    shards_rewritten: int = 0
    orphan_files: int = 0
    artifacts_removed: int = 0
    bytes_freed: int = 0
    spaces_kept_for_writers: dict[str, list[int]] = field(default_factory=dict)  # space -> writer pids
    stale_leases: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Plan:
    dead: dict[int, list[str]]            # space id -> dead keys
    remove: list[int]                     # shards with no live row
    rewrite: list[int]                    # shards with some live and some dead rows
    empty_spaces: list[int]
    orphans: list[str]                    # shard files the index does not name
    estimate: int                         # bytes a run would free
    kept: dict[str, list[int]]            # space digest -> pids of the live writers that hold it
    lost: list[int]                       # space ids rows or shards name that the index does not have


def _plan(cache: "FeatureCache") -> _Plan:
    index = cache.index
    spaces = {s.id: s for s in index.spaces()}
    kept = {digest: pids for digest, pids in leases.live_spaces(index, cache.own_leases()).items() if index.space(digest) is not None}
    held = {s.id for s in spaces.values() if s.digest in kept}
    lost = sorted(index.space_ids_in_use() - set(spaces))
    dead: dict[int, list[str]] = defaultdict(list)
    dead_per_shard: Counter = Counter()
    for space, key, shard, _row in index.unreferenced_rows():
        if space not in held:
            dead[space].append(key)
            dead_per_shard[shard] += 1
    for space in lost:  # unreadable without their space: dead whatever names their keys
        dead[space] = index.keys_of_space(space)
    remove, rewrite, estimate = [], [], 0
    live_per_space: Counter = Counter()
    referenced = index.rows_per_shard()
    for shard in index.shards():
        space = spaces.get(shard.space)
        size = _file_bytes(cache, space, shard.id)
        if shard.space in lost:
            remove.append(shard.id)
            estimate += size
            continue
        if shard.space in held:
            continue
        live = referenced.get(shard.id, 0) - dead_per_shard[shard.id]
        live_per_space[shard.space] += live
        if live == 0:
            remove.append(shard.id)
            estimate += size
        elif live < shard.rows:
            rewrite.append(shard.id)
            estimate += max(0, size - shardfile.HEADER_BYTES - live * space.row_bytes)
        else:
            estimate += max(0, size - shardfile.HEADER_BYTES - shard.rows * space.row_bytes)  # torn tail
    empty = [s for s in spaces if live_per_space[s] == 0 and s not in held]
    orphans = shardfile.orphan_files(cache.root, set(_committed_ends(index)))
    estimate += sum(os.stat(cache.root / p).st_size for p in orphans)
    return _Plan(dict(dead), remove, rewrite, empty, orphans, estimate, kept, lost)


def _file_bytes(cache: "FeatureCache", space, shard_id: int) -> int:
    """Bytes of a shard file (0 when it is missing or its space is unknown)."""
    if space is None:
        return 0
    path = cache.shard_path(space.digest, shard_id)
    return os.stat(path).st_size if path.exists() else 0


def _committed_ends(index: "Index") -> dict[str, int]:
    """{shard or key file: byte offset where its committed rows end} for every shard the index names
    (in a space it has)."""
    spaces = {s.id: s for s in index.spaces()}
    ends = {}
    for s in index.shards():
        space = spaces.get(s.space)
        if space is not None:
            ends[shardfile.shard_relpath(space.digest, s.id)] = shardfile.HEADER_BYTES + s.rows * space.row_bytes
            ends[shardfile.keys_relpath(space.digest, s.id)] = shardfile.KEYS_HEADER_BYTES + s.rows * shardfile.SLOT_BYTES
    return ends


def collect_garbage(cache: "FeatureCache", dry_run: bool = False) -> GcReport:
    """Drop unreferenced rows and empty spaces, remove dead and orphan shard files.

    Args:
        cache: an open cache.
        dry_run: only report what would be dropped and an estimate of the bytes freed.

    Returns:
        A `GcReport`.
    """
    index = cache.index
    if dry_run:
        with index.snapshot():
            plan = _plan(cache)
            digests = {s.id: s.digest for s in index.spaces()}
        stale = artifacts.unreferenced(cache)
        report = _report(plan, digests, dry_run=True, orphans=len(plan.orphans),
                         freed=plan.estimate + sum(p.stat().st_size for p in stale if p.exists()))
        report.artifacts_removed = len(stale)
        return report
    with cache.lock:
        before = _disk_bytes(cache)
        with index.write():
            stale_leases = leases.prune(index)
            plan = _plan(cache)
            digests = {s.id: s.digest for s in index.spaces()}
            gone = _apply(cache, index, plan)
        unlink_shard_files(cache, gone)
        orphans = _remove_orphans_and_tails(cache)
        stale, stale_bytes = artifacts.remove_unreferenced(cache)
    report = _report(plan, digests, dry_run=False, freed=max(0, before - _disk_bytes(cache)) + stale_bytes,
                     orphans=orphans)
    report.artifacts_removed = stale
    report.stale_leases = stale_leases
    return report


def _apply(cache: "FeatureCache", index: "Index", plan: _Plan) -> list[str]:
    """Change the index (inside the caller's transaction); return shard files to unlink after commit."""
    spaces = {s.id: s for s in index.spaces()}
    for space_id, keys in plan.dead.items():
        index.delete_rows(space_id, keys)
    by_id = {s.id: s for s in index.shards()}
    gone = rewrite_shards(cache, plan.rewrite)
    for shard_id in plan.remove:
        index.delete_shard(shard_id)
        space = spaces.get(by_id[shard_id].space)
        if space is not None:  # a lost space's files: orphans now, removed with the others
            gone.append(shardfile.shard_relpath(space.digest, shard_id))
    for space_id in plan.empty_spaces:
        index.delete_space(space_id)
    return gone


def rewrite_shards(cache: "FeatureCache", shard_ids: list[int]) -> list[str]:
    """Copy the rows the index still points at in these shards (raw bytes, with their keys) into other
    shards of their space and forget the old shards, inside the caller's transaction; returns the old
    shard files to unlink once it commits. gc uses it to drop dead rows, repair to leave damage behind."""
    index = cache.index
    spaces = {s.id: s for s in index.spaces()}
    by_id = {s.id: s for s in index.shards()}
    for shard_id in shard_ids:
        index.close_shard(shard_id)  # so the copies below go to another shard
    gone = []
    for shard_id in shard_ids:
        space = spaces[by_id[shard_id].space]
        path = cache.shard_path(space.digest, shard_id)
        live = index.rows_of_shard(shard_id)
        width = space.row_bytes
        if live:
            rows = memoryview(shardfile.read_rows(path, 0, live[-1][1] + 1, width))
            raw = b"".join(rows[row * width:(row + 1) * width] for _key, row in live)
            placed = ShardWriter(cache.root, index, space, cache.max_shard_bytes).append(raw, [k for k, _ in live])
            index.move_rows(space.id, [(key, s, r) for (key, _), (s, r) in zip(live, placed)])
        index.delete_shard(shard_id)
        gone.append(shardfile.shard_relpath(space.digest, shard_id))
    return gone


def unlink_shard_files(cache: "FeatureCache", relpaths: list[str]) -> None:
    """Remove shards (and their key files) the index no longer names, once that has committed."""
    for relpath in relpaths:
        (cache.root / relpath).unlink(missing_ok=True)
        (cache.root / relpath).with_suffix(".keys").unlink(missing_ok=True)
    cache.maps.forget()


def _remove_orphans_and_tails(cache: "FeatureCache") -> int:
    """Under the writer lock: unlink shard and key files the index does not name, cut uncommitted tails,
    remove the folders (and `space.json`) of spaces the index no longer has."""
    ends = _committed_ends(cache.index)
    orphans = shardfile.orphan_files(cache.root, set(ends))
    for relpath in orphans:
        (cache.root / relpath).unlink(missing_ok=True)
    for relpath, end in ends.items():
        path = cache.root / relpath
        if path.exists() and path.stat().st_size > end:
            os.truncate(path, end)
    known = {cache.root / shardfile.space_relfolder(s.digest) for s in cache.index.spaces()}
    for folder in (cache.root / "shards").glob("*"):
        if folder.is_dir() and folder not in known:
            (folder / shardfile.SPACE_FILE).unlink(missing_ok=True)
            if not any(folder.iterdir()):
                folder.rmdir()
    return len(orphans)


def _disk_bytes(cache: "FeatureCache") -> int:
    shards_dir = cache.root / "shards"
    files = list(shards_dir.glob("*/*.shard")) + list(shards_dir.glob("*/*.keys")) if shards_dir.is_dir() else []
    return sum(p.stat().st_size for p in files)


def _report(plan: _Plan, digests: dict[int, str], *, dry_run: bool, freed: int, orphans: int) -> GcReport:
    return GcReport(dry_run=dry_run, rows_dropped=sum(len(k) for k in plan.dead.values()),
                    spaces_dropped=[digests[s] for s in plan.empty_spaces], shards_removed=len(plan.remove),
                    shards_rewritten=len(plan.rewrite), orphan_files=orphans, bytes_freed=freed,
                    spaces_kept_for_writers=plan.kept)
