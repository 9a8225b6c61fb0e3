"""Extraction across machines (torchrun with --nnodes > 1): an index is only ever opened by the
processes of one host.

sqlite's WAL needs shared memory, and flock over a network file system is advisory at best, so ranks on
several hosts must never open one index. So (docs/scale.md):

- node 0's processes write into CACHE itself; nobody else opens it;
- node k >= 1's processes write into the node's own delta cache, `--node-cache DIR/<host>-node<k>`
  (default CACHE/nodes/<host>-node<k>), which nobody else opens: it may sit on the node's local disk;
- before extracting, rank 0 sends every rank the keys CACHE already holds for the run's space
  (`shared_present_keys`, over torch.distributed), so no node extracts what is cached;
- at the end, node k's first process reads its delta's rows, verified as `te cache merge` reads a
  source, and streams those CACHE lacks to rank 0 (`stream_deltas`), which appends them to CACHE
  batch by batch, the same commit order as any append; then rank 0 writes the data set, and each node
  removes its delta.

A node killed mid-run keeps its delta (everything up to its last batch); the re-run on that host finds
it and extracts only the rest. Only --data must be readable from every node; CACHE needs to be
reachable from node 0 alone, and nothing relies on a shared file system's locking.
"""

from __future__ import annotations

import os
import shutil
import socket
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from transfer_engine.core import distributed as dist

if TYPE_CHECKING:
    from transfer_engine.cache.store import FeatureCache

FOLDER = "nodes"
KEY_BYTES = 32  # te extract's content keys are SHA-256 digests
KEYS_PER_MESSAGE = 1 << 20  # 32 MiB of keys per broadcast


@dataclass(frozen=True)
class NodeLayout:
    """Where this process sits among the machines of a torchrun job.

    Attributes:
        node: this machine's node rank (torchrun's GROUP_RANK; 0 on one machine).
        nodes: how many machines take part.
        local_rank: this process's rank on its machine.
        host: this machine's host name.
    """

    node: int
    nodes: int
    local_rank: int
    host: str

    @property
    def multi(self) -> bool:
        return self.nodes > 1

    @property
    def writes_delta(self) -> bool:
        """True on nodes 1..N-1 (they write a delta cache, never CACHE)."""
        return self.multi and self.node != 0


