"""Appending encoded rows to a space's shards: the one place that decides the commit order.

Crash safety comes from the order, not from cleverness:
  1. (new shard) write its header, fsync the file and its directory;
  2. write the rows after the last committed row, fsync;
  3. record rows, counts and checksums in the index, in the caller's one sqlite transaction (COMMIT).
A kill -9 before 3 leaves bytes nobody references (the next writer truncates them, readers never look
past the committed count); after 3 everything referenced is on disk. So a crash loses at most the batch
in flight and never exposes a half-written row.
"""

from __future__ import annotations

from pathlib import Path

from transfer_engine.cache import shards
from transfer_engine.cache.index import Index, SpaceRow

DEFAULT_SHARD_BYTES = 256 << 20


class ShardWriter:
    """Appends raw rows of one space; use under the writer lock, inside `index.write()`.

    Args:
        root: the cache directory.
        index: the cache's index (a write transaction must be open).
        space: the space whose shards receive the rows.
        max_shard_bytes: a new shard holds at most this many bytes of rows (at least one row).
    """

    def __init__(self, root: Path, index: Index, space: SpaceRow, max_shard_bytes: int = DEFAULT_SHARD_BYTES) -> None:
        self.root = Path(root)
        self.index = index
        self.space = space
        self.capacity = max(1, int(max_shard_bytes) // space.row_bytes)

    def append(self, raw: bytes | memoryview) -> list[tuple[int, int]]:
        """Write rows (`raw` holds whole rows back to back) durably; return (shard, row) of each.

        The index is updated in the open transaction; nothing is visible to readers until it commits.
        """
        width = self.space.row_bytes
        view = memoryview(raw).cast("B")
        if len(view) % width:
            raise ValueError(f"expected whole rows of {width} bytes, got {len(view)} bytes")
        placed: list[tuple[int, int]] = []
        while view:
            shard = self.index.open_shard(self.space.id)
            if shard is None:
                shard_id, committed, capacity = self._new_shard(), 0, self.capacity
            else:
                shard_id, committed, capacity = shard.id, shard.rows, shard.capacity
            take = min(len(view) // width, capacity - committed)
            chunk, view = view[: take * width], view[take * width:]
            path = self.root / shards.shard_relpath(self.space.digest, shard_id)
            shards.write_rows(path, committed, chunk, width)
            partial = self.index.partial_block(shard_id, committed, shards.BLOCK_ROWS)
            self.index.put_blocks(shard_id, shards.extend_block_checksums(committed, chunk, width, partial))
            total = committed + take
            self.index.set_shard_rows(shard_id, total)
            if total == capacity:
                self.index.seal_shard(shard_id, shards.sha256_of_rows(path, total, width), total)
            placed.extend((shard_id, row) for row in range(committed, total))
        return placed

    def _new_shard(self) -> int:
        shard_id = self.index.insert_shard(self.space.id, self.capacity)
        header = shards.ShardHeader(dim=self.space.dim, row_bytes=self.space.row_bytes, stored=self.space.stored,
                                    space_id=self.space.digest)
        shards.create_shard(self.root / shards.shard_relpath(self.space.digest, shard_id), header)
        return shard_id
