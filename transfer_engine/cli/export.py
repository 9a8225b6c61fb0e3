"""`te export RUN --onnx`: ONNX that provably matches PyTorch, optionally quantized."""

from __future__ import annotations

from pathlib import Path

import click

from transfer_engine.cli._common import emit_json, info, json_option, overwrite_option, table
from transfer_engine.cli._options import options_from
from transfer_engine.core.configs import ExportConfig
from transfer_engine.core.format import points


@click.command("export")
@click.argument("run", type=click.Path(path_type=Path), metavar="RUN")
@click.option("--onnx", "to_onnx", is_flag=True, help="Export to ONNX (the one format so far; required).")
@click.option("--out", required=True, type=click.Path(path_type=Path), metavar="FILE.onnx",
              help="The model to write (the quantized one with --quantize; fp32 goes beside it as FILE.fp32.onnx).")
@options_from(ExportConfig)
@overwrite_option
@json_option
def export(run, to_onnx, out, overwrite, as_json, **fields) -> None:
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
        result = export_onnx(run, out, ExportConfig(**fields), overwrite=overwrite,
                             progress=lambda m: info(f"te export: {m}"))
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
        qat = search.get("method") == "qat"
        ties = unbiased.get("ties") or 0
        out(f"int8 on the {unbiased['images']} check images, which chose nothing: agreement with "
            f"{'the model the --qat run trained (its int8 simulation in PyTorch)' if qat else 'PyTorch'} "
            f"{unbiased['agreement']:.1%} ({unbiased['agreed']} of {unbiased['images']}"
            + (f", {ties} of them ties of its quantized logits" if ties else "")
            + f"; 95% lower bound {unbiased['lower_bound']:.1%})" + ("" if delta is None else f", accuracy {points(delta)}"))


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
