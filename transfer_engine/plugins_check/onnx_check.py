"""Export a module to ONNX and check the graph computes what PyTorch computes (one check, shared by
backbones and heads)."""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

from transfer_engine.plugins_check.results import PASS

OPSET = 17


def check_onnx(model: nn.Module, example: torch.Tensor, expected: torch.Tensor) -> tuple[str, str]:
    """Export `model` with a dynamic batch axis, run the ONNX checker and compare onnxruntime's output.

    The graph is traced at batch 1 and run at the batch of `example`, so a batch size baked into the
    graph fails here rather than in a user's `te predict`.

    Args:
        model: the module in eval mode.
        example: an input batch (at least 2 rows).
        expected: the module's output for `example`.

    Returns:
        (status, detail).

    Raises:
        Exception: whatever the exporter, the checker or onnxruntime raised (the caller reports it).
    """
    import onnx

    with tempfile.TemporaryDirectory(prefix="te-plugin-check-") as tmp:
        path = Path(tmp) / "model.onnx"
        with warnings.catch_warnings():
            # The TorchScript exporter is deprecated upstream but quick, and what te's own plugin tests use.
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (example[:1],), str(path), dynamo=False, opset_version=OPSET,
                              input_names=["input"], output_names=["output"],
                              dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
        onnx.checker.check_model(onnx.load(str(path)))
        try:
            import onnxruntime as ort
        except ImportError:
            return PASS, f"opset {OPSET}, the ONNX checker accepts it (onnxruntime not installed: outputs not compared)"
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        (got,) = session.run(None, {"input": example.numpy()})
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
    return PASS, f"opset {OPSET}, dynamic batch, onnxruntime matches PyTorch (max |diff| {diff:.1e})"
