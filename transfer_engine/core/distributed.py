"""The torchrun process group: joined with a timeout, every wait of te's watched for lost peers, left cleanly.

A job of several processes (`--nproc`, or torchrun across machines) can fail in three ways that a plain
`init_process_group()` and plain collectives turn into hangs:

- **A peer dies or freezes after the job started.** A gloo or NCCL collective waits for the process
  group's timeout (torch's default: 30 minutes) when a peer is frozen, and says only "Connection closed
  by peer" when it died. So every collective te calls first meets the other ranks at a *watched
  arrival* in the launcher's key-value store (the TCPStore torchrun already runs): each rank announces
  itself there and waits, while a heartbeat thread in every rank bumps that rank's counter every
  second. Rank 0 watches every counter, the others watch rank 0's; a rank whose counter has not moved
  for `peer_timeout()` seconds (TE_PEER_TIMEOUT, default 60) is declared lost, the verdict is posted for
  everyone, and the run ends with one line naming that rank, its node and its host. A rank that fails
  on its own (a `TEError`, a bug) posts its own first error line on the way out (`leave`), so the
  others end at once with that line instead of waiting out the timeout. A slow peer (still computing
  its share) keeps beating and is waited for, however long its share takes.
- **A collective that never completes although every rank arrived** (a wedged network): the process
  group's own timeout, `dist_timeout()` seconds (TE_DIST_TIMEOUT, default 300), bounds it. Every long
  wait of te happens at an arrival, so the collectives themselves only move data.
- **The exit.** A process that ends with its process group alive leaves gloo's (or NCCL's) threads to
  interpreter shutdown; torchrun's agent of a node whose worker ended badly skips the launchers' exit
  barrier, and the agents of the other nodes then wait in it for the launcher's own 300 s. `leave()`
  stops the heartbeat and destroys the process group before the interpreter shuts down (the CLI calls
  it on every way out), so each rank's process ends with its own exit code.

What torchrun does before te starts (rendezvous of the launchers) is bounded by torchrun's own flags:
see docs/scale.md, "When a node fails". Without torchrun (WORLD_SIZE unset or 1) every function here works
on the one process, and torch is never imported by this module's import (the CLI imports it at start).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import socket
import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Callable, Iterable, Iterator

from transfer_engine.errors import TEError, first_line

DEFAULT_PEER_TIMEOUT = 60.0
DEFAULT_DIST_TIMEOUT = 300.0
_POLL = 0.05  # seconds between looks at an arrival count while waiting, growing to _MAX_POLL
_MAX_POLL = 0.5


class PeerLostError(TEError):
    """Another process of the job died, froze or failed; the message names it."""


def _seconds_from_env(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise TEError(f"{name}={raw!r}: expected a positive number of seconds")
    return value


def peer_timeout() -> float:
    """Seconds without a heartbeat after which a peer is declared lost (TE_PEER_TIMEOUT, default 60)."""
    return _seconds_from_env("TE_PEER_TIMEOUT", DEFAULT_PEER_TIMEOUT)


def dist_timeout() -> float:
    """Seconds one collective, or joining the process group, may take (TE_DIST_TIMEOUT, default 300)."""
    return _seconds_from_env("TE_DIST_TIMEOUT", DEFAULT_DIST_TIMEOUT)


@dataclass
class _Job:
    """This process's membership of a multi-process job (one per process, set by `rank_and_world`)."""

    rank: int
    world: int
    store: Any  # the main thread's client of the launcher's store, under te's prefix
    beats: "_Heartbeat"
    peer_timeout: float
    seq: int = 0  # collectives so far: every rank calls the same ones in the same order
    meetings: dict = field(default_factory=dict)  # point-to-point meetings so far, per peer

    def key(self, *parts: object) -> str:
        return "/".join(str(p) for p in parts)


_job: _Job | None = None
_joined = False  # whether this process ever joined a job (it stays True after `leave`)