def node_layout(world: int) -> NodeLayout:
    """This process's place from torchrun's environment (one machine when not under torchrun)."""
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE") or world)
    nodes = max(1, world // max(1, local_world))
    node = int(os.environ.get("GROUP_RANK") or 0) if nodes > 1 else 0
    return NodeLayout(node, nodes, int(os.environ.get("LOCAL_RANK") or 0), socket.gethostname())


def delta_path(cache_root: Path, node_cache: str | os.PathLike | None, layout: NodeLayout) -> Path:
    """Node `layout.node`'s delta cache, named by host and node rank so that a re-run on that host finds it."""
    folder = Path(node_cache).expanduser() if node_cache else Path(cache_root).expanduser() / FOLDER
    return folder.absolute() / f"{layout.host}-node{layout.node}"


class PresentKeys:
    """The keys a space of CACHE held when the run began: a sorted array of 32-byte keys, searched."""

    def __init__(self, keys: np.ndarray) -> None:
        self._keys = keys  # sorted, dtype S32

    def __len__(self) -> int:
        return len(self._keys)

    def contains(self, keys: Sequence[str]) -> list[bool]:
        if not len(self._keys) or not keys:
            return [False] * len(keys)
        wanted = np.array([bytes.fromhex(k) for k in keys], dtype=f"S{KEY_BYTES}")
        at = np.searchsorted(self._keys, wanted).clip(max=len(self._keys) - 1)
        return (self._keys[at] == wanted).tolist()


def shared_present_keys(cache: "FeatureCache", space_id: str, rank: int) -> PresentKeys:
    """Every rank gets the keys rank 0's `cache` holds in space `space_id` (a collective: every rank calls it).

    Sent in messages of KEYS_PER_MESSAGE keys, so no message, and no copy, is the size of a large space.
    """
    if rank == 0:
        row = cache.index.space(space_id)
        chunks = [np.array([k for k in blobs if len(k) == KEY_BYTES], dtype=f"S{KEY_BYTES}")
                  for blobs in (cache.index.key_blobs_of_space(row.id) if row is not None else ())]
        # sqlite orders BLOBs by memcmp, as numpy orders S32: the concatenation is sorted already
        packed = np.concatenate(chunks) if chunks else np.empty(0, dtype=f"S{KEY_BYTES}")
    else:
        packed = None
    what = "sending the keys the cache holds"
    count = dist.from_rank0(len(packed) if packed is not None else None, what)
    if rank == 0:
        for lo in range(0, count, KEYS_PER_MESSAGE):
            dist.from_rank0(packed[lo:lo + KEYS_PER_MESSAGE].tobytes(), what)
        return PresentKeys(packed)
    out = np.empty(count, dtype=f"S{KEY_BYTES}")
    for lo in range(0, count, KEYS_PER_MESSAGE):
        chunk = np.frombuffer(dist.from_rank0(None, what), dtype=f"S{KEY_BYTES}")
        out[lo:lo + len(chunk)] = chunk
    return PresentKeys(out)


def stream_deltas(cache: "FeatureCache", layout: NodeLayout, rank: int, space_id: str,
                  present: PresentKeys) -> list[dict]:
    """Move every node's delta rows into CACHE (a collective; call it once every rank has extracted).

    Rank 0 receives and appends into `cache` (CACHE); the first process of each node k >= 1 reads its
    `cache` (the delta) and sends what CACHE lacks; everyone else waits. Returns, on rank 0, the per-space
    counts (copied, reused, skipped as damaged) of each node; [] elsewhere.
    """
    from transfer_engine.cache.space import FeatureSpace

    what = "moving the nodes' delta rows into the cache"
    senders = [r for r, (node, local) in enumerate(dist.all_gathered((layout.node, layout.local_rank), what))
               if node != 0 and local == 0]
    reports: list[dict] = []
    if rank == 0:
        rows: dict[str, object] = {}
        for sender in senders:
            for kind, *payload in dist.received_from(sender, what):
                if kind == "done":
                    reports.extend(payload[0])
                    continue
                digest, config, row_bytes, keys, raw, slots = payload
                if digest not in rows:
                    rows[digest] = cache.space_row(FeatureSpace.from_dict(config), row_bytes)
                rows[digest], _ = cache.append_encoded(rows[digest], keys, raw, slots)
    elif rank in senders:
        dist.stream_to_rank0(_delta_messages(cache, layout, space_id, present), what)
    dist.barrier(what)  # CACHE has committed every row: the deltas may go
    return reports


def _delta_messages(cache: "FeatureCache", layout: NodeLayout, space_id: str, present: PresentKeys):
    """What a node sends rank 0: its delta's rows CACHE lacks, a batch a message, then its per-space report."""
    from transfer_engine.cache.merge import SpaceMerge, read_space

    done_spaces = []
    for space in cache.index.spaces():
        done = SpaceMerge(f"{layout.host}-node{layout.node}", space.digest, str(space.config.get("backbone")))
        skip = present.contains if space.digest == space_id else None
        for keys, raw, slots in read_space(cache, space, done, skip=skip):
            yield ("rows", space.digest, space.config, space.row_bytes, keys, raw, slots)
        done_spaces.append(asdict(done))
    yield ("done", done_spaces)


def remove_delta(path: Path) -> None:
    """Delete a merged delta cache; renamed first, so a kill during the removal never leaves half a cache
    where the next run would look for one."""
    if not path.exists():
        return
    doomed = path.with_name(f".{path.name}.merged-{os.getpid()}")
    os.replace(path, doomed)
    shutil.rmtree(doomed, ignore_errors=True)
