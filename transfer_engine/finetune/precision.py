"""The precision policy of `te finetune --precision`: what "auto" picks where, and what is refused."""

from __future__ import annotations

import torch

from transfer_engine.core.choices import FINETUNE_PRECISIONS as PRECISIONS
from transfer_engine.core.runtime import cpu_has_native_bf16
from transfer_engine.errors import UsageError


def choose_precision(requested: str, device: torch.device) -> tuple[str, str]:
    """Resolve --precision: auto = bf16 autocast where the GPU or CPU has bf16, fp16 on older GPUs, fp32 elsewhere.

    Returns:
        (the precision, why it was chosen).

    Raises:
        UsageError: an unknown precision, fp16 off CUDA, or bf16 on a CPU that would only emulate it.
    """
    if requested not in PRECISIONS:
        raise UsageError(f"--precision must be one of {', '.join(PRECISIONS)}, got {requested!r}")
    if requested == "fp16" and device.type != "cuda":
        raise UsageError("--precision fp16 needs a CUDA device; on a CPU use bf16 or fp32")
    if requested == "bf16" and device.type == "cpu" and not cpu_has_native_bf16():
        raise UsageError("--precision bf16: this CPU has no native bf16 instructions; use fp32")
    if requested != "auto":
        return requested, "asked for"
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return "bf16", "auto: bf16 autocast (the GPU supports it; no loss scaling needed)"
        return "fp16", "auto: fp16 autocast with loss scaling (the GPU has no bf16)"
    # bf16 autocast trains faster than fp32 with the same loss curve where the CPU has native bf16, and is
    # emulated and several times slower where it has not (docs/finetune.md, "Precision and speed").
    if device.type == "cpu" and cpu_has_native_bf16():
        return "bf16", "auto: bf16 autocast (this CPU has native bf16: faster, same loss curve)"
    return "fp32", "auto: fp32 (this CPU has no native bf16; emulated bf16 is several times slower)"
