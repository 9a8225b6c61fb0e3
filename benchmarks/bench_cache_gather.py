"""Gather of random rows from an int8 feature shard: te's kernel against the NumPy way and memcpy.

Builds a shard file of --rows int8 rows (the cache's layout: D codes then the row's float32 scale,
written with te's encode op in chunks) in a temporary folder, maps it once, warms the page cache and
the mapping's page tables, then times in this one process, interleaved per repeat on the same random
indices:

    te          transfer_engine.ops.gather_rows into a preallocated float32 [batch, dim]
    reference   the pure PyTorch reference of the same op (what runs without the extension)
    numpy       the NumPy way: memmap fancy index, astype(float32), multiply by the scales
    numpy+out   the same, reusing one output array (the int8 -> float32 cast inside the multiply)
    numpy+out T the same split in T contiguous slices of the batch, one thread each (NumPy releases the
                GIL in fancy indexing and in the multiply), T = torch's intra-op threads, te's own count
    memcpy      a contiguous copy of batch * row_bytes bytes of the mapped file into a preallocated
                buffer, the bandwidth ceiling for moving the compressed bytes at all; timed both as
                torch's copy_ (all threads) and NumPy's copyto (one memcpy), the faster one is the ceiling

Targets: te >= 4x faster than the faster of the two NumPy ways with a reused output (numpy+out, one
thread or T threads: what a user who cares writes, doing te's work into a preallocated buffer with as
many threads; the allocating one-thread NumPy way is reported as an informational row), and te's speed at moving the compressed bytes
>= 50% of memcpy's (the fraction is memcpy time / te time for the same bytes; te also writes the
4x larger float32 rows, which memcpy does not). Figures are warm page cache, not disk.

    python benchmarks/bench_cache_gather.py [--rows 200000] [--dim 2048] [--batch 4096] [--repeat 30]
                                            [--quick] [--json PATH]

`--quick` gathers 2048 rows of a 50,000-row shard of D=1024, 10 times (seconds); `--json PATH` writes the
rows te bench reads (benchmarks/_results.py); TE_BENCH_SMOKE=1: tiny sizes.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from _results import add_suite_options, pick_sizes, result_row, write_results
from transfer_engine import extension, ops
from transfer_engine.ops import reference

QUICK = {"rows": 50_000, "dim": 1024, "batch": 2048, "repeat": 10}
FULL = {"rows": 200_000, "dim": 2048, "batch": 4096, "repeat": 30}
SMOKE = {"rows": 2_000, "dim": 64, "batch": 256, "repeat": 2}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=None, metavar="N", help="rows in the shard (default 200000)")
    parser.add_argument("--dim", type=int, default=None, metavar="D", help="features per row (default 2048)")
    parser.add_argument("--batch", type=int, default=None, metavar="K", help="random rows per gather (default 4096)")
    parser.add_argument("--repeat", type=int, default=None, metavar="R", help="timed gathers per method (default 30)")
    add_suite_options(parser, f"small sizes ({', '.join(f'{k} {v}' for k, v in QUICK.items())}) unless given")
    parser.add_argument("--seed", type=int, default=0, help="seed for the features and the indices")
    parser.add_argument("--threads", type=int, default=None, metavar="T",
                        help="intra-op threads for te and torch (default: torch's choice, one per core)")
    parser.add_argument("--tmpdir", default=None, metavar="DIR",
                        help="where the temporary shard file goes (default: the system temp folder)")
    args = parser.parse_args(argv)
    pick_sizes(args, full=FULL, quick=QUICK, smoke=SMOKE)
    if args.batch > args.rows:
        parser.error(f"--batch ({args.batch}) must not exceed --rows ({args.rows})")
    return args


def write_shard(path: Path, rows: int, dim: int, seed: int, chunk: int = 8192) -> None:
    """Write `rows` random feature rows as int8 stored rows, encoded by te in chunks of `chunk` rows."""
    gen = torch.Generator().manual_seed(seed)
    with open(path, "wb") as f:
        for start in range(0, rows, chunk):
            n = min(chunk, rows - start)
            # ReLU-like, per-row scaled features, roughly what a pooled backbone emits.
            x = torch.randn(n, dim, generator=gen).clamp_(min=0) * torch.rand(n, 1, generator=gen) * 4
            f.write(ops.encode_rows(x, "int8").numpy().tobytes())


def warm(mapped: np.ndarray) -> None:
    """Read every page of the mapping: the file sits in the page cache and the page tables are filled."""
    flat = mapped.reshape(-1)
    for start in range(0, flat.size, 64 << 20):
        int(flat[start:start + (64 << 20):4096].sum())


def numpy_gather(shard: np.ndarray, index: np.ndarray, dim: int) -> np.ndarray:
    """The usual NumPy way: fancy index the memmap, astype float32, multiply by the scales."""
    rows = shard[index]
    codes = rows[:, :dim].view(np.int8).astype(np.float32)
    scales = np.ascontiguousarray(rows[:, dim:]).view(np.float32)
    return codes * scales


def numpy_gather_into(shard: np.ndarray, index: np.ndarray, dim: int, out: np.ndarray) -> np.ndarray:
    """The NumPy way with one reused output: the int8 -> float32 cast happens inside the multiply."""
    rows = shard[index]
    scales = np.ascontiguousarray(rows[:, dim:]).view(np.float32)
    return np.multiply(rows[:, :dim].view(np.int8), scales, out=out)


def numpy_gather_threaded(pool: ThreadPoolExecutor, threads: int, shard: np.ndarray, index: np.ndarray, dim: int,
                          out: np.ndarray) -> np.ndarray:
    """numpy_gather_into over `threads` contiguous slices of the batch, one slice per thread of `pool`."""
    bounds = np.linspace(0, len(index), threads + 1).astype(int)
    jobs = [pool.submit(numpy_gather_into, shard, index[lo:hi], dim, out[lo:hi])
            for lo, hi in zip(bounds[:-1], bounds[1:]) if hi > lo]
    for job in jobs:
        job.result()
    return out


def busy_cpu_seconds() -> float | None:
    """CPU seconds all processes have spent busy since boot (Linux /proc/stat), or None elsewhere."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def run(args: argparse.Namespace) -> dict:
    dim, batch = args.dim, args.batch
    width = ops.row_bytes(dim, "int8")
    compiled = extension.available()
    with tempfile.TemporaryDirectory(prefix="te-bench-gather-", dir=args.tmpdir) as tmp:
        path = Path(tmp) / "shard.int8"
        t0 = time.perf_counter()
        write_shard(path, args.rows, dim, args.seed)
        build_seconds = time.perf_counter() - t0
        print(f"shard: {args.rows} rows x {width} bytes = {path.stat().st_size / 1e6:.0f} MB written in "
              f"{build_seconds:.1f} s ({'te kernel' if compiled else 'reference'} encode)", file=sys.stderr)

        # One read-only mapping serves every method, so they all read the same warm pages.
        shard = np.memmap(path, dtype=np.uint8, mode="r", shape=(args.rows, width))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # frombuffer: "non-writable buffer"; we never write
            data = torch.frombuffer(shard, dtype=torch.uint8)
        warm(shard)

        out = torch.empty(batch, dim, dtype=torch.float32)
        out_np = np.empty((batch, dim), dtype=np.float32)
        copy_buffer = torch.empty(batch * width, dtype=torch.uint8)
        gen = torch.Generator().manual_seed(args.seed + 1)

        def index_for_round() -> torch.Tensor:
            return torch.randperm(args.rows, generator=gen)[:batch]

        methods: dict[str, Callable[[torch.Tensor], object]] = {
            "te": lambda idx: ops.gather_rows(data, idx, dim, "int8", out=out),
            "reference": lambda idx: reference.gather_rows(data, idx, dim, "int8", out=out),
            "numpy": lambda idx: numpy_gather(shard, idx.numpy(), dim),
            "numpy+out": lambda idx: numpy_gather_into(shard, idx.numpy(), dim, out_np),
        }
        threads = torch.get_num_threads()
        pool = ThreadPoolExecutor(threads)
        if threads > 1:
            methods["numpy+out T"] = lambda idx: numpy_gather_threaded(pool, threads, shard, idx.numpy(), dim, out_np)

        flat = shard.reshape(-1)
        copy_buffer_np = copy_buffer.numpy()

        def stretch(idx: torch.Tensor) -> slice:
            start = int(idx[0]) % (args.rows - batch + 1) * width  # a different stretch each round
            return slice(start, start + batch * width)

        methods["memcpy"] = lambda idx: copy_buffer.copy_(data[stretch(idx)])
        methods["memcpy 1T"] = lambda idx: np.copyto(copy_buffer_np, flat[stretch(idx)])

        # Correctness before speed: all gathers agree bit for bit on one index.
        idx = index_for_round()
        expected = torch.from_numpy(numpy_gather(shard, idx.numpy(), dim))
        for name in ("te", "reference"):
            assert torch.equal(methods[name](idx), expected), f"{name} disagrees with the NumPy way"
        for name in [n for n in methods if n.startswith("numpy+out")]:
            methods[name](idx)
            assert np.array_equal(out_np, expected.numpy()), f"{name} disagrees with the NumPy way"

        busy_before, own_before, wall_before = busy_cpu_seconds(), own_cpu_seconds(), time.perf_counter()
        samples: dict[str, list[float]] = {name: [] for name in methods}
        for round_number in range(args.repeat + 2):  # two untimed rounds settle allocators and threads
            idx = index_for_round()
            for name, fn in methods.items():
                t0 = time.perf_counter()
                fn(idx)
                elapsed = time.perf_counter() - t0
                if round_number >= 2:
                    samples[name].append(elapsed)
        busy_after, own_after, wall_after = busy_cpu_seconds(), own_cpu_seconds(), time.perf_counter()
        # Cores kept busy by other processes while we timed: on a shared box they steal from the
        # multi-threaded methods (te, torch copy) more than from single-threaded NumPy.
        other_cores = (None if busy_before is None else
                       max(0.0, (busy_after - busy_before) - (own_after - own_before)) / (wall_after - wall_before))
        pool.shutdown()
        del data
        del shard

    medians = {name: statistics.median(s) for name, s in samples.items()}
    # The fair baseline: NumPy doing te's work (into a reused buffer) the faster way, one thread or te's count.
    numpy_best = min((n for n in medians if n.startswith("numpy+out")), key=medians.get)
    memcpy_seconds = min(medians["memcpy"], medians["memcpy 1T"])
    moved = batch * width
    return {
        "rows": args.rows, "dim": dim, "batch": batch, "repeat": args.repeat, "row_bytes": width,
        "page_cache": "warm",
        "extension": compiled,
        "threads": torch.get_num_threads(),
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs ({platform.processor() or 'unknown cpu'})",
        "median_ms": {name: 1e3 * t for name, t in medians.items()},
        "compressed_gb_per_s": {name: moved / t / 1e9 for name, t in medians.items()},
        "te_speedup_vs_numpy": medians["numpy"] / medians["te"],
        "te_speedup_vs_numpy_out": medians["numpy+out"] / medians["te"],
        "numpy_best": numpy_best,
        "te_speedup_vs_numpy_best": medians[numpy_best] / medians["te"],
        "te_speedup_vs_reference": medians["reference"] / medians["te"],
        "te_fraction_of_memcpy": memcpy_seconds / medians["te"],
        # te reads the compressed rows and writes 4x as many float32 bytes; memcpy reads and writes the
        # compressed bytes once. Bytes moved per second, te against memcpy:
        "te_traffic_fraction_of_memcpy": ((moved + 4 * batch * dim) / medians["te"]) / (2 * moved / memcpy_seconds),
        "cores_busy_with_other_processes": other_cores,
    }


