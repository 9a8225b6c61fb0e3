"""The hot-path kernels, each with a pure PyTorch reference.

Every public function here calls the compiled op in `torch.ops.te` when the extension loads (the
dispatcher picks the CPU or CUDA kernel from the tensor's device) and falls back to the reference in
`transfer_engine.ops.reference` otherwise. The tests hold both to the same results.
"""

from __future__ import annotations

import torch

from transfer_engine import extension
from transfer_engine.ops import reference


def _compiled_for(x: torch.Tensor) -> bool:
    """Whether the compiled op has a kernel for `x`'s device: CPU kernels always, CUDA ones only when the
    extension was built with a CUDA toolkit (a pip install without nvcc has none; the reference, which
    runs on any device, then computes there, so CUDA features are still encoded on the GPU)."""
    if extension.load() is None:
        return False
    return x.device.type == "cpu" or extension.info()["cuda_compiled"]


def quantize_rows_int8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize rows to int8 with one float32 scale per row (symmetric, -127..127).

    Args:
        x: [N, D] float32, float16 or bfloat16 rows, on the CPU or a CUDA device.

    Returns:
        (q, scale): q is [N, D] int8, scale is [N] float32; back = q * scale[:, None] is within half a
        step of x, up to float32's rounding: |back - x| <= amax / 254 + INT8_ROUNDING * (|x| + |back|)
        for every value, amax being its row's largest |x| (see INT8_ROUNDING).

    Raises:
        RuntimeError: x is not 2-D floating point, or holds NaN or inf.
    """
    if _compiled_for(x):
        return torch.ops.te.quantize_rows_int8(x)
    return reference.quantize_rows_int8(x)


# The float32 rounding in quantize_rows_int8's promise. With u = 2^-24 (float32's unit roundoff) and
# step = amax / 127 exactly: scale = fl(amax / 127), the code is round(fl(x * fl(127 / amax))) and the
# value comes back as fl(q * scale), four roundings of relative error <= u each. The reciprocal and the
# product put x / step off by <= (2u + u^2)|x / step|, so a value within that of a tie k + 1/2 can get
# the farther code; scale and the decode put the level off by <= (2u + u^2)|q| step. Together
# |back - x| <= step / 2 + (2u + u^2)(|x| + |q| step) <= step / 2 + 3u (|x| + |back|).
INT8_ROUNDING = 3 * 2.0 ** -24

STORED_DTYPES = reference.STORED_DTYPES
row_bytes = reference.row_bytes
split_int8_rows = reference.split_int8_rows

# The compiled ops take the stored dtype as its position in STORED_DTYPES (csrc/stored_rows.h).
STORED_CODES = {name: code for code, name in enumerate(STORED_DTYPES)}


def _stored_code(stored: str) -> int:
    try:
        return STORED_CODES[stored]
    except (KeyError, TypeError):
        raise ValueError(f"stored dtype must be one of {STORED_DTYPES}, got {stored!r}") from None


def encode_rows(x: torch.Tensor, stored: str) -> torch.Tensor:
    """Rows [N, D] -> their stored bytes [N, row_bytes(D, stored)] (uint8); see reference.py for the layout.

    Args:
        x: [N, D] float32, float16 or bfloat16 rows, any strides, on the CPU or a CUDA device.
        stored: "fp32", "fp16" or "int8" (int8 rows carry their own float32 scale after the D codes).

    Returns:
        uint8 [N, row_bytes(D, stored)] on x's device: on CUDA the rows are compressed on the GPU, so
        only the stored bytes need to cross to the host.

    Raises:
        ValueError: an unknown stored dtype.
        RuntimeError: x is not 2-D floating point, or (int8) holds NaN or inf.
    """
    code = _stored_code(stored)
    if _compiled_for(x):
        return torch.ops.te.encode_rows(x, code)
    return reference.encode_rows(x, stored)


def gather_rows(data: torch.Tensor, index: torch.Tensor, dim: int, stored: str,
                out: torch.Tensor | None = None, out_index: torch.Tensor | None = None) -> torch.Tensor:
    """Decode rows `index` of one shard into float32 rows: out[out_index[i]] = decode(row index[i]).

    The compiled CPU kernel decodes with all intra-op threads and only reads `data`, so a read-only
    mmap is fine; every index is checked before the first row is read.

    Args:
        data: the shard's row area, flat uint8 (e.g. torch.frombuffer over an mmap), CPU or CUDA.
        index: 1-D integer row numbers within the shard.
        dim: features per row.
        stored: "fp32", "fp16" or "int8".
        out: optional preallocated float32 [M, dim] output on data's device, rows with unit stride
            (pinned memory welcome); filled in place.
        out_index: which row of `out` each gathered row goes to (default 0..K-1); entries should be
            distinct (with repeats, which of the rows lands there is unspecified).

    Returns:
        `out`, or a new [K, dim] float32 tensor on data's device.

    Raises:
        ValueError: an unknown stored dtype.
        RuntimeError: an index outside the shard (nothing is read past its end), an out_index outside
            `out`, or bad dtypes, shapes or devices.
    """
    code = _stored_code(stored)
    if not _compiled_for(data):
        return reference.gather_rows(data, index, dim, stored, out, out_index)
    if out is None:
        if out_index is not None:
            raise RuntimeError("gather_rows: out_index needs out")
        out = torch.empty((index.numel(), max(dim, 0)), dtype=torch.float32, device=data.device)
    return torch.ops.te.gather_rows(data, index, dim, code, out, out_index)


def dequantize_rows_int8(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Inverse of `quantize_rows_int8`: float32 rows q * scale."""
    return q.to(torch.float32) * scale.to(torch.float32).unsqueeze(1)


__all__ = [
    "INT8_ROUNDING",
    "STORED_CODES",
    "STORED_DTYPES",
    "dequantize_rows_int8",
    "encode_rows",
    "gather_rows",
    "quantize_rows_int8",
    "reference",
    "row_bytes",
    "split_int8_rows",
]
