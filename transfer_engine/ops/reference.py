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
