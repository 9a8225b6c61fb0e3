"""`te extract`: run a frozen backbone over a data set once, into the feature cache."""

from __future__ import annotations

import os
from pathlib import Path

import click

from transfer_engine.cli._common import emit_json, json_option, warn_skipped
from transfer_engine.core.choices import (BACKEND_CHOICES, DEFAULT_STORE, DEVICES, PRECISION_CHOICES, RESAMPLER_CHOICES,
                                          STORED_DTYPES)


@click.command("extract")
@click.option("--backbone", required=True, metavar="NAME", help="Backbone name (`te backbones` lists them).")
@click.option("--data", required=True, metavar="SRC",
              help="Image folder (CLASS/IMAGE, optionally under train/val/test), a .csv/.jsonl manifest "
                   "(path,label[,split]) or builtin:digits.")
@click.option("--cache", "cache_dir", required=True, type=click.Path(path_type=Path), metavar="DIR",
              help="Feature cache directory (created when missing; shared by data sets and backbones).")
@click.option("--weights", default="DEFAULT", show_default=True, metavar="W",
              help="Weights name, 'none' (random init, seeded) or a path to a local state dict.")
@click.option("--name", metavar="DATASET", default=None, help="Data set name in the cache (default: from --data).")
@click.option("--replace", is_flag=True,
              help="Replace a data set of that name that holds another --data's images or other classes "
                   "(refused without it: a name is not an identity).")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, metavar="N",
              help="Images per forward pass (default: 32 on CPU, 128 on CUDA).")
@click.option("--workers", type=click.IntRange(min=1), default=None, metavar="N",
              help="Decode/transform threads (default: CPU count, at most 8).")
@click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True)
@click.option("--precision", type=click.Choice(PRECISION_CHOICES), default="auto", show_default=True,
              help="Compute precision; auto = fastest that keeps every feature within cosine 0.999 of fp32.")
@click.option("--backend", type=click.Choice(BACKEND_CHOICES), default="auto", show_default=True,
              help="What computes the features; auto = fastest measured on 8 of your images whose features "
                   "stay within bound of PyTorch fp32 (remembered in the cache).")
@click.option("--store", type=click.Choice(STORED_DTYPES), default=DEFAULT_STORE, show_default=True,
              help="How rows are stored: int8 with a per-row scale (4x smaller), fp16 or fp32.")
@click.option("--resampler", type=click.Choice(RESAMPLER_CHOICES), default="auto", show_default=True,
              help="What resizes the images: pil (the reference), torch (the same filter, several times faster on "
                   "large photos; its own feature space); auto = torch when clearly faster (1.25x) and within cosine "
                   "0.999 of pil on 8 of your images (remembered; a cache already holding PIL features keeps them).")
@click.option("--limit", type=click.IntRange(min=1), default=None, metavar="N", help="Only the first N images.")
@click.option("--strict", is_flag=True, help="Exit 1 when any file cannot be read or decoded.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of a random initialization.")
@click.option("--follow-symlinks", is_flag=True,
              help="In a --data folder, follow symlinks that lead out of it (by default they are skipped, "
                   "with the reason; links to what te reads anyway are always skipped: no image counts twice).")
@click.option("--nproc", type=click.IntRange(min=1), default=1, show_default=True,
              help="Processes to split the work across (launches torchrun; gloo on CPU, NCCL on GPUs).")
@click.option("--node-cache", type=click.Path(path_type=Path), default=None, metavar="DIR",
              help="Under torchrun on several machines: where nodes 1..N-1 keep their delta caches until node 0 "
                   "merges them (default: CACHE/nodes; node 0 must be able to read it). See docs/scale.md.")
@json_option
def extract(backbone, data, cache_dir, weights, name, replace, batch_size, workers, device, precision, backend, store,
            resampler, limit, strict, seed, follow_symlinks, nproc, node_cache, as_json) -> None:
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
    if nproc > 1 and "WORLD_SIZE" not in os.environ:
        from transfer_engine.core.runtime import relaunch_under_torchrun

        raise SystemExit(relaunch_under_torchrun(nproc))
    from transfer_engine.extract.runner import extract as run_extract

    summary = run_extract(backbone, data, cache_dir, weights=weights, name=name, replace=replace, batch_size=batch_size,
                          workers=workers, device=device, precision=precision, backend=backend, store=store,
                          resampler=resampler, limit=limit, strict=strict, seed=seed, follow_symlinks=follow_symlinks,
                          node_cache=node_cache, progress=True)
    if int(os.environ.get("RANK", "0")) != 0:
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
