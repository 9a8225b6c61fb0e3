"""Artifacts: files a cache keeps by content (te extract's ONNX backbones), checked and cleaned like rows."""

from __future__ import annotations

import subprocess
import sys

import pytest

from transfer_engine.cache import FeatureCache


def write_bytes(data: bytes):
    return lambda tmp: tmp.write_bytes(data)


def test_a_stored_artifact_is_found_by_name_and_a_new_version_replaces_it(tmp_path):
    with FeatureCache.open(tmp_path / "c") as cache:
        first = cache.put_artifact("model:a", write_bytes(b"version 1"), suffix=".onnx")
        path, why = cache.artifact("model:a")
        assert path == first and why == "" and path.read_bytes() == b"version 1"
        assert cache.artifact("model:b") == (None, "not stored")
        second = cache.put_artifact("model:a", write_bytes(b"version 2"), suffix=".onnx")
        assert second != first and cache.artifact("model:a")[0] == second
        report = cache.verify()
        assert report.ok and any(first.name in note for note in report.notes)  # the old version, unnamed
        gone = cache.gc()
        assert gone.artifacts_removed == 1 and not first.exists() and second.exists()
        assert [a["name"] for a in cache.info()["artifacts"]] == ["model:a"]


def test_a_damaged_artifact_is_never_returned_and_verify_names_it(tmp_path):
    with FeatureCache.open(tmp_path / "c") as cache:
        path = cache.put_artifact("model:a", write_bytes(b"0123456789"))
        path.write_bytes(b"0123456780")
        assert cache.artifact("model:a") == (None, "SHA-256 differs from the one recorded when it was stored: "
                                                   "a byte changed on disk")
        path.unlink()
        assert cache.artifact("model:a") == (None, "missing")
        report = cache.verify()
        assert not report.ok and report.problems[0].shard == f"artifacts/{path.name}"


def test_gc_removes_temp_files_of_dead_writers_and_keeps_those_of_live_ones(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)  # that process has exited
    with FeatureCache.open(tmp_path / "c") as cache:
        cache.put_artifact("model:a", write_bytes(b"kept"))
        folder = cache.root / "artifacts"
        stale, live = folder / f".tmp-{dead_pid}-0000.onnx", folder / ".tmp-1-0000.onnx"  # pid 1 always runs
        stale.write_bytes(b"half an export")
        live.write_bytes(b"an export in progress")
        assert cache.gc(dry_run=True).artifacts_removed == 1 and stale.exists()
        assert cache.gc().artifacts_removed == 1
        assert not stale.exists() and live.exists() and cache.artifact("model:a")[0] is not None


def test_a_failed_write_leaves_nothing_behind(tmp_path):
    def broken(tmp):
        tmp.write_bytes(b"partial")
        raise RuntimeError("exporter crashed")

    with FeatureCache.open(tmp_path / "c") as cache:
        with pytest.raises(RuntimeError, match="exporter crashed"):
            cache.put_artifact("model:a", broken)
        assert cache.artifact("model:a") == (None, "not stored")
        assert list((cache.root / "artifacts").iterdir()) == []
