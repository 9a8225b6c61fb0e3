"""A cache on a read-only file system and on a full disk, with real mounts (issue 35, items 6 and 7).

Root ignores permission bits, so a read-only or full disk is made the way it happens: a small tmpfs,
remounted read-only or filled up. Where mounting is not permitted (not root, no CAP_SYS_ADMIN in a
container), these tests skip with the reason.

Read-only: every command that only reads (info, verify, train) works; every command that must write
(extract, repair, gc, merge into it) is one line naming the cache. Full disk: `te extract` is one line
naming the full disk and the cache, never sqlite's error hidden under a second one, and afterwards the
cache verifies (nothing reported damaged) and the same command completes it.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from transfer_engine.cache import FeatureCache, FeatureSpace, content_key
from transfer_engine.cache.lock import DiskFullError

EXTRACT = ("extract", "--backbone", "tiny_cnn", "--weights", "none", "--backend", "torch", "--workers", "1")


def _mount(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise OSError(proc.stderr.strip() or f"{cmd[0]} exited {proc.returncode}")


@contextlib.contextmanager
def tmpfs(folder: Path, size: str = "3m"):
    """A tmpfs of `size` mounted on `folder` for the block; skips the test where mounting is not permitted."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tmpfs (root ignores permission bits, so only a real read-only or full "
                    "file system shows these faults)")
    try:
        _mount(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)])
    except OSError as exc:
        pytest.skip(f"cannot mount a tmpfs here ({exc})")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], capture_output=True)
        if os.path.ismount(folder):
            subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def remount(folder: Path, mode: str) -> None:
    _mount(["mount", "-o", f"remount,{mode}", str(folder)])


