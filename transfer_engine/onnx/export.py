"""PyTorch -> ONNX: one graph, images -> (logits, features), with a dynamic batch axis.

Which exporter: both export every backbone we tried with a dynamic batch axis and agree with PyTorch
equally well, and the TorchScript exporter is several times faster (the timings: docs/export.md, "Which
exporter, and why"). So `exporter="auto"` uses it for opsets it supports (7-20) and the dynamo exporter
otherwise (18-23), and whenever the TorchScript one is gone (it is deprecated) or fails on a model. Parity is checked on the file written, whichever exporter wrote it.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import torch
from torch import nn

from transfer_engine.core.choices import EXPORTERS  # noqa: F401  (the module's API)
from transfer_engine.core.configs.export import DEFAULT_OPSET
from transfer_engine.errors import TEError, UsageError, first_line
from transfer_engine.onnx.runtime import quiet_stdout

if TYPE_CHECKING:
    import onnx

TORCHSCRIPT_OPSETS = (7, 20)
DYNAMO_OPSETS = (18, 23)
INPUT = "images"
FEATURES = "features"
OUTPUTS = ("logits", FEATURES)


class ExportError(TEError):
    """torch.onnx could not export the model."""


def check_opset(opset: int, exporter: str = "auto") -> tuple[int, str]:
    """Validate `--opset` against the installed onnx and torch, and pick the exporter.

    Args:
        opset: the ONNX opset to write.
        exporter: "auto", "torchscript" or "dynamo".

    Returns:
        (opset, exporter actually used: "torchscript" or "dynamo").

    Raises:
        UsageError: the installed onnx cannot write that opset, or no exporter of this torch can.
    """
    import onnx

    if exporter not in EXPORTERS:
        raise UsageError(f"exporter {exporter!r}: expected one of {', '.join(EXPORTERS)}")
    onnx_max = onnx.defs.onnx_opset_version()
    if opset > onnx_max or opset < TORCHSCRIPT_OPSETS[0]:
        raise UsageError(f"--opset {opset}: the installed onnx {onnx.__version__} writes opsets "
                         f"{TORCHSCRIPT_OPSETS[0]}..{onnx_max}; choose one of those (default {DEFAULT_OPSET})")
    dynamo_max = min(_torch_max_opset(), onnx_max)
    fits_ts = TORCHSCRIPT_OPSETS[0] <= opset <= TORCHSCRIPT_OPSETS[1] and _has_torchscript_exporter()
    fits_dynamo = DYNAMO_OPSETS[0] <= opset <= dynamo_max
    if exporter == "auto":
        exporter = "torchscript" if fits_ts else "dynamo" if fits_dynamo else ""
    ok = {"torchscript": fits_ts, "dynamo": fits_dynamo}.get(exporter, False)
    if not ok:
        raise UsageError(f"--opset {opset}: torch {torch.__version__} exports opsets {TORCHSCRIPT_OPSETS[0]}.."
                         f"{TORCHSCRIPT_OPSETS[1]} (TorchScript exporter) and {DYNAMO_OPSETS[0]}..{dynamo_max} "
                         f"(dynamo exporter){'' if exporter in ('', 'auto') else f'; {exporter} cannot'}")
    return opset, exporter


class LogitsAndFeatures(nn.Module):
    """What is exported: images -> (logits, pooled features), so one graph serves both."""

    def __init__(self, classifier: nn.Module) -> None:
        super().__init__()
        self.backbone = classifier.backbone
        self.head = classifier.head

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.backbone(images)
        return self.head(features), features


def export_classifier(model: nn.Module, path: str | os.PathLike, *, crop_size: int, opset: int,
                      exporter: str) -> str:
    """Export a `Classifier` to `path`: input "images" float32 [batch, 3, S, S], outputs "logits" and
    "features", the batch axis dynamic.

    Args:
        model: the `Classifier` (backbone + head), on the CPU.
        path: where to write the .onnx file.
        crop_size: the side S of the input images.
        opset: the ONNX opset (validated by `check_opset`).
        exporter: "torchscript" or "dynamo" (from `check_opset`); "torchscript" falls back to dynamo
            when it fails on a model and the opset allows.

    Returns:
        The exporter that wrote the file.

    Raises:
        ExportError: torch.onnx failed, or the graph it wrote has a fixed batch axis.
    """
    return _export_with_fallback(LogitsAndFeatures(model).eval(), str(path), crop_size, opset, exporter, OUTPUTS)


def export_backbone(backbone: nn.Module, path: str | os.PathLike, *, crop_size: int, opset: int = DEFAULT_OPSET,
                    exporter: str = "auto") -> str:
    """Export a backbone alone: input "images" float32 [batch, 3, S, S], output "features" (what te
    extract computes with onnxruntime); the batch axis dynamic.

    Returns:
        The exporter that wrote the file.

    Raises:
        ExportError: torch.onnx failed, or the graph it wrote has a fixed batch axis.
        UsageError: no exporter of this torch writes `opset`.
    """
    opset, exporter = check_opset(opset, exporter)
    return _export_with_fallback(backbone.eval(), str(path), crop_size, opset, exporter, (FEATURES,))


def _export_with_fallback(module: nn.Module, path: str, crop_size: int, opset: int, exporter: str,
                          outputs: tuple[str, ...]) -> str:
    import onnx

    try:
        _export(module, path, crop_size, opset, exporter, outputs)
    except Exception as exc:
        if exporter == "torchscript" and DYNAMO_OPSETS[0] <= opset <= DYNAMO_OPSETS[1]:
            exporter = "dynamo"
            try:
                _export(module, path, crop_size, opset, exporter, outputs)
            except Exception as exc2:
                raise ExportError(f"torch.onnx could not export the model: {first_line(exc2)}") from exc2
        else:
            raise ExportError(f"torch.onnx could not export the model ({exporter}): {first_line(exc)}") from exc
    graph = _inline_external_data(path).graph
    batch = graph.input[0].type.tensor_type.shape.dim[0]
    if batch.dim_value:  # a number instead of a name: the batch size would be fixed
        raise ExportError(f"the exported graph has a fixed batch size {batch.dim_value} ({exporter} exporter)")
    return exporter


def _inline_external_data(path: str) -> "onnx.ModelProto":
    """Make the exported file hold its weights itself. torch.onnx's dynamo exporter writes them to a
    PATH.data file beside it, which a copy, a rename or a cache artifact (one content-addressed file)
    leaves behind or breaks. Returns the graph (without weights loaded when there were none to move).

    Raises:
        ExportError: the weights exceed the 2 GB a single protobuf file can hold.
    """
    import onnx
    from onnx.external_data_helper import uses_external_data

    model = onnx.load(path, load_external_data=False)
    locations = {e.value for t in model.graph.initializer if uses_external_data(t) for e in t.external_data
                 if e.key == "location"}
    if not locations:
        return model
    model = onnx.load(path)  # the weights read in and marked as inline
    try:
        onnx.save(model, path)
    except ValueError as exc:  # protobuf's 2 GB limit
        raise ExportError(f"the model's weights do not fit in one ONNX file ({first_line(exc)})") from exc
    for location in locations:
        (Path(path).parent / location).unlink(missing_ok=True)
    return model


def _export(module: nn.Module, path: str, crop_size: int, opset: int, exporter: str,
            outputs: tuple[str, ...]) -> None:
    example = (torch.zeros(2, 3, crop_size, crop_size),)  # 2, not 1: tracing never specializes it
    # Traced with autograd on: under no_grad, nn.MultiheadAttention takes its fused fast path
    # (aten::_native_multi_head_attention), which the TorchScript exporter cannot write, and a ViT then
    # falls back to the slower dynamo exporter (docs/extract.md, "The exported model"). The C++ side prints
    # the whole graph on a failed export to the process's stdout: discarded, since the error itself is raised.
    grad = torch.enable_grad() if exporter == "torchscript" else torch.no_grad()
    with warnings.catch_warnings(), quiet_stdout(), _native_output_discarded(), grad:
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer warnings
        if exporter == "torchscript":
            torch.onnx.export(module, example, path, dynamo=False, opset_version=opset, input_names=[INPUT],
                              output_names=list(outputs), do_constant_folding=True,
                              dynamic_axes={name: {0: "batch"} for name in (INPUT, *outputs)})
        else:
            torch.onnx.export(module, example, path, dynamo=True, opset_version=opset, input_names=[INPUT],
                              output_names=list(outputs), dynamic_shapes=({0: torch.export.Dim("batch")},),
                              verbose=False)


@contextlib.contextmanager
def _native_output_discarded() -> Iterator[None]:
    """What C++ code writes to file descriptors 1 and 2 while inside goes to a discarded temp file."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        with tempfile.TemporaryFile() as sink:
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
    finally:
        for fd in saved:
            os.close(fd)


def extract_part(model_path: str, out_path: str, inputs: list[str], outputs: list[str]) -> "onnx.ModelProto":
    """Cut a sub-graph out of an exported model (backbone: images -> features; head: features -> logits).

    Cutting the one verified graph rather than exporting twice guarantees the parts compute exactly
    what the whole model computes.
    """
    import onnx
    import onnx.utils

    onnx.utils.extract_model(model_path, out_path, inputs, outputs, check_model=True)
    return onnx.load(out_path)


def _torch_max_opset() -> int:
    try:
        from torch.onnx._constants import ONNX_MAX_OPSET

        return int(ONNX_MAX_OPSET)
    except (ImportError, AttributeError):
        return DYNAMO_OPSETS[1]


def _has_torchscript_exporter() -> bool:
    try:
        from torch.onnx import utils  # noqa: F401  (the TorchScript exporter's module)
    except ImportError:
        return False
    return True
