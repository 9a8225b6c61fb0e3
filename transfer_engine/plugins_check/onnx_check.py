"""Export a module to ONNX and check the graph computes what PyTorch computes (one check, shared by
backbones and heads).

The exporter policy is `te export`'s (transfer_engine.onnx.export): its default opset, the
TorchScript exporter first (much faster: docs/export.md, "Which exporter, and why"), the dynamo exporter when that one fails on the model. So a
plugin that passes here exports with `te export` too.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

from transfer_engine.errors import first_line
from transfer_engine.onnx.export import DEFAULT_OPSET
from transfer_engine.plugins_check.results import PASS


def _export(model: nn.Module, example: torch.Tensor, path: Path, exporter: str) -> None:
    # On failure the TorchScript exporter prints the whole graph (hundreds of KB) on stdout; the
    # exception says what went wrong, so that print is dropped (and --json's stdout stays one object).
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
        warnings.simplefilter("ignore")  # deprecation and tracer warnings
        if exporter == "torchscript":
            torch.onnx.export(model, (example,), str(path), dynamo=False, opset_version=DEFAULT_OPSET,
                              input_names=["input"], output_names=["output"],
                              dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
        else:
            torch.onnx.export(model, (example,), str(path), dynamo=True, opset_version=DEFAULT_OPSET,
                              input_names=["input"], output_names=["output"],
                              dynamic_shapes=({0: torch.export.Dim("batch")},), verbose=False)


def check_onnx(model: nn.Module, example: torch.Tensor, expected: torch.Tensor) -> tuple[str, str]:
    """Export `model` with a dynamic batch axis, run the ONNX checker and compare onnxruntime's output.

    The graph is exported from the first row of `example` and run on all of it, so a batch size baked
    into the graph fails here rather than in a user's `te predict`.

    Args:
        model: the module in eval mode.
        example: an input batch (at least 2 rows).
        expected: the module's output for `example`.

    Returns:
        (status, detail).

    Raises:
        Exception: what both exporters, the checker or onnxruntime raised (the caller reports it).
    """
    import onnx

    with tempfile.TemporaryDirectory(prefix="te-plugin-check-") as tmp:
        path = Path(tmp) / "model.onnx"
        exporter = "torchscript"
        try:
            _export(model, example[:1], path, exporter)
        except Exception as first:
            exporter = "dynamo"
            try:
                _export(model, example[:1], path, exporter)
            except Exception as second:
                raise RuntimeError(f"neither exporter works: TorchScript: {_line(first)}; dynamo: {_line(second)}") from second
        onnx.checker.check_model(onnx.load(str(path)))
        try:
            import onnxruntime as ort
        except ImportError:
            return PASS, (f"opset {DEFAULT_OPSET} ({exporter} exporter), the ONNX checker accepts it "
                          "(onnxruntime not installed: outputs not compared)")
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        (got,) = session.run(None, {session.get_inputs()[0].name: example.numpy()})
    got_t = torch.from_numpy(got)
    if tuple(got_t.shape) != tuple(expected.shape):
        raise ValueError(f"onnxruntime returns {list(got_t.shape)} for a batch of {len(example)}, PyTorch "
                         f"{list(expected.shape)}: the graph does not take a variable batch size")
    diff = (got_t - expected).abs().max().item()
    scale = max(1.0, expected.abs().max().item())
    # float32 graphs differ from eager PyTorch by accumulated rounding; 1e-3 relative catches real errors.
    if not diff <= 1e-3 * scale:
        raise ValueError(f"onnxruntime's output differs from PyTorch's by up to {diff:.3g} (largest value "
                         f"{scale:.3g}): some operation exports with other semantics")
    return PASS, (f"opset {DEFAULT_OPSET} ({exporter} exporter), dynamic batch, onnxruntime matches PyTorch "
                  f"(max |diff| {diff:.1e})")


def _line(exc: BaseException, limit: int = 160) -> str:
    text = first_line(exc, limit=10_000).split("  [Caused by", 1)[0]  # the TorchScript exporter appends a graph excerpt
    return text if len(text) <= limit else text[: limit - 3] + "..."
