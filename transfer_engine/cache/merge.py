"""`te cache merge DEST SRC...`: copy into one cache what caches built apart hold and it lacks.

Content addressing makes this safe by construction: a space id names how features were computed and a
row's key names the image bytes, so a row of space S under key K means the same thing in every cache, and
a row DEST already holds is never copied again. What is copied, in this order:

  1. rows: for each space of a source, the keys DEST's space lacks, read shard by shard and verified
     while read (the block CRC32s of the source's index; the key file proves each row was written for
     its key). A damaged row is reported and skipped, never copied. Rows go in through
     `FeatureCache.append_encoded`, the same commit order as `te extract`'s appends, a batch per
     transaction: a kill -9 at any instant leaves DEST consistent, and running the merge again copies
     the rest (nothing is duplicated).
  2. provenance of each space DEST did not know how to rebuild, and artifacts DEST lacks (re-hashed).
  3. data sets, after their rows: a name DEST lacks is copied; the same name with the same records is
     left as it is; other records under a taken name are an error unless `rename` or `replace` says what
     to do. Conflicts are found before anything is written (`check_merge`; the CLI runs it before it
     creates a missing DEST), so a refused merge changes nothing. A data set stored under a name DEST
     already used (renamed or replacing) that names a row skipped as damaged is not copied: DEST keeps
     verifying.

It needs no torch. A source is read without its writer lock; merging from a cache a live writer holds
a lease on (a running `te extract`) is refused, because its data sets are not written yet.
"""

from __future__ import annotations

import os
import shutil
import socket
import time
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

from transfer_engine.cache import artifacts, leases
from transfer_engine.cache import shards as shardfile
from transfer_engine.cache.space import FeatureSpace
from transfer_engine.cache.writer import has_key_file
from transfer_engine.core.progress import Progress, say_of
from transfer_engine.errors import CorruptCacheError, UsageError

if TYPE_CHECKING:
    from transfer_engine.cache.index import ShardRow, SpaceRow
    from transfer_engine.cache.store import FeatureCache

CONFLICTS = ("error", "rename", "replace")
BATCH_BYTES = 32 << 20  # rows committed per transaction (and read from a source shard at once)


@dataclass
class SpaceMerge:
    """One space of one source: what was copied, found in DEST already, or skipped as damaged."""

    source: str
    space: str
    backbone: str
    copied: int = 0
    reused: int = 0
    skipped: int = 0
    bytes_copied: int = 0
    problems: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.skipped_keys: set[str] = set()  # keys of the rows skipped as damaged (not in the report)


@dataclass
class DatasetMerge:
    source: str
    name: str
    action: str  # "copied", "same" (DEST has these records), "renamed to NAME", "replaced", "not copied: why"
    records: int


@dataclass
class MergeReport:
    """What `te cache merge --json` prints."""

    dest: str
    sources: list[str]
    dry_run: bool
    spaces: list[SpaceMerge] = field(default_factory=list)
    datasets: list[DatasetMerge] = field(default_factory=list)
    artifacts_copied: int = 0
    seconds: float = 0.0

    @property
    def copied(self) -> int:
        return sum(s.copied for s in self.spaces)

    @property
    def skipped(self) -> int:
        return sum(s.skipped for s in self.spaces)

    @property
    def bytes_copied(self) -> int:
        return sum(s.bytes_copied for s in self.spaces)

    def to_dict(self) -> dict:
        out = asdict(self)
        out.update(rows_copied=self.copied, rows_reused=sum(s.reused for s in self.spaces),
                   rows_skipped=self.skipped, bytes_copied=self.bytes_copied)
        return out


