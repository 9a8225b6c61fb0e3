"""Artifacts: files a cache keeps beside its rows, content-addressed (e.g. a backbone exported to ONNX
for extraction, so the export is paid once per cache and not once per run).

    DIR/artifacts/<sha256><suffix>     the bytes, named by their SHA-256
    index meta "artifact:<name>"       {"sha256", "bytes", "file"}: which file a name means now

The cache knows nothing of what an artifact is; its user names it (a name that hashes everything the
file depends on) and writes it. Writing goes to a temp file in artifacts/ (named with the writer's pid),
is hashed, fsynced and renamed to its digest, then the name is committed under the writer lock: a crash
leaves at worst a temp file, which `te cache gc` removes once its writer is gone (the rename and the
name are one step under the lock, so gc never takes a stored file for an unnamed one). Reading re-hashes the
file: a damaged artifact is never used (the caller writes it again; `te cache verify` names it).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from transfer_engine._durable import fsync_dir, replace_durably
from transfer_engine.cache.lock import filesystem_errors
from transfer_engine.core.process import pid_alive

if TYPE_CHECKING:
    from transfer_engine.cache.store import FeatureCache

FOLDER = "artifacts"
_META = "artifact:"
_TMP = ".tmp-"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def put(cache: "FeatureCache", name: str, write: Callable[[Path], None], suffix: str = "") -> Path:
    """Have `write(tmp_path)` write the artifact `name`, then store it under its digest and commit the name.

    Returns:
        The stored file. `write`'s exceptions propagate (its temp file is removed).
    """
    folder = cache.root / FOLDER
    with filesystem_errors(cache.root):  # a full or read-only disk: the one line naming the cache
        folder.mkdir(exist_ok=True)
        return _put(cache, folder, name, write, suffix)


def _put(cache: "FeatureCache", folder: Path, name: str, write: Callable[[Path], None], suffix: str) -> Path:
    tmp = folder / f"{_TMP}{os.getpid()}-{secrets.token_hex(4)}{suffix}"
    try:
        write(tmp)
        digest, size = sha256_of(tmp), os.stat(tmp).st_size
        target = folder / f"{digest}{suffix}"
        record = {"sha256": digest, "bytes": size, "file": f"{FOLDER}/{target.name}"}
        # rename and name in one hold of the lock: gc (which holds it) never sees the file unnamed
        with cache.lock, cache.index.write():
            replace_durably(tmp, target)
            cache.index.set_meta(_META + name, json.dumps(record, sort_keys=True))
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


def forget(cache: "FeatureCache", name: str) -> None:
    """Drop artifact `name` and every file no name points at any more."""
    with cache.lock:
        with cache.index.write():
            cache.index.delete_meta(_META + name)
        remove_unreferenced(cache)


def drop_name(index, name: str) -> None:
    """Forget artifact `name` (inside the caller's write transaction, under the writer lock); its file is
    removed by `remove_unreferenced` once no name points at it."""
    index.delete_meta(_META + name)


def get(cache: "FeatureCache", name: str) -> tuple[Path | None, str]:
    """The stored file of artifact `name` once its bytes check out, or (None, why not)."""
    record = records(cache).get(name)
    if record is None:
        return None, "not stored"
    path = cache.root / record["file"]
    problem = check(path, record)
    return (None, problem) if problem else (path, "")


def records(cache: "FeatureCache") -> dict[str, dict]:
    """{name: {"sha256", "bytes", "file"}} of every artifact the index names."""
    return {key[len(_META):]: json.loads(value) for key, value in cache.index.meta_with_prefix(_META).items()}


def check(path: Path, record: dict) -> str:
    """"" when the file holds the recorded bytes, else what is wrong with it."""
    try:
        size = os.stat(path).st_size
    except FileNotFoundError:
        return "missing"
    if size != record["bytes"]:
        return f"{size} bytes, {record['bytes']} recorded"
    if sha256_of(path) != record["sha256"]:
        return "SHA-256 differs from the one recorded when it was stored: a byte changed on disk"
    return ""


def unreferenced(cache: "FeatureCache") -> list[Path]:
    """Files in artifacts/ that no name points at (replaced or damaged versions, temp files of dead writers)."""
    folder = cache.root / FOLDER
    if not folder.is_dir():
        return []
    named = {Path(r["file"]).name for r in records(cache).values()}
    out = []
    for path in sorted(folder.iterdir()):
        if path.name in named:
            continue
        if path.name.startswith(_TMP) and _writer_alive(path.name):
            continue
        out.append(path)
    return out


def remove_unreferenced(cache: "FeatureCache") -> tuple[int, int]:
    """Delete `unreferenced` files (call under the writer lock); returns (files, bytes)."""
    gone, freed = 0, 0
    for path in unreferenced(cache):
        try:
            freed += os.stat(path).st_size
            path.unlink()
            gone += 1
        except FileNotFoundError:
            continue
    if gone:
        fsync_dir(cache.root / FOLDER)
    return gone, freed


def _writer_alive(tmp_name: str) -> bool:
    try:
        return pid_alive(int(tmp_name[len(_TMP):].split("-", 1)[0]))
    except ValueError:
        return False
