"""`te cache verify`: recompute every checksum and cross-check the index against the shard files.

It only reads. A problem is named by shard file and rows, so the user knows what is lost; nothing is
repaired here: `te cache repair` acts on the `Damage` a report carries (drops the index entries of
damaged rows, which `te extract` then re-extracts). The index is read in one read transaction per pass;
shards are append-only, so the committed prefix seen in that snapshot stays valid while writers go on
appending. A gc or repair that commits meanwhile can unlink or replace files the snapshot names: what
looks wrong in a file is re-checked against a fresh read of the index and, when the index changed
there, is a concurrent change (the pass is run again), never damage (`verify_cache`).

Besides sqlite's own check and the per-block CRC32s, the key file beside each shard (`shards.py`) lets
verify prove each row individually: its slot's CRC32 covers the row's bytes and its key, so a flipped
byte is pinned to its row, and the index's key for each row must be the key the row was written for
(two keys swapped in the index are caught). Each space's config must hash to its id, and every data-set
record must have a row in some space. A key slot is judged by its own CRC32 before the key it holds
is used to judge the index: a good row (its block checksum holds) with a damaged slot is slot damage
and costs no row. Shards written before te kept key files are noted as unverifiable
row by row (their blocks are still checked).
"""

from __future__ import annotations

import hashlib
import os
import zlib
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Iterable

from transfer_engine.cache import artifacts
from transfer_engine.cache import shards as shardfile
from transfer_engine.core.paths import display_path
from transfer_engine.cache.space import config_digest
from transfer_engine.cache.writer import has_key_file
from transfer_engine.errors import CorruptCacheError

if TYPE_CHECKING:
    from transfer_engine.cache.index import ShardRow, SpaceRow
    from transfer_engine.cache.store import FeatureCache


@dataclass
class Problem:
    """One thing wrong. `shard` is the file relative to the cache (None for the index itself);
    `rows` the first and last affected row of that shard, when known."""

    shard: str | None
    message: str
    rows: tuple[int, int] | None = None

    def __str__(self) -> str:
        where = self.shard or "index.sqlite"
        if self.rows is not None:
            where += f" rows {self.rows[0]}-{self.rows[1]}"
        return f"{where}: {self.message}"


@dataclass
class Damage:
    """What `te cache repair` acts on, gathered with the problems (not part of the printed report).

    Attributes:
        rows: shard id -> row numbers whose bytes are damaged or lost (their index entries are dropped);
            a shard listed with no rows has only index-side damage (checksums, key slots): its rows are
            all good and it is rewritten as it is.
        shards: shards unusable as a whole (a missing file, a space the index lost).
        entries: (space id, key) index entries that point at a row written for another key.
        spaces: space ids whose stored config does not hash to their id.
        space_files: space ids whose `space.json` is missing or wrong (rewritten from the index).
        datasets: names of data sets whose records no longer hash as stored (te extract stores them anew).
        artifacts: names of artifacts whose file is missing or no longer hashes as stored (repair drops the
            name, so te extract exports the artifact again).
    """

    rows: dict[int, set[int]] = field(default_factory=dict)
    shards: set[int] = field(default_factory=set)
    entries: set[tuple[int, str]] = field(default_factory=set)
    spaces: set[int] = field(default_factory=set)
    space_files: set[int] = field(default_factory=set)
    datasets: set[str] = field(default_factory=set)
    artifacts: set[str] = field(default_factory=set)

    def drop_rows(self, shard_id: int, rows: Iterable[int]) -> None:
        self.rows.setdefault(shard_id, set()).update(rows)

    def __bool__(self) -> bool:
        return bool(self.rows or self.shards or self.entries or self.spaces or self.space_files or self.datasets
                    or self.artifacts)


