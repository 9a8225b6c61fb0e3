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
@click.option("--timeout", type=click.FloatRange(min=1), default=None, metavar="S",
              help="Seconds one benchmark script may run before it is stopped and reported as failed "
                   "[default: 1800 for quick, 14400 for full].")
@click.option("--publish", is_flag=True,
              help="After a complete run: copy results.md to benchmarks/RESULTS.md (and the chart to "
                   "benchmarks/ratios.png) and regenerate README.md's benchmark rows from it.")
@json_option
def bench(suite, only, out, bench_dir, timeout, publish, as_json) -> None:
    """Measure te against its baselines (each in the same process) and report ratios and targets.

    Runs the scripts in benchmarks/ one at a time (cache gather and append, extract, train, export),
    adds the machine description and this machine's ceilings (matmul GFLOP/s, memcpy GB/s, measured
    in the same run), and writes DIR/results.json, DIR/results.md and DIR/ratios.png. Exit code 0 when
    every benchmark ran, 1 when one failed to run; a target not met is reported, not an error.
    --publish makes the run the published one: benchmarks/RESULTS.md is its results.md and README.md's
    rows are generated from it (refused for a run with a failure, --only or smoke sizes).

    \b
    Examples:
      te bench                          the quick suite into te-bench/
      te bench --suite full --out bench-full
      te bench --only extract,train --json
      te bench --suite quick --publish  the published figures (benchmarks/RESULTS.md, README.md)
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
    if publish:
        from transfer_engine.bench.publish import publish as publish_run

        info("published: " + ", ".join(publish_run(doc, paths)))
