"""`te cache gc`: drop the rows no data set references, and the spaces left without rows.

A row is live while any data set has a record with its key (in any space: data sets name images, not
backbones). Shards whose rows all died are deleted; shards with some dead rows are rewritten: their live
rows are copied (raw bytes, no re-encoding) through the ordinary append path, the index is re-pointed in
one transaction, and only then are the old files unlinked. A crash midway leaves either the old state or
the new one, plus at worst orphan files that the next gc removes. Files of interrupted writers (orphans,
uncommitted tails) are removed too, and artifact files no name points at. Runs under the writer lock;
readers keep reading (a reader that located rows before gc rewrote their shard gets a clear error and
locates again).
"""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from transfer_engine.cache import artifacts
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


def _plan(cache: "FeatureCache") -> _Plan:
    index = cache.index
    spaces = {s.id: s for s in index.spaces()}
    dead_rows = index.unreferenced_rows()
    dead: dict[int, list[str]] = defaultdict(list)
    dead_per_shard: Counter = Counter()
    for space, key, shard, _row in dead_rows:
        dead[space].append(key)
        dead_per_shard[shard] += 1
    remove, rewrite, estimate = [], [], 0
    live_per_space: Counter = Counter()
    referenced = index.rows_per_shard()
    for shard in index.shards():
        space = spaces[shard.space]
        path = cache.shard_path(space.digest, shard.id)
        size = os.stat(path).st_size if path.exists() else 0
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
    empty = [s for s in spaces if live_per_space[s] == 0]
    orphans = shardfile.orphan_files(cache.root, set(_committed_ends(index)))
    estimate += sum(os.stat(cache.root / p).st_size for p in orphans)
    return _Plan(dict(dead), remove, rewrite, empty, orphans, estimate)


def _committed_ends(index: "Index") -> dict[str, int]:
    """{shard file: byte offset where its committed rows end} for every shard the index names."""
    spaces = {s.id: s for s in index.spaces()}
    return {shardfile.shard_relpath(spaces[s.space].digest, s.id):
            shardfile.HEADER_BYTES + s.rows * spaces[s.space].row_bytes for s in index.shards()}


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
            plan = _plan(cache)
            digests = {s.id: s.digest for s in index.spaces()}
            gone = _apply(cache, index, plan)
        for relpath in gone:
            (cache.root / relpath).unlink(missing_ok=True)
        cache.maps.forget()
        orphans = _remove_orphans_and_tails(cache)
        stale, stale_bytes = artifacts.remove_unreferenced(cache)
    report = _report(plan, digests, dry_run=False, freed=max(0, before - _disk_bytes(cache)) + stale_bytes,
                     orphans=orphans)
    report.artifacts_removed = stale
    return report


def _apply(cache: "FeatureCache", index: "Index", plan: _Plan) -> list[str]:
    """Change the index (inside the caller's transaction); return shard files to unlink after commit."""
    spaces = {s.id: s for s in index.spaces()}
    for space_id, keys in plan.dead.items():
        index.delete_rows(space_id, keys)
    by_id = {s.id: s for s in index.shards()}
    for shard_id in plan.rewrite:
        index.close_shard(shard_id)  # so the copies below go to another shard
    gone = []
    for shard_id in plan.rewrite:
        space = spaces[by_id[shard_id].space]
        path = cache.shard_path(space.digest, shard_id)
        live = index.rows_of_shard(shard_id)
        width = space.row_bytes
        rows = memoryview(shardfile.read_rows(path, 0, by_id[shard_id].rows, width))
        raw = b"".join(rows[row * width:(row + 1) * width] for _key, row in live)
        placed = ShardWriter(cache.root, index, space, cache.max_shard_bytes).append(raw)
        index.move_rows(space.id, [(key, s, r) for (key, _), (s, r) in zip(live, placed)])
    for shard_id in plan.remove + plan.rewrite:
        space = spaces[by_id[shard_id].space]
        index.delete_shard(shard_id)
        gone.append(shardfile.shard_relpath(space.digest, shard_id))
    for space_id in plan.empty_spaces:
        index.delete_space(space_id)
    return gone


def _remove_orphans_and_tails(cache: "FeatureCache") -> int:
    """Under the writer lock: unlink shard files the index does not name, cut uncommitted tails."""
    ends = _committed_ends(cache.index)
    orphans = shardfile.orphan_files(cache.root, set(ends))
    for relpath in orphans:
        (cache.root / relpath).unlink(missing_ok=True)
    for relpath, end in ends.items():
        path = cache.root / relpath
        if path.exists() and path.stat().st_size > end:
            os.truncate(path, end)
    for folder in (cache.root / "shards").glob("*"):
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
    return len(orphans)


def _disk_bytes(cache: "FeatureCache") -> int:
    shards_dir = cache.root / "shards"
    files = list(shards_dir.glob("*/*.shard")) if shards_dir.is_dir() else []
    return sum(p.stat().st_size for p in files)


def _report(plan: _Plan, digests: dict[int, str], *, dry_run: bool, freed: int, orphans: int) -> GcReport:
    return GcReport(dry_run=dry_run, rows_dropped=sum(len(k) for k in plan.dead.values()),
                    spaces_dropped=[digests[s] for s in plan.empty_spaces], shards_removed=len(plan.remove),
                    shards_rewritten=len(plan.rewrite), orphan_files=orphans, bytes_freed=freed)
