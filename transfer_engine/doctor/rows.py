"""What te doctor examines: a cached data set's labelled records and one feature row per distinct image.

The data set and its feature space are chosen as te train chooses them (`load_training_data`: the same
names, the same one-line errors); the records keep the splits they were extracted with. Features are read
through a `CachedMatrix`, one row per distinct content key (copies of one image share a row), L2-normalised
when read: everything te doctor computes on them is a cosine, and no matrix of them is held whole (memory
flat in the number of rows: docs/doctor.md, "Scale"). The cache stays open while the rows are in use:
`Rows.close` (and `Signature.close`) close it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from transfer_engine.core.progress import Say
from transfer_engine.doctor.matrix import CachedMatrix

if TYPE_CHECKING:
    import torch

SPLITS = ("train", "val", "test")


@dataclass
class Rows:
    """A data set's labelled records and the features of its distinct images.

    Attributes:
        dataset: the data set's name.
        data: the data set's `--data` as recorded (None when the cache does not say).
        class_names: the name of each label.
        space_id: the feature space read; backbone: its backbone.
        paths, labels, splits: per record (labelled records of train, val and test, in data-set order).
        record_key: int64 [R], the distinct image (row of `features`) of each record.
        keys: the content key of each distinct image.
        features: float32 [U, D], L2-normalised: a `CachedMatrix` read from the cache when indexed (a NumPy
            array in tests of the parts that only index it).
        notes: what the user should know (records left out).
        closes: called by `close` (the cache behind `features`).
    """

    dataset: str
    data: str | None
    class_names: list[str]
    space_id: str
    backbone: str
    paths: list[str]
    labels: np.ndarray
    splits: np.ndarray
    record_key: np.ndarray
    keys: list[str]
    features: "CachedMatrix | np.ndarray"
    notes: list[str] = field(default_factory=list)
    closes: Callable[[], None] | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def raw(self, records: np.ndarray) -> "torch.Tensor":
        """float32 [len(records), D]: the cached (unnormalised) features of these records."""
        return self.features.raw(self.record_key[records])

    def gathered(self, records: np.ndarray) -> "RecordFeatures":
        """The cached (unnormalised) features of these records, read a block at a time as te train's k-fold
        probe asks for them (`out_of_fold_probabilities`), never held as a copy."""
        return RecordFeatures(self.features, self.record_key[records])

    def close(self) -> None:
        """Close the cache the features are read from (the rows' other attributes stay usable)."""
        if self.closes is not None:
            self.closes()
            self.closes = None

    @functools.cached_property
    def records_of(self) -> list[list[int]]:
        """The records (positions) of each distinct image."""
        out: list[list[int]] = [[] for _ in self.keys]
        for r, u in enumerate(self.record_key.tolist()):
            out[u].append(r)
        return out

    def in_split(self, *names: str) -> np.ndarray:
        """Positions of the records in these splits."""
        return np.flatnonzero(np.isin(self.splits, names))

    def describe(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "data": self.data, "backbone": self.backbone, "space": self.space_id,
                "records": len(self.paths), "distinct_images": len(self.keys), "classes": self.num_classes,
                "splits": {s: int((self.splits == s).sum()) for s in SPLITS}}


class RecordFeatures:
    """The cached (unnormalised) features of some records, for te train's k-fold probe: row i is the features'
    row of record i's image, read from the cache when `take` asks for it (what te train's `GatheredRows` does
    for a matrix in memory)."""

    def __init__(self, features: CachedMatrix, images: np.ndarray) -> None:
        import torch

        self.features = features
        self.index = torch.from_numpy(np.ascontiguousarray(images, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.index)

    @property
    def dim(self) -> int:
        return self.features.shape[1]

    def take(self, positions: "torch.Tensor | slice") -> "torch.Tensor":
        """float32 [len(positions), D]: these records' features (a copy)."""
        return self.features.raw(self.index[positions])


def load_rows(cache: str, *, dataset: str | None, backbone: str | None, space: str | None, say: Say) -> Rows:
    """Open the cache, choose the data set and space as te train does, and read its rows. The copy
    signature's space (`signature_of`) is never chosen unasked: beside one other backbone, that one is meant.

    Raises:
        UsageError / CacheError: as `load_training_data` (no such data set or space, an ambiguous choice, one
            class, no train split, rows missing from the space, NaN or inf features).
    """
    from transfer_engine.cache import identity
    from transfer_engine.train import load_training_data

    if backbone is None and space is None:
        backbone = _beside_the_signature(cache)
    # memory_budget=0: te train's loader only chooses and checks here (one streamed pass); the features are
    # read from its cache, which stays open as long as the rows are used (`Rows.close`), once per distinct image.
    data = load_training_data(cache, dataset=dataset, backbone=backbone, space=space, memory_budget=0,
                              progress=False)
    try:
        ds = data.cache.dataset(data.dataset)
        notes = [n for n in data.notes if "val split" not in n and "memory budget" not in n]
        records = [r for r in ds.records if r.label is not None and r.split in SPLITS]
        index: dict[str, int] = {}
        record_key = np.fromiter((index.setdefault(r.key, len(index)) for r in records), dtype=np.int64,
                                 count=len(records))
        keys = list(index)
        features = CachedMatrix(data.space, keys)
        stored = identity.identity(data.cache, data.dataset)
        source = stored.source if stored and stored.source else (data.provenance or {}).get("data")
        say(f"doctor: {ds.name}: {len(records)} records, {len(keys)} distinct images, {data.space.config.backbone} "
            f"features ({data.space.dim}-d, space {data.space.id[:12]})")
        return Rows(ds.name, source, list(ds.class_names), data.space.id, data.space.config.backbone,
                    [r.path for r in records], np.array([r.label for r in records], dtype=np.int64),
                    np.array([r.split for r in records]), record_key, keys, features, notes, data.close)
    except BaseException:
        data.close()
        raise


def _beside_the_signature(cache: str) -> str | None:
    """The one other backbone of a cache that also holds a copy backbone (the signature or the thumbnails;
    None otherwise, or when the cache cannot be opened: te train's loader then says why)."""
    from transfer_engine.backbones.signature import NAME, THUMBNAIL_NAME
    from transfer_engine.cache import FeatureCache
    from transfer_engine.errors import TEError

    try:
        with FeatureCache.open(cache, create=False) as store:
            names = {s.backbone for s in store.spaces()}
    except TEError:
        return None
    others = names - {NAME, THUMBNAIL_NAME}
    return others.pop() if names & {NAME, THUMBNAIL_NAME} and len(others) == 1 else None


@dataclass
class Signature:
    """What a copy backbone (`dct_signature` or `copy_thumbnail`, transfer_engine/backbones/signature.py) holds
    for each distinct image.

    Attributes:
        space_id: its space.
        features: float32 [U, D], L2-normalised, in the order of `Rows.keys` (read when indexed).
        closes: called by `close` (the cache behind `features`).
    """

    space_id: str
    features: "CachedMatrix | np.ndarray"
    closes: Callable[[], None] | None = None

    def close(self) -> None:
        if self.closes is not None:
            self.closes()
            self.closes = None


def signature_of(cache: str, rows: Rows, backbone: str | None = None) -> tuple[Signature | None, str]:
    """The rows of a copy backbone (default: the copy signature) for every distinct image of `rows`, from a space
    of that backbone that holds them all (the first by id when several do), and a sentence on what was found:
    with no such space, (None, why)."""
    from transfer_engine.backbones.signature import NAME, THUMBNAIL_NAME
    from transfer_engine.cache import FeatureCache

    backbone = backbone or NAME
    what, whose = ("copy signature", "copy signature's") if backbone == NAME else ("copy thumbnails", "copy thumbnails'")
    if rows.backbone in (NAME, THUMBNAIL_NAME):
        return None, f"the features examined are a copy backbone ({rows.backbone}) itself"
    store = FeatureCache.open(cache, create=False)
    try:
        spaces = [store.space(s) for s in store.spaces() if s.backbone == backbone]
        missing = [sum(not have for have in s.contains(rows.keys)) for s in spaces]
        full = sorted((s for s, m in zip(spaces, missing) if m == 0), key=lambda s: s.id)
        if full:  # the cache stays open for the rows' reads: Signature.close closes it
            return (Signature(full[0].id, CachedMatrix(full[0], rows.keys), store.close),
                    f"space {full[0].id[:12]} ({backbone})")
    except BaseException:
        store.close()
        raise
    store.close()
    if spaces:
        return None, (f"the {whose} space{'s' if len(spaces) > 1 else ''} lack{'' if len(spaces) > 1 else 's'} "
                      f"{min(missing)} of the {len(rows.keys)} images")
    return None, f"the cache holds no {what} for these images"
