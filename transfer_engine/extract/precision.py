"""`--precision auto`: the fastest compute precision whose features stay within the accuracy bound.

The bound is the feature cache's (issue: int8 storage must keep per-row cosine >= 0.999 to fp32):
on a calibration batch of the user's own images, every row computed in the candidate precision must
have cosine similarity >= PRECISION_BOUND to the same row computed in fp32. Candidates are tried
fastest first: bf16 on CPUs with native bf16 instructions; fp16 then bf16 on CUDA. The decision is
remembered in the cache (per backbone, weights, transform and device type), so a re-run does no model
work just to decide again, and the chosen precision is part of the feature space.
"""

from __future__ import annotations

import hashlib
import json

import torch

from transfer_engine.errors import UsageError
from transfer_engine.extract.pipeline import PRECISIONS, autocast_context, cpu_has_native_bf16, prepare_model

PRECISION_BOUND = 0.999
CALIBRATION_IMAGES = 8  # enough to expose a precision that breaks; each image costs two forward passes


def candidates(device: torch.device) -> list[str]:
    """Reduced precisions worth trying on `device`, fastest first."""
    if device.type == "cuda":
        out = ["fp16"]
        if torch.cuda.is_bf16_supported():
            out.append("bf16")
        return out
    return ["bf16"] if cpu_has_native_bf16() else []


def _decision_key(backbone, device: torch.device) -> str:
    ident = {"backbone": backbone.name, "weights": backbone.weights_digest,
             "transform": backbone.preprocess.to_dict(), "device": device.type, "bound": PRECISION_BOUND}
    return "auto_precision:" + hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:32]


def choose_precision(requested: str, backbone, device: torch.device, cache, source, samples) -> tuple[str, str]:
    """Resolve `--precision` to a concrete precision and say why.

    Returns:
        (precision, reason), e.g. ("bf16", "auto: min cosine 0.9995 >= 0.999 on 16 images").
    """
    if requested != "auto":
        if requested not in PRECISIONS:
            raise UsageError(f"--precision must be auto or one of {', '.join(PRECISIONS)}, got {requested!r}")
        if requested == "fp16" and device.type == "cpu":
            raise UsageError("--precision fp16 needs a CUDA device (CPUs compute bf16, not fp16, fast); use bf16")
        return requested, "asked for"
    options = candidates(device)
    if not options:
        return "fp32", f"auto: no faster precision on this {device.type}"
    key = _decision_key(backbone, device)
    remembered = cache.index.meta(key)
    if remembered:
        precision, _, why = remembered.partition("|")
        return precision, f"{why} (remembered)"
    images = _calibration_batch(backbone, source, samples)
    if images is None:
        return "fp32", "auto: no decodable image to calibrate on"
    model = prepare_model(backbone, device)
    x = images.to(device).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        reference = model(x).float()
        decision = ("fp32", f"auto: no reduced precision kept cosine >= {PRECISION_BOUND}")
        for candidate in options:
            with autocast_context(device, candidate):
                trial = model(x).float()
            cos = float(torch.nn.functional.cosine_similarity(reference, trial, dim=1).min())
            if cos >= PRECISION_BOUND:
                decision = (candidate, f"auto: {candidate} min cosine {cos:.5f} >= {PRECISION_BOUND} "
                                       f"on {x.shape[0]} images")
                break
            decision = ("fp32", f"auto: {candidate} min cosine {cos:.5f} < {PRECISION_BOUND} on {x.shape[0]} images")
    with cache.lock, cache.index.write():
        cache.index.set_meta(key, f"{decision[0]}|{decision[1]}")
    return decision


def _calibration_batch(backbone, source, samples) -> torch.Tensor | None:
    """The first CALIBRATION_IMAGES decodable images of the data set (its order, not the cache's)."""
    transform = backbone.transform()
    tensors = []
    for sample in samples:
        try:
            tensors.append(transform(source.decode(sample, source.read_bytes(sample))))
        except Exception:  # a bad file is reported by the extraction itself
            continue
        if len(tensors) == CALIBRATION_IMAGES:
            break
    return torch.stack(tensors) if tensors else None
