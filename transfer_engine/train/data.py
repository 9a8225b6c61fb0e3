"""The labelled splits of a cached data set, ready for training: in memory when they fit, else streamed.

`load_training_data` resolves which data set and which feature space to use, checks everything a user
can get wrong before any training (one class, an empty split, a space that lacks the data set's rows,
NaN/inf features), and returns `TrainingData`. Features are float32, as the cache decodes them; the
one transformation applied is a single global scale (`TrainingData.scale`, the root mean square of the
train features) that conditions the optimizers and that te folds back into the saved head. Columns
are never standardized: int8 storage zeroes columns below a row's quantization step, and per-column
scaling would amplify them (docs/cache.md).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator

import torch

from transfer_engine.cache import identity
from transfer_engine.cache.choice import choose_dataset, choose_space, key_coverage
from transfer_engine.core.progress import Progress, Say, renamed, say_of
from transfer_engine.core.splits import HOLDOUT_FRACTION, hold_out
from transfer_engine.errors import CacheError, UsageError

if TYPE_CHECKING:
    from transfer_engine.cache import Dataset, FeatureCache
    from transfer_engine.cache.rows import CachedSpace

SPLITS = ("train", "val", "test")
# Rows decoded at once when features are streamed (checks, scale, evaluation).
STREAM_BATCH = 4096


def default_memory_budget() -> int:
    """Bytes of decoded float32 features te keeps in memory: a quarter of the machine's RAM."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = 8 << 30
    return int(total // 4)


@dataclass
class Split:
    """The labelled rows of one split.

    Attributes:
        name: "train", "val", "test", or "train+val" for a refit.
        keys: row keys, in data-set order.
        labels: int64 [N].
        features: float32 [N, D] raw features when held in memory, else None (streamed from `space`).
    """

    name: str
    keys: list[str]
    labels: torch.Tensor
    features: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.keys)


