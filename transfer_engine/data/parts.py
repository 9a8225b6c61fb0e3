"""Data sets stored as parts read front to back: webdataset tar shards, Parquet files, Arrow files.

A `PartSource` streams: each part is opened once and read from its first byte to its last, and every
sample comes with its bytes (`part_records`), so nothing is read twice and nothing seeks (an object store
serves one GET per part). Memory holds one sample at a time, whatever the number of samples.

Labels are read as text while streaming (a `cls` member, a JSON field, a table column), so te extract
needs no pass over the data to learn the classes first: it collects the labels it meets and fixes the
class names at the end (`class_names_from`), sorted as a manifest's are (numerically when every label is
a whole number). Sources that declare their classes (a Hugging Face `ClassLabel`) fix them up front.
Other commands (te finetune, te predict, te export's image sets) use the ordinary `samples()` /
`read_bytes()` interface: the class names then come from one labels pass, and `read_bytes` reads one
sample by its record's origin (`shard.tar#member`, `file.parquet#row`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator

from transfer_engine.core.digest import content_key
from transfer_engine.data.remote import PartRef, part_ref
from transfer_engine.data.sources import DataSource, Sample, is_whole_number
from transfer_engine.errors import UsageError


@dataclass(frozen=True)
class PartRecord:
    """One sample of a part as it streams by.

    Attributes:
        sample: its origin (`part#member`), label TEXT (None: it has none) and split.
        data: the image's bytes, or None when the sample cannot be used.
        reason: why not (no image member, no label, too large, ...), for the failure list.
    """

    sample: Sample
    data: bytes | None
    reason: str | None = None


class PartSource(DataSource):
    """Base of the sources made of parts. Subclasses set `name`, `fixed_classes` (None: learnt from the
    labels) and `_files` [(fs, path, url, name)], and implement `part_records` and `read_bytes`."""

    streaming = True
    fixed_classes: list[str] | None = None
    # te predict and te export's image sets take unlabelled images: a sample without a label is then
    # kept (label None) instead of skipped (`data.unlabelled.open_images` clears it)
    labels_required = True
    _files: list[tuple]

    def __init__(self) -> None:
        self._class_names: list[str] | None = None
        self._skipped: list[dict[str, str]] = []
        self._refs: list[PartRef] | None = None

    def parts(self) -> list[PartRef]:
        """Every part with its size and version (one metadata request each; parts that cannot be reached
        are left out and reported by `skipped()`)."""
        if self._refs is None:
            refs = []
            for fs, path, url, name in self._files:
                try:
                    refs.append(part_ref(fs, path, url, name))
                except OSError as exc:
                    self._skipped.append({"path": name, "reason": f"cannot read the part: {exc.strerror or exc}"})
            self._refs = refs
        return self._refs

    def part_records(self, part: PartRef) -> Iterator[PartRecord]:
        raise NotImplementedError

    def records(self, parts: Iterable[PartRef] | None = None) -> Iterator[PartRecord]:
        for part in self.parts() if parts is None else parts:
            yield from self.part_records(part)

    @property
    def class_names(self) -> list[str]:  # type: ignore[override]
        if self.fixed_classes is not None:
            return list(self.fixed_classes)
        if self._class_names is None:  # one pass over the labels (te extract never needs it)
            self._class_names = class_names_from(
                r.sample.label for r in self.records() if r.data is not None and r.sample.label is not None)
        return self._class_names

    def samples(self) -> Iterator[Sample]:
        """Usable samples with their label as an index into `class_names` (a full pass per call)."""
        labels = LabelMap(self.class_names)
        for r in self.records():
            label = labels.index(r.sample.label) if r.data is not None else None
            if label is not None or (r.data is not None and not self.labels_required):
                yield Sample(r.sample.path, label, r.sample.split)  # type: ignore[arg-type]

    def keyed_samples(self, with_labels: bool = True) -> Iterator[tuple[Sample, str]]:
        """Usable samples with their content keys, from one pass (without labels: no labels pass either;
        the samples' labels are then None)."""
        labels = LabelMap(self.class_names) if with_labels else None
        for r in self.records():
            if r.data is None:
                continue
            label = labels.index(r.sample.label) if labels is not None else None
            if labels is None or label is not None:
                yield Sample(r.sample.path, label, r.sample.split), content_key(r.data)  # type: ignore[arg-type]

    def skipped(self) -> list[dict[str, str]]:
        return list(self._skipped)

    def _part_named(self, name: str) -> tuple:
        for entry in self._files:
            if entry[3] == name:
                return entry
        raise FileNotFoundError(f"no part {name} in {self.name}")


def class_names_from(labels: Iterable[str]) -> list[str]:
    """The class names for labels met as text: sorted, numerically when all are whole numbers (as a
    manifest's labels are), so the same labels give the same class order however they were met."""
    seen = set(labels)
    if seen and all(is_whole_number(v) for v in seen):
        return [str(v) for v in sorted({int(v) for v in seen})]
    return sorted(seen)


class LabelMap:
    """Label text to class index for fixed class names (`007` is class `7` when the names are numbers)."""

    def __init__(self, class_names: list[str]) -> None:
        self.numeric = all(is_whole_number(c) for c in class_names)
        self._index = {c: i for i, c in enumerate(class_names)}

    def index(self, label: str | None) -> int | None:
        if label is None:
            return None
        if self.numeric and is_whole_number(label):
            label = str(int(label))
        return self._index.get(label)


def origin(part_name: str, member: str | int) -> str:
    """How a record names a sample of a part: `SHARD.tar#MEMBER.jpg`, `FILE.parquet#ROW`."""
    return f"{part_name}#{member}"


def split_origin(path: str) -> tuple[str, str]:
    """(part name, member) of an origin made by `origin` (a part's name may hold '#', a member not)."""
    part, _, member = path.rpartition("#")
    return part, member


def open_parts(spec: str, label_field: str | None = None, labels_required: bool = True) -> "PartSource | None":
    """The `PartSource` a `--data` value names, or None when it names something else (a local image
    folder, a manifest, builtin:NAME).

    Parts are named by a brace pattern or glob, a single .tar/.tar.gz/.tgz/.parquet/.arrow file, a list
    file (.txt: one path or URL a line), a `datasets` save_to_disk folder, or a folder/prefix (local or at
    a URL) holding such files; at a URL, an image folder or a .csv/.jsonl manifest too (`remote_folder`:
    files read in parts of a thousand).

    Raises:
        UsageError: a URL that holds none of these, a list that mixes kinds, a missing package.
    """
    from transfer_engine.data.remote import filesystem, has_glob, has_pattern, is_url, listed_parts, read_list_file
    from transfer_engine.data.tables import TABLE_SUFFIXES, TableRows, is_saved_dataset, saved_dataset_files
    from transfer_engine.data.tars import TAR_SUFFIXES, TarShards

    lower = spec.lower().rstrip("/")
    if is_url(spec) and lower.endswith((".csv", ".jsonl")):
        from transfer_engine.data.remote_folder import open_remote_manifest
        return open_remote_manifest(spec)
    if lower.endswith(".txt"):
        specs = read_list_file(spec)
        if not specs:
            raise UsageError(f"--data {spec}: the list file names no shards")
    elif has_pattern(spec) or has_glob(spec) or lower.endswith(TAR_SUFFIXES + TABLE_SUFFIXES):
        specs = [spec]
    else:
        fs, path = filesystem(spec)
        if not is_url(spec) and not fs.isdir(path):
            return None
        if fs.isdir(path) and is_saved_dataset(fs, path):
            files, split_of = saved_dataset_files(spec)
            return TableRows(files, spec, label_field, split_of, labels_required)
        if not is_url(spec) and any(fs.isdir(p) for p in fs.ls(path, detail=False)):
            return None  # a local folder of class folders: the image folder source
        specs = [spec]
    kinds = {"tar" if s.lower().rstrip("/").endswith(TAR_SUFFIXES) else
             "table" if s.lower().rstrip("/").endswith(TABLE_SUFFIXES) else "folder" for s in specs}
    if kinds <= {"tar"} or (kinds == {"folder"} and _holds(specs, TAR_SUFFIXES)):
        shards = TarShards(listed_parts(specs, spec, TAR_SUFFIXES), spec, label_field)
        shards.labels_required = labels_required
        return shards
    if kinds <= {"table"} or (kinds == {"folder"} and _holds(specs, TABLE_SUFFIXES)):
        return TableRows(listed_parts(specs, spec, TABLE_SUFFIXES), spec, label_field, None, labels_required)
    if kinds == {"folder"} and not is_url(spec):
        return None  # a local folder without parts: the image folder source says what it lacks
    if kinds == {"folder"}:  # an image folder at a URL
        from transfer_engine.data.remote_folder import open_remote_folder
        return open_remote_folder(spec)
    raise UsageError(f"--data {spec}: a list names tar shards or table files, not a mix or other files")


def _holds(specs: list[str], suffixes: tuple[str, ...]) -> bool:
    """True when the folders in `specs` hold files with `suffixes` (a listing; nothing is read)."""
    from transfer_engine.data.remote import filesystem

    for spec in specs:
        fs, path = filesystem(spec)
        try:
            if any(p.lower().endswith(suffixes) for p in fs.find(path)):
                return True
        except OSError:
            continue
    return False
