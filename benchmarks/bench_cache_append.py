"""Append throughput and size on disk: te's feature cache (quantized, crash-safe) vs plain NumPy fp32.

    PYTHONPATH=. python benchmarks/bench_cache_append.py [--rows 100000] [--dim 2048] [--stored int8]
                                                         [--quick] [--json PATH]

Both sides get the same float32 batches, in the same process, one after the other:
  - te: `CachedSpace.append(keys, batch)`: quantize (ops.encode_rows), write the shard, fsync, commit the
    keys and checksums to the sqlite index (what `te extract` does per batch);
  - numpy: `batch.tofile(f)` into one raw fp32 file, then one fsync at the end (the usual script,
    with no keys, no index, no checksums and no crash safety); and the same with an fsync per batch,
    the durability the cache gives.
Also timed alone: the quantization (`ops.encode_rows`), to show where the cache's time goes.
Reported: rows/s of each (best of --repeat), te/numpy ratios, and bytes on disk (the whole cache
directory, index included, vs the fp32 file). `--quick`: 20,000 rows of D=1024, best of 2 (seconds);
`--json PATH` writes the rows te bench reads (benchmarks/_results.py); TE_BENCH_SMOKE=1: tiny sizes.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import tempfile
import time
from pathlib import Path

import torch

from _results import add_suite_options, pick_sizes, result_row, write_results
from transfer_engine import extension, ops
from transfer_engine.cache import FeatureCache, FeatureSpace

QUICK = {"rows": 20_000, "dim": 1024, "repeat": 2}
FULL = {"rows": 100_000, "dim": 2048, "repeat": 3}
SMOKE = {"rows": 600, "dim": 32, "repeat": 1, "batch": 256}


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=None, help="rows appended (default 100000)")
    parser.add_argument("--dim", type=int, default=None, help="features per row (default 2048)")
    parser.add_argument("--batch", type=int, default=None, help="rows per append (default 4096)")
    parser.add_argument("--stored", default="int8", choices=ops.STORED_DTYPES, help="cache dtype (default int8)")
    parser.add_argument("--dir", default=None, help="where to write (default: a temporary directory)")
    parser.add_argument("--repeat", type=int, default=None, help="runs of each method; the best counts (default 3)")
    add_suite_options(parser, f"small sizes ({', '.join(f'{k} {v}' for k, v in QUICK.items())}) unless given")
    args = parser.parse_args()
    pick_sizes(args, full=FULL, quick=QUICK, smoke=SMOKE)
    args.batch = args.batch or 4096

    # A few distinct batches, cycled: the rows are realistic-sized without holding N x D floats in RAM.
    gen = torch.Generator().manual_seed(0)
    pool = [torch.randn(args.batch, args.dim, generator=gen) * torch.rand(args.batch, 1, generator=gen) * 4
            for _ in range(4)]
    pool_np = [b.numpy() for b in pool]
    starts = list(range(0, args.rows, args.batch))
    sizes = [min(args.batch, args.rows - s) for s in starts]
    keys = [hashlib.sha256(f"row-{i}".encode()).hexdigest() for i in range(args.rows)]

    def encode_only() -> float:
        t0 = time.perf_counter()
        for j, n in enumerate(sizes):
            ops.encode_rows(pool[j % 4][:n], args.stored)
        return time.perf_counter() - t0

    def te_append(tmp: Path) -> tuple[float, int]:
        cache = FeatureCache.open(tmp / "cache")
        space = cache.space(FeatureSpace(backbone="bench", weights_digest="0" * 64, transform={}, dim=args.dim,
                                         stored=args.stored))
        t0 = time.perf_counter()
        for j, (s, n) in enumerate(zip(starts, sizes)):
            space.append(keys[s:s + n], pool[j % 4][:n])
        seconds = time.perf_counter() - t0
        cache.close()  # folds the sqlite WAL into the index file, so the bytes below are final
        return seconds, _dir_bytes(tmp / "cache")

    def numpy_tofile(tmp: Path, fsync_each_batch: bool) -> tuple[float, int]:
        t0 = time.perf_counter()
        with open(tmp / "fp32.bin", "wb") as f:
            for j, n in enumerate(sizes):
                pool_np[j % 4][:n].tofile(f)
                if fsync_each_batch:
                    f.flush()
                    os.fsync(f.fileno())
            f.flush()
            os.fsync(f.fileno())
        return time.perf_counter() - t0, (tmp / "fp32.bin").stat().st_size

    # Best of --repeat, the methods interleaved, so a noisy neighbour on the machine hurts all alike.
    best: dict[str, float] = {}
    for _ in range(args.repeat):
        for name, run in (("encode", lambda tmp: (encode_only(), 0)), ("te", te_append),
                          ("numpy", lambda tmp: numpy_tofile(tmp, False)),
                          ("numpy_sync", lambda tmp: numpy_tofile(tmp, True))):
            with tempfile.TemporaryDirectory(dir=args.dir, prefix="te-bench-append-") as tmp:
                seconds, size = run(Path(tmp))
            best[name] = min(best.get(name, float("inf")), seconds)
            if name == "te":
                cache_bytes = size
            elif name == "numpy":
                numpy_bytes = size
    t_encode, t_cache, t_numpy, t_numpy_sync = best["encode"], best["te"], best["numpy"], best["numpy_sync"]

    rate = lambda seconds: args.rows / seconds  # noqa: E731
    result = {
        "rows": args.rows, "dim": args.dim, "batch": args.batch, "stored": args.stored, "repeat": args.repeat,
        "extension": extension.available(), "torch_threads": torch.get_num_threads(),
        "te_append_rows_per_s": round(rate(t_cache)),
        "numpy_fp32_rows_per_s": round(rate(t_numpy)),
        "numpy_fp32_fsync_per_batch_rows_per_s": round(rate(t_numpy_sync)),
        "encode_only_rows_per_s": round(rate(t_encode)),
        "ratio_te_vs_numpy": round(t_numpy / t_cache, 3),
        "ratio_te_vs_numpy_fsync_per_batch": round(t_numpy_sync / t_cache, 3),
        "encode_share_of_te_time": round(t_encode / t_cache, 3),
        "te_bytes_on_disk": cache_bytes,
        "numpy_fp32_bytes": numpy_bytes,
        "bytes_ratio_fp32_over_te": round(numpy_bytes / cache_bytes, 3),
    }
    print(f"append {args.rows} rows x {args.dim} in batches of {args.batch}, best of {args.repeat} "
          f"(extension loaded: {result['extension']}, {result['torch_threads']} threads)")
    print(f"  te cache ({args.stored}, fsync + index commit per batch) {result['te_append_rows_per_s']:>10,} rows/s")
    print(f"    of which quantization alone would run at        {result['encode_only_rows_per_s']:>10,} rows/s "
          f"({result['encode_share_of_te_time']:.0%} of te's time)")
    print(f"  numpy fp32 tofile, one fsync at the end           {result['numpy_fp32_rows_per_s']:>10,} rows/s")
    synced = result["numpy_fp32_fsync_per_batch_rows_per_s"]
    print(f"  numpy fp32 tofile, fsync per batch                {synced:>10,} rows/s")
    print(f"  ratio te / numpy: {result['ratio_te_vs_numpy']:.2f}x (vs numpy with fsync per batch: "
          f"{result['ratio_te_vs_numpy_fsync_per_batch']:.2f}x)")
    print(f"  bytes on disk: te {cache_bytes:,} vs numpy fp32 {numpy_bytes:,} "
          f"({result['bytes_ratio_fp32_over_te']:.2f}x smaller)")
    if args.json:
        rows = [
            result_row(f"append {args.rows:,} rows x {args.dim}, {args.stored} through the cache vs NumPy fp32 "
                       "tofile with an fsync per batch", result["te_append_rows_per_s"],
                       result["numpy_fp32_fsync_per_batch_rows_per_s"], "rows/s",
                       result["ratio_te_vs_numpy_fsync_per_batch"], None,
                       "baseline: the same batches made as durable as te makes them (an fsync per batch); te also "
                       "quantizes, checksums and commits the index per batch"),
            result_row("the same vs NumPy fp32 tofile with one fsync at the end (informational)",
                       result["te_append_rows_per_s"], result["numpy_fp32_rows_per_s"], "rows/s",
                       result["ratio_te_vs_numpy"], None,
                       "the earlier first row's baseline: a crash loses every batch since the start"),
            result_row(f"bytes on disk, {args.stored} cache (index included) vs fp32", cache_bytes / 1e6,
                       numpy_bytes / 1e6, "MB", result["bytes_ratio_fp32_over_te"],
                       ">= 3.5x" if args.stored == "int8" else None,
                       "ratio = how many times smaller; int8 keeps D bytes + a 4-byte scale per row, the index "
                       "~45 bytes a row", headline=True),
        ]
        config = {k: result[k] for k in ("rows", "dim", "batch", "stored", "repeat", "extension", "torch_threads")}
        write_results(args.json, "cache_append", rows, {**config, "quick": args.quick})


if __name__ == "__main__":
    main()
