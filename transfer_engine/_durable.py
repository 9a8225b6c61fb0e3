"""Making files and renames survive a crash: the fsync steps the cache, the run writer and fine-tuning
checkpoints share. A rename is durable only once the directory that holds it is fsynced too."""

from __future__ import annotations

import os
from pathlib import Path


def fsync_file(path: Path) -> None:
    """Flush a written file's bytes to disk."""
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def fsync_dir(path: Path) -> None:
    """Flush a directory's entries (a file created, renamed or removed in it) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_durably(tmp: Path, target: Path) -> None:
    """Move the finished file `tmp` onto `target` atomically: its bytes, then the rename, reach the disk."""
    fsync_file(tmp)
    os.replace(tmp, target)
    fsync_dir(target.parent)
