"""webdataset tar shards as a data source (`--data shards/train-{000000..000127}.tar`, local or at a URL).

The format is webdataset's (and img2dataset's, which writes it): a sample is the run of consecutive tar
members that share a key (the member's path up to the first dot of its file name: `a/000123.jpg` and
`a/000123.cls` are one sample, key `a/000123`). The image is the member whose extension is an image's
(`jpg`, `png`, `webp`, ...; the first of those in `IMAGE_EXTENSIONS` order when there are several). The
label comes from `--label-field`:
    (default) the `cls` member (text: a class index or name), else the `label` field of the `json` member
    cls | txt | json:FIELD     that member, or that field of the json member (txt is a caption in
                               img2dataset's shards: only when asked)
A sample without an image member or a label is skipped with that reason; a member over TE_MAX_FILE_BYTES
is skipped unread; a truncated or damaged shard keeps the samples before the damage and reports the rest.
Gzipped shards (`.tar.gz`, `.tgz`) stream the same way.
"""

from __future__ import annotations

import gzip
import io
import json
import tarfile
import threading
import zlib
from collections import OrderedDict
from typing import Any, Iterator

from transfer_engine.data.files import FileTooLargeError, max_file_bytes
from transfer_engine.data.parts import PartRecord, PartSource, origin, split_origin
from transfer_engine.data.remote import PartRef
from transfer_engine.data.sources import Sample
from transfer_engine.data.walk import IMAGE_EXTENSIONS
from transfer_engine.errors import UsageError

TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
IMAGE_EXTS = tuple(e.lstrip(".") for e in IMAGE_EXTENSIONS)
LABEL_MEMBER_BYTES = 1 << 20  # a cls/txt/json member is a few bytes; a larger one is not a label
READ_BLOCK = 1 << 22  # bytes per read from an object store (one GET streams on; fsspec reads ahead)
READ_BUFFER = 1 << 20  # bytes a remote shard is read by, in C
INDEXES_KEPT = 4  # member indexes of shards kept for reading samples one by one


def member_key(name: str) -> tuple[str, str]:
    """(sample key, extension) of a member name, as webdataset splits them: at the first dot of the file name."""
    folder, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower() if dot else ""


def check_label_field(field: str | None) -> str | None:
    """Raises UsageError for a --label-field a tar shard cannot hold."""
    if field is None or field in ("cls", "txt") or (field.startswith("json:") and len(field) > 5):
        return field
    raise UsageError(f"--label-field {field}: for tar shards use cls, txt or json:FIELD")


