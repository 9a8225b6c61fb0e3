"""Write a benchmark run as results.json, results.md (a table) and ratios.png (a chart)."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path
from typing import Any

_TARGET = re.compile(r"^\s*(>=|<=|>|<|≥|≤)?\s*([0-9.]+)\s*(x|%)?\s*$")


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if value == 0 or 0.01 <= abs(value) < 1e5:
            return f"{value:,.3g}" if abs(value) < 100 else f"{value:,.0f}"
        return f"{value:.3g}"
    return str(value)


def _ratio_text(row: dict[str, Any]) -> str:
    ratio = row.get("ratio")
    if not isinstance(ratio, (int, float)):
        return _fmt(ratio)
    return f"{ratio:.1%}" if row.get("unit") == "%" or "%" in str(row.get("target") or "") else f"{ratio:.3g}x"


def _met(row: dict[str, Any]) -> str:
    met = row.get("met")
    if met is None:
        return "-" if row.get("target") in (None, "", "-") else "?"
    return "met" if met else "NOT met"


def score(row: dict[str, Any]) -> float | None:
    """How far a row is from its target on one scale: >= 1 means met (ratio/target, or target/ratio for
    "<=" targets); None when the row has no numeric ratio or target."""
    ratio, target = row.get("ratio"), row.get("target")
    if not isinstance(ratio, (int, float)) or ratio <= 0 or target in (None, ""):
        return None
    if isinstance(target, (int, float)):
        op, value = ">=", float(target)
    else:
        m = _TARGET.match(str(target))
        if not m:
            return None
        op, value = m.group(1) or ">=", float(m.group(2))
        if m.group(3) == "%" and ratio <= 1.5:  # "<= 5%" compared with a ratio of 0.041
            value /= 100.0
    if value <= 0:
        return None
    return ratio / value if op in (">=", ">", "≥") else value / ratio


def to_markdown(doc: dict[str, Any]) -> str:
    """results.md, the format benchmarks/RESULTS.md is committed in: the run (date, command, total time), the
    machine, the versions and the ceilings at the top, then one table row per benchmark row (a headline
    row's measure in bold: README.md quotes those), then the notes."""
    m = doc["machine"]
    gpu = m["gpu"]["name"] if m.get("gpu") else "none"
    versions = ", ".join(f"{k if k != 'transfer_engine' else 'te'} {v}" for k, v in m["versions"].items() if v)
    smoke = " at smoke sizes (TE_BENCH_SMOKE=1: the figures mean nothing)" if doc.get("smoke") else ""
    lines = [
        f"# te bench results ({doc['suite']} suite)",
        "",
        f"Run: {doc.get('date', 'date not recorded')}, `{doc.get('command', 'te bench --suite ' + doc['suite'])}`"
        f"{smoke}, {doc['seconds']:.0f} s in all.",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores ({', '.join(m['flags']) or 'no special flags'}), "
        f"{m.get('memory_gib')} GiB, GPU: {gpu}.",
        "",
        f"Versions: {versions}, Python {m.get('python')}.",
        "",
        "Ceilings measured in this run: " + ", ".join(f"{k} = {v}" for k, v in doc["ceilings"].items()) + ".",
        "",
        "Each ratio compares te with the baseline its row names, both measured in this run; rows marked "
        "informational keep an earlier, less fair baseline for comparison. Rows in bold are the ones README.md "
        "quotes. Regenerate this file and README's rows with `te bench --suite quick --publish`.",
        "",
        "| benchmark | measure | te | baseline | unit | ratio | target | met |",
        "|---|---|---|---|---|---|---|---|",
    ]
    notes = []
    for bench in doc["benchmarks"]:
        if bench.get("error"):
            lines.append(f"| {bench['name']} | FAILED: {bench['error']} | - | - | - | - | - | NOT met |")
            continue
        for row in bench["rows"]:
            note = ""
            if row.get("note"):
                notes.append(row["note"])
                note = f" ({len(notes)})"
            measure = f"**{row['name']}**" if row.get("headline") else row["name"]
            lines.append(f"| {bench['name']} | {measure}{note} | {_fmt(row.get('te'))} | "
                         f"{_fmt(row.get('baseline'))} | {row.get('unit') or '-'} | {_ratio_text(row)} | "
                         f"{_fmt(row.get('target'))} | {_met(row)} |")
    if notes:
        lines += ["", *[f"({i}) {n}" for i, n in enumerate(notes, 1)]]
    lines += ["", f"Total time: {doc['seconds']:.0f} s."]
    return "\n".join(lines) + "\n"


def chart(doc: dict[str, Any], path: Path) -> Path | None:
    """ratios.png: each row with a target as a bar of how far it is from it (1 = exactly met)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    items = []
    for bench in doc["benchmarks"]:
        for row in bench.get("rows", []):
            s = score(row)
            if s is not None:
                label = textwrap.shorten(f"{bench['name']}: {row['name']}", 110, placeholder="...")
                items.append(("\n".join(textwrap.wrap(label, 58)), s, row))
    if not items:
        return None
    from matplotlib.ticker import FixedLocator, NullFormatter, NullLocator

    fig, ax = plt.subplots(figsize=(11, 0.6 * len(items) + 1.5))
    labels = [i[0] for i in items][::-1]
    values = [i[1] for i in items][::-1]
    colors = ["#2a9d8f" if i[1] >= 1 else "#e76f51" for i in items][::-1]
    ax.barh(labels, values, color=colors)
    ax.axvline(1.0, color="black", linewidth=1)
    ax.set_xscale("log")
    lo, hi = min(values + [1.0]), max(values + [1.0])
    ax.set_xlim(lo / 1.5, hi * 2.5)
    # a few plain ticks instead of matplotlib's overlapping log-scale mantissas
    ticks = [t for t in (0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100) if lo / 1.5 <= t <= hi * 2.5]
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.set_xticklabels([f"{t:g}" for t in ticks])
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_minor_formatter(NullFormatter())
    for y, (v, item) in enumerate(zip(values, items[::-1])):
        ax.text(v * 1.05, y, f"{_ratio_text(item[2])} (target {item[2].get('target')})", va="center", fontsize=8)
    ax.set_xlabel("ratio / target (log scale; right of the line = target met)")
    ax.set_title(f"te bench, {doc['suite']} suite: {doc['machine']['cpu']}, {doc['machine']['cores']} cores")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(doc: dict[str, Any], out: Path) -> dict[str, str]:
    """Write results.json, results.md and ratios.png into `out`; returns {kind: path}."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "results.json", "markdown": out / "results.md", "chart": out / "ratios.png"}
    paths["json"].write_text(json.dumps(doc, indent=2, default=str, allow_nan=False) + "\n")
    paths["markdown"].write_text(to_markdown(doc))
    if chart(doc, paths["chart"]) is None:
        paths.pop("chart")
    return {k: str(v) for k, v in paths.items()}


def summary_counts(doc: dict[str, Any]) -> dict[str, int]:
    """{"met", "not_met", "no_target", "failed"} over all rows."""
    counts = {"met": 0, "not_met": 0, "no_target": 0, "failed": 0}
    for bench in doc["benchmarks"]:
        if bench.get("error"):
            counts["failed"] += 1
            continue
        for row in bench["rows"]:
            met = row.get("met")
            key = "no_target" if met is None else ("met" if met else "not_met")
            counts[key] += 1
    return counts
