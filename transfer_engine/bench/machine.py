"""What machine a benchmark ran on, and the ceilings it could reach, measured in the same run.

A ratio against a baseline says how much faster te is; a ceiling says how much room was left. The
ceilings here are the ones the benchmarks are bounded by: dense matrix multiply (extraction and head
training are matmul/convolution bound) in fp32 and bf16, and memory copy bandwidth (the cache gather is
memory bound).
"""

from __future__ import annotations

import os
import platform
import sys
import time
from importlib import metadata
from typing import Any

from transfer_engine.core import cpu

# CPU features that decide which kernels run (ours and oneDNN's).
_INTERESTING_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16",
                      "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8", "asimd", "sve")


def _memory_gib() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def describe_machine() -> dict[str, Any]:
    """CPU model, usable cores, instruction-set flags, memory, GPU, and the library versions.

    Returns:
        A JSON-able dict (results.json's "machine").
    """
    import torch

    flags = cpu.cpu_flags()
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    gpu = None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        gpu = {"name": props.name, "memory_gib": round(props.total_memory / 2**30, 1),
               "capability": f"{props.major}.{props.minor}", "count": torch.cuda.device_count()}
    providers: list[str] = []
    try:
        import onnxruntime

        providers = onnxruntime.get_available_providers()
    except ImportError:
        pass
    from transfer_engine import extension
    from transfer_engine._version import __version__

    return {
        "cpu": cpu.cpu_model() or platform.machine(),
        "arch": platform.machine(),
        "cores": usable,
        "torch_threads": torch.get_num_threads(),
        "flags": [f for f in _INTERESTING_FLAGS if f in flags],
        "memory_gib": _memory_gib(),
        "gpu": gpu,
        "os": platform.platform(),
        "python": sys.version.split()[0],
        "versions": {
            "transfer_engine": __version__,
            "torch": torch.__version__,
            "torchvision": _version("torchvision"),
            "onnx": _version("onnx"),
            "onnxruntime": _version("onnxruntime") or _version("onnxruntime-gpu"),
            "numpy": _version("numpy"),
        },
        "onnxruntime_providers": providers,
        "extension": {k: v for k, v in extension.info().items() if k != "path"},
    }


def _best_rate(fn, work: float, seconds: float) -> float:
    """Best of repeated runs of `fn` (work units per second) within about `seconds`."""
    fn()  # warm up: first calls pay for allocation and kernel selection
    best = 0.0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        t = time.perf_counter()
        fn()
        best = max(best, work / (time.perf_counter() - t))
    return best


def measure_ceilings(seconds: float = 1.0, size: int = 2048) -> dict[str, float]:
    """Peak rates of this machine, measured now, on all of torch's threads.

    Args:
        seconds: time spent on each measurement.
        size: side of the square matrices multiplied.

    Returns:
        {"matmul_fp32_gflops", "matmul_bf16_gflops", "memcpy_gbps"}: bf16 only where the CPU has it
        natively (AVX512-BF16, AMX); elsewhere torch emulates it far slower than fp32, which is no
        ceiling of anything te runs.
    """
    import torch

    out: dict[str, float] = {}
    flops = 2.0 * size**3
    dtypes = [("fp32", torch.float32)] + ([("bf16", torch.bfloat16)] if cpu.has_native_bf16() else [])
    for name, dtype in dtypes:
        try:
            a = torch.randn(size, size).to(dtype)
            b = torch.randn(size, size).to(dtype)
            c = torch.empty(size, size, dtype=dtype)
            out[f"matmul_{name}_gflops"] = round(_best_rate(lambda: torch.mm(a, b, out=c), flops, seconds) / 1e9, 1)
        except RuntimeError:  # a dtype this build cannot multiply on this CPU
            continue
    src = torch.empty(256 * 2**20, dtype=torch.uint8).fill_(1)
    dst = torch.empty_like(src)
    # A copy reads and writes each byte: count both, as the gather benchmark does.
    out["memcpy_gbps"] = round(_best_rate(lambda: dst.copy_(src), 2.0 * src.numel(), seconds) / 1e9, 1)
    return out
