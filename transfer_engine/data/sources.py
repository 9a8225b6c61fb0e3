"""Data sources for `--data`: an image folder, a CSV/JSONL manifest, or a built-in set.

Every source streams `Sample`s (path, label, split) in a deterministic order and reads a sample's bytes
on demand, so a data set of millions of files never sits in memory. Keys are SHA-256 digests of the
bytes (`content_key`): the cache is addressed by content, not by file name.

Layouts understood (as torchvision's ImageFolder, plus split folders):
    ROOT/CLASS/IMAGE                        no splits: te derives a stable split from the keys
    ROOT/{train,val,test}/CLASS/IMAGE       splits from the folders (any subset of them)
    manifest.csv  with a header: path,label[,split]   (paths relative to the manifest)
    manifest.jsonl  one {"path": ..., "label": ..., "split": ...} object per line
                    (labels: text, or JSON integers; a UTF-8 BOM is allowed)
    builtin:digits                          scikit-learn's 1,797 real handwritten digits

What the files may be is bounded: only regular files are read, at most TE_MAX_FILE_BYTES each
(`transfer_engine.data.files`); images decode within TE_MAX_IMAGE_PIXELS (`transfer_engine.data.decode`);
folders are walked by `transfer_engine.data.walk` (unreadable folders and symlinks skipped with a reason,
loops detected). A source's `skipped()` lists what its last walk left out.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from transfer_engine.core.digest import content_key  # the key: SHA-256 of the bytes
from transfer_engine.core.paths import display_path, is_text
from transfer_engine.data.decode import decode_image, decode_tensor, max_image_pixels
from transfer_engine.data.files import is_regular_file, max_file_bytes, read_image_file
from transfer_engine.data.walk import IMAGE_EXTENSIONS, FolderWalk
from transfer_engine.errors import UsageError, first_line

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
    streaming = False  # parts read front to back, each sample with its bytes (`data.parts.PartSource`)

    def samples(self) -> Iterator[Sample]:
        raise NotImplementedError

    def read_bytes(self, sample: Sample) -> bytes:
        """The file's bytes (OSError when it cannot be read, is not a regular file or is too large: the
        caller records it as failed)."""
        raise NotImplementedError

    def keyed_samples(self, with_labels: bool = True) -> Iterator[tuple[Sample, str]]:
        """Each readable sample with its content key (unreadable ones are left out, as te extract skips them).
        Parts override it to hash the bytes they stream instead of reading each sample again;
        `with_labels=False` says the caller takes labels elsewhere (the cache's records)."""
        for sample in self.samples():
            try:
                yield sample, content_key(self.read_bytes(sample))
            except OSError:
                continue

    def decode(self, sample: Sample, data: bytes, tensor: bool = False):
        """An RGB PIL image from the bytes, or with `tensor` a uint8 [3, H, W] tensor of the same pixels
        (what the "torch" resampler takes without a copy); raises on a truncated or non-image file, or
        one over the pixel budget, before decoding it."""
        return decode_tensor(data) if tensor else decode_image(data)

    def skipped(self) -> list[dict[str, str]]:
        """{"path", "reason"} of the folders and links the last pass over `samples()` left out."""
        return []

    def describe(self) -> str:
        return self.name


class FolderSource(DataSource):
    """ROOT/CLASS/IMAGE or ROOT/SPLIT/CLASS/IMAGE.

    Args:
        root: the folder (resolved here: symlinks are judged against the real root).
        follow_symlinks: follow symlinks out of the root (see `transfer_engine.data.walk`).
    """

    def __init__(self, root: Path, follow_symlinks: bool = False) -> None:
        self.root = root.resolve()
        self.name = str(self.root)
        walk = FolderWalk(self.root, follow_symlinks=follow_symlinks)
        top = walk.folders()
        split_dirs = {d: SPLIT_ALIASES[d.lower()] for d in top if d.lower() in SPLIT_ALIASES}
        if split_dirs and len(split_dirs) == len(top):
            self.split_dirs = dict(sorted(split_dirs.items(), key=lambda kv: SPLITS.index(kv[1])))
            self._class_dirs = {d: walk.folders(d) for d in self.split_dirs}
        else:
            self.split_dirs = {}
            self._class_dirs = {"": top}
        # A class is named as people read its folder's name (display_path): class names travel into run.json
        # and ONNX metadata, which take valid text only; the walk keeps each folder's real name.
        classes = sorted({display_path(c) for names in self._class_dirs.values() for c in names})
        if not classes:
            raise UsageError(f"--data {display_path(str(root))}: no class folders found (expected ROOT/CLASS/IMAGE "
                             f"or ROOT/train|val|test/CLASS/IMAGE){first_skip(walk.skipped)}")
        self.class_names = classes
        self._listing_skipped = list(walk.skipped)  # class folders left out: reported by every pass
        self._walk = FolderWalk(self.root, follow_symlinks=follow_symlinks, class_depth=2 if self.split_dirs else 1)

    def samples(self) -> Iterator[Sample]:
        index = {c: i for i, c in enumerate(self.class_names)}
        self._walk.reset()
        for folder, classes in self._class_dirs.items():
            split = self.split_dirs.get(folder)
            for cls in classes:
                for path in self._walk.images(f"{folder}/{cls}" if folder else cls):
                    yield Sample(path, index[display_path(cls)], split)

    def read_bytes(self, sample: Sample) -> bytes:
        return read_image_file(self.root / sample.path)

    def skipped(self) -> list[dict[str, str]]:
        return self._listing_skipped + self._walk.skipped


class ManifestSource(DataSource):
    """A CSV (header: path,label[,split]) or JSONL manifest; paths relative to the manifest's folder."""

    def __init__(self, manifest: Path) -> None:
        self.manifest = manifest
        self.root = manifest.parent
        self.name = str(manifest)
        # One validating pass for the class names (a set: as big as the number of classes); samples()
        # reads the file again, so a manifest of millions of lines never sits in memory.
        if not is_regular_file(manifest):  # a FIFO would block, and a manifest is read twice
            raise UsageError(f"--data {display_path(str(manifest))}: not a regular file; te reads a manifest "
                             "twice, so it must be a file (not a pipe or device)")
        self.paths_outside = 0
        labels: set[str] = set()
        outside: list[tuple[int, str]] = []  # (line, path) of paths that leave the manifest's folder
        for line, path, label, _ in self._rows():
            labels.add(label)
            if _leaves_folder(path):
                if not outside:
                    outside.append((line, path))
                self.paths_outside += 1
        if self.paths_outside:
            # Absolute and ../ paths are read as written (a manifest made by `find /data`, or kept in a
            # splits/ folder beside images/, is ordinary), but never silently: a manifest from elsewhere
            # could point te anywhere on this machine.
            line, path = outside[0]
            print(f"te: warning: --data {_shown(str(manifest))}: {self.paths_outside} path(s) lead outside the "
                  f"manifest's folder (absolute, or through ..), first on line {line}: {_shown(path)}; "
                  "te reads them as written", file=sys.stderr)
        if not labels:
            raise UsageError(f"--data {_shown(str(manifest))}: the manifest lists no images")
        if all(is_whole_number(v) for v in labels):
            self.class_names = [str(v) for v in sorted({int(v) for v in labels})]
        else:
            self.class_names = sorted(labels)

    def _rows(self) -> Iterator[tuple[int, str, str, str | None]]:
        # utf-8-sig: a BOM (Excel's "CSV UTF-8", PowerShell) is not part of the first column's name.
        # surrogateescape: a path that is not UTF-8 (a listing of such files) is kept byte for byte.
        with self.manifest.open(newline="", encoding="utf-8-sig", errors="surrogateescape") as fh:
            yield from manifest_rows(fh, self.manifest.suffix.lower() == ".csv", str(self.manifest))

    def samples(self) -> Iterator[Sample]:
        index = {c: i for i, c in enumerate(self.class_names)}
        as_int = all(is_whole_number(c) for c in self.class_names)
        for line, path, label, split in self._rows():
            name = str(int(label)) if as_int and is_whole_number(label) else label
            if name not in index:
                raise UsageError(f"--data {_shown(str(self.manifest))}: line {line} has label {_shown(label)!r}, "
                                 "which was not there when te first read the manifest (it changed meanwhile); "
                                 "run again")
            yield Sample(path, index[name], split)

    def read_bytes(self, sample: Sample) -> bytes:
        path = Path(sample.path)
        return read_image_file(path if path.is_absolute() else self.root / path)


def manifest_rows(fh: Iterable[str], is_csv: bool, shown: str) -> Iterator[tuple[int, str, str, str | None]]:
    """(line, path, label text, split) of each row of a CSV (`is_csv`) or JSONL manifest read from `fh` (text,
    opened with newline=""), each checked by `checked_row`; `shown` names the manifest in messages.

    Raises:
        UsageError: a header without path,label, a line that is not valid CSV or JSON, a bad row.
    """
    where = f"--data {_shown(shown)}"
    if is_csv:
        reader = csv.DictReader(fh)
        try:
            fieldnames = reader.fieldnames
            missing = {"path", "label"} - set(fieldnames or [])
            if missing:
                raise UsageError(f"{where}: the CSV header needs the columns path,label[,split]; "
                                 f"missing {', '.join(sorted(missing))}")
            for row in reader:
                yield checked_row(shown, reader.line_num, row.get("path"), row.get("label"), row.get("split"))
        except csv.Error as exc:
            # csv's field_size_limit (131,072 characters) stays: no path or label is that long, and
            # the limit is what keeps an unclosed quote from reading the rest of the file as one field.
            # csv counts a line once it is parsed: the one over the limit is the next.
            if "field larger than field limit" in str(exc):
                raise UsageError(f"{where}: line {reader.line_num + 1} has a field over "
                                 f"{csv.field_size_limit():,} characters (no path or label is that long; "
                                 "an unclosed quote?)") from None
            raise UsageError(f"{where}: line {reader.line_num} is not valid CSV "
                             f"({_shown(first_line(exc))})") from None
    else:
        for n, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UsageError(f"{where}: line {n} is not JSON ({exc.msg})") from None
            except RecursionError:  # [[[[...]]]]: deeper than the interpreter's stack
                raise UsageError(f"{where}: line {n} is not JSON (nested too deeply)") from None
            if not isinstance(obj, dict):
                raise UsageError(f"{where}: line {n} is not a JSON object")
            yield checked_row(shown, n, obj.get("path"), obj.get("label"), obj.get("split"))


def checked_row(shown: str, line: int, path, label, split) -> tuple[int, str, str, str | None]:
    """One manifest row as te takes it: a path without NUL, a label that is text or a whole number on one line
    of valid UTF-8, a split among SPLIT_ALIASES or none; `shown` names the manifest in messages.

    Raises:
        UsageError: the first rule the row breaks, with its line.
    """
    where = f"--data {_shown(shown)}: line {line}"
    if not isinstance(path, str) or not path.strip():
        raise UsageError(f"{where} has no path" if path in (None, "") or isinstance(path, str)
                         else f"{where}: the path is a JSON {_json_type(path)}; expected text")
    path = path.strip()
    if "\0" in path:
        raise UsageError(f"{where}: the path {_shown(path)!r} holds a NUL character, which no file name can")
    # Labels become class names (run.json, ONNX metadata, --out files): text or a whole number, as a
    # folder's name would be; a JSON list, object, boolean or fraction is a mistake, not a class.
    if isinstance(label, bool) or not isinstance(label, (str, int, type(None))):
        raise UsageError(f"{where} ({_shown(path)}) has a label that is a JSON {_json_type(label)}; "
                         "expected text or a whole number")
    label = None if label is None else str(label).strip()
    if not label:
        raise UsageError(f"{where} ({_shown(path)}) has no label")
    if not is_text(label):
        raise UsageError(f"{where}: the label {display_path(_shown(label))!r} is not valid UTF-8 text")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in label):
        raise UsageError(f"{where}: the label {_shown(label)!r} holds a control character (NUL, a line "
                         "break, ...); class names are one line of text")
    if split is not None and not isinstance(split, str):
        raise UsageError(f"{where} ({_shown(path)}) has a split that is a JSON {_json_type(split)}; "
                         "use train, val or test")
    if split is not None and split.strip():
        if split.strip().lower() not in SPLIT_ALIASES:
            raise UsageError(f"{where} ({_shown(path)}) has split {_shown(split)!r}; use train, val or test")
        split = SPLIT_ALIASES[split.strip().lower()]
    else:
        split = None
    return line, path, label, split


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

    def decode(self, sample: Sample, data: bytes, tensor: bool = False):
        return self.data.pil(self._index(sample))  # small arrays: the transform converts either kind