@dataclass
class VerifyReport:
    """The outcome of `verify_cache`: `ok` when there are no problems (notes are harmless). `changed`: the
    cache kept changing under verify (a concurrent gc or repair), so part of it was not checked; not
    damage, and not ok either: run verify again."""

    cache: str
    shards: int = 0
    rows: int = 0
    bytes_checked: int = 0
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    damage: Damage = field(default_factory=Damage)
    changed: bool = False

    @property
    def ok(self) -> bool:
        return not self.problems and not self.changed

    def to_dict(self) -> dict[str, Any]:
        return {"cache": self.cache, "ok": self.ok, "changed": self.changed, "shards": self.shards, "rows": self.rows,
                "bytes_checked": self.bytes_checked,
                "problems": [{**asdict(p), "rows": list(p.rows) if p.rows else None, "text": str(p)}
                             for p in self.problems],
                "notes": self.notes}


ATTEMPTS = 3  # verify passes before a cache that keeps changing under verify is reported as such

CHANGED = "the cache changed while verifying (a te cache gc or extract ran)"


def verify_cache(cache: "FeatureCache", attempts: int = ATTEMPTS) -> VerifyReport:
    """Check a whole cache: sqlite's own check, the index's row references, each space's config, each
    shard's header, length, block CRC32s, key file (every row's bytes and key) and SHA-256 (full
    shards), and that every data-set record has a row.

    The index is read in one read transaction for the whole pass, so every check sees one state of it.
    The files are not in that snapshot: a `te cache gc` (or repair) that commits meanwhile may unlink or
    replace a shard or space folder the snapshot still names. So what looks wrong in a shard or a
    `space.json` is checked again in a fresh transaction once the pass is over: when the index no longer
    says what the snapshot said about it (the shard is gone, or its committed rows or checksums are no
    longer the snapshot's; the space is gone), it is a concurrent change, not damage, and the pass is run
    again (up to `attempts` passes; `VerifyReport.changed` when the cache kept changing). Appends are not
    such a change: they only add rows past the snapshot's committed count, which is all that is read.

    Args:
        cache: an open cache.
        attempts: passes at most while the cache changes under verify.

    Returns:
        A `VerifyReport`; nothing is changed on disk.
    """
    passes = max(1, attempts)
    for attempt in range(passes):
        report = _verify_pass(cache)
        if not report.changed:
            if attempt:
                report.notes.append(f"{CHANGED} {attempt} time(s); checked again, as it is now")
            break
    return report


def _verify_pass(cache: "FeatureCache") -> VerifyReport:
    """One pass of `verify_cache` (see there); `changed` when a concurrent change was seen."""
    report = VerifyReport(str(cache.root))
    index = cache.index
    # ((kind, what the snapshot said, its blocks), the problems found in its files)
    suspects: list[tuple[tuple[str, Any, Any], VerifyReport]] = []
    with index.snapshot():
        check = index.integrity_check()
        spaces = {s.id: s for s in index.spaces()}
        all_shards = index.shards()
        report.rows = sum(index.count_rows(s) for s in spaces)
        report.problems += [Problem(None, p) for p in index.row_problems()]
        names = index.dataset_names()
        missing_rows = {name: index.records_without_row(name) for name in names}
        digests = {name: index.dataset_sha256(name) for name in sorted(set(names) | set(index.digested_dataset_names()))}
        keyless = [s.id for s in all_shards if not has_key_file(index, s.id)]
        named_artifacts = artifacts.records(cache)
        _after_index_read()
        if check != ["ok"]:
            report.problems.insert(0, Problem(None, "sqlite integrity check failed: " + "; ".join(check[:3])))
        for space in spaces.values():
            found = VerifyReport(report.cache)
            _verify_space(cache, space, found)
            _keep_or_suspect(report, found, ("space", space, None), suspects)
        expected = set()
        for shard in all_shards:
            space = spaces.get(shard.space)
            relpath = shardfile.shard_relpath(space.digest if space else "unknown", shard.id)
            expected.add(relpath)
            if space is None:
                report.problems.append(Problem(relpath, f"belongs to space {shard.space}, which the index does not have"))
                report.damage.shards.add(shard.id)
                continue
            report.shards += 1
            blocks = index.blocks(shard.id)
            found = VerifyReport(report.cache)
            _verify_shard(cache, space, shard, relpath, blocks, found, keyed=shard.id not in keyless)
            _keep_or_suspect(report, found, ("shard", shard, blocks), suspects)
        orphans = shardfile.orphan_files(cache.root, expected)
    _recheck(cache, suspects, orphans, report)
    if keyless:
        report.notes.append(f"{len(keyless)} shards were written before te kept key files: their rows are checked "
                            "by block, but which key each row holds cannot be verified")
    for name, (count, paths) in missing_rows.items():
        if count:
            report.problems.append(Problem(None, f"data set {name!r}: {count} records name keys that have no row in "
                                                 f"any space (e.g. {', '.join(display_path(p) for p in paths)}); `te extract "
                                                 f"--name {name}` on its data extracts them again"))
    _verify_dataset_digests(digests, report)
    for orphan in orphans:
        report.notes.append(f"{orphan}: not in the index (left by an interrupted writer; te cache gc removes it)")
    _verify_artifacts(cache, named_artifacts, report)
    return report