def merge_caches(dest: "FeatureCache", sources: Sequence["FeatureCache"], *, on_conflict: str = "error",
                 dry_run: bool = False, progress: Progress = None,
                 require_idle: bool = True) -> MergeReport:
    """Merge `sources` into `dest` (see the module docstring); returns the report.

    Args:
        dest: the cache that receives (opened by the caller, created when missing).
        sources: the caches to copy from (opened with create=False); each is only read.
        on_conflict: a source data set whose name DEST uses for other records: "error" (refuse before
            writing anything), "rename" (store it as NAME-2, NAME-3, ...) or "replace" (DEST's is replaced).
        dry_run: read and verify everything, count what would be copied, write nothing.
        progress: a line per space merged: True on stderr, False or None none, a function is handed each
            (`core.progress`).
        require_idle: refuse a source that a live writer holds a lease on (False: the caller knows every
            writer of the sources has finished, e.g. te extract's nodes after their barrier; a lease left
            by a killed writer on another host would otherwise count as live for a day).

    Raises:
        UsageError: a source is DEST itself or appears twice, a source is being written, a name conflict
            under on_conflict="error", an unknown on_conflict.
    """
    start = time.perf_counter()
    say = say_of(progress)
    # before any write: a refused merge changes nothing
    plan = check_merge(dest.root, sources, on_conflict, _taken(dest), require_idle=require_idle)
    report = MergeReport(str(dest.root), [str(s.root) for s in sources], dry_run)
    for src in sources:
        for space in src.index.spaces():
            done = _merge_space(dest, src, space, dry_run)
            report.spaces.append(done)
            say(f"{src.root}: space {space.digest[:12]} ({done.backbone}): {done.copied} rows copied, "
                f"{done.reused} already in {dest.root.name}, {done.skipped} damaged (skipped)")
        if not dry_run:
            _copy_provenance(dest, src)
            report.artifacts_copied += _copy_artifacts(dest, src)
    skipped = {key for s in report.spaces for key in s.skipped_keys}
    for src, name, target, action in plan:
        records = src.dataset(name)
        if action != "same":
            # Under a name DEST did not have, a copy naming a skipped row is what repair leaves (verify names
            # the images, `te extract --name NAME` extracts them). Renamed or replacing one of DEST's, it
            # would turn a DEST that verified into one that does not, under a name its data was never
            # extracted as: refused instead (DEST keeps verifying).
            lost = 0 if action == "copied" else _keys_without_row(dest, {r.key for r in records.records} & skipped)
            if lost:
                action = (f"not copied: {lost} of its records name rows that were damaged in the source and "
                          f"skipped; repair the source (te cache repair), extract its data again, and merge again")
            elif not dry_run:
                dest.put_dataset(target, records.records, records.class_names)
        report.datasets.append(DatasetMerge(str(src.root), name, action, len(records)))
    report.seconds = round(time.perf_counter() - start, 3)
    return report


def check_merge(dest: str | os.PathLike, sources: Sequence["FeatureCache"], on_conflict: str,
                taken: dict[str, str | None] | None = None,
                require_idle: bool = True) -> list[tuple["FeatureCache", str, str, str]]:
    """Every refusal of a merge, before anything is written (DEST need not exist yet: `taken` holds DEST's
    data sets {name: SHA-256}, none when None); returns the data-set plan of `merge_caches`.

    Raises:
        UsageError: an unknown on_conflict, a source that is DEST or given twice, a source being written
            (with require_idle), a data-set name conflict under on_conflict="error".
        NotACacheError: DEST is a file or a folder that holds something else than a cache.
    """
    if on_conflict not in CONFLICTS:
        raise UsageError(f"on_conflict must be one of {', '.join(CONFLICTS)}, got {on_conflict!r}")
    root = Path(dest).expanduser().absolute()
    if taken is None:
        from transfer_engine.cache.store import MARKER, _refuse_foreign, check_cache_dir

        if root.exists() and (not root.is_dir() or (root / MARKER).exists()):
            check_cache_dir(root)
        _refuse_foreign(root)
    _check_distinct(root, sources)
    for src in sources if require_idle else ():
        _check_not_being_written(src)
    return _plan_datasets(taken or {}, sources, on_conflict)


def _taken(dest: "FeatureCache") -> dict[str, str | None]:
    return {name: dest.index.dataset_sha256(name)[1] for name in dest.datasets()}


