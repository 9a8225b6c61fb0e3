"""`te extract`: run a frozen backbone over a data set once, into the feature cache."""

from __future__ import annotations


import click

from transfer_engine.cli._common import (emit_json, json_option, nproc_option, on_rank0, relaunch_if_asked,
                                         warn_skipped)
from transfer_engine.cli._options import options_from
from transfer_engine.core.configs import ExtractConfig


@click.command("extract")
@options_from(ExtractConfig)
@nproc_option("Processes to split the work across (launches torchrun; gloo on CPU, NCCL on GPUs).")
@json_option
def extract(nproc, as_json, **fields) -> None:
    """Extract features of a data set into the feature cache, skipping images already there.

    Files are hashed first; only images whose content the cache lacks for this backbone, weights,
    transform, precision and stored dtype are decoded and run through the model. Kill it and run the
    same command again: it resumes.

    \b
    Examples:
      te extract --backbone efficientnet_lite0 --data builtin:digits --cache feats/
      te extract --backbone resnet50 --data photos/ --cache feats/ --weights none --json
      te extract --backbone resnet50 --data photos/ --cache feats/ --nproc 2
      torchrun --nnodes 2 --node-rank 0 --nproc-per-node 4 --master-addr HOST0 -m transfer_engine extract ...
    """
    relaunch_if_asked(nproc)
    from transfer_engine.extract.runner import extract as run_extract

    summary = run_extract(ExtractConfig(**fields), progress=True)
    if not on_rank0():
        return
    warn_skipped(summary.failed)
    if as_json:
        emit_json(summary.to_dict())
        return
    if summary.extracted == 0:
        click.echo(f"nothing new: all {summary.reused} images of {summary.dataset!r} were already in the cache "
                   f"(space {summary.space[:12]}); no model work done")
    else:
        click.echo(f"{summary.dataset}: {summary.extracted} extracted, {summary.reused} reused, "
                   f"{len(summary.failed)} failed, of {summary.total} in {summary.seconds:.1f} s "
                   f"({summary.images_per_second:.1f} img/s, {summary.backend} {summary.precision}, "
                   f"stored {summary.store})")
    click.echo(f"cache {summary.cache}, space {summary.space[:12]} ({summary.backbone}, {summary.weights} weights)")
    click.echo(f"backend {summary.backend} {summary.precision}: {summary.precision_reason}")
    click.echo(f"resampler {summary.resampler}: {summary.resampler_reason}")
