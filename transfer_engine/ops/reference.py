"""Reference implementations of the C++/CUDA ops: slow, obvious, and the definition of correct.

They perform the same float operations in the same order as the kernels in csrc/, so results agree
bit for bit (see csrc/quantize.cpp for the formula).
"""

from __future__ import annotations

import torch

from transfer_engine.core.choices import STORED_DTYPES  # positions are the compiled ops' codes


def _check_rows(x: torch.Tensor, op: str) -> None:
    if x.dim() != 2:
        raise RuntimeError(f"{op}: expected a 2-D tensor of rows [N, D], got {x.dim()}-D with shape {tuple(x.shape)}")
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise RuntimeError(f"{op}: expected float32, float16 or bfloat16 rows, got {x.dtype}")


def quantize_rows_int8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8 quantization: scale = amax / 127, q = round(x * (127 / amax))."""
    _check_rows(x, "quantize_rows_int8")
    x = x.to(torch.float32)
    finite = torch.isfinite(x).all(dim=1)
    if not bool(finite.all()):
        bad = int((~finite).nonzero()[0, 0])
        raise RuntimeError(f"quantize_rows_int8: row {bad} holds NaN or inf")
    amax = x.abs().amax(dim=1) if x.shape[1] else x.new_zeros(x.shape[0])
    zero = amax == 0
    safe = torch.where(zero, torch.ones_like(amax), amax)
    inv = torch.tensor(127.0, dtype=torch.float32) / safe
    q = torch.round(x * inv.unsqueeze(1)).clamp_(-127, 127).to(torch.int8)
    q[zero] = 0
    scale = torch.where(zero, torch.zeros_like(amax), amax / torch.tensor(127.0, dtype=torch.float32))
    return q, scale


# -- row codecs: the byte layout of one stored feature row --------------------------------------------
# fp32: D little-endian float32 | fp16: D float16 | int8: D int8 codes, then the row's float32 scale.
# Fixed width per (D, stored dtype), so row r of a shard starts at r * row_bytes: no index per row.



def row_bytes(dim: int, stored: str) -> int:
    """Bytes one stored row of `dim` features occupies."""
    if stored == "fp32":
        return 4 * dim
    if stored == "fp16":
        return 2 * dim
    if stored == "int8":
        return dim + 4
    raise ValueError(f"stored dtype must be one of {STORED_DTYPES}, got {stored!r}")


def encode_rows(x: torch.Tensor, stored: str) -> torch.Tensor:
    """Rows [N, D] (float) -> their stored bytes [N, row_bytes(D, stored)] (uint8)."""
    _check_rows(x, "encode_rows")
    n, d = x.shape
    if stored == "fp32":
        return x.to(torch.float32).contiguous().view(torch.uint8).reshape(n, 4 * d)
    if stored == "fp16":
        return x.to(torch.float16).contiguous().view(torch.uint8).reshape(n, 2 * d)
    if stored == "int8":
        q, scale = quantize_rows_int8(x)
        return torch.cat([q.view(torch.uint8), scale.contiguous().view(torch.uint8).reshape(n, 4)], dim=1)
    raise ValueError(f"stored dtype must be one of {STORED_DTYPES}, got {stored!r}")


def decode_rows(raw: torch.Tensor, dim: int, stored: str) -> torch.Tensor:
    """Stored bytes [N, row_bytes] (uint8) -> float32 rows [N, dim]."""
    n = raw.shape[0]
    # Fresh, contiguous copies: a view into a mapped file (or a single row of one) may start at any
    # byte, and viewing bytes as float32 / float16 needs an aligned start.
    raw = raw.clone(memory_format=torch.contiguous_format)
    if stored == "fp32":
        return raw.view(torch.float32).reshape(n, dim)
    if stored == "fp16":
        return raw.view(torch.float16).reshape(n, dim).to(torch.float32)
    if stored == "int8":
        q, scale = split_int8_rows(raw, dim)
        return q.to(torch.float32) * scale.reshape(n, 1)
    raise ValueError(f"stored dtype must be one of {STORED_DTYPES}, got {stored!r}")


def split_int8_rows(raw: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stored int8 rows [N, dim + 4] (uint8) -> (codes int8 [N, dim], scales float32 [N]): the layout
    `encode_rows` writes, taken apart without decoding (q * scale is the row `decode_rows` gives)."""
    n = raw.shape[0]
    if raw.dim() != 2 or raw.dtype != torch.uint8 or raw.shape[1] != row_bytes(dim, "int8"):
        raise ValueError(f"expected stored int8 rows uint8 [N, {row_bytes(dim, 'int8')}], got {raw.dtype} "
                         f"{list(raw.shape)}")
    codes = raw[:, :dim].clone(memory_format=torch.contiguous_format).view(torch.int8)
    # a fresh copy: the scale bytes start at any offset, and viewing them as float32 needs an aligned start
    scales = raw[:, dim:].clone(memory_format=torch.contiguous_format).view(torch.float32).reshape(n)
    return codes, scales


