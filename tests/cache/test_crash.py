"""kill -9 a writer process at any instant: the cache reopens consistent and resumes.

Each trial runs the writer in its own process and SIGKILLs it, either at a chosen instant of the commit
sequence (the process kills itself there) or after a seeded random delay while it appends batch after
batch. Then, in this process: the index and the shards agree (verify), only whole batches are committed,
at most the batch in flight is lost, every committed row decodes to what was appended, and appending
again completes the set with no duplicate.
"""

from __future__ import annotations

import random
import signal
import time

import pytest

from transfer_engine.cache import FeatureCache

from .conftest import int8_close, start_writer, wait_ready, writer_process as wp

BATCH = 32
# 80 rows per shard: batches straddle shards, so kills land in shard creation and sealing too.
SHARD_BYTES = 80 * (wp.DIM + 4)


def _last_reported(stdout: str) -> int:
    counts = [int(line.split()[1]) for line in stdout.splitlines() if line.startswith("committed ")]
    return counts[-1] if counts else 0


def _check_and_resume(cache_dir, reported: int) -> None:
    with FeatureCache.open(cache_dir, max_shard_bytes=SHARD_BYTES) as cache:
        report = cache.verify()
        assert report.ok, [str(p) for p in report.problems]
        space = cache.space(wp.space_config())
        n = len(space)
        assert n % BATCH == 0, f"{n} rows committed: part of a batch became visible"
        assert reported <= n <= reported + BATCH, f"writer reported {reported} rows, index holds {n}"
        assert all(space.contains([wp.key_of(i) for i in range(n)]))
        assert not any(space.contains([wp.key_of(i) for i in range(n, n + BATCH)]))
        if n:
            assert int8_close(space.gather([wp.key_of(i) for i in range(n)]), wp.features_of(range(n)))

        total = n + 3 * BATCH + 5
        added = space.append([wp.key_of(i) for i in range(total)], wp.features_of(range(total)))
        assert added == total - n and len(space) == total
        assert int8_close(space.gather([wp.key_of(i) for i in range(total)]), wp.features_of(range(total)))
        report = cache.verify()
        assert report.ok, [str(p) for p in report.problems]
        assert not any("uncommitted" in note for note in report.notes)  # the resumed append cut the torn tail


@pytest.mark.parametrize("point, nth", [("torn-row", 3), ("before-fsync", 2), ("before-commit", 4),
                                        ("new-shard", 2), ("seal", 1)])
def test_kill_at_each_instant_of_the_commit_sequence(tmp_path, point, nth):
    proc = start_writer(tmp_path / "c", "--batch", str(BATCH), "--stop", "2000",
                        "--max-shard-bytes", str(SHARD_BYTES), "--crash-at", point, "--crash-nth", str(nth))
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL, f"the writer was meant to die at {point}: {err[-2000:]}"
    _check_and_resume(tmp_path / "c", _last_reported(out))


@pytest.mark.parametrize("trial", range(8))
def test_kill_at_a_random_instant(tmp_path, trial):
    delay = random.Random(1234 + trial).uniform(0.0, 0.5)
    proc = start_writer(tmp_path / "c", "--batch", str(BATCH), "--max-shard-bytes", str(SHARD_BYTES))
    wait_ready(proc)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    _check_and_resume(tmp_path / "c", _last_reported(out))