def _after_index_read() -> None:
    """Called once a pass has read the index and before it reads any file (tests force a gc here)."""


def _keep_or_suspect(report: VerifyReport, found: VerifyReport, what: Any, suspects: list) -> None:
    """Fold what one shard's or space's files showed into `report`; problems wait for `_recheck`."""
    report.bytes_checked += found.bytes_checked
    report.notes += found.notes
    if found.problems:
        suspects.append((what, found))


def _recheck(cache: "FeatureCache", suspects: list, orphans: list[str], report: VerifyReport) -> None:
    """After the pass's snapshot: a shard or space whose files looked wrong is damaged only if a fresh read
    of the index still says what the snapshot said about it; otherwise a gc or repair changed it
    meanwhile (`report.changed`) and what its files showed is not damage. Shard files the snapshot did
    not name but the index names now (written by that gc) are not orphans."""
    if not suspects and not orphans:
        return
    index = cache.index
    with index.snapshot():
        spaces = {s.id: s for s in index.spaces()}
        shards = {s.id: s for s in index.shards()}
        blocks = {row.id: index.blocks(row.id) for (kind, row, _), _found in suspects
                  if kind == "shard" and row.id in shards}
        named_now = {rel(spaces[s.space].digest, s.id) for s in shards.values() if s.space in spaces
                     for rel in (shardfile.shard_relpath, shardfile.keys_relpath)}
    orphans[:] = [o for o in orphans if o not in named_now]
    for (kind, row, then), found in suspects:
        if kind == "shard":
            same = _same_shard(row, then, shards.get(row.id), blocks.get(row.id))
        else:
            same = spaces.get(row.id) == row
        if not same:
            report.changed = True
            continue
        report.problems += found.problems
        _fold_damage(report.damage, found.damage)


def _same_shard(then: "ShardRow", then_blocks: list, now: "ShardRow | None", now_blocks: list | None) -> bool:
    """Whether the index still says of a shard what the snapshot said (rows appended since excepted)."""
    if now is None or now.space != then.space or now.rows < then.rows:
        return False
    if now.rows == then.rows:
        return now.sealed_sha256 == then.sealed_sha256 and now_blocks == then_blocks
    # appended to: every block the snapshot had complete is as it was (the last one grew)
    return then.sealed_sha256 is None and (now_blocks or [])[:max(0, len(then_blocks) - 1)] == then_blocks[:-1]


def _fold_damage(into: Damage, more: Damage) -> None:
    for shard_id, rows in more.rows.items():
        into.drop_rows(shard_id, rows)
    into.shards |= more.shards
    into.entries |= more.entries
    into.spaces |= more.spaces
    into.space_files |= more.space_files
    into.datasets |= more.datasets
    into.artifacts |= more.artifacts


