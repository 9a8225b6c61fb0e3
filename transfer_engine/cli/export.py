"""`te export RUN --onnx`: ONNX that provably matches PyTorch, optionally quantized."""

from __future__ import annotations

from pathlib import Path

import click

from transfer_engine.cli._common import emit_json, info, json_option, table
from transfer_engine.core.choices import EXPORTERS, LAYOUTS, QUANTIZE
from transfer_engine.export.recipes import (DEFAULT_INT8_TARGET, DEFAULT_MIN_SPEEDUP, DEFAULT_SELECTION_SIZE,
                                           INT8_TARGETS)


def _batch_sizes(ctx: click.Context, param: click.Parameter, value: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"{value!r}: expected comma-separated positive integers, e.g. 1,8") from None
    if not sizes or min(sizes) < 1:
        raise click.BadParameter(f"{value!r}: expected comma-separated positive integers, e.g. 1,8")
    return sizes


@click.command("export")
@click.argument("run", type=click.Path(path_type=Path), metavar="RUN")
@click.option("--onnx", "to_onnx", is_flag=True, help="Export to ONNX (the one format so far; required).")
@click.option("--out", required=True, type=click.Path(path_type=Path), metavar="FILE.onnx",
              help="The model to write (the quantized one with --quantize; fp32 goes beside it as FILE.fp32.onnx).")
@click.option("--opset", type=int, default=18, show_default=True, metavar="N", help="ONNX opset to write.")
@click.option("--quantize", type=click.Choice(QUANTIZE), default=None,
              help="int8: static QDQ, per-channel, calibrated on train images (CPU); fp16: for GPUs.")
@click.option("--preprocess", is_flag=True,
              help="Bake resize/crop/normalize into the graph: the model takes uint8 RGB images of any size.")
@click.option("--layout", type=click.Choice(LAYOUTS), default=LAYOUTS[0], show_default=True,
              help="Layout of the uint8 input with --preprocess.")
@click.option("--split", is_flag=True,
              help="Also write FILE.backbone.onnx (images -> features) and FILE.head.onnx (features -> logits).")
@click.option("--check-data", metavar="SRC", default=None,
              help="Labelled images to check parity on (default: the test split of the run's data set; val without one).")
@click.option("--calibration-data", metavar="SRC", default=None,
              help="Images to calibrate int8 on (default: the train split of the run's data set).")
@click.option("--selection-data", metavar="SRC", default=None,
              help="Images the int8 gate judges on, labels not needed (default: the run's val images that its "
                   "model was not fitted on).")
@click.option("--batch-sizes", default="1,8", show_default=True, callback=_batch_sizes, metavar="N,N,...",
              help="Batch sizes the fp32 model is run at to prove its batch axis is dynamic.")
@click.option("--check-size", type=click.IntRange(min=1), default=200, show_default=True, metavar="N",
              help="At most this many check images (spread over the held-out set).")
@click.option("--calibration-size", type=click.IntRange(min=1), default=128, show_default=True, metavar="N",
              help="At most this many int8 calibration images.")
@click.option("--selection-size", type=click.IntRange(min=1), default=DEFAULT_SELECTION_SIZE, show_default=True,
              metavar="N", help="At most this many int8 selection images (the gate's evidence).")
@click.option("--min-agreement", type=click.FloatRange(0.0, 1.0, min_open=True), default=0.99, show_default=True,
              metavar="F", help="The agreement floor: int8 ships when the 95% lower bound of its top-1 agreement with "
                                "the fp32 model on the selection images reaches F; fp16 must agree F on the check images.")
@click.option("--int8-target", type=click.Choice(list(INT8_TARGETS)), default=DEFAULT_INT8_TARGET, show_default=True,
              help="int8 recipe. portable: 7-bit weights (8-bit in depthwise convolutions), the same integer "
                   "results on x86 CPUs with and without VNNI; vnni: 8-bit weights, exact only on VNNI CPUs (saturates on AVX2).")
@click.option("--min-int8-speedup", type=click.FloatRange(0.0, 100.0, max_open=True), default=DEFAULT_MIN_SPEEDUP,
              show_default=True, metavar="R",
              help="Refuse int8 that is not R times as fast as fp32 at batch 1 and at batch 32 on this CPU "
                   "(0: no speed rule).")
@click.option("--exporter", type=click.Choice(EXPORTERS), default="auto", show_default=True,
              help="torch.onnx exporter; auto: TorchScript for opsets <= 20 (faster), else dynamo.")
