"""Faults of the feature cache, with real processes and real files: a gc beside a running writer, a
shard cut short under a live map, damage that `te cache verify` must catch (swapped keys, an edited
space config, a record without a row, a flipped byte anywhere in a shard, its key file or the index),
and `te cache repair` dropping exactly what is damaged (issue #16 items 1, 5, 7, 10, 11)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from transfer_engine.cache import FeatureCache, FeatureSpace, Record, content_key
from transfer_engine.cache.repair import repair_cache
from transfer_engine.cache.shards import HEADER_BYTES, KEYS_HEADER_BYTES, SLOT_BYTES
from transfer_engine.errors import CorruptCacheError, NotACacheError

DIM = 16
ROW_BYTES = DIM + 4  # int8 rows: one byte a feature and a float32 scale
SPACE = dict(backbone="synthetic", weights_digest="w" * 8, transform={"resize": 8}, dim=DIM, stored="int8")


def key_of(i: int) -> str:
    return content_key(f"image-{i}".encode())


def features_of(indices) -> torch.Tensor:
    return torch.stack([torch.randn(DIM, generator=torch.Generator().manual_seed(i)) for i in indices])


def fill(cache_dir: Path, n: int = 40, dataset: bool = True) -> None:
    """A cache with n rows of one space and (by default) a data set naming them all."""
    with FeatureCache.open(cache_dir) as cache:
        cache.space(FeatureSpace(**SPACE)).append([key_of(i) for i in range(n)], features_of(range(n)))
        if dataset:
            cache.put_dataset("d", [Record(f"img{i}.png", key_of(i), 0, "train") for i in range(n)], ["x"])


def rows_of(cache_dir: Path, keys: list[str]) -> torch.Tensor:
    with FeatureCache.open(cache_dir, create=False) as cache:
        return cache.space(FeatureSpace(**SPACE)).gather(keys)


def shard_file(cache_dir: Path) -> Path:
    (path,) = sorted(cache_dir.glob("shards/*/*.shard"))
    return path


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x10
    path.write_bytes(bytes(data))


def verify(cache_dir: Path):
    with FeatureCache.open(cache_dir, create=False) as cache:
        return cache.verify()


def sql(cache_dir: Path, statement: str, params=()) -> None:
    """Change the index behind te's back, as another tool or a damaged disk would."""
    conn = sqlite3.connect(cache_dir / "index.sqlite")
    with conn:
        conn.execute(statement, params)
    conn.close()


def swap_rows(cache_dir: Path, i: int, j: int) -> None:
    """Bind key_of(i) to key_of(j)'s row and back in the index."""
    conn = sqlite3.connect(cache_dir / "index.sqlite")
    a, b = bytes.fromhex(key_of(i)), bytes.fromhex(key_of(j))
    row_a, row_b = (conn.execute("SELECT row FROM rows WHERE key = ?", (k,)).fetchone()[0] for k in (a, b))
    with conn:
        conn.execute("UPDATE rows SET row = ? WHERE key = ?", (row_b, a))
        conn.execute("UPDATE rows SET row = ? WHERE key = ?", (row_a, b))
    conn.close()


def te_cache(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "transfer_engine", "cache", *args], capture_output=True, text=True,
                          timeout=120)


@pytest.fixture(scope="module")
def base_cache(tmp_path_factory) -> Path:
    """One filled cache; tests damage copies of it."""
    path = tmp_path_factory.mktemp("base") / "cache"
    fill(path)
    return path


@pytest.fixture
def cache_copy(base_cache, tmp_path) -> Path:
    target = tmp_path / "cache"
    shutil.copytree(base_cache, target)
    return target


# -- item 1: gc beside a running writer ----------------------------------------------------------------
WRITER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    sys.path.insert(0, {here!r})
    from test_cache_faults import FeatureCache, FeatureSpace, Record, SPACE, key_of, features_of
    cache = FeatureCache.open(sys.argv[1])
    space = cache.space(FeatureSpace(**SPACE))
    for at in range(0, 30, 10):  # rows appended batch by batch, named by a data set only at the end
        space.append([key_of(i) for i in range(at, at + 10)], features_of(range(at, at + 10)))
    print("appended", flush=True)
    while not Path(sys.argv[2]).exists():
        time.sleep(0.01)
    cache.put_dataset("d", [Record(f"img{{i}}.png", key_of(i), 0, "train") for i in range(30)], ["x"])
    cache.close()
    print("done", flush=True)