def joined_a_job() -> bool:
    """True in a process that joined a multi-process job (the CLI then ends it without interpreter shutdown)."""
    return _joined


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the world size; under torchrun, joins the process group (once) with
    te's timeouts and starts this rank's heartbeat."""
    global _job, _joined
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    if _job is not None:
        return _job.rank, _job.world
    import torch
    import torch.distributed as torch_dist

    timeout = timedelta(seconds=dist_timeout())
    beat_timeout = peer_timeout()  # read before joining: a bad value is a usage error, not a hang
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":  # object collectives run on the current device: one GPU per rank
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    try:
        torch_dist.init_process_group(backend, timeout=timeout)
    except Exception as exc:  # a peer that never joined, an unreachable master: one line
        raise PeerLostError(f"could not join the job's {world} processes within {timeout.total_seconds():.0f} s "
                            f"(TE_DIST_TIMEOUT): {first_line(exc)}") from exc
    rank = torch_dist.get_rank()
    store = _store_client(timeout)
    beats = _Heartbeat(_store_client(timeout), rank, interval=min(1.0, beat_timeout / 10))
    _job = _Job(rank, world, store, beats, beat_timeout)
    _joined = True
    store.set(_job.key("who", rank), f"{os.environ.get('GROUP_RANK', '0')}|{socket.gethostname()}")
    beats.start()
    return rank, world


def _store_client(timeout: timedelta):
    """A client of the launcher's store (torchrun's TCPStore at MASTER_ADDR:MASTER_PORT), under a prefix
    of this job and restart, so that a restarted job never reads its previous attempt's keys."""
    import torch.distributed as torch_dist

    client = torch_dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                                 timeout=timeout, wait_for_workers=False)
    prefix = f"te/{os.environ.get('TORCHELASTIC_RUN_ID', 'run')}/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"
    return torch_dist.PrefixStore(prefix, client)


class _Heartbeat:
    """A daemon thread that bumps this rank's counter in the store every `interval` seconds."""

    def __init__(self, store, rank: int, interval: float) -> None:
        self._store = store
        self._key = f"alive/{rank}"
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="te-heartbeat", daemon=True)

    def start(self) -> None:
        self._store.add(self._key, 1)  # the counter exists before any wait reads it
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._store.add(self._key, 1)
            except Exception:  # the store is gone (node 0's launcher ended): nothing left to tell
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def _who(job: _Job, rank: int) -> str:
    """"rank R (node N, host H)" as the rank posted it when it joined."""
    try:
        node, host = job.store.get(job.key("who", rank)).decode().split("|", 1)
        return f"rank {rank} (node {node}, host {host})"
    except Exception:
        return f"rank {rank}"


class _Watch:
    """Heartbeat counters of the ranks one rank watches, and when each last moved (this host's clock).

    By default rank 0 watches every rank and the others watch rank 0: one store read per watched rank
    and look, so a large job does not load the store with every pair.
    """

    def __init__(self, job: _Job, ranks: list[int] | None = None) -> None:
        self.job = job
        if ranks is None:
            ranks = [r for r in range(job.world) if r != job.rank] if job.rank == 0 else [0]
        self.ranks = ranks
        now = time.monotonic()
        self.seen: dict[int, tuple[int, float]] = {r: (-1, now) for r in self.ranks}

    def check(self, what: str) -> None:
        """Raise PeerLostError when a verdict was posted or a watched rank's heartbeat stopped."""
        job = self.job
        if job.store.check([job.key("verdict")]):
            raise PeerLostError(job.store.get(job.key("verdict")).decode())
        now = time.monotonic()
        for r in self.ranks:
            count = job.store.add(job.key("alive", r), 0)
            last, since = self.seen[r]
            if count != last:
                self.seen[r] = (count, now)
            elif now - since > job.peer_timeout:
                verdict = (f"{_who(job, r)} stopped answering: no heartbeat for {job.peer_timeout:.0f} s while "
                           f"{what} (TE_PEER_TIMEOUT)")
                _post_verdict(job, verdict)
                raise PeerLostError(verdict)


