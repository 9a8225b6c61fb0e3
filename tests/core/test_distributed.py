"""te's watched waits between the ranks of a job: a dead or frozen peer ends the wait with a line naming it
within the peer timeout, a slow peer that is still alive is waited for, and a peer's own failure stops the
others at once. The ranks here are threads of one process sharing a real TCPStore (what torchrun runs);
the process-level proof, two torchrun launches with one killed, is in tests/extract/test_nodes.py."""

from __future__ import annotations

import socket
import threading
import time
from datetime import timedelta

import pytest

from transfer_engine.core import distributed as dist

TIMEOUT = 1.0  # the peer timeout these tests run under, seconds


@pytest.fixture
def store():
    import torch.distributed as torch_dist

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    master = torch_dist.TCPStore("127.0.0.1", port, is_master=True, timeout=timedelta(seconds=10),
                                 wait_for_workers=False)

    def client(prefix: str = "te/test"):
        c = torch_dist.TCPStore("127.0.0.1", port, is_master=False, timeout=timedelta(seconds=10),
                                wait_for_workers=False)
        return torch_dist.PrefixStore(prefix, c)

    yield client
    del master


def member(client, rank: int, world: int = 2, beating: bool = True) -> dist._Job:
    """Rank `rank` of a job of `world`, as `rank_and_world` sets it up (its heartbeat started if `beating`)."""
    job = dist._Job(rank, world, client(), dist._Heartbeat(client(), rank, interval=TIMEOUT / 10), TIMEOUT)
    job.store.set(job.key("who", rank), f"{rank}|host{rank}")
    if beating:
        job.beats.start()
    else:
        job.store.add(job.key("alive", rank), 1)  # joined, then froze (or died) before its first beat
    return job


def test_a_peer_that_stops_beating_is_named_within_the_timeout(store):
    rank0, frozen = member(store, 0), member(store, 1, beating=False)
    started = time.monotonic()
    with pytest.raises(dist.PeerLostError, match=r"rank 1 \(node 1, host host1\) stopped answering: no heartbeat "
                                                 r"for 1 s while finishing \(TE_PEER_TIMEOUT\)"):
        dist._arrive(rank0, "finishing")
    assert TIMEOUT <= time.monotonic() - started < TIMEOUT + 2.5
    rank0.beats.stop()
    # the verdict is posted: the frozen rank, were it to wake up, would stop at its next wait at once
    with pytest.raises(dist.PeerLostError, match="rank 1 .* stopped answering"):
        dist._Watch(frozen).check("finishing")


def test_a_slow_peer_that_is_alive_is_waited_for(store):
    rank0, slow = member(store, 0), member(store, 1)
    late = threading.Timer(3 * TIMEOUT, lambda: dist._arrive(slow, "finishing"))
    late.start()
    started = time.monotonic()
    dist._arrive(rank0, "finishing")  # three peer timeouts of waiting, and no verdict
    assert time.monotonic() - started >= 3 * TIMEOUT - 0.1
    late.join()
    rank0.beats.stop()
    slow.beats.stop()


def test_rank0_lost_is_seen_by_the_others(store):
    rank1 = member(store, 1)
    member(store, 0, beating=False)
    with pytest.raises(dist.PeerLostError, match=r"rank 0 \(node 0, host host0\) stopped answering"):
        dist._arrive(rank1, "waiting for rank 0 to choose the backend")
    rank1.beats.stop()


def test_a_peer_that_fails_stops_the_others_at_once_with_its_own_line(store, monkeypatch):
    rank0, failing = member(store, 0), member(store, 1)
    monkeypatch.setattr(dist, "_job", failing)
    threading.Timer(0.2, lambda: dist.leave(ValueError("--data photos/: no such folder\nsecond line"))).start()
    started = time.monotonic()
    with pytest.raises(dist.PeerLostError) as lost:
        dist._arrive(rank0, "finishing")
    assert str(lost.value) == "rank 1 (node 1, host host1) failed: --data photos/: no such folder"
    assert time.monotonic() - started < TIMEOUT  # did not wait for the heartbeat to go stale
    rank0.beats.stop()


def test_timeouts_come_from_the_environment_and_bad_values_are_one_line(monkeypatch):
    monkeypatch.delenv("TE_PEER_TIMEOUT", raising=False)
    assert dist.peer_timeout() == dist.DEFAULT_PEER_TIMEOUT
    monkeypatch.setenv("TE_PEER_TIMEOUT", "7.5")
    assert dist.peer_timeout() == 7.5
    for bad in ("0", "-3", "soon"):
        monkeypatch.setenv("TE_DIST_TIMEOUT", bad)
        with pytest.raises(dist.TEError, match=f"TE_DIST_TIMEOUT='{bad}': expected a positive number of seconds"):
            dist.dist_timeout()


def test_one_process_needs_no_job(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert dist.rank_and_world() == (0, 1)
    assert dist.all_gathered("x") == ["x"] and dist.from_rank0(3) == 3 and dist.gathered_on_rank0(1) == [1]
    dist.barrier()
    dist.leave(RuntimeError("nothing joined: nothing to tell"))


def test_a_failed_collective_inside_guarded_is_one_line_and_other_errors_pass(store, monkeypatch):
    rank0 = member(store, 0)
    monkeypatch.setattr(dist, "_job", rank0)
    with pytest.raises(dist.PeerLostError, match=r"^a process of the job was lost while fine-tuning: \[gloo\] "
                                                 r"Connection closed by peer \[127.0.0.1\]:4242$"):
        with dist.guarded("fine-tuning"):
            raise RuntimeError("[gloo] Connection closed by peer [127.0.0.1]:4242\n(stack)")
    with pytest.raises(ValueError, match="a bug of ours"):  # not a transport failure: untouched
        with dist.guarded("fine-tuning"):
            raise ValueError("a bug of ours")
    rank0.beats.stop()
