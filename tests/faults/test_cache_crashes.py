"""kill -9 of a cache writer and of `te cache gc` at seeded random instants, with a reader gathering rows
the whole time in another process (issue #16, "kill -9 of a writer and of a gc ... at least 20 trials
each, concurrent reader running").

After each kill: `te cache verify`'s checks pass, nothing a writer reported committed is lost, and
resuming (the writer again over the same range, gc again) gives the same rows, bit for bit, as an
uninterrupted run. The reader must never see a wrong row or die: rows that gc moved after it located
them are a clear error it answers by locating again. The slow tests run 20 kills each (`-m slow`); a
fast twin runs one gc kill in `make test`.
"""

from __future__ import annotations

import importlib.util
import json
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from transfer_engine.cache import FeatureCache, Record

WRITER_SCRIPT = Path(__file__).resolve().parents[1] / "cache" / "writer_process.py"
_spec = importlib.util.spec_from_file_location("te_cache_writer_process_faults", WRITER_SCRIPT)
wp = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(wp)

ROWS_PER_SHARD = 80
SHARD_BYTES = ROWS_PER_SHARD * (wp.DIM + 4)  # int8 rows: batches straddle shards, kills land in shard creation
WRITER_RANGE = 240                            # rows each writer trial appends
BATCH = 16

READER = textwrap.dedent("""
    import sys, time, importlib.util
    from pathlib import Path
    import torch
    from transfer_engine.cache import FeatureCache
    from transfer_engine.errors import CorruptCacheError
    spec = importlib.util.spec_from_file_location("wp", sys.argv[1]); wp = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(wp)
    cache_dir, stop, reference = Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
    print("ready", flush=True)
    while not (cache_dir / "te-cache.json").exists():
        if stop.exists():  # the writer died before it made the cache
            print("gathers 0 relocated 0", flush=True)
            sys.exit(0)
        time.sleep(0.01)
    want = torch.load(reference) if reference != "-" else None
    cache = FeatureCache.open(cache_dir, create=False)
    gathers = relocated = 0
    while not stop.exists():
        if not cache.spaces():
            time.sleep(0.01)
            continue
        space = cache.space(cache.spaces()[0])
        if want is None:  # a writer's rows: whatever is committed must decode to what was appended
            n = 20000
            present = space.contains([wp.key_of(i) for i in range(n)])
            idx = [i for i in range(n) if present[i]]
            keys = [wp.key_of(i) for i in idx]
        else:  # rows of a reference run: those committed must be its rows to the bit (gc: all of them stay)
            present = space.contains(list(want))
            keys = [k for k, p in zip(want, present) if p]
        try:
            got = space.gather(keys)
        except CorruptCacheError as exc:
            if "located" not in str(exc):
                raise
            relocated += 1
            continue
        if want is None:
            ref = wp.features_of(idx)
            step = ref.abs().amax(dim=1, keepdim=True) / 127
            assert bool(((got - ref).abs() <= step / 2 + 1e-6).all()), "a committed row decoded wrong"
        else:
            assert not keys or torch.equal(got, torch.stack([want[k] for k in keys])), "a row differs from the reference"
        gathers += 1
    print(f"gathers {gathers} relocated {relocated}", flush=True)
""")


