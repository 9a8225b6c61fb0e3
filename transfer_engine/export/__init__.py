"""ONNX export that proves it matches PyTorch: `te export RUN --onnx`.

    >>> from transfer_engine.export import export_onnx                       # doctest: +SKIP
    >>> result = export_onnx("runs/linear", "model.onnx", quantize="int8")   # doctest: +SKIP
    >>> result.report["variants"]["int8"]["top1_agreement"]                  # doctest: +SKIP

Modules: exporter (export_onnx: the whole sequence), builder (the files and checks of one export),
preprocess_graph (resize/crop/normalize as ONNX), quantize (onnxruntime's int8 and fp16 tools), parity
(measures and tolerances), images (check and calibration images). What te export shares with other
commands lies below them in `transfer_engine.onnx`: torch.onnx and opsets (onnx.export), onnxruntime
sessions and providers (onnx.runtime), the te.* metadata_props (onnx.metadata, whose reader this
package still offers: `read_metadata`, `ModelMetadata`, `InputSpec`).

Importing this package imports neither torch nor onnxruntime; the names below load on first use.
"""

from __future__ import annotations

from typing import Any

_LAZY = {
    "export_onnx": "export.exporter", "ExportResult": "export.exporter", "ParityError": "export.exporter",
    "DEFAULT_MIN_SPEEDUP": "core.configs.export", "DEFAULT_SELECTION_SIZE": "core.configs.export",
    "ModelMetadata": "onnx.metadata", "InputSpec": "onnx.metadata", "read_metadata": "onnx.metadata",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"transfer_engine.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'transfer_engine.export' has no attribute {name!r}")


__all__ = sorted(_LAZY)
