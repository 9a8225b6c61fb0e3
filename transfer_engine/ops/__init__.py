"""The hot-path kernels, each with a pure PyTorch reference.

Every public function here calls the compiled op in `torch.ops.te` when the extension loads (the
dispatcher picks the CPU or CUDA kernel from the tensor's device) and falls back to the reference in
`transfer_engine.ops.reference` otherwise. The tests hold both to the same results.
"""

from __future__ import annotations

import torch

from transfer_engine import extension
from transfer_engine.ops import reference


def quantize_rows_int8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize rows to int8 with one float32 scale per row (symmetric, -127..127).

    Args:
        x: [N, D] float32, float16 or bfloat16 rows, on the CPU or a CUDA device.

    Returns:
        (q, scale): q is [N, D] int8, scale is [N] float32; q * scale[:, None] approximates x.

    Raises:
        RuntimeError: x is not 2-D floating point, or holds NaN or inf.
    """
    if extension.load() is not None:
        return torch.ops.te.quantize_rows_int8(x)
    return reference.quantize_rows_int8(x)


def dequantize_rows_int8(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Inverse of `quantize_rows_int8`: float32 rows q * scale."""
    return q.to(torch.float32) * scale.to(torch.float32).unsqueeze(1)


__all__ = ["quantize_rows_int8", "dequantize_rows_int8", "reference"]
