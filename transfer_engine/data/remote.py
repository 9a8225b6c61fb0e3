"""Where large data sets live: fsspec URLs (s3://, gs://, https://, file://), brace patterns and list files.

`--data` names a set of *parts* (webdataset tar shards, Parquet or Arrow files) in one of three ways:
    shards/train-{000000..000127}.tar       a brace pattern (numeric ranges keep their zero padding;
                                            `{a,b}` lists; several braces multiply), local or at a URL
    s3://bucket/shards/                     a folder or prefix holding such files (listed, sorted)
    shards.txt                              a list file: one path or URL a line (relative to the list)
A pattern is expanded here, never by a shell: an unexpanded brace in a URL makes a job read one shard of
many without a word (docs/scale.md).

Each part is opened through fsspec (`fsspec.core.url_to_fs`); a URL whose file system needs a package that
is missing (s3fs for s3://, gcsfs for gs://) is a one-line error naming it. `PartRef` carries what a
re-run compares to know a finished part is unchanged without reading it: its size and its etag (object
stores) or modification time (local files).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from transfer_engine.errors import UsageError

_BRACE = re.compile(r"\{([^{}]*)\}")
_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)$")
MAX_PATTERN_PARTS = 1_000_000  # a typo such as {0..99999999} is refused before a list of that size is built


def is_url(spec: str) -> bool:
    """True for `scheme://...` (fsspec's protocols), False for local paths (a Windows drive is local)."""
    head, sep, _ = spec.partition("://")
    return bool(sep) and head.isidentifier() and len(head) > 1


def has_pattern(spec: str) -> bool:
    return _BRACE.search(spec) is not None


def expand_braces(pattern: str) -> list[str]:
    """Every name a brace pattern stands for, in order (as bash and webdataset expand them).

    `{000..012}` keeps the width of its bounds (000, 001, ...); `{a,b}` is a list; several braces multiply.

    Raises:
        UsageError: an empty or malformed brace, or a pattern of more than MAX_PATTERN_PARTS names.
    """
    match = _BRACE.search(pattern)
    if match is None:
        return [pattern]
    body = match.group(1)
    ranged = _RANGE.match(body)
    if ranged:
        lo, hi = int(ranged.group(1)), int(ranged.group(2))
        width = len(ranged.group(1)) if ranged.group(1).lstrip("-").startswith("0") else 0
        step = 1 if hi >= lo else -1
        if abs(hi - lo) + 1 > MAX_PATTERN_PARTS:
            raise UsageError(f"--data {pattern}: the range {{{body}}} names {abs(hi - lo) + 1:,} parts; "
                             f"at most {MAX_PATTERN_PARTS:,}")
        choices = [str(n).zfill(width) for n in range(lo, hi + step, step)]
    elif "," in body:
        choices = body.split(",")
    else:
        raise UsageError(f"--data {pattern}: {{{body}}} is neither a range {{000..127}} nor a list {{a,b}}")
    head, tail = pattern[:match.start()], pattern[match.end():]
    out: list[str] = []
    for choice in choices:
        out.extend(expand_braces(head + choice + tail))
        if len(out) > MAX_PATTERN_PARTS:
            raise UsageError(f"--data {pattern}: the pattern names more than {MAX_PATTERN_PARTS:,} parts")
    return out


def filesystem(url: str) -> tuple[Any, str]:
    """(fsspec file system, path in it) for a URL or a local path.

    Raises:
        UsageError: the URL's protocol is unknown, or needs a package that is not installed.
    """
    try:
        import fsspec
    except ImportError:  # torch depends on fsspec: only a broken environment lacks it
        raise UsageError("reading --data from a URL or shards needs fsspec (pip install fsspec)") from None
    try:
        return fsspec.core.url_to_fs(url)
    except ImportError as exc:
        missing = getattr(exc, "name", None) or str(exc)
        raise UsageError(f"--data {url}: its protocol needs a package that is not installed ({missing}); e.g. "
                         "pip install s3fs for s3://, gcsfs for gs://") from None
    except ValueError as exc:
        raise UsageError(f"--data {url}: {exc}") from None


@dataclass(frozen=True)
class PartRef:
    """One part of a data set (a shard, a Parquet or Arrow file) and what tells a changed one.

    Attributes:
        url: as te opens it (a URL, or an absolute local path).
        name: how records name it (relative to the data set's root: `train-000003.tar`).
        size: bytes.
        version: the object's etag, else its modification time, else "" (size alone then).
    """

    url: str
    name: str
    size: int
    version: str

    def fields(self) -> dict:
        return {"url": self.url, "name": self.name, "size": self.size, "version": self.version}


def part_ref(fs: Any, path: str, url: str, name: str) -> PartRef:
    """The PartRef of one file (an OSError when it is not there or cannot be read)."""
    info = fs.info(path)
    if info.get("type") == "directory":
        raise IsADirectoryError(f"{url} is a folder")
    version = info.get("ETag") or info.get("etag") or info.get("mtime") or info.get("LastModified") or ""
    return PartRef(url=url, name=name, size=int(info.get("size") or 0), version=str(version).strip('"'))


def listed_parts(specs: list[str], shown: str, suffixes: tuple[str, ...]) -> list[tuple[Any, str, str, str]]:
    """The files `--data` names: (fs, path, url, name), in order.

    Each of `specs` is a brace pattern, a single file, a glob, or a folder/prefix (its files ending in
    `suffixes`, sorted, recursively). Names are relative to the common folder of all the files.

    Raises:
        UsageError: nothing there, or no file with those suffixes (`shown` is the --data value).
    """
    found: list[tuple[Any, str, str]] = []
    for one in (name for spec in specs for name in expand_braces(spec)):
        fs, path = filesystem(one)
        if has_glob(path):
            found += [(fs, p, url_of(fs, p)) for p in sorted(fs.glob(path)) if p.lower().endswith(suffixes)]
        elif fs.isdir(path):
            found += [(fs, p, url_of(fs, p)) for p in sorted(fs.find(path)) if p.lower().endswith(suffixes)]
        else:
            found.append((fs, path, url_of(fs, path)))
    if not found:
        raise UsageError(f"--data {shown}: no {' or '.join(suffixes)} files there")
    root = _common_folder([p for _, p, _ in found])
    return [(fs, p, url, p[len(root):].lstrip("/") if root else p) for fs, p, url in found]


def has_glob(path: str) -> bool:
    return any(c in path for c in "*?[")


def is_local(fs: Any) -> bool:
    """True for fsspec's local file system (paths there are plain paths, read as files)."""
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in ("file", "local")


def url_of(fs: Any, path: str) -> str:
    """A URL that opens `path` again (local files stay plain absolute paths)."""
    return path if is_local(fs) else fs.unstrip_protocol(path)


def _common_folder(paths: list[str]) -> str:
    if len(paths) == 1:
        return paths[0].rsplit("/", 1)[0] + "/" if "/" in paths[0] else ""
    parts = [p.split("/")[:-1] for p in paths]
    common: list[str] = []
    for level in zip(*parts):
        if len(set(level)) != 1:
            break
        common.append(level[0])
    return "/".join(common) + "/" if common else ""


def read_list_file(path: str) -> list[str]:
    """The entries of a list file (one path or URL a line; `#` comments and blank lines skipped), relative
    entries resolved against the list's own folder."""
    fs, inner = filesystem(path)
    with fs.open(inner, "rt", encoding="utf-8") as fh:
        lines = [line.strip() for line in fh]
    base = path.rsplit("/", 1)[0] if "/" in path else "."
    entries = [line for line in lines if line and not line.startswith("#")]
    return [e if is_url(e) or e.startswith("/") else f"{base}/{e}" for e in entries]