def _verify_dataset_digests(digests: dict[str, tuple[str | None, str | None]], report: VerifyReport) -> None:
    """Each data set must hash to the SHA-256 recorded when it was stored (a changed byte of a path, label,
    split, key or class name is caught); older data sets without one are a note."""
    unverified = []
    for name, (recorded, now) in digests.items():
        if now is None:
            report.problems.append(Problem(None, f"data set {name!r} was stored but the index no longer has it "
                                                 "(its name changed?); run te extract for it again"))
        elif recorded is None:
            unverified.append(name)
        elif recorded != now:
            report.damage.datasets.add(name)
            report.problems.append(Problem(None, f"data set {name!r}: its records (paths, keys, labels, splits) or "
                                                 "class names changed since it was stored; run te extract for it "
                                                 "again to store it anew"))
    if unverified:
        report.notes.append(f"data sets {', '.join(map(repr, unverified))} were stored by an older te: their records "
                            "cannot be checked")


def _verify_space(cache: "FeatureCache", space: "SpaceRow", report: VerifyReport) -> None:
    """The config stored for a space must hash to its id, and its folder's `space.json` must say the same."""
    where = f"space {space.digest[:12]}"
    if config_digest(space.config) != space.digest:
        report.problems.append(Problem(None, f"{where}: its stored config does not hash to its id (the config was "
                                             "edited or damaged)"))
        report.damage.spaces.add(space.id)
    folder = cache.root / shardfile.space_relfolder(space.digest)
    if not folder.is_dir():
        return  # no shard yet: written with the first one
    saved = shardfile.read_space_file(folder)
    if saved != {"id": space.digest, "config": space.config}:
        what = "missing" if saved is None else "different from the index's config"
        report.problems.append(Problem(f"{shardfile.space_relfolder(space.digest)}/{shardfile.SPACE_FILE}", f"{what} ({where})"))
        report.damage.space_files.add(space.id)


def _verify_artifacts(cache: "FeatureCache", named: dict[str, dict], report: VerifyReport) -> None:
    """Each named artifact's size and SHA-256 (`named`: as the pass's snapshot lists them; a name replaced
    meanwhile is checked as the index has it now); files no name points at are notes (gc removes them)."""
    for name, record in sorted(named.items()):
        problem = artifacts.check(cache.root / record["file"], record)
        if problem:
            now = artifacts.records(cache).get(name)
            if now != record:  # replaced or dropped by a te extract or repair meanwhile
                if now is None:
                    continue
                record, problem = now, artifacts.check(cache.root / now["file"], now)
        report.bytes_checked += record["bytes"] if not problem else 0
        if problem:
            report.problems.append(Problem(record["file"], f"artifact {name}: {problem} (`te cache repair` drops "
                                                           "its name and file; te exports it again when it next "
                                                           "needs it)"))
            report.damage.artifacts.add(name)
    for path in artifacts.unreferenced(cache):
        report.notes.append(f"{artifacts.FOLDER}/{path.name}: no artifact name points at it (te cache gc removes it)")


def _verify_shard(cache: "FeatureCache", space: "SpaceRow", shard: "ShardRow", relpath: str,
                  blocks: list[tuple[int, int, int]], report: VerifyReport, keyed: bool) -> None:
    try:
        _verify_shard_files(cache, space, shard, relpath, blocks, report, keyed)
    except FileNotFoundError:  # unlinked while read (the problems so far stay with it: all are rechecked)
        report.problems.append(Problem(relpath, f"missing (gone while read); the index commits {shard.rows} rows "
                                                "to it", (0, shard.rows - 1) if shard.rows else None))
        report.damage.shards.add(shard.id)


