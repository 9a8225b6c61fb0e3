"""Parquet files and Hugging Face datasets as a data source (`--data images.parquet`, `--data hf_saved/`).

Read with pyarrow alone (`datasets` need not be installed):
    FILE.parquet, a folder or prefix of them, a brace pattern    (`data/train-00000-of-00004.parquet`, ...)
    a folder written by `datasets`' save_to_disk                 (state.json + Arrow files; a DatasetDict's
                                                                  dataset_dict.json names its splits)
Columns:
    the image   the column `datasets` declares an `Image` (a struct of bytes and path), else one named
                image/img/jpg/jpeg/png/webp holding bytes (or such a struct)
    the label   --label-field NAME, else the one `ClassLabel` column, else label/labels/cls/class;
                a ClassLabel's names are the class names (its integers index them)
    the split   a DatasetDict's split, else the file name's prefix (`train-00000-of-00004.parquet`, as
                the Hub names them), else a `split` column, else te derives one from the content key
Rows stream a record batch at a time, front to back; a record names its row (`FILE.parquet#ROW`).
"""

from __future__ import annotations

import json
import threading
from typing import Any, Iterator

from transfer_engine.data.files import read_image_file
from transfer_engine.data.parts import PartRecord, PartSource, origin, split_origin
from transfer_engine.data.remote import PartRef, filesystem, is_local, url_of
from transfer_engine.data.sources import SPLIT_ALIASES, Sample
from transfer_engine.errors import UsageError

TABLE_SUFFIXES = (".parquet", ".arrow")
IMAGE_COLUMNS = ("image", "img", "jpg", "jpeg", "png", "webp")
LABEL_COLUMNS = ("label", "labels", "cls", "class")
BATCH_ROWS = 64  # rows per record batch read: a few MB of images at most


def _pyarrow():
    try:
        import pyarrow
        import pyarrow.ipc  # noqa: F401
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise UsageError("reading Parquet or Arrow files needs pyarrow (pip install 'transfer-engine[scale]' "
                         "or pip install pyarrow)") from None
    return pyarrow


def is_saved_dataset(fs: Any, path: str) -> bool:
    """True for a folder written by `datasets`' save_to_disk (a Dataset or a DatasetDict)."""
    return fs.isfile(f"{path.rstrip('/')}/state.json") or fs.isfile(f"{path.rstrip('/')}/dataset_dict.json")


def saved_dataset_files(spec: str) -> tuple[list[tuple], dict[str, str]]:
    """(files, split of each file's name) of a save_to_disk folder."""
    fs, path = filesystem(spec)
    root = path.rstrip("/")
    if fs.isfile(f"{root}/dataset_dict.json"):
        with fs.open(f"{root}/dataset_dict.json", "rt") as fh:
            splits = json.load(fh).get("splits", [])
        folders = [(f"{root}/{s}", s) for s in splits]
    else:
        folders = [(root, None)]
    files, split_of = [], {}
    for folder, split in folders:
        with fs.open(f"{folder}/state.json", "rt") as fh:
            names = [f["filename"] for f in json.load(fh).get("_data_files", [])]
        for name in names:
            entry = _entry(fs, f"{folder}/{name}", f"{split}/{name}" if split else name)
            files.append(entry)
            if split is not None and split.lower() in SPLIT_ALIASES:
                split_of[entry[3]] = SPLIT_ALIASES[split.lower()]
    if not files:
        raise UsageError(f"--data {spec}: the saved data set lists no Arrow files")
    return files, split_of


def _entry(fs: Any, path: str, name: str) -> tuple:
    return fs, path, url_of(fs, path), name


