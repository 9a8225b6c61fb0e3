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


STORED_DTYPES = reference.STORED_DTYPES
row_bytes = reference.row_bytes


def encode_rows(x: torch.Tensor, stored: str) -> torch.Tensor:
    """Rows [N, D] -> their stored bytes [N, row_bytes(D, stored)] (uint8); see reference.py for the layout.

    int8 rows carry their own float32 scale after the D codes.
    """
    return reference.encode_rows(x, stored)


def gather_rows(data: torch.Tensor, index: torch.Tensor, dim: int, stored: str,
                out: torch.Tensor | None = None, out_index: torch.Tensor | None = None) -> torch.Tensor:
    """Decode rows `index` of one shard into float32 rows: out[out_index[i]] = decode(row index[i]).

    Args:
        data: the shard's row area, flat uint8 (e.g. torch.frombuffer over an mmap), CPU or CUDA.
        index: int64 row numbers within the shard.
        dim: features per row.
        stored: "fp32", "fp16" or "int8".
        out: optional preallocated float32 [M, dim] output (pinned memory welcome); filled in place.
        out_index: where each gathered row goes in `out` (default 0..K-1).

    Returns:
        `out`, or a new [K, dim] float32 tensor.

    Raises:
        RuntimeError: an index outside the shard (nothing is read past its end), bad dtypes or shapes.
    """
    return reference.gather_rows(data, index, dim, stored, out, out_index)


def dequantize_rows_int8(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Inverse of `quantize_rows_int8`: float32 rows q * scale."""
    return q.to(torch.float32) * scale.to(torch.float32).unsqueeze(1)


__all__ = [
    "STORED_DTYPES",
    "dequantize_rows_int8",
    "encode_rows",
    "gather_rows",
    "quantize_rows_int8",
    "reference",
    "row_bytes",
]
