"""Data sets in a cache: named, ordered lists of records (path, content key, label, split).

Records hold no features: they point at rows by key, so two data sets that share images share rows,
and a data set re-extracted with another backbone finds its rows in that backbone's space.

Records keep file names losslessly in their stored form (`core.paths.stored_path`: valid UTF-8, so the
index can hold a name that is not); `core.paths` also gives the name to open and the name to show.
"""

from __future__ import annotations

import numbers
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Sequence

from transfer_engine.core.paths import display_path, stored_path
from transfer_engine.errors import UsageError

_HEX_KEY = re.compile(r"(?:[0-9a-f]{2}){8,64}")  # whole bytes: the index stores keys as BLOBs


def check_keys(keys: Sequence[str]) -> list[str]:
    """`keys` as a list of str, or a UsageError naming the first one that is not a lowercase hex digest."""
    if isinstance(keys, str):
        raise UsageError("expected a list of keys, got one string; wrap it in a list")
    keys = list(keys)
    for key in keys:
        if not isinstance(key, str) or not _HEX_KEY.fullmatch(key):
            raise UsageError(f"a row key must be a lowercase hex digest of the image bytes (an even number, "
                             f"16-128, of hex digits, e.g. content_key(bytes)), got {key!r}")
    return keys


@dataclass(frozen=True)
class Record:
    """One image of a data set.

    Attributes:
        path: where the image came from, in its stored form (`stored_path`: valid UTF-8, lossless);
            `fs_path(record.path)` is the name to open, `display_path(record.path)` the one to show.
        key: `content_key` of its bytes: the row key in every space.
        label: index into the data set's class names, or None when unlabelled.
        split: "train", "val", "test" or another name.
    """

    path: str
    key: str
    label: int | None
    split: str = "train"

    def __post_init__(self) -> None:
        if isinstance(self.path, str):
            object.__setattr__(self, "path", stored_path(self.path))


@dataclass
class Dataset:
    """A data set as stored in a cache.

    Attributes:
        name: its name in the cache.
        class_names: the name of each label.
        records: the records, in the order they were put.
    """

    name: str
    class_names: list[str]
    records: list[Record] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.records)

    def select(self, split: str | None = None) -> list[Record]:
        """The records of one split (all of them for None), in order."""
        return [r for r in self.records if split is None or r.split == split]

    def keys(self, split: str | None = None) -> list[str]:
        """Row keys of one split (all for None), in record order."""
        return [r.key for r in self.select(split)]

    def labels(self, split: str | None = None) -> list[int | None]:
        """Labels of one split (all for None), in record order."""
        return [r.label for r in self.select(split)]

    def split_counts(self) -> dict[str, int]:
        """{split: number of records}."""
        return dict(sorted(Counter(r.split for r in self.records).items()))

    def label_counts(self, split: str | None = None) -> dict[int | None, int]:
        """{label: number of records} in one split (all for None)."""
        counts = Counter(r.label for r in self.select(split))
        return dict(sorted(counts.items(), key=lambda kv: (kv[0] is None, kv[0] or 0)))  # unlabelled last


def check_records(name: str, records: Iterable[Record | Sequence], class_names: Sequence[str]) -> list[Record]:
    """Validate a data set before it is stored.

    Args:
        name: the data set's name.
        records: `Record`s or (path, key, label, split) tuples.
        class_names: the label names; every label must index into them.

    Returns:
        The records as a list of `Record`.

    Raises:
        UsageError: an empty name, a key that is not a hex digest, a label out of range, an empty split.
    """
    return list(checked_records(name, records, class_names))


def checked_records(name: str, records: Iterable[Record | Sequence], class_names: Sequence[str]) -> Iterator[Record]:
    """`check_records` as a stream: each record is checked as it is taken, none is held.

    The name and class names are checked at once; a bad record raises when it is reached, so a consumer
    writing inside a transaction (FeatureCache.put_dataset) rolls the whole data set back.

    Args:
        name: the data set's name.
        records: `Record`s or (path, key, label, split) tuples, any iterable (a generator is read once).
        class_names: the label names; every label must index into them.

    Returns:
        An iterator of `Record`s, in input order.

    Raises:
        UsageError: as `check_records`, when the offending record is reached.
    """
    if not isinstance(name, str) or not name.strip():
        raise UsageError(f"a data set needs a non-empty name, got {name!r}")
    if isinstance(class_names, str) or not all(isinstance(c, str) for c in class_names):
        raise UsageError("class_names must be a list of strings")
    return _checked(name, records, len(class_names))


def _checked(name: str, records: Iterable[Record | Sequence], classes: int) -> Iterator[Record]:
    for i, r in enumerate(records):
        if not isinstance(r, Record):
            r = Record(*r)
        check_keys((r.key,))
        if isinstance(r.label, numbers.Integral) and not isinstance(r.label, (bool, int)):
            r = Record(r.path, r.key, int(r.label), r.split)  # numpy ints from a label array
        if r.label is not None and (isinstance(r.label, bool) or not isinstance(r.label, int)
                                    or not 0 <= r.label < classes):
            raise UsageError(f"data set {name!r}: record {i} ({display_path(r.path)}) has label {r.label!r}; expected an int in "
                             f"0..{classes - 1} (one per class name) or None")
        if not isinstance(r.split, str) or not r.split:
            raise UsageError(f"data set {name!r}: record {i} ({display_path(r.path)}) has split {r.split!r}; expected a name "
                             "such as 'train'")
        yield r