def print_table(result: dict) -> None:
    print(f"gather {result['batch']} random rows of {result['rows']} (int8, D={result['dim']}, "
          f"{result['row_bytes']} B/row), warm page cache, threads={result['threads']}, "
          f"extension={'yes' if result['extension'] else 'NO (reference fallback)'}")
    print(f"{'method':<11} {'median ms':>10} {'GB/s (compressed)':>18} {'te speedup':>11}")
    for name, ms in result["median_ms"].items():
        speedup = ms / result["median_ms"]["te"]
        print(f"{name:<11} {ms:>10.2f} {result['compressed_gb_per_s'][name]:>18.2f} {speedup:>10.2f}x")
    print(f"te vs the faster NumPy way with a reused output ({result['numpy_best']}): "
          f"{result['te_speedup_vs_numpy_best']:.2f}x (target >= 4x); vs allocating one-thread NumPy "
          f"{result['te_speedup_vs_numpy']:.2f}x; "
          f"te at {100 * result['te_fraction_of_memcpy']:.0f}% of memcpy bandwidth for the same compressed "
          f"bytes (target >= 50%); counting te's float32 writes too, {100 * result['te_traffic_fraction_of_memcpy']:.0f}%")
    if result["cores_busy_with_other_processes"] is not None:
        print(f"other processes kept {result['cores_busy_with_other_processes']:.2f} of the {os.cpu_count()} cores "
              "busy while timing (well above 0 means the figures are disturbed)")


