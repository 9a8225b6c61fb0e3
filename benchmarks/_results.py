"""What every benchmark script writes for `te bench`: rows of te against its baseline, as JSON.

    python benchmarks/bench_NAME.py [--quick] [--json PATH]

`--json PATH` writes {"benchmark": NAME, "rows": [{"name", "te", "baseline", "unit", "ratio", "target",
"met", "note"}], "config": {...}}; whether a row meets its target is decided by te bench's own rule
(`transfer_engine.bench.report.score`), so the script and the report never disagree.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from transfer_engine.bench.report import score


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


def write_results(path: str | Path, benchmark: str, rows: list[dict[str, Any]], config: dict[str, Any]) -> None:
    """Write the results document te bench reads."""
    doc = {"benchmark": benchmark, "rows": rows, "config": config}
    Path(path).write_text(json.dumps(doc, indent=2, allow_nan=False) + "\n")


def print_rows(rows: list[dict[str, Any]]) -> None:
    """The rows as a table on stdout."""
    width = max(len(r["name"]) for r in rows)
    print(f"{'benchmark':{width}} {'te':>10} {'baseline':>10} {'unit':>6} {'ratio':>8} {'target':>9}  met")
    for r in rows:
        met = "-" if r["met"] is None else ("yes" if r["met"] else "NO")
        print(f"{r['name']:{width}} {r['te']:10.4g} {r['baseline']:10.4g} {r['unit']:>6} {r['ratio']:8.3f} "
              f"{r['target'] or '-':>9}  {met}")
