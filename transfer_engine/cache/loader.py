"""`FeatureLoader`: shuffled minibatches of cached rows, decoded ahead of use in a background thread.

The gather op releases the GIL while it decodes, so the thread overlaps decoding batch k+1 with the
training step on batch k. Row locations are resolved once, up front, so the thread never touches the
index: it reads only the memory-mapped shards.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Iterator, NamedTuple

import torch

from transfer_engine._prefetch import prefetched

if TYPE_CHECKING:
    from transfer_engine.cache.rows import CachedSpace, RowLocations


class Batch(NamedTuple):
    """One minibatch.

    Attributes:
        features: float32 [B, dim] (on the loader's device).
        labels: int64 [B] when iterating a labelled data set, else None.
        index: int64 [B] positions of these rows in the loader's key/record list.
    """

    features: torch.Tensor
    labels: torch.Tensor | None
    index: torch.Tensor



class FeatureLoader:
    """Iterate once per epoch; each epoch has its own order (seed + epoch) when shuffling.

    Args:
        space: the space to read.
        locations: the rows, resolved by `CachedSpace.locate`.
        labels: int64 [N] labels in the same order, or None.
        batch_size, shuffle, seed, drop_last, pin_memory, device, prefetch: see `CachedSpace.batches`.
    """

    def __init__(self, space: "CachedSpace", locations: "RowLocations", labels: torch.Tensor | None, *,
                 batch_size: int = 256, shuffle: bool = True, seed: int = 0, drop_last: bool = False,
                 pin_memory: bool = False, device: str | torch.device | None = None, prefetch: int = 2) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.space = space
        self.locations = locations
        self.labels = labels
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.device = torch.device(device) if device is not None else None
        self.prefetch = max(1, int(prefetch))
        self.pin_memory = pin_memory and torch.cuda.is_available()
        if pin_memory and not self.pin_memory:
            warnings.warn("pin_memory needs CUDA, which is not available; using ordinary memory", stacklevel=3)
        self.epoch = 0

    def __len__(self) -> int:
        n = len(self.locations)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _order(self, epoch: int) -> torch.Tensor:
        n = len(self.locations)
        if not self.shuffle:
            return torch.arange(n)
        return torch.randperm(n, generator=torch.Generator().manual_seed(self.seed + epoch))

    def _make(self, positions: torch.Tensor) -> Batch:
        out = torch.empty((positions.numel(), self.space.dim), dtype=torch.float32, pin_memory=self.pin_memory)
        features = self.space.gather(self.locations.subset(positions), out=out)
        labels = self.labels[positions] if self.labels is not None else None
        if self.device is not None and self.device.type != "cpu":
            features = features.to(self.device, non_blocking=self.pin_memory)
            labels = labels.to(self.device, non_blocking=self.pin_memory) if labels is not None else None
        return Batch(features, labels, positions)

    def __iter__(self) -> Iterator[Batch]:
        order = self._order(self.epoch)
        self.epoch += 1
        chunks = [order[i:i + self.batch_size] for i in range(0, order.numel(), self.batch_size)]
        if self.drop_last and chunks and chunks[-1].numel() < self.batch_size:
            chunks.pop()
        yield from prefetched((self._make(chunk) for chunk in chunks), self.prefetch, "te-cache-prefetch")
