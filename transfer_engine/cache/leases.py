"""Writer leases: a process that writes rows no data set names yet says so, and gc leaves them alone.

`te extract` appends rows batch by batch and names them in a data set only at the end; to gc, rows
no data set names are garbage. So a writer records a lease on each space it writes, in the index's
meta table (`lease:<token>` -> {space, pid, pid_start, host, started}), taken in the same transaction
as the space's creation or its first append and released when the cache is closed. gc drops nothing
of a space with a live lease: no row, no shard, not the space. A lease whose process is gone (kill -9)
is stale, and so is one whose pid now belongs to a process that started later: gc deletes them. A
lease from another host cannot be checked and counts as live for a day.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable

from transfer_engine.core.process import pid_alive

if TYPE_CHECKING:
    from transfer_engine.cache.index import Index

PREFIX = "lease:"
FOREIGN_HOST_LIFETIME = 24 * 3600.0


def process_start(pid: int) -> str | None:
    """When process `pid` started, in clock ticks since boot (Linux /proc), or None where unknown: tells a
    live writer from an unrelated process that was given its pid later."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[19].decode()
    except (OSError, IndexError):
        return None


@dataclass(frozen=True)
class Lease:
    token: str
    space: str
    pid: int
    host: str
    started: float
    pid_start: str | None = None

    @property
    def alive(self) -> bool:
        """True while the process that took it may still write (checked by pid and its start time on this
        host)."""
        if self.host != socket.gethostname():
            return time.time() - self.started < FOREIGN_HOST_LIFETIME
        if not pid_alive(self.pid):
            return False
        return self.pid_start is None or process_start(self.pid) in (None, self.pid_start)


def take(index: "Index", space_digest: str) -> str:
    """Record a lease of this process on a space (inside the caller's write transaction); its token."""
    token = f"{os.getpid()}-{secrets.token_hex(6)}"
    index.set_meta_json(PREFIX + token, {"space": space_digest, "pid": os.getpid(), "host": socket.gethostname(),
                                          "started": time.time(), "pid_start": process_start(os.getpid())})
    return token


def held(index: "Index", token: str) -> bool:
    """True while the lease `token` is recorded (a rolled-back transaction takes it away again)."""
    return index.meta(PREFIX + token) is not None


def release(index: "Index", token: str) -> None:
    index.delete_meta(PREFIX + token)


def all_leases(index: "Index") -> list[Lease]:
    out = []
    for key, value in index.meta_with_prefix(PREFIX).items():
        try:
            data = json.loads(value)
            out.append(Lease(key[len(PREFIX):], str(data["space"]), int(data["pid"]), str(data["host"]),
                             float(data["started"]), data.get("pid_start")))
        except (ValueError, KeyError, TypeError):
            out.append(Lease(key[len(PREFIX):], "", 0, "", 0.0))  # unreadable: stale, gc drops it
    return out


def live_spaces(index: "Index", own: Iterable[str] = ()) -> dict[str, list[int]]:
    """{space digest: pids of the live writers holding a lease on it}; stale leases and the tokens in
    `own` (the leases of the cache object that runs gc: its caller knows what it has written) are skipped."""
    out: dict[str, list[int]] = {}
    mine = set(own)
    for lease in all_leases(index):
        if lease.space and lease.alive and lease.token not in mine:
            out.setdefault(lease.space, []).append(lease.pid)
    return out


def prune(index: "Index") -> int:
    """Delete stale leases (inside a write transaction); how many."""
    stale = [lease for lease in all_leases(index) if not (lease.space and lease.alive)]
    for lease in stale:
        release(index, lease.token)
    return len(stale)
