"""Data sources for `--data`: an image folder, a CSV/JSONL manifest, or a built-in set.

Every source streams `Sample`s (path, label, split) in a deterministic order and reads a sample's bytes
on demand, so a data set of millions of files never sits in memory. Keys are SHA-256 digests of the
bytes (`content_key`): the cache is addressed by content, not by file name.

Layouts understood (as torchvision's ImageFolder, plus split folders):
    ROOT/CLASS/IMAGE                        no splits: te derives a stable split from the keys
    ROOT/{train,val,test}/CLASS/IMAGE       splits from the folders (any subset of them)
    manifest.csv  with a header: path,label[,split]   (paths relative to the manifest)
    manifest.jsonl  one {"path": ..., "label": ..., "split": ...} object per line
    builtin:digits                          scikit-learn's 1,797 real handwritten digits
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from transfer_engine.cache.records import content_key  # the cache's key: SHA-256 of the bytes
from transfer_engine.errors import UsageError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
SPLITS = ("train", "val", "test")
SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val",
                 "validation": "val", "dev": "val", "test": "test", "testing": "test"}


@dataclass(frozen=True)
class Sample:
    """One image of a data set.

    Attributes:
        path: where it came from: relative to the folder or manifest, or "builtin:NAME/INDEX".
        label: index into the source's class_names.
        split: "train", "val", "test", or None when the source does not say (te then derives one).
    """

    path: str
    label: int
    split: str | None = None


def derived_split(key: str, val_fraction: float = 0.15, test_fraction: float = 0.15) -> str:
    """A split chosen by the content key alone: stable across runs and unaffected by other files.

    The first 8 bytes of the SHA-256 key are uniform, so each class is split in about the asked
    proportions (stratified in expectation), and adding images never moves an existing one.
    """
    u = int(key[:16], 16) / float(1 << 64)
    if u < test_fraction:
        return "test"
    if u < test_fraction + val_fraction:
        return "val"
    return "train"


class DataSource:
    """Base of all sources: a name, class names, a stream of samples, and their bytes."""

    name: str
    class_names: list[str]

    def samples(self) -> Iterator[Sample]:
        raise NotImplementedError

    def read_bytes(self, sample: Sample) -> bytes:
        """The file's bytes (OSError when it cannot be read: the caller records it as failed)."""
        raise NotImplementedError

    def decode(self, sample: Sample, data: bytes):
        """An RGB PIL image from the bytes (raises on a truncated or non-image file)."""
        from PIL import Image

        image = Image.open(io.BytesIO(data))
        image.load()  # decode now: a truncated file fails here, not later in a worker
        return image.convert("RGB")

    def describe(self) -> str:
        return self.name


