"""Quantized variants of an exported model, made by onnxruntime's own tools.

int8: `quant_pre_process` (symbolic shape inference and onnxruntime's basic graph optimizations, which
fold the shape arithmetic of e.g. EfficientNet's "same" padding into constants), then `quantize_static`
in QDQ format, weights int8 per output channel, activations uint8, with ranges calibrated (min/max) on
real training images. QDQ keeps the graph standard ONNX: onnxruntime fuses it into integer kernels on
the CPU, TensorRT reads it directly.

fp16: onnxruntime's float16 converter with float32 inputs and outputs kept (casts at the edges), so a
caller feeds and reads float32 whichever variant it has; meant for GPUs (the CPU provider runs it, slowly).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from transfer_engine.errors import TEError
from transfer_engine.export.runtime import import_ort, quiet_stdout

QUANTIZE_CHOICES = ("int8", "fp16")


class QuantizationError(TEError):
    """onnxruntime's quantization tools failed on the model."""


def quantize_int8(fp32_model: str | os.PathLike, out: str | os.PathLike, calibration: Iterable[np.ndarray],
                  input_name: str = "images") -> None:
    """Static int8 quantization (QDQ, per-channel weights) calibrated on `calibration` batches.

    Args:
        fp32_model: the fp32 ONNX file (float32 NCHW input `input_name`).
        out: where to write the int8 model.
        calibration: batches of normalized float32 images [n, 3, S, S] from the training split.
        input_name: the model's input name.

    Raises:
        QuantizationError: onnxruntime's tools failed.
    """
    import_ort()
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class _Reader(CalibrationDataReader):
        def __init__(self, batches: Iterable[np.ndarray]) -> None:
            self._batches: Iterator[np.ndarray] = iter(batches)

        def get_next(self):
            batch = next(self._batches, None)
            return None if batch is None else {input_name: np.ascontiguousarray(batch, dtype=np.float32)}

    with tempfile.TemporaryDirectory(prefix="te-quant-", dir=Path(out).parent) as tmp:
        prepared = str(Path(tmp) / "prepared.onnx")
        try:
            with quiet_stdout():
                quant_pre_process(str(fp32_model), prepared)
                quantize_static(prepared, str(out), _Reader(calibration), quant_format=QuantFormat.QDQ,
                                per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                                calibrate_method=CalibrationMethod.MinMax)
        except TEError:
            raise
        except Exception as exc:
            text = str(exc).strip()
            first = text.splitlines()[0] if text else type(exc).__name__
            raise QuantizationError(f"onnxruntime could not quantize the model to int8: {first[:300]}") from exc


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
