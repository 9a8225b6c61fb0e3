"""`te bench`: run the benchmark scripts, describe the machine, and report te against its baselines.

Each script in benchmarks/ times te and its baseline in one process and writes its rows as JSON
(`--json PATH`); this package runs them one after another (never two at once: they would measure each
other), adds the machine description and the physical ceilings measured in the same run (a large
matmul's GFLOP/s, memcpy's GB/s), and writes results.json, results.md and a chart of the ratios.
"""

from transfer_engine.bench.machine import describe_machine, measure_ceilings
from transfer_engine.bench.runner import SUITES, BenchResult, find_benchmarks, run_bench

__all__ = ["SUITES", "BenchResult", "describe_machine", "find_benchmarks", "measure_ceilings", "run_bench"]
