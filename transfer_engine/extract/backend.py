"""`--backend auto` and `--precision auto`: the fastest way to compute features that stays within bound.

Candidates are (backend, precision) pairs this machine supports: PyTorch fp32 always; PyTorch bf16 on
CPUs with native bf16 instructions; fp16 and bf16 autocast on CUDA; onnxruntime fp32 (CPU provider, or
CUDA with onnxruntime-gpu) when it is installed. On a calibration batch of the user's own images, each
candidate's features are compared row by row with PyTorch fp32 and timed; the fastest candidate within
its bound wins:

- a reduced precision (bf16, fp16) makes its own feature space, and must keep every row's cosine
  >= PRECISION_BOUND (the cache's int8 storage bound);
- onnxruntime fp32 claims the *same* space as PyTorch fp32 (the backend is provenance, not identity:
  a cache filled on one machine with onnxruntime and on another with PyTorch stays one space), so it
  must agree far tighter: cosine >= SAME_SPACE_BOUND on every row (what it reaches on real images for
  every built-in family: docs/extract.md, "Execution backend"; tests/extract/test_backend_parity.py), or
  it is not used.

The backbone is exported to ONNX once per (backbone, weights digest, input size, opset) and kept in the
cache as an artifact (`onnx.backbone`: content-addressed, checked when loaded and by `te cache verify`). A
backbone that cannot be exported, or that onnxruntime cannot run, falls back to PyTorch with the reason. The decision
(and why, with the timings) is remembered in the cache per backbone, requests and machine (CPU model
and features, torch and onnxruntime versions, GPU), so a re-run does no calibration.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from transfer_engine.backbones.calibration import min_row_cosine
from transfer_engine.core.runtime import cpu_has_native_bf16
from transfer_engine.errors import TEError, UsageError, first_line
from transfer_engine.extract.engines import BACKEND_CHOICES, OrtEngine, TorchEngine
from transfer_engine.extract.pipeline import PRECISIONS
from transfer_engine.onnx.backbone import exported_backbone, forget_exported
from transfer_engine.onnx.runtime import ort_available

PRECISION_BOUND = 0.999
SAME_SPACE_BOUND = 0.99999
_DECISION_VERSION = 1  # bump when the way of deciding changes: remembered decisions are then made again


@dataclass(frozen=True)
class Candidate:
    backend: str
    precision: str

    @property
    def label(self) -> str:
        return f"{self.backend} {self.precision}"

    @property
    def bound(self) -> float:
        """The cosine every row must keep against PyTorch fp32."""
        return SAME_SPACE_BOUND if self.precision == "fp32" else PRECISION_BOUND


REFERENCE = Candidate("torch", "fp32")


@dataclass
class Choice:
    """How a run computes its features, and why.

    Attributes:
        backend: "torch" or "onnxruntime".
        precision: the compute precision (part of the feature space).
        reason: one line for the user ("auto: onnxruntime fp32 <rate> img/s, torch fp32 <rate> ...").
        measured: per candidate label: {"images_per_second", "min_cosine", "bound", "ok", "note"}.
        onnx: the exported backbone (an artifact of the cache) when backend is onnxruntime.
    """

    backend: str
    precision: str
    reason: str
    measured: dict[str, dict[str, Any]] = field(default_factory=dict)
    onnx: Path | None = None

    def fields(self) -> dict[str, Any]:
        """The decision as plain data (what the cache remembers, and what rank 0 sends the other nodes)."""
        return {k: v for k, v in asdict(self).items() if k != "onnx"}

    def engine(self, backbone, device: torch.device, threads: int | None = None):
        """The engine that computes features this way."""
        if self.backend == "onnxruntime":
            return OrtEngine(self.onnx, device, threads)
        return TorchEngine(backbone, device, self.precision)


def candidates(device: torch.device, backend: str = "auto", precision: str = "auto") -> list[Candidate]:
    """The (backend, precision) pairs to try on `device` for these requests, PyTorch fp32 first.

    Raises:
        UsageError: an unknown backend or precision, fp16 on a CPU, onnxruntime in a precision it does not
            compute, or onnxruntime asked for where it is not installed (or has no provider for the device).
    """
    if backend not in BACKEND_CHOICES:
        raise UsageError(f"--backend must be one of {', '.join(BACKEND_CHOICES)}, got {backend!r}")
    if precision != "auto" and precision not in PRECISIONS:
        raise UsageError(f"--precision must be auto or one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp16" and device.type == "cpu":
        raise UsageError("--precision fp16 needs a CUDA device (CPUs compute bf16, not fp16, fast); use bf16")
    has_ort = ort_available(device)
    if backend == "onnxruntime":
        if precision not in ("auto", "fp32"):
            raise UsageError(f"--backend onnxruntime computes fp32 (--precision {precision} is PyTorch's "
                             "autocast); use --precision fp32 or --backend torch")
        if not has_ort:
            raise UsageError(f"--backend onnxruntime: onnxruntime with a {device.type.upper()} provider is not "
                             "installed (pip install 'transfer-engine[cpu]', or '[gpu]': onnxruntime-gpu)")
    pool = [REFERENCE]
    if device.type == "cuda":
        pool += [Candidate("torch", "fp16")]
        if torch.cuda.is_bf16_supported():
            pool.append(Candidate("torch", "bf16"))
    elif cpu_has_native_bf16() or precision == "bf16":  # asked for: honoured even where it is emulated
        pool.append(Candidate("torch", "bf16"))
    if has_ort:
        pool.append(Candidate("onnxruntime", "fp32"))
    return [c for c in pool if backend in ("auto", c.backend) and precision in ("auto", c.precision)]


def choose(backend: str, precision: str, backbone, device: torch.device, cache, images: Callable[[], Any],
           *, threads: int | None = None) -> Choice:
    """Resolve `--backend` and `--precision` to one way of computing features, and say why.

    Args:
        backend, precision: the requests ("auto" or a concrete value).
        backbone: the built backbone.
        device: where features are computed.
        cache: the open `FeatureCache` (remembers the decision, keeps the exported model).
        images: returns the calibration batch (float32 [N, 3, S, S]) or None when no image decodes;
            called only when a calibration is needed.
        threads: onnxruntime intra-op threads (None: one per core).

    Raises:
        UsageError: see `candidates`.
        TEError: onnxruntime was asked for and cannot export or run this backbone, or its features are
            not PyTorch's (cosine below SAME_SPACE_BOUND).
    """
    options = candidates(device, backend, precision)
    if len(options) == 1 and options[0].backend == "torch":  # nothing to compare it with
        only = options[0]
        if backend == "auto" and precision == "auto":
            return Choice(only.backend, only.precision, f"auto: no other backend or precision on this {device.type}")
        return Choice(only.backend, only.precision, "asked for")
    key = _decision_key(backbone, device, backend, precision)
    remembered = cache.index.meta(key)
    if remembered:
        choice = Choice(**json.loads(remembered))
        choice.reason += " (remembered)"
        if choice.backend == "onnxruntime":
            choice.onnx = exported_backbone(backbone, cache)
        return choice
    batch = images()
    if batch is None:
        if backend == "onnxruntime":
            raise TEError("--backend onnxruntime: no image of the data set decodes, so its features cannot be "
                          "checked against PyTorch's")
        return Choice("torch", "fp32", "auto: no decodable image to calibrate on")
    choice = _calibrate(options, backbone, device, cache, batch, threads)
    if backend == "onnxruntime" and choice.backend != "onnxruntime":
        raise TEError(f"--backend onnxruntime: {choice.measured['onnxruntime fp32']['note']}; use --backend torch")
    with cache.lock, cache.index.write():
        cache.index.set_meta(key, json.dumps(choice.fields(), sort_keys=True))
    return choice


def adopt(fields: dict[str, Any], backbone, cache) -> Choice:
    """Another process's decision (`Choice.fields()`), ready to run here: the exported model, when it
    is onnxruntime, is taken from (or exported into) `cache`."""
    choice = Choice(**fields)
    if choice.backend == "onnxruntime":
        choice.onnx = exported_backbone(backbone, cache)
    return choice


def _calibrate(options: list[Candidate], backbone, device: torch.device, cache, batch: torch.Tensor,
               threads: int | None) -> Choice:
    """Run every candidate on the batch: features against PyTorch fp32, then a timed pass."""
    measured: dict[str, dict[str, Any]] = {}
    reference_engine = TorchEngine(backbone, device, "fp32")
    reference, speed = _timed(reference_engine, batch)
    if REFERENCE in options:
        measured[REFERENCE.label] = {"images_per_second": speed, "min_cosine": 1.0, "bound": 1.0, "ok": True,
                                     "note": "reference"}
    onnx: Path | None = None
    for candidate in options:
        if candidate == REFERENCE:
            continue
        entry: dict[str, Any] = {"bound": candidate.bound}
        measured[candidate.label] = entry
        try:
            if candidate.backend == "onnxruntime":
                onnx = exported_backbone(backbone, cache)
                engine = OrtEngine(onnx, device, threads)
            else:  # a reduced precision: PyTorch fp32 is the reference itself
                engine = TorchEngine(backbone, device, candidate.precision)
            features, entry["images_per_second"] = _timed(engine, batch)
        except Exception as exc:  # cannot export, cannot load or run: this candidate is out, with the reason
            entry.update(ok=False, note=f"failed: {first_line(exc, 200)}")
            continue
        cos = min_row_cosine(reference, features.to(reference.device))
        entry.update(min_cosine=round(cos, 7), ok=cos >= candidate.bound)
        entry["note"] = f"min cosine {cos:.6f} {'>=' if entry['ok'] else '<'} {candidate.bound}"
    kept = [label for label, m in measured.items() if m.get("ok")]
    if not kept:
        best = REFERENCE  # only when PyTorch fp32 itself was excluded by the request
        why = "; ".join(f"{label}: {m['note']}" for label, m in measured.items())
        choice = Choice(best.backend, best.precision, f"auto: torch fp32, no candidate within bound ({why})", measured)
    else:
        label = max(kept, key=lambda k: measured[k]["images_per_second"])
        best = Candidate(*label.split(" "))
        others = ", ".join(f"{k} {m['images_per_second']:.1f} img/s" if m.get("ok") else f"{k} ({m['note']})"
                           for k, m in measured.items() if k != label)
        choice = Choice(best.backend, best.precision,
                        f"auto: {label} {measured[label]['images_per_second']:.1f} img/s, {measured[label]['note']} "
                        f"(on {batch.shape[0]} of your images); {others or 'no other candidate'}", measured)
    if choice.backend == "onnxruntime":
        choice.onnx = onnx
    elif onnx is not None:  # exported for nothing: do not keep a model no run uses
        forget_exported(backbone, cache)
    return choice


def _timed(engine, batch: torch.Tensor) -> tuple[torch.Tensor, float]:
    """The engine's features of the batch (first pass: also its warm-up) and the img/s of a second pass."""
    features = engine(batch)
    _sync(engine)
    start = time.perf_counter()
    engine(batch)
    _sync(engine)
    seconds = time.perf_counter() - start
    return features, round(batch.shape[0] / seconds, 2) if seconds > 0 else float("inf")


def _sync(engine) -> None:
    if engine.device.type == "cuda":
        torch.cuda.synchronize(engine.device)


# -- remembering ----------------------------------------------------------------------------------------------
def _decision_key(backbone, device: torch.device, backend: str, precision: str) -> str:
    ident = {"version": _DECISION_VERSION, "backbone": backbone.name, "weights": backbone.weights_digest,
             "transform": backbone.preprocess.to_dict(), "backend": backend, "precision": precision,
             "bounds": [PRECISION_BOUND, SAME_SPACE_BOUND], "machine": machine_fingerprint(device)}
    return "auto_backend:" + hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:32]


def machine_fingerprint(device: torch.device) -> dict[str, Any]:
    """What makes a decision hold on this machine only: the CPU (or GPU), its cores and the library versions."""
    from transfer_engine.core import cpu

    out: dict[str, Any] = {"device": device.type, "cpu": cpu.cpu_model(), "int8": cpu.int8_family(),
                           "bf16": cpu_has_native_bf16(), "cores": os.cpu_count(), "torch": torch.__version__}
    try:
        import onnxruntime

        out["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        out["onnxruntime"] = None
    if device.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(device)
    return out
