"""ONNX export that proves it matches PyTorch: `te export RUN --onnx`.

    >>> from transfer_engine.export import export_onnx                       # doctest: +SKIP
    >>> result = export_onnx("runs/linear", "model.onnx", quantize="int8")   # doctest: +SKIP
    >>> result.report["variants"]["int8"]["top1_agreement"]                  # doctest: +SKIP

Modules: exporter (export_onnx: the whole sequence), builder (the files and checks of one export),
onnx_export (torch.onnx, exporter choice, opsets), preprocess_graph (resize/crop/normalize as ONNX),
quantize (onnxruntime's int8 and fp16 tools), parity (measures and tolerances), images (check and
calibration images), metadata (te.* metadata_props), runtime (onnxruntime sessions and providers).

Importing this package imports neither torch nor onnxruntime; the names below load on first use.
"""

from __future__ import annotations

from typing import Any

_LAZY = {
    "export_onnx": "exporter", "ExportResult": "exporter", "ParityError": "exporter",
    "ModelMetadata": "metadata", "InputSpec": "metadata", "read_metadata": "metadata",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"transfer_engine.export.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'transfer_engine.export' has no attribute {name!r}")


__all__ = sorted(_LAZY)