def _keys_without_row(dest: "FeatureCache", keys: set[str]) -> int:
    """How many of `keys` DEST has no row for in any space."""
    missing = set(keys)
    for space in dest.index.spaces() if missing else ():
        missing -= set(dest.index.locations(space.id, sorted(missing)))
    return len(missing)


def _check_distinct(dest: Path, sources: Sequence["FeatureCache"]) -> None:
    seen = [dest]
    for src in sources:
        for other in seen:
            if other.exists() and os.path.samefile(src.root, other):
                what = "DEST itself" if other == dest else "given twice"
                raise UsageError(f"cannot merge {src.root} into {dest}: the source is {what}")
        seen.append(src.root)


def _check_not_being_written(src: "FeatureCache") -> None:
    """A source with a live writer lease is refused, unless the lease is this process's own (a program
    that wrote a cache and now merges it has finished writing it)."""
    mine = [lease.token for lease in leases.all_leases(src.index)
            if lease.pid == os.getpid() and lease.host == socket.gethostname()]
    live = leases.live_spaces(src.index, own=mine)
    if live:
        pids = sorted({p for ps in live.values() for p in ps})
        raise UsageError(f"{src.root} is being written (writer pid {', '.join(map(str, pids))} holds a lease on "
                         f"{len(live)} space(s)); merge it once that run has finished")


def _plan_datasets(taken: dict[str, str | None], sources: Sequence["FeatureCache"],
                   on_conflict: str) -> list[tuple["FeatureCache", str, str, str]]:
    """[(source, name, name in DEST, action)] for every source data set, conflicts resolved or refused;
    `taken`: DEST's data sets {name: SHA-256}."""
    taken = dict(taken)
    plan = []
    for src in sources:
        for name in src.datasets():
            digest = src.index.dataset_sha256(name)[1]
            if name not in taken:
                taken[name] = digest
                plan.append((src, name, name, "copied"))
            elif taken[name] == digest:
                plan.append((src, name, name, "same"))
            elif on_conflict == "replace":
                taken[name] = digest
                plan.append((src, name, name, "replaced"))
            elif on_conflict == "rename":
                n = 2
                while f"{name}-{n}" in taken:
                    n += 1
                taken[f"{name}-{n}"] = digest
                plan.append((src, name, f"{name}-{n}", f"renamed to {name}-{n}"))
            else:
                raise UsageError(f"data set {name!r} of {src.root} holds other records than DEST's "
                                 f"{name!r}; nothing was merged (--rename keeps both, --replace keeps the source's)")
    return plan


def _merge_space(dest: "FeatureCache", src: "FeatureCache", space: "SpaceRow", dry_run: bool) -> SpaceMerge:
    """Copy the rows of one source space that DEST lacks, verified, a batch per transaction."""
    done = SpaceMerge(str(src.root), space.digest, str(space.config.get("backbone")))
    existing = dest.index.space(space.digest)
    in_dest = None
    if existing is not None:
        def in_dest(keys: list[str]) -> list[bool]:
            found = dest.index.locations(existing.id, keys)
            return [k in found for k in keys]
    target = None
    for keys, raw, slots in read_space(src, space, done, skip=in_dest):
        if dry_run:
            continue
        if target is None:
            target = dest.space_row(FeatureSpace.from_dict(space.config), space.row_bytes)
        target, added = dest.append_encoded(target, keys, raw, slots)
        _count_stored(done, len(keys), added, space.row_bytes)
    return done


def _count_stored(done: SpaceMerge, offered: int, added: int, row_bytes: int) -> None:
    """Rows `read_space` counted as copied that DEST turned out to hold already (another writer stored
    them meanwhile) count as reused."""
    done.reused += offered - added
    done.copied -= offered - added
    done.bytes_copied -= (offered - added) * row_bytes