class TableRows(PartSource):
    """Rows of Parquet or Arrow files, each with an image.

    Args:
        files: (fs, path, url, name) of each file.
        shown: the --data value.
        label_field: the label column (None: chosen as the module docstring says).
        split_of: a file's split by its name (a DatasetDict's), when known.
    """

    def __init__(self, files: list[tuple], shown: str, label_field: str | None = None,
                 split_of: dict[str, str] | None = None, labels_required: bool = True) -> None:
        super().__init__()
        self.labels_required = labels_required
        _pyarrow()
        self._files = files
        self.name = shown
        self._split_of = dict(split_of or {})
        for _, _, _, name in files:
            prefix = name.rsplit("/", 1)[-1].split("-", 1)[0].split(".", 1)[0].lower()
            if name not in self._split_of and prefix in SPLIT_ALIASES and prefix != name.rsplit("/", 1)[-1].lower():
                self._split_of[name] = SPLIT_ALIASES[prefix]
        schema = self._schema(files[0])
        features = _hf_features(schema)
        self.image_column = _image_column(schema, features, shown)
        try:
            self.label_column: str | None = _label_column(schema, features, label_field, shown)
        except UsageError:
            if label_field is not None or self.labels_required:
                raise
            self.label_column = None  # unlabelled images (te predict)
        names = features.get(self.label_column, {}).get("names") if self.label_column else None
        self._label_names = [str(n) for n in names] if isinstance(names, list) else None
        self.fixed_classes = self._label_names
        self.split_column = "split" if "split" in schema.names else None
        self._cached: tuple[str, int, Any] | None = None
        self._lock = threading.Lock()

    def describe(self) -> str:
        return f"{len(self._files)} table file(s) {self.name}"

    def _schema(self, entry: tuple):
        fs, path, _, _ = entry
        pa = _pyarrow()
        with fs.open(path, "rb") as fh:
            if path.lower().endswith(".parquet"):
                return pa.parquet.ParquetFile(fh).schema_arrow
            return _arrow_reader(pa, fh).schema

    def _batches(self, fs: Any, path: str, columns: list[str]) -> Iterator[Any]:
        pa = _pyarrow()
        with fs.open(path, "rb") as fh:
            if path.lower().endswith(".parquet"):
                yield from pa.parquet.ParquetFile(fh).iter_batches(batch_size=BATCH_ROWS, columns=columns)
            else:
                for batch in _arrow_reader(pa, fh):
                    yield batch.select(columns)

    def _columns(self) -> list[str]:
        return [c for c in (self.image_column, self.label_column, self.split_column) if c]

    def part_records(self, part: PartRef) -> Iterator[PartRecord]:
        fs, path, _, name = self._part_named(part.name)
        split = self._split_of.get(name)
        row = 0
        try:
            for batch in self._batches(fs, path, self._columns()):
                columns = batch.to_pydict()
                for i in range(batch.num_rows):
                    yield self._record(name, row, columns, i, split, fs, path)
                    row += 1
        except (OSError, ValueError, KeyError) as exc:  # pyarrow's errors are ValueError/OSError subclasses
            yield PartRecord(Sample(name, None), None,  # type: ignore[arg-type]
                             f"the file is damaged or unreadable after {row} row(s) ({exc}); those were kept")

    def _record(self, name: str, row: int, columns: dict, i: int, split: str | None, fs: Any, path: str) -> PartRecord:
        where = origin(name, row)
        label = self._label_text(columns[self.label_column][i]) if self.label_column else None
        if self.split_column and split is None:
            value = columns[self.split_column][i]
            split = SPLIT_ALIASES.get(str(value).strip().lower()) if value is not None else None
        try:
            data = self._image_bytes(columns[self.image_column][i], fs, path)
        except OSError as exc:
            return PartRecord(Sample(where, label, split), None, f"{type(exc).__name__}: {exc.strerror or exc}")  # type: ignore[arg-type]
        if label is None and self.labels_required:
            return PartRecord(Sample(where, None, split), None, f"no label in column {self.label_column}")  # type: ignore[arg-type]
        return PartRecord(Sample(where, label, split), data)  # type: ignore[arg-type]

    def _label_text(self, value: Any) -> str | None:
        if value is None or isinstance(value, (dict, list, bool, float)):
            return None
        if self._label_names is not None and isinstance(value, int):
            return self._label_names[value] if 0 <= value < len(self._label_names) else None
        return str(value).strip() or None

    def _image_bytes(self, value: Any, fs: Any, path: str) -> bytes:
        if isinstance(value, dict):  # datasets' Image: {"bytes": ..., "path": ...}
            if value.get("bytes") is not None:
                return bytes(value["bytes"])
            if value.get("path"):
                return _image_at(value["path"], fs, path)
            raise FileNotFoundError("the image cell holds neither bytes nor a path")
        if isinstance(value, (bytes, bytearray)):
            return bytes(value)
        if isinstance(value, str) and value:
            return _image_at(value, fs, path)
        raise FileNotFoundError("the image cell is empty")

    def read_bytes(self, sample: Sample) -> bytes:
        part_name, member = split_origin(sample.path)
        fs, path, _, _ = self._part_named(part_name)
        row = int(member)
        with self._lock:
            cached = self._cached
        if cached is None or cached[0] != part_name or not cached[1] <= row < cached[1] + len(cached[2]):
            cached = self._rows_around(part_name, fs, path, row)
            with self._lock:
                self._cached = cached
        return self._image_bytes(cached[2][row - cached[1]], fs, path)

    def _rows_around(self, part_name: str, fs: Any, path: str, row: int) -> tuple[str, int, list]:
        """The image cells of the row group (Parquet) or record batch (Arrow) holding `row`."""
        pa = _pyarrow()
        first = 0
        with fs.open(path, "rb") as fh:
            if path.lower().endswith(".parquet"):
                pf = pa.parquet.ParquetFile(fh)
                for g in range(pf.metadata.num_row_groups):
                    n = pf.metadata.row_group(g).num_rows
                    if row < first + n:
                        cells = pf.read_row_group(g, columns=[self.image_column]).column(0).to_pylist()
                        return part_name, first, cells
                    first += n
            else:
                for batch in _arrow_reader(pa, fh):
                    if row < first + batch.num_rows:
                        return part_name, first, batch.column(self.image_column).to_pylist()
                    first += batch.num_rows
        raise FileNotFoundError(f"row {row} is not in {part_name}")


