"""Shard files: append-only, fixed-width rows after a 64-byte header.

Layout (little-endian):

    magic "TESHARD\\0" | u32 format version | u32 header bytes (64) | u32 dim | u32 row bytes |
    8-byte stored dtype ("int8\\0\\0\\0\\0") | 32-byte raw SHA-256 of the feature space | rows ...

Row r starts at 64 + r * row_bytes, so no per-row index is needed. How many rows are real is the
index's business (`shards.rows`): bytes past that are an interrupted write, never read, and dropped by
the next writer. Integrity is checked per block of `BLOCK_ROWS` rows (CRC32, extended as rows arrive)
and, once a shard is full, by a SHA-256 of its whole row area.

Beside each shard, a key file `NNNNNN.keys` says which key each row was written for, independently of
the index (the shard row format stays the extension's):

    magic "TEKEYS\0\0" | u32 version | u32 slot bytes (40) | one slot per row:
    32-byte key (zero-padded; keys over 32 bytes: their BLAKE2b-256) | u8 key bytes | 3 zero bytes |
    u32 CRC32 of the 36 bytes before it and the row's bytes

So `te cache verify` can prove that the index binds each key to the row written for it (two keys
swapped in the index are caught), pin a flipped byte to its row, and `te cache repair` can rebuild a
lost index from the shards alone: every row whose slot checks out is known with its key. It costs 40
bytes a row (2% of an int8 row of 2048 features). Each space's folder also holds `space.json`, the
space's config, so a rebuilt index knows what the rows are (its SHA-256 must be the space id).
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import struct
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from transfer_engine._durable import fsync_dir, makedirs_durably
from transfer_engine.errors import CorruptCacheError

if TYPE_CHECKING:
    import torch

MAGIC = b"TESHARD\0"
SHARD_VERSION = 1
HEADER_BYTES = 64
_HEADER = struct.Struct("<8sIIII8s32s")
assert _HEADER.size == HEADER_BYTES

# 256 rows: a flipped byte is pinned to a few hundred rows, and the checksum table stays tiny
# (one entry per ~0.5 MB of int8 rows at D=2048).
BLOCK_ROWS = 256
_READ_CHUNK = 8 << 20


@dataclass(frozen=True)
class ShardHeader:
    """What a shard file says about itself; checked against the index on verify."""

    dim: int
    row_bytes: int
    stored: str
    space_id: str
    version: int = SHARD_VERSION

    def pack(self) -> bytes:
        return _HEADER.pack(MAGIC, self.version, HEADER_BYTES, self.dim, self.row_bytes,
                            self.stored.encode().ljust(8, b"\0"), bytes.fromhex(self.space_id))

    @classmethod
    def unpack(cls, raw: bytes, where: str) -> "ShardHeader":
        """Parse a header; `CorruptCacheError` naming `where` when it is not one."""
        if len(raw) < HEADER_BYTES:
            raise CorruptCacheError(f"{where}: {len(raw)} bytes, shorter than the {HEADER_BYTES}-byte shard header")
        magic, version, header_bytes, dim, row_bytes, stored, space = _HEADER.unpack(raw[:HEADER_BYTES])
        if magic != MAGIC or header_bytes != HEADER_BYTES:
            raise CorruptCacheError(f"{where}: not a te shard (bad magic or header size)")
        return cls(dim=dim, row_bytes=row_bytes, stored=stored.rstrip(b"\0").decode(errors="replace"),
                   space_id=space.hex(), version=version)


KEYS_MAGIC = b"TEKEYS\0\0"
KEYS_VERSION = 1
_KEYS_HEADER = struct.Struct("<8sII")
KEYS_HEADER_BYTES = _KEYS_HEADER.size
_SLOT = struct.Struct("<32sB3xI")
SLOT_BYTES = _SLOT.size
_KEY_FIELD = 32
SPACE_FILE = "space.json"


def space_relfolder(space_id: str) -> str:
    """The folder of a space's shards, key files and `space.json`, relative to the cache directory."""
    return f"shards/{space_id[:16]}"


def shard_relpath(space_id: str, shard_id: int) -> str:
    """Where shard `shard_id` of a space lives, relative to the cache directory."""
    return f"{space_relfolder(space_id)}/{shard_id:06d}.shard"


def keys_relpath(space_id: str, shard_id: int) -> str:
    """Where the key file of shard `shard_id` lives, relative to the cache directory."""
    return f"{space_relfolder(space_id)}/{shard_id:06d}.keys"


def keys_path(shard_path: Path) -> Path:
    return shard_path.with_suffix(".keys")


def create_shard(path: Path, header: ShardHeader) -> None:
    """Write a new, empty shard (header only) and its empty key file, durable, replacing any files there.

    A file already at `path` can only be an orphan of a crashed writer: its id was never committed.
    """
    makedirs_durably(path.parent)
    _create_file(path, header.pack())
    _create_file(keys_path(path), _KEYS_HEADER.pack(KEYS_MAGIC, KEYS_VERSION, SLOT_BYTES))
    fsync_dir(path.parent)


