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
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from transfer_engine._durable import makedirs_durably, replace_durably, write_text_durably
from transfer_engine.core.configs import ExportConfig
from transfer_engine.core.progress import Progress, Say, renamed, say_of
from transfer_engine.errors import TEError, UsageError
from transfer_engine.export import parity
from transfer_engine.export.builder import Builder
from transfer_engine.onnx.export import check_opset
from transfer_engine.onnx.runtime import import_ort


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


def export_onnx(run: Any, out: str | os.PathLike, config: ExportConfig | None = None, *, overwrite: bool = False,
                providers: Sequence[str] | None = None, progress: Progress = False, log: Say | None = None,
                **fields: Any) -> ExportResult:
    """Export a `te train`/`te finetune` run to ONNX and prove it matches PyTorch on real held-out images.

    Args:
        run: a run directory (or an open `Run`).
        out: the .onnx file to write (the quantized variant when `quantize` is set; fp32 goes beside it as
            FILE.fp32.onnx).
        config: what to write and check (`core.configs.ExportConfig`, whose fields' help describes each:
            opset, quantize, preprocess, layout, split, check_data, calibration_data, selection_data,
            batch_sizes, check_size, calibration_size, selection_size, min_agreement, int8_target,
            min_int8_speedup, exporter); or its fields as keywords (`fields`), which also override those
            of a config given.

    Keywords that are not part of the config (they say how to run, not what):
        overwrite: replace existing files at `out` (otherwise that is a UsageError, before any work).
        providers: onnxruntime providers to check on (default: every one available: TensorRT, CUDA, CPU).
        progress: the steps as they happen: True on stderr, False none (the default), a function is handed
            each line (`core.progress`).
        log: deprecated, the function `progress` now takes.

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
    say = say_of(renamed(progress, "log", log, "export_onnx"))
    cfg = ExportConfig.of(config, **fields)
    run = run if isinstance(run, Run) else Run.open(run)
    out = Path(out).expanduser().absolute()
    _check_out(out)
    opset, exporter = check_opset(cfg.opset, cfg.exporter)
    if cfg.quantize == "int8" and run.qat and run.qat["simulation"].get("exporter"):
        # a --qat run's int8 model is the graph its scales were read from: the same opset and exporter
        trained = run.qat["simulation"]
        if (opset, exporter) != (trained["opset"], trained["exporter"]):
            say(f"exporting with opset {trained['opset']} and the {trained['exporter']} exporter: the graph this --qat "
                "run was trained on")
        opset, exporter = check_opset(trained["opset"], trained["exporter"])
    quantize, preprocess = cfg.quantize, cfg.preprocess
    if preprocess and opset < 18:
        raise UsageError(f"--preprocess needs --opset 18 or later (antialiased Resize), got {opset}")
    if quantize == "int8" and opset < 13:
        raise UsageError(f"--quantize int8 needs --opset 13 or later (per-channel quantization), got {opset}")
    targets = _targets(out, quantize, cfg.split)
    _check_overwrite(targets, overwrite)
    import_ort()
    model = run.build_model()
    _check_finite_weights(model)

    check_set = image_sets.held_out_images(run, cfg.check_data, cfg.check_size)
    int8_sets = None
    if quantize == "int8":
        cal_set = image_sets.train_images(run, cfg.calibration_data, cfg.calibration_size)
        int8_sets = (cal_set, image_sets.selection_images(run, cfg.selection_data, cfg.selection_size, check_set,
                                                          cal_set))
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
    int8_ref = None
    if quantize == "int8" and run.qat:  # a --qat run's int8 file is checked against the int8 model it trained
        from transfer_engine.onnx.simulate import QuantSim, SimSpec

        from transfer_engine.export.int8_qat import logit_step

        spec = SimSpec.from_dict(run.qat["simulation"])
        with QuantSim(model, spec):
            int8_ref = replace(_reference(model, x, label_array), tie_margin=logit_step(spec))
    timings = {"reference": time.perf_counter() - started}

    staging = out.parent / f".{out.stem}.export-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    makedirs_durably(out.parent)  # a new folder must survive a crash with the files moved into it
    staging.mkdir()
    try:
        builder = Builder(run, staging, targets, cfg, opset=opset, exporter=exporter, say=say)
        report = builder.build_and_check(model, ref, x, check_images, int8_sets=int8_sets,
                                         check_keys=check_set.loaded_keys, providers=providers, timings=timings,
                                         int8_ref=int8_ref)
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


def _check_out(out: Path) -> None:
    if out.suffix.lower() != ".onnx":
        raise UsageError(f"--out {out}: expected a file name ending in .onnx")
    if out.is_dir():
        raise UsageError(f"--out {out} is a directory; expected a file name ending in .onnx")


def _write_json(path: Path, obj: dict[str, Any]) -> None:
    import json

    write_text_durably(path, json.dumps(obj, indent=2, allow_nan=False, default=str) + "\n")


__all__ = ["ExportResult", "ParityError", "export_onnx"]
