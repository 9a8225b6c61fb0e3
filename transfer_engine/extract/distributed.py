"""Data-parallel extraction under torchrun: each rank extracts its share, rank 0 writes the record.

Ranks append their rows to the same cache; the cache's writer lock serializes the short commits, so
the shards stay consistent. Without torchrun (WORLD_SIZE unset or 1) every function is a no-op.
"""

from __future__ import annotations

import os

import torch.distributed as torch_dist


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the world size, initializing the process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    if not torch_dist.is_initialized():
        import torch

        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch_dist.init_process_group(backend)
    return torch_dist.get_rank(), torch_dist.get_world_size()


def barrier() -> None:
    if torch_dist.is_initialized():
        torch_dist.barrier()


def collect(records: list, failed: list, extracted: int, reused: int) -> tuple[list, list, int, int]:
    """All ranks' records (sorted by their data-set index, the first field), failures and counts."""
    if not torch_dist.is_initialized():
        return sorted(records), failed, extracted, reused
    gathered: list = [None] * torch_dist.get_world_size()
    torch_dist.all_gather_object(gathered, (records, failed, extracted, reused))
    return (sorted(r for g in gathered for r in g[0]), [f for g in gathered for f in g[1]],
            sum(g[2] for g in gathered), sum(g[3] for g in gathered))