def images(folder: Path, n: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for i in range(n):
        path = folder / ("a" if i % 2 else "b") / f"img{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(path)
    return folder


def one_error(result, *words: str) -> str:
    """The one `te: error:` line of a failed command (exit 1), which must contain `words`."""
    text = result.stdout + result.stderr
    assert result.code == 1, text
    assert "internal error" not in text and "Traceback" not in text, text
    errors = [line for line in text.splitlines() if line.startswith("te: error:")]
    assert len(errors) == 1, text
    for word in words:
        assert word in errors[0], errors[0]
    return errors[0]


def fill(folder: Path, leave: int) -> Path:
    """Fill the file system of `folder` up to `leave` free bytes, with one file."""
    st = os.statvfs(folder)
    filler = folder / "filler"
    with open(filler, "wb") as f:
        f.write(b"\0" * max(0, st.f_bavail * st.f_frsize - leave))
    return filler


@pytest.fixture(scope="module")
def env(good_plugin_site):
    """A `te` subprocess that sees the tiny test backbone (te-test-good), on one thread."""
    path = os.pathsep.join(filter(None, [str(good_plugin_site), os.environ.get("PYTHONPATH")]))
    return {"PYTHONPATH": path, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def read_only_cache(tmp_path_factory, te, env):
    """A cache of 6 images on a tmpfs remounted read-only: (cache, data, work folder)."""
    work = tmp_path_factory.mktemp("ro")
    data = images(work / "data", 6)
    with tmpfs(work / "disk") as disk:
        cache = disk / "cache"
        made = te(*EXTRACT, "--data", str(data), "--cache", str(cache), env=env, timeout=120)
        assert made.code == 0, made.stderr
        remount(disk, "ro")
        yield cache, data, work


def test_reading_commands_work_on_a_read_only_cache(read_only_cache, te, env):
    cache, data, work = read_only_cache
    assert not os.access(cache, os.W_OK)  # really read-only, for root too
    info = te("cache", "info", str(cache), env=env, timeout=60)
    assert info.code == 0 and "data" in info.stdout, info.stdout + info.stderr
    verify = te("cache", "verify", str(cache), env=env, timeout=60)
    assert verify.code == 0 and verify.stdout.startswith("ok"), verify.stdout + verify.stderr
    train = te("train", "--cache", str(cache), "--head", "linear", "--out", str(work / "run"), env=env,
                   timeout=120)
    assert train.code == 0, train.stdout + train.stderr
    assert (work / "run" / "head.safetensors").is_file()
    assert sorted(p.name for p in cache.iterdir()) == ["index.sqlite", "shards", "te-cache.json", "writer.lock"]


@pytest.mark.parametrize("command", ["extract", "repair", "gc", "merge"])
def test_commands_that_write_are_one_line_on_a_read_only_cache(read_only_cache, te, env, command, tmp_path):
    cache, data, _ = read_only_cache
    if command == "extract":
        args = (*EXTRACT, "--data", str(data), "--cache", str(cache))
    elif command == "merge":
        source = tmp_path / "other"
        with FeatureCache.open(source) as other:
            other.space(backbone="synthetic", weights_digest="w" * 8, transform={}, dim=4, stored="int8").append(
                [content_key(b"x")], torch.ones(1, 4))
        args = ("cache", "merge", str(cache), str(source))
    else:
        args = ("cache", command, str(cache))
    result = te(*args, env=env, timeout=120)
    one_error(result, str(cache), "read-only file system")


def test_a_full_disk_is_one_line_and_leaves_a_cache_that_verifies_and_completes(tmp_path, te, env):
    """#35 item 7: sqlite's "database or disk is full" was hidden under a second ENOSPC from the record
    spool's close (an internal error), and verify then called the space's missing space.json damage."""
    data = images(tmp_path / "data", 120, seed=1)
    with tmpfs(tmp_path / "disk") as disk:
        cache = disk / "cache"
        with FeatureCache.open(cache):
            pass
        filler = fill(disk, 48 << 10)
        full = te(*EXTRACT, "--data", str(data), "--cache", str(cache), "--json", env=env, timeout=120)
        one_error(full, "no space left on the device of", str(cache), "nothing committed is lost")
        filler.unlink()
        verify = te("cache", "verify", str(cache), env=env, timeout=60)
        assert verify.code == 0 and "DAMAGED" not in verify.stdout and "missing" not in verify.stdout, verify.stdout
        again = te(*EXTRACT, "--data", str(data), "--cache", str(cache), "--json", env=env, timeout=120)
        assert again.code == 0, again.stderr
        assert te("cache", "verify", str(cache), env=env, timeout=60).code == 0


SPACE = dict(backbone="synthetic", weights_digest="w" * 8, transform={"resize": 8}, dim=64, stored="int8")


def test_the_disk_filling_at_any_step_of_an_append_is_one_error_and_never_damage(tmp_path):
    """The disk fills at every step of the commit order in turn (new space, space.json, shard header, key
    file, rows, index): each time a `DiskFullError` naming the cache, and a cache that verifies clean."""
    with tmpfs(tmp_path / "disk", size="1m") as disk:
        seen = set()
        for leave in range(0, 80 << 10, 4 << 10):
            cache_dir = disk / f"cache-{leave}"
            with FeatureCache.open(cache_dir):
                pass
            filler = fill(disk, leave)
            try:
                with FeatureCache.open(cache_dir) as cache:
                    space = cache.space(FeatureSpace(**SPACE))
                    for batch in range(40):
                        keys = [content_key(f"{batch}-{i}".encode()) for i in range(64)]
                        space.append(keys, torch.randn(64, SPACE["dim"]))
                seen.add("filled nothing")
            except DiskFullError as exc:
                assert str(cache_dir) in str(exc) and "no space left on the device" in str(exc)
                seen.add(type(exc.__cause__).__name__)
            finally:
                filler.unlink()
            with FeatureCache.open(cache_dir, create=False) as cache:
                report = cache.verify()
            assert report.ok, [str(p) for p in report.problems]
            for entry in cache_dir.iterdir():
                if entry.is_dir() and entry.name == "shards":
                    for folder in entry.iterdir():  # no space folder without its space.json
                        assert (folder / "space.json").is_file(), sorted(folder.iterdir())
            for entry in list(disk.iterdir()):  # room for the next trial
                if entry.name.startswith("cache-"):
                    subprocess.run(["rm", "-rf", str(entry)], check=True)
        assert "filled nothing" not in seen, seen
