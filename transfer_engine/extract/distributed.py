"""Data-parallel extraction under torchrun: each rank extracts its share, rank 0 writes the record.

Ranks append their rows to the same cache; the cache's writer lock serializes the short commits, so
the shards stay consistent. Each rank spools its records to disk (`RecordSpool`); rank 0 merges them
into data-set order a window at a time, so no rank ever holds the whole data set's records. Without
torchrun (WORLD_SIZE unset or 1) every function works on the one process's own data.
"""

from __future__ import annotations

import heapq
from typing import Any, Iterable, Iterator

import torch.distributed as torch_dist

from transfer_engine.core.runtime import rank_and_world  # noqa: F401  (this module's API, used as dist.rank_and_world)

MERGE_WINDOW = 8192  # data-set positions merged per exchange: ~1 MB of records on the wire


def barrier() -> None:
    if torch_dist.is_initialized():
        torch_dist.barrier()


def all_gathered(obj: Any) -> list[Any]:
    """Every rank's `obj` (a small picklable value), in rank order, on every rank."""
    if not torch_dist.is_initialized():
        return [obj]
    gathered: list = [None] * torch_dist.get_world_size()
    torch_dist.all_gather_object(gathered, obj)
    return gathered


def from_rank0(obj: Any) -> Any:
    """Rank 0's `obj` on every rank (other ranks' arguments are ignored)."""
    if not torch_dist.is_initialized():
        return obj
    box = [obj]
    torch_dist.broadcast_object_list(box, src=0)
    return box[0]


def records_in_order(spool: Iterable[tuple], last_index: int, window: int = MERGE_WINDOW) -> Iterator[tuple]:
    """All ranks' spooled records merged in data-set order: yielded on rank 0, nothing elsewhere.

    Every rank must call this (and run it to the end) at the same point. Each rank's spool is in
    data-set order (records are tuples starting with their data-set index); window by window, every
    rank sends rank 0 its records of the next `window` positions, and rank 0 merges them. Memory is one
    window, however large the data set.

    Args:
        spool: this rank's records, ordered by their first field.
        last_index: the largest data-set index this rank spooled (-1 for none).
        window: data-set positions per exchange.
    """
    if not torch_dist.is_initialized():
        yield from spool
        return
    rank = torch_dist.get_rank()
    end = max(all_gathered(last_index)) + 1
    records = iter(spool)
    upcoming = next(records, None)
    for lo in range(0, end, window):
        mine = []
        while upcoming is not None and upcoming[0] < lo + window:
            mine.append(upcoming)
            upcoming = next(records, None)
        gathered: list | None = [None] * torch_dist.get_world_size() if rank == 0 else None
        torch_dist.gather_object(mine, gathered, dst=0)
        if rank == 0:
            yield from heapq.merge(*gathered)  # indices are unique, so tuples compare by index alone
