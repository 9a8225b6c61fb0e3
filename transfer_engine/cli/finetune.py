"""`te finetune`: train backbone and head end to end, warm-started from a `te train` run."""

from __future__ import annotations

from pathlib import Path

import click

from transfer_engine.cli._common import (emit_json, json_option, nproc_option, on_rank0, overwrite_option,
                                         relaunch_if_asked)
from transfer_engine.cli._options import options_from
from transfer_engine.core.configs import FinetuneConfig
from transfer_engine.core.format import percent


@click.command("finetune")
@options_from(FinetuneConfig)
@click.option("--out", required=True, type=click.Path(path_type=Path), metavar="RUN",
              help="Run directory to write (what `te export` reads); checkpoints go to RUN.ckpt/ meanwhile.")
@click.option("--resume", is_flag=True, help="Continue an interrupted run from RUN.ckpt/ (same settings).")
@overwrite_option
@nproc_option("Processes to train with (launches torchrun: DDP, gloo on CPU, NCCL on GPUs).")
@json_option
def finetune(out, resume, overwrite, nproc, as_json, **fields) -> None:
    """Fine-tune backbone and head end to end, from a trained head (LP-FT) or a new one.

    Writes a run directory (run.json, metrics.json, model.safetensors, learning_curve.png,
    confusion_matrix.png) that `te export` reads. Checkpoints are written every epoch to RUN.ckpt/;
    after a crash or kill the same command with --resume continues and ends with the same weights.

    \b
    Examples:
      te finetune --from runs/linear --out runs/ft --epochs 2 --input-size 64
      te finetune --backbone resnet18 --data photos/ --head linear --out runs/ft --strategy freeze_unfreeze
      te finetune --from runs/linear --out runs/ft --strategy unfreeze_milestones --milestones 1,2 --train-bn
      te finetune --from runs/vit-linear --out runs/lora --strategy lora --lora-rank 8 --lr 1e-3
      te finetune --from runs/linear --out runs/ft --resume          # after an interruption
      te finetune --from runs/linear --out runs/ft --nproc 2         # DDP through torchrun
    """
    relaunch_if_asked(nproc)
    from transfer_engine.finetune import finetune as run_finetune

    config = FinetuneConfig(**fields)
    from transfer_engine.core import distributed

    with distributed.guarded("fine-tuning"):  # DDP's all-reduces: a lost rank is one line, not an internal error
        summary = run_finetune(out, config, resume=resume, overwrite=overwrite, progress=True)
    if not on_rank0():
        return
    if as_json:
        emit_json(summary.to_dict())
        return
    click.echo(f"{summary.out}: {summary.backbone} + {summary.head}, {summary.strategy}, {summary.epochs} epoch(s) "
               f"at {summary.input_size}px in {summary.seconds:.1f} s ({summary.images_per_second:.1f} img/s, "
               f"{summary.precision}, {summary.device}" + (f", {summary.world_size} processes" if summary.world_size > 1
                                                           else "") + ")")
    if summary.search is not None:
        for trial in summary.search["trials"]:
            click.echo(_trial_line(trial, summary.search["chosen"]))
        click.echo(summary.search["verdict"])
    kept = (f"kept the weights of epoch {summary.best_epoch}" if summary.best_epoch else
            "kept the starting weights: no epoch beat them on val, fine-tuning did not pay")
    click.echo(f"test accuracy: {percent(summary.before.get('test_accuracy'))} before -> {percent(summary.test_accuracy)} "
               f"after (val {percent(summary.before.get('val_accuracy'))} -> {percent(summary.val_accuracy)}; {kept})")
    if summary.parent is not None:
        click.echo(f"the --from run {summary.parent['path']} reported test accuracy "
                   f"{percent(summary.parent.get('test_accuracy'))} on its cached features")


def _trial_line(t: dict, chosen: str) -> str:
    """One row of the search's trials: what it reached on val (and test), what it kept, its time."""
    if t["best_epoch"] is None:
        return f"  trial {t['name']:<14} {t['status']}"
    kept = f"epoch {t['best_epoch']}" if t["best_epoch"] else "the start"
    return (f"  trial {t['name']:<14} val {percent(t['val_accuracy'])}  test {percent(t['test_accuracy'])}  kept {kept}  "
            f"{t['epochs_run']}/{t['epochs']} epochs  {t['seconds']:.0f} s  {t['status']}"
            + ("  <- chosen" if t["name"] == chosen else ""))