def _create_file(path: Path, head: bytes) -> None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        _write_all(fd, head, 0)
        os.fsync(fd)
    finally:
        os.close(fd)


def write_rows(path: Path, first_row: int, data: memoryview, row_bytes: int) -> None:
    """Write rows starting at row `first_row` and make them durable (fsync) before returning.

    Anything past the last committed row (`first_row`) is dropped first: it can only be the torn
    tail of a writer that died before committing.
    """
    _write_after(path, HEADER_BYTES + first_row * row_bytes, data)


def _write_after(path: Path, offset: int, data: bytes | memoryview) -> None:
    """Cut the file at `offset` (a dead writer's tail), write `data` there, fsync."""
    fd = os.open(path, os.O_RDWR)
    try:
        if os.fstat(fd).st_size > offset:
            os.ftruncate(fd, offset)
        _write_all(fd, data, offset)
        os.fsync(fd)
    finally:
        os.close(fd)


def key_field(key: str) -> tuple[bytes, int]:
    """(the 32-byte field, the key's length in bytes) a key file stores for `key` (hex)."""
    raw = bytes.fromhex(key)
    if len(raw) > _KEY_FIELD:
        return hashlib.blake2b(raw, digest_size=_KEY_FIELD).digest(), len(raw)
    return raw.ljust(_KEY_FIELD, b"\0"), len(raw)


def key_slots(keys: list[str], data: bytes | memoryview, row_bytes: int) -> bytes:
    """The key-file slots of rows `data` (whole rows back to back) written for `keys`, in order."""
    view = memoryview(data).cast("B")
    out = bytearray()
    for i, key in enumerate(keys):
        field, length = key_field(key)
        head = _SLOT.pack(field, length, 0)[:-4]
        out += _SLOT.pack(field, length, zlib.crc32(view[i * row_bytes:(i + 1) * row_bytes], zlib.crc32(head)))
    return bytes(out)


def write_key_slots(path: Path, first_row: int, slots: bytes) -> None:
    """Append slots at row `first_row` of a key file, durable (a dead writer's tail is cut first)."""
    _write_after(path, KEYS_HEADER_BYTES + first_row * SLOT_BYTES, slots)


@dataclass(frozen=True)
class KeySlot:
    """What a key file says about one row."""

    field: bytes
    length: int
    crc: int

    def holds(self, key: str) -> bool:
        """True when the row was written for `key`."""
        return (self.field, self.length) == key_field(key)

    @property
    def key(self) -> str | None:
        """The key in hex, or None for a key over 32 bytes (the file keeps only its digest)."""
        return self.field[:self.length].hex() if 0 < self.length <= _KEY_FIELD else None

    def matches(self, row: bytes | memoryview) -> bool:
        """True when `row` holds the bytes written with this key (the slot's own bytes included)."""
        head = _SLOT.pack(self.field, self.length, 0)[:-4]
        return zlib.crc32(row, zlib.crc32(head)) == self.crc


