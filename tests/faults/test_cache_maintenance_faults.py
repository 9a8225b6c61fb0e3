"""Faults of cache maintenance (issue 35, items 4, 5 and 9): a damaged key slot must cost no row, a `te cache
gc` running beside `te cache verify` must never look like damage, and repair and merge must leave a cache
that verifies (a broken artifact, a damaged source row under `merge --rename`), refusing before they create
anything."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from transfer_engine.cache import FeatureCache, FeatureSpace, Record
from transfer_engine.cache import verify as verify_module
from transfer_engine.cli.main import main

from .test_cache_faults import (  # noqa: F401  (base_cache: the fixture cache_copy copies)
    HEADER_BYTES, KEYS_HEADER_BYTES, ROW_BYTES, SLOT_BYTES, SPACE, base_cache, cache_copy, features_of, fill, flip,
    key_of, rows_of, shard_file, te_cache, verify)

KEYS = [key_of(i) for i in range(40)]


def te(capsys, *args: str) -> tuple[int, str, str]:
    """`te ARGS` in this process (so a test can force a gc between verify's reads): exit code, stdout, stderr."""
    capsys.readouterr()
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def name_only(cache_dir: Path, n: int) -> None:
    """Data set 'd' names only the first n rows (the rest become garbage for gc)."""
    with FeatureCache.open(cache_dir, create=False) as cache:
        cache.put_dataset("d", [Record(f"img{i}.png", key_of(i), 0, "train") for i in range(n)], ["x"])


# -- item 4: a damaged key slot ---------------------------------------------------------------------------
def test_a_damaged_key_slot_costs_no_row(cache_copy):
    """#35 item 4: with byte 20 of the key file flipped (row 0's slot), verify trusted the slot whose CRC
    already failed ("the index binds key ... to this row"), repair dropped the good row and verify then
    failed on a record with no row. The slot is judged first: slot damage, rewritten, the row kept."""
    before = rows_of(cache_copy, KEYS)
    flip(shard_file(cache_copy).with_suffix(".keys"), 20)
    assert KEYS_HEADER_BYTES <= 20 < KEYS_HEADER_BYTES + SLOT_BYTES  # the key field of row 0's slot
    r = te_cache("verify", str(cache_copy))
    assert r.returncode == 1 and "internal error" not in r.stderr, r.stderr
    assert "rows 0-0: their key slots changed on disk" in r.stdout and "binds key" not in r.stdout, r.stdout
    repaired = te_cache("repair", str(cache_copy))
    assert repaired.returncode == 0, repaired.stderr
    assert "dropped 0 index entries, rewrote 1 shards" in repaired.stdout, repaired.stdout
    assert "dropped  " not in repaired.stdout and "images have no row" not in repaired.stdout, repaired.stdout
    assert te_cache("verify", str(cache_copy)).returncode == 0
    assert torch.equal(rows_of(cache_copy, KEYS), before)


def test_a_damaged_slot_beside_a_swapped_binding_still_catches_the_swap(cache_copy):
    """#35 item 4: skipping the binding check only where a slot fails its own CRC keeps catching keys
    swapped in the index everywhere else."""
    from .test_cache_faults import swap_rows

    flip(shard_file(cache_copy).with_suffix(".keys"), 20)
    swap_rows(cache_copy, 3, 7)
    problems = [str(p) for p in verify(cache_copy).problems]
    assert sum("binds key" in p for p in problems) == 2 and not any("rows 0-0" in p and "binds" in p for p in problems)
    te_cache("repair", str(cache_copy))
    with FeatureCache.open(cache_copy, create=False) as cache:
        present = cache.space(FeatureSpace(**SPACE)).contains(KEYS)
    assert [i for i, p in enumerate(present) if not p] == [3, 7]  # row 0 kept


# -- item 5: verify while gc rewrites a shard -------------------------------------------------------------
def gc_between_reads(monkeypatch, cache_dir: Path, passes: int | None) -> list[int]:
    """Run a real `te cache gc` (another connection, as another process would) each time a verify pass has
    read the index and before it reads a file, for the first `passes` passes (None: every pass); each gc
    rewrites the shard, dropping 5 more rows no data set names any more."""
    named = [40]

    def hook() -> None:
        if passes is None or len(named) <= passes:
            named.append(named[-1] - 5)
            name_only(cache_dir, named[-1])
            with FeatureCache.open(cache_dir, create=False) as other:
                assert other.gc().shards_rewritten == 1

    monkeypatch.setattr(verify_module, "_after_index_read", hook)
    return named


def test_verify_while_gc_rewrites_a_shard_checks_again_and_is_ok(cache_copy, monkeypatch, capsys):
    """#35 item 5: verify running while gc rewrote a shard said "DAMAGED ... rows 0-39: missing", suggested
    repair and exited 1. The shard's disappearance is re-checked in a fresh index transaction: gc moved
    its rows, so verify runs its pass again on the new state, and it is ok."""
    named = gc_between_reads(monkeypatch, cache_copy, passes=1)
    code, out, err = te(capsys, "cache", "verify", str(cache_copy))
    assert (code, err) == (0, ""), out + err
    assert "DAMAGED" not in out and "missing" not in out and "changed while verifying" in out, out
    assert out.splitlines()[-1].startswith("ok: 1 shards, 35 rows")
    assert named == [40, 35]


def test_verify_while_gc_keeps_rewriting_says_so_and_is_not_damage(cache_copy, monkeypatch, capsys):
    """#35 item 5: when the cache changes under every pass, verify says so in one line with its own exit
    code (3), never DAMAGED and never a suggestion to repair; the cache then verifies."""
    gc_between_reads(monkeypatch, cache_copy, passes=None)
    code, out, err = te(capsys, "cache", "verify", str(cache_copy))
    assert code == 3 and "DAMAGED" not in out and "te cache repair" not in out + err, out + err
    assert "not in the index" not in out, out  # the files that gc wrote meanwhile are not orphans
    assert err.count("\n") == 1 and err.startswith("te: error: the cache changed while verifying"), err
    assert f"run te cache verify {cache_copy} again" in err
    monkeypatch.setattr(verify_module, "_after_index_read", lambda: None)
    code, out, err = te(capsys, "cache", "verify", str(cache_copy), "--json")
    assert code == 0 and json.loads(out)["ok"] and not json.loads(out)["changed"], out + err


def test_real_damage_is_still_reported_while_a_writer_appends(cache_copy, monkeypatch):
    """#35 item 5: appends during verify are not a change that hides damage: rows past the snapshot's count
    are not read, and a damaged row of the shard they grow is still DAMAGED."""
    flip(shard_file(cache_copy), HEADER_BYTES + 12 * ROW_BYTES + 3)

    def append() -> None:
        with FeatureCache.open(cache_copy, create=False) as other:
            other.space(FeatureSpace(**SPACE)).append([key_of(i) for i in range(40, 45)], features_of(range(40, 45)))

    monkeypatch.setattr(verify_module, "_after_index_read", append)
    report = verify(cache_copy)
    assert not report.changed and [p.rows for p in report.problems] == [(12, 12)], [str(p) for p in report.problems]


# -- item 9: repair of a broken artifact ------------------------------------------------------------------
@pytest.mark.parametrize("fault", ["deleted", "damaged"])
def test_repair_drops_a_broken_artifact_and_the_cache_verifies(cache_copy, fault):
    """#35 item 9: with an artifact .onnx deleted or damaged, verify failed but repair said "nothing to
    repair" (and gc did not remove it). repair drops the name (te extract exports it again) and says so."""
    name = "onnx-backbone:synthetic:0123"
    with FeatureCache.open(cache_copy, create=False) as cache:
        stored = cache.put_artifact(name, lambda tmp: tmp.write_bytes(b"onnx bytes" * 100), ".onnx")
    if fault == "deleted":
        stored.unlink()
    else:
        flip(stored, 7)
    r = te_cache("verify", str(cache_copy))
    assert r.returncode == 1 and f"artifact {name}" in r.stdout and "te cache repair" in r.stderr, r.stdout + r.stderr
    repaired = te_cache("repair", str(cache_copy))
    assert repaired.returncode == 0 and "internal error" not in repaired.stderr, repaired.stderr
    assert f"dropped  artifact {name}" in repaired.stdout and "nothing to repair" not in repaired.stdout
    assert te_cache("verify", str(cache_copy)).returncode == 0
    assert not stored.exists()
    with FeatureCache.open(cache_copy, create=False) as cache:
        assert cache.artifact(name) == (None, "not stored")  # te extract exports it again


# -- item 9: merge ----------------------------------------------------------------------------------------
def _other_d(cache_dir: Path) -> None:
    """cache_dir: a cache whose data set 'd' names other records than base_cache's (same space)."""
    fill(cache_dir, n=30, dataset=False)
    with FeatureCache.open(cache_dir, create=False) as cache:
        cache.put_dataset("d", [Record(f"other{i}.png", key_of(i), 0, "train") for i in range(30)], ["x"])


def test_merge_rename_with_a_damaged_source_row_leaves_dest_verifying(cache_copy, tmp_path):
    """#35 item 9: `te cache merge --rename` stored the source's data set under a new name naming a row it
    had skipped as damaged: DEST no longer verified and repair could not fix it. That data set is now
    not copied (said so, exit 1 like cp), everything else is, and DEST verifies."""
    dest = tmp_path / "dest"
    _other_d(dest)
    flip(shard_file(cache_copy), HEADER_BYTES + 35 * ROW_BYTES + 3)  # a row DEST lacks
    r = te_cache("merge", str(dest), str(cache_copy), "--rename")
    assert r.returncode == 1 and "internal error" not in r.stderr, r.stderr
    assert "data set 'd' of" in r.stdout and "not copied: 1 of its records" in r.stdout, r.stdout
    assert r.stderr.strip().splitlines()[-1].startswith("te: error: 1 damaged source rows were not copied")
    assert "copied 9 rows" in r.stdout
    assert te_cache("verify", str(dest)).returncode == 0
    with FeatureCache.open(dest, create=False) as cache:
        assert cache.datasets() == ["d"]
    assert "nothing to repair" in te_cache("repair", str(dest)).stdout


def test_a_refused_merge_creates_no_dest(base_cache, tmp_path):
    """#35 item 9: a merge refused for a data-set name conflict between its sources still created DEST."""
    other = tmp_path / "other"
    _other_d(other)
    dest = tmp_path / "dest"
    r = te_cache("merge", str(dest), str(base_cache), str(other))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "holds other records" in r.stderr, r.stderr
    assert not dest.exists()


@pytest.mark.parametrize("dest_state", ["missing", "empty folder"])
def test_a_dry_run_creates_nothing(base_cache, tmp_path, dest_state):
    """#35 item 9: `te cache merge --dry-run` made a cache in DEST."""
    dest = tmp_path / "dest"
    if dest_state == "empty folder":
        dest.mkdir()
    r = te_cache("merge", str(dest), str(base_cache), "--dry-run")
    assert r.returncode == 0 and "would copy 40 rows" in r.stdout, r.stdout + r.stderr
    assert (list(dest.iterdir()) == []) if dest_state == "empty folder" else not dest.exists()


def test_rename_and_replace_together_are_a_usage_error(base_cache, tmp_path):
    """#35 item 9: `--rename --replace` was accepted (the last one silently won)."""
    dest = tmp_path / "dest"
    r = te_cache("merge", str(dest), str(base_cache), "--rename", "--replace")
    assert r.returncode == 2 and r.stdout == "", r.stdout
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("te: error: --rename and --replace exclude each other")
    assert not dest.exists()
