"""`te predict FILE.onnx --data SRC`: classify images with an exported model, through onnxruntime."""

from __future__ import annotations

from pathlib import Path

import click

from transfer_engine.cli._common import emit_json, info, json_option, warn_skipped
from transfer_engine.cli._options import options_from
from transfer_engine.core.configs import PredictConfig


@click.command("predict")
@click.argument("model", type=click.Path(path_type=Path), metavar="FILE.onnx")
@options_from(PredictConfig)
@json_option
def predict(model, as_json, **fields) -> None:
    """Classify images with an ONNX model written by `te export`.

    Class names and preprocessing come from the model's te metadata (or the graph does the
    preprocessing, with --preprocess at export). Files that cannot be read or are not images are
    reported and skipped. With labelled data (CLASS/IMAGE folders, a manifest) the accuracy is given.

    \b
    Examples:
      te predict model.onnx --data photos/ --out predictions.csv
      te predict model.onnx --data builtin:digits --top-k 3 --json
      te predict model.onnx --data cat.jpg --provider cpu
    """
    from transfer_engine.predict.runner import predict as run_predict

    summary = run_predict(model, PredictConfig(**fields), progress=True)
    warn_skipped(summary.failed)
    if as_json:
        emit_json(summary.to_dict())
        return
    for row in summary.predictions:
        others = "  ".join(f"{t['class']} {t['probability']:.3f}" for t in row["top_k"][1:])
        click.echo(f"{row['path']}\t{row['prediction']}\t{row['probability']:.3f}" + (f"\t{others}" if others else ""))
    accuracy = "" if summary.accuracy is None else f", accuracy {summary.accuracy:.1%} on {summary.labelled} labelled"
    where = f"; wrote {summary.out}" if summary.out else ""
    # Without --out stdout holds the predictions (tab-separated), so the summary goes to stderr.
    (click.echo if summary.out else info)(f"{summary.predicted} of {summary.images} images classified on {summary.provider} in {summary.seconds:.1f} s "
         f"({summary.images_per_second:.1f} img/s){accuracy}, {len(summary.failed)} failed{where}")
