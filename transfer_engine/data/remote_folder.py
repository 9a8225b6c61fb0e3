"""An image folder or a manifest at a URL (`--data s3://bucket/photos/`, `--data https://host/list.csv`).

The layouts are a local folder's and manifest's (`CLASS/IMAGE`, `SPLIT/CLASS/IMAGE`; `path,label[,split]`
with paths relative to the manifest), read through fsspec. The listing is taken once (an object store lists
a prefix in pages; the names are then held in memory, about 100 bytes an image: for many millions of
images, shards are the better layout) and cut into parts of FILES_PER_PART names in listing order, so the
files are read as parts are: each once (its bytes kept from the hash to the decode, not fetched twice),
FETCH_AT_ONCE at a time (fsspec fetches a list of objects concurrently), whole parts per rank, and a finished
part recorded in the cache and skipped unread by a re-run. A part's version is the digest of its files'
names, sizes and etags: a part whose files changed is read again.
"""

from __future__ import annotations

import hashlib
import io
import json
from typing import Any, Iterator

from transfer_engine.data.files import FileTooLargeError, max_file_bytes
from transfer_engine.data.parts import PartRecord, PartSource, class_names_from
from transfer_engine.data.remote import PartRef, filesystem
from transfer_engine.data.sources import SPLIT_ALIASES, Sample, manifest_rows
from transfer_engine.data.walk import IMAGE_EXTENSIONS
from transfer_engine.errors import UsageError

FILES_PER_PART = 1000
FETCH_AT_ONCE = 32  # objects fetched concurrently: a few MB of photos in memory at once


class RemoteFiles(PartSource):
    """Image files at a URL, each with a label and a split, read in parts of FILES_PER_PART.

    Args:
        fs: the fsspec file system.
        root: the folder (or the manifest's folder) in `fs`, relative paths hang from it.
        entries: (relative path, label text, split or None, size, etag) per image, in data-set order.
        shown: the --data value.
        classes: the class names when the layout fixes them (a folder's class folders).
    """

    def __init__(self, fs: Any, root: str, entries: list[tuple], shown: str, classes: list[str] | None) -> None:
        super().__init__()
        self.fs, self.root, self.name = fs, root.rstrip("/"), shown
        self.fixed_classes = classes
        self._entries = entries
        self._files = []
        self._refs = []
        for first in range(0, len(entries), FILES_PER_PART):
            chunk = entries[first:first + FILES_PER_PART]
            digest = hashlib.sha256(json.dumps([[e[0], e[3], e[4]] for e in chunk]).encode("utf-8", "surrogatepass"))
            name = f"files {first}-{first + len(chunk) - 1}"
            self._files.append((fs, first, f"{shown}#{name}", name))
            self._refs.append(PartRef(url=f"{shown}#{name}", name=name, size=sum(e[3] for e in chunk),
                                      version=digest.hexdigest()))

    def describe(self) -> str:
        return f"{len(self._entries)} files at {self.name}"

    def _path(self, rel: str) -> str:
        return rel if "://" in rel or rel.startswith("/") else f"{self.root}/{rel}"

    def part_records(self, part: PartRef) -> Iterator[PartRecord]:
        _, first, _, _ = self._part_named(part.name)
        chunk = self._entries[first:first + FILES_PER_PART]
        limit = max_file_bytes()
        for at in range(0, len(chunk), FETCH_AT_ONCE):
            group = chunk[at:at + FETCH_AT_ONCE]
            wanted = [self._path(e[0]) for e in group if e[3] <= limit]
            fetched = self.fs.cat(wanted, on_error="return") if wanted else {}
            for rel, label, split, size, _ in group:
                sample = Sample(rel, label, split)  # type: ignore[arg-type]
                if size > limit:
                    yield PartRecord(sample, None, f"FileTooLargeError: {size:,} bytes, over TE_MAX_FILE_BYTES")
                    continue
                data = _fetched(fetched, self._path(rel))
                if isinstance(data, Exception):
                    yield PartRecord(sample, None, f"{type(data).__name__}: {data}")
                else:
                    yield PartRecord(sample, data)

    def read_bytes(self, sample: Sample) -> bytes:
        path = self._path(sample.path)
        size = self.fs.size(path)
        if size is not None and size > max_file_bytes():
            raise FileTooLargeError(f"{size:,} bytes, over TE_MAX_FILE_BYTES")
        return self.fs.cat_file(path)


def _fetched(fetched: dict, path: str) -> Any:
    """fsspec's cat returns paths as its file system writes them (with or without the protocol)."""
    if path in fetched:
        return fetched[path]
    bare = path.split("://", 1)[-1]
    for key, value in fetched.items():
        if key.split("://", 1)[-1] == bare:
            return value
    return FileNotFoundError(path)


def open_remote_folder(spec: str) -> RemoteFiles:
    """CLASS/IMAGE or SPLIT/CLASS/IMAGE under a URL prefix.

    Raises:
        UsageError: no image below it, or no class folder.
    """
    fs, root = filesystem(spec)
    root = root.rstrip("/")
    listing = fs.find(root, detail=True)
    entries, top = [], set()
    for path in sorted(listing):
        info = listing[path]
        rel = path[len(root):].lstrip("/")
        parts = rel.split("/")
        if any(p.startswith(".") for p in parts) or not rel.lower().endswith(IMAGE_EXTENSIONS) or len(parts) < 2:
            continue
        top.add(parts[0])
        entries.append((rel, parts, int(info.get("size") or 0), str(info.get("ETag") or info.get("etag") or "")))
    if not entries:
        raise UsageError(f"--data {spec}: no images in class folders there (expected CLASS/IMAGE or "
                         "SPLIT/CLASS/IMAGE, or tar shards / Parquet files)")
    split_layout = all(t.lower() in SPLIT_ALIASES for t in top)
    out = []
    for rel, parts, size, etag in entries:
        if split_layout:
            if len(parts) < 3:
                continue
            out.append((rel, parts[1], SPLIT_ALIASES[parts[0].lower()], size, etag))
        else:
            out.append((rel, parts[0], None, size, etag))
    return RemoteFiles(fs, root, out, spec, class_names_from(e[1] for e in out) if out else None)


def open_remote_manifest(spec: str) -> RemoteFiles:
    """A CSV (path,label[,split]) or JSONL manifest at a URL, paths relative to the manifest's folder.

    Raises:
        UsageError: unreadable, empty, or a row a local manifest would refuse (the same checks and words).
    """
    fs, path = filesystem(spec)
    try:
        info = fs.info(path)
        text = fs.cat_file(path).decode("utf-8-sig", "surrogateescape")
    except OSError as exc:
        raise UsageError(f"--data {spec}: cannot read the manifest ({exc})") from None
    # The checks and messages of a local manifest (`data.sources.manifest_rows`), over the fetched text.
    rows = [row[1:] for row in manifest_rows(io.StringIO(text, newline=""), spec.lower().endswith(".csv"), spec)]
    if not rows:
        raise UsageError(f"--data {spec}: the manifest lists no images")
    # No request per image to learn its size and etag: a part's version is the manifest's own (its etag), so
    # an edited manifest is read again whole; an image replaced under the same name is not noticed.
    version = str(info.get("ETag") or info.get("etag") or info.get("mtime") or "")
    entries = [(p, label, split, 0, version) for p, label, split in rows]
    return RemoteFiles(fs, path.rsplit("/", 1)[0], entries, spec, None)