def default_dataset_name(source: DataSource, data: str) -> str:
    """The folder's or manifest's name (a data set name is text: a name that is not UTF-8 as `display_path`)."""
    if data.startswith("builtin:"):
        return data.split(":", 1)[1]
    if source.streaming:  # parts: the pattern's folder, or the file's or folder's name
        trail = data.rstrip("/").rsplit("://", 1)[-1].split("/")
        last = trail[-1]
        if any(c in last for c in "{*?[") and len(trail) > 1:
            last = trail[-2]
        if last in ("", ".", ".."):
            last = Path(data).expanduser().resolve().name
        return display_path(last.split(".", 1)[0] if "." in last.lstrip(".") else last)
    path = Path(data).expanduser()
    return display_path(path.stem if path.is_file() else path.resolve().name)


def open_source(spec: str, follow_symlinks: bool = False, label_field: str | None = None,
                labels_required: bool = True) -> DataSource:
    """The data source for a `--data` value.

    Args:
        spec: a folder, a .csv/.jsonl manifest, builtin:NAME, or parts (tar shards, Parquet/Arrow files, a
            `datasets` save_to_disk folder; a path, brace pattern, list file or URL: `data.parts.open_parts`).
        follow_symlinks: in a folder, follow symlinks that lead out of it.
        label_field: where parts keep the label (a tar member or a table column; None: the default).
        labels_required: False for images to run a model on: parts then keep samples without a label.

    Raises:
        UsageError: the path does not exist, is an unsupported file, or holds no images/classes; or
            TE_MAX_FILE_BYTES / TE_MAX_IMAGE_PIXELS is set to something that is not a positive number.
    """
    check_read_limits()
    if spec.startswith("builtin:"):
        return BuiltinSource(spec)
    from transfer_engine.data.parts import open_parts

    parts = open_parts(spec if "://" in spec else str(Path(spec).expanduser()), label_field, labels_required)
    if parts is not None:
        return parts
    path = Path(spec).expanduser()
    if not path.exists():
        raise UsageError(f"--data {display_path(spec)}: no such file or folder")
    if path.is_dir():
        return FolderSource(path, follow_symlinks)
    if path.suffix.lower() in (".csv", ".jsonl"):
        return ManifestSource(path.resolve())
    raise UsageError(f"--data {display_path(spec)}: expected a folder, a .csv or .jsonl manifest, or builtin:NAME")