""").format(here=str(Path(__file__).resolve().parent))


def start_writer(cache_dir: Path, go: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(cache_dir), str(go)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert line.strip() == "appended", proc.stderr.read() if proc.poll() is not None else line
    return proc


def test_gc_while_a_writer_runs_keeps_every_row_of_its_space(tmp_path):
    """#16 item 1: `te cache gc` during an extraction dropped the rows not yet named by a data set and their
    space; the data set then had 0 of its rows and every later gc failed with KeyError."""
    cache_dir, go = tmp_path / "cache", tmp_path / "go"
    writer = start_writer(cache_dir, go)
    gc = te_cache("gc", str(cache_dir))
    assert gc.returncode == 0, gc.stderr
    assert "dropped 0 rows, 0 spaces" in gc.stdout and "kept space" in gc.stdout and str(writer.pid) in gc.stdout
    go.touch()
    out, err = writer.communicate(timeout=60)
    assert writer.returncode == 0 and "done" in out, err
    with FeatureCache.open(cache_dir, create=False) as cache:
        assert len(cache.dataset("d").records) == 30
        assert all(cache.space(FeatureSpace(**SPACE)).contains([key_of(i) for i in range(30)]))
    report = verify(cache_dir)
    assert report.ok, [str(p) for p in report.problems]
    again = te_cache("gc", str(cache_dir), "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["spaces_kept_for_writers"] == {}  # the closed writer's lease is gone


def test_a_killed_writer_s_lease_goes_stale_and_gc_collects_its_unnamed_rows(tmp_path):
    """#16 item 1: a writer killed with kill -9 cannot release its lease; gc sees its pid is gone, prunes the
    lease and drops the rows no data set names, instead of keeping them forever."""
    cache_dir, go = tmp_path / "cache", tmp_path / "go"
    writer = start_writer(cache_dir, go)
    writer.send_signal(signal.SIGKILL)
    writer.communicate(timeout=60)  # reaped: its pid no longer exists
    gc = te_cache("gc", str(cache_dir), "--json")
    assert gc.returncode == 0, gc.stderr
    report = json.loads(gc.stdout)
    assert (report["rows_dropped"], report["stale_leases"], report["spaces_kept_for_writers"]) == (30, 1, {})
    assert verify(cache_dir).ok


def test_a_lease_whose_pid_was_given_to_another_process_is_stale(tmp_path):
    """#16 item 1: a dead writer's pid, reused by a process started later (here pid 1), must not keep its
    rows from gc forever: the lease records the writer's start time too."""
    fill(tmp_path / "cache", dataset=False)
    space_id = FeatureSpace(**SPACE).id
    sql(tmp_path / "cache", "INSERT INTO meta (key, value) VALUES ('lease:1-x', ?)",
        (json.dumps({"space": space_id, "pid": 1, "pid_start": "0", "host": socket.gethostname(),
                     "started": 0.0}),))
    with FeatureCache.open(tmp_path / "cache", create=False) as cache:
        report = cache.gc()
    assert (report.stale_leases, report.rows_dropped, report.spaces_kept_for_writers) == (1, 40, {})


def test_gc_of_rows_whose_space_the_index_lost_is_not_a_key_error(cache_copy):
    """#16 item 1: the old gc left rows and shards under a deleted space; every later `te cache gc` failed
    with `internal error: KeyError`. They cannot be read without their space: gc drops them."""
    sql(cache_copy, "DELETE FROM spaces")
    gc = te_cache("gc", str(cache_copy), "--json")
    assert gc.returncode == 0 and "internal error" not in gc.stderr, gc.stderr
    assert json.loads(gc.stdout)["rows_dropped"] == 40
    assert not list(cache_copy.glob("shards/*/*"))
    second = te_cache("gc", str(cache_copy))
    assert second.returncode == 0, second.stderr


# -- item 5: a shard cut short under a live map --------------------------------------------------------
READER = textwrap.dedent("""
    import sys
    sys.path.insert(0, {here!r})
    from test_cache_faults import FeatureCache, FeatureSpace, SPACE, key_of
    from transfer_engine.errors import CorruptCacheError
    cache = FeatureCache.open(sys.argv[1], create=False)
    space = cache.space(FeatureSpace(**SPACE))
    keys = [key_of(i) for i in range(40)]
    space.gather(keys)  # maps the shard
    print("mapped", flush=True)
    sys.stdin.readline()  # the test cuts the shard short now
    try:
        space.gather(keys)
    except CorruptCacheError as exc:
        print("error:", exc, flush=True)
""").format(here=str(Path(__file__).resolve().parent))


