"""verify finds every damaged byte and names where; gc drops only what no data set uses."""

from __future__ import annotations

import torch

from transfer_engine.cache import Record
from transfer_engine.cache.shards import BLOCK_ROWS, HEADER_BYTES

from .conftest import keys_of


def filled(new_cache, wp, rows=600, **open_kwargs):
    cache = new_cache(**open_kwargs)
    space = cache.space(wp.space_config())
    for start in range(0, rows, 100):
        space.append(keys_of(100, start), wp.features_of(range(start, start + 100)))
    return cache, space


def shard_files(cache):
    return sorted((cache.root / "shards").glob("*/*.shard"))


def flip(path, offset):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x10
    path.write_bytes(bytes(data))


def test_a_healthy_cache_verifies(new_cache, wp):
    cache, _ = filled(new_cache, wp)
    report = cache.verify()
    assert report.ok and report.rows == 600 and report.shards == 1 and not report.notes


def test_a_flipped_row_byte_is_found_with_its_shard_and_rows(new_cache, wp):
    cache, _ = filled(new_cache, wp)
    path = shard_files(cache)[0]
    row = 300
    flip(path, HEADER_BYTES + row * (wp.DIM + 4) + 7)
    report = cache.verify()
    assert not report.ok and len(report.problems) == 1
    problem = report.problems[0]
    assert problem.shard == path.relative_to(cache.root).as_posix()
    # the key file's per-row CRC32 pins the damage to the one row, not its whole block
    assert problem.rows == (row, row) and f"checksum mismatch in block {row // BLOCK_ROWS}" in problem.message


def test_a_flipped_byte_in_a_sealed_shard_is_pinned_to_its_row(new_cache, wp):
    cache, _ = filled(new_cache, wp, max_shard_bytes=250 * (wp.DIM + 4))
    sealed = shard_files(cache)[0]
    flip(sealed, HEADER_BYTES + 3)
    (problem,) = cache.verify().problems
    assert "checksum mismatch in block 0" in problem.message and problem.rows == (0, 0)


def test_a_wrong_sealed_sha256_in_the_index_is_found(new_cache, wp):
    cache, _ = filled(new_cache, wp, max_shard_bytes=250 * (wp.DIM + 4))
    with cache.lock, cache.index.write():
        cache.index.seal_shard(cache.index.shards()[0].id, "0" * 64, 250)
    (problem,) = cache.verify().problems
    assert "SHA-256 of the sealed shard" in problem.message


def test_a_damaged_header_or_a_cut_shard_is_reported(new_cache, wp):
    cache, _ = filled(new_cache, wp)
    path = shard_files(cache)[0]
    flip(path, 20)  # inside the dim field
    assert "header says dim" in cache.verify().problems[0].message
    flip(path, 20)
    with open(path, "r+b") as f:
        f.truncate(HEADER_BYTES + 550 * (wp.DIM + 4) + 10)
    problem = cache.verify().problems[0]
    assert "file ends after 550 whole rows; the index commits 600" in problem.message and problem.rows == (550, 599)


def test_verify_changes_nothing(new_cache, wp):
    cache, _ = filled(new_cache, wp)
    path = shard_files(cache)[0]
    flip(path, HEADER_BYTES + 11)
    before = path.read_bytes()
    cache.verify()
    assert path.read_bytes() == before


def test_gc_drops_rows_no_data_set_references_and_keeps_the_rest_intact(new_cache, wp):
    cache, space = filled(new_cache, wp, max_shard_bytes=250 * (wp.DIM + 4))
    other = cache.space(wp.space_config(stored="fp16"))
    other.append(keys_of(10, 1000), wp.features_of(range(1000, 1010)))  # a space no data set uses
    kept = list(range(0, 600, 3)) + list(range(500, 600))               # shard 3 (500..599) stays whole
    kept = sorted(set(kept))
    cache.put_dataset("d", [Record(f"{i}.png", keys_of(1, i)[0], 0, "train") for i in kept], ["x"])
    before = space.gather([keys_of(1, i)[0] for i in kept])

    dry = cache.gc(dry_run=True)
    assert len(space) == 600 and dry.rows_dropped == 600 - len(kept) + 10
    report = cache.gc()
    assert report.rows_dropped == dry.rows_dropped and report.spaces_dropped == [other.id]
    assert report.bytes_freed > 0 and report.shards_rewritten == 2
    assert len(space) == len(kept) and [s.id for s in cache.spaces()] == [space.id]
    assert torch.equal(space.gather([keys_of(1, i)[0] for i in kept]), before)
    assert cache.verify().ok
    assert cache.gc().rows_dropped == 0  # nothing left to drop


def test_shards_from_before_key_files_are_a_note_not_a_problem(new_cache, wp):
    """#16 item 10: a cache written by a te that kept no key files still verifies (blocks are checked);
    that its key binding cannot be checked is said as a note."""
    from transfer_engine.cache.writer import KEYS_FROM_SHARD

    cache, _ = filled(new_cache, wp)
    with cache.lock, cache.index.write():
        cache.index.set_meta(KEYS_FROM_SHARD, "1000")
    for keys in cache.root.glob("shards/*/*.keys"):
        keys.unlink()
    report = cache.verify()
    assert report.ok and any("before te kept key files" in note for note in report.notes)
    flip(shard_files(cache)[0], HEADER_BYTES + 5)
    (problem,) = cache.verify().problems
    assert problem.rows == (0, BLOCK_ROWS - 1)  # without key slots, damage is pinned to its block