def read_space(src: "FeatureCache", space: "SpaceRow", done: SpaceMerge,
               skip: Callable[[list[str]], list[bool]] | None = None):
    """Batches (keys, raw rows, key-file slots or None) of a source space's rows, each proven intact
    (see `_verified_rows`),
    leaving out the keys for which `skip` says True (counted as reused); damaged rows are counted and
    named in `done`, the rows yielded counted as copied. Needs no torch: te extract's nodes use it to
    send their rows to rank 0."""
    with src.index.snapshot():  # one consistent view of the source: its shards are append-only after it
        source_shards = src.index.shards(space.id)
        rows_by_shard = {sh.id: src.index.rows_of_shard(sh.id) for sh in source_shards}
        blocks = {sh.id: {b: (n, crc) for b, n, crc in src.index.blocks(sh.id)} for sh in source_shards}
    for shard in source_shards:
        wanted = rows_by_shard[shard.id]
        if skip is not None and wanted:
            flags = skip([k for k, _ in wanted])
            done.reused += sum(flags)
            wanted = [w for w, have in zip(wanted, flags) if not have]
        if not wanted:
            continue
        for keys, raw, slots in _verified_rows(src, space, shard, wanted, blocks[shard.id], done):
            done.copied += len(keys)
            done.bytes_copied += len(raw)
            yield keys, raw, slots