def _post_verdict(job: _Job, verdict: str) -> None:
    try:
        job.store.compare_set(job.key("verdict"), "", verdict)  # the first verdict stays
    except Exception:
        pass


def _arrive(job: _Job, what: str) -> None:
    """Wait until every rank has reached this point (the job's `seq`-th collective), watching peers."""
    job.seq += 1
    _wait_for_count(job, job.key("arrive", job.seq), job.world, _Watch(job), what)


def _meet(job: _Job, what: str, peer: int) -> None:
    """A watched arrival of two ranks (this one and `peer`) only: the other ranks do not take part."""
    n = job.meetings[peer] = job.meetings.get(peer, 0) + 1
    key = job.key("meet", min(job.rank, peer), max(job.rank, peer), n)
    _wait_for_count(job, key, 2, _Watch(job, [peer]), what)


def _wait_for_count(job: _Job, key: str, count: int, watch: _Watch, what: str) -> None:
    """Add this rank to the counter `key` and wait until it reaches `count`, looking at the watched ranks'
    heartbeats (and at a posted verdict) every tenth of the peer timeout, at most every second."""
    arrived = job.store.add(key, 1)
    pause, next_check = _POLL, 0.0
    while arrived < count:
        if time.monotonic() >= next_check:
            watch.check(what)
            next_check = time.monotonic() + min(1.0, job.peer_timeout / 10)
        time.sleep(pause)
        pause = min(_MAX_POLL, pause * 1.5)
        arrived = job.store.add(key, 0)


def watched(what: str, collective: Callable[[], Any]) -> Any:
    """Run `collective` once every rank has arrived; a lost peer or a failed collective is one line.

    Args:
        what: what the job is doing, for the error ("gathering the ranks' counts").
        collective: the torch.distributed call(s) to make.
    """
    job = _job
    if job is None:
        return collective()
    try:
        _arrive(job, what)
        return collective()
    except TEError:
        raise
    except Exception as exc:  # gloo/NCCL: a peer vanished mid-transfer, or the collective timed out
        verdict = _lost_during(job, what, exc)
        raise PeerLostError(verdict) from exc


def _lost_during(job: _Job, what: str, exc: Exception) -> str:
    """The verdict after a collective failed: a peer's own posted verdict if one arrives within a few
    heartbeats (it failed and said why), else the transport's first line."""
    deadline = time.monotonic() + min(job.peer_timeout, 5.0)
    while time.monotonic() < deadline:
        try:
            if job.store.check([job.key("verdict")]):
                return job.store.get(job.key("verdict")).decode()
        except Exception:
            break
        time.sleep(0.2)
    verdict = f"a process of the job was lost while {what}: {first_line(exc)}"
    _post_verdict(job, verdict)
    return verdict


@contextlib.contextmanager
def guarded(what: str) -> Iterator[None]:
    """Collectives te does not call itself (DDP's gradient all-reduces, buffer broadcasts) that fail
    inside this block end the run with one line, like te's own: a lost peer, not an internal error.
    They are bounded by TE_DIST_TIMEOUT (the process group's timeout)."""
    try:
        yield
    except TEError:
        raise
    except Exception as exc:
        job = _job  # joined inside the block, typically
        if job is None or not _is_transport_failure(exc):
            raise
        raise PeerLostError(_lost_during(job, what, exc)) from exc