@dataclass
class TrainingData:
    """What a head is trained and judged on.

    Attributes:
        cache: the open cache (close with `close()`).
        dataset: the data set's name.
        class_names: the name of each label.
        space: the feature space read.
        provenance: how the space's backbone can be rebuilt (None when the cache does not say).
        splits: "train", "val" and, when the data set has one, "test".
        in_memory: features are held in memory (else each pass streams them from the cache).
        scale: the global scale the optimizers divide features by.
        notes: things the user should know (a held-out val split, skipped records), said once.
    """

    cache: "FeatureCache"
    dataset: str
    class_names: list[str]
    space: "CachedSpace"
    provenance: dict[str, Any] | None
    splits: dict[str, Split]
    in_memory: bool
    scale: float = 1.0
    notes: list[str] = field(default_factory=list)
    data_source: str | None = None
    dataset_sha256: str | None = None  # the records' SHA-256 when read: what the run was trained on

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def dim(self) -> int:
        return self.space.dim

    def counts(self) -> dict[str, int]:
        """{split: rows} of the splits used."""
        return {name: len(split) for name, split in self.splits.items()}

    def combined(self, names: tuple[str, ...]) -> Split:
        """Several splits as one (e.g. train+val for the refit after a sweep)."""
        parts = [self.splits[n] for n in names]
        features = None
        if self.in_memory:
            features = torch.cat([p.features for p in parts]) if len(parts) > 1 else parts[0].features
        return Split("+".join(names), [k for p in parts for k in p.keys], torch.cat([p.labels for p in parts]),
                     features)

    def batches(self, split: Split, batch_size: int, *, shuffle: bool, seed: int = 0, epoch: int = 0,
                device: torch.device | None = None, scaled: bool = True) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(features / scale, labels) minibatches of `split` (raw features when not `scaled`); the order
        depends only on (seed, epoch).

        In memory and streamed, the same seed and epoch give the same order (the cache loader draws its
        permutation the same way), so both paths feed a head the same batches.
        """
        n = len(split)
        if split.features is not None:
            order = (torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch)) if shuffle
                     else torch.arange(n))
            for start in range(0, n, batch_size):
                index = order[start:start + batch_size]
                x, y = split.features[index], split.labels[index]
                if device is not None:
                    x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                yield (x / self.scale if scaled else x), y
            return
        loader = self.space.batches(split.keys, batch_size=batch_size, shuffle=shuffle, seed=seed + epoch,
                                    pin_memory=device is not None and device.type == "cuda", device=device)
        labels = split.labels.to(device) if device is not None else split.labels
        for batch in loader:
            yield (batch.features / self.scale if scaled else batch.features), labels[batch.index.to(labels.device)]

    def close(self) -> None:
        self.cache.close()


def load_training_data(cache: str | os.PathLike, *, dataset: str | None = None, backbone: str | None = None,
                       space: str | None = None, memory_budget: int | None = None,
                       progress: Progress = None, log: Say | None = None) -> TrainingData:
    """Open the cache, pick the data set and space, check them, and load (or prepare to stream) the splits.

    Args:
        cache: the cache directory.
        dataset: the data set's name (None: the cache's only data set).
        backbone: a backbone name: use the space of this backbone that holds the data set.
        space: a space id or an unambiguous prefix (`te cache info` prints them).
        memory_budget: bytes of float32 features to hold in memory (None: a quarter of RAM); more than
            that streams from the cache each pass.
        progress: lines for the user: True on stderr, False or None none, a function is handed each
            (`core.progress`).
        log: deprecated, the function `progress` now takes.

    Returns:
        The `TrainingData` (close it when done).

    Raises:
        UsageError: no such data set or space, an ambiguous choice, fewer than two classes, an empty
            train split, no val split and too few train rows to hold some out, rows missing in the space.
        CacheError: features that are NaN or inf (the message names the rows' keys).
    """
    from transfer_engine.cache import FeatureCache

    say = say_of(renamed(progress, "log", log, "load_training_data"))
    store = FeatureCache.open(cache, create=False)
    try:
        data = _load(store, dataset, backbone, space, memory_budget, say)
    except BaseException:
        store.close()
        raise
    return data


def _load(store: "FeatureCache", dataset: str | None, backbone: str | None, space_id: str | None,
          memory_budget: int | None, say) -> TrainingData:
    ds = store.dataset(choose_dataset(store, dataset))
    notes: list[str] = []
    if len(ds.class_names) < 2:
        raise UsageError(f"data set {ds.name!r} has {len(ds.class_names)} class(es) ({', '.join(ds.class_names)}); "
                         "a classifier needs at least 2")
    splits = _labelled_splits(ds, notes)
    labelled = key_coverage([r.key for r in ds.records if r.label is not None])
    chosen = choose_space(store, ds.name, labelled, backbone=backbone, space_id=space_id)
    provenance = store.provenance(chosen.id)
    total_rows = sum(len(s) for s in splits.values())
    budget = default_memory_budget() if memory_budget is None else int(memory_budget)
    in_memory = total_rows * chosen.dim * 4 <= budget
    if not in_memory:
        notes.append(f"features ({total_rows * chosen.dim * 4 / 2**30:.2f} GiB as float32) exceed the memory budget "
                     f"({budget / 2**30:.2f} GiB): streaming them from the cache each pass")
    # The data set's own --data (recorded per data set); a space's provenance names the last extract of
    # the space, which may have been of another data set. Caches older than that record fall back to it.
    stored = identity.identity(store, ds.name)
    data = TrainingData(store, ds.name, list(ds.class_names), chosen, provenance, splits, in_memory, notes=notes,
                        data_source=(stored.source if stored and stored.source else (provenance or {}).get("data")),
                        dataset_sha256=stored.sha256 if stored else None)
    if in_memory:
        for split in splits.values():
            split.features = chosen.gather(split.keys)
            _check_finite(split.features, split.keys, chosen.id)
        train_x = splits["train"].features
        # Summed in the chunks the streamed pass reads, so both paths get the same scale to the last bit.
        square_mean = sum(_sum_of_squares(train_x[i:i + STREAM_BATCH]) for i in range(0, train_x.shape[0],
                                                                                       STREAM_BATCH))
        square_mean /= max(1, train_x.numel())
    else:
        square_mean = _stream_check(data)
    data.scale = square_mean ** 0.5 if square_mean > 0 else 1.0
    for note in notes:
        say(f"te: note: {note}")
    return data


def _labelled_splits(ds: "Dataset", notes: list[str]) -> dict[str, Split]:
    by_split: dict[str, list] = {}
    unlabelled = 0
    for r in ds.records:
        if r.label is None:
            unlabelled += 1
            continue
        by_split.setdefault(r.split, []).append(r)
    if unlabelled:
        notes.append(f"{unlabelled} unlabelled record(s) of {ds.name!r} are not used")
    other = sorted(set(by_split) - set(SPLITS))
    if other:
        notes.append(f"split(s) {', '.join(other)} of {ds.name!r} are not used (te trains on train, selects on val, "
                     "reports test)")
    train = by_split.get("train", [])
    if not train:
        have = ", ".join(f"{k} ({len(v)})" for k, v in sorted(by_split.items())) or "none"
        raise UsageError(f"data set {ds.name!r} has no labelled samples in split 'train' (it has: {have}); "
                         "te train needs a train split")
    if len({r.label for r in train}) < 2:
        raise UsageError(f"the train split of {ds.name!r} holds a single class ({ds.class_names[train[0].label]!r}); "
                         "a classifier needs samples of at least 2 classes")
    val = by_split.get("val", [])
    if not val:
        train, val = hold_out(train)
        if not val:
            raise UsageError(f"data set {ds.name!r} has no val split and too few train samples to hold some out "
                             "(each class needs 2 or more); add a val split")
        notes.append(f"data set {ds.name!r} has no val split: holding out {len(val)} of its {len(train) + len(val)} "
                     f"train samples ({HOLDOUT_FRACTION:.0%} per class, chosen by content key) for selection")
    splits = {"train": _split("train", train), "val": _split("val", val)}
    if by_split.get("test"):
        splits["test"] = _split("test", by_split["test"])
    return splits


def _split(name: str, records: list) -> Split:
    return Split(name, [r.key for r in records], torch.tensor([r.label for r in records], dtype=torch.int64))


def _check_finite(features: torch.Tensor, keys: list[str], space_id: str, rows: torch.Tensor | None = None) -> None:
    """Refuse rows holding NaN/inf, naming their keys (`rows`: the rows' positions in `keys`, if not 0..N-1)."""
    ok = torch.isfinite(features.sum(dim=1))  # one cheap pass; a finite sum means finite values (or overflow)
    if bool(ok.all()):
        return
    ok = torch.isfinite(features).all(dim=1)
    if bool(ok.all()):
        return
    bad = (~ok).nonzero().flatten()
    positions = (rows[bad] if rows is not None else bad).tolist()
    raise CacheError(f"{len(positions)} feature row(s) of space {space_id[:12]} hold NaN or inf; nothing was trained. "
                     f"Keys: {', '.join(keys[i] for i in positions[:5])}{', ...' if len(positions) > 5 else ''} "
                     "(te cache verify finds damaged shards; re-extract those images)")


def _sum_of_squares(chunk: torch.Tensor) -> float:
    return float(chunk.double().pow(2).sum())


def _stream_check(data: TrainingData) -> float:
    """One streamed pass over every split: refuse NaN/inf rows, and return the train features' mean square."""
    total, count = 0.0, 0
    for split in data.splits.values():
        loader = data.space.batches(split.keys, batch_size=STREAM_BATCH, shuffle=False)
        for batch in loader:
            _check_finite(batch.features, split.keys, data.space.id, rows=batch.index)
            if split.name == "train":
                total += _sum_of_squares(batch.features)
                count += batch.features.numel()
    return total / count if count else 0.0
