"""A backbone's ONNX graph (input "images", output "features"), kept in the feature cache.

The backbone is exported once per (backbone, weights digest, input size, opset) and kept in the cache as an
artifact (content-addressed, checked when loaded and by `te cache verify`): te extract's onnxruntime
backend runs it, and te compare times the same file and reports its size.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

ONNX_OPSET = 18


def artifact_name(backbone) -> str:
    """The cache artifact that holds this backbone's ONNX graph: one per (name, weights, input size, opset)."""
    ident = {"backbone": backbone.name, "weights": backbone.weights_digest,
             "input_size": list(backbone.preprocess.input_size), "opset": ONNX_OPSET}
    digest = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:32]
    return f"onnx-backbone:{backbone.name}:{digest}"


def exported_backbone(backbone, cache) -> Path:
    """The backbone's ONNX file from the cache, exported (once) when missing or damaged."""
    from transfer_engine.onnx.export import export_backbone

    name = artifact_name(backbone)
    path, _why = cache.artifact(name)
    if path is not None:
        return path
    crop = backbone.preprocess.crop_size
    model = backbone.model
    if any(p.device.type != "cpu" for p in model.parameters()):  # a copy: engines keep theirs on the GPU
        model = copy.deepcopy(model).to("cpu")
    return cache.put_artifact(name, lambda tmp: export_backbone(model, tmp, crop_size=crop, opset=ONNX_OPSET),
                              suffix=".onnx")


def forget_exported(backbone, cache) -> None:
    """Drop the backbone's ONNX file from the cache (exported for a backend no run uses)."""
    from transfer_engine.cache import artifacts

    artifacts.forget(cache, artifact_name(backbone))


__all__ = ["ONNX_OPSET", "artifact_name", "exported_backbone", "forget_exported"]
