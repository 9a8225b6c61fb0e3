"""`te demo`: the whole path on built-in real data, offline."""

from __future__ import annotations

from pathlib import Path

import click

from transfer_engine.cli._common import emit_json, info, json_option


@click.command("demo")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("te-demo"),
              show_default=True, help="Folder for the demo's files.")
@click.option("--backbone", metavar="NAME", default=None,
              help="Backbone to use (default: efficientnet_lite0 when its plugin is installed, with its "
                   "real ImageNet weights; else resnet18 with random weights).")
@click.option("--limit", type=click.IntRange(min=20), default=None, metavar="N",
              help="Use only the first N digits (a quick check).")
@json_option
def demo(out: Path, backbone: str | None, limit: int | None, as_json: bool) -> None:
    """Run te on scikit-learn's 1,797 real handwritten digits, offline, and print each step's result.

    The feature cache lives in OUT/cache: a second run reuses it and says so.

    \b
    Example:
      te demo --out /tmp/te-demo
    """
    from transfer_engine.demo import run_demo

    result = run_demo(out, backbone=backbone, limit=limit, say=info if as_json else click.echo)
    if as_json:
        emit_json(result.to_dict())