def test_a_shard_cut_short_under_a_live_map_is_an_error_not_sigbus(cache_copy):
    """#16 item 5: a shard shortened while mapped killed te train/finetune/export with SIGBUS and no message
    at the next gather. The size is checked against the committed rows before each gather."""
    proc = subprocess.Popen([sys.executable, "-c", READER, str(cache_copy)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "mapped"
    with open(shard_file(cache_copy), "r+b") as f:
        f.truncate(HEADER_BYTES + 10 * ROW_BYTES)
    out, err = proc.communicate("go\n", timeout=60)
    assert proc.returncode == 0, f"reader died with {proc.returncode}: {err[-500:]}"
    assert "cut short" in out and "te cache verify" in out and "te cache repair" in out


# -- item 10: what verify must catch ---------------------------------------------------------------------
def test_verify_catches_two_keys_swapped_in_the_index(cache_copy):
    """#16 item 10: an index binding two keys to each other's rows passed `te cache verify`."""
    swap_rows(cache_copy, 3, 7)
    r = te_cache("verify", str(cache_copy))
    assert r.returncode == 1 and "internal error" not in r.stderr
    assert r.stdout.count("the index binds key") == 2 and "rows 3-3" in r.stdout and "rows 7-7" in r.stdout


def test_verify_catches_an_edited_space_config(cache_copy):
    """#16 item 10: a space whose stored config was edited (it no longer hashes to its id) passed verify."""
    conn = sqlite3.connect(cache_copy / "index.sqlite")
    config = json.loads(conn.execute("SELECT config FROM spaces").fetchone()[0])
    conn.close()
    sql(cache_copy, "UPDATE spaces SET config = ?", (json.dumps({**config, "pooling": "max"}),))
    problems = [str(p) for p in verify(cache_copy).problems]
    assert any("config does not hash to its id" in p for p in problems), problems


def test_verify_catches_a_data_set_record_without_a_row(cache_copy):
    """#16 item 10: a data set naming keys that have no row passed verify."""
    sql(cache_copy, "DELETE FROM rows WHERE key = ?", (bytes.fromhex(key_of(5)),))
    problems = [str(p) for p in verify(cache_copy).problems]
    assert any("data set 'd': 1 records name keys that have no row" in p and "img5.png" in p for p in problems)


SHARD_REGIONS = {
    "shard header": lambda c: (shard_file(c), 20),
    "shard row": lambda c: (shard_file(c), HEADER_BYTES + 12 * ROW_BYTES + 3),
    "shard row scale": lambda c: (shard_file(c), HEADER_BYTES + 13 * ROW_BYTES - 1),
    "key file header": lambda c: (shard_file(c).with_suffix(".keys"), 2),
    "key slot key": lambda c: (shard_file(c).with_suffix(".keys"), KEYS_HEADER_BYTES + 9 * SLOT_BYTES + 5),
    "key slot crc": lambda c: (shard_file(c).with_suffix(".keys"), KEYS_HEADER_BYTES + 10 * SLOT_BYTES - 1),
}


@pytest.mark.parametrize("region", list(SHARD_REGIONS))
def test_verify_catches_a_flipped_byte_in_every_region_of_a_shard(cache_copy, region):
    """#16 items 7 and 10: a flipped byte anywhere in a shard or its key file is a problem (a row's bytes or
    its key slot pinned to that row), and `te cache repair` then leaves a cache that verifies."""
    path, offset = SHARD_REGIONS[region](cache_copy)
    flip(path, offset)
    assert not verify(cache_copy).ok
    repair_cache(cache_copy)
    report = verify(cache_copy)
    assert all("te extract" in str(p) for p in report.problems), [str(p) for p in report.problems]


def _index_offsets(cache_dir: Path) -> dict[str, int]:
    """Byte offsets inside index.sqlite of a value of each table (found by its bytes in the file)."""
    data = (cache_dir / "index.sqlite").read_bytes()
    key = bytes.fromhex(key_of(4))
    hits, at = [], data.find(key)
    while at >= 0:
        hits.append(at)
        at = data.find(key, at + 1)
    assert len(hits) >= 2, "the key should be stored in the rows table, the records table and its index"
    out = {"sqlite header": 0, "space config": data.find(b"synthetic") + 2, "data set name": data.find(b'["x"]') + 2}
    out.update({f"key copy {i}": at + 5 for i, at in enumerate(hits)})
    return out


def test_verify_catches_a_flipped_byte_in_every_region_of_the_index(base_cache, tmp_path):
    """#16 items 7 and 10: a flipped byte in the index (its header, a space config, a row's key, a record's
    key, the records' key index) is a problem or a one-line damaged-index error, never a pass and never an
    internal error; `te cache repair` then gives a cache that verifies (apart from images to re-extract)."""
    offsets = _index_offsets(base_cache)
    assert len(offsets) >= 5
    for name, offset in offsets.items():
        copy = tmp_path / name.replace(" ", "-")
        shutil.copytree(base_cache, copy)
        flip(copy / "index.sqlite", offset)
        try:
            report = verify(copy)
            assert not report.ok, f"{name}: a flipped byte passed verify"
        except CorruptCacheError as exc:
            assert "te cache repair" in str(exc), name
        repair_cache(copy)
        after = verify(copy)
        assert all("te extract" in str(p) for p in after.problems), (name, [str(p) for p in after.problems])


# -- item 7: repair --------------------------------------------------------------------------------------
def test_repair_drops_exactly_the_damaged_rows_and_keeps_the_good_ones_bit_for_bit(cache_copy):
    """#16 item 7: after verify found damage there was no way out short of deleting the cache (extract reused
    the broken rows). repair drops the index entries of exactly the damaged rows; the others stay as
    they were, and appending the dropped ones again completes the space."""
    keys = [key_of(i) for i in range(40)]
    before = rows_of(cache_copy, keys)
    flip(shard_file(cache_copy), HEADER_BYTES + 17 * ROW_BYTES + 2)
    flip(shard_file(cache_copy), HEADER_BYTES + 30 * ROW_BYTES + 9)
    r = te_cache("repair", str(cache_copy), "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["entries_dropped"] == 2 and report["to_extract"] == {"d": 2}
    assert sorted(tuple(d["rows"]) for d in report["dropped"]) == [(17, 17), (30, 30)]
    with FeatureCache.open(cache_copy, create=False) as cache:
        space = cache.space(FeatureSpace(**SPACE))
        present = space.contains(keys)
        assert [i for i, p in enumerate(present) if not p] == [17, 30]
        good = [k for k, p in zip(keys, present) if p]
        assert torch.equal(space.gather(good), before[torch.tensor(present)])
        assert space.append(keys, features_of(range(40))) == 2  # what te extract does: only the dropped two
        assert torch.equal(space.gather(keys), before)
    assert verify(cache_copy).ok


def test_repair_of_swapped_keys_drops_both_entries(cache_copy):
    """#16 items 7 and 10: two keys bound to each other's rows are both dropped (their rows re-extracted)."""
    swap_rows(cache_copy, 3, 7)
    r = te_cache("repair", str(cache_copy))
    assert r.returncode == 0 and "dropped 2 index entries" in r.stdout, r.stdout + r.stderr
    with FeatureCache.open(cache_copy, create=False) as cache:
        present = cache.space(FeatureSpace(**SPACE)).contains([key_of(i) for i in range(40)])
    assert [i for i, p in enumerate(present) if not p] == [3, 7]


def test_repair_restores_an_edited_space_config_from_space_json(cache_copy):
    """#16 items 7 and 10: an edited config is put back from the space folder's space.json; no row is lost."""
    sql(cache_copy, "UPDATE spaces SET config = '{}'")
    r = te_cache("repair", str(cache_copy), "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["entries_dropped"] == 0, r.stdout + r.stderr
    assert verify(cache_copy).ok


def test_a_corrupt_index_is_one_line_everywhere_and_repair_rebuilds_it_from_the_shards(cache_copy):
    """#16 item 7: a corrupt index.sqlite was `internal error: DatabaseError` even in `te cache verify`.
    Every command now says it is damaged and names `te cache repair`, which keeps the damaged file and
    rebuilds the index from the shards and their key files, naming what it could not recover."""
    keys = [key_of(i) for i in range(40)]
    before = rows_of(cache_copy, keys)
    flip(cache_copy / "index.sqlite", 3)  # the sqlite header: "file is not a database"
    for command in ("verify", "info", "gc"):
        r = te_cache(command, str(cache_copy))
        assert r.returncode != 0 and "internal error" not in r.stderr, (command, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1 and "te cache repair" in r.stderr, (command, r.stderr)
    r = te_cache("repair", str(cache_copy), "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["rebuilt_index"] and report["rows_restored"] == 40
    assert Path(report["damaged_copy"]).is_file()  # the damaged file is kept, never deleted
    assert any("every data set" in item for item in report["lost"])  # records cannot come from shards
    assert torch.equal(rows_of(cache_copy, keys), before)
    assert verify(cache_copy).ok


def test_a_refused_cache_folder_is_left_without_a_writer_lock(tmp_path):
    """#16 item 11: `--cache` pointing at a non-empty folder that is not a cache was refused but left a
    writer.lock in it."""
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "holiday.jpg").write_bytes(b"not a cache")
    with pytest.raises(NotACacheError):
        FeatureCache.open(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["holiday.jpg"]


def test_after_repair_te_extract_re_extracts_exactly_the_dropped_rows(good_plugin_site, tmp_path):
    """#16 item 7: `te extract` said "nothing new" over damaged rows (it reused them). After `te cache
    repair` it extracts exactly the images whose rows were dropped, to the same bytes as before."""
    data, cache_dir = tmp_path / "data", tmp_path / "cache"
    rng = np.random.default_rng(0)
    for i in range(6):
        path = data / ("a" if i % 2 else "b") / f"img{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(path)
    extract = [sys.executable, "-m", "transfer_engine", "extract", "--backbone", "tiny_cnn", "--weights", "none",
               "--backend", "torch", "--data", str(data), "--cache", str(cache_dir), "--json"]
    env = {**os.environ, "PYTHONPATH": str(good_plugin_site)}
    first = subprocess.run(extract, capture_output=True, text=True, env=env, timeout=300)
    assert first.returncode == 0, first.stderr
    with FeatureCache.open(cache_dir, create=False) as cache:
        keys = cache.dataset("data").keys()
        space = cache.space(cache.spaces()[0])
        before = space.gather(keys)
        where = space.locate([keys[2]])
        row = int(where.row[0])
        path = cache.shard_path(space.id, int(where.shard[0]))
        width = space.row_bytes
    flip(path, HEADER_BYTES + row * width + 1)
    assert te_cache("verify", str(cache_dir)).returncode == 1
    repaired = te_cache("repair", str(cache_dir))
    assert repaired.returncode == 0 and "dropped 1 index entries" in repaired.stdout, repaired.stdout + repaired.stderr
    second = subprocess.run(extract, capture_output=True, text=True, env=env, timeout=300)
    assert second.returncode == 0, second.stderr
    result = json.loads(second.stdout)
    assert (result["extracted"], result["reused"]) == (1, 5)
    with FeatureCache.open(cache_dir, create=False) as cache:
        assert torch.equal(cache.space(cache.spaces()[0]).gather(keys), before)
    assert te_cache("verify", str(cache_dir)).returncode == 0


def test_a_rebuilt_index_gets_back_the_data_sets_sqlite_can_still_read(base_cache, tmp_path):
    """#16 item 7: when only an index b-tree is damaged (a flipped byte in the records' key index fails
    sqlite's integrity check), the rebuilt index has every row from the shards and the data set read back
    from the damaged copy, so nothing at all is lost."""
    key_copies = [name for name in _index_offsets(base_cache) if name.startswith("key copy")]
    outcomes = []
    for name in key_copies:
        copy = tmp_path / name.replace(" ", "-")
        shutil.copytree(base_cache, copy)
        flip(copy / "index.sqlite", _index_offsets(base_cache)[name])
        report = repair_cache(copy)
        if report.rebuilt_index and report.datasets_restored == ["d"]:
            assert report.rows_restored == 40 and not report.lost and verify(copy).ok
            with FeatureCache.open(copy, create=False) as cache:
                assert [r.path for r in cache.dataset("d").records] == [f"img{i}.png" for i in range(40)]
        outcomes.append((report.rebuilt_index, report.datasets_restored))
    assert (True, ["d"]) in outcomes, outcomes
