"""`te bench`: every benchmark, te against the plain-PyTorch way, in one run."""

from __future__ import annotations

from pathlib import Path

import click

from transfer_engine.cli._common import emit_json, info, json_option
from transfer_engine.cli._options import options_from
from transfer_engine.core.configs import BenchConfig


@click.command("bench")
@options_from(BenchConfig)
@json_option
def bench(as_json, **fields) -> None:
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

    cfg = BenchConfig(**fields)
    doc = run_bench(cfg.suite, list(cfg.only) or None, Path(cfg.benchmarks) if cfg.benchmarks else None, cfg.timeout,
                    progress=True)
    paths = write_report(doc, Path(cfg.out))
    counts = summary_counts(doc)
    if as_json:
        emit_json({**doc, "files": paths, "counts": counts})
    else:
        click.echo(Path(paths["markdown"]).read_text())
        click.echo(f"{counts['met']} targets met, {counts['not_met']} not met, {counts['failed']} benchmark(s) "
                   f"failed; wrote {', '.join(paths.values())}")
    if counts["failed"]:
        raise TEError(f"{counts['failed']} benchmark(s) failed to run; see {paths['markdown']}")
    if cfg.publish:
        from transfer_engine.bench.publish import publish as publish_run

        info("published: " + ", ".join(publish_run(doc, paths)))