class TarShards(PartSource):
    """webdataset tar shards.

    Args:
        files: (fs, path, url, name) of each shard (`remote.listed_parts`).
        shown: the --data value, for messages and the data set's name.
        label_field: see the module docstring (None: cls, else json:label).
    """

    def __init__(self, files: list[tuple], shown: str, label_field: str | None = None) -> None:
        super().__init__()
        self._files = files
        self.name = shown
        self.label_field = check_label_field(label_field)
        self._indexes: OrderedDict[str, dict[str, tuple[int, int]]] = OrderedDict()
        self._lock = threading.Lock()

    def describe(self) -> str:
        return f"{len(self._files)} tar shard(s) {self.name}"

    def part_records(self, part: PartRef) -> Iterator[PartRecord]:
        fs, path, _, name = self._part_named(part.name)
        count = 0
        try:
            with fs.open(path, "rb", block_size=READ_BLOCK) as raw:
                # fsspec's remote files answer each read in Python: a C buffer serves the 512-byte headers
                fh = _maybe_gunzip(io.BufferedReader(raw, READ_BUFFER))
                key, members = None, {}
                for member, size in _members(fh):
                    k, ext = member_key(member)
                    if k != key and key is not None:
                        count += 1
                        yield self._sample(name, key, members)
                        members = {}
                    key = k
                    members[ext] = _member_bytes(fh, member, size, ext)
                if key is not None:
                    count += 1
                    yield self._sample(name, key, members)
        except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
            reason = str(exc) or type(exc).__name__
            yield PartRecord(Sample(name, None), None,  # type: ignore[arg-type]
                             f"the shard is damaged or truncated after {count} sample(s) ({reason}); "
                             "those were kept")

    def _sample(self, part_name: str, key: str, members: dict[str, Any]) -> PartRecord:
        image_ext = next((e for e in IMAGE_EXTS if e in members), None)
        where = origin(part_name, f"{key}.{image_ext}" if image_ext else key)
        if image_ext is None:
            return PartRecord(Sample(where, None), None, f"no image member (has: {', '.join(sorted(members)) or 'none'})")  # type: ignore[arg-type]
        data = members[image_ext]
        if isinstance(data, Exception):
            return PartRecord(Sample(where, None), None, f"{type(data).__name__}: {data}")  # type: ignore[arg-type]
        label = self._label(members)
        if label is None and not self.labels_required:
            return PartRecord(Sample(where, None), data)  # type: ignore[arg-type]
        if label is None:
            wanted = self.label_field or "cls or json:label"
            return PartRecord(Sample(where, None), None, f"no label ({wanted}); --label-field chooses the member")  # type: ignore[arg-type]
        return PartRecord(Sample(where, label), data)  # type: ignore[arg-type]

    def _label(self, members: dict[str, Any]) -> str | None:
        field = self.label_field
        if field is None:
            return _text(members.get("cls")) or _json_field(members.get("json"), "label")
        if field.startswith("json:"):
            return _json_field(members.get("json"), field[5:])
        return _text(members.get(field))

    def read_bytes(self, sample: Sample) -> bytes:
        part_name, member = split_origin(sample.path)
        fs, path, _, _ = self._part_named(part_name)
        offset, size = self._index(part_name, fs, path).get(member, (None, None))
        if offset is None:
            raise FileNotFoundError(f"{member} is not in {part_name}")
        if size > max_file_bytes():
            raise FileTooLargeError(f"{size:,} bytes, over TE_MAX_FILE_BYTES")
        with fs.open(path, "rb") as fh:
            fh.seek(offset)
            return fh.read(size)

    def _index(self, part_name: str, fs, path: str) -> dict[str, tuple[int, int]]:
        """member name -> (offset of its data, size), for one shard (a pass over its headers; kept for a few)."""
        with self._lock:
            if part_name in self._indexes:
                self._indexes.move_to_end(part_name)
                return self._indexes[part_name]
        with fs.open(path, "rb") as fh, tarfile.open(fileobj=fh, mode="r:*") as tar:
            if tar.fileobj is not fh:  # compressed: offsets are in the decompressed stream
                raise OSError(f"{part_name} is compressed; te reads single samples from uncompressed shards only")
            index = {m.name: (m.offset_data, m.size) for m in tar.getmembers() if m.isfile()}
        with self._lock:
            self._indexes[part_name] = index
            while len(self._indexes) > INDEXES_KEPT:
                self._indexes.popitem(last=False)
        return index


BLOCK = 512


def _maybe_gunzip(fh):
    """The stream itself, or its decompression when it starts with gzip's magic (`.tar.gz`, `.tgz`)."""
    head = fh.read(2)
    fh.seek(0)
    return gzip.GzipFile(fileobj=fh, mode="rb") if head == b"\x1f\x8b" else fh