def check_read_limits() -> None:
    """Read the limits on files and pixels before any file is: a bad TE_MAX_FILE_BYTES or TE_MAX_IMAGE_PIXELS
    is one usage error, not a failure of every file (they are read again in the decode threads).

    Raises:
        UsageError: a limit set to something that is not a positive whole number.
    """
    max_file_bytes()
    max_image_pixels()


def recorded_data(spec: str) -> str:
    """`--data` as te records it (run.json, the cache's provenance): absolute and resolved, so a later
    command started in another folder finds the same data; builtin:NAME as it is."""
    if spec.startswith("builtin:") or "://" in spec:
        return spec
    if any(c in spec for c in "{*?["):  # a pattern: its folder resolved, the pattern kept
        head, sep, tail = spec.rpartition("/")
        return str(Path(head or ".").expanduser().resolve()) + "/" + tail if sep else str(Path.cwd() / spec)
    return str(Path(spec).expanduser().resolve())


def locate_recorded_data(data: str, *near: str | os.PathLike | None) -> str:
    """Where recorded data is now: `data` itself when absolute (or builtin:), else the first existing one
    of `data` relative to the current folder and to the parent of each folder in `near` (caches and runs
    written before te recorded absolute paths held `--data` as typed: relative to where te extract ran,
    most often the folder that also holds the cache).

    Raises:
        UsageError: a relative path found in none of those places (the message lists them).
    """
    if data.startswith("builtin:") or Path(data).expanduser().is_absolute():
        return data
    places = [Path.cwd()] + [Path(p).expanduser().absolute().parent for p in near if p]
    tried = list(dict.fromkeys(place / data for place in places))
    for candidate in tried:
        if candidate.exists():
            return str(candidate.resolve())
    raise UsageError(f"the recorded --data {display_path(data)} is a relative path (written by an older te) that is "
                     f"in none of {', '.join(display_path(str(t)) for t in tried)}; pass the data again "
                     "(e.g. --data /full/path)")


