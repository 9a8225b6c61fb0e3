"""Quantized variants of an exported model, made by onnxruntime's own tools.

int8: `transfer_engine.onnx.int8` (the quantizer; te export's float fallback that meets the gate is
`export.int8_budget`):
`quant_pre_process` (symbolic shape inference and onnxruntime's basic graph optimizations, which fold
the shape arithmetic of e.g. EfficientNet's "same" padding into constants), then `quantize_static` in
QDQ format, calibrated (min/max) on real training images. QDQ keeps the graph standard ONNX:
onnxruntime fuses it into integer kernels on the CPU, TensorRT reads it directly.

fp16: onnxruntime's float16 converter with float32 inputs and outputs kept (casts at the edges), so a
caller feeds and reads float32 whichever variant it has; meant for GPUs (the CPU provider runs it, slowly).
"""

from __future__ import annotations

import os

from transfer_engine.errors import TEError
from transfer_engine.onnx.runtime import import_ort, quiet_stdout

QUANTIZE_CHOICES = ("int8", "fp16")


class QuantizationError(TEError):
    """onnxruntime's quantization tools failed on the model."""


def convert_fp16(fp32_model: str | os.PathLike, out: str | os.PathLike) -> None:
    """fp16 weights and arithmetic, float32 inputs and outputs.

    Raises:
        QuantizationError: onnxruntime's converter failed.
    """
    import onnx

    import_ort()
    from onnxruntime.transformers.float16 import convert_float_to_float16

    try:
        with quiet_stdout():
            converted = convert_float_to_float16(onnx.load(str(fp32_model)), keep_io_types=True)
    except Exception as exc:
        raise QuantizationError(f"onnxruntime could not convert the model to fp16: {exc}") from exc
    onnx.save(converted, str(out))
