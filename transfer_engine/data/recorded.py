"""A cached record's image, found again from what the cache recorded: its data set's `--data` and its path.

te doctor draws thumbnails of a few records and writes manifests that name the records' files; neither may
walk a folder of millions of files to find one, so the rule each source reads a sample's file by is
applied directly: a folder's records are relative to it, a manifest's to the manifest's folder (or
absolute), a built-in set's are "builtin:NAME/INDEX".
"""

from __future__ import annotations

import functools
from pathlib import Path

from transfer_engine.data.builtin import BUILTIN_PREFIX


def recorded_file(data: str, path: str) -> Path | None:
    """The file of the record at `path` of a data set extracted from `data` (None for a built-in set)."""
    if data.startswith(BUILTIN_PREFIX):
        return None
    root = Path(data)
    root = root if root.is_dir() else root.parent
    p = Path(path)
    return p if p.is_absolute() else root / p


def recorded_image(data: str, path: str):
    """The record's image as an RGB PIL image.

    Raises:
        OSError: the file is gone or is not an image any more.
    """
    from transfer_engine.data.decode import decode_image
    from transfer_engine.data.files import read_image_file

    if data.startswith(BUILTIN_PREFIX):
        return _builtin(path.rsplit("/", 1)[0]).pil(int(path.rsplit("/", 1)[1]))
    return decode_image(read_image_file(recorded_file(data, path)))


@functools.lru_cache(maxsize=2)
def _builtin(name: str):
    from transfer_engine.data.builtin import load_builtin

    return load_builtin(name)
