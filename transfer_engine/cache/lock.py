"""The writer lock: one process at a time changes a cache; readers never take it.

An advisory `fcntl.flock` on `DIR/writer.lock`. The kernel drops it when the holder dies (kill -9
included), so a crashed writer never leaves a stale lock. Writers take it per operation (one append
batch, one data set), so two writer processes interleave their batches rather than one waiting for the
other to finish its whole job.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from pathlib import Path
from types import TracebackType

from transfer_engine.errors import CacheError


class LockTimeoutError(CacheError):
    """Another process held the writer lock for longer than we were willing to wait."""


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
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
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
        # Who holds it, for the message above; informational only (the flock is the lock).
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{os.getpid()}\n".encode(), 0)