SHOWN_CHARS = 120


def _shown(text: str, limit: int = SHOWN_CHARS) -> str:
    """`text` as a message shows it: readable (`display_path`) and cut to `limit` characters, with how long it
    was (a manifest's million-character path is not echoed whole)."""
    text = display_path(text)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


def _json_type(value: object) -> str:
    """The JSON name of a parsed value's type ("list", "object", "boolean", ...)."""
    names = {bool: "boolean", list: "list", dict: "object", float: "number with a fraction", str: "string",
             int: "integer"}
    return names.get(type(value), type(value).__name__)


def _leaves_folder(path: str) -> bool:
    """True when a manifest's `path` is absolute or climbs out of the manifest's folder through `..`."""
    return os.path.isabs(path) or os.path.normpath(path).split(os.sep)[0] == os.pardir


def first_skip(skipped: list[dict[str, str]]) -> str:
    """"; skipped PATH: REASON" for the first of `skipped` ({"path", "reason"}), "" for none: what a usage
    error adds when nothing could be read."""
    if not skipped:
        return ""
    return f"; skipped {display_path(skipped[0]['path'])}: {skipped[0]['reason']}"

def is_whole_number(value: str) -> bool:
    """True for text that int() reads (a label that sorts as a number)."""
    try:
        int(value)
        return True
    except (TypeError, ValueError):
        return False