def _verify_shard_files(cache: "FeatureCache", space: "SpaceRow", shard: "ShardRow", relpath: str,
                        blocks: list[tuple[int, int, int]], report: VerifyReport, keyed: bool) -> None:
    path = cache.root / relpath
    width = space.row_bytes
    try:
        size = os.stat(path).st_size
        with open(path, "rb") as f:
            header = shardfile.ShardHeader.unpack(f.read(shardfile.HEADER_BYTES), relpath)
    except FileNotFoundError:
        report.problems.append(Problem(relpath, f"missing; the index commits {shard.rows} rows to it",
                                       (0, shard.rows - 1) if shard.rows else None))
        report.damage.shards.add(shard.id)
        return
    except CorruptCacheError as exc:
        header = None
        report.problems.append(Problem(relpath, f"header unreadable: {exc}"))
    wanted = shardfile.ShardHeader(dim=space.dim, row_bytes=width, stored=space.stored, space_id=space.digest)
    if header is not None and header != wanted:
        report.problems.append(Problem(relpath, f"header says dim {header.dim}, {header.stored}, {header.row_bytes} "
                                                f"bytes/row, space {header.space_id[:12]}, version {header.version}; "
                                                f"the index says dim {space.dim}, {space.stored}, {width} bytes/row, "
                                                f"space {space.digest[:12]}, version {wanted.version}"))
    if header != wanted:  # the index knows what it says: repair rewrites the shard (its good rows checked below)
        report.damage.drop_rows(shard.id, ())
    committed_end = shardfile.HEADER_BYTES + shard.rows * width
    whole_rows = min(shard.rows, max(0, (size - shardfile.HEADER_BYTES) // width))
    if size < committed_end:
        report.problems.append(Problem(relpath, f"file ends after {whole_rows} whole rows; the index commits "
                                                f"{shard.rows}", (whole_rows, shard.rows - 1)))
        report.damage.drop_rows(shard.id, range(whole_rows, shard.rows))
    elif size > committed_end:
        report.notes.append(f"{relpath}: {size - committed_end} bytes after row {shard.rows - 1} are uncommitted "
                            "(an interrupted write; the next append drops them)")
    slots = _key_slots(path, relpath, shard, report) if keyed else None
    bad_slots: set[int] = set()
    bad_rows = _check_rows(path, relpath, shard, width, blocks, slots, report, bad_slots)
    if slots is not None:
        # read per shard, in the pass's snapshot (memory stays one shard's keys)
        bound = [(key, row) for key, row in cache.index.rows_of_shard(shard.id) if row < shard.rows]
        _check_binding(relpath, space, shard, bound, slots, bad_rows | bad_slots, report)


def _key_slots(path, relpath: str, shard: "ShardRow", report: VerifyReport) -> list | None:
    """The key slots of a shard's committed rows, or None (a problem) when its key file is lost or not one;
    the shard's rows are then rewritten with fresh slots by repair (their bytes are checked by block)."""
    keys_rel = relpath[: -len(".shard")] + ".keys"
    try:
        slots = shardfile.read_key_slots(shardfile.keys_path(path), shard.rows)
    except FileNotFoundError:
        report.problems.append(Problem(keys_rel, f"missing; shard {shard.id}'s rows cannot be bound to their keys"))
        report.damage.drop_rows(shard.id, ())
        return None
    except CorruptCacheError as exc:
        report.problems.append(Problem(keys_rel, str(exc)))
        report.damage.drop_rows(shard.id, ())
        return None
    if len(slots) < shard.rows:
        report.problems.append(Problem(keys_rel, f"ends after {len(slots)} rows; the index commits {shard.rows}",
                                       (len(slots), shard.rows - 1)))
        report.damage.drop_rows(shard.id, range(len(slots), shard.rows))
    return slots


def _check_rows(path, relpath: str, shard: "ShardRow", width: int, blocks: list[tuple[int, int, int]],
                slots: list | None, report: VerifyReport, bad_slots: set[int]) -> set[int]:
    """Each block's CRC32 (and each row's key-slot CRC32 when the key file is there) and the sealed
    SHA-256; returns the rows whose bytes are damaged, and adds to `bad_slots` the good rows whose key
    slot fails its own CRC32. With slots, a damaged row is pinned exactly and a mismatch only in the
    index's checksums (or only in a slot) costs no row."""
    want_blocks = [(b, min(shardfile.BLOCK_ROWS, shard.rows - b * shardfile.BLOCK_ROWS))
                   for b in range(-(-shard.rows // shardfile.BLOCK_ROWS))]
    table_ok = [(b, n) for b, n, _ in blocks] == want_blocks
    if not table_ok:
        report.problems.append(Problem(relpath, f"checksum table lists {len(blocks)} blocks that do not cover its "
                                                f"{shard.rows} committed rows"))
        report.damage.drop_rows(shard.id, ())
        if slots is None:
            return set()
    crcs = {b: crc for b, _n, crc in blocks} if table_ok else {}
    bad: set[int] = set()
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        for block, nrows in want_blocks:
            first, last = shardfile.block_rows(block, nrows)
            f.seek(shardfile.HEADER_BYTES + first * width)
            data = f.read(nrows * width)
            report.bytes_checked += len(data)
            sha.update(data)
            if len(data) < nrows * width:
                break  # already reported as a short file
            block_ok = crcs.get(block) == zlib.crc32(data)
            bad |= _check_block(relpath, shard, block, first, data, width, slots, block_ok, table_ok, report,
                                bad_slots)
    if shard.sealed_sha256 is not None and sha.hexdigest() != shard.sealed_sha256 and not bad and table_ok:
        report.problems.append(Problem(relpath, "SHA-256 of the sealed shard differs from the one recorded when it "
                                                "was filled", (0, shard.rows - 1)))
        report.damage.drop_rows(shard.id, () if slots is not None else range(shard.rows))
    return bad


def _check_block(relpath: str, shard: "ShardRow", block: int, first: int, data: bytes, width: int,
                 slots: list | None, block_ok: bool, table_ok: bool, report: VerifyReport,
                 bad_slots: set[int]) -> set[int]:
    """The rows of one block that are damaged (reported), by key slot when there are slots. A slot that
    fails its CRC32 while the block's checksum proves the rows is slot damage: its row is good, and the
    key it holds proves nothing (`bad_slots`: not used to judge the index's binding; repair writes the
    slot anew from the index's key)."""
    nrows = len(data) // width
    if slots is None:
        if block_ok:
            return set()
        report.problems.append(Problem(relpath, f"checksum mismatch in block {block}: a byte of these rows "
                                                "changed on disk", (first, first + nrows - 1)))
        report.damage.drop_rows(shard.id, range(first, first + nrows))
        return set(range(first, first + nrows))
    bad = {first + i for i in range(nrows)
           if first + i < len(slots) and not slots[first + i].matches(data[i * width:(i + 1) * width])}
    for lo, hi in row_runs(sorted(bad)):
        what = f"checksum mismatch in block {block}: a byte of these rows (or of their key slots) changed on disk" \
            if not block_ok else ("their key slots changed on disk (the rows' bytes match their block checksum; "
                                  "`te cache repair` writes the slots anew and keeps the rows)")
        report.problems.append(Problem(relpath, what, (lo, hi)))
    if block_ok:
        if bad:
            report.damage.drop_rows(shard.id, ())  # rows good, slots not: rewritten with fresh slots
            bad_slots |= bad
        return set()
    if not bad and table_ok:
        report.problems.append(Problem(relpath, f"the index's checksum of block {block} is wrong (each row matches "
                                                "its key file)"))
    report.damage.drop_rows(shard.id, bad)
    return bad


def _check_binding(relpath: str, space: "SpaceRow", shard: "ShardRow", bound: list[tuple[str, int]],
                   slots: list, bad_rows: set[int], report: VerifyReport) -> None:
    """Each index entry's key must be the key its row was written for (rows in `bad_rows` are skipped:
    damaged rows, and good rows whose slot fails its own CRC32, so the key it holds is not evidence)."""
    wrong = [(key, row) for key, row in bound
             if row < len(slots) and row not in bad_rows and not slots[row].holds(key)]
    for key, row in wrong[:5]:
        written = slots[row].key
        report.problems.append(Problem(relpath, f"the index binds key {key[:16]} to this row, which was written for "
                                                f"key {written[:16] if written else '(a long key)'}", (row, row)))
    if len(wrong) > 5:
        report.problems.append(Problem(relpath, f"{len(wrong) - 5} more index entries bind keys to rows written "
                                                "for other keys"))
    report.damage.entries.update((space.id, key) for key, _ in wrong)


def row_runs(rows: list[int]) -> list[tuple[int, int]]:
    """Sorted row numbers as (first, last) runs of consecutive rows."""
    out: list[tuple[int, int]] = []
    for r in rows:
        if out and out[-1][1] == r - 1:
            out[-1] = (out[-1][0], r)
        else:
            out.append((r, r))
    return out
