"""`te demo`: the whole path on built-in real data, offline."""

from __future__ import annotations

from pathlib import Path

import click

from transfer_engine.cli._common import emit_json, info, json_option
from transfer_engine.demo import DEMO_FINETUNE_BUDGET  # the demo module imports no torch at the top
from transfer_engine.core.configs.export import DEFAULT_MIN_AGREEMENT, DEFAULT_MIN_SPEEDUP


@click.command("demo")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("te-demo"),
              show_default=True, help="Folder for the demo's files.")
@click.option("--backbone", metavar="NAME", default=None,
              help="Backbone to use (default: efficientnet_lite0 when its plugin is installed, with its "
                   "real ImageNet weights; else resnet18 with random weights).")
@click.option("--limit", type=click.IntRange(min=20), default=None, metavar="N",
              help="Use only the first N digits (a quick check).")
@click.option("--finetune-budget", type=click.FloatRange(min=0, min_open=True), default=DEMO_FINETUNE_BUDGET,
              show_default=True, metavar="MINUTES",
              help="Minutes of end-to-end fine-tuning from the best head: te finetune's default recipe sizes its "
                   "epochs to them (at least two).")
@click.option("--finetune-size", type=click.IntRange(min=32), default=None, metavar="PX",
              help="Input size fine-tuning trains (and the exported model runs) at (default: the backbone's own, "
                   "224 for EfficientNet-Lite0); smaller is faster on a CPU.")
@click.option("--int8-min-agreement", type=click.FloatRange(0, 1, min_open=True), default=DEFAULT_MIN_AGREEMENT,
              show_default=True, metavar="F",
              help="The int8 model's gate: the floor of the 95% lower bound of its top-1 agreement on digits the "
                   "model was not fitted on (te export's default). Below it, the demo says why and deploys fp32.")
@click.option("--int8-min-speedup", type=click.FloatRange(0.0, 100.0, max_open=True), default=DEFAULT_MIN_SPEEDUP,
              show_default=True, metavar="R",
              help="int8 must run R times as fast as fp32 at batch 1 and 32 here, or fp32 is deployed (0: no speed rule).")
@json_option
def demo(out: Path, backbone: str | None, limit: int | None, finetune_budget: float, finetune_size: int | None,
         int8_min_agreement: float, int8_min_speedup: float, as_json: bool) -> None:
    """Run the whole te path on scikit-learn's 1,797 real handwritten digits, offline.

    te extract (EfficientNet-Lite0, real ImageNet weights) -> te train --head all --sweep -> te finetune
    --from the best head -> te export --onnx --quantize int8 (parity report; int8 only when it meets
    te export's gates on this CPU, else fp32 with the reason) -> te predict with each model exported;
    then the test accuracy of each. The feature cache lives in OUT/cache: a second run
    reuses it and says so.

    \b
    Examples:
      te demo --out /tmp/te-demo
      te demo --limit 300 --json          a quick check on the first 300 digits
    """
    from transfer_engine.demo import run_demo

    result = run_demo(out, backbone=backbone, limit=limit, echo=info if as_json else click.echo,
                      finetune_budget=finetune_budget, finetune_input_size=finetune_size,
                      int8_min_agreement=int8_min_agreement, int8_min_speedup=int8_min_speedup)
    if as_json:
        emit_json(result.to_dict())
