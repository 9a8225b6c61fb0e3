"""What te doctor examines: a cached data set's labelled records and one feature row per distinct image.

The data set and its feature space are chosen as te train chooses them (`load_training_data`: the same
names, the same one-line errors); the records keep the splits they were extracted with. Features are read
once per distinct content key (copies of one image share a row), as float32 and L2-normalised in place:
everything te doctor computes on them is a cosine, and the normalised matrix is the only copy held.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from transfer_engine.core.progress import Say

if TYPE_CHECKING:
    from transfer_engine.train import GatheredRows

SPLITS = ("train", "val", "test")
# Rows gathered from the cache at once (float32 [GATHER_ROWS, D] in flight).
GATHER_ROWS = 8192


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
        features: float32 [U, D], L2-normalised.
        norms: float32 [U], the features' norms before normalising (raw = features * norms).
        notes: what the user should know (records left out).
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
    features: np.ndarray
    norms: np.ndarray
    notes: list[str] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def raw(self, records: np.ndarray) -> np.ndarray:
        """float32 [len(records), D]: the cached (unnormalised) features of these records."""
        return self.gathered(records).take(slice(None)).numpy()

    def gathered(self, records: np.ndarray) -> "GatheredRows":
        """The cached (unnormalised) features of these records as te train's `GatheredRows`: taken from the
        one normalised matrix times its norms when needed, never held as a copy."""
        import torch

        from transfer_engine.train import GatheredRows

        return GatheredRows(torch.from_numpy(self.features), torch.from_numpy(self.record_key[records]),
                            torch.from_numpy(self.norms))

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
    # read below, once per distinct image.
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
        features, norms = _normalised(data.space, keys)
        stored = identity.identity(data.cache, data.dataset)
        source = stored.source if stored and stored.source else (data.provenance or {}).get("data")
        say(f"doctor: {ds.name}: {len(records)} records, {len(keys)} distinct images, {data.space.config.backbone} "
            f"features ({data.space.dim}-d, space {data.space.id[:12]})")
        return Rows(ds.name, source, list(ds.class_names), data.space.id, data.space.config.backbone,
                    [r.path for r in records], np.array([r.label for r in records], dtype=np.int64),
                    np.array([r.split for r in records]), record_key, keys, features, norms.astype(np.float32),
                    notes)
    finally:
        data.close()


def _normalised(space: Any, keys: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The rows of `keys` in a cached space, L2-normalised (float32 [U, D]), and their norms before."""
    import torch

    features = np.empty((len(keys), space.dim), dtype=np.float32)
    norms = np.empty(len(keys), dtype=np.float32)
    for start in range(0, len(keys), GATHER_ROWS):
        chunk = keys[start:start + GATHER_ROWS]
        rows = features[start:start + len(chunk)]
        space.gather(chunk, out=torch.from_numpy(rows))
        # a chunk at a time: the norm of the whole matrix at once squares it into a temporary as large as it
        norms[start:start + len(chunk)] = np.linalg.norm(rows, axis=1)
        rows /= np.maximum(norms[start:start + len(chunk)], 1e-12)[:, None]
    return features, norms


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
        features: float32 [U, D], L2-normalised, in the order of `Rows.keys`.
    """

    space_id: str
    features: np.ndarray


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
    with FeatureCache.open(cache, create=False) as store:
        spaces = [store.space(s) for s in store.spaces() if s.backbone == backbone]
        missing = [sum(not have for have in s.contains(rows.keys)) for s in spaces]
        full = sorted((s for s, m in zip(spaces, missing) if m == 0), key=lambda s: s.id)
        if full:
            features, _ = _normalised(full[0], rows.keys)
            return Signature(full[0].id, features), f"space {full[0].id[:12]} ({backbone})"
    if spaces:
        return None, (f"the {whose} space{'s' if len(spaces) > 1 else ''} lack{'' if len(spaces) > 1 else 's'} "
                      f"{min(missing)} of the {len(rows.keys)} images")
    return None, f"the cache holds no {what} for these images"
