"""Walking an image folder: what cannot be read is skipped with a reason, symlinks follow one rule, loops end.

Real data sets hold unreadable sub-folders, links made by other tools, and links that lead back up the
tree. `FolderWalk` lists a folder's images the way `te` reads them and records everything it leaves
out, as {"path", "reason"} entries in `skipped` (reported with the files that failed):

- a folder that cannot be listed (permission denied, vanished) is skipped, the rest of the walk goes on;
- a symlink whose target te reads anyway (a folder or image of the same data set) is skipped: following
  it would list the same images twice, under a second name and so possibly a second label. This is what
  a user who links `kittens -> cats` gets told, instead of the images of cats silently labelled kittens
  too. A link to a hidden folder inside the root (`cats -> .store/cats`) is read under the link's name;
- a symlink out of the data root is followed only with `follow_symlinks` (`te extract --follow-symlinks`);
- a folder reached twice (a symlink loop, two links to one folder, a bind mount) is read once: every
  folder is identified by (device, inode) before it is entered.

Hidden entries (names starting with ".") are ignored, as before. Paths are relative to the root, as str
(names that are not valid UTF-8 come through as Python's surrogate escapes: lossless).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Iterator

from transfer_engine.core.paths import display_path as _shown

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")

_Identity = tuple[int, int]


class FolderWalk:
    """The images below a root folder, with what was left out and why.

    Args:
        root: the data root (resolved: symlinks are judged against it).
        follow_symlinks: follow symlinks that lead out of the root.
        class_depth: how deep the class folders sit (0: files anywhere count; 1: ROOT/CLASS/...;
            2: ROOT/SPLIT/CLASS/...). A linked file that te reads anyway is judged by it.

    Attributes:
        skipped: {"path", "reason"} of every folder or link left out since the last `reset`.
    """

    def __init__(self, root: Path, *, follow_symlinks: bool = False, class_depth: int = 0) -> None:
        self.root = root
        self.follow_symlinks = follow_symlinks
        self.class_depth = class_depth
        self.skipped: list[dict[str, str]] = []
        self._entered: dict[_Identity, str] = {}

    def reset(self) -> None:
        """Forget the folders entered and the skips recorded (a new pass over the data set)."""
        self.skipped = []
        self._entered = {}

    def folders(self, rel: str = "") -> list[str]:
        """Names of the folders directly inside `rel` (relative to the root) that te reads, sorted."""
        return [name for name, _ in self._entries(rel, dirs_only=True)]

    def images(self, rel: str, _chain: dict[_Identity, str] | None = None) -> Iterator[str]:
        """Image files below folder `rel`, recursively, as paths relative to the root, in sorted order.

        Sorting needs one folder's names at a time, never the whole tree's (about 70 bytes a file of the
        largest folder).
        """
        chain = dict(_chain) if _chain is not None else {}
        if not chain and rel:  # a walk from a class folder: a way back to the root is a loop too
            root_id = self._identity("")
            if root_id is not None:
                chain[root_id] = ""
        ident = self._identity(rel)
        if ident is None:
            return
        if ident in chain:
            self._skip(rel + "/", f"a symlink loop: it leads back to {_shown(chain[ident]) or 'the data root'}/")
            return
        if ident in self._entered:
            self._skip(rel + "/", f"the same folder as {_shown(self._entered[ident])}/, read once")
            return
        self._entered[ident] = rel
        chain[ident] = rel
        for name, is_dir in self._entries(rel):
            child = _join(rel, name)
            if is_dir:
                yield from self.images(child, chain)
            else:
                yield child

    def _entries(self, rel: str, dirs_only: bool = False) -> Iterable[tuple[str, bool]]:
        """(name, is a folder) of the folders (and, unless `dirs_only`, image files) in `rel` that te reads,
        sorted by name."""
        # Names alone, and the (few) folders apart: a (name, flag) tuple per file would add ~56 bytes a file
        # of the largest folder to what extraction holds (tests/extract/test_memory.py).
        names: list[str] = []
        folders: set[str] = set()
        try:
            with os.scandir(self.root / rel if rel else self.root) as it:
                for entry in it:
                    if entry.name.startswith("."):
                        continue
                    is_dir = self._kept(rel, entry, dirs_only)
                    if is_dir is not None:
                        names.append(entry.name)
                        if is_dir:
                            folders.add(entry.name)
        except OSError as exc:
            self._skip((rel or ".") + "/", f"{type(exc).__name__}: cannot read the folder ({exc.strerror or exc})")
        names.sort()
        return ((name, name in folders) for name in names)

    def _kept(self, rel: str, entry: os.DirEntry, dirs_only: bool) -> bool | None:
        """True for a folder to enter, False for an image file to list, None for an entry left out."""
        if not entry.is_symlink():
            if entry.is_dir(follow_symlinks=False):
                return True
            return False if not dirs_only and entry.name.lower().endswith(IMAGE_EXTENSIONS) else None
        return self._link_kept(_join(rel, entry.name), entry, dirs_only)

    def _link_kept(self, rel: str, entry: os.DirEntry, dirs_only: bool) -> bool | None:
        """The symlink rule (see the module docstring) for the link at `rel`."""
        image_name = not dirs_only and entry.name.lower().endswith(IMAGE_EXTENSIONS)
        try:
            target = Path(os.path.realpath(entry.path, strict=True))
            is_dir = target.is_dir()
        except (OSError, RuntimeError) as exc:
            if image_name:
                self._skip(rel, f"a broken symlink ({getattr(exc, 'strerror', None) or exc})")
            return None
        if not is_dir and not image_name:
            return None
        inside = _relative_to(target, self.root)
        if inside is None:
            if self.follow_symlinks:
                return is_dir
            self._skip(rel, f"a symlink out of the data root (to {_shown(str(target))}); pass --follow-symlinks "
                            "to read it")
            return None
        if self._read_anyway(inside, is_dir):
            where = f"{_shown(inside)}{'/' if is_dir else ''}" if inside else "the data root"
            self._skip(rel, f"a symlink to {where}, which te reads anyway: following it would count the same "
                            "images twice, under a second name")
            return None
        return is_dir

    def _read_anyway(self, inside: str, is_dir: bool) -> bool:
        """Whether the walk reaches the path `inside` (relative to the root) without the link."""
        parts = [p for p in inside.split("/") if p]
        if any(p.startswith(".") for p in parts):
            return False
        return is_dir or (len(parts) > self.class_depth and parts[-1].lower().endswith(IMAGE_EXTENSIONS))

    def _identity(self, rel: str) -> _Identity | None:
        try:
            st = os.stat(self.root / rel if rel else self.root)
        except OSError as exc:
            self._skip((rel or ".") + "/", f"{type(exc).__name__}: cannot read the folder ({exc.strerror or exc})")
            return None
        return st.st_dev, st.st_ino

    def _skip(self, rel: str, reason: str) -> None:
        self.skipped.append({"path": rel, "reason": reason})


def _join(rel: str, name: str) -> str:
    return f"{rel}/{name}" if rel else name


def _relative_to(path: Path, root: Path) -> str | None:
    try:
        return path.relative_to(root).as_posix() if path != root else ""
    except ValueError:
        return None