def _members(fh) -> Iterator[tuple[str, int]]:
    """(name, size) of each regular file of a tar stream, with `fh` left at its data: the caller reads or
    skips exactly `size` bytes (`_member_bytes`). ustar, GNU long names and pax headers, read header by header
    front to back (Python's tarfile parses each header into an object and keeps every one: several times
    slower on shards of small images, measured in benchmarks/bench_data_sources.py).

    Raises:
        tarfile.ReadError: a header with a wrong checksum, or the stream ends inside a member.
    """
    long_name: str | None = None
    pax: dict[str, str] = {}
    while True:
        header = fh.read(BLOCK)
        if len(header) < BLOCK:
            if header.strip(b"\0"):
                raise tarfile.ReadError("unexpected end of data in a header")
            return
        if header == b"\0" * BLOCK:
            return  # the end-of-archive blocks
        if _checksum(header) != _number(header[148:156]):
            raise tarfile.ReadError("bad checksum in a header")
        size = _number(header[124:136])
        kind = header[156:157]
        if kind in (b"L", b"x", b"g"):  # the next member's long name, or pax attributes
            data = _exactly(fh, size)
            _skip(fh, -size % BLOCK)
            if kind == b"L":
                long_name = data.rstrip(b"\0").decode("utf-8", "surrogateescape")
            elif kind == b"x":
                pax = _pax(data)
            continue
        name = long_name or pax.get("path") or _name(header)
        size = int(pax.get("size", size))
        long_name, pax = None, {}
        if kind in (b"0", b"\0", b"7"):
            yield name, size  # the caller consumes the data
        else:
            _skip(fh, size)  # links, folders, devices: no image
        _skip(fh, -size % BLOCK)


def _name(header: bytes) -> str:
    name = header[0:100].split(b"\0", 1)[0]
    if header[257:262] == b"ustar":
        prefix = header[345:500].split(b"\0", 1)[0]
        if prefix:
            name = prefix + b"/" + name
    return name.decode("utf-8", "surrogateescape")


def _number(field: bytes) -> int:
    """A header number: octal text, or GNU's base-256 for large sizes (high bit set)."""
    if field and field[0] & 0x80:
        value = int.from_bytes(field[1:], "big")
        return value - (1 << (8 * (len(field) - 1))) if field[0] & 0x40 else value
    text = field.split(b"\0", 1)[0].strip()
    try:
        return int(text, 8) if text else 0
    except ValueError:
        raise tarfile.ReadError(f"a header number is not octal ({text[:12]!r})") from None


def _checksum(header: bytes) -> int:
    return sum(header[:148]) + 8 * 0x20 + sum(header[156:])


def _pax(data: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        space = data.find(b" ", pos)
        if space < 0:
            break
        length = int(data[pos:space])
        if length <= 0:
            break
        key, _, value = data[space + 1:pos + length - 1].partition(b"=")
        out[key.decode("utf-8", "replace")] = value.decode("utf-8", "surrogateescape")
        pos += length
    return out


def _exactly(fh, size: int) -> bytes:
    data = fh.read(size)
    if len(data) < size:
        raise tarfile.ReadError(f"unexpected end of data: {len(data):,} of a member's {size:,} bytes")
    return data


def _skip(fh, size: int) -> None:
    """Move past `size` bytes (read and dropped in pieces: a stream need not seek)."""
    while size > 0:
        chunk = fh.read(min(size, 1 << 20))
        if not chunk:
            raise tarfile.ReadError("unexpected end of data")
        size -= len(chunk)


def _member_bytes(fh, name: str, size: int, ext: str) -> Any:
    """A member's bytes, or the error that kept them unread (too large: skipped, never held in memory)."""
    limit = max_file_bytes() if ext in IMAGE_EXTS else LABEL_MEMBER_BYTES
    if size > limit:
        _skip(fh, size)
        return FileTooLargeError(f"{name} holds {size:,} bytes, over the limit of {limit:,}")
    return _exactly(fh, size)


def _text(data: Any) -> str | None:
    if not isinstance(data, (bytes, bytearray)):
        return None
    text = data.decode("utf-8", "replace").strip()
    return text or None


def _json_field(data: Any, field: str) -> str | None:
    if not isinstance(data, (bytes, bytearray)):
        return None
    try:
        value = json.loads(data).get(field)
    except (ValueError, AttributeError):
        return None
    if value is None or isinstance(value, (dict, list, bool)):
        return None
    return str(value).strip() or None
