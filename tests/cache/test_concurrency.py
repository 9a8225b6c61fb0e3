"""Several processes on one cache: writers interleave safely, a stuck writer gets a clear timeout,
and readers never wait for writers."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from transfer_engine.cache import FeatureCache
from transfer_engine.cache.lock import LockTimeoutError
from transfer_engine.errors import CacheError

from .conftest import int8_close, start_writer, wait_ready, writer_process as wp


def _added(stdout: str) -> int:
    return int([line for line in stdout.splitlines() if line.startswith("committed")][-1].split()[1])


def test_two_writers_with_disjoint_and_overlapping_keys_lose_and_duplicate_nothing(tmp_path):
    cache_dir, go = tmp_path / "c", tmp_path / "go"
    shard = str(100 * (wp.DIM + 4))  # small shards: the writers also race to create and seal them
    a = start_writer(cache_dir, "--start", "0", "--stop", "700", "--batch", "25", "--max-shard-bytes", shard,
                     "--go-file", str(go))
    wait_ready(a)  # the first writer creates the cache; the second opens it
    b = start_writer(cache_dir, "--start", "400", "--stop", "1100", "--batch", "30", "--step", "-1",
                     "--max-shard-bytes", shard, "--go-file", str(go))
    wait_ready(b)
    go.touch()
    (out_a, err_a), (out_b, err_b) = a.communicate(timeout=120), b.communicate(timeout=120)
    assert a.returncode == 0 and b.returncode == 0, err_a + err_b
    assert _added(out_a) + _added(out_b) == 1100  # each of the 300 shared keys was written by one of them

    with FeatureCache.open(cache_dir) as cache:
        space = cache.space(wp.space_config())
        assert len(space) == 1100
        rows = cache.index._q("SELECT count(*), count(DISTINCT shard || ':' || row) FROM rows")[0]
        assert rows == (1100, 1100)
        assert int8_close(space.gather([wp.key_of(i) for i in range(1100)]), wp.features_of(range(1100)))
        report = cache.verify()
        assert report.ok and not report.notes, report.to_dict()


HOLD_LOCK = textwrap.dedent("""
    import fcntl, os, sys, time
    fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.ftruncate(fd, 0); os.pwrite(fd, f"{os.getpid()}\\n".encode(), 0)
    print("locked", flush=True)
    sys.stdin.read()
""")

HOLD_SQLITE_WRITE = textwrap.dedent("""
    import sqlite3, sys
    conn = sqlite3.connect(sys.argv[1], isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("DELETE FROM meta")
    print("locked", flush=True)
    sys.stdin.read()
""")


@pytest.fixture
def small_cache(tmp_path):
    with FeatureCache.open(tmp_path / "c", lock_timeout=0.3) as cache:
        space = cache.space(wp.space_config())
        space.append([wp.key_of(i) for i in range(20)], wp.features_of(range(20)))
        yield cache, space


def _hold(script: str, path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", script, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_writer_blocked_too_long_gets_a_clear_error_while_reads_go_on(small_cache):
    cache, space = small_cache
    holder = _hold(HOLD_LOCK, cache.root / "writer.lock")
    try:
        with pytest.raises(LockTimeoutError, match=rf"another process \(pid {holder.pid}\) has held the writer lock"):
            space.append([wp.key_of(99)], wp.features_of([99]))
        assert space.contains([wp.key_of(0), wp.key_of(99)]) == [True, False]
        assert torch.allclose(space.gather([wp.key_of(3)]), wp.features_of([3]), atol=0.1)
        assert cache.verify().ok and cache.info()["spaces"][0]["rows"] == 20
    finally:
        holder.communicate("")
    assert space.append([wp.key_of(99)], wp.features_of([99])) == 1  # the lock died with its holder


def test_reads_do_not_wait_for_an_open_index_transaction(small_cache):
    cache, space = small_cache
    holder = _hold(HOLD_SQLITE_WRITE, cache.root / "index.sqlite")
    try:
        assert space.contains([wp.key_of(0)]) == [True]
        n = 0
        for batch in space.batches([wp.key_of(i) for i in range(20)], batch_size=8):
            n += len(batch.index)
        assert n == 20 and cache.verify().ok
        with pytest.raises(CacheError, match="index.sqlite stayed locked by another connection"):
            cache.put_dataset("d", [], [])  # a write does wait, then says so
    finally:
        holder.communicate("")
