"""`te cache merge` throughput against a plain file copy of the same shard bytes, and the index at scale.

    PYTHONPATH=. python benchmarks/bench_cache_merge.py [--rows 200000] [--dim 1280] [--index-rows 1000000,10000000]
                                                        [--quick] [--json PATH]

Merge: a source cache of --rows int8 rows (built first, not timed) is merged into a new, empty cache
(`merge_caches`: every row verified by its block CRC32 and key slot, written with the cache's commit
order, a fsync and an index commit per 32 MiB batch); the baseline copies the source's shard files
(`shutil.copyfile`, the bytes `cp` moves) and, second baseline, copies and fsyncs them (the durability
merge gives). Page cache warm for all (each source read once before timing); best of --repeat,
interleaved. The ratio is merge's bytes/s over the copy's.

Index at scale: a synthetic index of --index-rows rows (random 32-byte keys, what te extract writes),
built through `Index.insert_rows` in 100k-row transactions: its file size, build rate, and the time of
one `contains` lookup of 10,000 keys (half present, random order), what `te extract` asks per chunk.
`--quick`: 20,000 rows of D=256 and a 100,000-row index (seconds); TE_BENCH_SMOKE=1: tiny sizes.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import tempfile
import time
from pathlib import Path

import torch

from _results import add_suite_options, pick_sizes, result_row, write_results
from transfer_engine.cache import FeatureCache, FeatureSpace
from transfer_engine.cache.index import Index
from transfer_engine.cache.merge import merge_caches

QUICK = {"rows": 20_000, "dim": 256, "repeat": 2, "index_rows": "100000"}
FULL = {"rows": 200_000, "dim": 1280, "repeat": 3, "index_rows": "1000000,10000000"}
SMOKE = {"rows": 300, "dim": 16, "repeat": 1, "index_rows": "2000,4000"}


def _source(root: Path, rows: int, dim: int) -> FeatureCache:
    cache = FeatureCache.open(root)
    space = cache.space(FeatureSpace(backbone="bench", weights_digest="0" * 64, transform={}, dim=dim))
    gen = torch.Generator().manual_seed(0)
    for lo in range(0, rows, 4096):
        n = min(4096, rows - lo)
        space.append([secrets.token_hex(32) for _ in range(n)], torch.randn(n, dim, generator=gen))
    return cache


def _shard_files(root: Path) -> list[Path]:
    return sorted((root / "shards").rglob("*.shard")) + sorted((root / "shards").rglob("*.keys"))


def _copy(files: list[Path], src_root: Path, dest: Path, fsync: bool) -> int:
    copied = 0
    for f in files:
        target = dest / f.relative_to(src_root)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, target)
        if fsync:
            fd = os.open(target, os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)
        copied += f.stat().st_size
    return copied


def bench_merge(args, work: Path) -> dict:
    src = _source(work / "src", args.rows, args.dim)
    files = _shard_files(src.root)
    row_bytes = sum(f.stat().st_size for f in files if f.suffix == ".shard")
    for f in files:  # warm the page cache for every method alike
        f.read_bytes()
    best: dict[str, float] = {}
    for trial in range(args.repeat):
        for name in ("merge", "copy", "copy_fsync"):
            dest = work / f"{name}-{trial}"
            t0 = time.perf_counter()
            if name == "merge":
                with FeatureCache.open(dest) as target:
                    report = merge_caches(target, [src])
                assert report.copied == args.rows and report.skipped == 0
            else:
                _copy(files, src.root, dest, fsync=name == "copy_fsync")
            best[name] = min(best.get(name, float("inf")), time.perf_counter() - t0)
            shutil.rmtree(dest)
    src.close()
    rate = {k: row_bytes / v / 1e6 for k, v in best.items()}
    return {"rows": args.rows, "dim": args.dim, "shard_bytes": row_bytes, "seconds": best,
            "mb_per_s": {k: round(v, 1) for k, v in rate.items()},
            "ratio_vs_copy": round(rate["merge"] / rate["copy"], 3),
            "ratio_vs_copy_fsync": round(rate["merge"] / rate["copy_fsync"], 3)}


def bench_index(n: int, work: Path) -> dict:
    path = work / f"index-{n}.sqlite"
    index = Index(path, create=True)
    with index.write():
        space = index.insert_space("0" * 64, 1280, "int8", 1284, {"backbone": "bench"})
    present: list[str] = []
    t0 = time.perf_counter()
    for lo in range(0, n, 100_000):
        keys = [secrets.token_hex(32) for _ in range(min(100_000, n - lo))]
        with index.write():
            index.insert_rows(space, ((k, 1 + (lo + i) // 200_000, (lo + i) % 200_000) for i, k in enumerate(keys)))
        present.extend(keys[::max(1, n // 20_000)])  # ~20k stored keys, spread over the whole build
    build = time.perf_counter() - t0
    index.close()
    index = Index(path, create=False)
    lookups = []
    for trial in range(5):
        rng = secrets.SystemRandom(trial)
        half = min(5000, len(present))  # fewer only at smoke sizes
        asked = rng.sample(present, half) + [secrets.token_hex(32) for _ in range(half)]
        rng.shuffle(asked)
        t0 = time.perf_counter()
        found = index.locations(space, asked)
        lookups.append(time.perf_counter() - t0)
        assert len(found) == half
    index.close()
    size = sum(os.path.getsize(p) for p in work.glob(f"index-{n}.sqlite*"))
    out = {"rows": n, "file_bytes": size, "bytes_per_row": round(size / n, 1), "build_rows_per_s": round(n / build),
           "contains_10k_ms": round(min(lookups) * 1000, 1), "contains_10k_ms_median": round(sorted(lookups)[2] * 1000, 1)}
    path.unlink()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=None, help="rows in the source cache (default 200000)")
    parser.add_argument("--dim", type=int, default=None, help="features per row (default 1280)")
    parser.add_argument("--repeat", type=int, default=None, help="runs of each method; the best counts (default 3)")
    parser.add_argument("--index-rows", default=None, help="comma-separated index sizes (default 1000000,10000000)")
    parser.add_argument("--dir", default=None, help="where to write (default: a temporary directory)")
    add_suite_options(parser, "small sizes (seconds)")
    args = parser.parse_args()
    pick_sizes(args, full=FULL, quick=QUICK, smoke=SMOKE)

    with tempfile.TemporaryDirectory(dir=args.dir, prefix="te-bench-merge-") as tmp:
        merged = bench_merge(args, Path(tmp))
        indexes = [bench_index(int(n), Path(tmp)) for n in args.index_rows.split(",")]
    mb = merged["mb_per_s"]
    print(f"merge {merged['rows']:,} int8 rows x {merged['dim']} ({merged['shard_bytes'] / 1e6:.0f} MB of shards), "
          f"best of {args.repeat}, page cache warm")
    print(f"  te cache merge (verified, fsync + commit per 32 MiB)  {mb['merge']:>8.1f} MB/s")
    print(f"  copy of the shard files (cp)                          {mb['copy']:>8.1f} MB/s")
    print(f"  copy + fsync of each file                             {mb['copy_fsync']:>8.1f} MB/s")
    print(f"  ratio merge / copy {merged['ratio_vs_copy']:.2f}x, merge / copy+fsync {merged['ratio_vs_copy_fsync']:.2f}x")
    for r in indexes:
        print(f"index of {r['rows']:>11,} rows: {r['file_bytes'] / 1e6:8.1f} MB ({r['bytes_per_row']} B/row), "
              f"built at {r['build_rows_per_s']:,} rows/s, contains() of 10k keys {r['contains_10k_ms']} ms "
              f"(median {r['contains_10k_ms_median']} ms)")
    if args.json:
        rows = [result_row("te cache merge vs a copy of the same shard bytes (shutil.copyfile, as cp)", mb["merge"],
                           mb["copy"], "MB/s", merged["ratio_vs_copy"], ">= 0.5x",
                           "merge verifies every row and commits durably; the copy does neither, so this baseline "
                           "does less work than te (stricter than fair)"),
                result_row("te cache merge vs copy + fsync of each file", mb["merge"], mb["copy_fsync"], "MB/s",
                           merged["ratio_vs_copy_fsync"], None, "the same durability as merge; no verification")]
        base = indexes[0]
        rows += [result_row(f"index lookup of 10k keys at {r['rows']:,} rows vs at {base['rows']:,}",
                            r["contains_10k_ms"], base["contains_10k_ms"], "ms",
                            round(r["contains_10k_ms"] / base["contains_10k_ms"], 3), None,
                            f"ratio = how much slower; index file {r['file_bytes'] / 1e6:.0f} MB "
                            f"({r['bytes_per_row']} B/row)")
                 for r in indexes]
        write_results(args.json, "cache_merge", rows, {"merge": merged, "index": indexes, "quick": args.quick})


if __name__ == "__main__":
    main()
