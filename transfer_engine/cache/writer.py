"""Appending encoded rows to a space's shards: the one place that decides the commit order.

Crash safety comes from the order, not from cleverness:
  0. (new space) its folder and `space.json`, durably, before the transaction that creates the space
     commits (a committed space never has a folder without `space.json`, even when the disk fills);
  1. (new shard) write its header and its empty key file, fsync them and their directory (new folders
     fsynced in their parents; a space's folder gets its `space.json` first, for spaces of an older te);
  2. write the rows after the last committed row, fsync; then their key-file slots, fsync;
  3. record rows, counts and checksums in the index, in the caller's one sqlite transaction (COMMIT).
A kill -9 before 3 leaves bytes nobody references (the next writer truncates them, readers never look
past the committed count); after 3 everything referenced is on disk. So a crash loses at most the batch
in flight and never exposes a half-written row.
"""

from __future__ import annotations

import json
from pathlib import Path

from transfer_engine._durable import makedirs_durably, write_text_durably
from transfer_engine.cache import shards
from transfer_engine.cache.index import Index, SpaceRow
from transfer_engine.errors import CorruptCacheError

DEFAULT_SHARD_BYTES = 256 << 20
# meta key: the first shard id written with a key file (older shards of a cache made before key files
# existed have none); new caches start at 1.
KEYS_FROM_SHARD = "keys_from_shard"


def has_key_file(index: Index, shard_id: int) -> bool:
    """Whether shard `shard_id` was written with a key file (so a missing one is damage)."""
    first = index.meta(KEYS_FROM_SHARD)
    return first is not None and shard_id >= int(first)


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

    def append(self, raw: bytes | memoryview, keys: list[str], slots: bytes | None = None) -> list[tuple[int, int]]:
        """Write rows (`raw` holds whole rows back to back, one per key) durably; return (shard, row) of each.

        `slots`: the rows' key-file slots when the caller has them already, checked (a merge copies them
        from its source); computed from keys and rows otherwise. The index is updated in the open
        transaction; nothing is visible to readers until it commits.
        """
        width = self.space.row_bytes
        view = memoryview(raw).cast("B")
        if len(view) % width or len(view) // width != len(keys):
            raise ValueError(f"expected {len(keys)} whole rows of {width} bytes, got {len(view)} bytes")
        placed: list[tuple[int, int]] = []
        while view:
            shard = self.index.open_shard(self.space.id)
            if shard is None:
                shard_id, committed, capacity = self._new_shard(), 0, self.capacity
            else:
                shard_id, committed, capacity = shard.id, shard.rows, shard.capacity
            take = min(len(view) // width, capacity - committed)
            chunk, view = view[: take * width], view[take * width:]
            chunk_keys, keys = keys[:take], keys[take:]
            chunk_slots = None
            if slots is not None:
                chunk_slots, slots = slots[:take * shards.SLOT_BYTES], slots[take * shards.SLOT_BYTES:]
            path = self.root / shards.shard_relpath(self.space.digest, shard_id)
            shards.write_rows(path, committed, chunk, width)
            self._write_keys(shard_id, path, committed, chunk_keys, chunk, chunk_slots)
            partial = self.index.partial_block(shard_id, committed, shards.BLOCK_ROWS)
            self.index.put_blocks(shard_id, shards.extend_block_checksums(committed, chunk, width, partial))
            total = committed + take
            self.index.set_shard_rows(shard_id, total)
            if total == capacity:
                self.index.seal_shard(shard_id, shards.sha256_of_rows(path, total, width), total)
            placed.extend((shard_id, row) for row in range(committed, total))
        return placed

    def _write_keys(self, shard_id: int, path: Path, first_row: int, keys: list[str], chunk: memoryview,
                    slots: bytes | None = None) -> None:
        if not has_key_file(self.index, shard_id):
            return  # a shard begun before te kept key files: its rows' binding stays unverifiable
        target = shards.keys_path(path)
        if not target.exists():
            raise CorruptCacheError(f"{target.relative_to(self.root)} is missing; run `te cache verify {self.root}` "
                                    f"and `te cache repair {self.root}`")
        if slots is None:
            slots = shards.key_slots(keys, chunk, self.space.row_bytes)
        shards.write_key_slots(target, first_row, slots)

    def _new_shard(self) -> int:
        shard_id = self.index.insert_shard(self.space.id, self.capacity)
        if self.index.meta(KEYS_FROM_SHARD) is None:  # the first shard of an older cache with key files
            self.index.set_meta(KEYS_FROM_SHARD, str(shard_id))
        path = self.root / shards.shard_relpath(self.space.digest, shard_id)
        make_space_folder(self.root, self.space)
        header = shards.ShardHeader(dim=self.space.dim, row_bytes=self.space.row_bytes, stored=self.space.stored,
                                    space_id=self.space.digest)
        shards.create_shard(path, header)
        return shard_id


def make_space_folder(root: Path, space: SpaceRow) -> Path:
    """A space's shard folder with its `space.json` in it, made durably; called in the transaction that
    creates the space (and again before its first shard, for spaces of an older te), so that a committed
    space never has a folder without `space.json`.

    When writing `space.json` fails (a full disk, a kill -9 cannot be helped), a folder this call made is
    removed again while empty: no folder is left that verify would call damaged, and the transaction that
    wanted the space rolls back.
    """
    folder = Path(root) / shards.space_relfolder(space.digest)
    made = not folder.is_dir()
    try:
        makedirs_durably(folder)
        write_space_file(folder, space)
    except BaseException:
        if made:
            try:
                folder.rmdir()  # only when empty: never a file of anyone's
            except OSError:
                pass
        raise
    return folder


def write_space_file(folder: Path, space: SpaceRow) -> None:
    """`space.json` in a space's shard folder (once): the config a rebuilt index needs to know the rows."""
    target = folder / shards.SPACE_FILE
    if target.exists():
        return
    write_text_durably(target, json.dumps({"id": space.digest, "config": space.config}, sort_keys=True) + "\n")
