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
            with fs.open(path, "rb", block_size=READ_BLOCK) as fh, tarfile.open(fileobj=fh, mode="r|*") as tar:
                key, members = None, {}
                for info in tar:
                    if not info.isfile():
                        continue
                    k, ext = member_key(info.name)
                    if k != key and key is not None:
                        count += 1
                        yield self._sample(name, key, members)
                        members = {}
                    key = k
                    members[ext] = _member_bytes(tar, info, ext)
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


def _member_bytes(tar: tarfile.TarFile, info: tarfile.TarInfo, ext: str) -> Any:
    """A member's bytes, or the error that kept them unread (too large: never read into memory)."""
    limit = max_file_bytes() if ext in IMAGE_EXTS else LABEL_MEMBER_BYTES
    if info.size > limit:
        return FileTooLargeError(f"{info.name} holds {info.size:,} bytes, over the limit of {limit:,}")
    fh = tar.extractfile(info)
    return fh.read() if fh is not None else b""


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
