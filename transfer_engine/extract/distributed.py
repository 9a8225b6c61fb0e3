"""Data-parallel extraction under torchrun: each rank extracts its share, rank 0 writes the record.

Ranks append their rows to the same cache; the cache's writer lock serializes the short commits, so
the shards stay consistent. Each rank spools its records to disk (`RecordSpool`); rank 0 merges them
into data-set order a window at a time (`records_in_order`, this module), so no rank ever holds the whole
data set's records. The collectives are te's watched ones, which extraction takes from
`transfer_engine.core.distributed` as te finetune does: a lost peer ends the run with one line instead of
a hang. Without torchrun (WORLD_SIZE unset or 1) the merge yields the one process's own records.
"""

from __future__ import annotations

import heapq
from typing import Iterable, Iterator

from transfer_engine.core.distributed import all_gathered, gathered_on_rank0, rank_and_world

MERGE_WINDOW = 8192  # data-set positions merged per exchange: ~1 MB of records on the wire


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
    rank, world = rank_and_world()
    if world == 1:
        yield from spool
        return
    # Indices may leave gaps (parts number theirs `part << 32 | n`): each window starts at the smallest index
    # any rank still holds, so the exchanges count the records, not the range they span.
    records = iter(spool)
    upcoming = next(records, None)
    while True:
        starts = [i for i in all_gathered(upcoming[0] if upcoming is not None else None,
                                          "merging the ranks' records") if i is not None]
        if not starts:
            return
        lo = min(starts)
        mine = []
        while upcoming is not None and upcoming[0] < lo + window:
            mine.append(upcoming)
            upcoming = next(records, None)
        gathered = gathered_on_rank0(mine, "merging the ranks' records")
        if rank == 0:
            yield from heapq.merge(*gathered)  # indices are unique, so tuples compare by index alone
