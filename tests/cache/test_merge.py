"""`te cache merge`: caches built apart become one, equal to the cache one process would have built, and
nothing damaged, conflicting or half-written ever gets in."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch

from transfer_engine.cache import FeatureCache, Record
from transfer_engine.cache import merge as merge_module
from transfer_engine.cache.merge import merge_caches
from transfer_engine.cache.shards import HEADER_BYTES, KEYS_HEADER_BYTES, SLOT_BYTES
from transfer_engine.errors import UsageError

from .conftest import WRITER_SCRIPT, keys_of, start_writer, wait_ready


def _fill(cache, wp, indices, dataset=None, split="train", **space_kwargs):
    space = cache.space(wp.space_config(**space_kwargs))
    indices = list(indices)
    for lo in range(0, len(indices), 100):
        chunk = indices[lo:lo + 100]
        space.append([wp.key_of(i) for i in chunk], wp.features_of(chunk))
    if dataset:
        cache.put_dataset(dataset, [Record(f"img{i}.png", wp.key_of(i), i % 3, split) for i in indices],
                          ["a", "b", "c"])
    return space


def _rows(cache, wp, indices, **space_kwargs):
    return cache.space(wp.space_config(**space_kwargs)).gather([wp.key_of(i) for i in indices])


def test_two_caches_built_apart_merge_into_what_one_process_would_have_built(new_cache, wp):
    left, right, dest, whole = new_cache(), new_cache(), new_cache(), new_cache()
    _fill(left, wp, range(0, 700), dataset="part-a")
    _fill(right, wp, range(500, 1200), dataset="part-b")  # 200 keys overlap
    _fill(right, wp, range(0, 50), stored="fp16")  # a second space
    _fill(whole, wp, range(0, 1200))

    report = merge_caches(dest, [left, right])

    assert report.copied == 1200 + 50 and report.skipped == 0
    by_source = {(s.source, s.space[:8]): s for s in report.spaces}
    int8_right = by_source[(str(right.root), wp.space_config().id[:8])]
    assert (int8_right.copied, int8_right.reused) == (500, 200)  # the overlap is found, not copied again
    assert torch.equal(_rows(dest, wp, range(1200)), _rows(whole, wp, range(1200)))  # bit for bit
    assert torch.equal(_rows(dest, wp, range(50), stored="fp16"), _rows(right, wp, range(50), stored="fp16"))
    assert dest.datasets() == ["part-a", "part-b"]
    assert dest.dataset("part-b").records == right.dataset("part-b").records
    assert dest.verify().ok

    again = merge_caches(dest, [left, right])  # a re-run (or a resumed one) copies nothing
    assert again.copied == 0 and sum(s.reused for s in again.spaces) == 700 + 700 + 50
    assert [d.action for d in again.datasets] == ["same", "same"]


def test_a_damaged_source_row_is_reported_and_never_copied(new_cache, wp):
    src, dest = new_cache(), new_cache()
    _fill(src, wp, range(600), dataset="d")
    shard = sorted((src.root / "shards").glob("*/*.shard"))[0]
    data = bytearray(shard.read_bytes())
    data[HEADER_BYTES + 300 * (wp.DIM + 4) + 5] ^= 0x40
    shard.write_bytes(bytes(data))

    report = merge_caches(dest, [src])

    assert (report.copied, report.skipped) == (599, 1)
    assert any("row 300" in p for s in report.spaces for p in s.problems)
    space = dest.space(wp.space_config())
    assert space.contains([wp.key_of(300), wp.key_of(299), wp.key_of(301)]) == [False, True, True]
    assert torch.equal(space.gather([wp.key_of(i) for i in range(299)]), _rows(src, wp, range(299)))
    # DEST is sound; its copy of the data set names the one image whose row was not copied, and says how
    # to get it back
    (problem,) = dest.verify().problems
    assert "1 records name keys that have no row" in str(problem) and "te extract --name d" in str(problem)


def test_a_damaged_key_slot_costs_no_row_when_its_block_proves_the_bytes(new_cache, wp):
    src, dest = new_cache(), new_cache()
    _fill(src, wp, range(600), dataset="d")
    keys_file = sorted((src.root / "shards").glob("*/*.keys"))[0]
    data = bytearray(keys_file.read_bytes())
    data[KEYS_HEADER_BYTES + 10 * SLOT_BYTES + 37] ^= 0x01  # row 10's slot CRC
    keys_file.write_bytes(bytes(data))

    report = merge_caches(dest, [src])

    assert (report.copied, report.skipped) == (600, 0)
    assert dest.verify().ok  # row 10 went in with a fresh, correct slot
    assert torch.equal(_rows(dest, wp, range(600)), _rows(src, wp, range(600)))


def test_rows_the_index_binds_to_the_wrong_key_are_never_copied(new_cache, wp):
    src, dest = new_cache(), new_cache()
    space = _fill(src, wp, range(100))
    (a, b) = (wp.key_of(3), wp.key_of(7))
    at = src.index.locations(space._row.id, [a, b])
    with src.lock, src.index.write():  # the index swaps two keys: each names the other's row
        src.index.move_rows(space._row.id, [(a, *at[b]), (b, *at[a])])

    report = merge_caches(dest, [src])

    assert (report.copied, report.skipped) == (98, 2)
    assert dest.space(wp.space_config()).contains([a, b, wp.key_of(4)]) == [False, False, True]
    assert dest.verify().ok


def test_a_conflicting_data_set_name_is_refused_before_anything_is_written(new_cache, wp):
    src, dest = new_cache(), new_cache()
    _fill(src, wp, range(0, 200), dataset="photos")
    _fill(dest, wp, range(100, 150), dataset="photos")
    before = dest.info()

    with pytest.raises(UsageError, match="photos.*--rename.*--replace"):
        merge_caches(dest, [src])
    assert dest.info() == before

    renamed = merge_caches(dest, [src], on_conflict="rename")
    assert [d.action for d in renamed.datasets] == ["renamed to photos-2"]
    assert len(dest.dataset("photos")) == 50 and len(dest.dataset("photos-2")) == 200
    merge_caches(dest, [src], on_conflict="replace")
    assert dest.dataset("photos").records == src.dataset("photos").records


def test_merging_a_cache_into_itself_or_from_a_running_writer_is_a_clear_error(new_cache, wp, tmp_path):
    dest = new_cache()
    _fill(dest, wp, range(10))
    same = FeatureCache.open(dest.root, create=False)
    try:
        with pytest.raises(UsageError, match="the source is DEST itself"):
            merge_caches(dest, [same])
    finally:
        same.close()

    busy_dir = tmp_path / "busy"
    writer = start_writer(busy_dir, "--batch", "4")  # writes until killed
    try:
        wait_ready(writer)
        writer.stdout.readline()  # its first commit: it holds a lease now
        busy = FeatureCache.open(busy_dir, create=False)
        try:
            with pytest.raises(UsageError, match="is being written.*writer pid"):
                merge_caches(dest, [busy])
        finally:
            busy.close()
    finally:
        writer.kill()
        writer.wait()


_KILLED_MERGE = textwrap.dedent("""
    import importlib.util, sys
    spec = importlib.util.spec_from_file_location("wp", sys.argv[1])
    wp = importlib.util.module_from_spec(spec); spec.loader.exec_module(wp)
    wp._install_crash(sys.argv[4], int(sys.argv[5]))
    from transfer_engine.cache import FeatureCache, merge
    merge.BATCH_BYTES = 256 * (wp.DIM + 4)  # a transaction per block of rows, so the kill lands mid-merge
    dest, src = FeatureCache.open(sys.argv[2]), FeatureCache.open(sys.argv[3], create=False)
    merge.merge_caches(dest, [src])