@click.option("--overwrite", is_flag=True, help="Replace files already at --out.")
@json_option
def export(run, to_onnx, out, opset, quantize, preprocess, layout, split, check_data, calibration_data,
           selection_data, batch_sizes, check_size, calibration_size, selection_size, min_agreement, int8_target, min_int8_speedup, exporter, overwrite,
           as_json) -> None:
    """Export a run to ONNX and prove it matches PyTorch on real held-out images.

    Every variant (fp32, and the quantized one) is run through onnxruntime on every provider present
    (TensorRT, CUDA, CPU) and compared with PyTorch on the run's test images: max and mean
    absolute difference of logits and features, cosine, top-1 agreement, accuracy delta. fp32 must
    agree within 1e-4 of the logit scale or the export fails (exit 1) and writes nothing but
    FILE.parity-failed.json. The report goes to FILE.parity.json (and stdout with --json).

    int8 is chosen on images that are neither check nor calibration images: it ships when the 95% lower
    bound of its agreement with the fp32 model on them reaches --min-agreement and it beats fp32 at batch
    1 and 32; the check (test) images then report it once, unbiased.

    \b
    Examples:
      te export runs/linear --onnx --out model.onnx
      te export runs/linear --onnx --out model.onnx --quantize int8 --json
      te export runs/ft --onnx --out model.onnx --preprocess --split --check-data photos/val
    """
    from transfer_engine.errors import UsageError
    from transfer_engine.export.exporter import ParityError, export_onnx

    if not to_onnx:
        raise UsageError("te export needs a format: --onnx (the only one so far), e.g. te export RUN --onnx --out model.onnx")
    try:
        result = export_onnx(run, out, opset=opset, quantize=quantize, preprocess=preprocess, layout=layout,
                             split=split, check_data=check_data, calibration_data=calibration_data,
                             selection_data=selection_data, batch_sizes=batch_sizes, check_size=check_size,
                             calibration_size=calibration_size, selection_size=selection_size,
                             min_agreement=min_agreement, int8_target=int8_target,
                             min_int8_speedup=min_int8_speedup, exporter=exporter, overwrite=overwrite,
                             log=lambda m: info(f"te export: {m}"))
    except ParityError as exc:
        if as_json:
            emit_json(exc.result.report)
        else:
            _print_report(exc.result.report, info)
        raise
    if as_json:
        emit_json(result.report)
        return
    _print_report(result.report, click.echo)
    for role, path in result.files.items():
        click.echo(f"  {role:9} {path}")


def _print_int8(report: dict, search: dict, out) -> None:
    """Which images each int8 figure rests on: the gate's (selection), then the unbiased one (check)."""
    gate = search.get("gate") or {}
    if gate.get("images"):
        out(f"int8 gate on {search['selection']}: agreement {gate['agreement']:.1%} ({gate['agreed']} of "
            f"{gate['images']}), 95% lower bound {gate['lower_bound']:.1%} "
            f"{'>=' if gate['passed'] else '<'} {gate['floor']:.1%}")
    for size, m in (search.get("speed") or {}).get("batches", {}).items():
        out(f"int8 speed at batch {size}: {m['int8_images_per_second']:.1f} vs fp32 {m['fp32_images_per_second']:.1f} "
            f"img/s = {m['speedup']:.2f}x")
    unbiased = report["variants"].get("int8", {}).get("unbiased")
    if unbiased:
        delta = unbiased["accuracy_delta"]
        out(f"int8 on the {unbiased['images']} check images, which chose nothing: agreement with PyTorch "
            f"{unbiased['agreement']:.1%} ({unbiased['agreed']} of {unbiased['images']}; 95% lower bound "
            f"{unbiased['lower_bound']:.1%})" + ("" if delta is None else f", accuracy {delta * 100:+.1f} points"))


def _print_report(report: dict, out) -> None:
    """The parity table: one row per variant and provider (and the end-to-end rows with --preprocess)."""
    rows = []

    def add(name: str, entry: dict) -> None:
        for provider, m in entry.get("providers", {}).items():
            rows.append([name, provider.replace("ExecutionProvider", ""), f"{m['max_abs_diff']:.2e}",
                         f"{m['mean_abs_diff']:.2e}", f"{m['cosine']:.6f}", f"{m['top1_agreement']:.1%}",
                         "" if m["accuracy_delta"] is None else f"{m['accuracy_delta'] * 100:+.1f}",
                         "ok" if entry["passed"] else "FAILED"])

    for variant, entry in report["variants"].items():
        add(variant, entry)
    if report.get("preprocess"):
        for variant, entry in report["preprocess"]["end_to_end"].items():
            add(f"{variant}+preprocess", entry)
    check = report["check"]
    out(f"parity on {check['source']} (PyTorch accuracy "
        f"{'n/a' if check['torch_accuracy'] is None else format(check['torch_accuracy'], '.1%')}):")
    table(rows, ["variant", "provider", "max|diff|", "mean|diff|", "cosine", "top-1 agree", "acc delta", "verdict"],
          out=out)
    if report.get("preprocess"):
        px = report["preprocess"]["pixels"]
        out(f"in-graph preprocessing vs PyTorch's transform: max {px['max_level_diff']:.0f} level(s), "
            f"{px['values_off_by_1_level']:.3%} of values off by 1, {px['values_off_by_more_than_1_level']:.3%} by more")
    search = (report.get("calibration") or {}).get("int8")
    if search:
        _print_int8(report, search, out)
    for failure in report["failures"]:
        out(f"FAILED: {failure}")
    if report["passed"]:
        out(f"passed (fp32 tolerance {report['tolerance']['logits']:.2e} on logits; report "
            f"{report['files'].get('report', '')})")
