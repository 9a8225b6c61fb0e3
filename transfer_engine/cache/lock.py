"""The writer lock: one process at a time changes a cache; readers never take it.

An advisory `fcntl.flock` on `DIR/writer.lock`. The kernel drops it when the holder dies (kill -9
included), so a crashed writer never leaves a stale lock. Writers take it per operation (one append
batch, one data set), so two writer processes interleave their batches rather than one waiting for the
other to finish its whole job.

Every change of a cache starts here, so this is also where a cache that cannot be changed says so in
one line (`ReadOnlyCacheError`: a read-only file system, or a folder this user may not write), and this
module holds the one line for a full disk (`DiskFullError`, naming the cache and its file system) that
the index, the shard writer and the record spool raise through `filesystem_errors`.
"""

from __future__ import annotations

import errno
import fcntl
import os
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Iterator

from transfer_engine.errors import CacheError


class LockTimeoutError(CacheError):
    """Another process held the writer lock for longer than we were willing to wait."""


class ReadOnlyCacheError(CacheError):
    """A command that must change a cache met a cache on a read-only file system (or a folder it may not
    write)."""


class DiskFullError(CacheError):
    """The disk that holds a cache filled up while te wrote to it; nothing committed is lost."""


# Below this many free bytes, sqlite's vague "disk I/O error" (its -shm or -wal could not grow) is the
# disk being full: sqlite reports ENOSPC on those files that way.
_NEARLY_FULL = 256 << 10


def on_read_only_fs(path: Path) -> bool:
    """True when `path` (or, while it does not exist, its nearest existing parent) lies on a file system
    mounted read-only (nothing can write there through it)."""
    try:
        return bool(os.statvfs(_existing(path)).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def read_only_error(root: Path, exc: BaseException | None = None) -> ReadOnlyCacheError:
    """The one line for a change of a cache that cannot be written."""
    root = Path(root)
    if on_read_only_fs(root) or (isinstance(exc, OSError) and exc.errno == errno.EROFS):
        return ReadOnlyCacheError(f"{root} is on a read-only file system; this command changes the cache, so "
                                  "remount it read-write or copy the cache to a writable disk (reading it works "
                                  "as it is: te cache info, te cache verify, te train)")
    return ReadOnlyCacheError(f"{root} is not writable for this user ({exc}); this command changes the cache, so "
                              "run it as the cache's owner or make the folder writable (reading it works as it is)")


def _existing(path: Path) -> Path:
    """`path`, or its nearest parent that exists (a cache folder not created yet lies on its parent's disk)."""
    path = Path(path)
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


def _free_bytes(path: Path) -> int | None:
    try:
        st = os.statvfs(_existing(path))
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def _mount_point(path: Path) -> Path:
    path = _existing(Path(os.path.abspath(path)))
    while not os.path.ismount(path) and path.parent != path:
        path = path.parent
    return path


def disk_full_error(root: Path, exc: BaseException | None = None) -> DiskFullError:
    """The one line for a cache whose disk is full: which disk, which cache, what to do."""
    root = Path(root)
    free = _free_bytes(root)
    device = f"the file system at {_mount_point(root)}"
    if free is not None:
        device += f", {free >> 10} KiB free"
    return DiskFullError(f"no space left on the device of {root} ({device}): free space and run the same command "
                         "again; nothing committed is lost")


def is_read_only(exc: BaseException) -> bool:
    """True for an error that means "this file system, or this folder, cannot be written"."""
    if isinstance(exc, OSError):
        return exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM)
    return isinstance(exc, sqlite3.OperationalError) and "readonly database" in str(exc).lower()


def is_disk_full(exc: BaseException, root: Path | None = None) -> bool:
    """True for an error that means "the disk is full" (ENOSPC, a quota, sqlite's SQLITE_FULL, or sqlite's
    "disk I/O error" while the disk of `root` has next to no free space)."""
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    if isinstance(exc, sqlite3.OperationalError):
        text = str(exc).lower()
        if "database or disk is full" in text:
            return True
        if "disk i/o error" in text and root is not None:
            free = _free_bytes(Path(root))
            return free is not None and free < _NEARLY_FULL
    return False


@contextmanager
def filesystem_errors(root: Path, *, writing: bool = True) -> Iterator[None]:
    """A full disk, or (when `writing`) a read-only one, met inside becomes the one-line error naming the
    cache `root`; the first such error is the one raised (its cause is kept for TE_DEBUG)."""
    try:
        yield
    except (OSError, sqlite3.OperationalError) as exc:
        if is_disk_full(exc, root):
            raise disk_full_error(root, exc) from exc
        if writing and is_read_only(exc):
            raise read_only_error(root, exc) from exc
        raise


class WriterLock:
    """A re-entrant, thread-safe, inter-process exclusive lock on one cache directory.

    Use as a context manager; nesting in one thread is allowed (only the outermost level takes and
    releases the file lock).

    Args:
        path: the lock file (created when missing).
        timeout: seconds to wait for another process before raising `LockTimeoutError`.
    """

    def __init__(self, path: Path, timeout: float = 60.0) -> None:
        self.path = Path(path)
        self.timeout = float(timeout)
        self._threads = threading.RLock()
        self._depth = 0
        self._fd: int | None = None

    def __enter__(self) -> "WriterLock":
        deadline = time.monotonic() + self.timeout
        if not self._threads.acquire(timeout=max(self.timeout, 0.0)):
            raise LockTimeoutError(f"another thread held the writer lock of {self.path.parent} for over "
                                   f"{self.timeout:g} s")
        try:
            if self._depth == 0:
                self._acquire_file(deadline)
            self._depth += 1
        except BaseException:
            self._threads.release()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._depth -= 1
        try:
            if self._depth == 0 and self._fd is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._threads.release()

    @property
    def held(self) -> bool:
        """True while this object holds the lock (in any thread)."""
        return self._depth > 0

    def close(self) -> None:
        """Close the lock file (releasing the lock if held)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _acquire_file(self, deadline: float) -> None:
        if self._fd is None:
            try:
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:  # a cache on a read-only disk: every change stops here, in one line
                if is_read_only(exc):
                    raise read_only_error(self.path.parent, exc) from exc
                if is_disk_full(exc):
                    raise disk_full_error(self.path.parent, exc) from exc
                raise
        delay = 0.001
        while True:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = os.pread(self._fd, 32, 0).decode(errors="replace").strip() or "unknown"
                    raise LockTimeoutError(
                        f"another process (pid {holder}) has held the writer lock of {self.path.parent} for "
                        f"over {self.timeout:g} s; let it finish, or open the cache with a longer lock_timeout"
                    ) from None
                time.sleep(delay)
                delay = min(delay * 2, 0.05)
        # Who holds it, for the message above; informational only (the flock is the lock), so a full disk
        # that refuses these few bytes stops nothing here (the change itself then says the disk is full).
        try:
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:
            pass