""")


@pytest.mark.parametrize("point", ["torn-row", "before-commit", "new-shard"])
def test_a_merge_killed_at_any_instant_leaves_dest_consistent_and_a_rerun_completes_it(new_cache, wp, tmp_path,
                                                                                      point):
    src = new_cache()
    _fill(src, wp, range(1500), dataset="d")
    src.close()
    dest_dir = tmp_path / "dest"
    nth = "1" if point == "new-shard" else "3"
    killed = subprocess.run([sys.executable, "-c", _KILLED_MERGE, str(WRITER_SCRIPT), str(dest_dir), str(src.root),
                             point, nth], capture_output=True, text=True, timeout=120)
    assert killed.returncode == -9, killed.stderr

    dest = FeatureCache.open(dest_dir, create=False)
    source = FeatureCache.open(src.root, create=False)
    try:
        assert dest.verify().ok  # consistent at the instant of the kill: some rows, no data set yet
        assert dest.datasets() == []
        report = merge_caches(dest, [source])
        assert report.copied + sum(s.reused for s in report.spaces) == 1500 and report.skipped == 0
        assert dest.verify().ok and dest.dataset("d").records == source.dataset("d").records
        assert torch.equal(_rows(dest, wp, range(1500)), _rows(source, wp, range(1500)))
    finally:
        dest.close()
        source.close()


def test_te_cache_merge_on_the_command_line(new_cache, wp, tmp_path):
    src = new_cache()
    _fill(src, wp, range(300), dataset="d")
    src.close()
    dest = tmp_path / "merged"
    te = [sys.executable, "-m", "transfer_engine"]

    dry = subprocess.run([*te, "cache", "merge", str(dest), str(src.root), "--dry-run", "--json"],
                         capture_output=True, text=True)
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout)["rows_copied"] == 300 and not dest.exists()  # a dry run creates nothing

    done = subprocess.run([*te, "cache", "merge", str(dest), str(src.root)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "copied 300 rows" in done.stdout and "data set 'd'" in done.stdout

    missing = subprocess.run([*te, "cache", "merge", str(dest), str(tmp_path / "nope")], capture_output=True,
                             text=True)
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert "does not exist" in missing.stderr and len(missing.stderr.strip().splitlines()) == 1

