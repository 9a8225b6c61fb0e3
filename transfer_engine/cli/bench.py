"""`te bench`: every benchmark, te against the plain-PyTorch way, in one run."""

from __future__ import annotations

from pathlib import Path

import click

from transfer_engine.cli._common import emit_json, info, json_option
from transfer_engine.core.choices import BENCH_SUITES


@click.command("bench")
@click.option("--suite", type=click.Choice(BENCH_SUITES), default="quick", show_default=True,
              help="quick: small sizes, minutes on a 2-core CPU; full: the sizes the targets name (ResNet-50).")
@click.option("--only", metavar="NAME,...", default=None,
              help="Run only these benchmarks (names of benchmarks/bench_NAME.py, comma-separated).")
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), default=Path("te-bench"),
              show_default=True, metavar="DIR", help="Where results.json, results.md and ratios.png go.")
@click.option("--benchmarks", "bench_dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              metavar="DIR", help="The benchmark scripts (default: benchmarks/ of te's source checkout).")
@click.option("--timeout", type=click.FloatRange(min=1), default=1800, show_default=True, metavar="S",
              help="Seconds one benchmark script may run before it is stopped and reported as failed.")
@json_option
def bench(suite, only, out, bench_dir, timeout, as_json) -> None:
    """Measure te against its baselines (each in the same process) and report ratios and targets.

    Runs the scripts in benchmarks/ one at a time (cache gather and append, extract, train, export),
    adds the machine description and this machine's ceilings (matmul GFLOP/s, memcpy GB/s, measured
    in the same run), and writes DIR/results.json, DIR/results.md and DIR/ratios.png. Exit code 1 when
    a benchmark failed to run; a target not met is reported, not an error.

    \b
    Examples:
      te bench                          the quick suite into te-bench/
      te bench --suite full --out bench-full
      te bench --only extract,train --json
    """
    from transfer_engine.bench.report import summary_counts, write_report
    from transfer_engine.bench.runner import run_bench
    from transfer_engine.errors import TEError

    names = [n.strip() for n in only.split(",") if n.strip()] if only else None
    doc = run_bench(suite, names, bench_dir, timeout, say=info)
    paths = write_report(doc, out)
    counts = summary_counts(doc)
    if as_json:
        emit_json({**doc, "files": paths, "counts": counts})
    else:
        click.echo(Path(paths["markdown"]).read_text())
        click.echo(f"{counts['met']} targets met, {counts['not_met']} not met, {counts['failed']} benchmark(s) "
                   f"failed; wrote {', '.join(paths.values())}")
    if counts["failed"]:
        raise TEError(f"{counts['failed']} benchmark(s) failed to run; see {paths['markdown']}")
