"""What a data set in the cache *is*: where its images came from (`--data`, as te records it), its class
names, and the SHA-256 of its records (the one verify checks). A name alone is not an identity: two
folders called `photos` in different projects, or one folder whose class `cat` was renamed `kitten`,
would otherwise replace a data set silently, and the runs trained on it would go on reading labels that
now mean other classes.

- `te extract` refuses to replace a data set by one from another source or with other class names
  unless `--replace` says so (`check_replacement`), and records the source per data set
  (`record_source`), so a run learns its data set's `--data`, not that of the last extract of the space.
- A run records the SHA-256 of the data set it was trained on (te train's run.json); `te finetune --from` and
  `te export` read the data set's records only while the identity still matches (`check_unchanged`).

Caches written before sources were recorded have no source for their data sets: the class names alone
are compared there, and the next extract records the source.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

from transfer_engine.cache.index import DATASET_SHA256
from transfer_engine.core.paths import display_path
from transfer_engine.errors import UsageError

if TYPE_CHECKING:
    from transfer_engine.cache.store import FeatureCache

_SOURCE = "dataset_source:"


class DatasetChangedError(UsageError):
    """The data set under a run's name is no longer the one the run was trained on."""


@dataclass(frozen=True)
class DatasetIdentity:
    """A stored data set's identity.

    Attributes:
        name: its name in the cache.
        source: `--data` as recorded (absolute path, or builtin:NAME); None for caches older than the record.
        class_names: its classes, in label order.
        sha256: the SHA-256 of its records, as stored (None when none is recorded).
    """

    name: str
    source: str | None
    class_names: tuple[str, ...]
    sha256: str | None


def identity(cache: "FeatureCache", name: str) -> DatasetIdentity | None:
    """Data set `name`'s identity, or None when the cache has no such data set."""
    classes = cache.index.dataset_classes(name)
    if classes is None:
        return None
    source = cache.index.meta(_SOURCE + name)
    return DatasetIdentity(name, json.loads(source) if source is not None else None, tuple(classes),
                           cache.index.meta(DATASET_SHA256 + name))


def record_source(cache: "FeatureCache", name: str, source: str) -> None:
    """Record where data set `name`'s images came from (`recorded_data(--data)`)."""
    with cache.lock, cache.index.write():  # as JSON: a path that is not UTF-8 is kept losslessly (escaped)
        cache.index.set_meta(_SOURCE + name, json.dumps(source))


def check_replacement(cache: "FeatureCache", name: str, source: str, class_names: Sequence[str] | None,
                      replace: bool) -> None:
    """Refuse (UsageError) to store data set `name` from `source` with `class_names` over a stored data set
    of that name from another source or with other classes, unless `replace` (classes None: not known yet,
    only the source is checked). The same source with the
    same classes is the incremental case (images added or removed) and is always allowed."""
    stored = identity(cache, name)
    if stored is None or replace:
        return
    keep = ("pass --name NEW to keep both, or --replace to replace it (runs trained on it will then refuse "
            "to continue from it)")
    if stored.source is not None and stored.source != source:
        raise UsageError(f"data set {name!r} in {cache.root} holds the images of {display_path(stored.source)}, "
                         f"not of {display_path(source)}; " + keep)
    if class_names is not None and tuple(class_names) != stored.class_names:
        raise UsageError(f"data set {name!r} in {cache.root} has the classes {_listed(stored.class_names)}; "
                         f"--data {display_path(source)} has {_listed(class_names)}; " + keep)


def check_unchanged(cache: "FeatureCache", name: str, class_names: Sequence[str], sha256: str | None,
                    run: str) -> None:
    """Refuse (DatasetChangedError) to use data set `name` for the run `run` when its classes or its records
    are no longer those the run was trained on (a run without a recorded SHA-256 is checked on classes
    alone). A data set that is gone is not this check's business: reading it says so."""
    stored = identity(cache, name)
    if stored is None:
        return  # gone altogether: reading its records says so, as it always has
    if tuple(class_names) != stored.class_names:
        raise DatasetChangedError(f"data set {name!r} in {cache.root} now has the classes {_listed(stored.class_names)}, "
                         f"the run {run} was trained on {_listed(class_names)}; train a new run on it (te train)")
    if sha256 is not None and stored.sha256 is not None and sha256 != stored.sha256:
        raise DatasetChangedError(f"data set {name!r} in {cache.root} changed since the run {run} was trained on it (other "
                         "images or splits); train a new run on it (te train), or extract the new images under "
                         "another --name")


def _listed(names: Sequence[str], shown: int = 6) -> str:
    more = f", ... ({len(names)} in all)" if len(names) > shown else ""
    return "[" + ", ".join(list(names)[:shown]) + more + "]"
