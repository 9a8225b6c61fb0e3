"""Shared pieces of the cache tests: the writer process (run for real) and its deterministic rows."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

WRITER_SCRIPT = Path(__file__).resolve().parent / "writer_process.py"

_spec = importlib.util.spec_from_file_location("te_cache_writer_process", WRITER_SCRIPT)
writer_process = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(writer_process)


def start_writer(cache: Path, *args: str) -> subprocess.Popen:
    """Start the writer process on `cache`; read "ready" / "committed N" lines from its stdout."""
    return subprocess.Popen([sys.executable, str(WRITER_SCRIPT), str(cache), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, bufsize=1)


def wait_ready(proc: subprocess.Popen) -> None:
    line = proc.stdout.readline()
    assert line.strip() == "ready", f"writer did not start: {line!r} {proc.stderr.read() if proc.poll() else ''}"


def keys_of(n: int, start: int = 0) -> list[str]:
    """Content keys of n made-up images."""
    from transfer_engine.cache import content_key

    return [content_key(f"img{i}".encode()) for i in range(start, start + n)]


def int8_close(got, want) -> bool:
    """True when every value is within the quantizer's promise (`ops.quantize_rows_int8`): half its row's
    int8 step plus float32's rounding, INT8_ROUNDING * (|x| + |back|), measured in float64 so the check
    itself rounds nothing. A fixed 1e-6 is not that promise: near a tie the rounding passes it from
    |x| ~ 10 on (test_store's near-tie row)."""
    from transfer_engine.ops import INT8_ROUNDING

    got, want = got.double(), want.double()
    step = want.abs().amax(dim=1, keepdim=True) / 127
    return bool(((got - want).abs() <= step / 2 + INT8_ROUNDING * (want.abs() + got.abs())).all())


@pytest.fixture
def wp():
    """The writer_process module: key_of(i), features_of(indices), space_config(), DIM."""
    return writer_process


@pytest.fixture
def new_cache(tmp_path):
    """Open a fresh cache (closed after the test); extra keyword arguments go to FeatureCache.open."""
    from transfer_engine.cache import FeatureCache

    opened = []

    def make(**kwargs):
        cache = FeatureCache.open(tmp_path / f"cache{len(opened)}", **kwargs)
        opened.append(cache)
        return cache

    yield make
    for cache in opened:
        cache.close()
