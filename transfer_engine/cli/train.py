"""`te train`: fit a head (or every head) on cached features and write a run directory."""

from __future__ import annotations

import json
from pathlib import Path

import click

from transfer_engine.cli._common import emit_json, json_option, table
from transfer_engine.core.choices import DEVICES, SELECTIONS
from transfer_engine.core.configs import TrainConfig
from transfer_engine.core.selection import KFOLD_MAX_RECORDS


def _parse_options(pairs: tuple[str, ...]) -> dict:
    """KEY=VALUE pairs; values are read as JSON when they parse (numbers, true/false), else as text."""
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {pair!r}", param_hint="--option")
        try:
            options[key] = json.loads(value)
        except ValueError:
            options[key] = value
    return options


@click.command("train")
@click.option("--cache", "cache_dir", required=True, type=click.Path(path_type=Path), metavar="DIR",
              help="Feature cache directory (filled by te extract).")
@click.option("--dataset", default=None, metavar="NAME", help="Data set in the cache (default: its only one).")
@click.option("--backbone", default=None, metavar="NAME", help="Use the features of this backbone.")
@click.option("--space", default=None, metavar="ID",
              help="Feature space id or prefix (te cache info), when several hold the data set.")
@click.option("--head", required=True, metavar="HEAD",
              help="Head name (te heads: linear, mlp, cosine, knn, plugins), or 'all' for a leaderboard.")
@click.option("--out", required=True, type=click.Path(path_type=Path), metavar="RUN",
              help="Run directory to write (with --head all: one run per head inside it).")
@click.option("--epochs", type=click.IntRange(min=1), default=None, metavar="N",
              help="Passes of minibatch training (default per head; L-BFGS and knn do not use it).")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=None, metavar="X",
              help="Learning rate of minibatch training (default per head).")
@click.option("--weight-decay", type=click.FloatRange(min=0), default=None, metavar="X",
              help="L2 penalty on RMS-scaled features (linear: of the objective, docs/train.md); AdamW decay "
                   "for other heads.")
@click.option("--sweep", is_flag=True,
              help="Choose weight decay (and lr, knn's k), coarse then refined, on val (the finalists by k-fold "
                   "under --select); refit on train+val.")
@click.option("--select", type=click.Choice(SELECTIONS), default=TrainConfig.default("select"), show_default=True,
              help=f"How --sweep and --head all choose: kfold (stratified k-fold over train+val), val, or auto "
                   f"(kfold up to {KFOLD_MAX_RECORDS} train+val records, val above).")
@click.option("--folds", type=click.IntRange(min=2), default=TrainConfig.default("folds"), show_default=True,
              metavar="K", help="k of k-fold selection.")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, metavar="N",
              help="Rows per minibatch (default 256).")
@click.option("--option", "option_pairs", multiple=True, metavar="KEY=VALUE",
              help="A head option, e.g. --option hidden=1024 (repeatable; te heads lists them).")
@click.option("--device", type=click.Choice(DEVICES), default=TrainConfig.default("device"), show_default=True,
              help="Where to train.")
@click.option("--seed", type=int, default=TrainConfig.default("seed"), show_default=True,
              help="Seeds initialization, dropout and batch order: the same seed repeats a run exactly (CPU).")
@click.option("--memory-budget", type=click.FloatRange(min=0, min_open=True), default=None, metavar="GB",
              help="GiB of float32 features to hold in memory (default: a quarter of RAM); beyond it they "
                   "stream from the cache.")
@click.option("--overwrite", is_flag=True, help="Replace a run (or leaderboard) already at --out.")
@json_option
def train(cache_dir, dataset, backbone, space, head, out, epochs, lr, weight_decay, sweep, select, folds, batch_size,
          option_pairs, device, seed, memory_budget, overwrite, as_json) -> None:
    """Fit a head on cached features: train split, selected on val (k-fold on small data), reported on test.

    Writes RUN/head.safetensors, run.json, metrics.json and PNGs (learning curve, confusion matrix,
    sweep). With --json, prints metrics.json (or, for --head all, the leaderboard) on stdout.

    \b
    Examples:
      te train --cache feats/ --head linear --out runs/linear
      te train --cache feats/ --head linear --out runs/linear --sweep --json
      te train --cache feats/ --head mlp --option hidden=1024 --epochs 60 --out runs/mlp
      te train --cache feats/ --backbone resnet50 --head all --sweep --out runs/all
    """
    from transfer_engine.train import train as run_train
    from transfer_engine.train import train_all

    cfg = TrainConfig(cache=cache_dir, head=head, dataset=dataset, backbone=backbone, space=space, epochs=epochs,
                      lr=lr, weight_decay=weight_decay, sweep=sweep, select=select, folds=folds, batch_size=batch_size,
                      options=_parse_options(option_pairs), device=device, seed=seed,
                      memory_budget=int(memory_budget * 2**30) if memory_budget else None)
    if cfg.every_head:
        board_result = train_all(cfg, out=out, overwrite=overwrite, progress=True)
        if as_json:
            emit_json(board_result.to_dict())
            return
        board = board_result.to_dict()
        kfold = board["selected_by"] == "kfold"
        table([(r["rank"], r["head"], *((_interval(r["kfold_accuracy"], r["kfold_interval"]),) if kfold else ()),
                _pct(r["val_accuracy"]), _pct(r["test_accuracy"]), _pct(r["train_accuracy"]), f"{r['seconds']:.1f}")
               for r in board["leaderboard"]],
              ["rank", "head", *((f"{cfg.folds}-fold acc [95%]",) if kfold else ()), "val acc", "test acc", "train acc",
               "seconds"])
        for failure in board["failed"]:
            click.echo(f"{failure['head']}: failed: {failure['error']}")
        tied = board_result.tied_with_best()
        click.echo(f"best: {board['best']} ({'the highest ' + str(cfg.folds) + '-fold accuracy' if kfold else 'on val'})"
                   + (f"; {', '.join(tied)} within the noise of it (paired McNemar test on the out-of-fold "
                      "predictions, p >= 0.05)" if tied else "")
                   + f"; runs and leaderboard.json in {board_result.out}")
        return
    result = run_train(cfg, out=out, overwrite=overwrite, progress=True)
    if as_json:
        emit_json(result.to_dict())
        return
    m = result.metrics
    click.echo(f"{m['head']} on {m['dataset']} ({m['backbone']} features): train {_pct(m['train_accuracy'])}, "
               f"val {_pct(m['val_accuracy'])}, test {_pct(m['test_accuracy'])}, macro F1 {m['macro_f1']:.3f} "
               f"({m['evaluated_on']}) in {m['seconds']:.1f} s")
    chosen = {k: v for k, v in m["hyperparameters"].items() if k in ("weight_decay", "lr", "epochs", "options")}
    kfold = m.get("kfold")
    click.echo(f"{m['hyperparameters']['selected_by']}: {json.dumps(chosen)}"
               + (f"; {kfold['k']}-fold accuracy {_interval(kfold['accuracy'], kfold['interval'])} on {kfold['total']} "
                  "train+val images" if kfold else ""))
    click.echo(f"run: {result.run}")


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def _interval(value, interval) -> str:
    """An accuracy in percent with its 95% interval in brackets, in points."""
    if value is None:
        return "-"
    return f"{100 * value:.2f}% [{100 * interval[0]:.1f}, {100 * interval[1]:.1f}]"