def _check_gather_args(data: torch.Tensor, index: torch.Tensor, dim: int, out: torch.Tensor | None,
                       out_index: torch.Tensor | None) -> None:
    """The argument contract of gather_rows, worded as the kernels word it (csrc/stored_rows.h)."""
    if dim < 1:
        raise RuntimeError(f"gather_rows: expected dim >= 1, got {dim}")
    if data.dim() != 1 or data.dtype != torch.uint8:
        raise RuntimeError(f"gather_rows: expected flat uint8 shard bytes, got {data.dtype} with shape {tuple(data.shape)}")
    if index.dim() != 1 or index.dtype.is_floating_point or index.dtype.is_complex or index.dtype == torch.bool:
        raise RuntimeError(f"gather_rows: expected a 1-D integer index, got {index.dtype} with shape {tuple(index.shape)}")
    if out is None:
        if out_index is not None:
            raise RuntimeError("gather_rows: out_index needs out")
        return
    if out.dim() != 2 or out.dtype != torch.float32 or out.shape[1] != dim:
        raise RuntimeError(f"gather_rows: expected out to be float32 [M, {dim}], got {out.dtype} with shape {tuple(out.shape)}")
    if out.shape[1] > 1 and out.stride(1) != 1:
        raise RuntimeError(f"gather_rows: expected out rows with unit stride, got strides {out.stride()}")
    if out.device != data.device:
        raise RuntimeError(f"gather_rows: expected out on the device of data ({data.device}), got {out.device}")
    if out_index is None:
        if out.shape[0] < index.numel():
            raise RuntimeError(f"gather_rows: out has {out.shape[0]} rows, fewer than the {index.numel()} rows "
                               "gathered; pass out_index to place them")
    elif out_index.dim() != 1 or out_index.numel() != index.numel():
        raise RuntimeError(f"gather_rows: expected out_index with one entry per index ({index.numel()}), "
                           f"got {out_index.numel()}")


def _first_out_of_range(values: torch.Tensor, limit: int) -> int | None:
    bad = values[(values < 0) | (values >= limit)]
    return int(bad[0]) if bad.numel() else None


def gather_rows(data: torch.Tensor, index: torch.Tensor, dim: int, stored: str,
                out: torch.Tensor | None = None, out_index: torch.Tensor | None = None) -> torch.Tensor:
    """Decode rows `index` of a shard's bytes into float32: out[out_index[i]] = row index[i].

    `data` is the shard's row area as a flat uint8 tensor (e.g. torch.frombuffer over an mmap); `out`,
    when given, is float32 [M, dim] on data's device, and `out_index` (default 0..K-1) says which of its
    rows receive the gathered ones. Every index is checked before any row is read.
    """
    width = row_bytes(dim, stored)
    _check_gather_args(data, index, dim, out, out_index)
    n_rows = data.numel() // width
    index = index.to(torch.int64)
    bad = _first_out_of_range(index, n_rows)
    if bad is not None:
        raise RuntimeError(f"gather_rows: row {bad} is out of range for a shard of {n_rows} rows")
    if out is None:
        return decode_rows(data[: n_rows * width].view(n_rows, width)[index], dim, stored)
    out_index = torch.arange(index.numel()) if out_index is None else out_index.to(torch.int64)
    bad = _first_out_of_range(out_index, out.shape[0])
    if bad is not None:
        raise RuntimeError(f"gather_rows: out_index {bad} is out of range for out with {out.shape[0]} rows")
    out[out_index.to(out.device)] = decode_rows(data[: n_rows * width].view(n_rows, width)[index], dim, stored)
    return out
