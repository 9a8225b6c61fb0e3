"""`CachedSpace`: the rows of one feature space: contains, append, locate, gather, batches."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator, Sequence, Union

import torch

from transfer_engine import ops
from transfer_engine.cache.index import SpaceRow
from transfer_engine.cache.records import check_keys
from transfer_engine.cache.shards import shard_relpath
from transfer_engine.cache.space import FeatureSpace
from transfer_engine.errors import CacheError, CorruptCacheError, UsageError

if TYPE_CHECKING:
    from transfer_engine.cache.loader import FeatureLoader
    from transfer_engine.cache.store import FeatureCache

# fp16 holds magnitudes up to 65504; larger features would be stored as inf.
_FP16_MAX = 65504.0


def _first_occurrences(keys: list[str]) -> list[int]:
    """Positions of the first occurrence of each distinct key."""
    seen: set[str] = set()
    out = []
    for i, key in enumerate(keys):
        if key not in seen:
            seen.add(key)
            out.append(i)
    return out


@dataclass(frozen=True)
class RowLocations:
    """Where rows live, resolved once from the index (then readable without it, from any thread).

    Attributes:
        shard: int64 [N] shard id of each row.
        row: int64 [N] row number within its shard.
        shards: {shard id: (relative path, committed rows)} as of the lookup.
    """

    shard: torch.Tensor
    row: torch.Tensor
    shards: dict[int, tuple[str, int]]

    def __len__(self) -> int:
        return int(self.row.numel())

    def subset(self, positions: "torch.Tensor | slice") -> "RowLocations":
        """The locations at `positions` (int64, in that order), or in a slice of them (views, no copy)."""
        return RowLocations(self.shard[positions], self.row[positions], self.shards)


class CachedSpace:
    """The rows of one feature space in one cache. Get it from `FeatureCache.space(...)`.

    Attributes:
        cache: the owning cache.
        config: the `FeatureSpace` (the hashed inputs).
    """

    def __init__(self, cache: "FeatureCache", row: SpaceRow, config: FeatureSpace) -> None:
        self.cache = cache
        self.config = config
        self._row = row

    @property
    def id(self) -> str:
        """The space's SHA-256 hex digest."""
        return self._row.digest

    @property
    def dim(self) -> int:
        return self._row.dim

    @property
    def stored(self) -> str:
        """Stored dtype of the rows: "fp32", "fp16" or "int8"."""
        return self._row.stored

    @property
    def row_bytes(self) -> int:
        return self._row.row_bytes

    def __len__(self) -> int:
        return self.cache.index.count_rows(self._row.id)

    def __repr__(self) -> str:
        return f"CachedSpace({self.config.backbone}, dim={self.dim}, stored={self.stored}, id={self.id[:12]})"

    # -- lookups ----------------------------------------------------------------------------------------
    def contains(self, keys: Sequence[str]) -> list[bool]:
        """Whether each key has a committed row in this space."""
        keys = check_keys(keys)
        found = self.cache.index.locations(self._row.id, keys)
        return [k in found for k in keys]

    def locate(self, keys: Sequence[str]) -> RowLocations:
        """Resolve keys to rows, all from one consistent snapshot of the index.

        Raises:
            UsageError: some keys have no row here (the message counts them and names a few).
        """
        keys = check_keys(keys)
        index = self.cache.index
        with index.snapshot():
            found = index.locations(self._row.id, keys)
            shards = {s.id: (shard_relpath(self.id, s.id), s.rows) for s in index.shards(self._row.id)}
        missing = [k for k in keys if k not in found]
        if missing:
            raise UsageError(f"{len(missing)} of {len(keys)} keys have no row in space {self.id[:12]} "
                             f"({self.config.backbone}): {', '.join(k[:16] for k in missing[:3])}"
                             f"{', ...' if len(missing) > 3 else ''}")
        pairs = torch.tensor([found[k] for k in keys], dtype=torch.int64).reshape(-1, 2)
        return RowLocations(pairs[:, 0].contiguous(), pairs[:, 1].contiguous(), shards)

    def records_covered(self, dataset: str, split: str | None = None) -> int:
        """How many records of data set `dataset` (of `split`, or all) have a row in this space; counted by the
        index, without reading the records."""
        return self.cache.index.dataset_coverage(dataset, self._row.id, split)

    # -- writing ----------------------------------------------------------------------------------------
    def append(self, keys: Sequence[str], features: torch.Tensor) -> int:
        """Store the features of new keys; keys the space already holds are skipped, not duplicated.

        The rows are durable and visible to readers when this returns; a crash during the call loses
        this batch only.

        Args:
            keys: one content key per row (`content_key` of the image bytes).
            features: float tensor [N, dim] (any device; rows are encoded to the stored dtype).

        Returns:
            How many rows were added (duplicates within `keys` count once).

        Raises:
            UsageError: wrong shape or dtype, a key/row count mismatch, a key that is not a hex digest.
            CacheError: NaN/inf features (or beyond fp16's range for fp16 storage), naming their keys.
        """
        keys = check_keys(keys)
        self._check_features(keys, features)
        if not keys:
            return 0
        first = _first_occurrences(keys)
        chosen = features if len(first) == len(keys) else features[first]
        if chosen.dtype == torch.float64:  # the codecs take float32/16/bf16; float64 adds nothing stored
            chosen = chosen.to(torch.float32)
        # Encoded before taking the lock, so a second writer's quantization overlaps this one's I/O.
        # Callers check `contains` before extracting, so rows that turn out present are rare waste.
        encoded = ops.encode_rows(chosen, self.stored).cpu().contiguous()
        self._row, added = self.cache.append_encoded(self._row, [keys[i] for i in first], encoded.numpy().data)
        return added

    def _check_features(self, keys: list[str], features: torch.Tensor) -> None:
        if not isinstance(features, torch.Tensor) or not features.is_floating_point():
            got = features.dtype if isinstance(features, torch.Tensor) else type(features).__name__
            raise UsageError(f"features must be a floating-point torch.Tensor [N, {self.dim}], got {got}")
        if features.dim() != 2 or features.shape[1] != self.dim:
            raise UsageError(f"features of space {self.id[:12]} ({self.config.backbone}) must be [N, {self.dim}], "
                             f"got {list(features.shape)}")
        if features.shape[0] != len(keys):
            raise UsageError(f"got {len(keys)} keys for {features.shape[0]} feature rows; expected one key per row")
        bad = self._unstorable_rows(features)
        if bad:  # a runtime failure (a backbone gone numerically wrong), not a usage error: exit 1
            what = "NaN, inf or beyond fp16's range (|x| > 65504)" if self.stored == "fp16" else "NaN or inf"
            raise CacheError(f"{len(bad)} feature rows hold {what}, nothing was stored; keys: "
                             f"{', '.join(keys[i] for i in bad[:5])}{', ...' if len(bad) > 5 else ''}")

    def _unstorable_rows(self, features: torch.Tensor) -> list[int]:
        """Rows that hold NaN or inf (or, for fp16 storage, values fp16 would turn into inf)."""
        if self.stored == "fp16":
            low, high = torch.aminmax(features, dim=1)  # NaN propagates, and NaN fails both comparisons
            ok = (low >= -_FP16_MAX) & (high <= _FP16_MAX)
        else:
            # One cheap pass: a row sum is finite only if every element is (unless finite values overflow
            # the sum; the exact test below settles those rare rows).
            ok = torch.isfinite(features.sum(dim=1))
            if not bool(ok.all()):
                ok = torch.isfinite(features).all(dim=1)
        return (~ok).nonzero().flatten().tolist()

    # -- reading ----------------------------------------------------------------------------------------
    def gather(self, rows: Union[Sequence[str], RowLocations], out: torch.Tensor | None = None) -> torch.Tensor:
        """Decode rows into float32, in the order asked.

        Args:
            rows: keys, or `RowLocations` from `locate` (cheaper when the same rows are read again).
            out: optional preallocated float32 [N, dim] (pinned memory welcome), filled in place.

        Returns:
            float32 [N, dim] on the CPU (`out` when given).
        """
        locations = rows if isinstance(rows, RowLocations) else self.locate(rows)
        n = len(locations)
        if out is None:
            out = torch.empty((n, self.dim), dtype=torch.float32)
        elif out.dtype != torch.float32 or tuple(out.shape) != (n, self.dim):
            raise UsageError(f"out must be float32 [{n}, {self.dim}], got {out.dtype} {list(out.shape)}")
        for data, rows_, positions, _ in self._by_shard(locations):
            ops.gather_rows(data, rows_, self.dim, self.stored, out=out, out_index=positions)
        return out

    def stored_rows(self, rows: Union[Sequence[str], RowLocations]) -> torch.Tensor:
        """The rows as stored, undecoded, in the order asked (int8 rows: codes and scale, split by
        `ops.split_int8_rows`).

        Args:
            rows: keys, or `RowLocations` from `locate`.

        Returns:
            uint8 [N, row_bytes] on the CPU (a copy: it outlives the shards' maps).

        Raises:
            CorruptCacheError: the index names a row beyond its shard's committed rows.
        """
        locations = rows if isinstance(rows, RowLocations) else self.locate(rows)
        out = torch.empty((len(locations), self.row_bytes), dtype=torch.uint8)
        for data, rows_, positions, committed in self._by_shard(locations):
            if int(rows_.max()) >= committed:
                raise CorruptCacheError(f"the index of {self.cache.root} names row {int(rows_.max())} of a shard of "
                                        f"space {self.id[:12]} that commits {committed}; run te cache verify")
            out[positions] = data.view(committed, self.row_bytes)[rows_]
        return out

    def _by_shard(self, locations: RowLocations) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]]:
        """(the shard's mapped bytes, the rows wanted of it, their positions in `locations`, its committed
        rows) for each shard the locations name: one map lookup per shard, not per row."""
        if len(locations) == 0:
            return
        order = torch.argsort(locations.shard, stable=True)
        shard_ids, counts = torch.unique_consecutive(locations.shard[order], return_counts=True)
        start = 0
        for shard_id, count in zip(shard_ids.tolist(), counts.tolist()):
            positions = order[start:start + count]
            start += count
            relpath, committed = locations.shards[shard_id]
            data = self.cache.maps.rows(shard_id, relpath, committed, self.row_bytes)
            yield data, locations.row[positions], positions, committed

    def batches(self, keys: Sequence[str] | None = None, *, dataset: str | None = None, split: str | None = None,
                batch_size: int = 256, shuffle: bool = True, seed: int = 0, drop_last: bool = False,
                pin_memory: bool = False, device: str | torch.device | None = None,
                prefetch: int = 2) -> "FeatureLoader":
        """Minibatches of rows for training: shuffled per epoch, decoded by the gather op in a
        background thread while the previous batch is used.

        Args:
            keys: the rows to iterate; or None with `dataset` (and `split`) to iterate a data set's
                records, which also yields their labels.
            dataset: name of a stored data set.
            split: one split of `dataset` (all records for None).
            batch_size: rows per batch.
            shuffle: a new order each epoch (seeded by seed + epoch), else record order.
            seed: the shuffle seed.
            drop_last: skip a last, smaller batch.
            pin_memory: decode into page-locked memory (needs CUDA; ignored with a warning otherwise).
            device: where batches go (e.g. "cuda"); copied asynchronously from pinned memory.
            prefetch: batches prepared ahead.

        Returns:
            A `FeatureLoader`: iterate it once per epoch for `Batch(features, labels, index)`.
        """
        from transfer_engine.cache.loader import FeatureLoader

        labels = None
        if dataset is not None:
            if keys is not None:
                raise UsageError("give keys or a dataset, not both")
            records = self.cache.dataset(dataset).select(split)
            if not records:
                raise UsageError(f"data set {dataset!r} has no records in split {split!r}")
            keys = [r.key for r in records]
            if all(r.label is not None for r in records):
                labels = torch.tensor([r.label for r in records], dtype=torch.int64)
        elif keys is None:
            raise UsageError("batches() needs keys or a dataset name")
        return FeatureLoader(self, self.locate(keys), labels, batch_size=batch_size, shuffle=shuffle, seed=seed,
                             drop_last=drop_last, pin_memory=pin_memory, device=device, prefetch=prefetch)
