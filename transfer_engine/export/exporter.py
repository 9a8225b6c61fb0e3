"""`export_onnx()`: what `te export RUN --onnx` does, from the run directory to verified ONNX files.

    1. read the run; choose the check images (held-out, labelled) and, for int8, calibration images
    2. PyTorch's logits and features on the check images: the reference
    3. export fp32 (one graph, images -> logits + features, dynamic batch); quantize (int8 / fp16)
    4. measure every variant on every provider against the reference; run fp32 at each --batch-sizes
    5. --preprocess: join the preprocessing graph in front, check it against PyTorch's transform and
       the joined models end to end; --split: cut backbone and head out of the fp32 graph, check both
    6. all checks pass: move the files into place and write FILE.parity.json beside them; otherwise
       write FILE.parity-failed.json, leave every existing file as it was, raise `ParityError` (exit 1)

Files are built in a staging folder beside --out and moved into place only when every check passed.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from transfer_engine._durable import makedirs_durably, replace_durably, write_text_durably
from transfer_engine.core.choices import LAYOUTS, QUANTIZE
from transfer_engine.errors import TEError, UsageError
from transfer_engine.export import parity
from transfer_engine.export.builder import Builder
from transfer_engine.export.recipes import DEFAULT_MIN_SPEEDUP, DEFAULT_SELECTION_SIZE
from transfer_engine.onnx.export import DEFAULT_OPSET, check_opset
from transfer_engine.onnx.recipes import DEFAULT_INT8_TARGET, INT8_TARGETS
from transfer_engine.onnx.runtime import import_ort

Log = Callable[[str], None]


class ParityError(TEError):
    """An exported model is too far from PyTorch (exit 1); `.result` holds the full report."""

    def __init__(self, message: str, result: "ExportResult") -> None:
        super().__init__(message)
        self.result = result


@dataclass
class ExportResult:
    """What `export_onnx` produced.

    Attributes:
        model: the file to deploy (--out): the quantized variant when one was asked for, else fp32.
        files: every file written, by role: "model" (= `model`), "fp32" (with a quantized model),
            "backbone" and "head" (with --split), "report".
        report: the parity report (also in `files["report"]`); `report["passed"]` says whether it passed.
    """

    model: str
    files: dict[str, str]
    report: dict[str, Any]

    @property
    def passed(self) -> bool:
        return bool(self.report["passed"])

    def to_dict(self) -> dict[str, Any]:
        return self.report


def export_onnx(run: Any, out: str | os.PathLike, *, opset: int = DEFAULT_OPSET, quantize: str | None = None,
                preprocess: bool = False, layout: str = "nhwc", split: bool = False, check_data: str | None = None,
                calibration_data: str | None = None, selection_data: str | None = None,
                batch_sizes: Sequence[int] = (1, 8), check_size: int = 200, calibration_size: int = 128,
                selection_size: int = DEFAULT_SELECTION_SIZE, min_agreement: float = parity.DEFAULT_MIN_AGREEMENT,
                exporter: str = "auto", overwrite: bool = False, providers: Sequence[str] | None = None,
                int8_target: str = DEFAULT_INT8_TARGET, min_int8_speedup: float = DEFAULT_MIN_SPEEDUP,
                log: Log | None = None) -> ExportResult:
    """Export a `te train`/`te finetune` run to ONNX and prove it matches PyTorch on real held-out images.

    Args:
        run: a run directory (or an open `Run`).
        out: the .onnx file to write (the quantized variant when `quantize` is set; fp32 goes beside it as
            FILE.fp32.onnx).
        opset: ONNX opset (default 18).
        quantize: None, "int8" (static, QDQ, per-channel, calibrated on train images) or "fp16".
        preprocess: bake resize/crop/normalize into the graph (input: uint8 images in `layout`).
        layout: "nhwc" or "nchw", for the uint8 input of `preprocess`.
        split: also write FILE.backbone.onnx (images -> features) and FILE.head.onnx (features -> logits).
        check_data: labelled images to check on, instead of the test split (val without one) of the run's data set.
        calibration_data: images to calibrate int8 on, instead of the train split of the run's data set.
        selection_data: images the int8 gate judges each mix of int8 and float nodes on (labels not
            needed), instead of the run's val images that its model was not fitted on.
        batch_sizes: batch sizes the fp32 model is run at, to prove the batch axis is dynamic.
        check_size: at most this many check images (spread evenly over the held-out set).
        calibration_size: at most this many calibration images.
        selection_size: at most this many int8 selection images.
        min_agreement: the floor of top-1 agreement: int8 is deployed when the 95% lower bound of its
            agreement on the selection images reaches it (`export.gate`); fp16 and in-graph preprocessing
            must agree at least this much on the check images.
        exporter: "auto", "torchscript" or "dynamo" (see `transfer_engine.onnx.export`).
        overwrite: replace existing files at `out` (otherwise that is a UsageError, before any work).
        providers: onnxruntime providers to check on (default: every one available: TensorRT, CUDA, CPU).
        int8_target: the int8 recipe (`transfer_engine.onnx.recipes.RECIPES`): "portable" (7-bit weights, 8-bit
            in depthwise convolutions: the same integer results on CPUs with and without VNNI) or "vnni" (8-bit weights, VNNI CPUs only).
        min_int8_speedup: int8 must run at least this many times as fast as fp32 at batch 1 and 32 on the CPU
            (after keeping sensitive nodes in float to meet `min_agreement`); 0 turns the rule off.
        log: where progress lines go (default: nowhere).

    Returns:
        An `ExportResult` whose report passed.

    Raises:
        UsageError: a bad argument, a run that is not one, an opset that cannot be written, check images
            that are missing or unlabelled, files in the way.
        ParityError: a check failed (the report says which, and is written as FILE.parity-failed.json).
    """
    from transfer_engine.export import images as image_sets
    from transfer_engine.runs import Run

    started = time.perf_counter()
    say = log or (lambda _msg: None)
    run = run if isinstance(run, Run) else Run.open(run)
    out = Path(out).expanduser().absolute()
    _check_arguments(out, quantize, layout, batch_sizes, check_size, calibration_size, selection_size, min_agreement)
    _check_int8(int8_target, min_int8_speedup)
    opset, exporter = check_opset(opset, exporter)
    if preprocess and opset < 18:
        raise UsageError(f"--preprocess needs --opset 18 or later (antialiased Resize), got {opset}")
    if quantize == "int8" and opset < 13:
        raise UsageError(f"--quantize int8 needs --opset 13 or later (per-channel quantization), got {opset}")
    targets = _targets(out, quantize, split)
    _check_overwrite(targets, overwrite)
    import_ort()
    model = run.build_model()
    _check_finite_weights(model)

    check_set = image_sets.held_out_images(run, check_data, check_size)
    int8_sets = None
    if quantize == "int8":
        cal_set = image_sets.train_images(run, calibration_data, calibration_size)
        int8_sets = (cal_set, image_sets.selection_images(run, selection_data, selection_size, check_set, cal_set))
    say(f"checking on {check_set.description}")
    check_images, labels, check_failed = check_set.load()
    if not check_images:
        raise UsageError(f"none of the {len(check_set)} check images could be read (first: {check_failed[0]['path']}: "
                         f"{check_failed[0]['reason']})")
    spec = run.preprocess
    transform = spec.transform()
    x = np.stack([transform(im).numpy() for im in check_images]).astype(np.float32)
    label_array = None if all(lab is None for lab in labels) else np.array([-1 if v is None else v for v in labels])
    ref = _reference(model, x, label_array)
    timings = {"reference": time.perf_counter() - started}

    staging = out.parent / f".{out.stem}.export-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    makedirs_durably(out.parent)  # a new folder must survive a crash with the files moved into it
    staging.mkdir()
    try:
        builder = Builder(run, staging, targets, opset=opset, exporter=exporter, layout=layout, say=say)
        report = builder.build_and_check(model, ref, x, check_images, quantize=quantize, preprocess=preprocess,
                                         split=split, int8_sets=int8_sets, check_keys=check_set.loaded_keys,
                                         batch_sizes=list(batch_sizes),
                                         min_agreement=min_agreement, providers=providers, timings=timings,
                                         int8_target=int8_target, min_int8_speedup=min_int8_speedup)
        report["check"] = {"images": len(check_images), "source": check_set.description, "failed": check_failed,
                           "labelled": label_array is not None, "torch_accuracy": ref.accuracy()}
        report["seconds"] = time.perf_counter() - started
        result = ExportResult(str(out), {k: str(v) for k, v in targets.items() if k != "failed_report"}, report)
        if not report["passed"]:
            report["files"] = {"report": str(targets["failed_report"])}
            _write_json(targets["failed_report"], report)
            raise ParityError(f"{report['failures'][0]} ({len(report['failures'])} check(s) failed; nothing was "
                              f"written but the report {targets['failed_report']})", result)
        report["files"] = result.files
        for role, target in targets.items():
            if role not in ("report", "failed_report"):
                replace_durably(staging / target.name, target)
        _write_json(targets["report"], report)
        targets["failed_report"].unlink(missing_ok=True)  # a stale report of an earlier failed try
        return result
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _check_finite_weights(model: Any) -> None:
    """Refuse a model with NaN or infinite weights (a diverged fit) before anything is exported or written:
    its logits would be NaN, every check would fail, and the report itself cannot be JSON.

    Raises:
        TEError: naming the part (head or backbone) and the first tensor that is not finite.
    """
    import torch

    for part in ("head", "backbone"):
        module = getattr(model, part)
        for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                raise TEError(f"the run's {part} has non-finite weights (NaN/inf, first in {name!r}): it diverged "
                              "in training and cannot be exported; train it again (e.g. a lower learning rate)")


def _reference(model: Any, x: np.ndarray, labels: np.ndarray | None) -> parity.Reference:
    import torch

    logits, features = [], []
    with torch.inference_mode():
        for start in range(0, len(x), 32):
            batch = torch.from_numpy(x[start:start + 32])
            f = model.backbone(batch)
            logits.append(model.head(f).float().numpy())
            features.append(f.float().numpy())
    return parity.Reference(np.concatenate(logits), np.concatenate(features), labels)


def _targets(out: Path, quantize: str | None, split: bool) -> dict[str, Path]:
    stem = out.name[: -len(".onnx")]
    targets = {"model": out}
    if quantize:
        targets["fp32"] = out.with_name(f"{stem}.fp32.onnx")
    if split:
        targets["backbone"] = out.with_name(f"{stem}.backbone.onnx")
        targets["head"] = out.with_name(f"{stem}.head.onnx")
    targets["report"] = out.with_name(f"{stem}.parity.json")
    targets["failed_report"] = out.with_name(f"{stem}.parity-failed.json")
    return targets


def _check_overwrite(targets: dict[str, Path], overwrite: bool) -> None:
    if overwrite:
        return
    present = [p for role, p in targets.items() if role != "failed_report" and p.exists()]
    if present:
        raise UsageError(f"{present[0]} already exists; pass --overwrite to replace it, or choose another --out")


def _check_arguments(out: Path, quantize: str | None, layout: str, batch_sizes: Sequence[int], check_size: int,
                     calibration_size: int, selection_size: int, min_agreement: float) -> None:
    if out.suffix.lower() != ".onnx":
        raise UsageError(f"--out {out}: expected a file name ending in .onnx")
    if out.is_dir():
        raise UsageError(f"--out {out} is a directory; expected a file name ending in .onnx")
    if quantize is not None and quantize not in QUANTIZE:
        raise UsageError(f"--quantize {quantize!r}: expected {' or '.join(QUANTIZE)}")
    if layout not in LAYOUTS:
        raise UsageError(f"--layout {layout!r}: expected {' or '.join(LAYOUTS)}")
    if not batch_sizes or any(int(b) < 1 for b in batch_sizes):
        raise UsageError(f"--batch-sizes {','.join(map(str, batch_sizes))}: expected positive integers, e.g. 1,8")
    if check_size < 1 or calibration_size < 1 or selection_size < 1:
        raise UsageError("--check-size, --calibration-size and --selection-size must be at least 1")
    if not 0.0 < min_agreement <= 1.0:
        raise UsageError(f"--min-agreement {min_agreement}: expected a fraction in (0, 1], e.g. 0.99")


def _check_int8(int8_target: str, min_int8_speedup: float) -> None:
    if int8_target not in INT8_TARGETS:
        raise UsageError(f"--int8-target {int8_target!r}: expected one of {', '.join(INT8_TARGETS)}")
    if not 0.0 <= min_int8_speedup < 100.0:
        raise UsageError(f"--min-int8-speedup {min_int8_speedup}: expected a ratio in [0, 100), e.g. 1.0")


def _write_json(path: Path, obj: dict[str, Any]) -> None:
    import json

    write_text_durably(path, json.dumps(obj, indent=2, allow_nan=False, default=str) + "\n")


__all__ = ["ExportResult", "ParityError", "export_onnx"]