def result_rows(result: dict) -> list[dict]:
    """The figures te bench reports, with their targets."""
    ms, gbs = result["median_ms"], result["compressed_gb_per_s"]
    memcpy = max(gbs["memcpy"], gbs["memcpy 1T"])
    what = f"{result['batch']} random rows of {result['rows']:,} int8, D={result['dim']}"
    best = result["numpy_best"]
    threads = f"{result['threads']} threads" if best == "numpy+out T" else "one thread"
    return [
        result_row(f"gather {what} into a reused float32 buffer vs NumPy memmap index x scales into a reused "
                   "buffer", ms["te"], ms[best], "ms", result["te_speedup_vs_numpy_best"], ">= 4x",
                   f"baseline: the faster NumPy way doing te's work ({threads}; one thread "
                   f"{ms['numpy+out']:.3g} ms" + (f", {result['threads']} threads {ms['numpy+out T']:.3g} ms"
                                                 if "numpy+out T" in ms else "") +
                   f"); te uses {result['threads']} threads", headline=True),
        result_row("the same gather vs allocating one-thread NumPy memmap + astype + scale (informational)",
                   ms["te"], ms["numpy"], "ms", result["te_speedup_vs_numpy"], None,
                   "the earlier target row's baseline: a new output array per gather and one thread"),
        result_row("the same gather vs memcpy of the same compressed bytes", gbs["te"], memcpy, "GB/s",
                   result["te_fraction_of_memcpy"], ">= 50%",
                   f"te writes 4 bytes of float32 per byte it reads, memcpy one: counting both, te moves bytes at "
                   f"{result['te_traffic_fraction_of_memcpy']:.0%} of memcpy's rate"),
        result_row("the same gather vs the PyTorch reference of the op", ms["te"], ms["reference"], "ms",
                   result["te_speedup_vs_reference"], None, "what runs when the extension is not built"),
    ]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    result = run(args)
    print_table(result)
    if args.json:
        config = {k: result[k] for k in ("rows", "dim", "batch", "repeat", "row_bytes", "page_cache", "extension",
                                         "threads", "machine", "cores_busy_with_other_processes")}
        write_results(args.json, "cache_gather", result_rows(result), {**config, "quick": args.quick,
                                                                       "median_ms": result["median_ms"],
                                                                       "numpy_best": result["numpy_best"]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