class FolderSource(DataSource):
    """ROOT/CLASS/IMAGE or ROOT/SPLIT/CLASS/IMAGE."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.name = str(root)
        top = _subdirs(root)
        split_dirs = {d: SPLIT_ALIASES[d.lower()] for d in top if d.lower() in SPLIT_ALIASES}
        if split_dirs and len(split_dirs) == len(top):
            self.split_dirs = dict(sorted(split_dirs.items(), key=lambda kv: SPLITS.index(kv[1])))
            classes = sorted({c for d in self.split_dirs for c in _subdirs(root / d)})
        else:
            self.split_dirs = {}
            classes = top
        if not classes:
            raise UsageError(f"--data {root}: no class folders found (expected ROOT/CLASS/IMAGE or "
                             f"ROOT/train|val|test/CLASS/IMAGE)")
        self.class_names = classes

    def samples(self) -> Iterator[Sample]:
        index = {c: i for i, c in enumerate(self.class_names)}
        groups = [(d, s) for d, s in self.split_dirs.items()] or [("", None)]
        for folder, split in groups:
            base = self.root / folder if folder else self.root
            for cls in self.class_names:
                class_dir = base / cls
                if not class_dir.is_dir():
                    continue
                for rel in _image_files(class_dir):
                    path = Path(folder, cls, rel).as_posix() if folder else Path(cls, rel).as_posix()
                    yield Sample(path, index[cls], split)

    def read_bytes(self, sample: Sample) -> bytes:
        return (self.root / sample.path).read_bytes()


class ManifestSource(DataSource):
    """A CSV (header: path,label[,split]) or JSONL manifest; paths relative to the manifest's folder."""

    def __init__(self, manifest: Path) -> None:
        self.manifest = manifest
        self.root = manifest.parent
        self.name = str(manifest)
        # One validating pass for the class names (a set: as big as the number of classes); samples()
        # reads the file again, so a manifest of millions of lines never sits in memory.
        labels: set[str] = set()
        for _, _, label, _ in self._rows():
            labels.add(label)
        if not labels:
            raise UsageError(f"--data {manifest}: the manifest lists no images")
        if all(_is_int(v) for v in labels):
            self.class_names = [str(v) for v in sorted({int(v) for v in labels})]
        else:
            self.class_names = sorted(labels)

    def _rows(self) -> Iterator[tuple[int, str, str, str | None]]:
        suffix = self.manifest.suffix.lower()
        with self.manifest.open(newline="", encoding="utf-8") as fh:
            if suffix == ".csv":
                reader = csv.DictReader(fh)
                missing = {"path", "label"} - set(reader.fieldnames or [])
                if missing:
                    raise UsageError(f"--data {self.manifest}: the CSV header needs the columns path,label[,split]; "
                                     f"missing {', '.join(sorted(missing))}")
                for n, row in enumerate(reader, start=2):
                    yield self._checked(n, row.get("path"), row.get("label"), row.get("split"))
            else:
                for n, line in enumerate(fh, start=1):
                    if not line.strip():
                        continue
                    try:
                        obj = json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise UsageError(f"--data {self.manifest}: line {n} is not JSON ({exc.msg})") from None
                    if not isinstance(obj, dict):
                        raise UsageError(f"--data {self.manifest}: line {n} is not a JSON object")
                    yield self._checked(n, obj.get("path"), obj.get("label"), obj.get("split"))

    def _checked(self, line: int, path, label, split) -> tuple[int, str, str, str | None]:
        where = f"--data {self.manifest}: line {line}"
        if not path or not str(path).strip():
            raise UsageError(f"{where} has no path")
        if label is None or str(label).strip() == "":
            raise UsageError(f"{where} ({path}) has no label")
        if split is not None and str(split).strip():
            if str(split).strip().lower() not in SPLIT_ALIASES:
                raise UsageError(f"{where} ({path}) has split {split!r}; use train, val or test")
            split = SPLIT_ALIASES[str(split).strip().lower()]
        else:
            split = None
        return line, str(path).strip(), str(label).strip(), split

    def samples(self) -> Iterator[Sample]:
        index = {c: i for i, c in enumerate(self.class_names)}
        as_int = all(_is_int(c) for c in self.class_names)
        for line, path, label, split in self._rows():
            name = str(int(label)) if as_int and _is_int(label) else label
            if name not in index:
                raise UsageError(f"--data {self.manifest}: line {line} has label {label!r}, which was not there when "
                                 "te first read the manifest (it changed meanwhile); run again")
            yield Sample(path, index[name], split)

    def read_bytes(self, sample: Sample) -> bytes:
        path = Path(sample.path)
        return (path if path.is_absolute() else self.root / path).read_bytes()


class BuiltinSource(DataSource):
    """builtin:NAME: in-memory images; their "bytes" are the raw pixels plus the shape (stable keys)."""

    def __init__(self, spec: str) -> None:
        from transfer_engine.data.builtin import load_builtin

        self.data = load_builtin(spec)
        self.name = self.data.name
        self.class_names = list(self.data.class_names)

    def samples(self) -> Iterator[Sample]:
        for i in range(len(self.data)):
            yield Sample(f"{self.name}/{i:05d}", int(self.data.labels[i]), None)

    def _index(self, sample: Sample) -> int:
        return int(sample.path.rsplit("/", 1)[1])

    def read_bytes(self, sample: Sample) -> bytes:
        image = self.data.images[self._index(sample)]
        return f"{image.shape}|{image.dtype}|".encode() + image.tobytes()

    def decode(self, sample: Sample, data: bytes):
        return self.data.pil(self._index(sample))


def open_source(spec: str) -> DataSource:
    """The data source for a `--data` value.

    Raises:
        UsageError: the path does not exist, is an unsupported file, or holds no images/classes.
    """
    if spec.startswith("builtin:"):
        return BuiltinSource(spec)
    path = Path(spec).expanduser()
    if not path.exists():
        raise UsageError(f"--data {spec}: no such file or folder")
    if path.is_dir():
        return FolderSource(path)
    if path.suffix.lower() in (".csv", ".jsonl"):
        return ManifestSource(path)
    raise UsageError(f"--data {spec}: expected a folder, a .csv or .jsonl manifest, or builtin:NAME")


def _subdirs(folder: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))


def _image_files(folder: Path) -> Iterator[str]:
    """Image files below `folder` (recursively), relative to it, in sorted order, streamed.

    Sorting needs one folder's names at a time, never the whole tree's: about 70 bytes a file of the
    largest folder (its names, as str; the few sub-folders go to a set instead of a flag per entry).
    """
    names: list[str] = []
    folders: set[str] = set()
    with os.scandir(folder) as it:
        for entry in it:
            if entry.name.startswith("."):
                continue
            if entry.is_dir():
                folders.add(entry.name)
                names.append(entry.name)
            elif entry.name.lower().endswith(IMAGE_EXTENSIONS):
                names.append(entry.name)
    names.sort()
    for name in names:
        if name in folders:
            for rel in _image_files(folder / name):
                yield f"{name}/{rel}"
        else:
            yield name


def _is_int(value: str) -> bool:
    try:
        int(value)
        return True
    except (TypeError, ValueError):
        return False
