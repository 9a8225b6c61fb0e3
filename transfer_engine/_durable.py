"""Making files and renames survive a crash: the fsync steps the cache, the run writer, fine-tuning
checkpoints, leaderboards and exports share. A rename is durable only once the directory that holds it
is fsynced too, and a new directory only once its parent is.

    write_text_durably(path, text)          a whole file, replaced atomically (the old one or the new one)
    write_durably(path, lambda tmp: ...)    the same for a writer that takes a path (torch.save, safetensors)
    replace_durably(tmp, target)            a finished temporary file moved into place
    makedirs_durably(path)                  missing folders created, and their entries made durable
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable


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


def temporary_file(target: Path) -> Path:
    """A new, empty file beside `target` for this write only (".NAME.tmp-RANDOM"), made with O_EXCL.

    The name cannot be guessed and an existing path (a symlink planted there) is never opened, so a
    write can only land in a file this call created. Its mode is what a plain `open(target, "w")` would
    give (0666 less the umask), not mkstemp's 0600, so the replaced file keeps the usual permissions.
    """
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.tmp-")
    try:
        os.fchmod(fd, usual_mode())
    finally:
        os.close(fd)
    return Path(name)


def usual_mode() -> int:
    """The mode a plain `open(path, "w")` gives a new file: 0666 less the umask. Writers that create a file
    their own way (mkstemp, safetensors' save_file, which renames its own 0600 temporary file into place)
    get this mode set afterwards, so every file te writes has the same permissions."""
    mask = os.umask(0o022)  # reading the umask means setting it: put it back at once
    os.umask(mask)
    return 0o666 & ~mask


def write_durably(target: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """Write `target` through `write(tmp_path)` into a temporary file, then `replace_durably` it.

    A crash at any instant leaves the old file or the new one, never a torn one; an error in `write`
    leaves the old file and removes the temporary one. The temporary file is `temporary_file`'s, and
    the rename replaces `target` itself: a symlink at `target` becomes a regular file, and the file it
    pointed to is left alone.

    Returns:
        `target` as a Path.
    """
    target = Path(target)
    tmp = temporary_file(target)
    try:
        write(tmp)
        os.chmod(tmp, usual_mode())  # a writer may have replaced the file with one of its own mode
        replace_durably(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


def write_text_durably(target: str | os.PathLike, text: str, *, encoding: str = "utf-8",
                       errors: str = "strict") -> Path:
    """Write `text` to `target` atomically and durably (see `write_durably`)."""
    return write_durably(target, lambda tmp: tmp.write_text(text, encoding=encoding, errors=errors))


def makedirs_durably(path: str | os.PathLike) -> Path:
    """Create `path` and its missing parents, fsyncing the parent of each folder created.

    A folder made by a plain `mkdir` can vanish in a crash with everything written into it since;
    after this returns, the folders are on disk. Existing folders cost nothing.
    """
    path = Path(path)
    missing = []
    probe = path
    while not probe.is_dir():
        missing.append(probe)
        if probe.parent == probe:
            break
        probe = probe.parent
    for folder in reversed(missing):
        folder.mkdir(exist_ok=True)
        fsync_dir(folder.parent)
    if missing:
        fsync_dir(path)
    return path
