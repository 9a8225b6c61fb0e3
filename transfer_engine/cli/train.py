"""`te train`: fit a head (or every head) on cached features and write a run directory."""

from __future__ import annotations

import json
from pathlib import Path

import click

from transfer_engine.cli._common import emit_json, json_option, overwrite_option, table
from transfer_engine.cli._options import options_from
from transfer_engine.core.configs import TrainConfig
from transfer_engine.core.format import TABLE_MISSING, percent, percent_interval


@click.command("train")
@options_from(TrainConfig)
@click.option("--out", required=True, type=click.Path(path_type=Path), metavar="RUN",
              help="Run directory to write (with --head all: one run per head inside it).")
@overwrite_option
@json_option
def train(out, overwrite, as_json, **fields) -> None:
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

    cfg = TrainConfig(**fields)
    if cfg.every_head:
        board_result = train_all(cfg, out=out, overwrite=overwrite, progress=True)
        if as_json:
            emit_json(board_result.to_dict())
            return
        board = board_result.to_dict()
        kfold = board["selected_by"] == "kfold"
        table([(r["rank"], r["head"],
                *((percent_interval(r["kfold_accuracy"], r["kfold_interval"], missing=TABLE_MISSING),) if kfold else ()),
                _cell(r["val_accuracy"]), _cell(r["test_accuracy"]), _cell(r["train_accuracy"]), f"{r['seconds']:.1f}")
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
    click.echo(f"{m['head']} on {m['dataset']} ({m['backbone']} features): train {percent(m['train_accuracy'])}, "
               f"val {percent(m['val_accuracy'])}, test {percent(m['test_accuracy'])}, macro F1 {m['macro_f1']:.3f} "
               f"({m['evaluated_on']}) in {m['seconds']:.1f} s")
    chosen = {k: v for k, v in m["hyperparameters"].items() if k in ("weight_decay", "lr", "epochs", "options")}
    kfold = m.get("kfold")
    click.echo(f"{m['hyperparameters']['selected_by']}: {json.dumps(chosen)}"
               + (f"; {kfold['k']}-fold accuracy {percent_interval(kfold['accuracy'], kfold['interval'])} on "
                  f"{kfold['total']} train+val images" if kfold else ""))
    click.echo(f"run: {result.run}")


def _cell(value) -> str:
    return percent(value, missing=TABLE_MISSING)
