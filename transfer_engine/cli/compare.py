"""`te compare`: which backbone for my data? A leaderboard from features extracted once into the cache."""

from __future__ import annotations

import click

from transfer_engine.cli._common import emit_json, json_option
from transfer_engine.core.choices import BACKEND_CHOICES, SELECTIONS
from transfer_engine.core.selection import DEFAULT_FOLDS, DEFAULT_SELECT, KFOLD_MAX_RECORDS


@click.command("compare")
@click.option("--data", required=True, metavar="SRC", help="Image folder, .csv/.jsonl manifest or builtin:digits.")
@click.option("--cache", "cache_dir", required=True, metavar="DIR", help="The feature cache every backbone shares.")
@click.option("--backbones", required=True, metavar="NAMES",
              help="Comma-separated backbone names and shell patterns, e.g. resnet18,efficientnet_lite0 or 'resnet*'.")
@click.option("--weights", default="DEFAULT", show_default=True, metavar="W",
              help="Weights of every backbone: DEFAULT (each one's pretrained), none (seeded random) or a name.")
@click.option("--out", default="compare", show_default=True, metavar="DIR",
              help="Where compare.json, compare.md, compare.png and the probes' runs go.")
@click.option("--name", default=None, metavar="NAME", help="The data set's name in the cache (default: as te extract).")
@click.option("--quick", is_flag=True, help="Rank by LogME alone: no probe is fitted (seconds per backbone).")
@click.option("--limit", type=click.IntRange(min=1), default=None, metavar="N", help="Only the first N images.")
@click.option("--backend", type=click.Choice(BACKEND_CHOICES), default="auto", show_default=True,
              help="Extraction backend, as te extract takes it.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of random inits and the probes.")
@click.option("--int8", is_flag=True,
              help="Also quantize each backbone's ONNX graph (portable recipe) and report its speed and feature cosine.")
@click.option("--select", type=click.Choice(SELECTIONS), default=DEFAULT_SELECT, show_default=True,
              help=f"How the probes choose and backbones rank: kfold (stratified k-fold over train+val), val, or auto "
                   f"(kfold up to {KFOLD_MAX_RECORDS} train+val records, val above).")
@click.option("--folds", type=click.IntRange(min=2), default=DEFAULT_FOLDS, show_default=True, metavar="K",
              help="k of k-fold selection.")
@json_option
def compare(data, cache_dir, backbones, weights, out, name, quick, limit, backend, seed, int8, select, folds,
            as_json) -> None:
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
    from transfer_engine.compare.tournament import compare as run_compare

    result = run_compare(data, cache_dir, backbones, out=out, weights=weights, name=name, quick=quick, limit=limit,
                         backend=backend, seed=seed, int8=int8, select=select, folds=folds, progress=not as_json)
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
