"""What every benchmark script writes for `te bench`: rows of te against its baseline, as JSON.

    python benchmarks/bench_NAME.py [--quick] [--json PATH]

`--json PATH` writes {"benchmark": NAME, "rows": [{"name", "te", "baseline", "unit", "ratio", "target",
"met", "note"}], "config": {...}}; whether a row meets its target is decided by te bench's own rule
(`transfer_engine.bench.report.score`), so the script and the report never disagree. The sizes of each
suite (full, --quick, and the smoke sizes TE_BENCH_SMOKE=1 asks for) are chosen by `pick_sizes`; the
contract is in transfer_engine/bench/runner.py's docstring.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from transfer_engine.bench.report import score
from transfer_engine.bench.runner import SMOKE_ENV


def add_suite_options(parser: argparse.ArgumentParser, quick_help: str = "small sizes (minutes on 2 cores)") -> None:
    """--quick and --json PATH, the options te bench passes to every script."""
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--json", metavar="PATH", default=None, help="write the results for te bench to PATH")


def suite_of(args: argparse.Namespace) -> str:
    """"smoke" when TE_BENCH_SMOKE=1 (tests: smallest sizes, every code path), else "quick" or "full"."""
    if os.environ.get(SMOKE_ENV) == "1":
        return "smoke"
    return "quick" if getattr(args, "quick", False) else "full"


def pick_sizes(args: argparse.Namespace, **by_suite: dict[str, Any]) -> str:
    """Set on `args` every size of the suite this run is (see `suite_of`) that the command line left None.

    Args:
        args: the parsed options; a size given on the command line wins.
        by_suite: full=..., quick=..., smoke=...: {option name: value} each.

    Returns:
        The suite's name.
    """
    name = suite_of(args)
    for key, value in by_suite[name].items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    return name


def result_row(name: str, te: float, baseline: float, unit: str, ratio: float, target: str | None = None,
               note: str | None = None, **extra: Any) -> dict[str, Any]:
    """One row; `met` is None without a target.

    Args:
        name: what is compared, e.g. "te extract vs plain loop".
        te, baseline: the two measured values, in `unit`.
        ratio: how te compares (speedup, share, fraction of a ceiling), as the target reads it.
        target: e.g. ">= 2.5x", "<= 5%", ">= 85%"; None for a figure reported without one.
        note: a footnote (what the figure means, why it is not met).
        extra: more keys te bench understands (e.g. gflop_per_unit, precision).
    """
    row = {"name": name, "te": te, "baseline": baseline, "unit": unit, "ratio": ratio, "target": target,
           "met": None, "note": note, **extra}
    if target is not None:
        s = score(row)
        row["met"] = None if s is None else bool(s >= 1.0)
    return row


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b, or None where b is 0 or either is missing (a smoke-size accuracy of 0; JSON has no NaN)."""
    return a / b if a is not None and b else None


def write_results(path: str | Path, benchmark: str, rows: list[dict[str, Any]], config: dict[str, Any]) -> None:
    """Write the results document te bench reads."""
    doc = {"benchmark": benchmark, "rows": rows, "config": {**config, "smoke": os.environ.get(SMOKE_ENV) == "1"}}
    Path(path).write_text(json.dumps(doc, indent=2, allow_nan=False) + "\n")


def print_rows(rows: list[dict[str, Any]]) -> None:
    """The rows as a table on stdout."""
    width = max(len(r["name"]) for r in rows)
    print(f"{'benchmark':{width}} {'te':>10} {'baseline':>10} {'unit':>6} {'ratio':>8} {'target':>9}  met")
    for r in rows:
        met = "-" if r["met"] is None else ("yes" if r["met"] else "NO")
        ratio_text = "-" if r["ratio"] is None else f"{r['ratio']:.3f}"
        print(f"{r['name']:{width}} {r['te']:10.4g} {r['baseline']:10.4g} {r['unit']:>6} {ratio_text:>8} "
              f"{r['target'] or '-':>9}  {met}")
