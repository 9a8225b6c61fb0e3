"""`te cache info|verify|gc` as a user runs them (each in its own process)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from transfer_engine.cache import FeatureCache, FeatureSpace, Record, content_key
from transfer_engine.cache.shards import HEADER_BYTES

DIM = 16


def _space(stored: str) -> FeatureSpace:
    return FeatureSpace(backbone="resnet18", weights_digest="ab" * 32, transform={"crop_size": 224}, dim=DIM,
                        stored=stored)


@pytest.fixture
def cache_dir(tmp_path):
    """A cache with two spaces and one data set of 30 images (20 train / 10 val, 3 classes)."""
    keys = [content_key(f"img{i}".encode()) for i in range(40)]
    with FeatureCache.open(tmp_path / "features") as cache:
        cache.space(_space("int8")).append(keys[:30], torch.randn(30, DIM))
        cache.space(_space("fp16")).append(keys, torch.randn(40, DIM))
        cache.put_dataset("pets", [Record(f"img{i}.png", keys[i], i % 3, "train" if i < 20 else "val")
                                   for i in range(30)], ["cat", "dog", "fox"])
    return tmp_path / "features"


def _one_line_error(r, code):
    lines = r.stderr.strip().splitlines()
    assert r.code == code and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    return lines[0]


def test_info_json_lists_spaces_and_data_sets_with_their_counts(te, cache_dir):
    r = te("cache", "info", str(cache_dir), "--json")
    assert r.code == 0, r.stderr
    info = json.loads(r.stdout)
    spaces = {s["stored"]: s for s in info["spaces"]}
    assert spaces["int8"]["rows"] == 30 and spaces["fp16"]["rows"] == 40
    assert spaces["int8"]["backbone"] == "resnet18" and spaces["int8"]["dim"] == DIM
    assert spaces["int8"]["id"] == _space("int8").id
    assert spaces["fp16"]["bytes"] > spaces["int8"]["bytes"] > 30 * (DIM + 4)
    (pets,) = info["datasets"]
    assert pets["name"] == "pets" and pets["records"] == 30 and pets["classes"] == ["cat", "dog", "fox"]
    assert pets["splits"] == {"train": 20, "val": 10} and pets["labels"] == {"cat": 10, "dog": 10, "fox": 10}
    assert pets["coverage"] == {_space("int8").id: 30, _space("fp16").id: 30}


def test_info_prints_tables_for_people(te, cache_dir):
    r = te("cache", "info", str(cache_dir))
    assert r.code == 0, r.stderr
    assert _space("int8").id[:12] in r.stdout and "train=20 val=10" in r.stdout
    assert "labels of pets: cat=10, dog=10, fox=10" in r.stdout


@pytest.mark.parametrize("command", ["info", "verify", "gc"])
def test_a_missing_or_foreign_directory_is_a_usage_error_and_nothing_is_created(te, tmp_path, command):
    missing = tmp_path / "nope"
    line = _one_line_error(te("cache", command, str(missing)), 2)
    assert line == f"te: error: {missing} does not exist; expected a feature cache directory " \
                   "(te extract --cache DIR makes one)"
    assert not missing.exists()
    (tmp_path / "plain").mkdir()
    line = _one_line_error(te("cache", command, str(tmp_path / "plain")), 2)
    assert "is not a te feature cache" in line and list((tmp_path / "plain").iterdir()) == []


def test_verify_passes_a_healthy_cache(te, cache_dir):
    r = te("cache", "verify", str(cache_dir))
    assert r.code == 0 and r.stdout.startswith("ok: 2 shards, 70 rows"), r.stdout + r.stderr


def test_verify_exits_1_naming_the_shard_and_rows_of_a_flipped_byte(te, cache_dir):
    (shard,) = (cache_dir / "shards" / _space("int8").id[:16]).glob("*.shard")
    data = bytearray(shard.read_bytes())
    data[HEADER_BYTES + 25 * (DIM + 4) + 3] ^= 0x01
    shard.write_bytes(bytes(data))
    relpath = shard.relative_to(cache_dir).as_posix()

    r = te("cache", "verify", str(cache_dir))
    line = _one_line_error(r, 1)
    assert line == f"te: error: cache {cache_dir} is damaged: {relpath} rows 25-25: checksum mismatch in block 0: " \
                   f"a byte of these rows (or of their key slots) changed on disk; `te cache repair {cache_dir}` " \
                   "drops what is damaged so that te extract extracts it again"
    assert f"DAMAGED  {relpath} rows 25-25" in r.stdout

    r = te("cache", "verify", str(cache_dir), "--json")
    assert r.code == 1
    report = json.loads(r.stdout)
    assert report["ok"] is False and [(p["shard"], p["rows"]) for p in report["problems"]] == [(relpath, [25, 25])]
    assert shard.read_bytes() == bytes(data)  # verify never repairs


def test_gc_dry_run_changes_nothing_and_gc_drops_what_no_data_set_uses(te, cache_dir):
    before = json.loads(te("cache", "info", str(cache_dir), "--json").stdout)
    r = te("cache", "gc", str(cache_dir), "--dry-run", "--json")
    assert r.code == 0, r.stderr
    dry = json.loads(r.stdout)
    assert dry["dry_run"] and dry["rows_dropped"] == 10 and dry["bytes_freed"] > 0
    assert json.loads(te("cache", "info", str(cache_dir), "--json").stdout) == before

    r = te("cache", "gc", str(cache_dir))
    assert r.code == 0 and r.stdout.startswith("dropped 10 rows, 0 spaces"), r.stdout + r.stderr
    after = {s["stored"]: s["rows"] for s in json.loads(te("cache", "info", str(cache_dir), "--json").stdout)["spaces"]}
    assert after == {"int8": 30, "fp16": 30}
    assert te("cache", "verify", str(cache_dir)).code == 0


def test_cache_help_and_info_do_not_import_torch(cache_dir):
    code = (
        "import sys\n"
        "from transfer_engine.cli.main import main\n"
        "assert main(['cache', '--help']) == 0\n"
        f"assert main(['cache', 'info', {str(cache_dir)!r}, '--json']) == 0\n"
        f"assert main(['cache', 'verify', {str(cache_dir)!r}]) == 0\n"
        "assert 'torch' not in sys.modules, 'te cache imported torch'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
