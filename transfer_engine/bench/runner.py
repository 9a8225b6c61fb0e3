"""Find the benchmark scripts, run them one at a time, and collect their rows.

The contract a script in benchmarks/ follows (so `te bench` can run it):
    python benchmarks/bench_NAME.py [--quick] --json PATH
writes {"benchmark": NAME, "rows": [{"name", "te", "baseline", "unit", "ratio", "target", "met", "note"}],
"config": {...}} to PATH and prints its own human-readable table on stdout. `--quick` uses small sizes
(the quick suite must finish in minutes on a 2-core CPU); without it the script runs its full sizes.
Every script accepts both: `te bench --suite quick` and `--suite full` run every script they list.

Each row's name says what its baseline is, and the baseline is the best a user would reasonably do
instead on the same data, precision and threads; a cheaper, less fair baseline may stay as a row of its
own marked "informational". A row may carry `headline: true`: te bench --publish quotes those rows in
README.md (transfer_engine/bench/publish.py).

With TE_BENCH_SMOKE=1 in the environment a script ignores the suite's sizes and runs the smallest ones
that still take every code path and write the JSON (seconds; the figures mean nothing): how
tests/bench/test_scripts.py keeps every script runnable. te bench marks such a run and will not publish it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transfer_engine.core.choices import BENCH_SUITES
from transfer_engine.core.progress import Progress, Say, renamed, say_of
from transfer_engine.errors import UsageError

SUITES = BENCH_SUITES
SCRIPT_PREFIX = "bench_"
SMOKE_ENV = "TE_BENCH_SMOKE"
# Seconds one script may run by default, per suite: the full suite's fine-tuning benchmarks train for tens
# of minutes per data set on a 2-core CPU, so its limit only catches a hang.
DEFAULT_TIMEOUTS = {"quick": 1800.0, "full": 4 * 3600.0}
# Extra rows that derive a figure from a benchmark's row and a ceiling measured in the same run.
FLOP_KEY = "gflop_per_unit"


@dataclass
class BenchResult:
    """One benchmark script's outcome.

    Attributes:
        name: the script's name without prefix and suffix ("extract" for bench_extract.py).
        rows: its rows (see the module docstring), plus derived rows te bench adds.
        config: what the script says it measured (sizes, backbone, ...).
        seconds: how long it ran.
        error: why it produced no rows (exit code and the last line it printed), else None.
    """

    name: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def default_benchmark_dir() -> Path:
    """benchmarks/ of the source checkout te runs from (te is installed editable by `make`)."""
    return Path(__file__).resolve().parents[2] / "benchmarks"


def find_benchmarks(directory: Path | None = None, only: list[str] | None = None) -> dict[str, Path]:
    """The benchmark scripts, by name, in a stable order.

    Args:
        directory: where the scripts are (default: the checkout's benchmarks/).
        only: restrict to these names (e.g. ["extract", "train"]).

    Raises:
        UsageError: no such directory, no scripts, or an unknown name in `only`.
    """
    directory = directory or default_benchmark_dir()
    if not directory.is_dir():
        raise UsageError(f"no benchmarks folder at {directory}; te bench runs the scripts of a source checkout "
                         "(pass --benchmarks DIR)")
    found = {p.stem[len(SCRIPT_PREFIX):]: p for p in sorted(directory.glob(f"{SCRIPT_PREFIX}*.py"))}
    if not found:
        raise UsageError(f"{directory} holds no {SCRIPT_PREFIX}*.py scripts")
    if only:
        unknown = [n for n in only if n not in found]
        if unknown:
            raise UsageError(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(found)}")
        found = {n: found[n] for n in only}
    return found


def run_script(name: str, script: Path, quick: bool, timeout: float,
               say: Say) -> BenchResult:
    """Run one script in its own process, streaming its output through `say`, and read its JSON."""
    with tempfile.TemporaryDirectory(prefix=f"te-bench-{name}-") as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, str(script), "--json", str(out)] + (["--quick"] if quick else [])
        started = time.perf_counter()
        lines: list[str] = []
        try:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                    cwd=script.parent.parent, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        except OSError as exc:
            return BenchResult(name, error=f"could not start: {exc}")

        def pump() -> None:  # a thread, so a script that stops printing cannot block the time limit
            assert proc.stdout is not None
            for line in proc.stdout:
                if line.strip():
                    lines.append(line.rstrip())
                    say(f"  [{name}] {line.rstrip()}")

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            reader.join(5)
            return BenchResult(name, seconds=round(time.perf_counter() - started, 1),
                               error=f"stopped after the {timeout:.0f} s limit")
        reader.join(5)
        seconds = round(time.perf_counter() - started, 1)
        if code != 0 or not out.is_file():
            last = lines[-1][:300] if lines else "no output"
            return BenchResult(name, seconds=seconds, error=f"exit code {code}: {last}")
        try:
            data = json.loads(out.read_text())
            rows = list(data["rows"])
        except (ValueError, KeyError, TypeError) as exc:
            return BenchResult(name, seconds=seconds, error=f"unreadable result JSON ({exc})")
        return BenchResult(name, rows=rows, config=dict(data.get("config") or {}), seconds=seconds)


def derive_ceiling_rows(result: BenchResult, ceilings: dict[str, float]) -> None:
    """Add "achieved GFLOP/s vs the matmul ceiling" for rows that say how many GFLOP one unit costs."""
    for row in list(result.rows):
        per_unit = row.get(FLOP_KEY)
        if not per_unit or not isinstance(row.get("te"), (int, float)):
            continue
        precision = str(row.get("precision", "fp32"))
        peak = ceilings.get(f"matmul_{precision}_gflops") or ceilings.get("matmul_fp32_gflops")
        if not peak:
            continue
        achieved = float(row["te"]) * float(per_unit)
        result.rows.append({
            "name": f"{row['name']}: achieved GFLOP/s vs a {precision} matmul on this machine",
            "te": round(achieved, 1), "baseline": peak, "unit": "GFLOP/s", "ratio": round(achieved / peak, 3),
            "target": None, "met": None,
            "note": f"{per_unit:.2f} GFLOP per {row.get('unit', 'unit').split('/')[0]}; the ceiling, measured in this run",
        })


def run_bench(suite: str = "quick", only: list[str] | None = None, directory: Path | None = None,
              timeout: float | None = None, progress: Progress = True, *, say: Say | None = None) -> dict[str, Any]:
    """Run the benchmark suite and return the results document (what results.json holds).

    Args:
        suite: "quick" (small sizes, minutes) or "full" (the sizes the targets name, ResNet-50).
        only: names of the benchmarks to run (default: all).
        directory: the benchmarks folder (default: the checkout's).
        timeout: seconds one script may run (default: DEFAULT_TIMEOUTS of the suite).
        progress: the progress lines, the scripts' output among them: True on stderr, False none, a function
            is handed each (`core.progress`).
        say: deprecated, the function `progress` now takes.

    Returns:
        {"suite", "command", "date", "smoke", "machine", "ceilings", "benchmarks": [BenchResult dicts],
        "seconds"}.
    """
    from transfer_engine.bench.machine import describe_machine, measure_ceilings

    say = say_of(renamed(progress, "say", say, "run_bench"))
    if suite not in SUITES:
        raise UsageError(f"--suite must be one of {', '.join(SUITES)}, got {suite!r}")
    scripts = find_benchmarks(directory, only)
    timeout = timeout or DEFAULT_TIMEOUTS.get(suite, DEFAULT_TIMEOUTS["quick"])
    command = f"te bench --suite {suite}" + (f" --only {','.join(only)}" if only else "")
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    smoke = os.environ.get(SMOKE_ENV) == "1"
    started = time.perf_counter()
    machine = describe_machine()
    say(f"machine: {machine['cpu']}, {machine['cores']} cores, flags {' '.join(machine['flags']) or '-'}, "
        f"GPU {machine['gpu']['name'] if machine['gpu'] else 'none'}")
    ceilings = measure_ceilings()
    say("ceilings: " + ", ".join(f"{k} {v}" for k, v in ceilings.items()))
    results = []
    for name, script in scripts.items():
        say(f"running {script.name} ({suite})")
        result = run_script(name, script, suite == "quick", timeout, say)
        derive_ceiling_rows(result, ceilings)
        if result.error:
            say(f"  [{name}] FAILED: {result.error}")
        results.append(result)
    return {"suite": suite, "command": command, "date": date, "smoke": smoke, "machine": machine, "ceilings": ceilings,
            "benchmarks": [r.to_dict() for r in results], "seconds": round(time.perf_counter() - started, 1)}
