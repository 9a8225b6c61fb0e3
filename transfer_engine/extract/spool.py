"""`RecordSpool`: a data set's records on their way to the cache, kept on disk instead of in memory.

Extraction learns each image's record (path, content key, label, split) when it hashes the file, long
before the data set can be written (the data-set record is written once, at the end, in one
transaction, so a killed run never leaves a half data set). Holding millions of records in a list
would make memory grow with the data set; the spool appends them to an anonymous temporary file in the
cache's directory instead (not /tmp, which is often RAM), one JSON line each, in data-set order.

The file has no name (O_TMPFILE where the file system offers it, else created and unlinked at once),
so it disappears with its process, even after kill -9: nothing is ever left to clean up.

A cache on a read-only file system, or on a full disk, is the one line that says so (naming the cache),
from whichever call meets it; and closing a spool while an error is already on its way never raises a
second one over it (its unflushed bytes meet the same full disk again).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Iterator

from transfer_engine.cache.lock import filesystem_errors

SpooledRecord = tuple  # (index in the data set, path, key, label, split)


class RecordSpool:
    """Records appended in data-set order, then read back once or more, in that order.

    Args:
        directory: where the anonymous file lives (the cache directory: same disk, not RAM).

    Attributes:
        count: records written.
        last_index: the data-set index of the last record written (-1 when empty).
    """

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)
        with filesystem_errors(self.directory):
            self._file = tempfile.TemporaryFile(mode="w+b", dir=directory, prefix=".te-spool-")
        self.count = 0
        self.last_index = -1

    def write(self, index: int, path: str, key: str, label: int | None, split: str) -> None:
        """Append one record; `index` must grow from one call to the next (the merge relies on it)."""
        if index <= self.last_index:
            raise ValueError(f"spooled records must come in data-set order: {index} after {self.last_index}")
        line = json.dumps([index, path, key, label, split], separators=(",", ":")).encode() + b"\n"
        with filesystem_errors(self.directory):
            self._file.write(line)
        self.count += 1
        self.last_index = index

    def __iter__(self) -> Iterator[SpooledRecord]:
        """The records written so far, in order (a fresh pass each time; do not write meanwhile)."""
        with filesystem_errors(self.directory):
            self._file.flush()
        self._file.seek(0)
        for line in self._file:
            yield tuple(json.loads(line))
        self._file.seek(0, os.SEEK_END)

    def close(self) -> None:
        with filesystem_errors(self.directory):
            self._file.close()

    def discard(self) -> None:
        """Close without a word: the file is anonymous, so bytes it could not flush are lost to no one."""
        try:
            self._file.close()
        except OSError:
            pass

    def __enter__(self) -> "RecordSpool":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:  # the first error is the one to report, not the full disk a final flush meets again
            self.discard()