def _arrow_reader(pa, fh):
    """An Arrow IPC reader: the stream format (what `datasets` writes), else the file format."""
    try:
        return pa.ipc.open_stream(fh)
    except pa.ArrowInvalid:
        fh.seek(0)
        return pa.ipc.open_file(fh)


def _hf_features(schema) -> dict:
    """The `datasets` features recorded in the schema's metadata ({} when the file was not written by it)."""
    raw = (schema.metadata or {}).get(b"huggingface")
    try:
        return json.loads(raw).get("info", {}).get("features", {}) if raw else {}
    except (ValueError, AttributeError):
        return {}


def _declared_or_named(schema, features: dict, feature_type: str, names: tuple[str, ...]) -> str | None:
    """The one column `datasets` declares of `feature_type`, else the first named one of `names`."""
    declared = [n for n, f in features.items() if isinstance(f, dict) and f.get("_type") == feature_type]
    if len(declared) == 1:
        return declared[0]
    return next((name for name in schema.names if name.lower() in names), None)


def _image_column(schema, features: dict, shown: str) -> str:
    found = _declared_or_named(schema, features, "Image", IMAGE_COLUMNS)
    if found is None:
        raise UsageError(f"--data {shown}: no image column (a datasets Image, or one named "
                         f"{'/'.join(IMAGE_COLUMNS)}); the columns are {', '.join(schema.names)}")
    return found


def _label_column(schema, features: dict, chosen: str | None, shown: str) -> str:
    if chosen is not None:
        if chosen not in schema.names:
            raise UsageError(f"--label-field {chosen}: no such column in {shown}; the columns are {', '.join(schema.names)}")
        return chosen
    found = _declared_or_named(schema, features, "ClassLabel", LABEL_COLUMNS)
    if found is None:
        raise UsageError(f"--data {shown}: no label column (a datasets ClassLabel, or one named "
                         f"{'/'.join(LABEL_COLUMNS)}); name it with --label-field (the columns are {', '.join(schema.names)})")
    return found


def _image_at(image_path: str, fs: Any, table_path: str) -> bytes:
    """An image a row names by path: relative to the table's folder, on the table's file system."""
    if "://" in image_path:
        other, inner = filesystem(image_path)
        with other.open(inner, "rb") as fh:
            return fh.read()
    if is_local(fs):
        from pathlib import Path
        p = Path(image_path)
        return read_image_file(p if p.is_absolute() else Path(table_path).parent / p)
    joined = image_path if image_path.startswith("/") else f"{table_path.rsplit('/', 1)[0]}/{image_path}"
    with fs.open(joined, "rb") as fh:
        return fh.read()
