"""A writer process for the reliability tests: appends deterministic rows to a cache, and can be told
to kill itself (SIGKILL, as `kill -9` would) at a chosen instant of the commit sequence.

Not a test module. The tests run it as `python writer_process.py CACHE ...` and load it to share
`key_of` / `features_of` (the same i always gives the same key and the same features, whichever
process writes it).

Protocol on stdout (line-buffered): "ready" once imports are done, then "committed N" after each
append returns, N being this process's running count of rows it added.

Crash points (--crash-at), each taking effect at the --crash-nth occurrence:
    torn-row      write_rows writes half of the new bytes (not a whole number of rows), then dies
    before-fsync  the new rows are written, not yet fsync'd
    before-commit rows are on disk and in the open sqlite transaction, not committed
    new-shard     a new shard file is created (header durable), its index record not committed
    seal          a full shard is about to get its SHA-256 recorded
"""

from __future__ import annotations

import argparse
import hashlib
import os
import signal
import sys
import time
from pathlib import Path

DIM = 48


def key_of(i: int) -> str:
    """The content key of synthetic image i."""
    return hashlib.sha256(f"image-{i}".encode()).hexdigest()


def features_of(indices, dim: int = DIM):
    """Features of synthetic images: a fixed pseudo-random row per index, varied magnitudes."""
    import torch

    rows = [torch.randn(dim, generator=torch.Generator().manual_seed(1000 + i)) * (1 + i % 7) for i in indices]
    return torch.stack(rows) if rows else torch.empty(0, dim)


def space_config(dim: int = DIM, stored: str = "int8"):
    from transfer_engine.cache import FeatureSpace

    return FeatureSpace(backbone="synthetic", weights_digest="0" * 64, transform={"resize": 8}, dim=dim,
                        stored=stored)


def _die() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _install_crash(point: str, nth: int) -> None:
    from transfer_engine.cache import shards, writer
    from transfer_engine.cache.index import Index

    count = {"n": 0}

    def hit() -> bool:
        count["n"] += 1
        return count["n"] >= nth

    if point == "torn-row":
        original = shards.write_rows

        def torn(path, first_row, data, row_bytes):
            if hit():
                view = memoryview(data).cast("B")
                fd = os.open(path, os.O_RDWR)
                os.pwrite(fd, view[: max(1, len(view) // 2 - 3)], shards.HEADER_BYTES + first_row * row_bytes)
                os.fsync(fd)  # make the torn bytes really reach the file
                _die()
            return original(path, first_row, data, row_bytes)

        shards.write_rows = torn
    elif point == "before-fsync":
        original_write = shards._write_all

        def write_then_maybe_die(fd, data, offset):
            original_write(fd, data, offset)
            if offset >= shards.HEADER_BYTES and hit():
                _die()

        shards._write_all = write_then_maybe_die
    elif point == "before-commit":
        original_insert = Index.insert_rows

        def insert_then_maybe_die(self, space_id, entries):
            original_insert(self, space_id, entries)
            if hit():
                _die()

        Index.insert_rows = insert_then_maybe_die
    elif point == "new-shard":
        original_create = shards.create_shard

        def create_then_maybe_die(path, header):
            original_create(path, header)
            if hit():
                _die()

        shards.create_shard = create_then_maybe_die
    elif point == "seal":
        original_sha = shards.sha256_of_rows

        def seal_then_maybe_die(path, rows, row_bytes):
            digest = original_sha(path, rows, row_bytes)
            if hit():
                _die()
            return digest

        shards.sha256_of_rows = seal_then_maybe_die
    else:
        raise SystemExit(f"unknown crash point {point!r}")
    _ = writer  # writer.py calls shards.<fn> through the module, so the patches above reach it


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("cache")
    parser.add_argument("--start", type=int, default=0)
    parser.add_argument("--stop", type=int, default=1 << 30, help="exclusive; a large value writes until killed")
    parser.add_argument("--step", type=int, default=1, help="-1 to write from stop-1 down to start")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--stored", default="int8")
    parser.add_argument("--max-shard-bytes", type=int, default=64 << 20)
    parser.add_argument("--lock-timeout", type=float, default=60.0)
    parser.add_argument("--crash-at", default=None)
    parser.add_argument("--crash-nth", type=int, default=1)
    parser.add_argument("--go-file", default=None, help="wait until this file exists before writing")
    args = parser.parse_args()

    from transfer_engine.cache import FeatureCache

    if args.crash_at:
        _install_crash(args.crash_at, args.crash_nth)
    cache = FeatureCache.open(args.cache, lock_timeout=args.lock_timeout, max_shard_bytes=args.max_shard_bytes)
    space = cache.space(space_config(stored=args.stored))
    indices = range(args.start, args.stop) if args.step > 0 else range(args.stop - 1, args.start - 1, -1)
    print("ready", flush=True)
    if args.go_file:
        while not Path(args.go_file).exists():
            time.sleep(0.005)
    added = 0
    for at in range(0, len(indices), args.batch):
        chunk = list(indices[at:at + args.batch])
        added += space.append([key_of(i) for i in chunk], features_of(chunk))
        print(f"committed {added}", flush=True)
    cache.close()


if __name__ == "__main__":
    main()
