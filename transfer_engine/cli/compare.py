"""`te compare`: which backbone for my data? A leaderboard from features extracted once into the cache."""

from __future__ import annotations

import click

from transfer_engine.cli._common import emit_json, json_option
from transfer_engine.cli._options import options_from
from transfer_engine.core.configs import CompareConfig


@click.command("compare")
@options_from(CompareConfig)
@json_option
def compare(as_json, **fields) -> None:
    """Rank backbones for your images: LogME, a linear and a k-NN probe, and what each costs to run.

    Each backbone's features are extracted once into --cache (rows already there are reused), then
    scored on the cached features: LogME (no training), te train's linear probe with its sweep and a
    k-NN probe (val accuracy; test when the data has a test split); on small data the probes are judged
    by k-fold cross-validation over train+val, with 95% intervals, and backbones rank by it. Plus
    parameters, feature size, the ONNX file's size, and latency at batch 1 and throughput at batch 32
    measured on this machine for PyTorch and onnxruntime fp32 (and int8 with --int8). Recommended: the
    fastest of the backbones the data cannot tell from the best. Re-run with one more backbone and only
    that one is extracted and fitted.

    \b
    Examples:
      te compare --data photos/ --cache C --backbones resnet18,efficientnet_lite0
      te compare --data builtin:digits --cache C --backbones 'resnet*' --quick
    """
    from transfer_engine.compare.report import notes, table
    from transfer_engine.compare.run import compare as run_compare

    result = run_compare(CompareConfig(**fields), progress=not as_json)
    if as_json:
        emit_json(result.to_dict())
        return
    for line in table(result):
        click.echo(line)
    click.echo(f"recommendation: {result.recommendation}")
    for line in notes(result):
        click.echo(f"note: {line}")
    if result.logme_tau is not None:
        click.echo(f"LogME's ranking against the linear probes' on this data: Kendall's tau {result.logme_tau:+.2f}")
    click.echo(f"files: {result.files['md']}, {result.files['png']}, {result.files['json']}")
