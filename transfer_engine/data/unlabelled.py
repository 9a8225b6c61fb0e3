"""Images to run a model on: a data source as `--data` names it, or unlabelled image files (a folder with
images directly inside it, or one image file). te predict classifies them; te export checks and calibrates
on them when given --check-data, --calibration-data or --selection-data.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

from transfer_engine.core.paths import display_path
from transfer_engine.data.files import read_image_file
from transfer_engine.data.sources import DataSource, Sample, check_read_limits, open_source
from transfer_engine.data.walk import IMAGE_EXTENSIONS, FolderWalk
from transfer_engine.errors import UsageError


class ImageFiles(DataSource):
    """Unlabelled image files: every image below a folder (recursively, walked as `FolderWalk` does), or a
    single file."""

    def __init__(self, root: Path, files: list[str], skipped: list[dict[str, str]] | None = None) -> None:
        self.root = root
        self.name = str(root)
        self.class_names = []
        self.files = files
        self._skipped = list(skipped or [])

    def samples(self) -> Iterator[Sample]:
        for rel in self.files:
            yield Sample(rel, None, None)  # type: ignore[arg-type]  (no label: None)

    def read_bytes(self, sample: Sample) -> bytes:
        return read_image_file(self.root / sample.path)

    def skipped(self) -> list[dict[str, str]]:
        return self._skipped


def open_images(spec: str, follow_symlinks: bool = False) -> DataSource:
    """A source of images: `open_source`'s (folder of CLASS/IMAGE, manifest, builtin:NAME) or unlabelled
    files (a folder with images directly inside it, or one image file).

    Args:
        spec: what --data names.
        follow_symlinks: in a folder, follow symlinks that lead out of it.

    Raises:
        UsageError: nothing there, or no images in it.
    """
    check_read_limits()
    path = Path(spec).expanduser()
    if not spec.startswith("builtin:") and path.suffix.lower() in IMAGE_EXTENSIONS and path.exists() \
            and not path.is_dir():
        return ImageFiles(path.parent.resolve(), [path.name])  # a FIFO or device: reported when read
    if path.is_dir() and _holds_image_files(path):
        walk = FolderWalk(path.resolve(), follow_symlinks=follow_symlinks)
        files = list(walk.images(""))
        return ImageFiles(walk.root, files, walk.skipped)
    return open_source(spec, follow_symlinks, labels_required=False)


def _holds_image_files(folder: Path) -> bool:
    """True when images sit directly in `folder` (a flat folder to predict on, not CLASS/IMAGE)."""
    try:
        with os.scandir(folder) as it:
            return any(not e.name.startswith(".") and e.name.lower().endswith(IMAGE_EXTENSIONS)
                       and not e.is_dir() for e in it)
    except OSError as exc:
        raise UsageError(f"--data {display_path(str(folder))}: cannot read the folder ({exc.strerror or exc})") from None


__all__ = ["ImageFiles", "open_images"]
