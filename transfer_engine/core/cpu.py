"""What this CPU can do, as far as te's numerics depend on it (no torch, no numpy).

Two things differ between the x86 machines te runs on and change results, not only speed:

- int8 dot products. onnxruntime's U8S8 integer kernels multiply uint8 activations by int8 weights.
  With VNNI (AVX512-VNNI, or AVX-VNNI on recent client chips) each product is accumulated in int32.
  Without it (AVX2, and AVX-512 without VNNI) the kernel uses vpmaddubsw, which adds pairs of
  products into int16 with saturation: 2 x 255 x 127 = 64,770 does not fit, so 8-bit weights can
  saturate and the model's outputs change. 7-bit weights (onnxruntime's `reduce_range`) keep every
  pair within 2 x 255 x 64 = 32,640 < 32,767: exact on both families.
- bf16. Native on AVX512-BF16 / AMX, emulated (many times slower) elsewhere (docs/finetune.md,
  "Precision and speed").

`int8_family()` names the class of machines on which an int8 model gives the same integer results;
te export records it with every int8 model and te predict compares it with the machine it runs on.
"""

from __future__ import annotations

import functools
import platform

# The flags /proc/cpuinfo spells for what te cares about (Linux names).
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
REPORTED_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8",
                  "amx_bf16")

# int8 families: machines of one family compute the same int8 results.
X86_VNNI = "x86-vnni"          # int32 accumulation of u8 x s8 products: 8-bit weights are exact
X86_NO_VNNI = "x86-no-vnni"    # int16 pair sums (AVX2, AVX-512 without VNNI): 8-bit weights can saturate
ARM64 = "arm64"
OTHER = "other"
INT8_FAMILIES = (X86_VNNI, X86_NO_VNNI, ARM64, OTHER)


@functools.lru_cache(maxsize=1)
def cpu_info() -> dict[str, str]:
    """The fields of /proc/cpuinfo, first core's value of each (empty where it is not readable)."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                key = key.strip()
                if key and key not in fields:
                    fields[key] = value.strip()
    except OSError:
        pass
    return fields


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as Linux names them ("flags" on x86, "Features" on ARM)."""
    info = cpu_info()
    return frozenset((info.get("flags") or info.get("Features") or "").split())


def cpu_model() -> str:
    """The CPU's model name ("" when unknown)."""
    return cpu_info().get("model name") or platform.processor() or ""


def int8_family(flags: frozenset[str] | None = None, machine: str | None = None) -> str:
    """The int8 family of this CPU (or of the given flags and `platform.machine()` value)."""
    flags = cpu_flags() if flags is None else flags
    machine = (platform.machine() if machine is None else machine).lower()
    if machine in ("x86_64", "amd64", "i386", "i686", "x86"):
        return X86_VNNI if any(f in flags for f in VNNI_FLAGS) else X86_NO_VNNI
    if machine in ("aarch64", "arm64"):
        return ARM64
    return OTHER


def has_native_bf16(flags: frozenset[str] | None = None) -> bool:
    """True where bf16 arithmetic is native (AVX512-BF16 or AMX), from the CPU flags."""
    flags = cpu_flags() if flags is None else flags
    return any(f in flags for f in BF16_FLAGS)


def describe() -> dict[str, object]:
    """What te records about the CPU a check ran on: model, machine, int8 family and the relevant flags."""
    flags = cpu_flags()
    return {"model": cpu_model(), "machine": platform.machine(), "int8_family": int8_family(),
            "flags": sorted(f for f in REPORTED_FLAGS if f in flags)}
