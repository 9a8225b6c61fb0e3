"""`te cache verify`: recompute every checksum and cross-check the index against the shard files.

It only reads. A problem is named by shard file and rows, so the user knows what is lost; nothing is
repaired (a damaged row must be re-extracted, which `te extract` does once the row is dropped).
Shards are read outside the index snapshot: they are append-only, so the committed prefix seen in the
snapshot stays valid while writers go on appending.
"""

from __future__ import annotations

import hashlib
import os
import zlib
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from transfer_engine.cache import artifacts
from transfer_engine.cache import shards as shardfile
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
class VerifyReport:
    """The outcome of `verify_cache`: `ok` when there are no problems (notes are harmless)."""

    cache: str
    shards: int = 0
    rows: int = 0
    bytes_checked: int = 0
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {"cache": self.cache, "ok": self.ok, "shards": self.shards, "rows": self.rows,
                "bytes_checked": self.bytes_checked,
                "problems": [{**asdict(p), "rows": list(p.rows) if p.rows else None, "text": str(p)}
                             for p in self.problems],
                "notes": self.notes}


def verify_cache(cache: "FeatureCache") -> VerifyReport:
    """Check a whole cache: sqlite's own check, the index's row references, each shard's header, length,
    block CRC32s and (for full shards) SHA-256.

    Args:
        cache: an open cache.

    Returns:
        A `VerifyReport`; nothing is changed on disk.
    """
    report = VerifyReport(str(cache.root))
    index = cache.index
    with index.snapshot():
        check = index.quick_check()
        spaces = {s.id: s for s in index.spaces()}
        all_shards = index.shards()
        blocks = {s.id: index.blocks(s.id) for s in all_shards}
        report.rows = sum(index.count_rows(s) for s in spaces)
        report.problems += [Problem(None, p) for p in index.row_problems()]
    if check != ["ok"]:
        report.problems.insert(0, Problem(None, "sqlite integrity check failed: " + "; ".join(check[:3])))
    expected = set()
    for shard in all_shards:
        space = spaces.get(shard.space)
        relpath = shardfile.shard_relpath(space.digest if space else "unknown", shard.id)
        expected.add(relpath)
        if space is None:
            report.problems.append(Problem(relpath, f"belongs to space {shard.space}, which the index does not have"))
            continue
        report.shards += 1
        _verify_shard(cache, space, shard, relpath, blocks[shard.id], report)
    for orphan in shardfile.orphan_files(cache.root, expected):
        report.notes.append(f"{orphan}: not in the index (left by an interrupted writer; te cache gc removes it)")
    _verify_artifacts(cache, report)
    return report


def _verify_artifacts(cache: "FeatureCache", report: VerifyReport) -> None:
    """Each named artifact's size and SHA-256; files no name points at are notes (gc removes them)."""
    for name, record in sorted(artifacts.records(cache).items()):
        problem = artifacts.check(cache.root / record["file"], record)
        report.bytes_checked += record["bytes"] if not problem else 0
        if problem:
            report.problems.append(Problem(record["file"], f"artifact {name}: {problem} (te rebuilds it when it "
                                                           "next needs it; te cache gc removes the damaged file)"))
    for path in artifacts.unreferenced(cache):
        report.notes.append(f"{artifacts.FOLDER}/{path.name}: no artifact name points at it (te cache gc removes it)")


def _verify_shard(cache: "FeatureCache", space: "SpaceRow", shard: "ShardRow", relpath: str,
                  blocks: list[tuple[int, int, int]], report: VerifyReport) -> None:
    path = cache.root / relpath
    width = space.row_bytes
    try:
        size = os.stat(path).st_size
        with open(path, "rb") as f:
            header = shardfile.ShardHeader.unpack(f.read(shardfile.HEADER_BYTES), relpath)
    except FileNotFoundError:
        report.problems.append(Problem(relpath, f"missing; the index commits {shard.rows} rows to it",
                                       (0, shard.rows - 1) if shard.rows else None))
        return
    except CorruptCacheError as exc:
        report.problems.append(Problem(relpath, f"header unreadable: {exc}"))
        return
    wanted = shardfile.ShardHeader(dim=space.dim, row_bytes=width, stored=space.stored, space_id=space.digest)
    if header != wanted:
        report.problems.append(Problem(relpath, f"header says dim {header.dim}, {header.stored}, {header.row_bytes} "
                                                f"bytes/row, space {header.space_id[:12]}, version {header.version}; "
                                                f"the index says dim {space.dim}, {space.stored}, {width} bytes/row, "
                                                f"space {space.digest[:12]}, version {wanted.version}"))
    committed_end = shardfile.HEADER_BYTES + shard.rows * width
    whole_rows = max(0, (size - shardfile.HEADER_BYTES) // width)
    if size < committed_end:
        report.problems.append(Problem(relpath, f"file ends after {whole_rows} whole rows; the index commits "
                                                f"{shard.rows}", (whole_rows, shard.rows - 1)))
    elif size > committed_end:
        report.notes.append(f"{relpath}: {size - committed_end} bytes after row {shard.rows - 1} are uncommitted "
                            "(an interrupted write; the next append drops them)")
    want_blocks = [(b, min(shardfile.BLOCK_ROWS, shard.rows - b * shardfile.BLOCK_ROWS))
                   for b in range(-(-shard.rows // shardfile.BLOCK_ROWS))]
    if [(b, n) for b, n, _ in blocks] != want_blocks:
        report.problems.append(Problem(relpath, f"checksum table lists {len(blocks)} blocks that do not cover its "
                                                f"{shard.rows} committed rows"))
        return
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        for block, nrows, crc in blocks:
            first, last = shardfile.block_rows(block, nrows)
            f.seek(shardfile.HEADER_BYTES + first * width)
            data = f.read(nrows * width)
            report.bytes_checked += len(data)
            sha.update(data)
            if len(data) < nrows * width:
                break  # already reported as a short file
            if zlib.crc32(data) != crc:
                report.problems.append(Problem(relpath, f"checksum mismatch in block {block}: a byte of these rows "
                                                        "changed on disk", (first, last)))
    if shard.sealed_sha256 is not None and sha.hexdigest() != shard.sealed_sha256:
        report.problems.append(Problem(relpath, "SHA-256 of the sealed shard differs from the one recorded when it "
                                                "was filled", (0, shard.rows - 1)))
