"""Reference implementations of the C++/CUDA ops: slow, obvious, and the definition of correct.

They perform the same float operations in the same order as the kernels in csrc/, so results agree
bit for bit (see csrc/quantize.cpp for the formula).
"""

from __future__ import annotations

import torch


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

STORED_DTYPES = ("fp32", "fp16", "int8")


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
    raw = raw.contiguous()
    if stored == "fp32":
        return raw.view(torch.float32).reshape(n, dim).clone()
    if stored == "fp16":
        return raw.view(torch.float16).reshape(n, dim).to(torch.float32)
    if stored == "int8":
        q = raw[:, :dim].contiguous().view(torch.int8).to(torch.float32)
        scale = raw[:, dim:].contiguous().view(torch.float32).reshape(n, 1)
        return q * scale
    raise ValueError(f"stored dtype must be one of {STORED_DTYPES}, got {stored!r}")


def gather_rows(data: torch.Tensor, index: torch.Tensor, dim: int, stored: str,
                out: torch.Tensor | None = None, out_index: torch.Tensor | None = None) -> torch.Tensor:
    """Decode rows `index` of a shard's bytes into float32: out[out_index[i]] = row index[i].

    `data` is the shard's row area as a flat uint8 tensor (e.g. torch.frombuffer over an mmap).
    """
    width = row_bytes(dim, stored)
    if data.dim() != 1 or data.dtype != torch.uint8:
        raise RuntimeError(f"gather_rows: expected flat uint8 shard bytes, got {data.dtype} with shape {tuple(data.shape)}")
    n_rows = data.numel() // width
    index = index.to(torch.int64)
    if index.numel() and (int(index.min()) < 0 or int(index.max()) >= n_rows):
        bad = int(index[(index < 0) | (index >= n_rows)][0])
        raise RuntimeError(f"gather_rows: row {bad} is out of range for a shard of {n_rows} rows")
    rows = decode_rows(data[: n_rows * width].view(n_rows, width)[index], dim, stored)
    if out is None:
        if out_index is not None:
            raise RuntimeError("gather_rows: out_index needs out")
        return rows
    if out_index is None:
        out_index = torch.arange(index.numel())
    out[out_index.to(torch.int64)] = rows.to(out.device)
    return out