def start_reader(cache_dir: Path, stop: Path, reference: Path | None) -> subprocess.Popen:
    reader = subprocess.Popen([sys.executable, "-c", READER, str(WRITER_SCRIPT), str(cache_dir), str(stop),
                               str(reference) if reference else "-"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    assert reader.stdout.readline().strip() == "ready", reader.stderr.read()
    return reader


def stop_reader(reader: subprocess.Popen, stop: Path) -> int:
    stop.touch()
    out, err = reader.communicate(timeout=120)
    assert reader.returncode == 0, f"the concurrent reader failed: {err[-3000:]}"
    return int(out.split()[1])


def run_writer(cache_dir: Path, start: int, stop: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(WRITER_SCRIPT), str(cache_dir), "--start", str(start), "--stop",
                             str(stop), "--batch", str(BATCH), "--max-shard-bytes", str(SHARD_BYTES)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1)


def reported_committed(stdout: str) -> int:
    counts = [int(line.split()[1]) for line in stdout.splitlines() if line.startswith("committed ")]
    return counts[-1] if counts else 0


def check_verifies(cache_dir: Path) -> None:
    with FeatureCache.open(cache_dir, create=False) as cache:
        report = cache.verify()
    assert report.ok, [str(p) for p in report.problems]


def gather_all(cache_dir: Path, keys: list[str]) -> torch.Tensor:
    with FeatureCache.open(cache_dir, create=False) as cache:
        space = cache.space(wp.space_config())
        assert len(space) == len(keys), f"{len(space)} rows, expected {len(keys)}"
        return space.gather(keys)


def writer_kill_trials(tmp_path: Path, trials: int, seed: int) -> dict:
    """`trials` writers, each killed with SIGKILL at a random instant of its appends, then resumed."""
    cache_dir, stop = tmp_path / "cache", tmp_path / "stop-reader"
    reader = start_reader(cache_dir, stop, None)
    rng = random.Random(seed)
    killed = lost = attempt = 0
    while killed < trials:  # a kill that comes after the writer finished is no trial: go on until `trials` kills
        assert attempt < 3 * trials, f"only {killed} of {attempt} kills landed while the writer ran"
        trial, attempt = attempt, attempt + 1
        start = trial * WRITER_RANGE
        proc = run_writer(cache_dir, start, start + WRITER_RANGE)
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
        time.sleep(rng.uniform(0.0, 0.25))
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate(timeout=60)
        killed += proc.returncode == -signal.SIGKILL
        check_verifies(cache_dir)
        with FeatureCache.open(cache_dir, create=False) as cache:
            space = cache.space(wp.space_config())
            present = sum(space.contains([wp.key_of(i) for i in range(start, start + WRITER_RANGE)]))
        lost += max(0, reported_committed(out) - present)
        resumed = run_writer(cache_dir, start, start + WRITER_RANGE)
        _, err = resumed.communicate(timeout=120)
        assert resumed.returncode == 0, err[-2000:]
        check_verifies(cache_dir)
    gathers = stop_reader(reader, stop)
    keys = [wp.key_of(i) for i in range(attempt * WRITER_RANGE)]
    reference = tmp_path / "reference"
    whole = run_writer(reference, 0, attempt * WRITER_RANGE)
    assert whole.wait(timeout=300) == 0
    assert torch.equal(gather_all(cache_dir, keys), gather_all(reference, keys)), "resume differs from one run"
    assert lost == 0, f"{lost} rows a killed writer reported committed were lost"
    return {"trials": attempt, "killed": killed, "lost": lost, "reader_gathers": gathers}


def _append(cache: FeatureCache, indices: range) -> None:
    cache.space(wp.space_config()).append([wp.key_of(i) for i in indices], wp.features_of(indices))


def _name(cache: FeatureCache, name: str, indices) -> None:
    cache.put_dataset(name, [Record(f"{i}.png", wp.key_of(i), 0, "train") for i in indices], ["x"])


# `te cache gc` that kills itself with SIGKILL inside its work: at a random fraction (argv[3]) of the time
# its shard rewrite took in an uninterrupted run (argv[2] seconds), or as the rewrite returns, whichever
# comes first. Inside gc's transaction every time, however busy the machine: a kill timed from outside
# can land after gc has finished (its work is short beside Python's start-up).
GC_KILLED_INSIDE = """
import os, signal, sys, threading, time
from transfer_engine.cache import gc
plain = gc.rewrite_shards
def rewrite_shards(cache, shard_ids):
    began = time.monotonic()
    if sys.argv[2] != "measure":
        threading.Timer(float(sys.argv[2]) * float(sys.argv[3]), os.kill, (os.getpid(), signal.SIGKILL)).start()
    out = plain(cache, shard_ids)
    if sys.argv[2] != "measure":
        os.kill(os.getpid(), signal.SIGKILL)
    print(time.monotonic() - began, file=sys.stderr)
    return out
gc.rewrite_shards = rewrite_shards
from transfer_engine.cli.main import main
sys.exit(main(["cache", "gc", sys.argv[1]]))
"""


def gc_kill_trials(tmp_path: Path, trials: int, seed: int, inside: bool = False) -> dict:
    """`trials` runs of `te cache gc`, each killed with SIGKILL at a random instant, then resumed; before
    each, new garbage: rows no data set names and a data set replaced by another (half-dead shards).
    `inside`: gc kills itself inside its rewrite (GC_KILLED_INSIDE) instead of being killed from outside at
    a random instant of its whole run, start-up included."""
    cache_dir, stop = tmp_path / "cache", tmp_path / "stop-reader"
    core = range(0, 1600, 2)  # named by data set "core" throughout: what the reader gathers
    with FeatureCache.open(cache_dir, max_shard_bytes=SHARD_BYTES) as cache:
        _append(cache, range(1600))
        _name(cache, "core", core)
        want = dict(zip([wp.key_of(i) for i in core], cache.space(wp.space_config()).gather([wp.key_of(i) for i in core])))
    torch.save(want, tmp_path / "core.pt")
    reader = start_reader(cache_dir, stop, tmp_path / "core.pt")
    rng = random.Random(seed)
    killed = attempt = 0
    while killed < trials:  # a kill that comes after gc finished is no trial: go on until `trials` kills
        assert attempt < 3 * trials, f"only {killed} of {attempt} kills landed while gc ran"
        trial, attempt = attempt, attempt + 1
        fresh = range(10_000 + trial * 480, 10_000 + (trial + 1) * 480)
        with FeatureCache.open(cache_dir, max_shard_bytes=SHARD_BYTES) as cache:
            _append(cache, fresh)
            _name(cache, "trial", fresh[::3])  # the previous trial's rows die, a third of these live
        uninterrupted = tmp_path / f"uninterrupted-{trial}"
        shutil.copytree(cache_dir, uninterrupted)
        if inside:
            measured = subprocess.run([sys.executable, "-c", GC_KILLED_INSIDE, str(uninterrupted), "measure"],
                                      capture_output=True, text=True, timeout=300)
            assert measured.returncode == 0, measured.stderr[-2000:]
            rewrite = float(measured.stderr.strip().splitlines()[-1])
            proc = subprocess.Popen([sys.executable, "-c", GC_KILLED_INSIDE, str(cache_dir), str(rewrite),
                                     str(rng.random())], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        else:
            startup, full = timed_gc(uninterrupted, "--dry-run"), timed_gc(uninterrupted)
            proc = subprocess.Popen([sys.executable, "-m", "transfer_engine", "cache", "gc", str(cache_dir)],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            time.sleep(rng.uniform(0.8 * startup, full))  # mostly inside gc's work, not python's start-up
            proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=120)
        killed += proc.returncode == -signal.SIGKILL
        check_verifies(cache_dir)
        named = [wp.key_of(i) for i in list(core) + list(fresh[::3])]
        with FeatureCache.open(cache_dir, create=False) as cache:
            assert all(cache.space(wp.space_config()).contains(named)), "gc killed midway lost a named row"
        resumed = run_gc(cache_dir)
        assert resumed.returncode == 0, resumed.stderr
        check_verifies(cache_dir)
        assert torch.equal(gather_all(cache_dir, named), gather_all(uninterrupted, named))
        shutil.rmtree(uninterrupted)
    gathers = stop_reader(reader, stop)
    return {"trials": attempt, "killed": killed, "lost": 0, "reader_gathers": gathers}


def run_gc(cache_dir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "transfer_engine", "cache", "gc", str(cache_dir), *args],
                          capture_output=True, text=True, timeout=300)


def timed_gc(cache_dir: Path, *args: str) -> float:
    """Seconds a `te cache gc` (start-up included) takes to complete."""
    began = time.monotonic()
    done = run_gc(cache_dir, *args)
    assert done.returncode == 0, done.stderr
    return time.monotonic() - began


@pytest.mark.slow
def test_kill_9_of_a_writer_at_20_random_instants_with_a_reader_running(tmp_path):
    """#16 (kill -9 trials): a writer killed at any instant loses at most its batch in flight, never a row it
    reported committed; the cache verifies and resuming equals an uninterrupted run, bit for bit."""
    outcome = writer_kill_trials(tmp_path, trials=20, seed=1616)
    print("writer kill trials:", outcome)
    assert outcome["killed"] >= 20 and outcome["reader_gathers"] > 0


@pytest.mark.slow
def test_kill_9_of_gc_at_20_random_instants_with_a_reader_running(tmp_path):
    """#16 (kill -9 trials): gc killed at any instant keeps every named row; the cache verifies and gc again
    gives the same rows as an uninterrupted gc, while a reader gathers throughout."""
    outcome = gc_kill_trials(tmp_path, trials=20, seed=1617)
    print("gc kill trials:", outcome)
    assert outcome["killed"] >= 20 and outcome["reader_gathers"] > 0


def test_kill_9_of_gc_fast_twin(tmp_path):
    """#16 (kill -9 trials), the fast twin of the slow gc test (writer kills at random instants are
    tests/cache/test_crash.py's, in make test too): one kill inside gc's rewrite, reader running."""
    outcome = gc_kill_trials(tmp_path, trials=1, seed=8, inside=True)
    assert outcome["trials"] == 1  # the kill landed inside gc at the first attempt


def _make_images(folder: Path, n: int) -> None:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(16)
    for i in range(n):
        path = folder / ("a" if i % 2 else "b") / f"img{i:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(path)


def _extract(data: Path, cache_dir: Path) -> list[str]:
    return [sys.executable, "-m", "transfer_engine", "extract", "--backbone", "tiny_cnn", "--weights", "none",
            "--backend", "torch", "--precision", "fp32", "--resampler", "pil", "--batch-size", "4", "--workers", "1",
            "--data", str(data), "--cache", str(cache_dir), "--json"]


def _rows_by_key(cache_dir: Path) -> dict[str, torch.Tensor]:
    with FeatureCache.open(cache_dir, create=False) as cache:
        keys = cache.dataset("data").keys()
        return dict(zip(keys, cache.space(cache.spaces()[0]).gather(keys)))


@pytest.mark.slow
def test_kill_9_of_te_extract_at_20_random_instants_with_a_reader_running(good_plugin_site, tmp_path):
    """#16 (kill -9 trials): `te extract` killed at any instant leaves a cache that verifies; running it again
    extracts exactly the images without a committed row and ends with the rows of an uninterrupted run,
    bit for bit (--backend torch --precision fp32: `auto` picks by timing, per cache), while a reader
    gathers throughout."""
    import os

    env = {**os.environ, "PYTHONPATH": str(good_plugin_site)}
    data = tmp_path / "data"
    _make_images(data, 300)
    began = time.monotonic()
    whole = subprocess.run(_extract(data, tmp_path / "reference"), capture_output=True, text=True, env=env)
    full = time.monotonic() - began
    assert whole.returncode == 0, whole.stderr
    want = _rows_by_key(tmp_path / "reference")
    torch.save(want, tmp_path / "reference.pt")
    rng = random.Random(1618)
    killed = attempt = 0
    while killed < 20:
        assert attempt < 60, f"only {killed} of {attempt} kills landed while te extract ran"
        cache_dir, stop = tmp_path / f"cache{attempt}", tmp_path / f"stop{attempt}"
        attempt += 1
        reader = start_reader(cache_dir, stop, tmp_path / "reference.pt")
        proc = subprocess.Popen(_extract(data, cache_dir), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=env)
        time.sleep(rng.uniform(0.3, 1.0) * full)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=120)
        if proc.returncode != -signal.SIGKILL or not (cache_dir / "te-cache.json").exists():
            stop_reader(reader, stop)
            shutil.rmtree(cache_dir, ignore_errors=True)
            continue
        killed += 1
        check_verifies(cache_dir)
        with FeatureCache.open(cache_dir, create=False) as cache:
            present = sum(cache.space(cache.spaces()[0]).contains(list(want))) if cache.spaces() else 0
        resumed = subprocess.run(_extract(data, cache_dir), capture_output=True, text=True, env=env)
        assert resumed.returncode == 0, resumed.stderr
        assert json.loads(resumed.stdout)["extracted"] == len(want) - present  # nothing committed is redone
        check_verifies(cache_dir)
        got = _rows_by_key(cache_dir)
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
        stop_reader(reader, stop)
        shutil.rmtree(cache_dir)
    print("te extract kill trials:", {"trials": attempt, "killed": killed, "lost": 0})