def _is_transport_failure(exc: BaseException) -> bool:
    """A collective's failure as torch reports it: a DistError, or the RuntimeError gloo raises when a
    peer's connection closes or a collective times out."""
    import torch.distributed as torch_dist

    if isinstance(exc, torch_dist.DistError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and any(w in text for w in ("gloo", "Gloo", "NCCL", "Connection closed",
                                                                     "Connection reset", "Timed out"))


def barrier(what: str = "waiting for the other ranks") -> None:
    """Every rank waits here until all have arrived (a no-op on one process)."""
    if _job is not None:
        import torch.distributed as torch_dist

        watched(what, torch_dist.barrier)


def all_gathered(obj: Any, what: str = "exchanging results") -> list[Any]:
    """Every rank's `obj` (a small picklable value), in rank order, on every rank."""
    if _job is None:
        return [obj]
    import torch.distributed as torch_dist

    gathered: list = [None] * _job.world
    watched(what, lambda: torch_dist.all_gather_object(gathered, obj))
    return gathered


def gathered_on_rank0(obj: Any, what: str = "gathering results") -> list[Any] | None:
    """Every rank's `obj` in rank order on rank 0; None elsewhere."""
    if _job is None:
        return [obj]
    import torch.distributed as torch_dist

    out: list | None = [None] * _job.world if _job.rank == 0 else None
    watched(what, lambda: torch_dist.gather_object(obj, out, dst=0))
    return out


def from_rank0(obj: Any, what: str = "waiting for rank 0") -> Any:
    """Rank 0's `obj` on every rank (other ranks' arguments are ignored)."""
    if _job is None:
        return obj
    import torch.distributed as torch_dist

    box = [obj]
    watched(what, lambda: torch_dist.broadcast_object_list(box, src=0))
    return box[0]


def stream_to_rank0(messages: Iterable[Any], what: str) -> None:
    """Send `messages` (picklable objects, never None) to rank 0 one at a time, then an end mark; rank 0
    reads them with `received_from`. The two ranks meet first (watched), then each message is a
    point-to-point transfer bounded by the process group's timeout."""
    job = _require_job()
    _meet(job, what, peer=0)
    for message in messages:
        _send(job, message, what)
    _send(job, None, what)


def _send(job: _Job, message: Any, what: str) -> None:
    import torch
    import torch.distributed as torch_dist

    payload = torch.frombuffer(bytearray(pickle.dumps(message)), dtype=torch.uint8)
    try:
        torch_dist.send(torch.tensor([payload.numel()], dtype=torch.int64), dst=0)
        torch_dist.send(payload, dst=0)
    except Exception as exc:
        raise PeerLostError(_lost_during(job, what, exc)) from exc


def received_from(sender: int, what: str) -> Iterator[Any]:
    """On rank 0: the messages `sender` streams with `stream_to_rank0`, as they arrive."""
    job = _require_job()
    _meet(job, what, peer=sender)
    while (message := _recv(job, sender, what)) is not None:
        yield message


def _recv(job: _Job, sender: int, what: str) -> Any:
    import torch
    import torch.distributed as torch_dist

    try:
        size = torch.empty(1, dtype=torch.int64)
        torch_dist.recv(size, src=sender)
        payload = torch.empty(int(size.item()), dtype=torch.uint8)
        torch_dist.recv(payload, src=sender)
    except Exception as exc:
        raise PeerLostError(_lost_during(job, what, exc)) from exc
    return pickle.loads(payload.numpy().tobytes())


def _require_job() -> _Job:
    if _job is None:
        raise RuntimeError("point-to-point streams need torchrun (rank_and_world() first)")
    return _job


def leave(error: BaseException | None = None) -> None:
    """End this process's membership: post `error`'s first line for the other ranks (so they stop at
    once, naming this rank), stop the heartbeat and destroy the process group. A no-op when this
    process never joined a job; safe to call twice."""
    global _job
    job, _job = _job, None
    if job is None:
        return
    if error is not None:
        _post_verdict(job, f"{_who(job, job.rank)} failed: {first_line(error)}")
    job.beats.stop()
    import torch.distributed as torch_dist

    if torch_dist.is_initialized():
        try:
            torch_dist.destroy_process_group()
        except Exception:  # a peer already gone can make the backend's teardown complain; we are leaving
            pass
