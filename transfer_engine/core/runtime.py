"""Where and how a command computes: device, precision, autocast, and the relaunch under torchrun (the
process group itself: `transfer_engine.core.distributed`).

Every command that runs a model (extract, train, finetune) resolves these the same way, so they live
here rather than in one command's package. torch is imported inside the functions: the CLI imports this
module (for `relaunch_under_torchrun`) before it knows whether torch will be needed.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys

from transfer_engine.errors import UsageError


def resolve_device(device: str):
    """"auto" picks CUDA when a GPU is visible; "cuda" without one is a usage error."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is visible (torch.cuda.is_available() is False); use --device cpu")
    return torch.device(device)


def device_of_this_rank(device, world: int):
    """`device`, or under torchrun with CUDA, this process's own GPU (LOCAL_RANK), made the current
    device: one GPU per rank."""
    import torch

    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    return device


def autocast_context(device, precision: str):
    """The autocast context for a compute precision ("fp32" is a no-op)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    import torch

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    return torch.autocast(device.type, dtype=dtype)


@contextlib.contextmanager
def torch_threads(threads: int | None):
    """torch's intra-op threads set to `threads` for the block (None: left alone), restored after it.

    For work that runs beside another thread pool: torch spreads each op over one OpenMP thread per
    core, which oversubscribes the machine when onnxruntime's pool (sized when its session opened) or
    other threads want the same cores.
    """
    import torch

    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if threads is not None:
            torch.set_num_threads(before)


def cpu_has_native_bf16() -> bool:
    """True on CPUs with bf16 instructions (AVX512-BF16 or AMX), where bf16 autocast pays off."""
    import torch

    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def relaunch_under_torchrun(nproc: int) -> int:
    """Run this same command (sys.argv, less --nproc) under torchrun with `nproc` processes on this
    machine; returns its exit code."""
    cleaned, skip = [], False
    for a in sys.argv[1:]:
        if skip:
            skip = False
            continue
        if a == "--nproc":
            skip = True
            continue
        if a.startswith("--nproc="):
            continue
        cleaned.append(a)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "transfer_engine", *cleaned]
    return subprocess.call(cmd)