def read_key_slots(path: Path, rows: int) -> list[KeySlot]:
    """The slots of a key file's first `rows` rows (fewer when the file is shorter).

    Raises:
        FileNotFoundError: there is no key file (a shard written before te kept them, or a lost one).
        CorruptCacheError: the file's header is not a key file's.
    """
    data = read_key_slot_bytes(path, rows)
    return [KeySlot(*_SLOT.unpack_from(data, i * SLOT_BYTES)) for i in range(len(data) // SLOT_BYTES)]


def read_key_slot_bytes(path: Path, rows: int) -> bytes:
    """The raw slot area of a key file's first `rows` rows (shorter when the file is), header checked;
    what a merge copies, slot by slot, once each checks out against its row (`read_key_slots` parses)."""
    with open(path, "rb") as f:
        head = f.read(KEYS_HEADER_BYTES)
        data = f.read(rows * SLOT_BYTES)
    if len(head) < KEYS_HEADER_BYTES or _KEYS_HEADER.unpack(head) != (KEYS_MAGIC, KEYS_VERSION, SLOT_BYTES):
        raise CorruptCacheError(f"{path.name}: not a te key file (bad header)")
    return data


def read_space_file(folder: Path) -> dict | None:
    """What a space folder's `space.json` says ({"id", "config"}), or None when it is missing or unreadable."""
    try:
        data = json.loads((Path(folder) / SPACE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and set(data) == {"id", "config"} else None


def _write_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data).cast("B")
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


def read_rows(path: Path, first_row: int, count: int, row_bytes: int) -> bytes:
    """The raw bytes of rows [first_row, first_row + count)."""
    with open(path, "rb") as f:
        f.seek(HEADER_BYTES + first_row * row_bytes)
        data = f.read(count * row_bytes)
    if len(data) != count * row_bytes:
        raise CorruptCacheError(f"{path}: holds fewer rows than the index commits (wanted rows "
                                f"{first_row}..{first_row + count - 1})")
    return data


def extend_block_checksums(first_row: int, data: bytes | memoryview, row_bytes: int,
                           partial: tuple[int, int] | None) -> list[tuple[int, int, int]]:
    """Checksums of the blocks touched by appending `data` at row `first_row`.

    Args:
        first_row: the shard's committed row count before this append.
        data: the appended rows' bytes.
        row_bytes: bytes per row.
        partial: (rows, crc32) of the block holding `first_row` when it is partly filled, else None.

    Returns:
        [(block, rows in block, crc32)] for every block the append touched; CRC32 extends without the
        earlier bytes, so appending never re-reads the shard.
    """
    view = memoryview(data).cast("B")
    out = []
    row = first_row
    while view:
        block, in_block = divmod(row, BLOCK_ROWS)
        take = min(BLOCK_ROWS - in_block, len(view) // row_bytes)
        crc = partial[1] if (in_block and partial) else 0
        if in_block and (partial is None or partial[0] != in_block):
            raise CorruptCacheError(f"checksum table disagrees with the shard: block {block} should hold "
                                    f"{in_block} rows")
        out.append((block, in_block + take, zlib.crc32(view[: take * row_bytes], crc)))
        view, row, partial = view[take * row_bytes:], row + take, None
    return out


def block_rows(block: int, rows: int) -> tuple[int, int]:
    """First and last row number of `rows` rows in block `block`."""
    return block * BLOCK_ROWS, block * BLOCK_ROWS + rows - 1


def sha256_of_rows(path: Path, rows: int, row_bytes: int) -> str:
    """SHA-256 of a shard's first `rows` rows (its row area when sealed)."""
    digest = hashlib.sha256()
    remaining = rows * row_bytes
    with open(path, "rb") as f:
        f.seek(HEADER_BYTES)
        while remaining:
            chunk = f.read(min(_READ_CHUNK, remaining))
            if not chunk:
                raise CorruptCacheError(f"{path}: ends before its {rows} committed rows")
            digest.update(chunk)
            remaining -= len(chunk)
    return digest.hexdigest()


def orphan_files(root: Path, expected: set[str]) -> list[str]:
    """Shard and key files under `root`/shards (relative paths) whose shard is not in `expected`
    (a set of shard files)."""
    folder = Path(root) / "shards"
    if not folder.is_dir():
        return []
    found = [p.relative_to(root).as_posix() for p in sorted(folder.glob("*/*.shard")) + sorted(folder.glob("*/*.keys"))]
    return [p for p in found if p.rsplit(".", 1)[0] + ".shard" not in expected]


class ShardMaps:
    """Read-only memory maps of shards' committed rows, shared by gathers and loaders (thread-safe).

    A map covers exactly the committed prefix (header + rows * row_bytes), never the bytes a writer may
    be appending or truncating; it is replaced by a longer one when more rows are committed. Maps are
    MAP_PRIVATE (ACCESS_COPY) so torch.frombuffer gets a writable buffer without any write reaching
    the file; nothing writes to them.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._lock = threading.Lock()
        self._maps: dict[int, tuple[int, "torch.Tensor"]] = {}

    def rows(self, shard_id: int, relpath: str, committed: int, row_bytes: int) -> "torch.Tensor":
        """The first `committed` rows of a shard as one flat uint8 tensor (a view of the map)."""
        import torch

        if committed == 0:
            return torch.empty(0, dtype=torch.uint8)
        path = self.root / relpath
        length = HEADER_BYTES + committed * row_bytes
        with self._lock:
            mapped = self._maps.get(shard_id)
            if mapped is None or mapped[0] < committed:
                try:
                    with open(path, "rb") as f:
                        self._check_size(relpath, os.fstat(f.fileno()).st_size, committed, length)
                        mm = mmap.mmap(f.fileno(), length, access=mmap.ACCESS_COPY)
                except FileNotFoundError:
                    raise self._missing(relpath) from None
                # frombuffer keeps the map alive for as long as any view of it lives.
                mapped = (committed, torch.frombuffer(mm, dtype=torch.uint8, offset=HEADER_BYTES,
                                                      count=committed * row_bytes))
                self._maps[shard_id] = mapped
            else:
                # A file cut short under a live map would kill the process with SIGBUS at the first
                # read past its new end; a stat per shard and gather turns that into an error.
                try:
                    self._check_size(relpath, os.stat(path).st_size, committed, length)
                except FileNotFoundError:
                    raise self._missing(relpath) from None
            return mapped[1][: committed * row_bytes]

    def _check_size(self, relpath: str, size: int, committed: int, length: int) -> None:
        if size < length:
            raise CorruptCacheError(f"{relpath}: {size} bytes, but the index commits {committed} rows ({length} "
                                    f"bytes): the file was cut short; run `te cache verify {self.root}`, then "
                                    f"`te cache repair {self.root}`")

    def _missing(self, relpath: str) -> CorruptCacheError:
        return CorruptCacheError(f"{relpath} is missing: `te cache gc` rewrote it after these rows were located "
                                 f"(locate them again), or it was lost (run `te cache verify {self.root}`, then "
                                 f"`te cache repair {self.root}`)")

    def forget(self, shard_ids: set[int] | None = None) -> None:
        """Drop maps (all of them by default); views already handed out stay valid."""
        with self._lock:
            if shard_ids is None:
                self._maps.clear()
            else:
                for sid in shard_ids:
                    self._maps.pop(sid, None)
