"""Reading an image file's bytes without hanging and without running out of memory.

Data sets hold whatever a disk holds: a FIFO or a device named like an image, a manifest line pointing at
/dev/zero, a file that grows while it is read. `read_image_file` opens with O_NONBLOCK (opening a FIFO
that has no writer then returns at once instead of waiting forever), checks with fstat on the open file
that it is a regular file (no race between a stat and the open), and reads at most `max_file_bytes()`
bytes (one byte more tells a file that is too large, whatever size it claims). Every refusal is an
`OSError` subclass, so every caller that already reports unreadable files as skipped reports these too.

The limit is TE_MAX_FILE_BYTES (bytes; default 256 MiB: far above any photo, and a worst case of
`workers` such files in memory at once stays in the low GB).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from transfer_engine.errors import UsageError

DEFAULT_MAX_FILE_BYTES = 256 * 1024 * 1024
_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


class NotARegularFileError(OSError):
    """The path names a FIFO, a device, a socket or a folder: te reads images from regular files only."""


class FileTooLargeError(OSError):
    """The file holds more than TE_MAX_FILE_BYTES bytes."""


def env_limit(name: str, default: int) -> int:
    """A positive integer setting from the environment variable `name` (`default` when unset).

    Raises:
        UsageError: the variable is set to something that is not a positive integer.
    """
    text = os.environ.get(name, "").strip().replace("_", "")
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise UsageError(f"{name}={os.environ[name]!r}: expected a positive whole number")
    return value


def max_file_bytes() -> int:
    """The most bytes te reads from one image file (TE_MAX_FILE_BYTES, default 256 MiB)."""
    return env_limit("TE_MAX_FILE_BYTES", DEFAULT_MAX_FILE_BYTES)


def read_image_file(path: str | os.PathLike, limit: int | None = None) -> bytes:
    """The bytes of the regular file at `path`, at most `limit` (default `max_file_bytes()`).

    Raises:
        NotARegularFileError: a FIFO, device, socket or folder (it is opened without blocking, never read).
        FileTooLargeError: more than `limit` bytes.
        OSError: missing, unreadable, or a name the operating system cannot take (e.g. a NUL in it).
    """
    limit = max_file_bytes() if limit is None else limit
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except (ValueError, UnicodeError) as exc:  # an embedded NUL, a lone surrogate from a manifest
        raise OSError(f"not a valid file name ({exc})") from None
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotARegularFileError(f"not a regular file ({_kind(st.st_mode)}); te reads images from regular "
                                       "files only")
        if st.st_size > limit:
            raise FileTooLargeError(_too_large(st.st_size, limit))
        return _read_bounded(fh, st.st_size, limit)


def _read_bounded(fh, size: int, limit: int) -> bytes:
    """All of `fh`, refusing more than `limit` bytes. The first read asks for the size fstat gave (+1, to
    see the end), not for `limit`: `read(n)` allocates n bytes up front, and 256 MiB per image made the
    heap peak of an extraction 256 MiB per reading thread. A size of 0 proves nothing (/proc files) and a
    file may grow while it is read, so reading goes on, in 1 MiB chunks, up to the limit. A read that
    returns less than it asked for is the end (a buffered read is short only there): asking again "to see
    EOF" would allocate another 1 MiB per image, and the heap peak would then depend on how many reading
    threads overlap."""
    chunks, total, want = [], 0, (size + 1 if size else 1 << 16)
    while True:
        ask = min(want, limit + 1 - total)
        chunk = fh.read(ask)
        chunks.append(chunk)
        total += len(chunk)
        if total > limit:
            raise FileTooLargeError(_too_large(None, limit))
        if len(chunk) < ask:
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)
        want = 1 << 20


def is_regular_file(path: Path) -> bool:
    """True when `path` (followed through symlinks) is a regular file; never opens it."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def _kind(mode: int) -> str:
    return next((name for check, name in _KINDS if check(mode)), "not a plain file")


def _too_large(size: int | None, limit: int) -> str:
    held = f"{size / 2**20:.1f} MiB, over" if size is not None else "more than"
    return (f"the file holds {held} te's limit of {limit / 2**20:.1f} MiB per image file "
            "(set TE_MAX_FILE_BYTES to raise it)")