def _verified_rows(src: "FeatureCache", space: "SpaceRow", shard: "ShardRow", wanted: list[tuple[str, int]],
                   blocks: dict[int, tuple[int, int]], done: SpaceMerge):
    """Batches (keys, raw rows, key-file slots or None) of the rows `wanted` ((key, row), by row) of one
    source shard, each row proven intact and bound to its key.

    With a key file (every shard te writes), a row's slot proves it alone: the slot names the key and its
    CRC32 covers the slot and the row's bytes, so the slot is copied with the row. A row whose slot does
    not check out is copied only when its block's CRC32 (from the source's index) proves its bytes, with
    a fresh slot; shards from before key files are proven by blocks alone (fresh slots). Damaged rows
    are counted and named in `done`, never yielded.
    """
    width = space.row_bytes
    path = src.shard_path(space.digest, shard.id)
    rel = shardfile.shard_relpath(space.digest, shard.id)
    beyond = [row for _, row in wanted if row >= shard.rows]
    if beyond:  # the index names rows the shard does not commit: damage of the source's index
        _skip(done, f"{rel} rows {beyond[0]}-{beyond[-1]}: beyond its {shard.rows} committed rows; not copied",
              [k for k, r in wanted if r >= shard.rows])
        wanted = [(k, r) for k, r in wanted if r < shard.rows]
    slots = _key_slot_bytes(src, shard, path, done)
    slot_bytes = shardfile.SLOT_BYTES
    per_batch = max(shardfile.BLOCK_ROWS, (BATCH_BYTES // width) // shardfile.BLOCK_ROWS * shardfile.BLOCK_ROWS)
    try:
        fh = open(path, "rb")
    except OSError as exc:
        _skip(done, f"{rel}: {exc.strerror or exc}; its {len(wanted)} rows were not copied", [k for k, _ in wanted])
        return
    i = 0
    with fh:
        while i < len(wanted):
            lo = wanted[i][1] // shardfile.BLOCK_ROWS * shardfile.BLOCK_ROWS
            hi = min(lo + per_batch, shard.rows)
            fh.seek(shardfile.HEADER_BYTES + lo * width)
            data = memoryview(fh.read((hi - lo) * width))
            keys: list[str] = []
            out = bytearray()
            out_slots: bytearray | None = bytearray() if slots is not None else None
            good_blocks: dict[int, bool] = {}

            def block_ok(row: int) -> bool:
                block = row // shardfile.BLOCK_ROWS
                if block not in good_blocks:
                    good_blocks[block] = _block_ok(data, lo, block, blocks.get(block), width, shard.rows)
                return good_blocks[block]

            while i < len(wanted) and wanted[i][1] < hi:
                key, row = wanted[i]
                i += 1
                offset = (row - lo) * width
                piece = data[offset:offset + width]
                if len(piece) != width:
                    _skip(done, f"{rel} row {row}: the shard file ends before it; not copied", [key])
                    continue
                if slots is None:  # a shard from before key files: its block proves the bytes
                    if not block_ok(row):
                        _skip(done, f"{rel} row {row}: its block's checksum does not match (no key file to "
                                    "check the row alone); not copied", [key])
                        continue
                else:
                    slot = slots[row * slot_bytes:(row + 1) * slot_bytes]
                    field, length = shardfile.key_field(key)
                    intact = (len(slot) == slot_bytes and  # the slot's CRC covers its key and the row's bytes
                              zlib.crc32(piece, zlib.crc32(slot[:36])) == int.from_bytes(slot[36:], "little"))
                    if intact and (slot[:32] != field or slot[32] != length):
                        _skip(done, f"{rel} row {row}: the index names it for another key than the row was "
                                    "written for; not copied", [key])
                        continue
                    if intact:
                        out_slots += slot
                    elif block_ok(row):  # the bytes are sound, their slot is not: a fresh one goes with them
                        out_slots += shardfile.key_slots([key], piece, width)
                    else:
                        _skip(done, f"{rel} row {row}: its bytes do not match their checksum; not copied", [key])
                        continue
                keys.append(key)
                out += piece
            if keys:
                yield keys, bytes(out), (bytes(out_slots) if out_slots is not None else None)


def _key_slot_bytes(src: "FeatureCache", shard: "ShardRow", path: Path, done: SpaceMerge) -> bytes | None:
    """The slot area of the shard's key file, or None for a shard written before te kept key files; a
    lost or damaged key file is reported and proves nothing (b"": every row then needs its block)."""
    if not has_key_file(src.index, shard.id):
        return None
    try:
        return shardfile.read_key_slot_bytes(shardfile.keys_path(path), shard.rows)
    except (OSError, CorruptCacheError) as exc:
        done.problems.append(f"{shardfile.keys_relpath(done.space, shard.id)}: unreadable ({exc}); "
                             "its rows are copied only where their block checksums hold")
        return b""


def _block_ok(data: memoryview, lo: int, block: int, recorded: tuple[int, int] | None, width: int,
              committed: int) -> bool:
    if recorded is None:
        return False
    rows, crc = recorded
    start = (block * shardfile.BLOCK_ROWS - lo) * width
    count = min(rows, committed - block * shardfile.BLOCK_ROWS)
    piece = data[start:start + count * width]
    return len(piece) == count * width == rows * width and zlib.crc32(piece) == crc


def _skip(done: SpaceMerge, problem: str, keys: list[str]) -> None:
    done.skipped += len(keys)
    done.skipped_keys.update(keys)
    if len(done.problems) < 20:
        done.problems.append(problem)
    elif len(done.problems) == 20:
        done.problems.append("... (more damaged rows; `te cache verify` on the source lists them all)")


def _copy_provenance(dest: "FeatureCache", src: "FeatureCache") -> None:
    for space in src.index.spaces():
        if dest.index.space(space.digest) is None or dest.provenance(space.digest) is not None:
            continue
        found = src.provenance(space.digest)
        if found is not None:
            dest.set_provenance(space.digest, found)


def _copy_artifacts(dest: "FeatureCache", src: "FeatureCache") -> int:
    """Copy the artifacts DEST has no file for under that name; a source artifact whose bytes do not hash
    as recorded is not copied (`te cache verify` of the source names it)."""
    copied = 0
    theirs = artifacts.records(src)
    for name, record in sorted(theirs.items()):
        if dest.artifact(name)[0] is not None:
            continue
        path, _ = src.artifact(name)
        if path is None:
            continue
        suffix = path.name[len(record["sha256"]):]
        dest.put_artifact(name, lambda tmp, path=path: shutil.copyfile(path, tmp), suffix)
        copied += 1
    return copied
